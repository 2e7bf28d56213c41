#if canImport(Glibc)
import Glibc
#endif

/// What can go wrong writing or reading a shard file; every case names the file.
public enum ShardError: Error, CustomStringConvertible, Equatable {
    /// A system call failed (disk full, permission, missing folder).
    case io(path: String, operation: String, errno: Int32)
    /// The file is not a shard file, or is truncated, or its footer does not check out.
    case corruptFile(path: String, reason: String)
    /// One column chunk fails its checksum or does not decode.
    case corruptChunk(path: String, rowGroup: Int, column: String, reason: String)
    /// The caller asked for something the file does not have.
    case unknownColumn(path: String, column: String, available: [String])
    case rowGroupOutOfRange(path: String, rowGroup: Int, count: Int)
    /// The data handed to the writer is inconsistent.
    case invalidInput(String)

    public var description: String {
        switch self {
        case .io(let p, let op, let e): "\(p): \(op) failed: \(String(cString: strerror(e)))"
        case .corruptFile(let p, let why): "\(p) is not a readable shard file: \(why)"
        case .corruptChunk(let p, let g, let c, let why): "\(p): row group \(g), column `\(c)` is corrupt: \(why)"
        case .unknownColumn(let p, let c, let avail): "\(p) has no column `\(c)` (it has: \(avail.joined(separator: ", ")))"
        case .rowGroupOutOfRange(let p, let g, let n): "\(p) has \(n) row groups; \(g) asked for"
        case .invalidInput(let why): "cannot write shard: \(why)"
        }
    }
}
