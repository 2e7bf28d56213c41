import Foundation
import Logging
import TesseraCompute
import TesseraStorage
import TesseraProtocol
import TesseraSecurity
import TesseraWorker
import ZeroMQ

#if canImport(Glibc)
import Glibc
#endif

/// Settings of one worker process.
public struct WorkerSettings: Sendable {
    public var schedulerEndpoint: String
    /// Where this worker's peer ROUTER binds (`tcp://127.0.0.1:*` picks a free port).
    public var peerBind = "tcp://127.0.0.1:*"
    /// The endpoint peers should dial, when it differs from the bound one (another host's view).
    public var peerAdvertise: String?
    public var name: String
    public var threads: Int
    public var memoryLimit: UInt64
    /// Where this worker keeps its catalog shards (nil: it holds none and refuses to store any).
    public var dataDirectory: String?
    public var parentPID: Int32?
    /// The worker's CURVE key file (with the scheduler's public key), or insecure (loopback only).
    public var credentials: Credentials = .insecure
    /// How users' Python functions run here (nil: this worker does not run them).
    public var python: PythonSettings?
    /// Decoded column chunks kept for later questions, in bytes (0: none).
    public var columnCacheBytes: UInt64 = 0

    public init(schedulerEndpoint: String, name: String, threads: Int, memoryLimit: UInt64) {
        self.schedulerEndpoint = schedulerEndpoint
        self.name = name
        self.threads = threads
        self.memoryLimit = memoryLimit
    }
}

/// The worker's socket loop: one thread owns the DEALER to the scheduler, the ROUTER peers fetch
/// from, and one DEALER per peer it fetches from; executor threads wake it through an eventfd.
public final class WorkerDaemon {
    private let settings: WorkerSettings
    private let logger: Logger
    private let context: ZMQContext
    private var scheduler: Socket
    private let peerRouter: Socket
    /// Admits fellow workers and announced ingest clients to the peer endpoint (nil when insecure).
    private let zap: ZAPHandler?
    public let peerEndpoint: String
    /// DEALERs to peers, by endpoint and CURVE key — not by worker id: ids start again at every
    /// scheduler epoch, so an id may name another worker than the one a socket was opened to.
    private var peers: [String: Socket] = [:]
    private var engine: WorkerEngine
    private let wake: WakePipe
    private let signals: ShutdownSignals
    private let pool: ExecutorPool
    /// The executors of users' Python functions (nil when this worker does not run them).
    private let python: PythonExecutors?
    /// Same-host clients of this worker's Unix user take direct results here, without CURVE
    /// (nil when the private folder could not be made).
    private let localTakes: Socket?
    private let localTakesPath: String?
    /// Per same-host connection (its routing identity): whether its process is one of this
    /// worker's own descendants (a Python executor, or what a user's function started), which
    /// are refused: they run users' code, and a take by guessed keys would hand them, and
    /// remove, another user's results.
    private var localTakeRefused: [[UInt8]: Bool] = [:]
    private let shards: ShardStore?
    private let shardWriter: BackgroundShardWriter?
    /// Writes kept values past the memory limit to disk, off the event loop.
    private let spillWriter: SpillWriter

    public init(_ settings: WorkerSettings, registry: OperatorRegistry = .standard, logger: Logger) throws {
        ProcessMemory.retainFreedMemory()
        self.settings = settings
        self.logger = logger
        context = try ZMQContext()
        scheduler = try Self.schedulerSocket(context, settings)
        peerRouter = try context.socket(.router)
        switch settings.credentials {
        case .insecure:
            try EndpointScope.checkInsecure([settings.peerBind])
            zap = nil
        case .curve(let key):
            // The handler exists before the peer endpoint binds: without one libzmq admits everyone.
            zap = try ZAPHandler(context: context)
            try peerRouter.makeCurveServer(secretKey: key.keys.secretKey)
            try peerRouter.setZAPDomain("peers")
        }
        try peerRouter.setSendHighWaterMark(0)
        try peerRouter.setMaxMessageSize(Int64(min(Limits.workerMessageBytes, WireProtocol.maximumFrameBytes)))
        let bound = try peerRouter.bind(settings.peerBind)
        peerEndpoint = settings.peerAdvertise ?? bound
        var registry = registry
        if let py = settings.python {
            let executors = try PythonExecutors(py, workerName: settings.name, threads: settings.threads)
            for op in executors.operators { registry.register(op) }
            python = executors
        } else {
            python = nil
        }
        engine = WorkerEngine(registry: registry)
        (localTakes, localTakesPath) = Self.localTakeSocket(context, logger: logger)
        let wake = try WakePipe()
        self.wake = wake
        signals = ShutdownSignals(wake: wake, parentPID: settings.parentPID)
        pool = ExecutorPool(threads: settings.threads) { wake.signal() }
        shards = try settings.dataDirectory.map { try ShardStore(root: $0) }
        shardWriter = shards.map { BackgroundShardWriter(store: $0, workerName: settings.name) { wake.signal() } }
        engine.dataRoot = settings.dataDirectory
        if settings.columnCacheBytes > 0 {
            engine.shardReaders = ShardReaderPool(capacity: WorkerEngine.openShardFiles,
                                                  cache: DecodedColumnCache(capacityBytes: Int(clamping: settings.columnCacheBytes)))
        }
        engine.startedTasks = { [pool] in pool.drainStarted() }
        engine.scanStatistics = { [pool] in
            let p = pool.passStatistics
            var s = Tessera_V1_ScanStats()
            (s.passes, s.passTasks, s.mostInOnePass) = (p.passes, p.tasks, p.most)
            return s
        }
        // Spilled values go under the data folder when there is one (a local disk), else to a
        // private temporary folder; either is emptied at start.
        let spillPath = try settings.dataDirectory.map { $0 + "/spill" } ?? PrivateFolder.make("tessera-spill-\(settings.name)")
        spillWriter = SpillWriter(folder: try SpillFolder(path: spillPath, made: settings.dataDirectory == nil)) { wake.signal() }
        engine.spillStore = spillWriter.folder
        engine.memoryLimitBytes = Int(clamping: settings.memoryLimit)
    }

    /// The DEALER to the scheduler, connected (with this worker's key when it has one).
    private static func schedulerSocket(_ context: ZMQContext, _ settings: WorkerSettings) throws -> Socket {
        let s = try context.socket(.dealer)
        try s.setSendHighWaterMark(0)
        try s.setReceiveHighWaterMark(0)
        // A deregistration still reaches the scheduler after close.
        try s.setLinger(milliseconds: 2000)
        // ZMTP heartbeats (answered by libzmq's own I/O thread) drop a dead TCP link, so the
        // socket reconnects to a restarted scheduler instead of writing into the void.
        try s.setHeartbeat(intervalMs: 1000, timeoutMs: 5000)
        try settings.credentials.secure(s)
        try s.connect(settings.schedulerEndpoint)
        return s
    }

    /// Registers, then serves until SIGTERM/SIGINT; then hands back unstarted tasks, reports the
    /// running ones, and deregisters.
    public func run() throws {
        var lastParentCheck: UInt64 = 0
        var poller = makePoller()
        var polledPeers = peers.keys.sorted()
        while !signals.isRequested {
            let now = monotonicNanos()
            let timers = engine.timers(now: now) { (ProcessMemory.residentBytes, ProcessMemory.peakResidentBytes) }
            if timers.contains(where: { if case .register(retry: true) = $0 { true } else { false } }) {
                // No answer: libzmq does not retry a connection whose key the scheduler
                // refused, so a fresh socket tries again (the key may be admitted by now).
                logger.warning("no answer from the scheduler; connecting again (is this worker's key in the cluster's workers.list?)")
                scheduler.close()
                scheduler = try Self.schedulerSocket(context, settings)
                poller = makePoller()
            }
            try perform(timers)
            if now &- lastParentCheck > 1_000_000_000 {
                signals.checkParent()
                lastParentCheck = now
            }
            if peers.count != polledPeers.count {
                poller = makePoller()
                polledPeers = peers.keys.sorted()
            }
            try poller.wait(timeoutMs: 100)
            // Only sockets that have something are read: an empty read is a system call or two.
            if poller.isReadable(2) {
                wake.drain()
                try drainCompletions()
                try answerStoredShards()
                drainSpills()
            }
            if poller.isReadable(0) { try drainScheduler() }
            if poller.isReadable(1) { try drainPeerRequests() }
            if zap != nil && poller.isReadable(3) { try answerAuthentication() }
            if localTakes != nil && poller.isReadable(4) { try drainLocalTakes() }
            for (n, id) in polledPeers.enumerated() where poller.isReadable(5 + n) {
                if let s = peers[id] { try drainPeerReplies(id, s) }
            }
            // Tasks run inline just now have completions waiting.
            try drainCompletions()
        }
        try shutDown()
        localTakes?.close()
        if let localTakesPath { unlink(localTakesPath) }
        // What this worker made in the shared temporary folder goes with it.
        python?.stop()
        if settings.dataDirectory == nil { try? FileManager.default.removeItem(atPath: spillWriter.folder.path) }
    }

    private func makePoller() -> Poller {
        var p = Poller()
        p.add(scheduler)
        p.add(peerRouter)
        p.add(fileDescriptor: wake.fd)
        if let zap { p.add(zap.socket) } else { p.add(fileDescriptor: wake.fd) }
        if let localTakes { p.add(localTakes) } else { p.add(fileDescriptor: wake.fd) }
        for id in peers.keys.sorted() { p.add(peers[id]!) }
        return p
    }

    private func registration() -> Envelope {
        var e = engine.registration(name: settings.name, threads: pool.threadCount, memoryLimit: settings.memoryLimit,
                                    peerEndpoint: peerEndpoint, pid: getpid(), holdings: shards?.manifest().map(\.description) ?? [])
        if let localTakesPath { e.registerWorker.localEndpoint = "ipc://" + localTakesPath }
        return e
    }

    /// A ROUTER on `ipc:///tmp/tessera-UID/worker-PID.sock`, in a folder of this Unix user's
    /// alone (mode 0700, checked): only processes of this user (who can read this worker's keys
    /// and data anyway) can connect, so it needs no CURVE. Nil, with a warning, when the folder
    /// is not this user's alone.
    static func localTakeSocket(_ context: ZMQContext, logger: Logger) -> (Socket?, String?) {
        let dir = "/tmp/tessera-\(getuid())"
        _ = mkdir(dir, 0o700)
        var st = stat()
        guard lstat(dir, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR, st.st_uid == getuid(), st.st_mode & 0o077 == 0 else {
            logger.warning("no same-host fast path for direct results: \(dir) is not a folder of this user's alone (mode 0700)")
            return (nil, nil)
        }
        let path = dir + "/worker-\(getpid()).sock"
        unlink(path)
        do {
            let s = try context.socket(.router)
            try s.setMaxMessageSize(Int64(Limits.clientMessageBytes))
            try s.setSendHighWaterMark(0)
            _ = try s.bind("ipc://" + path)
            return (s, path)
        } catch {
            logger.warning("no same-host fast path for direct results: \(error)")
            return (nil, nil)
        }
    }

    /// Same-host clients taking direct results: takes only, of any job (the OS vouched for them).
    private func drainLocalTakes() throws {
        guard let localTakes else { return }
        while let parts = try localTakes.receive(dontWait: true) {
            guard parts.count >= 2 else { continue }
            let identity = parts[0].array
            // libzmq gives an ipc peer's credentials as `host:uid:gid:pid` (SO_PEERCRED).
            // The verdict is kept per routing identity and process: a peer may choose its
            // routing identity, so a departed client's cannot carry over to another process.
            let peer = parts[1].property("Peer-Address") ?? ""
            let cacheKey = identity + Array(peer.utf8)
            let refused = localTakeRefused[cacheKey] ?? {
                let pid = peer.split(separator: ":").last.flatMap { Int32($0) }
                let r = pid.map { ProcessTree.runsUsersCode($0, worker: getpid()) } ?? true
                if localTakeRefused.count > 4_096 { localTakeRefused.removeAll() }
                localTakeRefused[cacheKey] = r
                return r
            }()
            if refused {
                var reply = WireProtocol.errorReply(.errorNotAllowed, "this worker's own processes (its Python executors) may not take direct results: users' functions run in them")
                reply.insert(identity, at: 0)
                _ = try? localTakes.send(parts: reply, dontWait: true)
                continue
            }
            guard let (env, _) = try? WireProtocol.decode(Array(parts.dropFirst()), budget: Limits.clientMessageBytes),
                  case .fetchRequest(let r) = env.body, r.take,
                  case .replyToPeer(_, let reply, let frames) = engine.serveTake(r, clientKey: nil, from: identity) else {
                var reply = WireProtocol.errorReply(.errorMalformedMessage, "only takes of direct results are served here")
                reply.insert(identity, at: 0)
                _ = try? localTakes.send(parts: reply, dontWait: true)
                continue
            }
            try localTakes.sendMessage(to: identity, reply, frames: frames, compress: false)
        }
    }

    private func sendToScheduler(_ e: Envelope, _ frames: [[UInt8]]) throws {
        var e = e
        e.epoch = engine.epoch
        try scheduler.sendMessage(e, frames: frames, compress: !EndpointScope.isLoopback(settings.schedulerEndpoint))
    }

    private func drainScheduler() throws {
        while let parts = try scheduler.receive(dontWait: true) {
            let env: Envelope
            let frames: [[UInt8]]
            do throws(ProtocolError) {
                (env, frames) = try WireProtocol.decode(parts)
            } catch {
                logger.warning("malformed message from the scheduler", metadata: ["worker/error": "\(error)"])
                continue
            }
            _ = frames
            try perform(engine.handleScheduler(env, now: monotonicNanos(), pool: pool))
        }
    }

    private func drainPeerRequests() throws {
        while let parts = try peerRouter.receive(dontWait: true) {
            guard parts.count >= 2 else { continue }
            let identity = parts[0].array
            // What the ZAP handler admitted the connection as: fetches are for workers only.
            let role = zap == nil ? "worker" : parts[1].property("User-Id") ?? ""
            let env: Envelope
            let frames: [[UInt8]]
            do throws(ProtocolError) {
                (env, frames) = try WireProtocol.decode(Array(parts.dropFirst()))
            } catch {
                var reply = WireProtocol.errorReply(.errorMalformedMessage, "\(error)")
                reply.insert(identity, at: 0)
                _ = try? peerRouter.send(parts: reply, dontWait: true)
                continue
            }
            switch env.body {
            case .fetchRequest(let r) where r.take && (zap == nil || role.hasPrefix(WorkerEngine.clientRolePrefix)):
                // A client taking its job's direct results (its key is checked per value).
                let key = zap == nil ? nil : String(role.dropFirst(WorkerEngine.clientRolePrefix.count))
                try perform([engine.serveTake(r, clientKey: key, from: identity)])
            case .fetchRequest(let r) where role == "worker":
                try perform([engine.serveFetch(r, epoch: env.epoch, from: identity)])
            case .storeShard(let r):
                let sender = zap == nil ? nil : role.hasPrefix(WorkerEngine.clientRolePrefix) ? String(role.dropFirst(WorkerEngine.clientRolePrefix.count)) : ""
                let frameBytes = frames.reduce(UInt64(0)) { $0 &+ UInt64($1.count) }
                if let why = engine.admitStore(r, frameBytes: frameBytes, clientKey: sender) {
                    var reply = Envelope()
                    var s = Tessera_V1_ShardStored()
                    s.requestID = r.requestID
                    s.workerName = settings.name
                    s.error = why
                    reply.shardStored = s
                    try peerRouter.sendMessage(to: identity, reply)
                } else if let shardWriter {
                    // Answered from `answerStoredShards` once the file is on disk.
                    shardWriter.submit(r, frames: frames, identity: identity)
                } else {
                    engine.stored(r)
                    var reply = Envelope()
                    var s = Tessera_V1_ShardStored()
                    s.requestID = r.requestID
                    s.error = "worker \(settings.name) has no data folder (start it with --data)"
                    reply.shardStored = s
                    try peerRouter.sendMessage(to: identity, reply)
                }
            default:
                var reply = WireProtocol.errorReply(.errorMalformedMessage, "message not expected on a worker's peer endpoint")
                reply.insert(identity, at: 0)
                _ = try? peerRouter.send(parts: reply, dontWait: true)
            }
        }
    }

    /// Replies to ingest clients whose shards the background writer has finished.
    private func answerStoredShards() throws {
        guard let shardWriter else { return }
        for f in shardWriter.drainFinished() {
            let r = f.request
            engine.stored(r)
            if f.reply.error.isEmpty {
                logger.info("stored shard", metadata: ["worker/shard": "\(r.dataset)/order\(r.order)-pix\(r.pixel)", "worker/rows": "\(r.rows)"])
                // The scheduler commits only shards their workers reported, with the sizes and
                // checksums reported here (the client's word is not taken for them).
                var report = Envelope()
                report.shardStored = f.reply
                try sendToScheduler(report, [])
            }
            var reply = Envelope()
            reply.shardStored = f.reply
            try peerRouter.sendMessage(to: f.identity, reply)
        }
    }

    /// Admits a key to the peer endpoint if it is a fellow worker's or an announced ingest client's.
    private func answerAuthentication() throws {
        try zap?.answerPending { request in
            guard request.mechanism == "CURVE", let key = request.publicKey, let role = engine.peerRole(of: key) else {
                logger.warning("refused a peer connection: key not admitted", metadata: ["worker/address": "\(request.address)"])
                return nil
            }
            return role
        }
    }

    private func drainPeerReplies(_ id: String, _ socket: Socket) throws {
        while let parts = try socket.receive(dontWait: true) {
            let env: Envelope
            let frames: [[UInt8]]
            do throws(ProtocolError) {
                (env, frames) = try WireProtocol.decode(parts)
            } catch {
                logger.warning("malformed reply from peer", metadata: ["worker/peer": "\(id)", "worker/error": "\(error)"])
                continue
            }
            guard case .fetchReply(let r) = env.body else { continue }
            try perform(engine.fetched(r, frames: frames))
        }
    }

    /// Values the spill writer has written leave memory; those it could not write stay.
    private func drainSpills() {
        let done = spillWriter.drainFinished()
        if done.written.isEmpty && done.failed.isEmpty { return }
        engine.spillWritten(done.written, failed: done.failed)
        if let e = done.errors.first {
            logger.warning("could not spill values to disk; they stay in memory", metadata: ["worker/values": "\(done.failed.count)", "worker/error": "\(e)"])
        }
    }

    /// Reports finished tasks; dependents they unblock may run inline and finish at once, so
    /// this repeats until nothing is left.
    private func drainCompletions() throws {
        while true {
            let done = pool.drainCompletions()
            if done.isEmpty { return }
            try perform(engine.completed(done))
        }
    }

    private func perform(_ actions: [WorkerAction]) throws {
        for a in actions {
            switch a {
            case .toScheduler(let e, let f):
                try sendToScheduler(e, f)
            case .toPeer(let id, let endpoint, let e):
                let s: Socket
                let publicKey = engine.peerPublicKeys[id] ?? ""
                let peerKey = endpoint + " " + publicKey
                if let existing = peers[peerKey] {
                    s = existing
                } else {
                    s = try context.socket(.dealer)
                    try s.setSendHighWaterMark(0)
                    do {
                        if case .curve(let key) = settings.credentials {
                            try s.makeCurveClient(serverPublicKey: publicKey, keys: key.keys)
                        }
                        try s.connect(endpoint)
                    } catch {
                        // An endpoint libzmq cannot dial fails the tasks that needed it, not the worker.
                        s.close()
                        logger.warning("cannot connect to a peer", metadata: ["worker/peer": "\(id)", "worker/endpoint": "\(endpoint.prefix(200))", "worker/error": "\(error)"])
                        try perform(engine.peerUnreachable(id, "\(error)"))
                        continue
                    }
                    peers[peerKey] = s
                }
                try s.sendMessage(e)
            case .replyToPeer(let identity, let e, let f):
                try peerRouter.sendMessage(to: identity, e, frames: f, compress: !EndpointScope.isLoopback(peerEndpoint))
            case .execute(let tasks):
                pool.submit(tasks)
            case .register:
                try sendToScheduler(registration(), [])
            case .removeShards(let keys):
                if let shards { engine.shardReaders.forget(paths: keys.compactMap { ShardKey($0).map(shards.path) }) }
                let n = shards?.remove(keys) ?? 0
                logger.notice("removed orphaned shard files", metadata: ["worker/removed": "\(n)", "worker/asked": "\(keys.count)"])
            case .spill(let values):
                spillWriter.submit(values)
            case .note(let line):
                logger.notice("\(line)", metadata: ["worker/peer": "\(peerEndpoint)"])
            }
        }
    }

    private func shutDown() throws {
        logger.info("stopping: handing back unstarted tasks")
        // Unstarted tasks go back first, so the scheduler can re-place them while we finish the rest.
        let goodbye = engine.deregister(reason: "shutting down", pool: pool)
        let deadline = monotonicNanos() + 10_000_000_000
        // Shards being written are finished and answered: their clients are waiting.
        while (pool.busyCount > 0 || (shardWriter?.inFlight ?? 0) > 0) && monotonicNanos() < deadline {
            var p = Poller()
            p.add(fileDescriptor: wake.fd)
            try p.wait(timeoutMs: 50)
            wake.drain()
            try drainCompletions()
            try answerStoredShards()
        }
        try drainCompletions()
        try answerStoredShards()
        if engine.isRegistered { try sendToScheduler(goodbye, []) }
        pool.stop()
        for s in peers.values { s.close() }
        peerRouter.close()
        scheduler.close()
    }
}

/// Parentage of processes, from /proc.
enum ProcessTree {
    /// Whether `pid` may be running users' Python for `worker`: one of its descendants, in the
    /// process group of one (a function that forked twice, its middle process gone, is
    /// re-parented away but keeps the executor's group), or carrying the marker the worker puts
    /// in its executors' environment (kept across `setsid` unless the function clears it). A
    /// function that does all three escapes; the account is the boundary (README).
    static func runsUsersCode(_ pid: Int32, worker: Int32) -> Bool {
        if descends(pid, from: worker) { return true }
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return true }
        // After the name: state, parent, process group.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 2, let group = Int32(fields[2]) else { return true }
        // (A group whose leader is gone, as a shell's job often is, says nothing either way.)
        if group != pid, group > 1, descends(group, from: worker, unreadable: false) { return true }
        let marker = Array("\(PythonExecutors.workerMarker)=\(worker)".utf8)
        if let environ = FileManager.default.contents(atPath: "/proc/\(pid)/environ") {
            if environ.split(separator: 0).contains(where: { Array($0) == marker }) { return true }
        }
        return false
    }

    /// Whether `pid` is `ancestor` or one of its descendants (by parent links, at most 64 up).
    /// A process whose parent cannot be read counts as `unreadable` (by default as one:
    /// refusing is the safe answer for the peer itself).
    static func descends(_ pid: Int32, from ancestor: Int32, unreadable: Bool = true) -> Bool {
        var p = pid
        for _ in 0..<64 {
            if p == ancestor { return true }
            if p <= 1 { return false }
            guard let stat = try? String(contentsOfFile: "/proc/\(p)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return unreadable }
            // After the name in parentheses (which may hold spaces): state, then the parent.
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 1, let parent = Int32(fields[1]) else { return unreadable }
            p = parent
        }
        return true
    }
}
