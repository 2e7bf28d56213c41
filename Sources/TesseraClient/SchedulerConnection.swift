import Dispatch
import Foundation
import TesseraCompute
import TesseraProtocol
@_exported import TesseraSecurity
import ZeroMQ

/// What the scheduler told a client about one of its jobs.
public enum JobEvent {
    /// Output values (by task index) that just became available, and the job's progress. A
    /// `partial` value is a progressive snapshot of the job's aggregate, not a final output.
    case results([(task: UInt32, value: Value, partial: Bool)], tasksDone: UInt64, taskCount: UInt64)
    /// The job ended (done, failed or cancelled).
    case finished(Tessera_V1_JobFinished)
}

/// The work a job does: an explicit graph, or a plan the scheduler expands.
public enum JobWork {
    case graph(TaskGraph)
    case plan(Tessera_V1_Plan)
}

/// A finished job's outputs.
public struct JobOutcome {
    public var jobID: JobID
    public var values: [UInt32: Value]
    public var finished: Tessera_V1_JobFinished
    /// Seconds from submission until the scheduler accepted the job.
    public var acceptSeconds: Double
    /// Seconds from submission until the first result arrived (nil if none did before the end).
    public var firstResultSeconds: Double?
    /// Seconds from submission until the job finished.
    public var seconds: Double
    /// Result messages received (more than one means the results streamed).
    public var resultMessages: Int
}

/// A blocking connection to a scheduler's client endpoint. It owns one DEALER socket and so
/// belongs to one thread; several jobs can run over it at once.
public final class SchedulerConnection {
    public let endpoint: String
    private let context: ZMQContext
    private let socket: Socket
    private var nextTag: UInt64 = 1
    private var events: [JobID: [JobEvent]] = [:]
    private var accepted: [UInt64: Result<Tessera_V1_JobAccepted, ClientError>] = [:]
    private var statusReplies: [Tessera_V1_StatusReply] = []
    private var pongs: Set<UInt64> = []
    private var jobErrors: [JobID: ClientError] = [:]
    /// Replies matched by client tag (ingest plans and commits).
    private var tagged: [UInt64: Result<Envelope, ClientError>] = [:]
    /// The epoch of the scheduler start last heard from.
    public private(set) var epoch: UInt64 = 0
    /// Jobs not yet finished, with the epoch of the scheduler start that accepted each: named
    /// in a heartbeat every second while this connection waits, so the scheduler knows someone
    /// still reads their results, and says so when it has restarted and lost them.
    private var waiting: [JobID: UInt64] = [:]
    private var lastHeartbeatAt: UInt64 = 0
    /// How often a waiting client heartbeats.
    public static let heartbeatIntervalNs = ClientTiming.heartbeatIntervalNs
    /// How many times ``run(_:name:idleTimeout:onEvent:)`` submits a job again after the
    /// scheduler restarted and lost it.
    public static let resubmissions = ClientTiming.resubmissions

    /// How this connection authenticates (workers' peer endpoints take the same key, for ingest).
    public let credentials: Credentials
    /// The class its jobs run in unless a submit says otherwise.
    public var priority: PriorityClass = .normal
    /// Whom its jobs run for, when not this key's own user (an admin key only, or a cluster
    /// without keys, where it tags jobs with a user for fair share).
    public var onBehalfOf = ""
    /// What the scheduler said when it last accepted a job here (its estimate, class and user).
    public private(set) var lastAccepted: Tessera_V1_JobAccepted?
    /// Sockets to workers this connection takes direct results from, by endpoint.
    private var peers: [String: Socket] = [:]
    private var nextTake: UInt64 = 1
    /// Takes a worker's direct results over its same-host socket (no encryption; this Unix user
    /// must be able to open it) when the worker is on this machine.
    public var sameHostResults = true
    /// Polled whenever this connection waits (at least every 100 ms while a job runs). Once it
    /// is true, every job this connection waits for is cancelled on the cluster, and the wait
    /// throws ``ClientError/interrupted(jobs:confirmed:)``: a command line's Ctrl-C stops its
    /// work on the workers at once, not a client timeout later.
    public var isInterrupted: () -> Bool = { false }
    /// Told when a step that cannot be called back begins (true) and ends (false), such as an
    /// ingest's commit once sent: a command line's watchdog waits for it rather than end the
    /// process in the middle.
    public var onUninterruptible: (Bool) -> Void = { _ in }
    /// Steps in progress that an interruption must not cut (``uninterruptible(_:)``).
    private var uninterruptibleDepth = 0
    /// Interrupted, and not in a step that must finish.
    private var mustStop: Bool { uninterruptibleDepth == 0 && isInterrupted() }
    /// Set while an interruption cancels this connection's jobs: results still arriving are
    /// not taken from their workers.
    private var interrupting = false
    /// How long an interrupted connection waits for the scheduler to confirm its cancellations
    /// (so that they have been sent before the process exits).
    public static let interruptConfirmSeconds = 1.5

    /// Connects and checks that a scheduler answers within `timeout` seconds.
    /// - Parameter credentials: the user's key; nil finds it as the `tessera` command does (a
    ///   cluster this process started, `$TESSERA_KEY`, `./tessera-data/keys`), else none.
    /// - Parameter sharedContext: a ZeroMQ context many connections share (a gateway's pool: one
    ///   I/O thread for all, not one each); nil: a context of its own.
    public init(endpoint: String, timeout: Double = 5, credentials: Credentials? = nil, sharedContext: ZMQContext? = nil) throws {
        self.endpoint = endpoint
        self.credentials = credentials ?? CredentialStore.credentials(for: endpoint)
        do {
            context = try sharedContext ?? ZMQContext()
            socket = try context.socket(.dealer)
            try socket.setSendHighWaterMark(0)
            try socket.setReceiveHighWaterMark(0)
            try socket.setHeartbeat(intervalMs: 1000, timeoutMs: 5000)
            try self.credentials.secure(socket)
            try socket.connect(endpoint)
        } catch {
            throw ClientError.transport("\(error)")
        }
        try ping(timeout: timeout)
    }

    /// Round trip to the scheduler; throws `noScheduler` when it does not answer in time.
    public func ping(timeout: Double = 5) throws {
        let nonce = nextTag
        nextTag += 1
        var p = Tessera_V1_Ping()
        p.nonce = nonce
        var e = Envelope()
        e.ping = p
        try send(e)
        try waitUntil(timeout: timeout, onTimeout: ClientError.noScheduler(endpoint: endpoint, seconds: timeout)) { $0.pongs.remove(nonce) != nil }
    }

    /// Submits a job and waits for the scheduler to accept it.
    /// - Parameter batchResults: deliver outputs only at the end instead of as they are computed.
    @discardableResult
    /// - Parameter directResults: outputs stay on their workers, and this connection takes
    ///   each straight from there (large values cross one hop, not two).
    public func submit(_ work: JobWork, name: String = "", batchResults: Bool = false, priority: PriorityClass? = nil, directResults: Bool = false,
                       timeout: Double = Double(ClientTiming.acceptTimeoutNs) / 1e9) throws -> Tessera_V1_JobAccepted {
        let tag = nextTag
        nextTag += 1
        var s = Tessera_V1_SubmitJob()
        s.clientTag = tag
        s.name = name
        s.batchResults = batchResults
        s.directResults = directResults
        s.priority = (priority ?? self.priority).wire
        s.onBehalfOf = onBehalfOf
        var frames: [[UInt8]] = []
        switch work {
        case .graph(let g):
            let (spec, f) = g.encoded()
            s.graph = spec
            frames = f
        case .plan(let p):
            s.plan = p
        }
        var e = Envelope()
        e.submitJob = s
        try send(e, frames: frames)
        do {
            try waitUntil(timeout: timeout, onTimeout: .timedOut("the scheduler did not accept the job within \(timeout) s")) { $0.accepted[tag] != nil }
        } catch ClientError.interrupted(let earlier, let earlierConfirmed) {
            // Interrupted before this job's acceptance came: it is cancelled once it comes.
            let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(Self.interruptConfirmSeconds * 1e9)
            while accepted[tag] == nil && DispatchTime.now().uptimeNanoseconds < deadline { try? fileOne(timeoutMs: 50) }
            switch accepted.removeValue(forKey: tag) {
            case .success(let acc)?:
                waiting[acc.jobID] = epoch
                guard case .interrupted(let jobs, let confirmed) = interruption() else { break }
                throw ClientError.interrupted(jobs: (earlier + jobs).sorted(), confirmed: earlierConfirmed && confirmed)
            case .failure?:
                break
            case nil:
                // Neither accepted nor refused in time: it may yet run, until its client timeout.
                throw ClientError.interrupted(jobs: earlier, confirmed: false)
            }
            throw ClientError.interrupted(jobs: earlier, confirmed: earlierConfirmed)
        }
        let acc = try accepted.removeValue(forKey: tag)!.get()
        waiting[acc.jobID] = epoch
        lastAccepted = acc
        return acc
    }

    /// Submits a job again after a scheduler restart: while the restarted scheduler waits for
    /// the workers holding the job's data to register again, it refuses the job as
    /// `ERROR_DATA_UNAVAILABLE`, and this tries again, for up to `patience` seconds.
    public func resubmit(_ work: JobWork, name: String = "", priority: PriorityClass? = nil, directResults: Bool = false, patience: Double = 30) throws -> Tessera_V1_JobAccepted {
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(patience * 1e9)
        while true {
            do {
                return try submit(work, name: name, priority: priority, directResults: directResults)
            } catch ClientError.rejected(let code, _) where code == .errorDataUnavailable && DispatchTime.now().uptimeNanoseconds < deadline {
                if mustStop { throw interruption() }
                try? receiveOne(timeoutMs: 250)
            }
        }
    }

    /// The next event of a job, waiting at most `timeout` seconds (nil if none came).
    public func nextEvent(job: JobID, timeout: Double) throws -> JobEvent? {
        if let err = jobErrors.removeValue(forKey: job) { throw err }
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(timeout * 1e9)
        while events[job, default: []].isEmpty {
            let now = DispatchTime.now().uptimeNanoseconds
            if now >= deadline { return nil }
            try receiveOne(timeoutMs: Int((deadline - now) / 1_000_000) + 1)
            if let err = jobErrors.removeValue(forKey: job) { throw err }
        }
        return events[job]!.removeFirst()
    }

    /// Submits a job and collects all its outputs.
    /// - Parameters:
    ///   - idleTimeout: fail when nothing at all is heard of the job for this long.
    ///   - onEvent: called with each event as it arrives (progress display, streaming consumers).
    ///
    /// A job lost to a scheduler restart is submitted again (up to ``resubmissions`` times): its
    /// tasks are pure functions of their inputs, so the new run's outputs are the same values
    /// under the same task indices, and the caller sees one answer.
    public func run(_ work: JobWork, name: String = "", idleTimeout: Double = 60, onEvent: (JobEvent) -> Void = { _ in }) throws -> JobOutcome {
        let start = DispatchTime.now().uptimeNanoseconds
        var acc = try submit(work, name: name)
        let acceptSeconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        var values: [UInt32: Value] = [:]
        var first: Double?
        var messages = 0
        var resubmitted = 0
        while true {
            let event: JobEvent?
            do {
                event = try nextEvent(job: acc.jobID, timeout: idleTimeout)
            } catch ClientError.schedulerRestarted where resubmitted < Self.resubmissions {
                resubmitted += 1
                acc = try resubmit(work, name: name)
                continue
            }
            guard let ev = event else {
                throw ClientError.timedOut("no news of job \(acc.jobID) for \(idleTimeout) s")
            }
            onEvent(ev)
            switch ev {
            case .results(let vs, _, _):
                messages += 1
                if first == nil { first = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }
                for (t, v, partial) in vs where !partial { values[t] = v }
            case .finished(let f):
                let secs = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
                return JobOutcome(jobID: acc.jobID, values: values, finished: f, acceptSeconds: acceptSeconds,
                                  firstResultSeconds: first, seconds: secs, resultMessages: messages)
            }
        }
    }

    /// Sends a request carrying `tag` and waits for the reply with the same tag.
    public func request(_ e: Envelope, tag: UInt64, frames: [[UInt8]] = [], timeout: Double = 60) throws -> Envelope {
        try send(e, frames: frames)
        try waitUntil(timeout: timeout, onTimeout: .timedOut("no reply from the scheduler within \(timeout) s")) { $0.tagged[tag] != nil }
        accepted.removeValue(forKey: tag)
        return try tagged.removeValue(forKey: tag)!.get()
    }

    /// A fresh tag for a request.
    public func makeTag() -> UInt64 {
        defer { nextTag += 1 }
        return nextTag
    }

    /// Asks the scheduler to cancel a job of ours.
    public func cancel(job: JobID) throws {
        var c = Tessera_V1_CancelJob()
        c.jobID = job
        var e = Envelope()
        e.cancelJob = c
        e.epoch = waiting.removeValue(forKey: job) ?? epoch
        try send(e)
    }

    /// Workers, their load and memory, and jobs.
    /// As ``onBehalfOf``'s user when set (an admin key only): what that user may see.
    /// - Parameter withCoverage: each dataset's shard pixels too.
    public func status(timeout: Double = 5, withCoverage: Bool = false) throws -> Tessera_V1_StatusReply {
        var e = Envelope()
        e.statusRequest = Tessera_V1_StatusRequest()
        e.statusRequest.onBehalfOf = onBehalfOf
        e.statusRequest.withCoverage = withCoverage
        try send(e)
        try waitUntil(timeout: timeout, onTimeout: .noScheduler(endpoint: endpoint, seconds: timeout)) { !$0.statusReplies.isEmpty }
        return statusReplies.removeFirst()
    }

    // MARK: Plumbing

    private func send(_ e: Envelope, frames: [[UInt8]] = []) throws {
        do {
            try socket.send(parts: WireProtocol.encode(e, frames: frames))
        } catch {
            throw ClientError.transport("\(error)")
        }
    }

    private func waitUntil(timeout: Double, onTimeout: ClientError, _ done: (SchedulerConnection) -> Bool) throws {
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(timeout * 1e9)
        while !done(self) {
            let now = DispatchTime.now().uptimeNanoseconds
            if now >= deadline { throw onTimeout }
            try receiveOne(timeoutMs: Int((deadline - now) / 1_000_000) + 1)
        }
    }

    /// Names the jobs this connection waits for, once a second (grouped by the epoch that
    /// accepted them, which the scheduler compares with its own).
    private func heartbeatIfDue() throws {
        guard !waiting.isEmpty else { return }
        let now = DispatchTime.now().uptimeNanoseconds
        guard now &- lastHeartbeatAt >= Self.heartbeatIntervalNs else { return }
        lastHeartbeatAt = now
        for (jobEpoch, ids) in Dictionary(grouping: waiting.keys, by: { waiting[$0] ?? 0 }) {
            var h = Tessera_V1_ClientHeartbeat()
            h.jobIds = Array(ids.sorted().prefix(Limits.heartbeatJobs))
            var e = Envelope()
            e.clientHeartbeat = h
            e.epoch = jobEpoch
            try send(e)
        }
    }

    /// Receives and files at most one message (waiting at most a heartbeat interval, so that
    /// heartbeats go out while the caller waits longer), unless the connection is interrupted.
    private func receiveOne(timeoutMs: Int) throws {
        if mustStop { throw interruption() }
        try fileOne(timeoutMs: min(timeoutMs, 100))
    }

    /// Runs `body`, which no interruption cuts: once begun it is waited for (an ingest's commit).
    public func uninterruptible<T>(_ body: () throws -> T) rethrows -> T {
        uninterruptibleDepth += 1
        if uninterruptibleDepth == 1 { onUninterruptible(true) }
        defer {
            uninterruptibleDepth -= 1
            if uninterruptibleDepth == 0 { onUninterruptible(false) }
        }
        return try body()
    }

    /// Cancels every job this connection waits for and waits, for at most
    /// ``interruptConfirmSeconds``, until the scheduler says each has ended.
    private func interruption() -> ClientError {
        interrupting = true
        defer { interrupting = false }
        let jobs = waiting.keys.sorted()
        for job in jobs { try? cancel(job: job) }
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(Self.interruptConfirmSeconds * 1e9)
        func ended(_ job: JobID) -> Bool {
            jobErrors[job] != nil || events[job, default: []].contains { if case .finished = $0 { true } else { false } }
        }
        // A message that cannot be filed (one job's bad value) does not end the wait for the others.
        while !jobs.allSatisfy(ended) && DispatchTime.now().uptimeNanoseconds < deadline { try? fileOne(timeoutMs: 50) }
        return .interrupted(jobs: jobs, confirmed: jobs.allSatisfy(ended))
    }

    /// Receives and files at most one message, waiting at most `timeoutMs` (and a heartbeat
    /// interval).
    private func fileOne(timeoutMs: Int) throws {
        try heartbeatIfDue()
        var poller = Poller()
        poller.add(socket)
        let parts: [[UInt8]]
        do {
            let waitMs = min(timeoutMs, Int(Self.heartbeatIntervalNs / 1_000_000))
            guard try poller.wait(timeoutMs: waitMs) > 0, let p = try socket.receiveParts(dontWait: true) else { return }
            parts = p
        } catch {
            throw ClientError.transport("\(error)")
        }
        let env: Envelope
        let frames: [[UInt8]]
        do throws(ProtocolError) {
            (env, frames) = try WireProtocol.decode(parts)
        } catch {
            throw ClientError.protocolError(error)
        }
        if env.epoch != 0 { epoch = env.epoch }
        switch env.body {
        case .jobAccepted(let a):
            accepted[a.clientTag] = .success(a)
        case .jobResults(let r):
            var vs: [(UInt32, Value, Bool)] = []
            vs.reserveCapacity(r.values.count)
            for info in r.values {
                do throws(ProtocolError) {
                    vs.append((TaskKey.task(info.key), try Value(info: info, frames: frames), info.partial))
                } catch {
                    throw ClientError.protocolError(error)
                }
            }
            if !r.locations.isEmpty && !interrupting { vs += try take(r.locations) }
            events[r.jobID, default: []].append(.results(vs, tasksDone: r.tasksDone, taskCount: r.taskCount))
        case .jobFinished(let f):
            waiting.removeValue(forKey: f.jobID)
            events[f.jobID, default: []].append(.finished(f))
        case .statusReply(let s):
            statusReplies.append(s)
        case .pong(let p):
            pongs.insert(p.nonce)
        case .ingestPlan(let p):
            tagged[p.clientTag] = .success(env)
        case .ingestCommitted(let c):
            tagged[c.clientTag] = .success(env)
        case .ingestAborted(let a):
            tagged[a.clientTag] = .success(env)
        case .error(let err):
            let e = ClientError.rejected(code: err.code, message: err.message)
            if err.clientTag != 0 {
                accepted[err.clientTag] = .failure(e)
                tagged[err.clientTag] = .failure(e)
            } else if err.jobID != 0 {
                waiting.removeValue(forKey: err.jobID)
                jobErrors[err.jobID] = err.code == .errorSchedulerRestarted ? .schedulerRestarted(job: err.jobID, message: err.message) : e
            }
        default:
            break
        }
    }

    // MARK: Direct results

    /// Takes direct results from the workers holding them: one FetchRequest per worker, its
    /// reply awaited (each value is dropped there once sent).
    private func take(_ locations: [Tessera_V1_ValueLocation]) throws -> [(UInt32, Value, Bool)] {
        var out: [(UInt32, Value, Bool)] = []
        // Each take presents its job's secret, which only the job's client learns.
        var byPlace: [String: (serverKey: String, token: Data, keys: [UInt64])] = [:]
        for l in locations {
            let place = takeEndpoint(l.worker)
            byPlace[place.endpoint, default: (place.serverKey, l.takeToken, [])].keys.append(l.key)
        }
        for (endpoint, place) in byPlace {
            let socket = try peer(endpoint, serverKey: place.serverKey)
            let id = nextTake
            nextTake += 1
            var f = Tessera_V1_FetchRequest()
            f.requestID = id
            f.keys = place.keys
            f.take = true
            f.takeToken = place.token
            var e = Envelope()
            e.fetchRequest = f
            let deadline = DispatchTime.now().uptimeNanoseconds + 60_000_000_000
            do {
                try socket.send(parts: WireProtocol.encode(e, frames: []))
                while true {
                    let now = DispatchTime.now().uptimeNanoseconds
                    guard now < deadline else { throw ClientError.timedOut("worker \(endpoint) did not hand over its results within 60 s") }
                    if mustStop { throw interruption() }
                    var poller = Poller()
                    poller.add(socket)
                    guard try poller.wait(timeoutMs: min(Int((deadline - now) / 1_000_000) + 1, 100)) > 0, let parts = try socket.receiveParts(dontWait: true) else { continue }
                    let (reply, frames) = try WireProtocol.decode(parts)
                    guard case .fetchReply(let r) = reply.body, r.requestID == id else { continue }
                    guard r.missing.isEmpty else {
                        throw ClientError.transport("worker \(endpoint) no longer holds \(r.missing.count) of this job's results (taken before, or dropped after two minutes)")
                    }
                    for info in r.values { out.append((TaskKey.task(info.key), try Value(info: info, frames: frames), false)) }
                    break
                }
            } catch let e as ClientError {
                throw e
            } catch let e as ProtocolError {
                throw ClientError.protocolError(e)
            } catch {
                throw ClientError.transport("\(error)")
            }
        }
        return out
    }

    /// Where to take a worker's results: its same-host socket when this process can open it,
    /// else its peer endpoint (CURVE, with the worker's key).
    private func takeEndpoint(_ w: Tessera_V1_Peer) -> (endpoint: String, serverKey: String) {
        if sameHostResults, w.localEndpoint.hasPrefix("ipc://"), access(String(w.localEndpoint.dropFirst(6)), R_OK | W_OK) == 0 {
            return (w.localEndpoint, "")
        }
        return (w.endpoint, w.publicKey)
    }

    private func peer(_ endpoint: String, serverKey: String) throws -> Socket {
        if let s = peers[endpoint] { return s }
        do {
            let s = try context.socket(.dealer)
            try s.setLinger(milliseconds: 0)
            try s.setSendHighWaterMark(0)
            try s.setReceiveHighWaterMark(0)
            if !serverKey.isEmpty { try credentials.secure(s, serverKey: serverKey) }
            try s.connect(endpoint)
            peers[endpoint] = s
            return s
        } catch {
            throw ClientError.transport("\(error)")
        }
    }
}
