import Foundation
import Testing
import TesseraProtocol
@testable import TesseraStorage

/// The worker's cache of decoded chunks: the same arrays as decoding, never a replaced file's,
/// and the least recently used leave first.
@Suite struct DecodedColumnCacheTests {
    /// Equal value for value, NaNs included (bit for bit).
    static func same(_ a: ColumnData, _ b: ColumnData) -> Bool {
        switch (a, b) {
        case (.float64(let x), .float64(let y)): x.map(\.bitPattern) == y.map(\.bitPattern)
        case (.float32(let x), .float32(let y)): x.map(\.bitPattern) == y.map(\.bitPattern)
        default: a == b
        }
    }

    @Test func aCachedReadIsTheDecodedChunkAndAReplacedFileIsNeverServed() throws {
        let cache = DecodedColumnCache(capacityBytes: 64 << 20)
        let path = tempPath("cache-\(UInt32.random(in: 0...UInt32.max)).shard")
        let first = TestCatalog(rows: 30_000, seed: 1)
        try ShardWriter.write(to: path, columns: TestCatalog.schema, data: first.columns, indexColumn: "_healpix_29", order: 3, pixel: 0, rowGroupRows: 10_000)
        let a = try ShardReader(path: path, cache: cache)
        let columns = 0..<TestCatalog.schema.count
        let decoded = try columns.map { c in try (0..<a.rowGroupCount).map { g in try ShardReader(path: path).read(column: c, rowGroup: g) } }
        for c in columns { for g in 0..<a.rowGroupCount { #expect(Self.same(try a.read(column: c, rowGroup: g), decoded[c][g])) } }
        let afterFirst = cache.statistics
        #expect(afterFirst.misses == UInt64(columns.count * a.rowGroupCount) && afterFirst.hits == 0)
        // A second reader of the same file (the next task) reads the kept arrays.
        let b = try ShardReader(path: path, cache: cache)
        for c in columns { for g in 0..<b.rowGroupCount { #expect(Self.same(try b.read(column: c, rowGroup: g), decoded[c][g])) } }
        #expect(cache.statistics.hits == afterFirst.misses)

        // The file replaced at the same path (a re-ingest): its own rows, not the kept ones.
        let second = TestCatalog(rows: 30_000, seed: 2)
        try ShardWriter.write(to: path, columns: TestCatalog.schema, data: second.columns, indexColumn: "_healpix_29", order: 3, pixel: 0, rowGroupRows: 10_000)
        let c = try ShardReader(path: path, cache: cache)
        #expect(c.checksum != a.checksum)
        let fresh = try ShardReader(path: path)
        for col in columns { for g in 0..<c.rowGroupCount { #expect(Self.same(try c.read(column: col, rowGroup: g), try fresh.read(column: col, rowGroup: g))) } }
    }

    @Test func theLeastRecentlyUsedLeaveFirstAndTheBudgetHolds() throws {
        // Room for about 10 chunks of 80 KB (10,000 Float64 rows).
        let cache = DecodedColumnCache(capacityBytes: 850_000)
        let path = tempPath("cache-lru-\(UInt32.random(in: 0...UInt32.max)).shard")
        try ShardWriter.write(to: path, columns: TestCatalog.schema, data: TestCatalog(rows: 120_000, seed: 3).columns,
                              indexColumn: "_healpix_29", order: 3, pixel: 0, rowGroupRows: 10_000)
        let r = try ShardReader(path: path, cache: cache)
        let ra = try r.columnIndex("coord_ra")
        for g in 0..<8 { _ = try r.read(column: ra, rowGroup: g) }
        // Group 0 used again: the most recent now.
        _ = try r.read(column: ra, rowGroup: 0)
        for g in 8..<12 { _ = try r.read(column: ra, rowGroup: g) }
        let s = cache.statistics
        #expect(s.bytes <= cache.capacityBytes)
        #expect(s.evictions > 0)
        let hitsBefore = s.hits
        _ = try r.read(column: ra, rowGroup: 0)
        #expect(cache.statistics.hits == hitsBefore + 1, "the recently used group stayed")
        _ = try r.read(column: ra, rowGroup: 1)
        #expect(cache.statistics.hits == hitsBefore + 1, "the oldest group left")
    }
}
