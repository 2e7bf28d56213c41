import DequeModule
import TesseraCompute
import TesseraProtocol
import TesseraStorage

/// Who sent a client message, as authentication established it.
public struct ClientIdentity: Sendable, Equatable {
    /// The user's name from the cluster's users list.
    public var user: String
    /// An admin may see and cancel every job.
    public var isAdmin: Bool
    /// The CURVE public key it connected with (empty on an insecure cluster).
    public var publicKey: String

    public init(user: String, isAdmin: Bool, publicKey: String) {
        self.user = user
        self.isAdmin = isAdmin
        self.publicKey = publicKey
    }

    /// Everyone on an insecure (loopback-only) cluster: one local user, who may do anything.
    public static let local = ClientIdentity(user: "local", isAdmin: true, publicKey: "")

    /// A request's `on_behalf_of` refused: the error code and the message for its client.
    public struct ActingRefusal: Error, Sendable {
        public var code: Tessera_V1_ErrorCode
        public var message: String
    }

    /// Who a request acts as when it names `onBehalfOf`: this identity when that is empty or its
    /// own user; else, for an admin key only (a gateway acting for the user it authenticated),
    /// that user, with this key and without admin rights.
    public func acting(for onBehalfOf: String, what: String) -> Result<ClientIdentity, ActingRefusal> {
        if onBehalfOf.isEmpty || onBehalfOf == user { return .success(self) }
        guard isAdmin else {
            return .failure(ActingRefusal(code: .errorNotAllowed, message: "only an admin key may \(what) on behalf of another user; this key is user `\(user)`"))
        }
        if let why = Validate.name(onBehalfOf, what: "user name", limit: Limits.workerNameCharacters) {
            return .failure(ActingRefusal(code: .errorOverLimit, message: why))
        }
        return .success(ClientIdentity(user: onBehalfOf, isAdmin: false, publicKey: publicKey))
    }
}

/// What authentication established about a worker's connection.
public struct WorkerIdentity: Sendable, Equatable {
    /// The name its key is listed under (a worker must register with that name).
    public var name: String
    public var publicKey: String
    public init(name: String, publicKey: String) {
        self.name = name
        self.publicKey = publicKey
    }
}

/// What the scheduler knows of a registered shard file without opening it.
struct RegisteredShard {
    /// The footer's xxHash64 (0: not recorded).
    var checksum: UInt64
    var bytes: UInt64
    /// The shard's own rows (not its margin's): the most a scan of it returns.
    var rows: UInt64
}

/// A message the state machine wants sent; the socket loop encodes and sends it.
public struct OutgoingMessage {
    public enum Destination: Equatable, Sendable {
        case worker(ConnectionID)
        case client(ConnectionID)
    }

    public var destination: Destination
    public var envelope: Envelope
    public var frames: [[UInt8]]

    public init(_ destination: Destination, _ envelope: Envelope, frames: [[UInt8]] = []) {
        self.destination = destination
        self.envelope = envelope
        self.frames = frames
    }
}

/// The scheduler, as a state machine with no I/O: it takes events (a message from a worker or a
/// client, a clock tick) and returns the messages to send. The socket loop around it only decodes,
/// calls, and sends; tests drive it with thousands of fake workers and a fake clock.
///
/// Call the `handle…` methods for every event of an event-loop turn, then ``flush(now:)`` once:
/// that is where ready tasks are placed and where per-worker and per-client messages are batched.
public struct SchedulerCore {
    public var config: SchedulerConfig
    var workers: [WorkerID: WorkerRecord] = [:]
    var workerByConnection: [ConnectionID: WorkerID] = [:]
    /// Live workers in registration order, for round-robin placement.
    var workerOrder: [WorkerID] = []
    /// Which live workers hold each data key.
    var holders: [String: [WorkerID]] = [:]
    var jobs: [JobID: JobRecord] = [:]
    /// Ready tasks that may run anywhere.
    var readyAnywhere = ReadyLanes()
    /// Each user's recent worker time, for fair share.
    var fairShare: FairShare
    /// Jobs running per user.
    var jobsPerUser: [String: Int] = [:]
    /// Tasks of each user's unfinished jobs as admitted, and of all of them.
    var tasksPerUser: [String: Int] = [:]
    var liveTasks = 0
    /// Progressive snapshots ready to run, placed before any other queued task.
    var snapshotsReady: Deque<UInt64> = []
    var outbox: [OutgoingMessage] = []
    var nextWorkerID: WorkerID = 1
    var nextJobID: JobID = 1
    var startedAt: UInt64
    /// Jobs whose results changed this turn.
    var jobsWithResults: Set<JobID> = []
    /// Jobs that asked for progressive results.
    var progressiveJobs: Set<JobID> = []
    var finishedJobs: [Tessera_V1_JobStatus] = []
    /// The time of the event being handled.
    var lastNow: UInt64 = 0

    /// The registry, when the scheduler has one.
    public var catalog: (any DatasetCatalog)? {
        didSet { planned = nil }
    }
    /// The registry's datasets in memory for planning (nil: read them at next use).
    var planned: [String: PlannedDataset]?
    /// What the registry says of every planned shard, by shard key: its checksum goes with the
    /// tasks that read it (the worker compares it with the file it opens), its size sets their deadline.
    var registeredShards: [String: RegisteredShard] = [:]
    var pendingIngests: [String: PendingIngest] = [:]
    /// Ingests abandoned lately without a commit (id → when, and whether their client stopped
    /// them): a copy whose write was under way then, reported afterwards, is an orphan too (at
    /// once if the client stopped it). A report naming any other unknown ingest is only noted.
    var endedIngests: [String: (at: UInt64, stoppedByClient: Bool)] = [:]
    /// Shard files workers hold that no dataset references, by worker name, with when they may
    /// be removed (the grace period after they were first seen so; see `markOrphan`).
    var orphans: [String: [String: UInt64]] = [:]
    /// When users' tables were last checked for expiry.
    var lastWorkspaceSweep: UInt64 = 0
    var nextIngest: UInt64 = 1
    /// Things worth a log line (registry mismatches, commits), for the loop to drain.
    public var notices: [String] = []
    /// The public keys of every worker the cluster admits (empty when insecure): sent to each
    /// worker so that its peer endpoint admits its fellow workers only.
    public private(set) var peerKeys: [String] = []

    public internal(set) var tasksCompleted: UInt64 = 0
    public internal(set) var jobsCompleted: UInt64 = 0
    /// Jobs cancelled because their client fell silent.
    /// Users whose keys are admin keys (from the access list): a gateway asking as one of
    /// them sees what that admin would.
    public var adminUsers: Set<String> = []
    public internal(set) var jobsAbandoned: UInt64 = 0
    /// Task runs cancelled past their deadline.
    public internal(set) var tasksTimedOut: UInt64 = 0
    /// Registrations per worker name since this start (a worker that restarts or reconnects
    /// registers again under its name).
    var registrations: [String: UInt32] = [:]
    /// When each client connection was last heard from (any message).
    var clientLastHeard: [ConnectionID: UInt64] = [:]
    /// Client connections whose send queue is full (the daemon keeps what they have not read).
    var blockedClients: Set<ConnectionID> = []
    /// Clients' silence and tasks' deadlines are checked this often.
    static let sweepIntervalNs: UInt64 = 250_000_000
    var lastSweep: UInt64 = 0

    public init(config: SchedulerConfig = .init(), now: UInt64) {
        self.config = config
        fairShare = FairShare(halfLifeNs: config.fairShareHalfLifeNs, weights: config.userWeights, now: now)
        startedAt = now
        nextJobID = max(1, config.firstJobID)
        lastSweep = now
    }

    /// The id the next accepted job gets (the daemon reserves ids in the registry ahead of it).
    public var nextJobIDToIssue: JobID { nextJobID }

    /// Live workers.
    public var workerCount: Int { workers.count }
    /// Jobs not yet finished.
    public var activeJobCount: Int { jobs.count }

    // MARK: - Worker events

    /// A message arrived on the worker socket from `connection`.
    /// - Parameter identity: who the connection authenticated as (nil on an insecure cluster).
    public mutating func handleWorker(_ connection: ConnectionID, _ env: Envelope, frames: [[UInt8]], now: UInt64, identity: WorkerIdentity? = nil) {
        lastNow = now
        if case .registerWorker(let r) = env.body {
            register(connection, r, identity: identity, now: now)
            return
        }
        guard let wid = workerByConnection[connection], let w = workers[wid] else {
            // A worker we do not know (declared dead, or the scheduler restarted): it re-registers.
            send(.worker(connection), errorEnvelope(.errorUnknownWorker, "unknown worker: register again"))
            return
        }
        // Sent before its registration with this start reached it (reports of tasks of an
        // earlier epoch): void, and the registration already cleared them at the worker.
        guard env.epoch == config.epoch else { return }
        w.lastSeen = now
        switch env.body {
        case .heartbeat(let h):
            let gap = now &- w.lastHeartbeat
            if gap > w.maxHeartbeatGap { w.maxHeartbeatGap = gap }
            w.lastHeartbeat = now
            w.rssBytes = h.rssBytes
            w.peakRSSBytes = h.peakRssBytes
            w.storedBytes = h.storedBytes
            w.spilledBytes = h.spilledBytes
            w.storedResults = h.storedResults
            w.scans = h.scans
            for key in h.started {
                guard let latest = w.awaitingStart.removeValue(forKey: key), w.deadlines[key] != nil else { continue }
                w.deadlines[key] = min(latest, now &+ config.interactiveTaskDeadlineNs)
            }
        case .taskReport(let r):
            taskReport(w, r, frames: frames, now: now)
        case .deregister(let d):
            removeWorker(wid, now: now, handedBack: Set(d.handedBack), reason: "deregistered: \(d.reason)")
        case .shardStored(let r):
            shardStored(w, r, now: now)
        default:
            send(.worker(connection), errorEnvelope(.errorMalformedMessage, "message not expected from a worker"))
        }
    }

    /// Why a registration is refused, or nil when every field is within bounds: a worker's
    /// thread count decides how many tasks it is given, and peers dial its endpoint.
    static func registrationProblem(_ r: Tessera_V1_RegisterWorker) -> String? {
        if let why = Validate.name(r.name, what: "worker name", limit: Limits.workerNameCharacters) { return why }
        guard r.threads >= 1, r.threads <= UInt32(Limits.workerThreads) else {
            return "a worker of \(r.threads) threads is outside the allowed 1…\(Limits.workerThreads)"
        }
        if let why = Validate.tcpEndpoint(r.peerEndpoint) { return "peer \(why)" }
        guard r.operators.count <= Limits.workerOperators else {
            return "\(r.operators.count) operators are more than the limit of \(Limits.workerOperators)"
        }
        for h in r.holdings where ShardKey(h) == nil {
            return "holding `\(h.prefix(200))` is not a shard key (DATASET/INGEST/orderK-pixP)"
        }
        return nil
    }

    mutating func register(_ connection: ConnectionID, _ r: Tessera_V1_RegisterWorker, identity: WorkerIdentity?, now: UInt64) {
        var problem = Self.registrationProblem(r)
        if problem == nil, let identity, identity.name != r.name {
            problem = "this worker's key is listed as `\(identity.name)`, but it registered as `\(r.name.prefix(100))`"
        }
        if let why = problem {
            notices.append("refused a worker registration: \(why)")
            send(.worker(connection), errorEnvelope(.errorRegistrationRefused, "registration refused: \(why)"))
            return
        }
        if let old = workerByConnection[connection] {
            // The same connection registering again (a restarted worker process reusing its routing id).
            removeWorker(old, now: now, handedBack: [], reason: "re-registered")
        }
        let id = nextWorkerID
        nextWorkerID += 1
        registrations[r.name, default: 0] &+= 1
        let w = WorkerRecord(id: id, connection: connection, registration: r, publicKey: identity?.publicKey ?? "", now: now)
        workers[id] = w
        workerByConnection[connection] = id
        workerOrder.append(id)
        for key in w.holdings { holders[key, default: []].append(id) }
        reconcileHoldings(w)
        var ack = Tessera_V1_RegisterAck()
        ack.workerID = id
        ack.heartbeatIntervalMs = config.heartbeatIntervalMs
        ack.peerKeys = peerKeys
        var e = Envelope()
        e.registerAck = ack
        send(.worker(connection), e)
    }

    // MARK: - Client events

    /// A message arrived on the client socket from `connection`.
    /// - Parameter identity: who the connection authenticated as.
    public mutating func handleClient(_ connection: ConnectionID, _ env: Envelope, frames: [[UInt8]], now: UInt64,
                                      identity: ClientIdentity = .local) {
        lastNow = now
        clientLastHeard[connection] = now
        switch env.body {
        case .submitJob(let s):
            submit(connection, s, frames: frames, now: now, identity: identity)
        case .clientHeartbeat(let h):
            clientHeartbeat(connection, h, epoch: env.epoch)
        case .cancelJob(let c):
            if env.epoch != 0 && env.epoch != config.epoch {
                send(.client(connection), restartedError(job: c.jobID, epoch: env.epoch))
                return
            }
            guard let job = jobs[c.jobID], job.client == connection || job.user == identity.user || identity.isAdmin else {
                // Another user's job is reported as unknown: its existence is not theirs to learn.
                send(.client(connection), errorEnvelope(.errorUnknownJob, "no running job \(c.jobID) of yours (finished, cancelled, never submitted, or another user's)", jobID: c.jobID))
                return
            }
            finish(job, .jobCancelled, error: job.user == identity.user ? "cancelled by the client" : "cancelled by admin \(identity.user)", now: now)
        case .statusRequest(let r):
            var e = Envelope()
            // A gateway (an admin key) asks as the user it authenticated; others ask as themselves.
            // A key that may not speak for another user, or a name that is not one, sees only
            // what everyone may (fails closed: never the asking key's own view).
            var asker = identity
            if !r.onBehalfOf.isEmpty {
                let allowed = identity.isAdmin && Validate.name(r.onBehalfOf, what: "user name", limit: Limits.workerNameCharacters) == nil
                asker = ClientIdentity(user: allowed ? r.onBehalfOf : "", isAdmin: allowed && adminUsers.contains(r.onBehalfOf), publicKey: identity.publicKey)
            }
            e.statusReply = status(now: now, for: asker, withCoverage: r.withCoverage)
            send(.client(connection), e)
        case .ingestBegin(let b):
            ingestBegin(connection, b, identity: identity)
        case .ingestCommit(let c):
            ingestCommit(connection, c, now: now)
        case .ingestAbort(let a):
            ingestAbort(connection, a, now: now)
        case .ping(let p):
            var e = Envelope()
            var pong = Tessera_V1_Pong()
            pong.nonce = p.nonce
            e.pong = pong
            send(.client(connection), e)
        default:
            send(.client(connection), errorEnvelope(.errorMalformedMessage, "message not expected from a client"))
        }
    }

    /// A waiting client is alive; jobs it names from an earlier start of the scheduler are lost.
    mutating func clientHeartbeat(_ connection: ConnectionID, _ h: Tessera_V1_ClientHeartbeat, epoch: UInt64) {
        guard h.jobIds.count <= Limits.heartbeatJobs else {
            send(.client(connection), errorEnvelope(.errorOverLimit, "a heartbeat naming \(h.jobIds.count) jobs is over the limit of \(Limits.heartbeatJobs)"))
            return
        }
        guard epoch != config.epoch else { return }
        for id in h.jobIds { send(.client(connection), restartedError(job: id, epoch: epoch)) }
    }

    func restartedError(job: JobID, epoch: UInt64) -> Envelope {
        errorEnvelope(.errorSchedulerRestarted,
                      "the scheduler restarted (epoch \(epoch) → \(config.epoch)); job \(job) was lost: submit it again", jobID: job)
    }

    mutating func submit(_ connection: ConnectionID, _ s: Tessera_V1_SubmitJob, frames: [[UInt8]], now: UInt64, identity: ClientIdentity = .local) {
        // A gateway submits for the users it authenticated; nobody else speaks for another user.
        let user: String
        switch identity.acting(for: s.onBehalfOf, what: "submit") {
        case .success(let acting): user = acting.user
        case .failure(let refusal): return send(.client(connection), errorEnvelope(refusal.code, refusal.message, clientTag: s.clientTag))
        }
        if config.maxJobsPerUser > 0, jobsPerUser[user, default: 0] >= config.maxJobsPerUser {
            send(.client(connection), errorEnvelope(
                .errorOverBudget, "user `\(user)` has \(config.maxJobsPerUser) jobs running, the most one user may (scheduler --max-jobs-per-user); submit more as these finish",
                clientTag: s.clientTag))
            return
        }
        let priority = PriorityClass(s.priority)
        guard s.name.utf8.count <= Limits.jobNameCharacters else {
            send(.client(connection), errorEnvelope(.errorOverLimit, "a job name of \(s.name.utf8.count) bytes is over the limit of \(Limits.jobNameCharacters)", clientTag: s.clientTag))
            return
        }
        let timeouts = Limits.taskTimeoutSeconds
        guard s.taskTimeoutS == 0 || (s.taskTimeoutS.isFinite && timeouts.contains(s.taskTimeoutS)) else {
            send(.client(connection), errorEnvelope(
                .errorOverLimit, "a task deadline of \(s.taskTimeoutS) s is outside the allowed \(timeouts.lowerBound)…\(Int(timeouts.upperBound)) s",
                clientTag: s.clientTag))
            return
        }
        let graph: TaskGraph
        var progress: JobRecord.Progress?
        var estimate: Tessera_V1_CostEstimate?
        do throws(ProtocolError) {
            switch s.work {
            case .graph(let spec):
                graph = try Self.withoutPlanOnlyOperators(TaskGraph(spec: spec, frames: frames, maximumTasks: config.maxTasksPerJob))
            case .plan(let plan):
                if case .catalog(let q) = plan.kind {
                    if q.hasPython && identity.publicKey.isEmpty {
                        send(.client(connection), errorEnvelope(
                            .errorNotAllowed, "Python functions run only for authenticated users, and this cluster runs without keys (--insecure): start it with keys (tessera local makes them; tessera keys for a cluster of hosts)",
                            clientTag: s.clientTag))
                        return
                    }
                    if q.hasPython && !workers.isEmpty && !workers.values.contains(where: { $0.operators.contains(PythonOperatorNames.map) }) {
                        send(.client(connection), errorEnvelope(
                            .errorNotAllowed, "no worker of this cluster allows Python functions (they were started with --no-python)", clientTag: s.clientTag))
                        return
                    }
                    // (A Python question's rows go to the user's function on the worker, not back here.)
                    if q.hasRows, !q.hasPython, q.rows.maxRows > config.maxRowsPerJob {
                        send(.client(connection), errorEnvelope(
                            .errorOverBudget, "a question may return at most \(config.maxRowsPerJob) rows on this cluster (scheduler --max-rows-per-job); this one asks for max_rows \(q.rows.maxRows)",
                            clientTag: s.clientTag))
                        return
                    }
                    let planned = try planCatalogQuery(q, user: user)
                    graph = planned.graph
                    estimate = planned.estimate
                    if priority == .interactive, config.interactiveMaxRows > 0, planned.estimate.rows > config.interactiveMaxRows {
                        send(.client(connection), errorEnvelope(.errorOverBudget, Self.overBudget(planned.estimate, dataset: q.dataset, budget: config.interactiveMaxRows),
                                                                clientTag: s.clientTag))
                        return
                    }
                    progress = Self.progress(of: q, now: now)
                } else {
                    // The generic shapes (independent, chain, tree…) name their operator too.
                    graph = try Self.withoutPlanOnlyOperators(PlanExpansion.expand(plan, maximumTasks: config.maxTasksPerJob))
                }
            case nil:
                throw .invalidContent("job has neither a graph nor a plan")
            }
        } catch {
            send(.client(connection), errorEnvelope(.errorInvalidGraph, "\(error)", clientTag: s.clientTag))
            return
        }
        if priority == .interactive && estimate == nil && config.interactiveMaxTasks > 0 && graph.taskCount > config.interactiveMaxTasks {
            // Interactive work goes ahead of everyone's: a graph or plan whose reads the
            // scheduler cannot estimate is bounded by its size instead.
            send(.client(connection), errorEnvelope(
                .errorOverBudget, "an interactive job may have at most \(config.interactiveMaxTasks) tasks (scheduler --interactive-max-tasks); this one has \(graph.taskCount): submit it as normal or batch",
                clientTag: s.clientTag))
            return
        }
        if config.maxTasksPerUser > 0, tasksPerUser[user, default: 0] + graph.taskCount > config.maxTasksPerUser {
            send(.client(connection), errorEnvelope(
                .errorOverBudget, "user `\(user)` has \(tasksPerUser[user, default: 0]) tasks in unfinished jobs and this job adds \(graph.taskCount), over the \(config.maxTasksPerUser) one user may hold (scheduler --max-tasks-per-user); "
                    + (graph.taskCount > config.maxTasksPerUser ? "the job alone is over it: split it" : "submit it as these finish"),
                clientTag: s.clientTag))
            return
        }
        if config.maxLiveTasks > 0, liveTasks + graph.taskCount > config.maxLiveTasks {
            send(.client(connection), errorEnvelope(
                .errorOverBudget, "the cluster holds \(liveTasks) tasks in unfinished jobs and this job adds \(graph.taskCount), over its limit of \(config.maxLiveTasks) (scheduler --max-live-tasks); "
                    + (graph.taskCount > config.maxLiveTasks ? "the job alone is over it: split it" : "submit it later"),
                clientTag: s.clientTag))
            return
        }
        // Operators no live worker knows are refused up front (with no workers, the workers will say).
        if !workers.isEmpty {
            let known = workers.values.reduce(into: Set<String>()) { $0.formUnion($1.operators) }
            if let bad = graph.operators.first(where: { !known.contains($0) }) {
                send(.client(connection), errorEnvelope(
                    .errorUnknownOperator, "unknown operator `\(bad)`; workers offer: \(known.sorted().joined(separator: ", "))",
                    clientTag: s.clientTag))
                return
            }
        }
        // A graph may name data keys itself: a user's table is read by those who may read it
        // (an unreadable one gets the answer a missing one gets).
        let readsAll = identity.isAdmin && s.onBehalfOf.isEmpty
        let planned = readsAll || graph.dataKeys.isEmpty ? nil : try? plannedDatasets()
        func readable(_ key: String) -> Bool {
            if readsAll { return true }
            guard let k = ShardKey(key) else { return true }   // not a shard: the workers will say
            if let d = planned?[k.dataset] { return d.record.isVisible(to: user) }
            return !k.dataset.contains("..")   // a user's table the registry no longer lists
        }
        for key in graph.dataKeys where (holders[key] ?? []).isEmpty || !readable(key) {
            send(.client(connection), errorEnvelope(.errorDataUnavailable, "no live worker holds data `\(key)`", clientTag: s.clientTag))
            return
        }
        guard nextJobID < JobID.max else {
            send(.client(connection), errorEnvelope(.errorOverLimit, "this scheduler has handed out every job id; reset the registry's `scheduler` table", clientTag: s.clientTag))
            return
        }
        let id = nextJobID
        nextJobID += 1
        let job = JobRecord(id: id, client: connection, submit: s, graph: graph, now: now)
        job.user = user
        job.priority = priority
        job.lane = Lane(priority: priority, user: fairShare.id(of: user), job: id)
        job.estimate = estimate
        if case .plan(let plan) = s.work, case .catalog(let q) = plan.kind, q.collectsRows {
            // (A plan that sets no max_rows has the default cap, within this cluster's own.)
            job.rowCap = min(UInt64(CheckedCatalogQuery.rowCap(q)), config.maxRowsPerJob)
        }
        jobsPerUser[user, default: 0] += 1
        tasksPerUser[user, default: 0] += job.admittedTasks
        liveTasks += job.admittedTasks
        job.clientKey = identity.publicKey
        if job.directResults { job.takeToken = JobRecord.newTakeToken() }
        if s.taskTimeoutS > 0 { job.taskTimeoutNs = UInt64(s.taskTimeoutS * 1e9) }
        jobs[id] = job
        if let progress {
            job.progress = progress
            progressiveJobs.insert(id)
        }
        var acc = Tessera_V1_JobAccepted()
        acc.clientTag = s.clientTag
        acc.jobID = id
        acc.taskCount = UInt64(job.graphTaskCount)
        acc.outputCount = UInt64(job.outputCount)
        acc.dataTasks = UInt64(graph.dataKey.lazy.filter { $0 != 0 }.count)
        acc.priority = priority.wire
        acc.user = user
        if let estimate { acc.estimate = estimate }
        if case .plan(let plan) = s.work, case .catalog(let q) = plan.kind, Self.isCollect(q), !q.hasPython, !q.hasCrossmatch {
            // A collect's outputs are its shard tasks, in order: each returns at most its shard's
            // rows, so a client can place every batch as it arrives.
            acc.dataTaskRows = graph.dataKey.prefix { $0 != 0 }.map { registeredShards[graph.dataKeys[Int($0) - 1]]?.rows ?? 0 }
        }
        var e = Envelope()
        e.jobAccepted = acc
        send(.client(connection), e)
        for t in 0..<job.taskCount where job.waitCount[t] == 0 {
            makeReady(job, t)
        }
    }

    /// The connections of registered workers.
    public var workerConnections: Set<ConnectionID> { Set(workerByConnection.keys) }

    /// Client connections something here still answers to: their jobs and their ingests not yet
    /// ended. The socket loop keeps these in its table however long they are silent.
    public func clientConnectionsInUse() -> Set<ConnectionID> {
        Set(jobs.values.map(\.client)).union(pendingIngests.values.map(\.client))
    }

    /// The socket loop has forgotten a client connection: silent and unused, or its routing id
    /// taken by another peer (another key). Its jobs are cancelled and its ingests not yet
    /// committed abandoned, since nothing sent to it can arrive any more.
    public mutating func forgetClient(_ connection: ConnectionID, reason: String, now: UInt64) {
        lastNow = now
        for id in jobs.keys.sorted() {
            guard let job = jobs[id], job.client == connection else { continue }
            notices.append("job \(id) (\(job.user)) cancelled: \(reason)")
            finish(job, .jobCancelled, error: reason, now: now)
        }
        for (id, p) in pendingIngests.sorted(by: { $0.key < $1.key }) where p.client == connection && p.commit == nil {
            abandonIngest(id)
            notices.append("abandoned ingest \(id) of `\(p.dataset)` (\(p.user)): \(reason)")
        }
        clientLastHeard.removeValue(forKey: connection)
        blockedClients.remove(connection)
    }

    /// A client sent a message the socket loop dropped unread (its replies wait unread): it is
    /// alive, so its jobs are not cancelled as a silent client's.
    public mutating func clientHeard(_ connection: ConnectionID, now: UInt64) {
        clientLastHeard[connection] = now
    }

    /// A worker's routing id came from another key: the worker behind the connection is gone.
    public mutating func forgetWorkerConnection(_ connection: ConnectionID, now: UInt64) {
        guard let id = workerByConnection[connection] else { return }
        removeWorker(id, now: now, handedBack: [], reason: "its connection's routing id was taken by another key")
    }

    /// The daemon could not queue a message for a client (it is not reading), or could again.
    /// While blocked, its jobs' results are held, and a job holding `maxHeldResultBytes` runs no
    /// more tasks until the client reads: backpressure to the workers, not growth here.
    public mutating func setClientBlocked(_ connection: ConnectionID, _ blocked: Bool) {
        if blocked {
            blockedClients.insert(connection)
            return
        }
        guard blockedClients.remove(connection) != nil else { return }
        for id in jobs.keys.sorted() {
            guard let job = jobs[id], job.client == connection, !job.parked.isEmpty else { continue }
            let keys = job.parked
            job.parked = []
            for k in keys {
                let t = Int(TaskKey.task(k))
                if t < job.taskCount, job.state[t] == .ready { makeReady(job, t) }
            }
        }
    }

    /// Whether a job's tasks wait for its client to read what it holds.
    func isHeldBack(_ job: JobRecord) -> Bool {
        !blockedClients.isEmpty && blockedClients.contains(job.client) && job.pendingBytes.count >= config.maxHeldResultBytes
    }

    /// The cluster's admitted worker keys changed: every live worker learns the new set.
    public mutating func updatePeerKeys(_ keys: [String]) {
        guard keys != peerKeys else { return }
        peerKeys = keys
        for w in workers.values {
            var k = Tessera_V1_PeerKeys()
            k.keys = keys
            var e = Envelope()
            e.peerKeys = k
            send(.worker(w.connection), e)
        }
    }

    // MARK: - Time

    /// The clock advanced: workers silent past the timeout are declared dead.
    /// - Parameter loopStallNs: how long the caller's own loop was unable to read messages
    ///   (a slow turn, the process suspended): workers are not blamed for that silence, since
    ///   their heartbeats may still be on their way in.
    public mutating func tick(now: UInt64, loopStallNs: UInt64 = 0) {
        lastNow = now
        if loopStallNs > 0 {
            for w in workers.values { w.lastSeen = min(now, w.lastSeen &+ loopStallNs) }
            for (c, t) in clientLastHeard { clientLastHeard[c] = min(now, t &+ loopStallNs) }
        }
        let dead = workers.values.filter { now &- $0.lastSeen > config.workerTimeoutNs }.map(\.id)
        for id in dead.sorted() {
            removeWorker(id, now: now, handedBack: [], reason: "missed heartbeats")
        }
        if !pendingIngests.isEmpty { expireIngests(now: now) }
        if !orphans.isEmpty { removeOrphans(now: now) }
        expireWorkspaces(now: now)
        if now &- lastSweep >= Self.sweepIntervalNs {
            lastSweep = now
            cancelJobsOfSilentClients(now: now)
            timeOutOverdueTasks(now: now)
        }
    }

    /// Jobs whose client has been silent past the timeout are cancelled: nobody is left to read
    /// their results (a client waiting for a job heartbeats every second). Connections with no
    /// jobs are forgotten once silent that long.
    mutating func cancelJobsOfSilentClients(now: UInt64) {
        let heard = clientLastHeard, timeout = config.clientTimeoutNs
        let silent = { (c: ConnectionID) -> Bool in now &- (heard[c] ?? 0) > timeout }
        for id in jobs.keys.sorted() {
            guard let job = jobs[id], silent(job.client) else { continue }
            jobsAbandoned += 1
            notices.append("job \(id) (\(job.user)) cancelled: its client sent nothing for \(config.clientTimeoutNs / 1_000_000_000) s")
            finish(job, .jobCancelled, error: "its client sent nothing for \(config.clientTimeoutNs / 1_000_000_000) s", now: now)
        }
        let withJobs = Set(jobs.values.map(\.client))
        for c in clientLastHeard.keys where silent(c) && !withJobs.contains(c) { clientLastHeard.removeValue(forKey: c) }
    }

    // MARK: - Output

    mutating func send(_ d: OutgoingMessage.Destination, _ e: Envelope, frames: [[UInt8]] = []) {
        var e = e
        e.epoch = config.epoch
        outbox.append(OutgoingMessage(d, e, frames: frames))
    }

    func errorEnvelope(_ code: Tessera_V1_ErrorCode, _ message: String, clientTag: UInt64 = 0, jobID: JobID = 0) -> Envelope {
        var err = Tessera_V1_ErrorReply()
        err.code = code
        err.message = message
        err.clientTag = clientTag
        err.jobID = jobID
        var e = Envelope()
        e.error = err
        return e
    }

    /// Places ready tasks, then returns every message this turn produced: one assignment batch per
    /// worker, one results message per job.
    public mutating func flush(now: UInt64) -> [OutgoingMessage] {
        lastNow = now
        if !progressiveJobs.isEmpty { takeSnapshots(now: now) }
        place()
        for w in workers.values { flushWorker(w) }
        for id in jobsWithResults.sorted() {
            if let job = jobs[id], !job.batchResults, !blockedClients.contains(job.client), now &- job.lastResultsSentAt >= config.resultIntervalNs {
                sendResults(job, now: now)
                jobsWithResults.remove(id)
            }
        }
        let out = outbox
        outbox.removeAll(keepingCapacity: true)
        return out
    }

    /// Jobs whose streamed results are held back by the rate limit.
    public var hasDeferredResults: Bool {
        !progressiveJobs.isEmpty || jobsWithResults.contains { jobs[$0].map { !blockedClients.contains($0.client) } ?? false }
    }

    mutating func flushWorker(_ w: WorkerRecord) {
        // Releases first: a task given back to the worker that held its earlier value must not
        // have its new value dropped by the release of the old one.
        if !w.releases.isEmpty {
            var r = Tessera_V1_ReleaseResults()
            r.keys = w.releases
            var e = Envelope()
            e.releaseResults = r
            send(.worker(w.connection), e)
            w.releases.removeAll(keepingCapacity: true)
        }
        if w.assignedCount > 0 {
            var e = Envelope()
            e.assignTasks = w.assignment
            send(.worker(w.connection), e)
            w.assignment = Tessera_V1_AssignTasks()
            w.assignedCount = 0
            w.peersInAssignment.removeAll(keepingCapacity: true)
        }
        if !w.cancelledJobs.isEmpty || !w.lostWorkers.isEmpty || !w.timedOut.isEmpty || !w.finishedJobs.isEmpty {
            var c = Tessera_V1_CancelTasks()
            c.jobIds = w.cancelledJobs
            c.finishedJobIds = w.finishedJobs
            w.finishedJobs.removeAll()
            c.lostWorkers = w.lostWorkers
            c.taskKeys = w.timedOut
            var e = Envelope()
            e.cancelTasks = c
            send(.worker(w.connection), e)
            w.cancelledJobs.removeAll()
            w.lostWorkers.removeAll()
            w.timedOut.removeAll()
        }
    }

    mutating func sendResults(_ job: JobRecord, now: UInt64) {
        guard !job.pendingValues.isEmpty || !job.pendingLocations.isEmpty else { return }
        var r = Tessera_V1_JobResults()
        r.jobID = job.id
        r.values = job.pendingValues
        r.locations = job.pendingLocations
        job.pendingLocations = []
        r.tasksDone = UInt64(job.doneCount)
        r.taskCount = UInt64(job.graphTaskCount)
        var e = Envelope()
        e.jobResults = r
        send(.client(job.client), e, frames: job.pendingValues.isEmpty ? [] : [job.pendingBytes])
        job.pendingValues = []
        job.pendingBytes = []
        job.lastResultsSentAt = now
    }

    // MARK: - Status

    /// The cluster as `identity` may see it: every worker and dataset, and its own jobs only
    /// (an admin sees everyone's).
    public mutating func status(now: UInt64, for identity: ClientIdentity = .local, withCoverage: Bool = false) -> Tessera_V1_StatusReply {
        var s = Tessera_V1_StatusReply()
        for id in workerOrder {
            guard let w = workers[id] else { continue }
            var ws = Tessera_V1_WorkerStatus()
            ws.id = w.id
            ws.name = w.name
            ws.peerEndpoint = w.peerEndpoint
            ws.threads = UInt32(w.threads)
            ws.inFlight = UInt32(clamping: w.deadlines.count)
            ws.inFlightLimit = UInt32(clamping: w.inFlightLimit(config))
            ws.storedBytes = w.storedBytes
            ws.spilledBytes = w.spilledBytes
            ws.storedResults = w.storedResults
            ws.scans = w.scans
            ws.rssBytes = w.rssBytes
            ws.peakRssBytes = w.peakRSSBytes
            ws.memoryLimit = w.memoryLimit
            ws.lastHeartbeatMs = UInt32(min((now &- w.lastHeartbeat) / 1_000_000, UInt64(UInt32.max)))
            ws.tasksDone = w.tasksDone
            ws.pid = w.pid
            ws.restarts = (registrations[w.name] ?? 1) &- 1
            s.workers.append(ws)
            s.maxHeartbeatGapMs = max(s.maxHeartbeatGapMs, UInt32(min(w.maxHeartbeatGap / 1_000_000, UInt64(UInt32.max))))
        }
        // Each job's running tasks, counted once for its line and its user's.
        var runningTasks: [String: UInt64] = [:]
        var runningOf: [JobID: UInt64] = [:]
        for j in jobs.values {
            let n = UInt64(j.runningCount)
            runningOf[j.id] = n
            runningTasks[j.user, default: 0] += n
        }
        for id in jobs.keys.sorted() {
            guard let j = jobs[id], identity.isAdmin || j.user == identity.user else { continue }
            var js = Tessera_V1_JobStatus()
            js.jobID = j.id
            js.name = j.name
            js.user = j.user
            js.state = .jobRunning
            js.taskCount = UInt64(j.graphTaskCount)
            js.tasksDone = UInt64(j.doneCount)
            js.running = runningOf[j.id] ?? 0
            js.ready = UInt64(j.readyCount)
            js.seconds = Double(now &- j.submittedAt) / 1e9
            js.priority = j.priority.wire
            s.jobs.append(js)
        }
        s.fairShareHalfLifeS = Double(config.fairShareHalfLifeNs) / 1e9
        let totalUsage = fairShare.totalScaledUsage
        for i in 0..<fairShare.userCount {
            let name = fairShare.names[i]
            guard identity.isAdmin || name == identity.user else { continue }
            let usage = fairShare.usageSeconds(i, now: now)
            let running = jobsPerUser[name] ?? 0
            // Users long idle (usage decayed below a millisecond, nothing running) are left out.
            guard running > 0 || usage >= 0.001 else { continue }
            var u = Tessera_V1_UserShare()
            u.user = name
            u.weight = fairShare.weight(of: i)
            u.usageSeconds = usage
            u.share = fairShare.share(i, of: totalUsage)
            u.jobs = UInt32(clamping: running)
            u.runningTasks = runningTasks[name] ?? 0
            s.users.append(u)
        }
        s.jobs.append(contentsOf: finishedJobs.filter { identity.isAdmin || $0.user == identity.user }.suffix(20))
        s.tasksCompleted = tasksCompleted
        s.jobsCompleted = jobsCompleted
        s.datasets = datasetStatuses(for: identity.user, withCoverage: withCoverage)
        s.uptimeSeconds = Double(now &- startedAt) / 1e9
        s.epoch = config.epoch
        s.jobsAbandoned = jobsAbandoned
        s.tasksTimedOut = tasksTimedOut
        return s
    }
}
