/// How a client waits for its jobs: what `SchedulerConnection` does, and what the simulation's
/// clients do the same way.
public enum ClientTiming {
    /// A client waiting for jobs names them to the scheduler this often.
    public static let heartbeatIntervalNs: UInt64 = 1_000_000_000
    /// A submission not accepted within this long is an error to the caller.
    public static let acceptTimeoutNs: UInt64 = 30_000_000_000
    /// A job lost to a scheduler restart is submitted again at most this many times.
    public static let resubmissions = 3
}
