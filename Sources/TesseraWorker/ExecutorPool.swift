import DequeModule
import Dispatch
import Foundation
import Synchronization
import TesseraCompute
import TesseraProtocol

/// A task ready to run: its operator, everything it reads, and what to do with its value.
public struct ExecutableTask: Sendable {
    public var key: UInt64
    public var op: TaskOperator
    public var context: OperatorContext
    public var flags: UInt32
    /// Tasks with the same profile (one job's uses of one operator) take about as long as each other.
    public var profile: UInt64
    /// The worker's registration it was assigned under: a completion of an earlier one is void.
    public var generation: UInt32 = 0
    /// Its job's class (0 interactive, 1 normal, 2 batch): queued tasks of a lower value start first.
    public var priority: UInt8 = 1

    public init(key: UInt64, op: TaskOperator, context: OperatorContext, flags: UInt32, profile: UInt64, generation: UInt32 = 0,
                priority: UInt8 = 1) {
        self.key = key
        self.op = op
        self.context = context
        self.flags = flags
        self.profile = profile
        self.generation = generation
        self.priority = priority
    }
}

/// Tasks waiting for a thread: the most urgent class first, each class in arrival order. An
/// interactive task then waits only for the tasks the threads are running, never for the
/// queued ones of a batch job.
public struct PriorityTaskQueue: Sendable {
    private var classes: [Deque<ExecutableTask>] = [[], [], []]

    public init() {}

    public var count: Int { classes[0].count + classes[1].count + classes[2].count }
    public var isEmpty: Bool { classes.allSatisfy(\.isEmpty) }

    public mutating func append(_ t: ExecutableTask) {
        classes[Int(min(t.priority, 2))].append(t)
    }

    public mutating func append(contentsOf tasks: some Sequence<ExecutableTask>) {
        for t in tasks { append(t) }
    }

    public mutating func popFirst() -> ExecutableTask? {
        for c in classes.indices where !classes[c].isEmpty { return classes[c].popFirst() }
        return nil
    }

    /// Interactive or normal tasks are queued.
    public var hasForeground: Bool { !classes[0].isEmpty || !classes[1].isEmpty }
    /// Batch tasks are queued.
    public var hasBackground: Bool { !classes[2].isEmpty }

    /// The next batch task.
    public mutating func popBackground() -> ExecutableTask? { classes[2].popFirst() }

    /// Removes and returns the queued tasks matching `predicate`, most urgent first.
    public mutating func take(where predicate: (ExecutableTask) -> Bool) -> [ExecutableTask] {
        var taken: [ExecutableTask] = []
        for c in classes.indices {
            var kept = Deque<ExecutableTask>()
            for t in classes[c] { if predicate(t) { taken.append(t) } else { kept.append(t) } }
            classes[c] = kept
        }
        return taken
    }
}

/// What running a task produced.
public struct Completion: Sendable {
    public var key: UInt64
    public var flags: UInt32
    public var result: Result<Value, OperatorError>
    public var micros: UInt32
    /// As the task's.
    public var generation: UInt32 = 0

    public init(key: UInt64, flags: UInt32, result: Result<Value, OperatorError>, micros: UInt32, generation: UInt32) {
        self.key = key
        self.flags = flags
        self.result = result
        self.micros = micros
        self.generation = generation
    }
}

/// Where the engine's runnable tasks wait: it may take back those not yet started. The daemon's
/// is an `ExecutorPool` of threads; the simulation's runs them in simulated time.
public protocol TaskPool: AnyObject {
    /// Takes back queued tasks that have not started (those matching `predicate`).
    func takeQueued(where predicate: (ExecutableTask) -> Bool) -> [ExecutableTask]
    /// Drops the duration records of finished jobs.
    func forgetProfiles(jobs: Set<UInt32>)
}

extension TaskPool {
    /// Takes back every queued task not yet started.
    public func takeQueued() -> [ExecutableTask] { takeQueued(where: { _ in true }) }
}

/// Threads running tasks from one queue, at most `threadCount` of each kind (foreground, batch) at a time. Finished tasks
/// collect in a list the event loop drains; `wake` tells the loop there is something to drain
/// (it is called only when the list goes from empty to non-empty, so a burst of completions
/// costs one wake-up).
///
/// Batch tasks run on threads of their own at a lower OS priority (nice +10), the others at the
/// process's own. Interactive and normal tasks have `threadCount` slots of their own; batch
/// tasks take a slot only while fewer than `threadCount` tasks of any class run, and never while
/// a foreground task waits. So an interactive task waits for no batch task at all (a shared pass
/// answering twenty batch scans of a shard can take as long as twenty scans): it starts at once
/// on a foreground thread, and the kernel gives that thread about ten times the CPU share of the
/// batch threads (nice 0 against nice 10) while both run. The batch work then yields the CPU to
/// whatever answers a person, instead of splitting it evenly with them.
public final class ExecutorPool: TaskPool, Sendable {
    /// The queue and the slots, under one lock with a condition to wait on.
    private final class State: @unchecked Sendable {
        // The fields after the primitives are read and written only with `mutex` held.
        let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        /// Foreground threads wait here, background (batch) threads on `backgroundReady`: a
        /// wake-up goes to a thread that can take the task, never to all of them.
        let foregroundReady = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
        let backgroundReady = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
        var queue = PriorityTaskQueue()
        /// Tasks running on foreground threads (interactive, normal) and on batch threads.
        var running = 0
        var runningBackground = 0
        var stopping = false
        /// Shared passes running now, by pass key and class: a task that could join one rides it.
        var passes: [PassKey: any TaskPass] = [:]

        init() {
            pthread_mutex_init(mutex, nil)
            pthread_cond_init(foregroundReady, nil)
            pthread_cond_init(backgroundReady, nil)
        }

        deinit {
            pthread_cond_destroy(foregroundReady)
            pthread_cond_destroy(backgroundReady)
            pthread_mutex_destroy(mutex)
            foregroundReady.deallocate()
            backgroundReady.deallocate()
            mutex.deallocate()
        }

        func lock() { pthread_mutex_lock(mutex) }
        func unlock() { pthread_mutex_unlock(mutex) }

        /// With a slot free, wakes one thread that may take a queued task: a foreground one
        /// while interactive or normal tasks wait, else a background one. A thread that takes a
        /// task calls this again, so a burst wakes as many threads as there are slots.
        func wakeNext(slots: Int) {
            if queue.hasForeground {
                if running < slots { pthread_cond_signal(foregroundReady) }
            } else if queue.hasBackground && running + runningBackground < slots {
                pthread_cond_signal(backgroundReady)
            }
        }

        /// Whether a thread of this kind may take a task now, and which.
        func nextTask(background: Bool, slots: Int) -> ExecutableTask? {
            if background {
                return queue.hasForeground || running + runningBackground >= slots ? nil : queue.popBackground()
            }
            return running < slots && queue.hasForeground ? queue.popFirst() : nil
        }

        func started(background: Bool) { if background { runningBackground += 1 } else { running += 1 } }
        func ended(background: Bool) { if background { runningBackground -= 1 } else { running -= 1 } }

        func wakeAll() {
            pthread_cond_broadcast(foregroundReady)
            pthread_cond_broadcast(backgroundReady)
        }
    }

    private let state = State()
    private let completions = LockedBox<[Completion]>([])
    private let wake: @Sendable () -> Void
    public let threadCount: Int
    /// Smoothed durations per task profile, in microseconds.
    private let durations = LockedBox<[UInt64: Double]>([:])
    private let passCounts = LockedBox<(passes: UInt64, tasks: UInt64, most: UInt32)>((0, 0, 0))
    /// Interactive tasks begun since the last ``drainStarted()``.
    private let startedInteractive = LockedBox<[UInt64]>([])

    /// Shared passes run since the pool started, the tasks they answered, and the most in one.
    public var passStatistics: (passes: UInt64, tasks: UInt64, most: UInt32) { passCounts.withLock { $0 } }
    /// Tasks measured shorter than this run on the caller's thread when the pool is idle: a
    /// hand-off to an executor thread and back costs more than they do.
    public static let inlineLimitMicros = 30.0
    /// The OS priority (nice) of the threads that run batch tasks.
    public static let backgroundNice: Int32 = 10

    public init(threads: Int, wake: @escaping @Sendable () -> Void) {
        threadCount = max(1, threads)
        self.wake = wake
        for background in [false, true] {
            for i in 0..<threadCount {
                // Named for `top -H` and /proc (Linux keeps 15 characters).
                let name = background ? "tessera-batch-\(i)" : "tessera-exec-\(i)"
                let t = Thread { [self] in
                    // Priority first, then the name: a thread seen by its name already runs at its priority.
                    if background { Self.lowerThisThreadsPriority() }
                    #if os(Linux)
                    // (pthread_setname_np does not reach Swift; a thread may write its own comm.)
                    try? String(name.prefix(15)).write(toFile: "/proc/thread-self/comm", atomically: false, encoding: .utf8)
                    #endif
                    self.loop(background: background)
                }
                t.name = name
                t.start()
            }
        }
    }

    /// Queues tasks to run, in order. When the pool is idle and the tasks are known to be tiny,
    /// runs them right here instead (their completions are then ready to drain on return).
    public func submit(_ tasks: [ExecutableTask]) {
        if tasks.isEmpty { return }
        if tasks.count <= threadCount, busyCount == 0, durations.withLock({ d in
            tasks.allSatisfy { (d[$0.profile] ?? .infinity) < Self.inlineLimitMicros }
        }) {
            for t in tasks { execute(t) }
            return
        }
        state.lock()
        state.queue.append(contentsOf: tasks)
        state.wakeNext(slots: threadCount)
        state.unlock()
    }

    /// Takes back queued tasks that have not started (all of them, or those matching `where`).
    public func takeQueued(where predicate: (ExecutableTask) -> Bool) -> [ExecutableTask] {
        state.lock()
        defer { state.unlock() }
        let taken = state.queue.take(where: predicate)
        // With fewer foreground tasks queued, a batch thread may now take a free slot.
        if !taken.isEmpty { state.wakeNext(slots: threadCount) }
        return taken
    }

    /// Drops the duration records of finished jobs.
    public func forgetProfiles(jobs: Set<UInt32>) {
        durations.withLock { d in d = d.filter { !jobs.contains(UInt32(truncatingIfNeeded: $0.key >> 32)) } }
    }

    /// The keys of the interactive tasks that began to run since the last call (the scheduler
    /// times their short deadline from their start, not from their wait in the queue).
    public func drainStarted() -> [UInt64] {
        startedInteractive.withLock { s in
            let out = s
            s.removeAll(keepingCapacity: true)
            return out
        }
    }

    private func noteStarted(_ task: ExecutableTask) {
        guard task.priority == PriorityClass.interactive.rawValue else { return }
        startedInteractive.withLock { $0.append(task.key) }
    }

    /// Completions since the last call.
    public func drainCompletions() -> [Completion] {
        completions.withLock { c in
            let out = c
            c.removeAll(keepingCapacity: true)
            return out
        }
    }

    /// Tasks queued or running.
    public var busyCount: Int {
        state.lock()
        defer { state.unlock() }
        return state.queue.count + state.running + state.runningBackground
    }

    /// Stops the threads after the tasks they are running.
    public func stop() {
        state.lock()
        state.stopping = true
        state.wakeAll()
        state.unlock()
    }

    private func loop(background: Bool) {
        let s = state
        let ready = background ? s.backgroundReady : s.foregroundReady
        s.lock()
        while !s.stopping {
            // Interactive and normal tasks on their own slots; batch ones only in a free slot
            // while none of those waits.
            guard let task = s.nextTask(background: background, slots: threadCount) else {
                // Not one for this thread: perhaps for a thread of the other kind.
                s.wakeNext(slots: threadCount)
                pthread_cond_wait(ready, s.mutex)
                continue
            }
            var newPass: (support: SharedPassSupport, key: PassKey, tasks: [ExecutableTask])?
            if let support = task.op.sharedPass, let key = support.key(task.context) {
                let passKey = PassKey(key: key, priority: task.priority)
                // A pass over the same data in the same class is running: the task rides it,
                // without a slot of its own.
                if let pass = s.passes[passKey], pass.attach(task.context, done: finisher(task)) {
                    noteStarted(task)
                    continue
                }
                // Else it starts one, and the same data's queued tasks of the class go with it.
                let riders = s.queue.take { t in t.priority == task.priority && t.op.name == task.op.name && support.key(t.context) == key }
                newPass = (support, passKey, [task] + riders)
            }
            s.started(background: background)
            s.wakeNext(slots: threadCount)
            s.unlock()
            if let newPass {
                runPass(newPass.support, newPass.key, newPass.tasks)
            } else if execute(task) {
                wake()
            }
            s.lock()
            s.ended(background: background)
        }
        s.unlock()
    }

    /// Tasks that may share a pass: the data they read and their class (a batch pass runs at
    /// the batch threads' OS priority, so an interactive task never rides one).
    struct PassKey: Hashable {
        var key: String
        var priority: UInt8
    }

    /// Opens a pass for `tasks`, registers it for later riders, and runs it on this thread.
    private func runPass(_ support: SharedPassSupport, _ passKey: PassKey, _ tasks: [ExecutableTask]) {
        for t in tasks { noteStarted(t) }
        let pass: any TaskPass
        do throws(OperatorError) {
            pass = try support.open(tasks[0].context)
        } catch {
            // The data could not be opened: each task fails as it would have alone.
            for t in tasks { finisher(t)(.failure(error), 0) }
            return
        }
        for t in tasks where !pass.attach(t.context, done: finisher(t)) {
            // (A pass that has not run yet takes every task.)
            finisher(t)(.failure(OperatorError(t.op.name, "the shared pass ended before it started")), 0)
        }
        state.lock()
        state.passes[passKey] = pass
        state.unlock()
        pass.run()
        let answered = pass.tasksAnswered
        passCounts.withLock { c in
            c.passes += 1
            c.tasks += UInt64(answered)
            c.most = max(c.most, UInt32(clamping: answered))
        }
        state.lock()
        if let current = state.passes[passKey], current === pass { state.passes[passKey] = nil }
        state.unlock()
    }

    /// Records a task's value: its duration for its profile, its completion for the event loop.
    private func finisher(_ task: ExecutableTask) -> @Sendable (Result<Value, OperatorError>, UInt32) -> Void {
        let (key, flags, generation, profile) = (task.key, task.flags, task.generation, task.profile)
        return { [self] result, micros in
            if record(Completion(key: key, flags: flags, result: result, micros: micros, generation: generation), profile: profile) { wake() }
        }
    }

    /// Returns true when the completion list was empty.
    private func record(_ c: Completion, profile: UInt64) -> Bool {
        durations.withLock { d in
            let m = Double(c.micros)
            d[profile] = d[profile].map { 0.8 * $0 + 0.2 * m } ?? m
        }
        return completions.withLock { list in
            list.append(c)
            return list.count == 1
        }
    }

    /// Lowers the calling thread's OS priority (Linux: nice applies per thread).
    private static func lowerThisThreadsPriority() {
        #if os(Linux)
        // The thread's id, from /proc/thread-self (a link to PID/task/TID): Glibc's gettid and
        // SYS_gettid do not reach Swift.
        guard let link = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/thread-self"),
              let tid = link.split(separator: "/").last.flatMap({ id_t($0) }) else { return }
        _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), tid, backgroundNice)
        #endif
    }

    /// Runs one task, records its duration and completion. Returns true when the completion list was empty.
    @discardableResult
    private func execute(_ task: ExecutableTask) -> Bool {
        noteStarted(task)
        let start = DispatchTime.now().uptimeNanoseconds
        let result: Result<Value, OperatorError>
        do throws(OperatorError) {
            result = .success(try task.op.run(task.context))
        } catch {
            result = .failure(error)
        }
        let micros = UInt32(clamping: (DispatchTime.now().uptimeNanoseconds - start) / 1000)
        return record(Completion(key: task.key, flags: task.flags, result: result, micros: micros, generation: task.generation), profile: task.profile)
    }
}
