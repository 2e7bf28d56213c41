import Foundation
import Testing
import TesseraProtocol
@testable import TesseraStorage

/// Shard files kept open between tasks: the kept reader while the path names the same file,
/// a new one once the file is replaced, an error once it is gone, and no more than the capacity.
@Suite struct ShardReaderPoolTests {
    static func write(_ path: String, seed: UInt64) throws {
        try ShardWriter.write(to: path, columns: TestCatalog.schema, data: TestCatalog(rows: 20_000, seed: seed).columns,
                              indexColumn: "_healpix_29", order: 3, pixel: 0, rowGroupRows: 10_000)
    }

    @Test func theKeptReaderServesUntilTheFileIsReplacedOrRemoved() throws {
        let pool = ShardReaderPool(capacity: 8, cache: nil)
        let path = tempPath("pool-\(UInt32.random(in: 0...UInt32.max)).shard")
        try Self.write(path, seed: 1)
        let a = try pool.reader(path: path)
        let b = try pool.reader(path: path)
        #expect(a === b)
        #expect(pool.statistics.opened == 1 && pool.statistics.reused == 1)

        // Replaced at the same path (a re-ingest, a repair): the new file, never the old mapping.
        try Self.write(path, seed: 2)
        let c = try pool.reader(path: path)
        #expect(c !== a)
        #expect(c.checksum == (try ShardReader(path: path)).checksum)
        #expect(c.checksum != a.checksum)
        // The old reader still reads its own file: a task holding it finishes on what it opened.
        let ra = try a.columnIndex("coord_ra")
        _ = try a.read(column: ra, rowGroup: 0)

        // Removed: an error naming the file, not the kept reader.
        try FileManager.default.removeItem(atPath: path)
        #expect(throws: ShardError.self) { try pool.reader(path: path) }
        #expect(pool.statistics.open == 0)
    }

    @Test func atMostTheCapacityStaysOpenTheLeastRecentlyUsedLeavingFirst() throws {
        let pool = ShardReaderPool(capacity: 2, cache: nil)
        let paths = (0..<3).map { tempPath("pool-cap-\($0)-\(UInt32.random(in: 0...UInt32.max)).shard") }
        for (i, p) in paths.enumerated() { try Self.write(p, seed: UInt64(i)) }
        let first = try pool.reader(path: paths[0])
        _ = try pool.reader(path: paths[1])
        _ = try pool.reader(path: paths[0])  // the first is now the most recent
        _ = try pool.reader(path: paths[2])  // the second leaves
        #expect(pool.statistics.open == 2)
        #expect(try pool.reader(path: paths[0]) === first)
        let opened = pool.statistics.opened
        _ = try pool.reader(path: paths[1])
        #expect(pool.statistics.opened == opened + 1, "the least recently used file was closed and opened again")
        // Files being removed are closed at once.
        pool.forget(paths: [paths[0], paths[1]])
        #expect(pool.statistics.open == 0)
        for p in paths { try? FileManager.default.removeItem(atPath: p) }
    }
}
