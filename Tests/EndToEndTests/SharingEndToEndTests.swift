import Foundation
import Synchronization
import Testing
import TesseraClient
import TesseraCluster
import TesseraCompute
import TesseraProtocol
import TesseraSky
import TesseraStorage
import TesseraSurvey
import TesseraTestKit

/// Admission control on real daemons: the scheduler's estimate of what a question reads,
/// against what the workers then read, and the interactive budget.
@Suite(.serialized)
struct SharingEndToEndTests {
    @Test func estimatesMatchWhatTheScanReadsAndTheInteractiveBudgetHolds() throws {
        let rows = 40_000
        let catalog = SyntheticCatalog(seed: 5)
        let files = try catalog.writeFITS(rows: rows, rowsPerFile: 20_000, to: temporaryFolder("sharing-input"))
        let data = catalog.rows(0, count: rows)
        let ra = data[SyntheticCatalog.schema.firstIndex { $0.name == "coord_ra" }!].doubles
        let dec = data[SyntheticCatalog.schema.firstIndex { $0.name == "coord_dec" }!].doubles
        let cluster = try TestCluster.start(workers: 2, dataDirectory: temporaryFolder("sharing-data"),
                                            schedulerArguments: ["--interactive-max-rows", "10000"])
        defer { cluster.stop() }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        var o = IngestOptions(dataset: "object", files: files)
        o.maxRowsPerShard = 1_500
        o.replicas = 2
        _ = try CatalogIngest.run(o, connection: conn)

        let object = CatalogQuery(dataset: "object")
        let all = try conn.run(object.priority(.batch))
        let whole = try #require(conn.lastAccepted?.estimate)
        #expect(whole.rows == UInt64(rows))
        #expect(whole.shards == UInt64(all.result.shards))
        #expect(all.result.rowsScanned == rows)

        // Regions: the estimate takes each shard's rows in proportion to the part of its pixel the
        // region covers (at order 10, about 3.4′ cells), so it follows the rows truly inside.
        let box = try BoxRegion(raMin: 52, raMax: 58, decMin: -40, decMax: -36)
        let regions: [(String, CatalogQuery.Region, any SkyRegion)] = [
            ("cone 0.5°", .cone(ra: 60, dec: -35, radius: 0.5), ConeRegion(ra: 60, dec: -35, radius: 0.5)),
            ("cone 2°", .cone(ra: 57, dec: -31, radius: 2), ConeRegion(ra: 57, dec: -31, radius: 2)),
            ("cone 6°", .cone(ra: 60, dec: -35, radius: 6), ConeRegion(ra: 60, dec: -35, radius: 6)),
            ("box", .box(raMin: 52, raMax: 58, decMin: -40, decMax: -36), box),
        ]
        for (name, region, sky) in regions {
            let u = try conn.run(object.region(region).priority(.batch))
            let e = try #require(conn.lastAccepted?.estimate)
            let inside = (0..<rows).filter { sky.contains(ra: ra[$0], dec: dec[$0]) }.count
            #expect(u.result.rowsMatched == inside, "\(name)")
            #expect(e.shards == UInt64(u.result.shards), "\(name): the estimate counts the shards the scan read")
            // Never more than the shards read hold. Cells cut by the region's edge count whole,
            // so a small region is overestimated by its rim: a 0.5° cone by up to half (its rim of
            // 3.4′ cells is about a quarter of its area, and 80 rows vary by a tenth), larger
            // ones by less.
            #expect(e.rows <= UInt64(u.result.rowsScanned) + UInt64(e.shards), "\(name): estimate \(e.rows), rows read \(u.result.rowsScanned)")
            let ratio = Double(e.rows) / Double(max(1, inside))
            let most = name == "cone 0.5°" ? 1.6 : 1.25
            #expect(ratio > 0.8 && ratio < most, "\(name): estimate \(e.rows) rows, \(inside) inside, \(u.result.rowsScanned) read")
            print("admission estimate, \(name): \(e.rows) rows estimated, \(inside) inside, \(u.result.rowsScanned) read, \(e.shards) shards")
        }

        // The budget: an interactive question over it is refused with the estimate and what to do;
        // the same as batch runs; a small interactive cone runs.
        #expect {
            try conn.run(object.filter("mag(r_psfFlux) < 24").priority(.interactive))
        } throws: { error in
            guard case ClientError.rejected(let code, let message) = error else { return false }
            return code == .errorOverBudget && message.contains("expected to read 40000 rows")
                && message.contains("over the interactive budget of 10000 rows") && message.contains("narrow the region")
        }
        // (Zone maps may skip row groups with no flux bright enough: the flux bound prunes.)
        let batch = try conn.run(object.filter("mag(r_psfFlux) < 24").priority(.batch)).result
        #expect(batch.rowsMatched > 0 && batch.rowsScanned <= rows)
        let cone = try conn.run(object.region(.cone(ra: 60, dec: -35, radius: 0.5)).priority(.interactive))
        #expect(cone.result.rowsMatched > 0)
        #expect(conn.lastAccepted?.priority == .priorityInteractive)

        // A plan asking for more rows than one question may return is refused up front.
        #expect {
            try conn.run(object.select(["objectId"]).maxRows(200_000_000))
        } throws: { error in
            guard case ClientError.rejected(let code, let message) = error else { return false }
            return code == .errorOverBudget && message.contains("at most 100000000 rows")
        }
    }

    /// Shared scans on real daemons: many different questions at once over one catalog are
    /// answered exactly as each is alone, and the workers answered them in shared passes (the
    /// scheduler sends other jobs' scans of a shard along with one; the worker reads the shard
    /// once for all of them).
    /// A table's rows, each as its values' exact text, sorted.
    static func rows(_ t: ResultTable) -> [String] {
        let columns: [[String]] = t.columns.map { c in
            switch c {
            case .doubles(let a): a.map { "\($0.bitPattern)" }
            case .floats(let a): a.map { "\($0.bitPattern)" }
            case .int64s(let a): a.map { "\($0)" }
            case .bools(let a): a.map { "\($0)" }
            }
        }
        let n = columns.first?.count ?? 0
        return (0..<n).map { i in t.names.joined(separator: ",") + ":" + columns.map { $0[i] }.joined(separator: ",") }.sorted()
    }

    @Test func concurrentScansShareShardPassesAndAnswerAsAlone() throws {
        let rows = 60_000
        let catalog = SyntheticCatalog(seed: 11)
        let files = try catalog.writeFITS(rows: rows, rowsPerFile: 30_000, to: temporaryFolder("shared-scan-input"))
        let cluster = try TestCluster.start(workers: 2, threads: 2, dataDirectory: temporaryFolder("shared-scan-data"))
        defer { cluster.stop() }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        var o = IngestOptions(dataset: "object", files: files)
        o.maxRowsPerShard = 3_000
        _ = try CatalogIngest.run(o, connection: conn)

        let object = CatalogQuery(dataset: "object")
        let questions: [CatalogQuery] = [
            object.filter("refExtendedness == 0 and mag(r_psfFlux) < 22"),
            object.filter("mag(g_psfFlux) < 23").aggregate(.mean("mag(g_psfFlux) - mag(r_psfFlux)"), .std("r_psfFlux"), .sum("g_psfFlux")),
            object.filter("refExtendedness == 1").histogram("mag(r_psfFlux)", bins: 40, range: 16...25),
            object.groupBy("cell").aggregate(.count(), .mean("mag(r_psfFlux)"), .median("coord_dec")),
            object.skyMap(order: 6, mean: "mag(r_psfFlux)"),
            object.select(["objectId", "mag(r_psfFlux)"]).sorted(by: "mag(r_psfFlux)").limit(20),
            object.filter("coord_dec < -44").select(["objectId", "coord_ra", "r_psfFlux"]),
            object.region(.cone(ra: 60, dec: -35, radius: 2)).aggregate(.mean("r_psfFlux")),
            object.filter("detect_isPrimary").aggregate(.min("g_psfFlux"), .max("g_psfFlux"), .variance("mag(g_psfFlux)")),
            object.histogram2D(x: "mag(g_psfFlux) - mag(r_psfFlux)", bins: 20, range: -1...2, y: "mag(r_psfFlux)", bins: 16, range: 16...24),
            object.filter("mag(r_psfFlux) < 24.5").count(),
            object.sample(fraction: 0.01, seed: 4).select(["objectId"]),
        ].map { $0.priority(.batch) }
        let alone = try questions.map { try conn.run($0).result.table }
        // The lone runs' counts, once their last heartbeats are in.
        Thread.sleep(forTimeInterval: 0.5)
        let before = try conn.status().workers
        let (passesBefore, tasksBefore) = (before.reduce(0) { $0 + $1.scans.passes }, before.reduce(0) { $0 + $1.scans.passTasks })

        // All at once, each on a connection of its own, twice (the second round with the
        // scheduler's queues already warm).
        for round in 0..<2 {
            let results = Mutex<[Int: Result<ResultTable, any Error>]>([:])
            let go = DispatchSemaphore(value: 0)
            let finished = DispatchGroup()
            for (k, q) in questions.enumerated() {
                finished.enter()
                Thread {
                    let r = Result { () throws -> ResultTable in
                        let c = try SchedulerConnection(endpoint: cluster.clientEndpoint)
                        go.wait()
                        return try c.run(q, name: "shared \(k)").result.table
                    }
                    results.withLock { $0[k] = r }
                    finished.leave()
                }.start()
            }
            for _ in questions { go.signal() }
            finished.wait()
            for k in questions.indices {
                let got = try #require(results.withLock { $0[k] }).get()
                // A collect's rows come in the order shards answered: compared as sets of rows.
                #expect(Self.rows(got) == Self.rows(alone[k]), "round \(round), question \(k): answered differently in a shared pass")
            }
        }

        // The workers' own counts (from their heartbeats): passes answered several scans each.
        var scans = Tessera_V1_ScanStats()
        let deadline = Date().addingTimeInterval(5)
        repeat {
            Thread.sleep(forTimeInterval: 0.2)
            let ws = try conn.status().workers
            scans.passes = ws.reduce(0) { $0 + $1.scans.passes } - passesBefore
            scans.passTasks = ws.reduce(0) { $0 + $1.scans.passTasks } - tasksBefore
            scans.mostInOnePass = ws.map(\.scans.mostInOnePass).max() ?? 0
        } while scans.passTasks < UInt64(2 * questions.count * 20) && Date() < deadline
        print("shared scans, both rounds: \(scans.passTasks) scan tasks in \(scans.passes) passes, at most \(scans.mostInOnePass) in one")
        #expect(scans.passTasks > scans.passes * 2, "scans were answered mostly alone: \(scans.passTasks) tasks in \(scans.passes) passes")
        #expect(scans.mostInOnePass >= UInt32(questions.count / 2))
    }
}
