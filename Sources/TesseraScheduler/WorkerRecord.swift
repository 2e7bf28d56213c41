import DequeModule
import TesseraProtocol

/// What the scheduler knows of one live worker, and the messages it is building for it.
final class WorkerRecord {
    let id: WorkerID
    let connection: ConnectionID
    let name: String
    let threads: Int
    let memoryLimit: UInt64
    let peerEndpoint: String
    let pid: Int32
    let holdings: Set<String>
    let operators: Set<String>
    let registeredAt: UInt64
    /// Its CURVE public key (empty on an insecure cluster): peers and ingest clients need it to dial it.
    let publicKey: String
    /// Where same-host, same-user clients take direct results without CURVE (empty: nowhere).
    let localEndpoint: String

    var lastSeen: UInt64
    var lastHeartbeat: UInt64
    var maxHeartbeatGap: UInt64 = 0
    var rssBytes: UInt64 = 0
    var peakRSSBytes: UInt64 = 0
    var storedBytes: UInt64 = 0
    var spilledBytes: UInt64 = 0
    var storedResults: UInt32 = 0
    var tasksDone: UInt64 = 0
    /// Its shared scan passes and column cache, from its last heartbeat.
    var scans = Tessera_V1_ScanStats()
    /// Tasks sent and not yet reported, by key, with the time each must have finished by.
    var deadlines: [UInt64: UInt64] = [:]
    /// Scans sent to ride a shared pass with another scan of the same shard: in flight, but not
    /// counted against the limit.
    var riders: Set<UInt64> = []
    /// Interactive tasks in flight (riders too): counted apart, so that batch work queued at
    /// the worker never keeps them from being sent.
    var interactive: Set<UInt64> = []
    /// Interactive tasks sent and not yet begun, with their usual deadline: once the worker
    /// reports one begun, its deadline becomes the interactive cap from then, or the usual one
    /// if sooner.
    var awaitingStart: [UInt64: UInt64] = [:]
    /// Whether its heartbeats report begun interactive tasks (`Heartbeat.started`).
    let reportsStarts: Bool
    /// Tasks sent and not yet reported, riders aside.
    var inFlight: Int { deadlines.count - riders.count }

    /// A task sent here reported, timed out or was forgotten.
    func taskLeft(_ key: UInt64) {
        deadlines.removeValue(forKey: key)
        riders.remove(key)
        interactive.remove(key)
        awaitingStart.removeValue(forKey: key)
    }

    /// Whether a task of `job` may be sent now: below the limit for that job's tasks
    /// (``inFlightLimit(_:for:)``). Interactive tasks have room of their own besides, a few per thread
    /// whatever else is in flight: the worker runs them ahead of its queue on threads of their
    /// own, so they wait for no batch task. Counting them against the limit instead held them
    /// in the scheduler for as long as the worker took to drain its batch tasks: the limit
    /// follows the mean task time, and falls tenfold when shared passes start reporting.
    /// Other tasks are counted without the interactive ones, which run on threads of their own:
    /// steady cone traffic does not keep a scan from starting.
    func hasRoom(for job: JobRecord, _ c: SchedulerConfig) -> Bool {
        let limit = inFlightLimit(c, for: job)
        guard job.priority == .interactive else { return inFlight - interactive.count < limit }
        return inFlight < limit || interactive.count < threads * c.interactiveInFlightPerThread
    }
    /// Smoothed task duration, microseconds.
    var meanTaskMicros = 1_000.0

    /// Ready tasks that must run here (they read data only this worker and its replicas hold).
    var pinned = ReadyLanes()
    /// Ready tasks that prefer to run here (most of their input bytes are here); idle workers steal them.
    var preferred = ReadyLanes()

    // Outgoing, flushed once per event-loop turn.
    var assignment = Tessera_V1_AssignTasks()
    var assignedCount = 0
    var releases: [UInt64] = []
    var cancelledJobs: [JobID] = []
    /// Jobs done with direct results held here: forgotten, their results kept for the client.
    var finishedJobs: [JobID] = []
    var lostWorkers: [WorkerID] = []
    /// Tasks it ran past their deadline, to forget.
    var timedOut: [UInt64] = []
    /// Peers already described in the assignment being built.
    var peersInAssignment: Set<WorkerID> = []

    init(id: WorkerID, connection: ConnectionID, registration r: Tessera_V1_RegisterWorker, publicKey: String = "", now: UInt64) {
        self.publicKey = publicKey
        self.id = id
        self.connection = connection
        name = r.name
        threads = max(1, Int(r.threads))
        memoryLimit = r.memoryLimit
        peerEndpoint = r.peerEndpoint
        // Only ever handed to clients as a hint (they check the path themselves): bounded here.
        localEndpoint = r.localEndpoint.hasPrefix("ipc://") && r.localEndpoint.utf8.count <= Limits.endpointCharacters ? r.localEndpoint : ""
        pid = r.pid
        holdings = Set(r.holdings)
        operators = Set(r.operators)
        reportsStarts = r.reportsStarts
        registeredAt = now
        lastSeen = now
        lastHeartbeat = now
    }

    /// Tasks this worker may have in flight now, from its thread count and measured task times
    /// (its own, or those of the job whose task is next, `taskMicros`).
    func inFlightLimit(_ c: SchedulerConfig, taskMicros: Double? = nil) -> Int {
        let micros = taskMicros ?? meanTaskMicros
        let perThread = min(
            Double(c.maxInFlightPerThread),
            max(Double(c.minInFlightPerThread), (c.queuedWorkTargetMicros / max(micros, 0.5)).rounded(.up)))
        return threads * Int(perThread)
    }

    /// The limit for sending one more task of `job`: by that job's measured task time, or, before
    /// any of its tasks reported, as if they were long (``SchedulerConfig/unknownTaskMicros``).
    /// An interactive job keeps at least the worker's own limit: admission keeps its questions
    /// small, and fifty cones, each a new job, would otherwise go a few at a time.
    func inFlightLimit(_ c: SchedulerConfig, for job: JobRecord) -> Int {
        let own = inFlightLimit(c, taskMicros: job.meanTaskMicros ?? max(meanTaskMicros, c.unknownTaskMicros))
        return job.priority == .interactive ? max(own, inFlightLimit(c)) : own
    }

    var queuedCount: Int { pinned.count + preferred.count }

    /// Whether idle workers may take what is queued for this one: it has at least the least
    /// in flight a worker is given (its threads are busy). Its own limit may be far higher (set
    /// by short tasks) while each job's keeps it from taking more of its long ones.
    func isBusy(_ c: SchedulerConfig) -> Bool { inFlight >= threads * c.minInFlightPerThread }
}
