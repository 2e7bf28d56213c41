import DequeModule
import TesseraCompute
import TesseraProtocol
import TesseraScheduler
import TesseraStorage
import TesseraWorker

/// The whole cluster in one thread, in simulated time: the real `SchedulerCore` and real
/// `WorkerEngine`s (with the real operators and an in-memory registry), wired through an
/// in-memory network, with every delay, fault and choice drawn from one seeded generator.
/// Nothing reads the clock or any other source of randomness, so a seed replays exactly.
///
/// The network keeps each connection's order (as ZeroMQ does), delays messages, loses those in
/// flight to a process that dies, and queues those sent to a process that is down until it is
/// up again (as a connecting socket does). Faults: workers killed and started again, workers
/// stopped gracefully, workers whose executor stalls (heartbeating, never reporting), the
/// scheduler killed and started again on its registry, clients that vanish.
///
/// After every step the engines check themselves; every 64 steps, and at the end, the values
/// workers hold are checked against what the scheduler still needs. At the end every job
/// ended with the brute-force answer or a clear error, none hung, and all state is released.
public final class Simulation {
    public struct Options: Sendable {
        public var workers: ClosedRange<Int> = 2...5
        public var clients: ClosedRange<Int> = 1...4
        public var faults = true
        /// Simulated seconds a client may wait for its job's end before it counts as hung.
        public var hangSeconds = 300.0
        public init() {}
    }

    /// How a client's job ended.
    public enum JobOutcome: Equatable, Sendable {
        case correct
        case wrong(String)
        /// Failed or refused with this error (a clear one: not empty).
        case failed(String)
        /// The client vanished; its job must be cancelled by the scheduler.
        case abandoned
        case hung
    }

    public struct Report: Sendable {
        public var seed: UInt64
        public var steps = 0
        public var simulatedSeconds = 0.0
        public var outcomes: [JobOutcome] = []
        public var violations: [String] = []
        public var faults: [String] = []
        /// A hash of every event processed: equal for equal seeds.
        public var trace: UInt64 = 0xcbf2_9ce4_8422_2325
        public var schedulerRestarts = 0
        public var workerRestarts = 0
    }

    // MARK: The world

    enum Address: Hashable, Comparable {
        case scheduler
        case worker(Int)
        case client(Int)
    }

    struct Message {
        var from: Address
        var fromIncarnation: Int
        var to: Address
        /// The incarnation of the receiver it was sent to (nil: whichever is up next).
        var toIncarnation: Int?
        var envelope: Envelope
        var frames: [[UInt8]]
        /// For replies on a worker's peer ROUTER: the requesting worker's incarnation.
        var isPeerReply = false
    }

    enum Event {
        case deliver(Message)
        case schedulerTick
        case schedulerStart
        case workerTimer(Int, incarnation: Int)
        case workerStart(Int)
        case taskDone(Int, incarnation: Int, slot: Int)
        case clientTimer(Int)
        case clientStart(Int)
        case fault
        case unstall(Int, incarnation: Int)
        case spillWritten(Int, incarnation: Int, [(key: UInt64, value: Value)])
    }

    struct Timed {
        var time: UInt64
        var seq: UInt64
        var event: Event
    }

    final class SimPool: TaskPool {
        var queue = PriorityTaskQueue()
        var running: [ExecutableTask?]
        /// When true the executor starts nothing (a stuck worker that still heartbeats).
        var stalled = false
        init(threads: Int) { running = Array(repeating: nil, count: threads) }
        func takeQueued(where predicate: (ExecutableTask) -> Bool) -> [ExecutableTask] {
            queue.take(where: predicate)
        }
        func forgetProfiles(jobs: Set<UInt32>) {}
    }

    /// A worker's disk, for values spilled past its memory limit.
    final class SimSpillStore: SpillStore {
        var values: [UInt64: Value] = [:]
        func read(_ key: UInt64) -> Value? { values[key] }
        func remove(_ keys: [UInt64]) { for k in keys { values.removeValue(forKey: k) } }
    }

    final class Worker {
        let index: Int
        let name: String
        let threads: Int
        /// Bytes of kept values in memory before they spill (most seeds: tiny, so values spill).
        var memoryLimit = Int.max
        var disk = SimSpillStore()
        var incarnation = 0
        var alive = false
        var engine = WorkerEngine()
        var pool: SimPool
        var endpoint: String { "tcp://sim-worker-\(index):7000" }
        init(index: Int, threads: Int) {
            self.index = index
            name = "sim-\(index)"
            self.threads = threads
            pool = SimPool(threads: threads)
        }
    }

    final class Client {
        let index: Int
        let submission: Tessera_V1_SubmitJob
        let frames: [[UInt8]]
        /// Output task index → expected value.
        let expected: [UInt32: Int64]
        var tag: UInt64 = 0
        var submittedAt: UInt64 = 0
        var job: JobID?
        var jobEpoch: UInt64 = 0
        var epochHeard: UInt64 = 0
        var values: [UInt32: Int64] = [:]
        var resubmissions = 0
        var lastHeartbeat: UInt64 = 0
        var vanished = false
        var outcome: JobOutcome?
        init(index: Int, submission: Tessera_V1_SubmitJob, frames: [[UInt8]], expected: [UInt32: Int64]) {
            self.index = index
            self.submission = submission
            self.frames = frames
            self.expected = expected
        }
    }

    let options: Options
    var rng: SplitMix64
    var now: UInt64 = 1_000_000_000
    var queue: [Timed] = []
    var seq: UInt64 = 0
    var report: Report

    let registry: Registry
    var scheduler: SchedulerCore?
    var schedulerIncarnation = 0
    var jobIDs: JobIDReservation?
    var config = SchedulerConfig()
    /// The scheduler's connection ids, per start: who is behind each.
    var connections: [ConnectionID: (Address, Int)] = [:]
    var connectionOf: [String: ConnectionID] = [:]
    var nextConnection: ConnectionID = 1
    /// Messages sent to a process that was down, delivered when it is up.
    var waitingFor: [Address: [Message]] = [:]
    /// Per (sender, receiver): the latest delivery time, so that a connection keeps its order.
    var lastDelivery: [Address: [Address: UInt64]] = [:]

    var workers: [Worker] = []
    var clients: [Client] = []
    var faultsStopped = false

    public init(seed: UInt64, options: Options = .init()) throws {
        self.options = options
        rng = SplitMix64(seed: seed)
        report = Report(seed: seed)
        registry = try Registry()
        config.heartbeatIntervalMs = 100
        config.workerTimeoutNs = 1_000_000_000
        config.clientTimeoutNs = 5_000_000_000
        config.taskDeadlineNs = 3_000_000_000
        config.taskDeadlineNsPerMiB = 0
        config.maxInFlightPerThread = 8
    }

    // MARK: Running

    /// Runs the seed to its end and returns what happened.
    public static func run(seed: UInt64, options: Options = .init()) -> Report {
        do {
            let sim = try Simulation(seed: seed, options: options)
            return sim.run()
        } catch {
            var r = Report(seed: seed)
            r.violations = ["the simulation could not start: \(error)"]
            return r
        }
    }

    public func run() -> Report {
        let nWorkers = Int.random(in: options.workers, using: &rng)
        for i in 0..<nWorkers {
            let w = Worker(index: i, threads: Int.random(in: 1...3, using: &rng))
            if rng.next() % 3 != 0 { w.memoryLimit = Int.random(in: 16...256, using: &rng) }
            workers.append(w)
            schedule(at: now + UInt64.random(in: 0...50_000_000, using: &rng), .workerStart(i))
        }
        schedule(at: now, .schedulerStart)
        let nClients = Int.random(in: options.clients, using: &rng)
        for i in 0..<nClients {
            clients.append(makeClient(i))
            schedule(at: now + UInt64.random(in: 100_000_000...2_000_000_000, using: &rng), .clientStart(i))
        }
        if options.faults { schedule(at: now + randomDelay(0.3...3), .fault) }

        let hangNs = UInt64(options.hangSeconds * 1e9)
        var drainUntil: UInt64?
        while let e = pop() {
            now = max(now, e.time)
            report.steps += 1
            mix(e)
            handle(e.event)
            checkEngines()
            if report.steps % 64 == 0 { checkHeldValues() }
            if report.violations.count > 20 { break }
            if drainUntil == nil {
                for c in clients where c.outcome == nil && c.submittedAt > 0 && now &- c.submittedAt > hangNs {
                    c.outcome = .hung
                    report.violations.append("client \(c.index)'s job \(c.job.map(String.init) ?? "(not accepted)") hung for \(options.hangSeconds) s")
                }
                if clients.allSatisfy({ $0.outcome != nil }) {
                    // Everything settles: faults stop, the dead come back, messages drain.
                    faultsStopped = true
                    reviveEverything()
                    drainUntil = now + 15_000_000_000
                }
            } else if now >= drainUntil! {
                break
            }
        }
        checkHeldValues()
        checkEnd()
        report.outcomes = clients.map { $0.outcome ?? .hung }
        report.simulatedSeconds = Double(now - 1_000_000_000) / 1e9
        return report
    }

    func schedule(at time: UInt64, _ event: Event) {
        seq += 1
        queue.append(Timed(time: time, seq: seq, event: event))
        var i = queue.count - 1
        while i > 0 {
            let p = (i - 1) / 2
            if less(queue[i], queue[p]) { queue.swapAt(i, p); i = p } else { break }
        }
    }

    func less(_ a: Timed, _ b: Timed) -> Bool { a.time < b.time || (a.time == b.time && a.seq < b.seq) }

    func pop() -> Timed? {
        guard !queue.isEmpty else { return nil }
        let top = queue[0]
        let last = queue.removeLast()
        if !queue.isEmpty {
            queue[0] = last
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < queue.count && less(queue[l], queue[m]) { m = l }
                if r < queue.count && less(queue[r], queue[m]) { m = r }
                if m == i { break }
                queue.swapAt(i, m)
                i = m
            }
        }
        return top
    }

    func randomDelay(_ seconds: ClosedRange<Double>) -> UInt64 { UInt64(Double.random(in: seconds, using: &rng) * 1e9) }

    /// Folds an event into the trace hash (FNV-1a over its time and kind).
    func mix(_ e: Timed) {
        func add(_ x: UInt64) { report.trace = (report.trace ^ x) &* 0x100_0000_01b3 }
        add(e.time)
        switch e.event {
        case .deliver(let m): add(1); add(code(m.from)); add(code(m.to)); add(UInt64(m.frames.count))
        case .schedulerTick: add(2)
        case .schedulerStart: add(3)
        case .workerTimer(let i, _): add(4); add(UInt64(i))
        case .workerStart(let i): add(5); add(UInt64(i))
        case .taskDone(let i, _, let s): add(6); add(UInt64(i * 16 + s))
        case .clientTimer(let i): add(7); add(UInt64(i))
        case .clientStart(let i): add(8); add(UInt64(i))
        case .fault: add(9)
        case .unstall(let i, _): add(10); add(UInt64(i))
        case .spillWritten(let i, _, let kv): add(11); add(UInt64(i)); add(UInt64(kv.count))
        }
    }

    func code(_ a: Address) -> UInt64 {
        switch a {
        case .scheduler: 0
        case .worker(let i): 1 + 2 * UInt64(i)
        case .client(let i): 2 + 2 * UInt64(i)
        }
    }

    // MARK: The network

    func incarnation(of a: Address) -> Int? {
        switch a {
        case .scheduler: scheduler == nil ? nil : schedulerIncarnation
        case .worker(let i): workers[i].alive ? workers[i].incarnation : nil
        case .client(let i): clients[i].vanished ? nil : 1
        }
    }

    /// Sends with a random delay, after anything sent earlier on the same connection.
    func send(_ m: Message) {
        var delay = UInt64.random(in: 50_000...2_000_000, using: &rng)
        if rng.next() % 50 == 0 { delay += randomDelay(0.05...0.4) }
        var at = now + delay
        let last = lastDelivery[m.from]?[m.to] ?? 0
        if at <= last { at = last + 1 }
        lastDelivery[m.from, default: [:]][m.to] = at
        schedule(at: at, .deliver(m))
        // Retries arrive twice now and then: a registration sent again, a heartbeat repeated.
        switch m.envelope.body {
        case .registerWorker?, .clientHeartbeat?:
            if rng.next() % 10 == 0 {
                let again = at + UInt64.random(in: 1_000...3_000_000, using: &rng)
                lastDelivery[m.from, default: [:]][m.to] = again
                schedule(at: again, .deliver(m))
            }
        default:
            break
        }
    }

    func deliver(_ m: Message) {
        guard let current = incarnation(of: m.to) else {
            // Down: a connecting socket keeps what was sent for the next start of the receiver
            // (clients do not come back).
            if m.toIncarnation == nil, case .client = m.to {} else if m.toIncarnation == nil { waitingFor[m.to, default: []].append(m) }
            return
        }
        // Sent to an earlier start: lost with its connection.
        if let to = m.toIncarnation, to != current { return }
        switch m.to {
        case .scheduler: toScheduler(m)
        case .worker(let i): toWorker(i, m)
        case .client(let i): toClient(i, m)
        }
    }

    /// The scheduler's connection id for a sender's current start.
    func connection(for a: Address, incarnation: Int) -> ConnectionID {
        let key = "\(a)#\(incarnation)"
        if let c = connectionOf[key] { return c }
        let c = nextConnection
        nextConnection += 1
        connectionOf[key] = c
        connections[c] = (a, incarnation)
        return c
    }

    // MARK: The scheduler

    func startScheduler() {
        do {
            let (ids, epoch, first) = try JobIDReservation.begin(registry, block: 8)
            jobIDs = ids
            config.epoch = epoch
            config.firstJobID = first
        } catch {
            report.violations.append("registry: \(error)")
            return
        }
        schedulerIncarnation += 1
        scheduler = SchedulerCore(config: config, now: now)
        connections = [:]
        connectionOf = [:]
        for m in waitingFor.removeValue(forKey: .scheduler) ?? [] { send(m) }
        schedule(at: now + 50_000_000, .schedulerTick)
    }

    func toScheduler(_ m: Message) {
        guard scheduler != nil else { return }
        let conn = connection(for: m.from, incarnation: m.fromIncarnation)
        switch m.from {
        case .worker: scheduler!.handleWorker(conn, m.envelope, frames: m.frames, now: now)
        case .client: scheduler!.handleClient(conn, m.envelope, frames: m.frames, now: now)
        case .scheduler: break
        }
        flushScheduler()
    }

    func flushScheduler() {
        guard scheduler != nil else { return }
        let out = scheduler!.flush(now: now)
        do { try jobIDs?.extend(ifNeededFor: scheduler!.nextJobIDToIssue) } catch { report.violations.append("registry: \(error)") }
        // Per destination in the order the scheduler made them; across destinations by
        // destination (the scheduler's own order between them comes from a dictionary).
        var byDestination: [(Address, Int, OutgoingMessage)] = []
        for m in out {
            let c: ConnectionID = switch m.destination {
            case .worker(let c): c
            case .client(let c): c
            }
            guard let (a, inc) = connections[c] else { continue }
            byDestination.append((a, inc, m))
        }
        let order = byDestination.indices.sorted { (byDestination[$0].0, byDestination[$0].1, $0) < (byDestination[$1].0, byDestination[$1].1, $1) }
        for i in order {
            let (a, inc, m) = byDestination[i]
            send(Message(from: .scheduler, fromIncarnation: schedulerIncarnation, to: a, toIncarnation: inc, envelope: m.envelope, frames: m.frames))
        }
    }

    // MARK: Workers

    func startWorker(_ i: Int) {
        let w = workers[i]
        w.incarnation += 1
        w.alive = true
        w.engine = WorkerEngine()
        w.engine.memoryLimitBytes = w.memoryLimit
        w.disk = SimSpillStore()
        w.engine.spillStore = w.disk
        w.pool = SimPool(threads: w.threads)
        for m in waitingFor.removeValue(forKey: .worker(i)) ?? [] { send(m) }
        schedule(at: now + 1_000_000, .workerTimer(i, incarnation: w.incarnation))
    }

    func kill(worker i: Int) {
        let w = workers[i]
        w.alive = false
        w.pool = SimPool(threads: w.threads)
    }

    func perform(_ i: Int, _ actions: [WorkerAction]) {
        let w = workers[i]
        for a in actions {
            switch a {
            case .toScheduler(let e, let f):
                send(Message(from: .worker(i), fromIncarnation: w.incarnation, to: .scheduler, toIncarnation: scheduler == nil ? nil : schedulerIncarnation,
                             envelope: e, frames: f))
            case .register:
                let e = w.engine.registration(name: w.name, threads: w.threads, memoryLimit: 1 << 30, peerEndpoint: w.endpoint, pid: Int32(i + 1), holdings: [])
                send(Message(from: .worker(i), fromIncarnation: w.incarnation, to: .scheduler, toIncarnation: scheduler == nil ? nil : schedulerIncarnation,
                             envelope: e, frames: []))
            case .toPeer(_, let endpoint, let e):
                guard let j = workers.firstIndex(where: { $0.endpoint == endpoint }) else {
                    perform(i, w.engine.peerUnreachable(0, "no such endpoint \(endpoint)"))
                    continue
                }
                send(Message(from: .worker(i), fromIncarnation: w.incarnation, to: .worker(j), toIncarnation: workers[j].alive ? workers[j].incarnation : nil,
                             envelope: e, frames: []))
            case .replyToPeer(let routing, let e, let f):
                // The routing id names the requesting worker's index and start.
                guard routing.count == 2 else { continue }
                send(Message(from: .worker(i), fromIncarnation: w.incarnation, to: .worker(Int(routing[0])), toIncarnation: Int(routing[1]),
                             envelope: e, frames: f, isPeerReply: true))
            case .execute(let tasks):
                w.pool.queue.append(contentsOf: tasks)
                startTasks(i)
            case .spill(let kv):
                // Written on another thread: done a little later.
                schedule(at: now + UInt64.random(in: 100_000...3_000_000, using: &rng), .spillWritten(i, incarnation: w.incarnation, kv))
            case .removeShards, .note:
                break
            }
        }
    }

    func startTasks(_ i: Int) {
        let w = workers[i]
        guard w.alive, !w.pool.stalled else { return }
        for s in w.pool.running.indices where w.pool.running[s] == nil {
            guard let t = w.pool.queue.popFirst() else { return }
            w.pool.running[s] = t
            var d = UInt64.random(in: 100_000...5_000_000, using: &rng)
            if rng.next() % 200 == 0 { d += randomDelay(0.2...1.5) }
            schedule(at: now + d, .taskDone(i, incarnation: w.incarnation, slot: s))
        }
    }

    func taskDone(_ i: Int, slot: Int) {
        let w = workers[i]
        guard let t = w.pool.running[slot] else { return }
        w.pool.running[slot] = nil
        let result: Result<Value, OperatorError>
        do throws(OperatorError) { result = .success(try t.op.run(t.context)) } catch { result = .failure(error) }
        perform(i, w.engine.completed([Completion(key: t.key, flags: t.flags, result: result, micros: 500, generation: t.generation)]))
        startTasks(i)
    }

    func toWorker(_ i: Int, _ m: Message) {
        let w = workers[i]
        switch m.envelope.body {
        case .fetchRequest(let r) where !m.isPeerReply:
            guard case .worker(let from) = m.from else { return }
            perform(i, [w.engine.serveFetch(r, epoch: m.envelope.epoch, from: [UInt8(from), UInt8(truncatingIfNeeded: m.fromIncarnation)])])
        case .fetchReply(let r):
            perform(i, w.engine.fetched(r, frames: m.frames))
        default:
            perform(i, w.engine.handleScheduler(m.envelope, now: now, pool: w.pool))
        }
    }

    // MARK: Clients

    func makeClient(_ i: Int) -> Client {
        var s = Tessera_V1_SubmitJob()
        s.name = "sim-\(i)"
        var frames: [[UInt8]] = []
        var expected: [UInt32: Int64] = [:]
        switch rng.next() % 4 {
        case 0:
            let leaves = UInt64.random(in: 1...300, using: &rng)
            s.plan = Workloads.treeReduce(leaves: leaves, fanIn: UInt32.random(in: 2...8, using: &rng))
            // One output, the root (its index is the plan expansion's business): the sum.
            expected[Self.anyTask] = Int64(leaves * (leaves + 1) / 2)
        case 1:
            let n = UInt64.random(in: 1...40, using: &rng)
            s.plan = Workloads.chain(length: n)
            expected[UInt32(n - 1)] = Int64(n)
        default:
            let g = Workloads.randomGraph(tasks: Int.random(in: 1...250, using: &rng), seed: rng.next(), explicitOutputs: rng.next() % 2 == 0)
            let values = Workloads.bruteForce(g)
            for o in Workloads.outputTasks(g) { expected[o] = values[Int(o)] }
            let (spec, f) = g.encoded()
            s.graph = spec
            frames = f
        }
        return Client(index: i, submission: s, frames: frames, expected: expected)
    }

    /// In `expected`: the job has one output, whichever task it is.
    static let anyTask = UInt32.max

    func isExpected(_ values: [UInt32: Int64], _ expected: [UInt32: Int64]) -> Bool {
        if let v = expected[Self.anyTask] { return values.count == 1 && values.first?.value == v }
        return values == expected
    }

    func submit(_ c: Client) {
        seq += 1
        c.tag = seq
        var s = c.submission
        s.clientTag = c.tag
        var e = Envelope()
        e.submitJob = s
        e.epoch = c.epochHeard
        c.job = nil
        c.submittedAt = now
        clientSend(c, e, frames: c.frames)
    }

    func clientSend(_ c: Client, _ e: Envelope, frames: [[UInt8]] = []) {
        send(Message(from: .client(c.index), fromIncarnation: 1, to: .scheduler, toIncarnation: scheduler == nil ? nil : schedulerIncarnation,
                     envelope: e, frames: frames))
    }

    func clientTimer(_ c: Client) {
        guard !c.vanished, c.outcome == nil else { return }
        if let job = c.job, now &- c.lastHeartbeat >= ClientTiming.heartbeatIntervalNs {
            var h = Envelope()
            h.clientHeartbeat.jobIds = [job]
            h.epoch = c.jobEpoch
            clientSend(c, h)
            c.lastHeartbeat = now
        }
        if c.job == nil && now &- c.submittedAt > ClientTiming.acceptTimeoutNs {
            // As `SchedulerConnection.submit`: no acceptance in time is an error to the caller.
            c.outcome = .failed("timed out: the scheduler did not accept the job")
            return
        }
        schedule(at: now + 250_000_000, .clientTimer(c.index))
    }

    func toClient(_ i: Int, _ m: Message) {
        let c = clients[i]
        guard !c.vanished, c.outcome == nil else { return }
        if m.envelope.epoch != 0 { c.epochHeard = m.envelope.epoch }
        switch m.envelope.body {
        case .jobAccepted(let a) where a.clientTag == c.tag:
            c.job = a.jobID
            c.jobEpoch = m.envelope.epoch
        case .jobResults(let r) where r.jobID == c.job:
            for info in r.values where !info.partial {
                guard case .int64(let v)? = try? Value(info: info, frames: m.frames) else {
                    c.outcome = .wrong("an output that is not an integer")
                    return
                }
                c.values[TaskKey.task(info.key)] = v
            }
        case .jobFinished(let f) where f.jobID == c.job:
            switch f.state {
            case .jobDone:
                if isExpected(c.values, c.expected) {
                    c.outcome = .correct
                } else {
                    let got = c.values.sorted { $0.key < $1.key }, want = c.expected.sorted { $0.key < $1.key }
                    let what = "job \(f.jobID) done with \(got.count) outputs \(got.prefix(4)), expected \(want.count): \(want.prefix(4))"
                    c.outcome = .wrong(what)
                    report.violations.append("client \(i): wrong answer: \(what)")
                }
            default:
                c.outcome = .failed(f.error)
                if f.error.isEmpty { report.violations.append("client \(i)'s job \(f.jobID) ended \(f.state) without saying why") }
            }
        case .error(let err) where err.clientTag == c.tag && c.job == nil:
            c.outcome = .failed(err.message)
        case .error(let err) where err.jobID != 0 && err.jobID == c.job && err.code == .errorSchedulerRestarted:
            // As `SchedulerConnection.run`: submit again, keep the outputs already here.
            if c.resubmissions < ClientTiming.resubmissions {
                c.resubmissions += 1
                submit(c)
            } else {
                c.outcome = .failed(err.message)
            }
        default:
            break
        }
    }

    // MARK: Events

    func handle(_ e: Event) {
        switch e {
        case .deliver(let m):
            deliver(m)
        case .schedulerTick:
            guard scheduler != nil else { return }
            scheduler!.tick(now: now)
            flushScheduler()
            schedule(at: now + 50_000_000, .schedulerTick)
        case .schedulerStart:
            startScheduler()
        case .workerStart(let i):
            if !workers[i].alive { startWorker(i) }
        case .workerTimer(let i, let inc):
            let w = workers[i]
            guard w.alive, w.incarnation == inc else { return }
            perform(i, w.engine.timers(now: now))
            schedule(at: now + 50_000_000, .workerTimer(i, incarnation: inc))
        case .taskDone(let i, let inc, let slot):
            guard workers[i].alive, workers[i].incarnation == inc else { return }
            taskDone(i, slot: slot)
        case .clientStart(let i):
            submit(clients[i])
            schedule(at: now + 250_000_000, .clientTimer(i))
        case .clientTimer(let i):
            clientTimer(clients[i])
        case .fault:
            guard !faultsStopped else { return }
            injectFault()
            schedule(at: now + randomDelay(0.2...4), .fault)
        case .spillWritten(let i, let inc, let kv):
            let w = workers[i]
            guard w.alive, w.incarnation == inc else { return }
            // Now and then the disk is full: those values stay in memory.
            let failed = rng.next() % 20 == 0 ? kv.map(\.key) : []
            if failed.isEmpty { for (k, v) in kv { w.disk.values[k] = v } }
            w.engine.spillWritten(failed.isEmpty ? kv.map(\.key) : [], failed: failed)
        case .unstall(let i, let inc):
            guard workers[i].alive, workers[i].incarnation == inc else { return }
            workers[i].pool.stalled = false
            startTasks(i)
        }
    }

    func injectFault() {
        let r = rng.next() % 100
        let i = Int(rng.next() % UInt64(workers.count))
        let w = workers[i]
        switch r {
        case 0..<35 where w.alive:
            kill(worker: i)
            report.faults.append("t=\(now / 1_000_000) ms: worker \(i) killed")
            report.workerRestarts += 1
            schedule(at: now + randomDelay(0.1...4), .workerStart(i))
        case 35..<45 where w.alive:
            // A graceful stop: unstarted tasks handed back.
            let bye = w.engine.deregister(reason: "simulated stop", pool: w.pool)
            perform(i, [.toScheduler(bye, [])])
            kill(worker: i)
            report.faults.append("t=\(now / 1_000_000) ms: worker \(i) stopped")
            report.workerRestarts += 1
            schedule(at: now + randomDelay(0.1...3), .workerStart(i))
        case 45..<60 where w.alive && !w.pool.stalled:
            w.pool.stalled = true
            report.faults.append("t=\(now / 1_000_000) ms: worker \(i)'s executor stalls")
            schedule(at: now + randomDelay(1...8), .unstall(i, incarnation: w.incarnation))
        case 60..<75 where scheduler != nil:
            scheduler = nil
            report.schedulerRestarts += 1
            report.faults.append("t=\(now / 1_000_000) ms: scheduler killed")
            schedule(at: now + randomDelay(0.1...3), .schedulerStart)
        case 75..<82:
            let live = clients.filter { !$0.vanished && $0.outcome == nil && $0.job != nil }
            guard !live.isEmpty else { return }
            let c = live[Int(rng.next() % UInt64(live.count))]
            c.vanished = true
            c.outcome = .abandoned
            report.faults.append("t=\(now / 1_000_000) ms: client \(c.index) vanished")
        default:
            break
        }
    }

    func reviveEverything() {
        if scheduler == nil { startScheduler() }
        for w in workers {
            if !w.alive { startWorker(w.index) }
            w.pool.stalled = false
            startTasks(w.index)
        }
    }

    // MARK: Checks

    func checkEngines() {
        if let s = scheduler {
            for v in s.invariantViolations() { report.violations.append("t=\(now / 1_000_000) ms scheduler: \(v)") }
        }
        for w in workers where w.alive {
            for v in w.engine.invariantViolations() { report.violations.append("t=\(now / 1_000_000) ms \(w.name): \(v)") }
        }
    }

    /// Every value a worker holds is one the scheduler still counts on it for, or one whose
    /// release is on its way (a release or cancel to it, or its own report of the task).
    func checkHeldValues() {
        guard let s = scheduler else { return }
        var coveredKeys: [Int: Set<UInt64>] = [:]
        var coveredJobs: [Int: Set<JobID>] = [:]
        for t in queue {
            guard case .deliver(let m) = t.event else { continue }
            switch (m.to, m.from, m.envelope.body) {
            case (.worker(let i), _, .releaseResults(let r)): coveredKeys[i, default: []].formUnion(r.keys)
            case (.worker(let i), _, .cancelTasks(let c)):
                coveredJobs[i, default: []].formUnion(c.jobIds)
                coveredKeys[i, default: []].formUnion(c.taskKeys)
            case (_, .worker(let i), .taskReport(let r)): coveredKeys[i, default: []].formUnion(r.doneKeys)
            default: break
            }
        }
        for w in workers where w.alive && w.engine.isRegistered && w.engine.epoch == config.epoch && s.isLive(w.engine.workerID) {
            for key in w.engine.storedKeys where !s.expectsValue(key, on: w.engine.workerID) {
                if coveredKeys[w.index]?.contains(key) == true || coveredJobs[w.index]?.contains(TaskKey.job(key)) == true { continue }
                report.violations.append("t=\(now / 1_000_000) ms: \(w.name) holds \(key), which no task needs and nothing will release")
            }
        }
    }

    func checkEnd() {
        guard let s = scheduler else {
            report.violations.append("the scheduler is down at the end")
            return
        }
        if s.activeJobCount > 0 { report.violations.append("the scheduler still has \(s.activeJobCount) jobs at the end") }
        let status = { () -> Tessera_V1_StatusReply in var copy = s; return copy.status(now: self.now) }()
        for ws in status.workers where ws.inFlight > 0 { report.violations.append("worker \(ws.name) still has \(ws.inFlight) tasks in flight at the end") }
        for w in workers where w.alive {
            if w.engine.storedResults > 0 { report.violations.append("\(w.name) still holds \(w.engine.storedResults) values at the end") }
            if !w.disk.values.isEmpty { report.violations.append("\(w.name) still has \(w.disk.values.count) spilled values on disk at the end") }
            if !w.engine.activeTaskKeys.isEmpty { report.violations.append("\(w.name) still has \(w.engine.activeTaskKeys.count) tasks at the end") }
        }
    }
}
