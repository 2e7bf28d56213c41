import Logging
import TesseraProtocol
import TesseraScheduler
import TesseraStorage
import ZeroMQ

#if canImport(Glibc)
import Glibc
#endif

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
    /// Most messages read from one socket per turn, so one busy socket cannot starve the other.
    private let drainBudget = 4096

    /// Binds both endpoints (a `*` port picks a free one; the chosen endpoints are in the properties).
    /// - Parameter registryPath: the SQLite registry of datasets (created if missing); nil runs without one.
    public init(clientBind: String, workerBind: String, config: SchedulerConfig, registryPath: String? = nil,
                parentPID: Int32? = nil, logger: Logger) throws {
        self.logger = logger
        context = try ZMQContext()
        clients = try context.socket(.router)
        workerSocket = try context.socket(.router)
        for (s, limit) in [(clients, Limits.clientMessageBytes), (workerSocket, Limits.workerMessageBytes)] {
            // Never drop a message for a slow peer: results and assignments must arrive.
            try s.setSendHighWaterMark(0)
            try s.setReceiveHighWaterMark(0)
            // libzmq disconnects a peer that sends a larger frame before it is ever buffered.
            try s.setMaxMessageSize(Int64(min(limit, WireProtocol.maximumFrameBytes)))
        }
        clientEndpoint = try clients.bind(clientBind)
        workerEndpoint = try workerSocket.bind(workerBind)
        wake = try WakePipe()
        signals = ShutdownSignals(wake: wake, parentPID: parentPID)
        core = SchedulerCore(config: config, now: monotonicNanos())
        if let registryPath {
            core.catalog = try Registry(path: registryPath)
            // Read the datasets into the planner now, so the first question does not wait for it.
            core.warmPlanner()
        }
    }

    /// Runs until SIGTERM or SIGINT (or the parent process exits, when one was given).
    public func run() throws {
        var poller = Poller()
        let iClients = poller.add(clients)
        let iWorkers = poller.add(workerSocket)
        let iWake = poller.add(fileDescriptor: wake.fd)
        var lastTick = monotonicNanos()
        let tickNs: UInt64 = 50_000_000
        while !signals.isRequested {
            let timeout = core.hasDeferredResults ? 5 : 50
            try poller.wait(timeoutMs: timeout)
            if poller.isReadable(iWake) { wake.drain() }
            if poller.isReadable(iWorkers) { try drain(workerSocket, fromWorkers: true) }
            if poller.isReadable(iClients) { try drain(clients, fromWorkers: false) }
            let now = monotonicNanos()
            if now &- lastTick >= tickNs {
                // Heartbeats that arrived while this loop was busy are read before anyone is
                // judged silent: a slow turn of the scheduler's own never kills a healthy worker.
                while try drain(workerSocket, fromWorkers: true) == drainBudget {}
                core.tick(now: monotonicNanos())
                signals.checkParent()
                lastTick = now
            }
            try send(core.flush(now: now))
            for n in core.notices { logger.notice("\(n)") }
            core.notices.removeAll()
        }
        logger.info("scheduler stopping", metadata: ["scheduler/workers": "\(core.workerCount)", "scheduler/jobs": "\(core.activeJobCount)"])
    }

    /// Reads up to `drainBudget` messages; returns how many it read.
    @discardableResult
    private func drain(_ socket: Socket, fromWorkers: Bool) throws -> Int {
        var n = 0
        while n < drainBudget, let parts = try socket.receive(dontWait: true) {
            n += 1
            guard parts.count >= 2 else { continue }  // ROUTER always prepends the identity
            let identity = parts[0].array
            let conn = fromWorkers ? workerTable.id(for: identity) : clientTable.id(for: identity)
            let body = Array(parts.dropFirst())
            let now = monotonicNanos()
            do throws(ProtocolError) {
                let (env, frames) = try WireProtocol.decode(body, budget: fromWorkers ? Limits.workerMessageBytes : Limits.clientMessageBytes)
                if fromWorkers {
                    core.handleWorker(conn, env, frames: frames, now: now)
                } else {
                    core.handleClient(conn, env, frames: frames, now: now)
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

    private func send(_ messages: [OutgoingMessage]) throws {
        for m in messages {
            let (socket, identity): (Socket, [UInt8]?) = switch m.destination {
            case .worker(let c): (workerSocket, workerTable.identity(c))
            case .client(let c): (clients, clientTable.identity(c))
            }
            guard let identity else { continue }
            do throws(ZeroMQError) {
                try socket.sendMessage(to: identity, m.envelope, frames: m.frames)
            } catch {
                // A peer that is gone: the state machine learns that from missed heartbeats.
                let gone = error.code == EHOSTUNREACH || error.isWouldBlock
                if !gone { throw error }
            }
        }
    }
}
