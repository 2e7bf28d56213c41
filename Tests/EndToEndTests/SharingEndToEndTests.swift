import Foundation
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
        #expect(try conn.run(object.filter("mag(r_psfFlux) < 24").priority(.batch)).result.rowsScanned == rows)
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
}
