import ArgumentParser
import Dispatch
import Foundation
import TesseraClient
import TesseraCompute
import TesseraProtocol
import TesseraSky
import TesseraStorage
import TesseraSurvey

/// `tessera bench scan`: how fast shard files decode on one core, beside the machine's ceilings.
struct ScanBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scan",
        abstract: "Decode throughput of shard files (1, 4 and all columns) on one core, beside memcpy and raw LZ4.")

    @Option(help: "Rows of synthetic catalog to write as shards (once) and scan.")
    var rows = 4_000_000

    @Option(help: "Where the shard files are kept between runs.")
    var dir = FileManager.default.temporaryDirectory.appendingPathComponent("tessera-bench-scan").path

    @Option(help: "Timed passes over the data per workload (the best is reported).")
    var passes = 5

    @Option(help: "Only these workloads (repeatable): files (the ceilings, decoding and column scans), or a question: count_filter, groupby_cell, cmd_hist.")
    var only: [String] = []

    @Option(help: "The questions read through a decoded-column cache of this many MiB (0: none; passes after the first then hit it).")
    var columnCacheMb = 0

    func wants(_ w: String) -> Bool { only.isEmpty || only.contains(w) }

    func run() throws {
        let paths = try prepare()
        let readers = try paths.map { try ShardReader(path: $0) }
        let schema = SyntheticCatalog.schema
        // Warm the page cache and the code.
        for r in readers { _ = try r.read(columns: r.columnNames) }
        let total = readers.reduce(0) { $0 + Int($1.footer.rows) }

        func best(_ body: () throws -> Int) rethrows -> (seconds: Double, bytes: Int) {
            var bestT = Double.infinity
            var bytes = 0
            for _ in 0..<passes {
                let t = DispatchTime.now().uptimeNanoseconds
                bytes = try body()
                bestT = min(bestT, Double(DispatchTime.now().uptimeNanoseconds - t) / 1e9)
            }
            return (bestT, bytes)
        }
        func report(_ workload: String, _ r: (seconds: Double, bytes: Int), rows: Int?, extra: [(String, Any)] = []) {
            var f: [(String, Any)] = [("engine", "tessera"), ("workload", workload)]
            if let rows { f += [("rows", rows), ("mrows_per_s", Double(rows) / r.seconds / 1e6)] }
            f += [("bytes", r.bytes), ("seconds", r.seconds), ("gb_per_s_per_core", Double(r.bytes) / r.seconds / 1e9)]
            print(jsonLine(f + extra))
            fflush(nil)
        }

        // The anchor's questions over the same shards on this one core, as a worker's scan runs
        // them: for instructions per row, run one under `perf stat` with --passes 1 and N.
        let cache = columnCacheMb > 0 ? DecodedColumnCache(capacityBytes: columnCacheMb << 20) : nil
        let cachedReaders = try paths.map { try ShardReader(path: $0, cache: cache) }
        for (name, q) in CatalogBench.anchorQuestions(CatalogQuery(dataset: "object")).sorted(by: { $0.key < $1.key }) where wants(name) {
            let checked = try CheckedCatalogQuery(q.plan, columns: readers[0].footer.columns, raColumn: "coord_ra", decColumn: "coord_dec")
            var matched = 0
            report(name, try best {
                matched = 0
                for r in cachedReaders { matched += Int(try CatalogScan.scan(checked, reader: r, raColumn: "coord_ra", decColumn: "coord_dec").rowsMatched) }
                return 0
            }, rows: total, extra: [("rows_matched", matched), ("column_cache_mb", columnCacheMb)])
        }
        guard wants("files") else { return }

        // Ceilings: memcpy of a buffer the size of the 4-column scan, and raw LZ4 decompression.
        let fourBytes = total * 4 * 4
        let src = [UInt8](repeating: 7, count: fourBytes)
        var dst = [UInt8](repeating: 0, count: fourBytes)
        report("memcpy", best {
            src.withUnsafeBytes { s in dst.withUnsafeMutableBytes { d in d.copyMemory(from: s) } }
            return fourBytes
        }, rows: nil)
        // LZ4 on chunk-sized blocks (64k sequential ids, as an objectId chunk), as a scan meets them.
        let blocks = (0..<64).map { b in
            (0..<65_536).map { Int64(b * 65_536 + $0) + 1 << 32 }.withUnsafeBytes { LZ4.compress($0) }
        }
        let blockBytes = 65_536 * 8
        report("lz4_decompress", try best {
            var n = 0
            for blk in blocks { n += try blk.withUnsafeBytes { try LZ4.decompress($0, rawLength: blockBytes) }.count }
            return n
        }, rows: nil, extra: [("ratio", Double(blockBytes * blocks.count) / Double(blocks.reduce(0) { $0 + $1.count }))])

        // The two kinds of column the dictionary and runs encodings are for, each decoded both
        // ways: a 0/1 Float32 flag at random (refExtendedness) and an Int32 key constant over
        // runs of ~2,000 rows (a sky cell along the spatial order).
        var seed: UInt64 = 11
        let flag = (0..<65_536).map { _ -> Float in
            seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Float(seed >> 63)
        }
        let cell = (0..<65_536).map { Int32($0 / 2_000) }
        for (name, bytes) in [("flag", flag.withUnsafeBytes { Array($0) }), ("cell", cell.withUnsafeBytes { Array($0) })] {
            let lz4 = bytes.withUnsafeBytes { LZ4.compress($0) }
            guard let encoded = bytes.withUnsafeBytes({ ChunkEncoding.encode($0, width: 4, limit: bytes.count) }) else { continue }
            var out = [UInt8](repeating: 0, count: bytes.count)
            let reps = 64
            report("decode_\(name)_lz4", try best {
                for _ in 0..<reps { _ = try lz4.withUnsafeBytes { try LZ4.decompress($0, rawLength: bytes.count) } }
                return reps * bytes.count
            }, rows: reps * 65_536, extra: [("stored_bytes", lz4.count)])
            report("decode_\(name)_\(encoded.codec == .chunkRuns ? "runs" : "dictionary")", try best {
                for _ in 0..<reps {
                    try encoded.bytes.withUnsafeBytes { e in
                        try out.withUnsafeMutableBytes { try ChunkEncoding.decode(encoded.codec, e, width: 4, rows: 65_536, into: $0) }
                    }
                }
                return reps * bytes.count
            }, rows: reps * 65_536, extra: [("stored_bytes", encoded.bytes.count)])
        }

        // Decoding, checksums verified, into typed arrays, row group by row group as a scan
        // operator consumes them (a batch of ~64k rows at a time, never the whole column).
        func scan(_ cols: [String]) throws -> Int {
            var bytes = 0
            for r in readers {
                let idx = try cols.map { (n) throws(ShardError) in try r.columnIndex(n) }
                for g in r.ownRowGroups {
                    for c in idx {
                        let col = try r.read(column: c, rowGroup: g)
                        bytes += col.count * ColumnData.width(col.type)
                    }
                }
            }
            return bytes
        }
        report("scan_1_column", try best { try scan(["coord_ra"]) }, rows: total, extra: [("columns", 1)])
        let four = ["g_psfFlux", "r_psfFlux", "i_psfFlux", "z_psfFlux"]
        report("scan_4_float_columns", try best { try scan(four) }, rows: total, extra: [("columns", 4)])
        report("scan_all_columns", try best { try scan(schema.map(\.name)) }, rows: total, extra: [("columns", schema.count)])
    }

    /// Writes the synthetic catalog as shard files (1M rows each) unless they are there already.
    func prepare() throws -> [String] {
        let folder = (dir as NSString).appendingPathComponent("rows\(rows)")
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let perShard = 1_000_000
        var paths: [String] = []
        let catalog = SyntheticCatalog(seed: 42)
        var schema = SyntheticCatalog.schema
        schema.append(ColumnSpec("_healpix_29", .columnInt64))
        var first = 0
        while first < rows {
            let n = min(perShard, rows - first)
            let path = (folder as NSString).appendingPathComponent("shard\(paths.count).shard")
            if !FileManager.default.fileExists(atPath: path) {
                var cols = catalog.rows(first, count: n)
                guard case .float64(let ra) = cols[1], case .float64(let dec) = cols[2] else { break }
                cols.append(.int64(zip(ra, dec).map { HEALPix.spatialIndex(ra: $0, dec: $1) }))
                try ShardWriter.write(to: path, columns: schema, data: cols, indexColumn: "_healpix_29", order: 0, pixel: 0)
            }
            paths.append(path)
            first += n
        }
        return paths
    }
}
