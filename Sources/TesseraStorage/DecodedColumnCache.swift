import Synchronization

/// Decoded column chunks kept in memory for the next question, by file and chunk, within a byte
/// budget, least recently used first out.
///
/// A scan's first cost is turning stored chunks into arrays: a checksum of the stored bytes and an
/// LZ4 or dictionary decode. Questions repeat, and many run over the same hot columns (positions,
/// fluxes, flags), so a worker keeps the arrays it decoded: the next scan of that chunk reads them
/// directly. Arrays are shared copy-on-write, so a hit costs no copy. Entries are keyed by the
/// file's path *and* its footer checksum, so a replaced or re-ingested file never serves stale
/// chunks; a file's entries leave with the LRU order like any other.
public final class DecodedColumnCache: Sendable {
    struct Key: Hashable {
        var path: String
        var fileChecksum: UInt64
        var column: Int
        var rowGroup: Int
    }

    struct Entry {
        var data: ColumnData
        var bytes: Int
        var lastUse: UInt64
    }

    struct State {
        var entries: [Key: Entry] = [:]
        var bytes = 0
        var clock: UInt64 = 0
        var hits: UInt64 = 0
        var misses: UInt64 = 0
        var evictions: UInt64 = 0
    }

    /// The most decoded bytes kept.
    public let capacityBytes: Int
    private let state = Mutex(State())

    public init(capacityBytes: Int) {
        self.capacityBytes = max(0, capacityBytes)
    }

    /// A decoded chunk, if kept.
    func lookup(_ key: Key) -> ColumnData? {
        state.withLock { s in
            guard var e = s.entries[key] else {
                s.misses += 1
                return nil
            }
            s.clock += 1
            e.lastUse = s.clock
            s.entries[key] = e
            s.hits += 1
            return e.data
        }
    }

    /// Whether a chunk is kept, without counting a use (for read-ahead, which skips kept chunks).
    func contains(_ key: Key) -> Bool {
        state.withLock { $0.entries[key] != nil }
    }

    /// Keeps a decoded chunk of `bytes` bytes; makes room by dropping the least recently used.
    func insert(_ key: Key, _ data: ColumnData, bytes arrayBytes: Int) {
        // The entry's own cost too (key, path, table slot), so tiny chunks cannot overrun the budget.
        let bytes = arrayBytes + 128 + key.path.utf8.count
        guard bytes <= capacityBytes / 4 else { return }  // one chunk never takes over the cache
        state.withLock { s in
            s.clock += 1
            if let old = s.entries[key] { s.bytes -= old.bytes }
            s.entries[key] = Entry(data: data, bytes: bytes, lastUse: s.clock)
            s.bytes += bytes
            guard s.bytes > capacityBytes else { return }
            // Evict down to 90 %, oldest first: one sort per tenth of the cache, not per insert.
            let target = capacityBytes - capacityBytes / 10
            for (k, e) in s.entries.sorted(by: { $0.value.lastUse < $1.value.lastUse }) {
                if s.bytes <= target { break }
                s.entries.removeValue(forKey: k)
                s.bytes -= e.bytes
                s.evictions += 1
            }
        }
    }

    /// What the cache holds and how it has served.
    public var statistics: (bytes: Int, entries: Int, hits: UInt64, misses: UInt64, evictions: UInt64) {
        state.withLock { s in (s.bytes, s.entries.count, s.hits, s.misses, s.evictions) }
    }
}
