import TesseraCompute
import TesseraProtocol
@testable import TesseraScheduler

/// A task a fake worker was assigned and has not reported yet.
struct QueuedTask {
    var key: UInt64
    var op: UInt32
    var arg: Int64
    var paramIndex: UInt32
    var flags: UInt32
    var inputKeys: [UInt64]
    var inputHolders: [WorkerID]
}

/// A worker with no sockets: it keeps the values it was asked to keep and computes with the real operators.
final class FakeWorker {
    let connection: ConnectionID
    let name: String
    let threads: Int
    let operators: [String]
    var id: WorkerID = 0
    var alive = true
    /// When true, the worker receives assignments but runs nothing.
    var paused = false
    var store: [UInt64: Value] = [:]
    var queue: [QueuedTask] = []
    var setups: [JobID: Tessera_V1_JobSetup] = [:]
    var cancelMessages: [Tessera_V1_CancelTasks] = []
    var releasedKeys: [UInt64] = []
    var errors: [Tessera_V1_ErrorReply] = []
    var assignMessages = 0
    var assignedKeys: [UInt64] = []
    /// Keys to report as missing-input failures once even though the holder has them (a fetch timeout).
    var failFetchOf: Set<UInt64> = []
    /// Keys to report as missing-input failures every time (a value no read can bring).
    var neverFetch: Set<UInt64> = []
    /// Whether it registers as reporting the interactive tasks it begins, and those its next
    /// heartbeat reports begun.
    var reportsStarts = false
    var startsToReport: [UInt64] = []

    init(connection: ConnectionID, name: String, threads: Int, operators: [String]) {
        self.connection = connection
        self.name = name
        self.threads = threads
        self.operators = operators
    }
}

/// What a client connection learned about one of its jobs.
struct ClientJob {
    var owner: ConnectionID
    var accepted: Tessera_V1_JobAccepted
    var results: [UInt32: Value] = [:]
    var finished: Tessera_V1_JobFinished?
}

let standardOperators = ["inc", "sum", "noop", "fail", "count", "moments", "merge_moments"]

/// Drives a `SchedulerCore` with fake workers and clients and records everything it sees, plus any
/// broken invariant in `violations`.
final class FakeCluster {
    var core: SchedulerCore
    var now: UInt64 = 1_000_000_000
    var workers: [FakeWorker] = []
    var workerByConnection: [ConnectionID: FakeWorker] = [:]
    var workerByID: [WorkerID: FakeWorker] = [:]
    let registry = OperatorRegistry.standard
    var nextConnection: ConnectionID = 1
    var nextClientTag: UInt64 = 100
    var jobs: [JobID: ClientJob] = [:]
    var clientErrors: [ConnectionID: [Tessera_V1_ErrorReply]] = [:]
    var statusReplies: [ConnectionID: [Tessera_V1_StatusReply]] = [:]
    /// Job ids each client connection heard about (results or finish).
    var jobsSeenByClient: [ConnectionID: Set<JobID>] = [:]
    var acceptedByTag: [UInt64: JobID] = [:]
    var violations: [String] = []
    /// Values read from another fake worker's store.
    var transfers = 0
    var missingInputReports = 0
    /// Kept values still stored when a CancelTasks for a job that finished `done` arrived (never released).
    var droppedByCancel: [UInt64] = []
    /// Keys currently outstanding (assigned, unreported) per worker id.
    var outstanding: [UInt64: WorkerID] = [:]
    /// Workers the scheduler has been told (or has decided) are gone.
    var departed: Set<WorkerID> = []
    /// Killed workers the scheduler does not yet know are dead.
    var undetectedDeaths: [FakeWorker] = []
    var lastFlush: [OutgoingMessage] = []
    /// What every task reports it took (a test may change it midway).
    var computeMicros: UInt32 = 1000 { didSet { limitsSettled = false } }
    /// False once `computeMicros` changed: the scheduler's smoothed task time, and so its limit,
    /// then lag behind, and tasks sent under an earlier, higher limit are still in flight.
    var limitsSettled = true
    var rng: SplitMix64

    init(config: SchedulerConfig = .init(), seed: UInt64 = 1) {
        core = SchedulerCore(config: config, now: now)
        rng = SplitMix64(seed: seed)
    }

    // MARK: Workers

    @discardableResult
    func addWorker(name: String? = nil, threads: Int = 1, operators: [String] = standardOperators, holdings: [String] = [],
                   reportsStarts: Bool = false, flush: Bool = true) -> FakeWorker {
        let c = nextConnection
        nextConnection += 1
        let w = FakeWorker(connection: c, name: name ?? "w\(c)", threads: threads, operators: operators)
        workers.append(w)
        workerByConnection[c] = w
        var r = Tessera_V1_RegisterWorker()
        r.name = w.name
        r.threads = UInt32(threads)
        r.peerEndpoint = "tcp://fake-\(c):7000"
        r.pid = Int32(c)
        r.operators = operators
        r.holdings = holdings
        r.reportsStarts = reportsStarts
        w.reportsStarts = reportsStarts
        var e = Envelope()
        e.registerWorker = r
        core.handleWorker(c, e, frames: [], now: now)
        if flush { flushAndProcess() }
        return w
    }

    func addWorkers(_ n: Int, threads: [Int] = [1]) -> [FakeWorker] {
        let ws = (0..<n).map { addWorker(threads: threads[$0 % threads.count], flush: false) }
        flushAndProcess()
        return ws
    }

    var liveWorkers: [FakeWorker] { workers.filter(\.alive) }

    /// Tasks a worker of `threads` threads may have in flight, from the config, given that every
    /// report says each task took `computeMicros`.
    func expectedLimit(_ w: FakeWorker) -> Int {
        let c = core.config
        let perThread = min(Double(c.maxInFlightPerThread),
                            max(Double(c.minInFlightPerThread), (c.queuedWorkTargetMicros / Double(computeMicros)).rounded(.up)))
        return w.threads * Int(perThread)
    }

    /// The worker process vanishes: nothing it holds can be fetched any more; the scheduler finds out later.
    func kill(_ w: FakeWorker) {
        w.alive = false
        for t in w.queue { outstanding.removeValue(forKey: t.key) }
        w.queue = []
        undetectedDeaths.append(w)
    }

    /// Advances the clock past the heartbeat timeout (live workers heartbeat, and so do the
    /// clients waiting for jobs, as real ones do every second) and ticks.
    func detectDeaths() {
        now += core.config.workerTimeoutNs + 1
        for w in liveWorkers where w.id != 0 { heartbeat(w) }
        clientHeartbeats()
        core.tick(now: now)
        for w in undetectedDeaths { departed.insert(w.id) }
        undetectedDeaths = []
        flushAndProcess()
    }

    func heartbeat(_ w: FakeWorker) {
        var h = Tessera_V1_Heartbeat()
        h.workerID = w.id
        h.storedResults = UInt32(w.store.count)
        h.started = w.startsToReport
        w.startsToReport = []
        var e = Envelope()
        e.heartbeat = h
        e.epoch = core.config.epoch
        core.handleWorker(w.connection, e, frames: [], now: now)
    }

    /// A graceful goodbye that hands back every task not started.
    func deregister(_ w: FakeWorker) {
        var d = Tessera_V1_Deregister()
        d.workerID = w.id
        d.reason = "test"
        d.handedBack = w.queue.map(\.key)
        var e = Envelope()
        e.deregister = d
        e.epoch = core.config.epoch
        core.handleWorker(w.connection, e, frames: [], now: now)
        w.alive = false
        for t in w.queue { outstanding.removeValue(forKey: t.key) }
        w.queue = []
        departed.insert(w.id)
        flushAndProcess()
    }

    // MARK: Clients

    /// Submits a job; returns its id, or nil when it was refused (see `clientErrors`).
    @discardableResult
    func submit(_ plan: Tessera_V1_Plan, client: ConnectionID = 1000, name: String = "job", identity: ClientIdentity = .local) -> JobID? {
        var s = Tessera_V1_SubmitJob()
        s.plan = plan
        return submit(s, frames: [], client: client, name: name, identity: identity)
    }

    @discardableResult
    func submit(_ graph: TaskGraph, client: ConnectionID = 1000, name: String = "graph") -> JobID? {
        let (spec, frames) = graph.encoded()
        var s = Tessera_V1_SubmitJob()
        s.graph = spec
        return submit(s, frames: frames, client: client, name: name)
    }

    func submit(_ submission: Tessera_V1_SubmitJob, frames: [[UInt8]], client: ConnectionID, name: String, identity: ClientIdentity = .local) -> JobID? {
        var s = submission
        s.name = name
        s.clientTag = nextClientTag
        nextClientTag += 1
        var e = Envelope()
        e.submitJob = s
        core.handleClient(client, e, frames: frames, now: now, identity: identity)
        flushAndProcess()
        return acceptedByTag[s.clientTag]
    }

    /// Every client with unfinished jobs names them, stamped with the epoch it heard (or `epoch`).
    func clientHeartbeats(epoch: UInt64? = nil) {
        let waiting = Dictionary(grouping: jobs.filter { $0.value.finished == nil }, by: \.value.owner)
        for (client, js) in waiting.sorted(by: { $0.key < $1.key }) {
            var h = Tessera_V1_ClientHeartbeat()
            h.jobIds = js.map(\.key).sorted()
            var e = Envelope()
            e.clientHeartbeat = h
            e.epoch = epoch ?? core.config.epoch
            core.handleClient(client, e, frames: [], now: now)
        }
    }

    func cancel(_ job: JobID, client: ConnectionID = 1000, identity: ClientIdentity = .local) {
        var c = Tessera_V1_CancelJob()
        c.jobID = job
        var e = Envelope()
        e.cancelJob = c
        core.handleClient(client, e, frames: [], now: now, identity: identity)
        flushAndProcess()
    }

    func requestStatus(client: ConnectionID = 1000, identity: ClientIdentity = .local, onBehalfOf: String = "") -> Tessera_V1_StatusReply? {
        var e = Envelope()
        e.statusRequest = Tessera_V1_StatusRequest()
        e.statusRequest.onBehalfOf = onBehalfOf
        core.handleClient(client, e, frames: [], now: now, identity: identity)
        flushAndProcess()
        return statusReplies[client]?.last
    }

    // MARK: Running

    /// Every live, unpaused worker runs up to `perWorker` of its queued tasks (all when nil; a
    /// random number when `random`) and reports; then the scheduler flushes once.
    func step(perWorker: Int? = nil, random: Bool = false) {
        for w in workers where w.alive && !w.paused && w.id != 0 && !w.queue.isEmpty {
            var k = perWorker ?? w.queue.count
            if random { k = Int(rng.next() % UInt64(w.queue.count + 1)) }
            k = min(k, w.queue.count)
            if k == 0 { continue }
            if random {
                w.queue.shuffle(using: &rng)
            }
            // As a real worker does, a pipelined task waits for an input still being computed
            // here (queued, not yet run) instead of reporting it missing.
            let queued = Set(w.queue.map(\.key))
            var batch: [QueuedTask] = []
            var inBatch = Set<UInt64>()
            var rest: [QueuedTask] = []
            for t in w.queue {
                let blocked = zip(t.inputKeys, t.inputHolders).contains { key, h in
                    h == w.id && w.store[key] == nil && queued.contains(key) && !inBatch.contains(key)
                }
                if batch.count < k && !blocked {
                    batch.append(t)
                    inBatch.insert(t.key)
                } else {
                    rest.append(t)
                }
            }
            w.queue = rest
            if batch.isEmpty { continue }
            report(batch, from: w)
        }
        now += 1_000_000
        flushAndProcess()
    }

    /// Runs until every listed job has finished; false if it stalls or runs out of steps.
    @discardableResult
    func run(until ids: [JobID], perWorker: Int? = nil, random: Bool = false, maxSteps: Int = 200_000) -> Bool {
        for _ in 0..<maxSteps {
            if ids.allSatisfy({ jobs[$0]?.finished != nil }) { return true }
            let busy = workers.contains { $0.alive && !$0.paused && !$0.queue.isEmpty }
            if !busy {
                if !undetectedDeaths.isEmpty { detectDeaths(); continue }
                // Nothing queued anywhere: one more flush must produce work, or we are stuck.
                step()
                if !workers.contains(where: { $0.alive && !$0.paused && !$0.queue.isEmpty }) && !ids.allSatisfy({ jobs[$0]?.finished != nil }) {
                    violations.append("stalled at t=\(now) with jobs \(ids.filter { jobs[$0]?.finished == nil }) unfinished")
                    return false
                }
                continue
            }
            step(perWorker: perWorker, random: random)
        }
        violations.append("ran out of steps")
        return false
    }

    func report(_ batch: [QueuedTask], from w: FakeWorker) {
        var r = Tessera_V1_TaskReport()
        r.workerID = w.id
        var frame: [UInt8] = []
        for t in batch {
            outstanding.removeValue(forKey: t.key)
            execute(t, on: w, report: &r, frame: &frame)
        }
        var e = Envelope()
        e.taskReport = r
        e.epoch = core.config.epoch
        core.handleWorker(w.connection, e, frames: r.outputs.isEmpty ? [] : [frame], now: now)
    }

    func execute(_ t: QueuedTask, on w: FakeWorker, report r: inout Tessera_V1_TaskReport, frame: inout [UInt8]) {
        func fail(_ kind: Tessera_V1_FailureKind, _ message: String, missing: [UInt64] = [], holders: [WorkerID] = []) {
            var f = Tessera_V1_TaskFailure()
            f.key = t.key
            f.kind = kind
            f.message = message
            f.missingInputs = missing
            f.missingHolders = holders
            r.failures.append(f)
        }
        let job = TaskKey.job(t.key)
        guard let setup = w.setups[job], Int(t.op) < setup.operators.count else {
            violations.append("worker \(w.name) got task \(t.key) with no operator table for job \(job)")
            return fail(.failureOperator, "no operator table")
        }
        let name = setup.operators[Int(t.op)]
        guard w.operators.contains(name), let op = registry[name] else {
            return fail(.failureUnknownOperator, "no operator `\(name)`")
        }
        var inputs: [Value] = []
        var missing: [UInt64] = []
        var missingHolders: [WorkerID] = []
        for (k, h) in zip(t.inputKeys, t.inputHolders) {
            if w.failFetchOf.remove(k) != nil || w.neverFetch.contains(k) { missing.append(k); missingHolders.append(h); continue }
            if h == w.id || h == 0 {
                if let v = w.store[k] { inputs.append(v) } else { missing.append(k); missingHolders.append(h) }
            } else if let other = workerByID[h], other.alive, let v = other.store[k] {
                inputs.append(v)
                transfers += 1
            } else {
                missing.append(k)
                missingHolders.append(h)
            }
        }
        if !missing.isEmpty {
            missingInputReports += 1
            return fail(.failureMissingInput, "inputs missing", missing: missing, holders: missingHolders)
        }
        let params = t.paramIndex > 0 && Int(t.paramIndex) <= setup.params.count ? setup.params[Int(t.paramIndex) - 1] : .init()
        do throws(OperatorError) {
            let v = try op.run(OperatorContext(arg: t.arg, params: params, inputs: inputs))
            r.doneKeys.append(t.key)
            r.resultBytes.append(UInt64(v.byteCount))
            r.computeUs.append(computeMicros)
            if t.flags & AssignFlags.keep != 0 { w.store[t.key] = v }
            if t.flags & AssignFlags.output != 0 { r.outputs.append(v.append(to: &frame, key: t.key, frameIndex: 0)) }
        } catch {
            fail(error.retryable ? .failureOperator : .failureRefused, error.description)
        }
    }

    // MARK: Messages out of the scheduler

    func flushAndProcess() {
        lastFlush = core.flush(now: now)
        process(lastFlush)
    }

    func process(_ messages: [OutgoingMessage]) {
        var assignsPerWorker: [ConnectionID: Int] = [:]
        // A task taken from one worker past its deadline may be given to another in the same
        // turn: it is no longer outstanding on the first.
        for m in messages {
            if case .cancelTasks(let ct) = m.envelope.body { for k in ct.taskKeys { outstanding.removeValue(forKey: k) } }
        }
        for m in messages {
            switch m.destination {
            case .worker(let c):
                guard let w = workerByConnection[c] else {
                    violations.append("message to unknown worker connection \(c)")
                    continue
                }
                switch m.envelope.body {
                case .registerAck(let a):
                    w.id = a.workerID
                    workerByID[a.workerID] = w
                case .assignTasks(let a):
                    assignsPerWorker[c, default: 0] += 1
                    if assignsPerWorker[c]! > 1 { violations.append("two AssignTasks for \(w.name) in one flush") }
                    receive(a, on: w)
                case .releaseResults(let r):
                    for k in r.keys { w.store.removeValue(forKey: k) }
                    w.releasedKeys.append(contentsOf: r.keys)
                case .cancelTasks(let ct):
                    w.cancelMessages.append(ct)
                    let gone = Set(ct.jobIds)
                    for k in w.store.keys where gone.contains(TaskKey.job(k)) {
                        if w.alive, jobs[TaskKey.job(k)]?.finished?.state == .jobDone { droppedByCancel.append(k) }
                        w.store.removeValue(forKey: k)
                    }
                    // Tasks past their deadline are forgotten, as a real worker does.
                    let overdue = Set(ct.taskKeys)
                    for t in w.queue where gone.contains(TaskKey.job(t.key)) || overdue.contains(t.key) { outstanding.removeValue(forKey: t.key) }
                    w.queue.removeAll { gone.contains(TaskKey.job($0.key)) || overdue.contains($0.key) }
                case .error(let err):
                    w.errors.append(err)
                default:
                    violations.append("unexpected message to worker: \(m.envelope)")
                }
            case .client(let c):
                switch m.envelope.body {
                case .jobAccepted(let a):
                    jobs[a.jobID] = ClientJob(owner: c, accepted: a)
                    acceptedByTag[a.clientTag] = a.jobID
                case .jobResults(let r):
                    jobsSeenByClient[c, default: []].insert(r.jobID)
                    guard jobs[r.jobID]?.owner == c else {
                        violations.append("results of job \(r.jobID) sent to client \(c), not its owner")
                        continue
                    }
                    for info in r.values {
                        let t = TaskKey.task(info.key)
                        if TaskKey.job(info.key) != r.jobID { violations.append("value \(info.key) in results of job \(r.jobID)") }
                        guard let v = try? Value(info: info, frames: m.frames) else {
                            violations.append("unreadable value \(info.key)")
                            continue
                        }
                        if jobs[r.jobID]!.results[t] != nil { violations.append("output \(t) of job \(r.jobID) delivered twice") }
                        jobs[r.jobID]!.results[t] = v
                    }
                case .jobFinished(let f):
                    jobsSeenByClient[c, default: []].insert(f.jobID)
                    guard jobs[f.jobID]?.owner == c else {
                        violations.append("JobFinished of job \(f.jobID) sent to client \(c), not its owner")
                        continue
                    }
                    if jobs[f.jobID]!.finished != nil { violations.append("job \(f.jobID) finished twice") }
                    jobs[f.jobID]!.finished = f
                case .error(let err):
                    clientErrors[c, default: []].append(err)
                case .statusReply(let s):
                    statusReplies[c, default: []].append(s)
                case .pong:
                    break
                default:
                    violations.append("unexpected message to client: \(m.envelope)")
                }
            }
        }
        // In flight, once the whole turn's messages (cancellations included) have arrived.
        for c in assignsPerWorker.keys {
            guard let w = workerByConnection[c], w.alive else { continue }
            // Past the limit, only interactive tasks, and only a few per thread.
            let interactive = w.queue.filter { w.setups[TaskKey.job($0.key)]?.priority == .priorityInteractive }.count
            let others = w.queue.count - interactive
            let limit = limitsSettled ? expectedLimit(w) : w.threads * core.config.maxInFlightPerThread
            if others > limit || interactive > limit + w.threads * core.config.interactiveInFlightPerThread {
                violations.append("\(w.name) has \(w.queue.count) tasks in flight (\(interactive) interactive), limit \(expectedLimit(w))")
            }
        }
    }

    func receive(_ a: Tessera_V1_AssignTasks, on w: FakeWorker) {
        w.assignMessages += 1
        for s in a.jobs { w.setups[s.jobID] = s }
        let n = a.keys.count
        guard a.ops.count == n, a.args.count == n, a.paramIndex.count == n, a.flags.count == n, a.inputCounts.count == n,
              a.inputKeys.count == a.inputHolders.count,
              a.inputCounts.reduce(0, { $0 + Int($1) }) == a.inputKeys.count
        else {
            violations.append("malformed assignment to \(w.name)")
            return
        }
        if !w.alive { return }  // it never arrives
        let peerIDs = Set(a.peers.map(\.workerID))
        var cursor = 0
        for i in 0..<n {
            let c = Int(a.inputCounts[i])
            let keys = Array(a.inputKeys[cursor..<(cursor + c)])
            let holders = Array(a.inputHolders[cursor..<(cursor + c)])
            cursor += c
            let key = a.keys[i]
            if let other = outstanding[key] {
                violations.append("task \(key) assigned to \(w.name) while outstanding on worker \(other)")
            }
            for h in holders {
                if h == 0 { violations.append("task \(key) assigned with an input held by no worker") }
                if departed.contains(h) { violations.append("task \(key) assigned with an input held by departed worker \(h)") }
                if h != w.id, h != 0, !peerIDs.contains(h) { violations.append("assignment names holder \(h) without its endpoint") }
            }
            outstanding[key] = w.id
            w.assignedKeys.append(key)
            w.queue.append(QueuedTask(key: key, op: a.ops[i], arg: a.args[i], paramIndex: a.paramIndex[i], flags: a.flags[i],
                                      inputKeys: keys, inputHolders: holders))
        }
    }

    /// Values still stored on live workers.
    var storedValues: Int { workers.filter(\.alive).reduce(0) { $0 + $1.store.count } }
}
