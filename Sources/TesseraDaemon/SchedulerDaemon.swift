import Foundation
import Logging
import TesseraProtocol
import TesseraScheduler
import TesseraSecurity
import TesseraStorage
import ZeroMQ

#if canImport(Glibc)
import Glibc
#endif

/// How the scheduler authenticates the workers and users that connect.
public enum SchedulerSecurity: Sendable {
    /// No keys: anyone who reaches the ports gets in. Refused unless both bind to loopback.
    case insecure
    /// CURVE on both sockets; workers and users admitted by the key folder's lists.
    case curve(KeyDirectory)
}

/// The scheduler's socket loop: one thread owns both ROUTER sockets, decodes what arrives, feeds
/// the state machine, and sends what it returns. Nothing here decides anything.
public final class SchedulerDaemon {
    public let clientEndpoint: String
    public let workerEndpoint: String
    private let context: ZMQContext
    private let clients: Socket
    private let workerSocket: Socket
    private var core: SchedulerCore
    private let logger: Logger
    private let wake: WakePipe
    private let signals: ShutdownSignals
    private var clientTable = ConnectionTable()
    private var workerTable = ConnectionTable()
    /// Answers libzmq's authentication requests (nil on an insecure cluster).
    private let zap: ZAPHandler?
    private let keys: KeyDirectory?
    private var access = AccessList()
    /// The lists' signature when they were read.
    private var accessSignature: [Int] = []
    /// Most messages read from one socket per turn, so one busy socket cannot starve the other.
    private let drainBudget = 4096
    /// Messages for clients whose send queue is full (they are not reading), in order: the core
    /// holds back their jobs' results meanwhile, and a client that keeps asking without reading
    /// (a status reply is kilobytes) has its requests dropped once this is over
    /// `Limits.clientBacklogMessages` or `Limits.clientBacklogBytes`.
    private var backlog: [ConnectionID: [[[UInt8]]]] = [:]
    /// The bytes of each client's backlog.
    private var backlogBytes: [ConnectionID: Int] = [:]
    /// Messages queued in libzmq per client before it counts as not reading.
    static let clientQueueMessages: Int32 = 64
    /// Clients whose requests are being dropped (logged once per episode).
    private var droppingFrom: Set<ConnectionID> = []
    /// Connections silent this long, with no job or ingest, are forgotten (libzmq says nothing
    /// when a peer goes; every new connection is a new routing id).
    private let idleConnectionNs: UInt64
    /// A connection with replies waiting is kept this long (a client between calls reads
    /// nothing; its last job's answer waits for it).
    static let idleWithBacklogNs: UInt64 = 900_000_000_000
    private var lastPrune: UInt64 = 0
    /// Requests read from each client in this turn of the loop: every
    /// `requestsBetweenFlushes` of them, the replies so far are sent, so that a client that
    /// does not read shows a backlog before the turn has read thousands of its requests.
    private var readThisTurn: [ConnectionID: Int] = [:]
    static let requestsBetweenFlushes = 64
    /// With a registry: the job ids this start may hand out.
    private var jobIDs: JobIDReservation?
    /// This start's epoch.
    public let epoch: UInt64

    /// Binds both endpoints (a `*` port picks a free one; the chosen endpoints are in the properties).
    /// - Parameter registryPath: the SQLite registry of datasets (created if missing); nil runs without one.
    public init(clientBind: String, workerBind: String, config: SchedulerConfig, registryPath: String? = nil,
                security: SchedulerSecurity, parentPID: Int32? = nil, logger: Logger) throws {
        self.logger = logger
        context = try ZMQContext()
        clients = try context.socket(.router)
        workerSocket = try context.socket(.router)
        switch security {
        case .insecure:
            try EndpointScope.checkInsecure([clientBind, workerBind])
            zap = nil
            keys = nil
        case .curve(let dir):
            let own = try KeyFile.read(dir.schedulerKeyPath)
            // The handler exists before any CURVE socket binds: without one libzmq admits everyone.
            zap = try ZAPHandler(context: context)
            keys = dir
            for (s, domain) in [(clients, "clients"), (workerSocket, "workers")] {
                try s.makeCurveServer(secretKey: own.keys.secretKey)
                try s.setZAPDomain(domain)
            }
        }
        for (s, limit) in [(clients, Limits.clientMessageBytes), (workerSocket, Limits.workerMessageBytes)] {
            try s.setReceiveHighWaterMark(0)
            // libzmq disconnects a peer that sends a larger frame before it is ever buffered.
            try s.setMaxMessageSize(Int64(min(limit, WireProtocol.maximumFrameBytes)))
        }
        // Workers' traffic is bounded by their in-flight limits: never drop it. A client that
        // does not read fills its queue; then sends say so (instead of dropping or growing
        // without bound), and the scheduler holds that client's jobs back.
        try workerSocket.setSendHighWaterMark(0)
        try clients.setSendHighWaterMark(Self.clientQueueMessages)
        try clients.setRouterMandatory(true)
        clientEndpoint = try clients.bind(clientBind)
        workerEndpoint = try workerSocket.bind(workerBind)
        wake = try WakePipe()
        signals = ShutdownSignals(wake: wake, parentPID: parentPID)
        var config = config
        var registry: Registry?
        if let registryPath {
            registry = try Registry(path: registryPath)
            // A new epoch, and job ids no earlier start handed out.
            let (ids, epoch, first) = try JobIDReservation.begin(registry!)
            config.epoch = epoch
            config.firstJobID = first
            jobIDs = ids
        } else {
            // Nothing outlives this process: the epoch only has to differ from an earlier
            // start's, which the clock's milliseconds do.
            config.epoch = UInt64(Date().timeIntervalSince1970 * 1000)
            jobIDs = nil
        }
        epoch = config.epoch
        core = SchedulerCore(config: config, now: monotonicNanos())
        idleConnectionNs = max(config.clientTimeoutNs, 60_000_000_000)
        if keys != nil { try reloadAccess(force: true) }
        if let registry {
            core.catalog = registry
            // Read the datasets into the planner now, so the first question does not wait for it.
            core.warmPlanner()
        }
        logger.info("scheduler started", metadata: ["scheduler/epoch": "\(epoch)", "scheduler/first-job-id": "\(config.firstJobID)"])
    }

    /// Runs until SIGTERM or SIGINT (or the parent process exits, when one was given).
    public func run() throws {
        var poller = Poller()
        let iClients = poller.add(clients)
        let iWorkers = poller.add(workerSocket)
        let iWake = poller.add(fileDescriptor: wake.fd)
        let iZAP = zap.map { poller.add($0.socket) }
        var lastTick = monotonicNanos(), lastAccessCheck = lastTick
        let tickNs: UInt64 = 50_000_000
        while !signals.isRequested {
            let timeout = core.hasDeferredResults ? 5 : 50
            try poller.wait(timeoutMs: timeout)
            if poller.isReadable(iWake) { wake.drain() }
            if let iZAP, poller.isReadable(iZAP) { try answerAuthentication() }
            if poller.isReadable(iWorkers) { try drain(workerSocket, fromWorkers: true) }
            if poller.isReadable(iClients) { try drain(clients, fromWorkers: false) }
            let now = monotonicNanos()
            if now &- lastTick >= tickNs {
                // A tick far later than due means this loop (or the whole process) was stalled:
                // the workers' silence over that time is not theirs (their heartbeats may be
                // waiting in the socket), so a slow turn of its own never kills a healthy worker.
                let late = now &- lastTick
                core.tick(now: monotonicNanos(), loopStallNs: late > 4 * tickNs ? late - tickNs : 0)
                signals.checkParent()
                lastTick = now
            }
            if now &- lastAccessCheck >= 2_000_000_000 {
                // A key removed from the lists (or an admin made a user) takes effect within two
                // seconds, on connections already open too: each message's key is looked up in
                // the lists as read. (Read again only when they changed: two stat calls.)
                lastAccessCheck = now
                do { try reloadAccess(force: false) } catch { logger.error("cannot read the access lists", metadata: ["scheduler/error": "\(error)"]) }
            }
            if now &- lastPrune >= 5_000_000_000 {
                lastPrune = now
                pruneConnections(now: now)
            }
            flushBacklog()
            try send(core.flush(now: now))
            for n in core.notices { logger.notice("\(n)") }
            core.notices.removeAll()
            try jobIDs?.extend(ifNeededFor: core.nextJobIDToIssue)
        }
        logger.info("scheduler stopping", metadata: ["scheduler/workers": "\(core.workerCount)", "scheduler/jobs": "\(core.activeJobCount)"])
    }

    /// Reads up to `drainBudget` messages; returns how many it read.
    @discardableResult
    private func drain(_ socket: Socket, fromWorkers: Bool) throws -> Int {
        var n = 0
        readThisTurn.removeAll(keepingCapacity: true)
        while n < drainBudget, let parts = try socket.receive(dontWait: true) {
            n += 1
            guard parts.count >= 2 else { continue }  // ROUTER always prepends the identity
            let identity = parts[0].array
            // The connection's CURVE key, as the ZAP handler admitted it; a key removed from
            // the lists since is no longer served.
            let key = keys == nil ? nil : parts[1].property("User-Id")
            let now = monotonicNanos()
            let (conn, forgotten) = fromWorkers ? workerTable.id(for: identity, key: key, now: now) : clientTable.id(for: identity, key: key, now: now)
            if let forgotten {
                logger.warning("a routing id in use came from another key: the earlier connection is forgotten", metadata: [
                    "scheduler/from": "\(fromWorkers ? "worker" : "client") \(forgotten)", "scheduler/now": "\(conn)",
                ])
                if fromWorkers {
                    core.forgetWorkerConnection(forgotten, now: now)
                } else {
                    forgetClient(forgotten, reason: "its connection's routing id was taken by another key", now: now)
                }
            }
            if !fromWorkers {
                readThisTurn[conn, default: 0] += 1
                if readThisTurn[conn]! % Self.requestsBetweenFlushes == 0 {
                    flushBacklog()
                    try send(core.flush(now: now))
                }
                if isBacklogFull(conn) {
                    if droppingFrom.insert(conn).inserted {
                        logger.warning("dropping requests from a client that does not read its replies", metadata: [
                            "scheduler/from": "client \(conn)", "scheduler/backlog": "\(backlog[conn]?.count ?? 0) messages, \(backlogBytes[conn] ?? 0) bytes",
                        ])
                    }
                    // Unread, but it is alive: its heartbeats must not go stale.
                    core.clientHeard(conn, now: now)
                    continue
                }
            }
            var workerIdentity: WorkerIdentity?
            var clientIdentity = ClientIdentity.local
            if keys != nil {
                guard let key, let entry = fromWorkers ? access.workers[key] : access.users[key] else {
                    logger.warning("dropped a message from a key no longer admitted", metadata: ["scheduler/from": "\(fromWorkers ? "worker" : "client") \(conn)"])
                    continue
                }
                if fromWorkers {
                    workerIdentity = WorkerIdentity(name: entry.name, publicKey: key)
                } else {
                    clientIdentity = ClientIdentity(user: entry.name, isAdmin: entry.isAdmin, publicKey: key)
                }
            }
            let body = Array(parts.dropFirst())
            do throws(ProtocolError) {
                let (env, frames) = try WireProtocol.decode(body, budget: fromWorkers ? Limits.workerMessageBytes : Limits.clientMessageBytes)
                if fromWorkers {
                    core.handleWorker(conn, env, frames: frames, now: now, identity: workerIdentity)
                } else {
                    core.handleClient(conn, env, frames: frames, now: now, identity: clientIdentity)
                }
            } catch {
                logger.warning("dropped a malformed message", metadata: [
                    "scheduler/from": "\(fromWorkers ? "worker" : "client") \(conn)", "scheduler/error": "\(error)",
                ])
                let code: Tessera_V1_ErrorCode = switch error {
                case .unsupportedVersion: .errorUnsupportedVersion
                case .overBudget: .errorOverLimit
                default: .errorMalformedMessage
                }
                var parts = WireProtocol.errorReply(code, "\(error)")
                parts.insert(identity, at: 0)
                _ = try? socket.send(parts: parts, dontWait: true)
            }
        }
        return n
    }

    /// Admits a connecting key if the workers' list (worker socket) or the users' list (client
    /// socket) has it. The connection's `User-Id` is then its public key, looked up per message.
    private func answerAuthentication() throws {
        try zap?.answerPending { request in
            guard request.mechanism == "CURVE", let key = request.publicKey else { return nil }
            if !isAdmitted(key, request.domain) {
                // A key added to the lists since they were read: read them again if they changed
                // (two stat calls: cheap enough for every unknown key).
                do { try reloadAccess(force: false) } catch { logger.error("cannot read the access lists", metadata: ["scheduler/error": "\(error)"]) }
            }
            guard isAdmitted(key, request.domain) else {
                logger.warning("refused a connection: key not admitted", metadata: ["scheduler/socket": "\(request.domain)", "scheduler/address": "\(request.address)", "scheduler/key": "\(key)"])
                return nil
            }
            return key
        }
    }

    private func isAdmitted(_ key: String, _ domain: String) -> Bool {
        domain == "workers" ? access.workers[key] != nil : domain == "clients" ? access.users[key] != nil : false
    }

    /// Reads the access lists again when they changed on disk, and tells the workers the new
    /// set of worker keys.
    private func reloadAccess(force: Bool) throws {
        guard let keys else { return }
        let signature = keys.listsSignature
        guard force || signature != accessSignature else { return }
        access = try keys.accessList()
        accessSignature = signature
        core.updatePeerKeys(access.workerKeys)
        core.adminUsers = Set(access.users.values.filter(\.isAdmin).map(\.name))
        logger.info("access lists loaded", metadata: ["scheduler/workers": "\(access.workers.count)", "scheduler/users": "\(access.users.count)"])
    }

    private func send(_ messages: [OutgoingMessage]) throws {
        for m in messages {
            switch m.destination {
            case .worker(let c):
                guard let identity = workerTable.routingID(c) else { continue }
                do throws(ZeroMQError) {
                    try workerSocket.sendMessage(to: identity, m.envelope, frames: m.frames, compress: !EndpointScope.isLoopback(workerEndpoint))
                } catch {
                    // A peer that is gone: the state machine learns that from missed heartbeats.
                    if error.code != EHOSTUNREACH && !error.isWouldBlock { throw error }
                }
            case .client(let c):
                guard let identity = clientTable.routingID(c) else { continue }
                // Results for clients on this machine go uncompressed (see `sendMessage`).
                var parts = WireProtocol.encode(m.envelope, frames: m.frames, compress: !EndpointScope.isLoopback(clientEndpoint))
                parts.insert(identity, at: 0)
                if backlog[c] == nil {
                    if try sendToClient(c, parts) { continue }
                    core.setClientBlocked(c, true)
                }
                backlog[c, default: []].append(parts)
                backlogBytes[c, default: 0] += parts.reduce(0) { $0 + $1.count }
            }
        }
    }

    /// Sends to a client without waiting. - Returns: false when its queue is full (a client
    /// that is gone counts as sent: nothing will read it).
    private func sendToClient(_ c: ConnectionID, _ parts: [[UInt8]]) throws -> Bool {
        do throws(ZeroMQError) {
            return try clients.trySend(parts: parts)
        } catch {
            if error.code == EHOSTUNREACH { return true }
            throw error
        }
    }

    /// Sends what waits for clients that were not reading, in order, as far as their queues take.
    private func flushBacklog() {
        for c in backlog.keys.sorted() {
            var queued = backlog[c]!
            var sent = 0
            while sent < queued.count, (try? sendToClient(c, queued[sent])) == true { sent += 1 }
            backlogBytes[c, default: 0] -= queued[..<sent].reduce(0) { $0 + $1.reduce(0) { $0 + $1.count } }
            queued.removeFirst(sent)
            if queued.isEmpty {
                dropBacklog(c)
                core.setClientBlocked(c, false)
            } else {
                backlog[c] = queued
            }
        }
    }

    private func isBacklogFull(_ c: ConnectionID) -> Bool {
        guard let queued = backlog[c] else { return false }
        if queued.count >= Limits.clientBacklogMessages || backlogBytes[c, default: 0] >= Limits.clientBacklogBytes { return true }
        droppingFrom.remove(c)
        return false
    }

    private func dropBacklog(_ c: ConnectionID) {
        backlog.removeValue(forKey: c)
        backlogBytes.removeValue(forKey: c)
        droppingFrom.remove(c)
    }

    /// The state machine and this loop forget a client connection together.
    private func forgetClient(_ c: ConnectionID, reason: String, now: UInt64) {
        dropBacklog(c)
        core.forgetClient(c, reason: reason, now: now)
    }

    /// Forgets connections silent past `idleConnectionNs` that nothing refers to any more: the
    /// tables would otherwise hold every connection ever made. A client's unread backlog goes
    /// with it.
    private func pruneConnections(now: UInt64) {
        let inUse = core.clientConnectionsInUse()
        let waiting = Set(backlog.keys)
        for c in clientTable.prune(idleNs: idleConnectionNs, now: now, keep: { inUse.contains($0) || waiting.contains($0) }) {
            forgetClient(c, reason: "its connection was silent and unused", now: now)
        }
        for c in clientTable.prune(idleNs: Self.idleWithBacklogNs, now: now, keep: { inUse.contains($0) }) {
            forgetClient(c, reason: "its connection was silent and unused", now: now)
        }
        let workerConnections = core.workerConnections
        _ = workerTable.prune(idleNs: idleConnectionNs, now: now, keep: { workerConnections.contains($0) })
    }
}
