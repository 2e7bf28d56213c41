/// A worker as the scheduler numbers it (from 1; 0 means none).
public typealias WorkerID = UInt32
/// A peer connection on one of the scheduler's sockets, numbered by the socket loop.
public typealias ConnectionID = UInt32
/// A job, numbered by the scheduler (from 1).
public typealias JobID = UInt32

/// Task keys on the wire: the job id in the high 32 bits, the task index in the low 32.
public enum TaskKey {
    @inline(__always) public static func make(job: JobID, task: UInt32) -> UInt64 { UInt64(job) << 32 | UInt64(task) }
    @inline(__always) public static func job(_ key: UInt64) -> JobID { JobID(truncatingIfNeeded: key >> 32) }
    @inline(__always) public static func task(_ key: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: key) }
}

/// A shard's place on the sky within one dataset's ingest: its HEALPix order and pixel.
public struct ShardPlace: Hashable, Sendable {
    public var order: UInt32
    public var pixel: Int64
    public init(order: UInt32, pixel: Int64) {
        self.order = order
        self.pixel = pixel
    }
}
