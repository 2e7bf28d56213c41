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
    /// A task whose operator fails this many times fails its job with the operator's error.
    public var maxOperatorFailures = 3
    /// A task that was running on this many workers that died fails its job (a poison task).
    public var maxLostRuns = 4
    /// Largest explicit graph or expanded plan accepted, in tasks.
    public var maxTasksPerJob = 50_000_000
    /// Fewest milliseconds between two streamed result messages of one job (0 = as soon as ready).
    public var resultIntervalNs: UInt64 = 0
    /// A shard file that no committed dataset references (a failed or replaced ingest, a planted
    /// file) is removed from its worker after this long.
    public var orphanGraceNs: UInt64 = 3_600_000_000_000

    public init() {}
}
