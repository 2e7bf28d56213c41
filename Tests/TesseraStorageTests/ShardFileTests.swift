import Foundation
import SwiftProtobuf
import Testing
import TesseraProtocol
import TesseraSky
@testable import TesseraStorage
import TesseraTestKit

/// Reference values from Python's `xxhash` package (xxhash.xxh64(data).intdigest()).
let xxHashVectors: [(data: [UInt8], hash: UInt64)] = [
    ([], 0xEF46_DB37_51D8_E999),
    (Array("a".utf8), 0xD24E_C4F1_A98C_6E5B),
    (Array("abc".utf8), 0x44BC_2CF5_AD77_0999),
    (Array("0123456789abcdefghijklmnopqrstuvwxyz".utf8), 0x6919_6C1B_3AF0_BFF9),
    ((0..<768).map { UInt8($0 % 256) }, 0x8E03_C838_C596_036F),
]

@Test func xxHash64MatchesTheReference() {
    for v in xxHashVectors { #expect(XXHash64.hash(v.data) == v.hash, "\(v.data.count) bytes") }
}

/// A small deterministic catalog: positions, a sorted-ish id, noisy fluxes, flags.
struct TestCatalog {
    var ra: [Double] = [], dec: [Double] = [], index: [Int64] = [], id: [Int64] = []
    var flux: [Float] = [], mag: [Double] = [], band: [Int32] = [], cell: [Int16] = [], ext: [UInt8] = [], primary: [Bool] = []

    init(rows: Int, seed: UInt64) {
        var s = seed
        func next() -> Double {
            s = s &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Double(s >> 11) * 0x1.0p-53
        }
        for i in 0..<rows {
            let r = 50 + 20 * next(), d = -45 + 20 * next()
            ra.append(r); dec.append(d)
            index.append(HEALPix.spatialIndex(ra: r, dec: d))
            id.append(Int64(1 << 32) + Int64(i))
            flux.append(Float(1000 * next() + 1))
            mag.append(i % 97 == 0 ? .nan : 16 + 10 * next())
            band.append(Int32(i % 6)); cell.append(Int16(i % 400)); ext.append(UInt8(i % 2)); primary.append(i % 33 != 0)
        }
    }

    static let schema: [ColumnSpec] = [
        ColumnSpec("coord_ra", .columnFloat64, unit: "deg"), ColumnSpec("coord_dec", .columnFloat64, unit: "deg"),
        ColumnSpec("_healpix_29", .columnInt64), ColumnSpec("objectId", .columnInt64),
        ColumnSpec("r_psfFlux", .columnFloat32, unit: "nJy", description: "PSF flux"), ColumnSpec("r_mag", .columnFloat64),
        ColumnSpec("band", .columnInt32), ColumnSpec("cell", .columnInt16), ColumnSpec("ext", .columnUint8),
        ColumnSpec("detect_isPrimary", .columnBool),
    ]

    var columns: [ColumnData] {
        [.float64(ra), .float64(dec), .int64(index), .int64(id), .float32(flux), .float64(mag), .int32(band), .int16(cell), .uint8(ext), .bool(primary)]
    }
}

/// A path for one test file, in a folder of its own under the test process's root.
func tempPath(_ name: String) -> String {
    temporaryFolder("shard-tests") + "/" + name
}

@Suite struct ShardFileTests {
    @Test func roundTripReproducesEveryRowSortedByIndex() throws {
        let cat = TestCatalog(rows: 150_000, seed: 1)
        let path = tempPath("roundtrip.shard")
        let summary = try ShardWriter.write(to: path, columns: TestCatalog.schema, data: cat.columns, indexColumn: "_healpix_29", order: 3, pixel: 0, rowGroupRows: 65_536)
        #expect(summary.rows == 150_000)
        #expect(summary.rowGroups == 3)
        let r = try ShardReader(path: path)
        #expect(r.columnNames == TestCatalog.schema.map(\.name))
        #expect(r.footer.columns[4].unit == "nJy")
        let all = try r.read(columns: r.columnNames)
        // Sorted by index, and the same multiset of rows: compare against the input sorted the same way.
        guard case .int64(let idx) = all[2], case .int64(let ids) = all[3] else { Issue.record("wrong types"); return }
        #expect(zip(idx, idx.dropFirst()).allSatisfy { $0 <= $1 })
        let order = cat.index.indices.sorted { cat.index[$0] < cat.index[$1] || (cat.index[$0] == cat.index[$1] && $0 < $1) }
        #expect(ids == order.map { cat.id[$0] })
        for (k, col) in cat.columns.enumerated() where k != 5 {
            #expect(all[k] == col.gathered(order), "column \(TestCatalog.schema[k].name)")
        }
        // NaN-aware comparison for the float column with gaps.
        guard case .float64(let mags) = all[5] else { return }
        let expected = order.map { cat.mag[$0] }
        #expect(zip(mags, expected).allSatisfy { $0.bitPattern == $1.bitPattern })
        // Statistics in the footer match the data.
        let g0 = r.footer.rowGroups[0]
        #expect(g0.indexMin == idx[0])
        #expect(g0.indexMax == idx[65_535])
        #expect(g0.chunks[5].nanCount == UInt64(mags[0..<65_536].filter(\.isNaN).count))
        #expect(g0.chunks[5].min == mags[0..<65_536].filter { !$0.isNaN }.min())
    }

    @Test func eachChunkTakesItsSmallestForm() throws {
        var cat = TestCatalog(rows: 65_536, seed: 2)
        // A key constant over long stretches of the spatial order (as a sky cell is).
        let order = cat.index.indices.sorted { cat.index[$0] < cat.index[$1] }
        for (rank, i) in order.enumerated() { cat.cell[i] = Int16(rank / 5_000) }
        let path = tempPath("codecs.shard")
        let summary = try ShardWriter.write(to: path, columns: TestCatalog.schema, data: cat.columns, indexColumn: "_healpix_29", order: 3, pixel: 0)
        let r = try ShardReader(path: path)
        let codecs = Dictionary(uniqueKeysWithValues: zip(r.columnNames, r.footer.rowGroups[0].chunks.map(\.codec)))
        #expect(codecs["objectId"] == .chunkLz4)           // consecutive ids
        #expect(codecs["cell"] == .chunkRuns)              // 14 runs
        #expect(codecs["ext"] == .chunkDictionary)         // 0/1 at random: one bit a row
        #expect(codecs["detect_isPrimary"] == .chunkDictionary)
        #expect(codecs["band"] == .chunkDictionary)        // six values: four bits a row
        #expect(codecs["r_psfFlux"] == .chunkRaw)          // noisy floats
        #expect(codecs["coord_ra"] == .chunkRaw)
        #expect(summary.encodedChunks == 4 && summary.compressedChunks + summary.rawChunks + summary.encodedChunks == 10)
        // The rule, chunk by chunk, from sizes worked out here: LZ4 only where it saves 10%, a
        // dictionary or runs where smaller still.
        let data = try r.read(columns: r.columnNames, rowGroups: [0])
        for (k, chunk) in r.footer.rowGroups[0].chunks.enumerated() {
            let rawBytes = data[k].withStoredBytes { Array($0) }
            let width = ColumnData.width(TestCatalog.schema[k].type)
            let values = stride(from: 0, to: rawBytes.count, by: width).map { Array(rawBytes[$0..<($0 + width)]) }
            let distinct = Set(values).count
            let runs = 1 + zip(values, values.dropFirst()).filter { $0 != $1 }.count
            let bits = distinct <= 2 ? 1 : distinct <= 4 ? 2 : distinct <= 16 ? 4 : 8
            let dictionary = distinct <= 256 ? 4 + distinct * width + (values.count * bits + 7) / 8 : Int.max
            let runSize = 4 + runs * (width + 4)
            let lz4 = rawBytes.withUnsafeBytes { LZ4.compress($0) }.count
            let base = Double(lz4) <= 0.9 * Double(rawBytes.count) ? lz4 : rawBytes.count
            let expected: Tessera_V1_ChunkCodec = min(dictionary, runSize) < base
                ? (runSize <= dictionary ? .chunkRuns : .chunkDictionary)
                : (base == lz4 && base < rawBytes.count ? .chunkLz4 : .chunkRaw)
            #expect(chunk.codec == expected, "\(r.columnNames[k]): raw \(rawBytes.count), lz4 \(lz4), dictionary \(dictionary), runs \(runSize)")
        }
    }

    /// Every width and index size decodes exactly, and malformed encoded chunks are refused.
    @Test func dictionaryAndRunsDecodeExactlyAndRefuseDamage() throws {
        var state: UInt64 = 9
        func next() -> UInt64 {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return state >> 17
        }
        for (width, distinct) in [(1, 2), (2, 3), (4, 16), (8, 200), (4, 1)] {
            let pool = (0..<distinct).map { _ in (0..<width).map { _ in UInt8(truncatingIfNeeded: next()) } }
            let rows = 1_001
            let bytes = (0..<rows).flatMap { _ in pool[Int(next() % UInt64(distinct))] }
            let encoded = try #require(bytes.withUnsafeBytes { ChunkEncoding.encode($0, width: width, limit: bytes.count) })
            var out = [UInt8](repeating: 0, count: bytes.count)
            try encoded.bytes.withUnsafeBytes { e in
                try out.withUnsafeMutableBytes { try ChunkEncoding.decode(encoded.codec, e, width: width, rows: rows, into: $0) }
            }
            #expect(out == bytes, "width \(width), \(distinct) values, \(encoded.codec)")
        }
        func refuses(_ codec: Tessera_V1_ChunkCodec, _ stored: [UInt8], width: Int, rows: Int, _ message: String) {
            var out = [UInt8](repeating: 0, count: rows * width)
            #expect { try stored.withUnsafeBytes { s in try out.withUnsafeMutableBytes { try ChunkEncoding.decode(codec, s, width: width, rows: rows, into: $0) } } }
                throws: { "\($0)".contains(message) }
        }
        // Three values (two index bits), an index of 3 in the packed bytes.
        refuses(.chunkDictionary, [3, 0, 0, 0, 10, 20, 30, 0b1111_0001], width: 1, rows: 4, "an index of 3 into a dictionary of 3 values")
        refuses(.chunkDictionary, [3, 0, 0, 0, 10, 20, 30], width: 1, rows: 4, "needs 8 bytes, has 7")
        refuses(.chunkDictionary, [0, 0, 0, 0], width: 1, rows: 4, "a dictionary of 0 values")
        // Runs of 2 and 3 values for 4 rows.
        refuses(.chunkRuns, [2, 0, 0, 0, 7, 8, 2, 0, 0, 0, 3, 0, 0, 0], width: 1, rows: 4, "run 1 of 3 values does not fit 4 rows")
        refuses(.chunkRuns, [1, 0, 0, 0, 7, 2, 0, 0, 0], width: 1, rows: 4, "runs cover 2 of 4 rows")
        refuses(.chunkRuns, [1, 0, 0, 0, 7, 0, 0, 0, 0], width: 1, rows: 4, "run 0 of 0 values")
    }

    @Test func readsOnlyWhatIsAskedAndPrunesRowGroups() throws {
        let cat = TestCatalog(rows: 200_000, seed: 3)
        let path = tempPath("prune.shard")
        try ShardWriter.write(to: path, columns: TestCatalog.schema, data: cat.columns, indexColumn: "_healpix_29", order: 3, pixel: 0, rowGroupRows: 10_000)
        let r = try ShardReader(path: path)
        let cone = ConeRegion(ra: 60, dec: -35, radius: 0.5)
        let ranges = HEALPix.indexRanges(of: cone)
        let groups = r.rowGroups(overlapping: ranges)
        #expect(!groups.isEmpty && groups.count < r.rowGroupCount)
        // Brute force: every row in the cone lies in a selected group.
        let cols = try r.read(columns: ["coord_ra", "coord_dec"], rowGroups: groups)
        guard case .float64(let ra) = cols[0], case .float64(let dec) = cols[1] else { return }
        let inside = zip(ra, dec).filter { cone.contains(ra: $0.0, dec: $0.1) }.count
        let bruteForce = zip(cat.ra, cat.dec).filter { cone.contains(ra: $0.0, dec: $0.1) }.count
        #expect(inside == bruteForce)
        #expect(bruteForce > 0)
    }

    @Test func marginRowsAreKeptApart() throws {
        let own = TestCatalog(rows: 1000, seed: 4), margin = TestCatalog(rows: 100, seed: 5)
        let path = tempPath("margin.shard")
        let s = try ShardWriter.write(to: path, columns: TestCatalog.schema, data: own.columns, indexColumn: "_healpix_29", order: 3, pixel: 0, margin: margin.columns)
        #expect(s.rows == 1000 && s.marginRows == 100)
        let r = try ShardReader(path: path)
        #expect(try r.read(columns: ["objectId"])[0].count == 1000)
        #expect(try r.read(columns: ["objectId"], rowGroups: Array(r.marginRowGroups))[0].count == 100)
    }

    @Test func corruptionIsReportedByFileRowGroupAndColumn() throws {
        let cat = TestCatalog(rows: 30_000, seed: 6)
        let path = tempPath("corrupt.shard")
        try ShardWriter.write(to: path, columns: TestCatalog.schema, data: cat.columns, indexColumn: "_healpix_29", order: 3, pixel: 0, rowGroupRows: 10_000)
        let good = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        let r = try ShardReader(path: path)
        let chunk = r.footer.rowGroups[1].chunks[4]

        // A bit flip inside row group 1's r_psfFlux chunk.
        var flipped = good
        flipped[Int(chunk.offset) + 17] ^= 0x10
        let p1 = tempPath("flipped.shard")
        try Data(flipped).write(to: URL(fileURLWithPath: p1))
        let r1 = try ShardReader(path: p1)
        #expect(throws: ShardError.corruptChunk(path: p1, rowGroup: 1, column: "r_psfFlux", reason: "checksum mismatch")) {
            _ = try r1.read(columns: ["r_psfFlux"])
        }
        _ = try r1.read(columns: ["objectId"])  // other columns still read

        // Truncated.
        let p2 = tempPath("truncated.shard")
        try Data(good.prefix(good.count / 2)).write(to: URL(fileURLWithPath: p2))
        #expect { _ = try ShardReader(path: p2) } throws: { e in
            guard case ShardError.corruptFile(let p, _) = e else { return false }
            return p == p2 && "\(e)".contains(p2)
        }

        // A flipped footer byte.
        var badFooter = good
        badFooter[good.count - 40] ^= 0x01
        let p3 = tempPath("footer.shard")
        try Data(badFooter).write(to: URL(fileURLWithPath: p3))
        #expect { _ = try ShardReader(path: p3) } throws: { e in
            if case ShardError.corruptFile = e { return true } else { return false }
        }

        // Footers planted with a matching checksum: fields the readers index by are checked.
        let footerLength = Int(good[(good.count - 24)..<(good.count - 16)].enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) })
        func planted(_ change: (inout Tessera_V1_ShardFooter) -> Void) throws -> String {
            var f = r.footer
            change(&f)
            let bytes: [UInt8] = try f.serializedBytes()
            var file = Array(good.prefix(good.count - 24 - footerLength)) + bytes
            withUnsafeBytes(of: UInt64(bytes.count).littleEndian) { file.append(contentsOf: $0) }
            withUnsafeBytes(of: XXHash64.hash(bytes).littleEndian) { file.append(contentsOf: $0) }
            file += ShardWriter.magic
            let p = tempPath("planted.shard")
            try Data(file).write(to: URL(fileURLWithPath: p))
            do {
                _ = try ShardReader(path: p)
                return "opened"
            } catch {
                return "\(error)"
            }
        }
        #expect(try planted { _ in } == "opened")
        #expect(try planted { $0.marginFirstGroup = 99 }.contains("the margin starts at row group 99 of 3"))
        #expect(try planted { $0.columns[2].type = .UNRECOGNIZED(9) }.contains("has type 9, which this build does not know"))

        // Not a shard file at all; a missing file.
        let p4 = tempPath("text.shard")
        try Data(String(repeating: "hello, world\n", count: 10).utf8).write(to: URL(fileURLWithPath: p4))
        #expect(throws: ShardError.self) { _ = try ShardReader(path: p4) }
        #expect { _ = try ShardReader(path: tempPath("missing.shard")) } throws: { e in
            if case ShardError.io(_, "open", _) = e { return true } else { return false }
        }
        #expect(throws: ShardError.self) { _ = try r.read(columns: ["r_psfFlx"]) }
    }

    @Test func badInputIsRefusedAndNothingIsWritten() throws {
        let cat = TestCatalog(rows: 10, seed: 7)
        let path = tempPath("refused.shard")
        var cols = cat.columns
        cols[4] = .float64(Array(repeating: 1, count: 10))
        #expect(throws: ShardError.self) {
            try ShardWriter.write(to: path, columns: TestCatalog.schema, data: cols, indexColumn: "_healpix_29", order: 3, pixel: 0)
        }
        #expect(throws: ShardError.self) {
            try ShardWriter.write(to: path, columns: TestCatalog.schema, data: cat.columns, indexColumn: "coord_ra", order: 3, pixel: 0)
        }
        #expect(!FileManager.default.fileExists(atPath: path))
        #expect(throws: ShardError.self) {
            try ShardWriter.write(to: "/nonexistent-folder/x.shard", columns: TestCatalog.schema, data: cat.columns, indexColumn: "_healpix_29", order: 3, pixel: 0)
        }
    }
}

@Suite struct SkyPartitionerTests {
    @Test func shardsTileTheRowsAndRespectTheLimit() {
        var cat = TestCatalog(rows: 50_000, seed: 11)
        // A dense clump, so that the order adapts.
        for i in 0..<20_000 {
            let r = 60 + 0.05 * sin(Double(i)), d = -35 + 0.05 * cos(Double(i) * 1.7)
            cat.ra.append(r); cat.dec.append(d); cat.index.append(HEALPix.spatialIndex(ra: r, dec: d))
        }
        let order = cat.index.indices.sorted { cat.index[$0] < cat.index[$1] }
        let sorted = order.map { cat.index[$0] }
        let shards = SkyPartitioner.partition(sortedIndex: sorted, maxRows: 5_000)
        #expect(shards.first?.rows.lowerBound == 0)
        #expect(shards.last?.rows.upperBound == sorted.count)
        for (a, b) in zip(shards, shards.dropFirst()) { #expect(a.rows.upperBound == b.rows.lowerBound) }
        for s in shards {
            #expect(s.rows.count <= 5_000)
            // Every row's index lies in its shard's pixel.
            #expect(sorted[s.rows].allSatisfy { s.indexRange.contains($0) })
        }
        // Orders adapt: the clump gets finer shards than the field.
        #expect(Set(shards.map(\.order)).count > 1)
    }

    /// Counts per pixel, added file by file in any order, cut the sky exactly as the sorted index
    /// does when shards stop at the histogram's order; a pixel over the limit at that order stays whole.
    @Test func aHistogramCutsTheSameShardsAsTheSortedIndex() {
        var cat = TestCatalog(rows: 40_000, seed: 12)
        for i in 0..<15_000 {
            let r = 60 + 0.02 * sin(Double(i)), d = -35 + 0.02 * cos(Double(i) * 1.7)
            cat.ra.append(r); cat.dec.append(d); cat.index.append(HEALPix.spatialIndex(ra: r, dec: d))
        }
        let sorted = cat.index.sorted()
        for order in [8, 11, 29] {
            var h = SkyHistogram(order: order)
            // Three "files", unsorted.
            for part in [Array(cat.index[0..<7_000]), Array(cat.index[7_000..<31_000]), Array(cat.index[31_000...])] { h.add(indexes: part.reversed()) }
            #expect(h.rows == sorted.count)
            let fromCounts = SkyPartitioner.partition(h, maxRows: 3_000)
            #expect(fromCounts == SkyPartitioner.partition(sortedIndex: sorted, maxRows: 3_000, maxOrder: min(order, 20)), "order \(order)")
            #expect(fromCounts.allSatisfy { $0.order <= order })
            if order == 8 { #expect(fromCounts.contains { $0.rows.count > 3_000 }) }  // the clump's pixel stays whole
        }
    }

    /// Brute force over all row–shard pairs, with the distance to a shard taken from a dense
    /// boundary sampling: every row within the radius of another shard is in that shard's margin.
    @Test func marginsHoldEveryRowWithinTheRadius() {
        let cat = TestCatalog(rows: 4_000, seed: 12)
        let order = cat.index.indices.sorted { cat.index[$0] < cat.index[$1] }
        let ra = order.map { cat.ra[$0] }, dec = order.map { cat.dec[$0] }
        var shards = SkyPartitioner.partition(sortedIndex: order.map { cat.index[$0] }, maxRows: 300)
        let radius = 600.0 / 3600 * .pi / 180  // 10 arcmin, so that many rows qualify
        SkyPartitioner.addMargins(&shards, ra: ra, dec: dec, radius: radius)
        var expectedPairs = 0
        for (s, shard) in shards.enumerated() {
            let dense = HEALPix.boundaries(order: shard.order, pixel: shard.pixel, step: 500)
            let center = HEALPix.centerVector(order: shard.order, pixel: shard.pixel)
            let reach = HEALPix.maxPixelRadius(order: shard.order) + 2 * radius
            let margin = Set(shard.margin)
            for row in 0..<ra.count where !shard.rows.contains(row) {
                let v = Vec3(ra: ra[row], dec: dec[row])
                // Far from the pixel altogether: neither expected nor allowed in the margin.
                if center.angle(to: v) > reach {
                    #expect(!margin.contains(row))
                    continue
                }
                let d = dense.map { $0.angle(to: v) }.min()!
                if d <= radius * 0.999 {
                    expectedPairs += 1
                    #expect(margin.contains(row), "row \(row) is \(d / radius) radii from shard \(s) but not in its margin")
                }
                if margin.contains(row) { #expect(d <= radius * 1.13, "row \(row) in shard \(s)'s margin is \(d / radius) radii away") }
            }
        }
        #expect(expectedPairs > 50)
    }
}

@Test func radixOrderMatchesAStableComparisonSort() {
    var s: UInt64 = 9
    var keys: [Int64] = []
    for _ in 0..<50_000 {
        s = s &* 6_364_136_223_846_793_005 &+ 1
        // Many ties, and the full 62-bit range.
        keys.append(s % 3 == 0 ? Int64(s >> 40) : Int64(s >> 2))
    }
    let expected = keys.indices.sorted { keys[$0] < keys[$1] || (keys[$0] == keys[$1] && $0 < $1) }
    #expect(RadixSort.order(keys) == expected)
    #expect(RadixSort.order([]) == [])
    #expect(RadixSort.order([5]) == [0])
    #expect(RadixSort.order([0, 0, 0]) == [0, 1, 2])
}

@Test(.enabled(if: getuid() == 0, "mounting a tiny filesystem needs root"))
func aFullDiskIsReportedAndLeavesNoFile() throws {
    let dir = tempPath("fulldisk-\(UInt32.random(in: 0...UInt32.max))")
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    let mount = Process()
    mount.executableURL = URL(fileURLWithPath: "/bin/mount")
    mount.arguments = ["-t", "tmpfs", "-o", "size=64k", "tmpfs", dir]
    try mount.run()
    mount.waitUntilExit()
    try #require(mount.terminationStatus == 0)
    defer {
        let u = Process()
        u.executableURL = URL(fileURLWithPath: "/bin/umount")
        u.arguments = ["-l", dir]
        try? u.run()
        u.waitUntilExit()
    }
    let cat = TestCatalog(rows: 20_000, seed: 8)
    let path = dir + "/big.shard"
    #expect { try ShardWriter.write(to: path, columns: TestCatalog.schema, data: cat.columns, indexColumn: "_healpix_29", order: 3, pixel: 0) } throws: { e in
        guard case ShardError.io(_, let op, let code) = e else { return false }
        return (op == "write" || op == "fsync") && code == ENOSPC && "\(e)".contains("No space left on device")
    }
    #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty)
}
