import struct Foundation.Data
import DequeModule
import Dispatch
import TesseraCompute
import TesseraProtocol
import TesseraStorage

/// Something the worker's event loop must do for the engine.
public enum WorkerAction {
    /// Send to the scheduler.
    case toScheduler(Envelope, [[UInt8]])
    /// Send a fetch request to a peer worker's ROUTER.
    case toPeer(WorkerID, endpoint: String, Envelope)
    /// Reply on the peer ROUTER to the peer with this routing id.
    case replyToPeer(routingID: [UInt8], Envelope, [[UInt8]])
    /// Give these tasks to the executor pool.
    case execute([ExecutableTask])
    /// Send a registration now (the scheduler does not know us). `retry`: the last one went
    /// unanswered for `WorkerEngine.registerRetryNs` (the daemon dials afresh first).
    case register(retry: Bool)
    /// Delete these shard files (no committed dataset references them).
    case removeShards([String])
    /// Something worth a log line.
    case note(String)
    /// Write these values to the spill store, off the event loop; report with `spillWritten`.
    case spill([(key: UInt64, value: Value)])
}

/// Where values beyond the memory limit wait on local disk. Writes are the shell's (on a thread
/// of their own, `WorkerAction.spill`); reading one back and deleting are quick enough for the
/// event loop.
public protocol SpillStore: AnyObject {
    /// A spilled value, read back; nil if it cannot be read.
    func read(_ key: UInt64) -> Value?
    /// Deletes spilled values (those not spilled are ignored).
    func remove(_ keys: [UInt64])
}

/// Cancellation flags per job, shared with the executor threads so long operators stop early.
/// Only the most recent `capacity` are kept: every finished job is cancelled on its workers, and
/// a long-lived worker must not remember them all (the engine's own job table decides whether a
/// result is kept; this only lets running operators stop early).
public final class CancelledJobs: Sendable {
    private let state = LockedBox<(set: Set<JobID>, order: Deque<JobID>)>(([], []))
    public let capacity: Int
    public init(capacity: Int = 1_024) { self.capacity = capacity }
    public func insert(_ id: JobID) {
        state.withLock { s in
            guard s.set.insert(id).inserted else { return }
            s.order.append(id)
            if s.order.count > capacity, let old = s.order.popFirst() { s.set.remove(old) }
        }
    }
    public func contains(_ id: JobID) -> Bool { state.withLock { $0.set.contains(id) } }
    public var count: Int { state.withLock { $0.set.count } }
    public func removeAll() { state.withLock { $0 = ([], []) } }
}

/// The worker's logic without sockets: it takes assignments, releases, cancellations, peer
/// fetches and finished tasks, and says what to send and run. One thread (the event loop) owns it.
public struct WorkerEngine {
    struct JobSetup {
        var operators: [TaskOperator?]
        var names: [String]
        var params: [Tessera_V1_OperatorParams]
        var dataKeys: [String]
        var dataChecksums: [UInt64] = []
        /// For direct results: the key of the client that may take them.
        var clientKey = ""
        /// For direct results: the secret a take must present (the scheduler's; only the job's
        /// client learns it).
        var takeToken: [UInt8] = []
        /// The job's class: its tasks queue by it.
        var priority: UInt8 = 1
    }

    /// A job's direct results held here until its client takes them.
    struct HeldResults {
        /// The CURVE key of the job's client (empty on an insecure cluster: anyone local).
        var clientKey: String
        /// What a take of them must present (empty: anything, from a scheduler that sets none).
        var takeToken: [UInt8] = []
        var count = 0
        /// When the job ended (nil while it runs): untaken results go two minutes later.
        var finishedAt: UInt64?
    }

    /// How long direct results wait for their client after the job ends.
    public static let heldResultsNs: UInt64 = 120_000_000_000

    /// A task waiting for inputs from peers.
    struct PendingTask {
        var key: UInt64
        var op: UInt32
        var arg: Int64
        var paramIndex: UInt32
        var flags: UInt32
        var inputKeys: [UInt64]
        var values: [Value?]
        var missing: Int
        var holders: [WorkerID]
        var dataKey: UInt32 = 0
    }

    public let registry: OperatorRegistry
    public private(set) var workerID: WorkerID = 0
    /// The epoch of the scheduler start this worker registered with (stamped on what it sends).
    public private(set) var epoch: UInt64 = 0
    /// Registrations so far: tasks carry the one they were assigned under, and a completion of
    /// an earlier one is dropped (its job may be another with the same id after a restart).
    public private(set) var generation: UInt32 = 0
    /// This worker's data folder (shards are found under it).
    public var dataRoot: String?
    /// Shard files kept open across tasks, and the decoded column chunks they share (the
    /// daemon's; by default a few files kept open and no chunk cache), handed to every task.
    public var shardReaders = ShardReaderPool(capacity: WorkerEngine.openShardFiles, cache: nil)
    /// The most shard files kept open between tasks: enough for every shard a worker usually
    /// serves, few enough that removed files' space comes back soon.
    public static let openShardFiles = 128
    /// Decoded column chunks kept across tasks (nil: none).
    public var columnCache: DecodedColumnCache? { shardReaders.cache }
    /// The pool's shared-pass counts, for heartbeats (the daemon's pool; nil: none).
    public var scanStatistics: (@Sendable () -> Tessera_V1_ScanStats)?
    /// The interactive tasks begun since the last heartbeat, which it reports (the daemon's
    /// pool; nil: none reported, and the scheduler times them from when it sent them).
    public var startedTasks: (@Sendable () -> [UInt64])?
    let cancelled = CancelledJobs()

    var jobs: [JobID: JobSetup] = [:]
    /// Values kept because other tasks will read them, in memory.
    var store: [UInt64: Value] = [:]
    /// Keys of `store` in the order they were kept: the oldest spill first.
    var storeOrder: Deque<UInt64> = []
    /// Values handed to the spill writer, still in memory until it reports them written.
    var spilling: [UInt64: Value] = [:]
    var spillingBytes = 0
    /// Spilled values whose release came while they were being written: deleted once written.
    var discardWhenWritten: Set<UInt64> = []
    /// Values on disk, with their sizes.
    var spilled: [UInt64: Int] = [:]
    /// Bytes of kept values in memory (`store` and `spilling`).
    public private(set) var storedBytes = 0
    /// Bytes of kept values on disk.
    public private(set) var spilledBytes = 0
    /// Kept values past this many bytes in memory are spilled to `spillStore`, oldest first; a
    /// single value larger than this fails its task.
    public var memoryLimitBytes = Int.max
    /// Where spilled values go (nil: nothing is spilled; the limit still refuses larger values).
    public var spillStore: (any SpillStore)?
    var pending: [UInt64: PendingTask] = [:]
    /// Input key → tasks waiting for it.
    var waitingFor: [UInt64: [UInt64]] = [:]
    /// Outstanding fetches: request id → (peer, keys, sent at).
    var fetches: [UInt64: (peer: WorkerID, keys: [UInt64], sentAt: UInt64)] = [:]
    var nextRequestID: UInt64 = 1
    var lostPeers: Set<WorkerID> = []
    /// Tasks handed to the pool and not yet completed.
    var executing: Set<UInt64> = []
    var failures: [Tessera_V1_TaskFailure] = []
    public private(set) var tasksDone: UInt64 = 0
    /// Shards the scheduler planned for this worker, by ingest: the only ones it will store.
    var expectedShards: [String: ExpectedIngest] = [:]
    /// CURVE public keys of the cluster's workers (from the scheduler): admitted to fetch here.
    public var admittedPeerKeys: Set<String> = []
    /// Direct results waiting for their clients: which job each value is of, and per job who may
    /// take them. The values themselves are kept like any other (in memory, spilled past the limit).
    var heldFor: [UInt64: JobID] = [:]
    var heldResults: [JobID: HeldResults] = [:]
    /// Direct results that other tasks also read: kept until the scheduler releases them, even
    /// once taken (and a release before the take leaves them for the take).
    var awaitingRelease: Set<UInt64> = []
    /// Peers' CURVE public keys, as the scheduler described them with their endpoints.
    public private(set) var peerPublicKeys: [WorkerID: String] = [:]
    /// Fetches older than this fail their tasks with a missing-input report (the scheduler decides).
    public var fetchTimeoutNs: UInt64 = 30_000_000_000

    /// Whether the scheduler has accepted our registration (and not since forgotten us).
    public private(set) var isRegistered = false
    /// When the last registration, heartbeat and tick went out (0: never).
    var lastRegisterAt: UInt64 = 0
    var lastHeartbeatAt: UInt64 = 0
    var lastTickAt: UInt64 = 0
    /// An unanswered registration is sent again after this long.
    public static let registerRetryNs: UInt64 = 5_000_000_000
    /// How often the scheduler wants a heartbeat.
    public private(set) var heartbeatIntervalNs: UInt64 = 500_000_000

    public init(registry: OperatorRegistry = .standard) {
        self.registry = registry
    }

    /// Periodic duties, due or not (call every few tens of milliseconds): a registration while
    /// unregistered (again every `registerRetryNs` without an answer), a heartbeat when due, and
    /// once a second the fetch timeouts.
    /// - Parameter memory: this process's resident and peak resident bytes, asked only when a
    ///   heartbeat is due (reading them costs a file read).
    public mutating func timers(now: UInt64, memory: () -> (rss: UInt64, peak: UInt64) = { (0, 0) }) -> [WorkerAction] {
        var out: [WorkerAction] = []
        if !isRegistered && (lastRegisterAt == 0 || now &- lastRegisterAt > Self.registerRetryNs) {
            out.append(.register(retry: lastRegisterAt != 0))
            lastRegisterAt = now
        }
        if isRegistered && now &- lastHeartbeatAt >= heartbeatIntervalNs {
            let m = memory()
            out.append(.toScheduler(heartbeat(rssBytes: m.rss, peakRSSBytes: m.peak), []))
            lastHeartbeatAt = now
        }
        if now &- lastTickAt > 1_000_000_000 {
            expireHeldResults(now: now)
            out += tick(now: now)
            lastTickAt = now
        }
        return out
    }

    /// A message from the scheduler: what to do about it. The daemon and the simulation both
    /// feed every scheduler message through here.
    public mutating func handleScheduler(_ env: Envelope, now: UInt64, pool: (any TaskPool)?) -> [WorkerAction] {
        switch env.body {
        case .registerAck(let a):
            var out: [WorkerAction] = []
            if epoch != 0 && env.epoch != epoch {
                out.append(.note("the scheduler restarted (epoch \(epoch) → \(env.epoch)): dropping the work of its earlier start"))
            }
            registered(as: a.workerID, epoch: env.epoch, pool: pool)
            admittedPeerKeys = Set(a.peerKeys)
            isRegistered = true
            heartbeatIntervalNs = UInt64(max(a.heartbeatIntervalMs, 10)) * 1_000_000
            out.append(.note("registered as worker \(a.workerID) (epoch \(env.epoch))"))
            return out
        case .assignTasks(let a):
            return assign(a, now: now)
        case .releaseResults(let r):
            release(r)
            return []
        case .cancelTasks(let c):
            return cancel(c, pool: pool, now: now)
        case .expectShards(let x):
            expect(x)
            return []
        case .peerKeys(let k):
            admittedPeerKeys = Set(k.keys)
            return []
        case .removeShards(let r):
            return [.removeShards(r.keys)]
        case .error(let e) where e.code == .errorUnknownWorker:
            // The scheduler restarted or declared us dead: start afresh. (Replies to what we sent
            // before our registration was accepted are ignored: it is on its way.)
            guard isRegistered else { return [] }
            isRegistered = false
            _ = pool?.takeQueued()
            lastRegisterAt = now
            return [.note("scheduler no longer knows this worker; registering again"), .register(retry: false)]
        case .error(let e):
            return [.note("scheduler reported an error: \(e.message.prefix(500))")]
        default:
            return [.note("unexpected message from the scheduler")]
        }
    }

    public var storedResults: Int { store.count + spilling.count + spilled.count }
    public var busy: Int { executing.count + pending.count }

    // MARK: Registration

    public func registration(name: String, threads: Int, memoryLimit: UInt64, peerEndpoint: String, pid: Int32, holdings: [String]) -> Envelope {
        var r = Tessera_V1_RegisterWorker()
        r.name = name
        r.threads = UInt32(threads)
        r.memoryLimit = memoryLimit
        r.peerEndpoint = peerEndpoint
        r.pid = pid
        r.holdings = holdings
        r.operators = registry.names
        r.reportsStarts = startedTasks != nil
        var e = Envelope()
        e.registerWorker = r
        return e
    }

    /// The scheduler accepted us. Anything from a previous registration is void: its jobs,
    /// values, queued and running tasks (their results are dropped when they come) and
    /// cancellations; with a new epoch, the ingests it expected too. Shards on disk stay.
    public mutating func registered(as id: WorkerID, epoch: UInt64 = 0, pool: (any TaskPool)? = nil) {
        workerID = id
        generation &+= 1
        if epoch != self.epoch { expectedShards.removeAll() }
        self.epoch = epoch
        jobs.removeAll()
        forgetValues { _ in true }
        pending.removeAll()
        waitingFor.removeAll()
        fetches.removeAll()
        lostPeers.removeAll()
        failures.removeAll()
        executing.removeAll()
        cancelled.removeAll()
        if let pool { _ = pool.takeQueued() }
    }

    /// An envelope for the scheduler, stamped with our epoch.
    func toScheduler(_ e: Envelope, _ frames: [[UInt8]] = []) -> WorkerAction {
        var e = e
        e.epoch = epoch
        return .toScheduler(e, frames)
    }

    public func heartbeat(rssBytes: UInt64, peakRSSBytes: UInt64) -> Envelope {
        var h = Tessera_V1_Heartbeat()
        h.workerID = workerID
        h.rssBytes = rssBytes
        h.peakRssBytes = peakRSSBytes
        h.storedBytes = UInt64(storedBytes)
        h.storedResults = UInt32(storedResults)
        h.spilledBytes = UInt64(spilledBytes)
        h.running = UInt32(executing.count)
        if let scanStatistics { h.scans = scanStatistics() }
        if let startedTasks { h.started = startedTasks() }
        if let c = columnCache {
            let s = c.statistics
            (h.scans.cacheHits, h.scans.cacheMisses, h.scans.cacheEvictions) = (s.hits, s.misses, s.evictions)
            (h.scans.cacheBytes, h.scans.cacheCapacityBytes) = (UInt64(s.bytes), UInt64(c.capacityBytes))
        }
        var e = Envelope()
        e.heartbeat = h
        e.epoch = epoch
        return e
    }

    // MARK: From the scheduler

    /// A batch of tasks: those with every input at hand run now; the rest fetch from peers first.
    public mutating func assign(_ a: Tessera_V1_AssignTasks, now: UInt64) -> [WorkerAction] {
        for s in a.jobs {
            jobs[s.jobID] = JobSetup(operators: s.operators.map { registry[$0] }, names: s.operators, params: s.params, dataKeys: s.dataKeys,
                                     dataChecksums: s.dataChecksums.count == s.dataKeys.count ? s.dataChecksums : [], clientKey: s.clientKey,
                                     takeToken: [UInt8](s.takeToken), priority: PriorityClass(s.priority).rawValue)
        }
        var peers: [WorkerID: String] = [:]
        for p in a.peers {
            peers[p.workerID] = p.endpoint
            peerPublicKeys[p.workerID] = p.publicKey
        }
        let n = a.keys.count
        guard a.ops.count == n, a.args.count == n, a.paramIndex.count == n, a.flags.count == n, a.inputCounts.count == n,
              a.inputKeys.count == a.inputHolders.count
        else {
            return [malformed("assignment arrays have different lengths")]
        }
        var runNow: [ExecutableTask] = []
        var toFetch: [WorkerID: [UInt64]] = [:]
        var inputCursor = 0
        for i in 0..<n {
            let key = a.keys[i]
            let count = Int(a.inputCounts[i])
            guard inputCursor + count <= a.inputKeys.count else { return [malformed("assignment input counts exceed its inputs")] }
            let inKeys = Array(a.inputKeys[inputCursor..<(inputCursor + count)])
            let holders = Array(a.inputHolders[inputCursor..<(inputCursor + count)])
            inputCursor += count
            var task = PendingTask(key: key, op: a.ops[i], arg: a.args[i], paramIndex: a.paramIndex[i], flags: a.flags[i],
                                   inputKeys: inKeys, values: Array(repeating: nil, count: count), missing: 0, holders: holders,
                                   dataKey: a.dataKey.count == n ? a.dataKey[i] : 0)
            var localMissing: [UInt64] = []
            for j in 0..<count {
                if holders[j] == workerID || holders[j] == 0 {
                    if let v = value(of: inKeys[j]) {
                        task.values[j] = v
                    } else if holders[j] == workerID && (executing.contains(inKeys[j]) || pending[inKeys[j]] != nil) {
                        // Pipelined: the input is being computed here; run when it is done, no round trip.
                        task.missing += 1
                    } else {
                        localMissing.append(inKeys[j])
                    }
                } else {
                    task.missing += 1
                }
            }
            if !localMissing.isEmpty {
                fail(key, .failureMissingInput, "inputs not held here", missing: localMissing,
                     holders: Array(repeating: workerID, count: localMissing.count))
                continue
            }
            if task.missing == 0 {
                if let t = executable(task) {
                    runNow.append(t)
                    executing.insert(t.key)
                }
                continue
            }
            for j in 0..<count where task.values[j] == nil {
                let h = holders[j]
                if h == workerID {
                    waitingFor[inKeys[j], default: []].append(key)
                    continue
                }
                if lostPeers.contains(h) || peers[h] == nil {
                    task.missing = -1
                    break
                }
                waitingFor[inKeys[j], default: []].append(key)
                toFetch[h, default: []].append(inKeys[j])
            }
            if task.missing < 0 {
                let gone = (0..<count).filter { task.values[$0] == nil }
                let lost = gone.map { inKeys[$0] }
                fail(key, .failureMissingInput, "input holder is gone", missing: lost, holders: gone.map { holders[$0] })
                for k in lost { waitingFor[k]?.removeAll { $0 == key } }
                continue
            }
            pending[key] = task
        }
        var actions: [WorkerAction] = []
        if !runNow.isEmpty { actions.append(.execute(runNow)) }
        for (peer, keys) in toFetch.sorted(by: { $0.key < $1.key }) {
            let uniq = Array(Set(keys)).sorted()
            let id = nextRequestID
            nextRequestID += 1
            fetches[id] = (peer, uniq, now)
            var f = Tessera_V1_FetchRequest()
            f.requestID = id
            f.keys = uniq
            var e = Envelope()
            e.fetchRequest = f
            e.epoch = epoch
            actions.append(.toPeer(peer, endpoint: peers[peer] ?? "", e))
        }
        if let r = takeFailureReport() { actions.append(r) }
        return actions
    }

    /// The task as the pool runs it; nil (and a failure queued) when its operator is unknown.
    mutating func executable(_ t: PendingTask) -> ExecutableTask? {
        let jobID = TaskKey.job(t.key)
        guard let setup = jobs[jobID], Int(t.op) < setup.operators.count else {
            fail(t.key, .failureOperator, "no operator table for job \(jobID)")
            return nil
        }
        guard let op = setup.operators[Int(t.op)] else {
            fail(t.key, .failureUnknownOperator, "this worker has no operator `\(setup.names[Int(t.op)])`")
            return nil
        }
        let params = t.paramIndex > 0 && Int(t.paramIndex) <= setup.params.count ? setup.params[Int(t.paramIndex) - 1] : .init()
        let flags = cancelled
        let dataKey = t.dataKey > 0 && Int(t.dataKey) <= setup.dataKeys.count ? setup.dataKeys[Int(t.dataKey) - 1] : nil
        var ctx = OperatorContext(arg: t.arg, params: params, inputs: t.values.map { $0 ?? .empty }, dataKey: dataKey,
                                  dataRoot: dataRoot, isCancelled: { flags.contains(jobID) })
        ctx.shardReaders = shardReaders
        if dataKey != nil, Int(t.dataKey) <= setup.dataChecksums.count { ctx.dataChecksum = setup.dataChecksums[Int(t.dataKey) - 1] }
        return ExecutableTask(key: t.key, op: op, context: ctx, flags: t.flags, profile: UInt64(jobID) << 32 | UInt64(t.op), generation: generation,
                              priority: setup.priority)
    }

    public mutating func release(_ r: Tessera_V1_ReleaseResults) {
        var removed: [UInt64] = []
        for k in r.keys {
            awaitingRelease.remove(k)
            // A direct result its client has yet to take stays for the take.
            if heldFor[k] == nil { forget(k, spilledRemoved: &removed) }
        }
        compactStoreOrder()
        if !removed.isEmpty { spillStore?.remove(removed) }
    }

    /// Drops one kept value, wherever it is (a spilled one's key is added to `spilledRemoved`).
    mutating func forget(_ k: UInt64, spilledRemoved: inout [UInt64]) {
        if let v = store.removeValue(forKey: k) {
            storedBytes -= v.byteCount
        } else if spilling[k] != nil {
            discardWhenWritten.insert(k)
        } else if let bytes = spilled.removeValue(forKey: k) {
            spilledBytes -= bytes
            spilledRemoved.append(k)
        }
    }

    /// Keeps the spill order from growing with keys long gone (amortised: it is rebuilt only
    /// when most of it is stale).
    mutating func compactStoreOrder() {
        if store.isEmpty { storeOrder.removeAll() } else if storeOrder.count > 2 * store.count + 64 {
            storeOrder = Deque(storeOrder.filter { store[$0] != nil })
        }
    }

    // MARK: Kept values: in memory, being spilled, on disk

    /// A kept value, wherever it is (read back from disk if spilled).
    func value(of key: UInt64) -> Value? {
        if let v = store[key] { return v }
        if let v = spilling[key], !discardWhenWritten.contains(key) { return v }
        if spilled[key] != nil { return spillStore?.read(key) }
        return nil
    }

    /// Keeps a value; spills the oldest in memory while over the limit.
    mutating func keep(_ key: UInt64, _ v: Value) -> WorkerAction? {
        // A task run here again (its earlier value lost to a reader, or recomputed) replaces
        // the value it left: counted once.
        if store[key] != nil || spilling[key] != nil || spilled[key] != nil {
            var removed: [UInt64] = []
            forget(key, spilledRemoved: &removed)
            if !removed.isEmpty { spillStore?.remove(removed) }
        }
        store[key] = v
        storeOrder.append(key)
        storedBytes += v.byteCount
        // What is in `store` counts; values already on their way to disk will leave memory.
        guard storedBytes - spillingBytes > memoryLimitBytes, spillStore != nil else { return nil }
        var out: [(key: UInt64, value: Value)] = []
        var notYet: [UInt64] = []
        defer { storeOrder.append(contentsOf: notYet) }
        while storedBytes - spillingBytes > memoryLimitBytes, let k = storeOrder.popFirst() {
            guard store[k] != nil else { continue }
            // An earlier value of the same key is still being written (to the same file): this
            // one waits in memory until that write is done.
            if spilling[k] != nil {
                notYet.append(k)
                continue
            }
            let old = store.removeValue(forKey: k)!
            spilling[k] = old
            spillingBytes += old.byteCount
            out.append((k, old))
        }
        return out.isEmpty ? nil : .spill(out)
    }

    /// The spill writer finished these: written ones leave memory; failed ones stay there.
    public mutating func spillWritten(_ keys: [UInt64], failed: [UInt64]) {
        for k in keys {
            guard let v = spilling.removeValue(forKey: k) else { continue }
            spillingBytes -= v.byteCount
            storedBytes -= v.byteCount
            if discardWhenWritten.remove(k) != nil {
                spillStore?.remove([k])
            } else {
                spilled[k] = v.byteCount
                spilledBytes += v.byteCount
            }
        }
        for k in failed {
            guard let v = spilling.removeValue(forKey: k) else { continue }
            spillingBytes -= v.byteCount
            if discardWhenWritten.remove(k) != nil {
                storedBytes -= v.byteCount
            } else {
                // Back in memory (over the limit until the next spill succeeds).
                store[k] = v
                storeOrder.append(k)
            }
        }
    }

    /// Drops kept values whose keys match, wherever they are.
    mutating func forgetValues(where drop: (UInt64) -> Bool) {
        for k in store.keys where drop(k) {
            if let v = store.removeValue(forKey: k) { storedBytes -= v.byteCount }
        }
        compactStoreOrder()
        for k in spilling.keys where drop(k) { discardWhenWritten.insert(k) }
        if spilling.isEmpty { discardWhenWritten.removeAll() }
        let gone = spilled.keys.filter(drop)
        for k in gone { spilledBytes -= spilled.removeValue(forKey: k) ?? 0 }
        if !gone.isEmpty { spillStore?.remove(gone) }
    }

    /// Forgets cancelled or finished jobs, and tasks that passed their deadline here; fails tasks
    /// that wait on peers the scheduler declared dead.
    public mutating func cancel(_ c: Tessera_V1_CancelTasks, pool: (any TaskPool)?, now: UInt64 = 0) -> [WorkerAction] {
        // Jobs done: forgotten like cancelled ones, except the direct results their clients
        // have yet to take.
        for j in c.finishedJobIds {
            cancelled.insert(j)
            jobs.removeValue(forKey: j)
            if heldResults[j] != nil { heldResults[j]!.finishedAt = now }
        }
        if !c.finishedJobIds.isEmpty {
            let done = Set(c.finishedJobIds)
            let held = heldFor
            forgetValues { done.contains(TaskKey.job($0)) && held[$0] == nil }
            if !awaitingRelease.isEmpty { awaitingRelease = awaitingRelease.filter { !done.contains(TaskKey.job($0)) } }
            for k in pending.keys where done.contains(TaskKey.job(k)) { dropPending(k) }
            if let pool { pool.forgetProfiles(jobs: done) }
        }
        if !c.taskKeys.isEmpty {
            let overdue = Set(c.taskKeys)
            for k in overdue {
                dropPending(k)
                // A run still going on a thread: its completion finds no entry and is dropped.
                executing.remove(k)
            }
            if let pool { _ = pool.takeQueued(where: { overdue.contains($0.key) }) }
        }
        let gone = Set(c.jobIds)
        if !gone.isEmpty {
            for j in gone {
                cancelled.insert(j)
                jobs.removeValue(forKey: j)
                heldResults.removeValue(forKey: j)
            }
            forgetValues { gone.contains(TaskKey.job($0)) }
            if !heldFor.isEmpty { heldFor = heldFor.filter { !gone.contains($0.value) } }
            if !awaitingRelease.isEmpty { awaitingRelease = awaitingRelease.filter { !gone.contains(TaskKey.job($0)) } }
            for k in pending.keys where gone.contains(TaskKey.job(k)) { dropPending(k) }
            if let pool {
                for t in pool.takeQueued(where: { gone.contains(TaskKey.job($0.key)) }) { executing.remove(t.key) }
                pool.forgetProfiles(jobs: gone)
            }
        }
        if !c.lostWorkers.isEmpty {
            lostPeers.formUnion(c.lostWorkers)
            let lost = Set(c.lostWorkers)
            for (id, f) in fetches.sorted(by: { $0.key < $1.key }) where lost.contains(f.peer) {
                fetches.removeValue(forKey: id)
                failWaiting(on: f.keys, "input holder worker \(f.peer) is gone")
            }
        }
        return takeFailureReport().map { [$0] } ?? []
    }

    // MARK: Ingest

    /// The scheduler planned shards for this worker (or, `finished`, forgets an ingest).
    public mutating func expect(_ x: Tessera_V1_ExpectShards) {
        if x.finished {
            expectedShards.removeValue(forKey: x.ingestID)
            return
        }
        var entry = expectedShards[x.ingestID] ?? ExpectedIngest(dataset: x.dataset, clientKey: x.clientKey)
        guard entry.dataset == x.dataset else { return }
        // A shard without a stated size (a scheduler that sends none) may hold nothing.
        if x.bytes.count != x.orders.count { entry.sized = false }
        for (k, (o, p)) in zip(x.orders, x.pixels).enumerated() {
            entry.bytes[ShardPlace(order: o, pixel: p)] = k < x.bytes.count ? x.bytes[k] : 0
        }
        expectedShards[x.ingestID] = entry
    }

    /// An ingest whose shards this worker will store: each planned shard's stated size, and the
    /// shards being written now (one copy of each at a time).
    struct ExpectedIngest {
        var dataset: String
        var clientKey: String
        var bytes: [ShardPlace: UInt64] = [:]
        var storing: Set<ShardPlace> = []
        /// Whether the scheduler stated every shard's size.
        var sized = true
    }

    /// Who a connecting key is to this worker's peer endpoint: `worker` (it may fetch),
    /// `client:KEY` (an ingest client the scheduler announced, which may store the planned
    /// shards, or the client of a job with direct results here, which may take them), or nil.
    public func peerRole(of key: String) -> String? {
        if admittedPeerKeys.contains(key) { return "worker" }
        guard !key.isEmpty else { return nil }
        if expectedShards.values.contains(where: { $0.clientKey == key }) || heldResults.values.contains(where: { $0.clientKey == key })
            || jobs.values.contains(where: { $0.clientKey == key }) {
            return Self.clientRolePrefix + key
        }
        return nil
    }

    /// Why this worker will not store a shard a client sent, or nil when the scheduler planned it here.
    /// - Parameter clientKey: the sender's CURVE key (nil on an insecure cluster): it must be the
    ///   key the scheduler announced for that ingest, not merely one admitted for another reason
    ///   (a user taking direct results).
    ///
    /// A shard admitted counts as being stored until `stored(_:)`: a second copy of it meanwhile
    /// is refused, so a client cannot queue the same planned shard over and over in memory.
    /// - Parameter frameBytes: the message's frames, decoded: at most the size the ingest stated.
    public mutating func admitStore(_ r: Tessera_V1_StoreShard, frameBytes: UInt64, clientKey: String? = nil) -> String? {
        let place = ShardPlace(order: r.order, pixel: r.pixel)
        guard var e = expectedShards[r.ingestID], e.dataset == r.dataset, let stated = e.bytes[place],
              clientKey == nil || clientKey == e.clientKey else {
            return "the scheduler planned no shard order\(r.order)-pix\(r.pixel) of `\(r.dataset.prefix(100))` (ingest `\(r.ingestID.prefix(100))`) for this worker and sender"
        }
        guard frameBytes <= stated else {
            if !e.sized { return "the scheduler gave this worker no shard sizes for ingest `\(r.ingestID.prefix(100))` (a scheduler older than the worker): upgrade the scheduler" }
            return "shard order\(r.order)-pix\(r.pixel) sent \(frameBytes) bytes, over the \(stated) its ingest stated when it began (the size a workspace's quota was checked against)"
        }
        guard e.storing.insert(place).inserted else {
            return "shard order\(r.order)-pix\(r.pixel) is being stored already: wait for its answer before sending it again"
        }
        expectedShards[r.ingestID] = e
        return nil
    }

    /// A shard admitted by `admitStore` is written (or failed): another copy may be sent.
    public mutating func stored(_ r: Tessera_V1_StoreShard) {
        expectedShards[r.ingestID]?.storing.remove(ShardPlace(order: r.order, pixel: r.pixel))
    }

    // MARK: From peers

    /// A peer asks for values we hold. A peer of another epoch (one of us has not yet registered
    /// with the restarted scheduler) is told we hold none: its keys may name other jobs' values.
    public func serveFetch(_ r: Tessera_V1_FetchRequest, epoch requestEpoch: UInt64 = 0, from routingID: [UInt8]) -> WorkerAction {
        var reply = Tessera_V1_FetchReply()
        reply.requestID = r.requestID
        var frame: [UInt8] = []
        for k in r.keys {
            if requestEpoch == epoch, let v = value(of: k) {
                reply.values.append(v.append(to: &frame, key: k, frameIndex: 0))
            } else {
                reply.missing.append(k)
            }
        }
        var e = Envelope()
        e.fetchReply = reply
        e.epoch = epoch
        return .replyToPeer(routingID: routingID, e, [frame])
    }

    /// Whether a take's token is the job's (in time independent of where they differ). A job
    /// without one (a scheduler that sets none) has results no take may have.
    static func sameSecret(_ expected: [UInt8], _ given: Data) -> Bool {
        guard !expected.isEmpty, given.count == expected.count else { return false }
        var difference: UInt8 = 0
        for (a, b) in zip(expected, given) { difference |= a ^ b }
        return difference == 0
    }

    /// The role of a client (ingest or direct results) on the peer endpoint: this prefix, then its key.
    public static let clientRolePrefix = "client:"

    /// A client takes its job's direct results: each value goes once, to the key its job's
    /// client connected with (`clientKey` nil: an insecure cluster, where anyone local may), and
    /// is dropped here once sent. Anything else is reported missing.
    public mutating func serveTake(_ r: Tessera_V1_FetchRequest, clientKey: String?, from routingID: [UInt8]) -> WorkerAction {
        var reply = Tessera_V1_FetchReply()
        reply.requestID = r.requestID
        var frame: [UInt8] = []
        var removed: [UInt64] = []
        for k in r.keys {
            guard let j = heldFor[k], let held = heldResults[j], clientKey == nil || held.clientKey == clientKey,
                  Self.sameSecret(held.takeToken, r.takeToken), let v = value(of: k) else {
                reply.missing.append(k)
                continue
            }
            reply.values.append(v.append(to: &frame, key: k, frameIndex: 0))
            // Gone once sent, unless other tasks still read it (the scheduler releases it then).
            if !awaitingRelease.contains(k) { forget(k, spilledRemoved: &removed) }
            heldFor.removeValue(forKey: k)
            heldResults[j]!.count -= 1
            if heldResults[j]!.count <= 0 && heldResults[j]!.finishedAt != nil { heldResults.removeValue(forKey: j) }
        }
        compactStoreOrder()
        if !removed.isEmpty { spillStore?.remove(removed) }
        var e = Envelope()
        e.fetchReply = reply
        e.epoch = epoch
        return .replyToPeer(routingID: routingID, e, [frame])
    }

    /// Drops direct results their clients left untaken for `heldResultsNs` after the job ended.
    mutating func expireHeldResults(now: UInt64) {
        let expired = Set(heldResults.filter { $0.value.finishedAt.map { now &- $0 > Self.heldResultsNs } ?? false }.keys)
        guard !expired.isEmpty else { return }
        for j in expired { heldResults.removeValue(forKey: j) }
        let keys = Set(heldFor.filter { expired.contains($0.value) }.keys)
        for k in keys { heldFor.removeValue(forKey: k) }
        let awaiting = awaitingRelease
        forgetValues { keys.contains($0) && !awaiting.contains($0) }
    }

    /// A peer answered a fetch: tasks with every input now run.
    public mutating func fetched(_ r: Tessera_V1_FetchReply, frames: [[UInt8]]) -> [WorkerAction] {
        guard let req = fetches.removeValue(forKey: r.requestID) else { return [] }
        var runNow: [ExecutableTask] = []
        for info in r.values {
            guard waitingFor[info.key] != nil else { continue }
            guard let v = try? Value(info: info, frames: frames) else {
                failWaiting(on: [info.key], "peer worker \(req.peer) sent an unreadable value")
                continue
            }
            deliver(info.key, v, into: &runNow)
        }
        let answered = Set(r.values.map(\.key))
        let unanswered = req.keys.filter { !answered.contains($0) }
        if !unanswered.isEmpty { failWaiting(on: unanswered, "peer worker \(req.peer) does not hold it") }
        var actions: [WorkerAction] = []
        if !runNow.isEmpty { actions.append(.execute(runNow)) }
        if let f = takeFailureReport() { actions.append(f) }
        return actions
    }

    /// Hands an input value to the tasks waiting for it; those now complete go to `runNow`.
    mutating func deliver(_ key: UInt64, _ v: Value, into runNow: inout [ExecutableTask]) {
        for tk in waitingFor.removeValue(forKey: key) ?? [] {
            guard var t = pending[tk] else { continue }
            for j in 0..<t.inputKeys.count where t.inputKeys[j] == key && t.values[j] == nil {
                t.values[j] = v
                t.missing -= 1
            }
            if t.missing == 0 {
                pending.removeValue(forKey: tk)
                if let e = executable(t) {
                    runNow.append(e)
                    executing.insert(e.key)
                }
            } else {
                pending[tk] = t
            }
        }
    }

    /// A peer's endpoint could not be dialled: the tasks waiting on its values fail with a
    /// missing-input report, and the scheduler decides what to recompute.
    public mutating func peerUnreachable(_ peer: WorkerID, _ why: String) -> [WorkerAction] {
        for (id, f) in fetches.sorted(by: { $0.key < $1.key }) where f.peer == peer {
            fetches.removeValue(forKey: id)
            failWaiting(on: f.keys, "cannot reach worker \(peer): \(why)")
        }
        return takeFailureReport().map { [$0] } ?? []
    }

    /// Fails tasks whose fetches took too long (the scheduler then decides what to recompute).
    public mutating func tick(now: UInt64) -> [WorkerAction] {
        for (id, f) in fetches.sorted(by: { $0.key < $1.key }) where now &- f.sentAt > fetchTimeoutNs {
            fetches.removeValue(forKey: id)
            failWaiting(on: f.keys, "fetch from worker \(f.peer) timed out")
        }
        return takeFailureReport().map { [$0] } ?? []
    }

    // MARK: From the executor pool

    /// The rows of an output that is a catalog answer (its wire form read, not decoded), else 0.
    static func rows(of v: Value) -> UInt64 {
        guard case .bytes(let b) = v else { return 0 }
        return UInt64(CatalogPartial.rowCount(serialized: b) ?? 0)
    }

    /// Finished tasks: keep values others need, report all of them in one message.
    public mutating func completed(_ done: [Completion]) -> [WorkerAction] {
        var report = Tessera_V1_TaskReport()
        report.workerID = workerID
        var frame: [UInt8] = []
        var runNow: [ExecutableTask] = []
        var spills: [WorkerAction] = []
        for c in done {
            // Of an earlier registration, cancelled meanwhile, or of a job since forgotten.
            guard c.generation == generation, executing.remove(c.key) != nil, jobs[TaskKey.job(c.key)] != nil else { continue }
            var result = c.result
            if case .success(let v) = result, v.byteCount > memoryLimitBytes {
                // Kept or sent, a value larger than the worker's memory limit would take it down.
                result = .failure(OperatorError(
                    "memory limit", "the task's value is \(Self.size(v.byteCount)), larger than this worker's memory limit of \(Self.size(memoryLimitBytes)) "
                        + "(tessera-worker --memory-limit-mb): split the work into smaller tasks, or raise the limit", retryable: false))
            }
            switch result {
            case .success(let v):
                deliver(c.key, v, into: &runNow)
                tasksDone += 1
                report.doneKeys.append(c.key)
                report.resultBytes.append(UInt64(v.byteCount))
                report.resultRows.append(c.flags & (1 | AssignFlagBits.clientTakes) != 0 ? Self.rows(of: v) : 0)
                report.computeUs.append(c.micros)
                if c.flags & 2 != 0, let s = keep(c.key, v) { spills.append(s) }
                if c.flags & AssignFlagBits.clientTakes != 0 {
                    // Its client takes it from here (a direct result).
                    let j = TaskKey.job(c.key)
                    if heldFor[c.key] == nil {
                        heldResults[j, default: HeldResults(clientKey: jobs[j]?.clientKey ?? "", takeToken: jobs[j]?.takeToken ?? [])].count += 1
                    }
                    heldFor[c.key] = j
                    if c.flags & 2 == 0, let s = keep(c.key, v) { spills.append(s) }
                    if c.flags & 2 != 0 { awaitingRelease.insert(c.key) }
                }
                if c.flags & 1 != 0 {
                    report.outputs.append(v.append(to: &frame, key: c.key, frameIndex: 0))
                }
            case .failure(let err):
                var f = Tessera_V1_TaskFailure()
                f.key = c.key
                f.kind = err.retryable ? .failureOperator : .failureRefused
                f.message = Limits.boundedFailureMessage(err.description)
                report.failures.append(f)
                failWaiting(on: [c.key], "its input task failed here")
            }
        }
        report.failures.append(contentsOf: failures)
        failures.removeAll()
        var actions: [WorkerAction] = []
        if !report.doneKeys.isEmpty || !report.failures.isEmpty {
            var e = Envelope()
            e.taskReport = report
            actions.append(toScheduler(e, report.outputs.isEmpty ? [] : [frame]))
        }
        if !runNow.isEmpty { actions.append(.execute(runNow)) }
        return actions + spills
    }

    // MARK: Shutdown

    /// Takes back every task not yet started (waiting for inputs or queued in the pool) and says
    /// goodbye, so the scheduler re-runs them elsewhere without counting a failure.
    public mutating func deregister(reason: String, pool: (any TaskPool)?) -> Envelope {
        var back = Array(pending.keys)
        pending.removeAll()
        waitingFor.removeAll()
        if let pool {
            for t in pool.takeQueued() {
                executing.remove(t.key)
                back.append(t.key)
            }
        }
        var d = Tessera_V1_Deregister()
        d.workerID = workerID
        d.reason = reason
        d.handedBack = back.sorted()
        var e = Envelope()
        e.deregister = d
        e.epoch = epoch
        return e
    }

    static func size(_ bytes: Int) -> String { bytes >= 1 << 20 ? "\(bytes >> 20) MiB" : "\(bytes) bytes" }

    // MARK: Self-check

    /// What is inconsistent in this engine's own state (empty when all is well): checked after
    /// every step of the simulation.
    public func invariantViolations() -> [String] {
        var out: [String] = []
        let bytes = store.values.reduce(0) { $0 + $1.byteCount } + spilling.values.reduce(0) { $0 + $1.byteCount }
        if bytes != storedBytes { out.append("worker \(workerID): storedBytes \(storedBytes) but memory holds \(bytes)") }
        if spilled.values.reduce(0, +) != spilledBytes { out.append("worker \(workerID): spilledBytes \(spilledBytes) disagrees with the spilled values") }
        for k in store.keys where (spilling[k] != nil && !discardWhenWritten.contains(k)) || spilled[k] != nil {
            out.append("worker \(workerID): value \(k) both in memory and spilled")
        }
        for k in spilling.keys where spilled[k] != nil { out.append("worker \(workerID): value \(k) both being spilled and spilled") }
        if spilling.values.reduce(0, { $0 + $1.byteCount }) != spillingBytes { out.append("worker \(workerID): spillingBytes \(spillingBytes) disagrees") }
        for k in executing where pending[k] != nil { out.append("worker \(workerID): task \(k) both executing and waiting for inputs") }
        for (k, t) in pending {
            if jobs[TaskKey.job(k)] == nil { out.append("worker \(workerID): task \(k) waits for inputs of a job it does not know") }
            let waiting = t.inputKeys.indices.filter { t.values[$0] == nil }.count
            if waiting != t.missing { out.append("worker \(workerID): task \(k) counts \(t.missing) missing inputs, lacks \(waiting)") }
            for j in t.inputKeys.indices where t.values[j] == nil && !(waitingFor[t.inputKeys[j]] ?? []).contains(k) {
                out.append("worker \(workerID): task \(k) lacks input \(t.inputKeys[j]) but is not waiting for it")
            }
        }
        for (input, tasks) in waitingFor {
            for tk in tasks where pending[tk] == nil { out.append("worker \(workerID): \(tk) listed as waiting for \(input) but not pending") }
        }
        for k in storedKeys where jobs[TaskKey.job(k)] == nil && heldFor[k] == nil { out.append("worker \(workerID): holds value \(k) of a job it does not know") }
        return out
    }

    /// The keys of the values held, in memory or on disk (for cross-checks against the
    /// scheduler); values being spilled whose release has come are not counted.
    public var storedKeys: [UInt64] {
        Array(store.keys) + spilling.keys.filter { !discardWhenWritten.contains($0) } + Array(spilled.keys)
    }
    /// Tasks running or waiting here.
    public var activeTaskKeys: Set<UInt64> { executing.union(pending.keys) }

    // MARK: Helpers

    mutating func fail(_ key: UInt64, _ kind: Tessera_V1_FailureKind, _ message: String, missing: [UInt64] = [], holders: [WorkerID] = []) {
        var f = Tessera_V1_TaskFailure()
        f.key = key
        f.kind = kind
        f.message = Limits.boundedFailureMessage(message)
        f.missingInputs = missing
        if holders.count == missing.count { f.missingHolders = holders }
        failures.append(f)
    }

    mutating func failWaiting(on keys: [UInt64], _ why: String) {
        for k in keys {
            for tk in waitingFor.removeValue(forKey: k) ?? [] {
                guard let t = pending[tk] else { continue }
                dropPending(tk)
                let gone = (0..<t.inputKeys.count).filter { t.values[$0] == nil }
                fail(tk, .failureMissingInput, why, missing: gone.map { t.inputKeys[$0] }, holders: gone.map { t.holders[$0] })
            }
        }
    }

    mutating func dropPending(_ key: UInt64) {
        guard let t = pending.removeValue(forKey: key) else { return }
        for k in t.inputKeys { waitingFor[k]?.removeAll { $0 == key } }
    }

    mutating func takeFailureReport() -> WorkerAction? {
        guard !failures.isEmpty else { return nil }
        var report = Tessera_V1_TaskReport()
        report.workerID = workerID
        report.failures = failures
        failures.removeAll()
        var e = Envelope()
        e.taskReport = report
        return toScheduler(e)
    }

    func malformed(_ why: String) -> WorkerAction {
        var err = Tessera_V1_ErrorReply()
        err.code = .errorMalformedMessage
        err.message = why
        var e = Envelope()
        e.error = err
        return toScheduler(e)
    }
}

/// The assignment flags the worker reads (the scheduler's `AssignFlags`).
enum AssignFlagBits {
    static let clientTakes: UInt32 = 4
}
