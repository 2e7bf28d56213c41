import TesseraProtocol

/// Tunables of the scheduler's state machine. Times are in nanoseconds of a monotonic clock that
/// the caller passes in with every event, so tests drive time by hand.
public struct SchedulerConfig: Sendable {
    /// How often workers are asked to heartbeat.
    public var heartbeatIntervalMs: UInt32 = 500
    /// A worker silent for this long is declared dead.
    public var workerTimeoutNs: UInt64 = 5_000_000_000
    /// Tasks in flight per worker thread, at least and at most. Between the two, the scheduler keeps
    /// about `queuedWorkTargetMicros` of work per thread at the worker, from the measured task
    /// durations, so microsecond tasks are not starved by the round trip and long tasks are not
    /// hoarded by one worker.
    public var minInFlightPerThread = 2
    public var maxInFlightPerThread = 64
    public var queuedWorkTargetMicros = 2_000.0
    /// A job's tasks are counted by their own measured duration, once one has reported; before
    /// that, they count as long (this many microseconds: `minInFlightPerThread`). A worker that
    /// just ran microsecond tasks then takes a new job's tasks a few at a time, not 64 per
    /// thread of what may be 100-ms scans (which would hold everything queued behind them there,
    /// its progressive snapshots too, for seconds).
    public var unknownTaskMicros = 20_000.0
    /// A task whose operator fails this many times fails its job with the operator's error.
    public var maxOperatorFailures = 3
    /// A task that was running on this many workers that died fails its job (a poison task).
    public var maxLostRuns = 4
    /// A task that found an input missing this many times on a worker still registered (so not
    /// explained by the holder's death) fails its job, naming the holder.
    public var maxMissingInputRounds = 10
    /// Largest explicit graph or expanded plan accepted, in tasks.
    public var maxTasksPerJob = 50_000_000
    /// Fewest milliseconds between two streamed result messages of one job (0 = as soon as ready).
    public var resultIntervalNs: UInt64 = 0
    /// A shard file that no committed dataset references (a failed or replaced ingest, a planted
    /// file) is removed from its worker after this long.
    public var orphanGraceNs: UInt64 = 3_600_000_000_000
    /// An ingest begun and not yet committed is abandoned (its shards become orphans) once
    /// neither its client nor a worker storing its shards has said anything of it for this
    /// long: a client killed mid-upload says nothing, and its plan would hold its user's quota
    /// and its shard files for good. Longer than a client waits for one shard (five minutes).
    /// 0: never.
    public var ingestIdleNs: UInt64 = 900_000_000_000
    /// This start's epoch (from the registry: every start has a new one). Worker messages of
    /// another epoch are refused with "register again"; 0 in tests that never restart.
    public var epoch: UInt64 = 0
    /// The first job id this start hands out (from the registry, so ids are never reused).
    public var firstJobID: JobID = 1
    /// A job whose client has sent nothing (no heartbeat, no request) for this long is cancelled
    /// on every worker: nobody is left to read its results.
    public var clientTimeoutNs: UInt64 = 30_000_000_000
    /// How long a task may run before it is cancelled and run elsewhere, unless its job says
    /// otherwise: this much, plus `taskDeadlineNsPerMiB` per MiB of the shard it reads.
    public var taskDeadlineNs: UInt64 = 300_000_000_000
    /// A data task's allowance per MiB of its shard (1 s per MiB: a disk or a slow network
    /// file system reads far faster, so a task past it is stuck, not slow).
    public var taskDeadlineNsPerMiB: UInt64 = 1_000_000_000
    /// A task that passes its deadline this many times fails its job.
    public var maxTaskTimeouts = 3
    /// Result bytes one job may hold for a client that is not reading (its connection's send
    /// queue is full): past this, the job's tasks wait instead of adding more, so a slow client
    /// slows its own job, and the scheduler's memory does not grow with it.
    public var maxHeldResultBytes = 64 << 20

    // MARK: Sharing the cluster

    /// Fair share counts each user's worker time with this half-life: a user who ran much
    /// recently yields to one who did not, and is forgiven after a few half-lives.
    public var fairShareHalfLifeNs: UInt64 = 300_000_000_000
    /// Users' weights in fair share (default 1): a user of weight 2 is served as if they had
    /// used half their worker time.
    public var userWeights: [String: Double] = [:]
    /// Interactive tasks a worker at its in-flight limit still takes, per thread: they run ahead
    /// of its queued tasks, so they wait only for the tasks its threads are running.
    public var interactiveInFlightPerThread = 8
    /// Admission control: an interactive catalog question expected to read more rows than this
    /// is refused with the estimate (0: no budget).
    public var interactiveMaxRows: UInt64 = 5_000_000
    /// An interactive job that is not a catalog question (a graph, a plan of tasks) may have at
    /// most this many tasks (0: no limit).
    public var interactiveMaxTasks = 1_000
    /// The longest an interactive job's task may run, whatever the job asks (0: no cap beyond
    /// the usual deadline), from when its worker reports it begun (a worker that reports no
    /// starts: from when it was sent). The class is the client's word and its tasks take the
    /// foreground threads first, so without a cap one user's slow tasks (a large image plan, a
    /// sleeping graph) could hold every foreground thread for the whole task deadline. Its wait
    /// behind other tasks on the worker is not counted (``interactiveWaitCaps`` bounds it). A task
    /// past it is run elsewhere, as any overdue task is, and its job fails after
    /// `maxTaskTimeouts` tries with a message naming the cap.
    public var interactiveTaskDeadlineNs: UInt64 = 30_000_000_000
    /// How many caps an interactive task may wait on its worker to begin, when the worker
    /// reports starts: past that it is run elsewhere (its worker's threads may be stuck).
    public static let interactiveWaitCaps: UInt64 = 4
    /// Shared scans (convoy scheduling): when a scan of a shard is sent to a worker, up to this
    /// many other jobs' ready scans of the same shard, in the same class, go with it, and the
    /// worker answers them all in one pass over the shard (0: every scan reads alone). They do
    /// not count against the worker's in-flight limit: a rider adds its own evaluation, not
    /// another read of the shard.
    public var maxPassRiders = 31
    /// Operators whose tasks share passes over their data.
    public var sharedPassOperators: Set<String> = ["catalog_scan"]
    /// Jobs one user may have running at once (0: no limit).
    public var maxJobsPerUser = 256
    /// Tasks one user's unfinished jobs may hold, all told (0: no limit): a job's tasks are about
    /// a hundred bytes each of the scheduler's memory, and a plan of a few bytes can ask for
    /// fifty million of them.
    public var maxTasksPerUser = 50_000_000
    /// Tasks all unfinished jobs may hold (0: no limit).
    public var maxLiveTasks = 100_000_000
    /// Rows one collect may return (a plan's `max_rows` may ask up to this; its default is
    /// lower): what one user may pull out in one question.
    public var maxRowsPerJob: UInt64 = 100_000_000
    /// Bytes of tables (uploads) one user's workspace may hold.
    public var workspaceQuotaBytes: UInt64 = 1 << 30

    public init() {}
}
