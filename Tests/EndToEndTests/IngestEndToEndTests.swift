import Foundation
import SwiftProtobuf
import Testing
import TesseraClient
import TesseraCluster
import TesseraProtocol
import TesseraSecurity
import TesseraSky
import TesseraStorage
import TesseraSurvey
import TesseraTestKit

#if canImport(Glibc)
import Glibc
#endif

/// Ingest through real scheduler and worker processes, with a real SQLite registry and real
/// shard files on the workers' disks.
@Suite(.serialized)
struct IngestEndToEndTests {
    static let rows = 30_000

    /// Synthetic FITS input written once per test.
    func input() throws -> (dir: String, files: [String]) {
        let dir = temporaryFolder("ingest-input")
        let files = try SyntheticCatalog(seed: 5).writeFITS(rows: Self.rows, rowsPerFile: 12_000, to: dir)
        return (dir, files)
    }

    /// Every shard file of a dataset on every worker.
    func shardFiles(_ data: String, _ dataset: String) -> [String] {
        let e = FileManager.default.enumerator(atPath: data)
        var out: [String] = []
        while let rel = e?.nextObject() as? String {
            guard rel.hasSuffix(".shard"), rel.contains("catalogs/\(dataset)/") else { continue }
            out.append(data + "/" + rel)
        }
        return out.sorted()
    }

    @Test func ingestedRowsReadBackExactlyWithTwoReplicas() throws {
        let (_, files) = try input()
        let data = temporaryFolder("ingest-data")
        let cluster = try TestCluster.start(dataDirectory: data)
        defer { cluster.stop() }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        var o = IngestOptions(dataset: "object", files: files)
        o.maxRowsPerShard = 4_000
        o.spillDirectory = temporaryFolder("ingest-spill")
        let done = try CatalogIngest.run(o, connection: conn)
        #expect(done.rows == UInt64(Self.rows))
        // The rows spilled by shard between the passes are gone.
        #expect(try FileManager.default.contentsOfDirectory(atPath: o.spillDirectory!).isEmpty)
        let status = try conn.status()
        let ds = try #require(status.datasets.first { $0.name == "object" })
        #expect(ds.rows == UInt64(Self.rows))
        #expect(ds.shards == done.shards)
        #expect(ds.minReplicas == 2)

        // Every shard is on both workers, byte-identical, and together they hold every input row once.
        let paths = shardFiles(data, "object")
        #expect(paths.count == Int(done.shards) * 2)
        var byKey: [String: [String]] = [:]
        for p in paths { byKey[(p as NSString).lastPathComponent, default: []].append(p) }
        #expect(byKey.values.allSatisfy { $0.count == 2 })
        let catalog = SyntheticCatalog(seed: 5)
        let expected = catalog.rows(0, count: Self.rows)
        let names = SyntheticCatalog.schema.map(\.name)
        var got = names.map { name in ColumnData.empty(SyntheticCatalog.schema.first { $0.name == name }!.type) }
        for copies in byKey.values {
            let a = try ShardReader(path: copies[0]), b = try ShardReader(path: copies[1])
            #expect(a.footer == b.footer)
            let cols = try a.read(columns: names)
            for k in 0..<names.count { got[k].append(cols[k]) }
        }
        // Margins, streamed file by file, hold exactly the rows the in-memory partitioner puts
        // there for the whole catalog at once.
        guard case .float64(let ra) = expected[1], case .float64(let dec) = expected[2], case .int64(let ids) = expected[0] else {
            Issue.record("position columns"); return
        }
        let index = zip(ra, dec).map { HEALPix.spatialIndex(ra: $0, dec: $1) }
        let order = index.indices.sorted { index[$0] < index[$1] }
        var plans = SkyPartitioner.partition(sortedIndex: order.map { index[$0] }, maxRows: o.maxRowsPerShard)
        SkyPartitioner.addMargins(&plans, ra: order.map { ra[$0] }, dec: order.map { dec[$0] }, radius: o.marginArcsec / 3600 * .pi / 180)
        #expect(plans.count == byKey.count)
        var marginRows = 0
        for plan in plans {
            let copy = try #require(byKey[plan.name + ".shard"]?.first, "shard \(plan.name)")
            let r = try ShardReader(path: copy)
            guard case .int64(let got) = try r.read(columns: ["objectId"], rowGroups: Array(r.marginRowGroups))[0] else { continue }
            #expect(got.sorted() == plan.margin.map { ids[order[$0]] }.sorted(), "margin of \(plan.name)")
            marginRows += got.count
        }
        #expect(marginRows > 20)  // (87 with this catalog and a 10" margin)

        // Order aside: sort both sides by objectId (column 0) and compare every column.
        guard case .int64(let gotIDs) = got[0], case .int64(let expIDs) = expected[0] else { Issue.record("id column"); return }
        let gOrder = gotIDs.indices.sorted { gotIDs[$0] < gotIDs[$1] }
        let eOrder = expIDs.indices.sorted { expIDs[$0] < expIDs[$1] }
        for k in 0..<names.count {
            #expect(got[k].gathered(gOrder) == expected[k].gathered(eOrder), "column \(names[k])")
        }
    }

    /// The registry and the shards live in the data folder: a cluster started again on it serves
    /// the same datasets, with each shard's statistics and the workers recorded.
    @Test func aRestartedClusterFindsItsDatasets() throws {
        let (_, files) = try input()
        let data = temporaryFolder("ingest-restart")
        do {
            let cluster = try TestCluster.start(dataDirectory: data)
            defer { cluster.stop() }
            var o = IngestOptions(dataset: "object", files: files)
            o.maxRowsPerShard = 8_000
            try CatalogIngest.run(o, connection: try SchedulerConnection(endpoint: cluster.clientEndpoint))
        }
        let cluster = try TestCluster.start(dataDirectory: data)
        defer { cluster.stop() }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        let ds = try #require(try conn.status().datasets.first { $0.name == "object" })
        #expect(ds.rows == UInt64(Self.rows))
        #expect(ds.minReplicas == 2)
        #expect(ds.shardsWithoutLiveReplica == 0)
        let registry = try Registry(path: data + "/registry.sqlite")
        let d = try #require(try registry.dataset(named: "object"))
        for shard in try registry.shards(of: d) {
            let footer = try Tessera_V1_ShardFooter(serializedBytes: [UInt8](shard.statistics))
            #expect(footer.rows == UInt64(shard.rows))
            let raIndex = try #require(footer.columns.firstIndex { $0.name == "coord_ra" })
            #expect(footer.rowGroups.allSatisfy { $0.chunks[raIndex].min >= 49 && $0.chunks[raIndex].max <= 71 })
        }
        #expect(try registry.workers().map(\.name) == ["local-0", "local-1"])
    }

    @Test func existingNamesAreRefusedAndReplaceSwapsAtomically() throws {
        let (_, files) = try input()
        let data = temporaryFolder("ingest-replace")
        let cluster = try TestCluster.start(dataDirectory: data)
        defer { cluster.stop() }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        var o = IngestOptions(dataset: "object", files: [files[0]])
        o.replicas = 1
        try CatalogIngest.run(o, connection: conn)
        #expect(throws: ClientError.self) { try CatalogIngest.run(o, connection: conn) }
        #expect(try conn.status().datasets.first?.rows == 12_000)
        o.files = files
        o.replace = true
        try CatalogIngest.run(o, connection: conn)
        #expect(try conn.status().datasets.map(\.rows) == [UInt64(Self.rows)])
    }

    @Test func aWorkerDyingDuringIngestLeavesThePreviousState() throws {
        let (_, files) = try input()
        let data = temporaryFolder("ingest-kill-worker")
        let cluster = try TestCluster.start(workerTimeoutMs: 4000, dataDirectory: data)
        defer { cluster.stop() }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        var o = IngestOptions(dataset: "object", files: [files[0]])
        try CatalogIngest.run(o, connection: conn)
        // Killed before the scheduler can notice: it still plans copies on it.
        cluster.killWorker(1)
        o.files = files
        o.replace = true
        o.storeTimeout = 2
        #expect { try CatalogIngest.run(o, connection: conn) } throws: { e in
            "\(e)".contains("nothing was committed") && "\(e)".contains("local-1")
        }
        let ds = try #require(try conn.status().datasets.first)
        #expect(ds.rows == 12_000)
    }

    @Test func aKilledIngestClientLeavesNoPartialDataset() throws {
        let (_, files) = try input()
        let data = temporaryFolder("ingest-kill-client")
        let cluster = try TestCluster.start(dataDirectory: data)
        defer { cluster.stop() }
        let tessera = Process()
        tessera.executableURL = URL(fileURLWithPath: (cluster.scheduler.executableURL!.path as NSString).deletingLastPathComponent + "/tessera")
        // Its spill folder is the test's: a killed client cannot remove it.
        tessera.arguments = ["ingest", "object"] + files + ["--scheduler", cluster.clientEndpoint, "--max-rows-per-shard", "500",
                                                      "--spill-dir", temporaryFolder("ingest-kill-spill"),
                                                      "--key", try #require(cluster.keys).userKeyPath(LocalKeys.userName)]
        tessera.standardOutput = FileHandle.nullDevice
        tessera.standardError = FileHandle.nullDevice
        try tessera.run()
        usleep(700_000)
        kill(tessera.processIdentifier, SIGKILL)
        tessera.waitUntilExit()
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        // Killed mid-way (the usual case) nothing is visible; had it finished first, all of it is.
        let visible = try conn.status().datasets
        #expect(visible.isEmpty || visible.map(\.rows) == [UInt64(Self.rows)], "partial dataset: \(visible)")
    }

    /// A worker whose disk fills up fails the ingest with the system's reason; the dataset that
    /// was there stays, and no partial shard file is left under its final name.
    @Test(.enabled(if: getuid() == 0, "mounting a tiny filesystem needs root"))
    func aFullDiskFailsTheIngestAndKeepsThePreviousState() throws {
        let (_, files) = try input()
        let data = temporaryFolder("ingest-disk-full")
        let small = data + "/worker-1"
        #expect(mountTinyFilesystem(at: small, kilobytes: 512))
        defer { unmount(small) }
        let cluster = try TestCluster.start(dataDirectory: data)
        defer { cluster.stop() }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        var o = IngestOptions(dataset: "tiny", files: [files[0]])
        o.maxRowsPerShard = 100_000
        o.replicas = 2
        // 12,000 rows fit in 512 kB? No: about 700 kB per copy.
        #expect { try CatalogIngest.run(o, connection: conn) } throws: { e in
            "\(e)".contains("No space left on device") && "\(e)".contains("nothing was committed")
        }
        #expect(try conn.status().datasets.isEmpty)
        let leftovers = (FileManager.default.enumerator(atPath: small)?.allObjects as? [String] ?? []).filter { $0.hasSuffix(".shard") }
        #expect(leftovers.isEmpty)

        // A spill folder too small for the input is refused before any file is read twice.
        let spill = temporaryFolder("ingest-spill-full")
        #expect(mountTinyFilesystem(at: spill, kilobytes: 512))
        defer { unmount(spill) }
        o.spillDirectory = spill
        o.replicas = 1
        #expect { try CatalogIngest.run(o, connection: conn) } throws: { e in
            "\(e)".contains("the spill folder \(spill)") && "\(e)".contains("--spill-dir") && "\(e)".contains("nothing was committed")
        }
        #expect(try conn.status().datasets.isEmpty)
        #expect(try FileManager.default.contentsOfDirectory(atPath: spill).isEmpty)
    }

    /// A FITS table written by astropy: string and array columns are skipped with a warning,
    /// integer nulls arrive as NaN, and a missing coordinate column is named.
    @Test func astropyTablesIngestWithWarningsForWhatIsSkipped() throws {
        let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../TesseraStorageTests/Fixtures/astropy_table.fits").standardized.path
        let data = temporaryFolder("ingest-astropy")
        let cluster = try TestCluster.start(dataDirectory: data)
        defer { cluster.stop() }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        var o = IngestOptions(dataset: "fixture", files: [fixture])
        o.decColumn = "declination"
        #expect { try CatalogIngest.run(o, connection: conn) } throws: { e in
            "\(e)".contains("declination") && "\(e)".contains("--dec") && "\(e)".contains("astropy_table.fits")
        }
        o.decColumn = "coord_dec"
        o.replicas = 1
        var lines: [String] = []
        let done = try CatalogIngest.run(o, connection: conn) { lines.append($0) }
        #expect(done.rows == 1000)
        #expect(lines.contains { $0.contains("skipping column `name`") && $0.contains("string") })
        #expect(lines.contains { $0.contains("skipping column `shape`") && $0.contains("array") })
        let files = shardFiles(data, "fixture")
        let reader = try ShardReader(path: try #require(files.first))
        #expect(reader.columnNames.contains("visits") && !reader.columnNames.contains("name"))
        let visits = try reader.read(columns: ["visits", "objectId"])
        guard case .float64(let v) = visits[0], case .int64(let ids) = visits[1] else { Issue.record("visits should be Float64"); return }
        for (x, id) in zip(v, ids) {
            let i = Int(id - (1 << 40))
            if i % 7 == 0 { #expect(x.isNaN) } else { #expect(x == Double(i % 50)) }
        }
    }

    @Test func badInputIsRefusedWithWhereItIs() throws {
        let data = temporaryFolder("ingest-bad")
        let cluster = try TestCluster.start(dataDirectory: data)
        defer { cluster.stop() }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        let dir = temporaryFolder("ingest-bad-input")
        func csv(_ name: String, _ text: String) throws -> String {
            let p = dir + "/" + name
            try Data(text.utf8).write(to: URL(fileURLWithPath: p))
            return p
        }
        let noDec = try csv("nodec.csv", "id,coord_ra,declination\n1,10,5\n")
        #expect { try CatalogIngest.run(IngestOptions(dataset: "x", files: [noDec]), connection: conn) } throws: { e in
            "\(e)".contains("coord_dec") && "\(e)".contains("--dec")
        }
        let nanDec = try csv("nandec.csv", "id,coord_ra,coord_dec\n1,10,5\n2,11,\n")
        #expect { try CatalogIngest.run(IngestOptions(dataset: "x", files: [nanDec]), connection: conn) } throws: { e in
            "\(e)".contains("row 2") && "\(e)".contains("nandec.csv")
        }
        let farDec = try csv("fardec.csv", "id,coord_ra,coord_dec\n1,10,95\n")
        #expect { try CatalogIngest.run(IngestOptions(dataset: "x", files: [farDec]), connection: conn) } throws: { e in
            "\(e)".contains("row 1") && "\(e)".contains("95")
        }
        let ragged = try csv("ragged.csv", "id,coord_ra,coord_dec\n1,10,5\n2,11\n")
        #expect { try CatalogIngest.run(IngestOptions(dataset: "x", files: [ragged]), connection: conn) } throws: { e in
            "\(e)".contains("line 3")
        }
        // Files disagreeing in column names are refused before anything is stored.
        let a = try csv("a.csv", "id,coord_ra,coord_dec,flux\n1,10,5,1\n")
        let b = try csv("b.csv", "id,coord_ra,coord_dec,flux2\n2,10,5,1\n")
        #expect { try CatalogIngest.run(IngestOptions(dataset: "x", files: [a, b]), connection: conn) } throws: { e in
            "\(e)".contains("b.csv") && "\(e)".contains("flux2")
        }
        let empty = try csv("empty.csv", "")
        #expect(throws: (any Error).self) { try CatalogIngest.run(IngestOptions(dataset: "x", files: [empty]), connection: conn) }
        #expect(try conn.status().datasets.isEmpty)
        // A good CSV still goes in.
        let good = try csv("good.csv", "id,coord_ra,coord_dec,flux\n1,10,5,1.5\n2,11,6,\n3,350,-89.9,2\n")
        var o = IngestOptions(dataset: "small", files: [good])
        o.replicas = 1
        let done = try CatalogIngest.run(o, connection: conn)
        #expect(done.rows == 3)
        // An integer column that a later file has gaps in becomes Float64 for every file's rows,
        // through the spill by shard.
        let ints = try csv("ints.csv", "id,coord_ra,coord_dec,band\n1,10,5,3\n2,200,-40,4\n")
        let gaps = try csv("gaps.csv", "id,coord_ra,coord_dec,band\n3,10.001,5,\n4,200.001,-40,6\n")
        var m = IngestOptions(dataset: "mixed", files: [ints, gaps])
        m.replicas = 1
        m.maxRowsPerShard = 2
        #expect(try CatalogIngest.run(m, connection: conn).rows == 4)
        var bands: [Int64: Double] = [:]
        for path in shardFiles(data, "mixed") {
            let r = try ShardReader(path: path)
            let cols = try r.read(columns: ["id", "band"])
            guard case .int64(let id) = cols[0], case .float64(let band) = cols[1] else { Issue.record("types \(cols.map(\.type))"); continue }
            for (i, v) in zip(id, band) { bands[i] = v }
        }
        #expect(bands.count == 4 && bands[1] == 3 && bands[2] == 4 && bands[3]?.isNaN == true && bands[4] == 6)
    }
}
