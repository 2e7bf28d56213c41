import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Which file a path named, as `stat` tells: device, inode, size and the change times. Renaming
/// a new file over the path, or rewriting it in place, gives another identity.
public struct FileIdentity: Hashable, Sendable {
    let device: UInt64, inode: UInt64, size: Int64
    let modified: Int64, changed: Int64

    init(_ st: stat) {
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
        size = Int64(st.st_size)
        modified = Int64(st.st_mtim.tv_sec) &* 1_000_000_000 &+ Int64(st.st_mtim.tv_nsec)
        changed = Int64(st.st_ctim.tv_sec) &* 1_000_000_000 &+ Int64(st.st_ctim.tv_nsec)
    }

    /// The identity of the file at `path` now, or nil when it cannot be stat'ed.
    public static func of(_ path: String) -> FileIdentity? {
        var st = stat()
        return stat(path, &st) == 0 ? FileIdentity(st) : nil
    }
}

/// Shard files kept open (mapped, footer checked and decoded) between tasks, the most recently
/// used first, up to a count.
///
/// Opening a shard maps it, checks the footer's checksum, decodes the footer and checks every
/// chunk's bounds; closing it unmaps it, and the next task's first touch of each page faults
/// again. A cone search that reads one row group spent about a third of its worker time on that.
/// A kept reader is handed out again only while the path still names the same file (one `stat`);
/// chunks keep their own checksums, checked when decoded. Shard files are written whole and
/// renamed into place, so a mapping always shows a complete file; a tool that truncated one in
/// place while a task read it would fault that worker, kept or not (as it would have before).
public final class ShardReaderPool: Sendable {
    struct Kept {
        var reader: ShardReader
        var lastUse: UInt64
    }

    struct State {
        var readers: [String: Kept] = [:]
        var clock: UInt64 = 0
        var opened: UInt64 = 0
        var reused: UInt64 = 0
    }

    /// The most files kept open.
    public let capacity: Int
    /// The cache every reader this pool opens decodes through.
    public let cache: DecodedColumnCache?
    private let state = Mutex(State())

    public init(capacity: Int, cache: DecodedColumnCache?) {
        self.capacity = max(0, capacity)
        self.cache = cache
    }

    /// The shard at `path`: the kept reader when the path still names the file it mapped,
    /// otherwise a newly opened one (kept for next time).
    public func reader(path: String) throws(ShardError) -> ShardReader {
        let now = FileIdentity.of(path)
        let kept: ShardReader? = state.withLock { s in
            guard let k = s.readers[path] else { return nil }
            guard k.reader.identity == now else {
                // Replaced, rewritten or removed: the mapping shows the old file.
                s.readers.removeValue(forKey: path)
                return nil
            }
            s.clock += 1
            s.readers[path]?.lastUse = s.clock
            s.reused += 1
            return k.reader
        }
        if let kept { return kept }
        let r = try ShardReader(path: path, cache: cache)
        guard capacity > 0 else { return r }
        state.withLock { s in
            s.clock += 1
            s.opened += 1
            s.readers[path] = Kept(reader: r, lastUse: s.clock)
            if s.readers.count > capacity, let oldest = s.readers.min(by: { $0.value.lastUse < $1.value.lastUse }) {
                // Unmapped once the last task holding it is done.
                s.readers.removeValue(forKey: oldest.key)
            }
        }
        return r
    }

    /// Closes the kept readers of these paths (files being removed: their space comes back once
    /// the tasks still reading them are done, not when 128 other files have been opened).
    public func forget(paths: some Sequence<String>) {
        state.withLock { s in for p in paths { s.readers.removeValue(forKey: p) } }
    }

    /// Files opened, and readers handed out again, since the start.
    public var statistics: (open: Int, opened: UInt64, reused: UInt64) {
        state.withLock { s in (s.readers.count, s.opened, s.reused) }
    }
}
