import Foundation
import Testing
import TesseraClient
import TesseraCluster
import TesseraCompute
import TesseraProtocol
import TesseraStorage
import TesseraSurvey
import TesseraTestKit

/// Catalog queries run where the shards are, checked against brute force over the same rows.
@Suite(.serialized)
struct CatalogQueryEndToEndTests {
    static let rows = 40_000

    func query(_ conn: SchedulerConnection, filter: String = "", cone: (Double, Double, Double)? = nil,
               moments: String? = nil) throws -> JobOutcome {
        let q = CatalogQuery(dataset: "object", filter: filter, cone: cone.map { (ra: $0.0, dec: $0.1, radius: $0.2) }, moments: moments)
        return try conn.run(.plan(q.plan))
    }

    @Test func countsAndMomentsMatchBruteForce() throws {
        let dir = temporaryFolder("query-input")
        let catalog = SyntheticCatalog(seed: 11)
        let files = try catalog.writeFITS(rows: Self.rows, rowsPerFile: 20_000, to: dir)
        let data = temporaryFolder("query-data")
        let cluster = try TestCluster.start(dataDirectory: data)
        defer { cluster.stop() }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        var o = IngestOptions(dataset: "object", files: files)
        o.maxRowsPerShard = 3_000
        let done = try CatalogIngest.run(o, connection: conn)
        #expect(done.shards > 5)

        // Brute force over the generated rows.
        let cols = catalog.rows(0, count: Self.rows)
        let names = SyntheticCatalog.schema.map(\.name)
        func col(_ n: String) -> [Double] {
            switch cols[names.firstIndex(of: n)!] {
            case .float64(let a): a
            case .float32(let a): a.map(Double.init)
            case .int32(let a): a.map(Double.init)
            case .int64(let a): a.map(Double.init)
            case .bool(let a): a.map { $0 ? 1 : 0 }
            default: []
            }
        }
        let ra = col("coord_ra"), dec = col("coord_dec"), r = col("r_psfFlux"), ext = col("refExtendedness"), primary = col("detect_isPrimary")
        func mag(_ f: Double) -> Double { f > 0 ? -2.5 * log10(f) + 31.4 : .nan }

        let all = try query(conn)
        #expect(all.values.values.first == .int64(Int64(Self.rows)))

        let points = try query(conn, filter: "detect_isPrimary and refExtendedness == 0 and mag(r_psfFlux) < 24")
        let expectedPoints = (0..<Self.rows).filter { primary[$0] == 1 && ext[$0] == 0 && mag(r[$0]) < 24 }.count
        #expect(points.values.values.first == .int64(Int64(expectedPoints)))
        #expect(points.finished.state == .jobDone)

        // A cone: haversine brute force.
        let (cra, cdec, crad) = (60.0, -35.0, 2.0)
        func sep(_ i: Int) -> Double {
            let d2r = Double.pi / 180
            let h = pow(sin((dec[i] - cdec) * d2r / 2), 2) + cos(dec[i] * d2r) * cos(cdec * d2r) * pow(sin((ra[i] - cra) * d2r / 2), 2)
            return 2 * asin(min(1, sqrt(h))) / d2r
        }
        let inCone = (0..<Self.rows).filter { sep($0) <= crad }
        let coneCount = try query(conn, cone: (cra, cdec, crad))
        #expect(coneCount.values.values.first == .int64(Int64(inCone.count)))
        #expect(inCone.count > 100)

        // Moments of galaxy magnitudes.
        let m = try query(conn, filter: "refExtendedness == 1", moments: "mag(r_psfFlux)")
        guard case .moments(let got)? = m.values.values.first else { Issue.record("expected moments, got \(m.values)"); return }
        let mags = (0..<Self.rows).filter { ext[$0] == 1 }.map { mag(r[$0]) }.filter { !$0.isNaN }
        let mean = mags.reduce(0, +) / Double(mags.count)
        let variance = mags.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(mags.count - 1)
        #expect(got.count == Double(mags.count))
        #expect(abs(got.mean - mean) <= 1e-9 * abs(mean))
        #expect(abs(got.variance - variance) <= 1e-9 * variance)
        #expect(got.min == mags.min() && got.max == mags.max())

        // An empty region answers zero; a cone far from the field touches no shard.
        let empty = try query(conn, cone: (200, 40, 0.5))
        #expect(empty.values.values.first == .int64(0))
    }

    @Test func badQueriesAreRefusedClearly() throws {
        let dir = temporaryFolder("query-bad-input")
        let files = try SyntheticCatalog(seed: 2).writeFITS(rows: 2_000, to: dir)
        let data = temporaryFolder("query-bad-data")
        let cluster = try TestCluster.start(dataDirectory: data)
        defer { cluster.stop() }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        var o = IngestOptions(dataset: "object", files: files)
        o.replicas = 1
        try CatalogIngest.run(o, connection: conn)
        func refusal(_ body: () throws -> JobOutcome) -> String {
            do { _ = try body(); return "accepted" } catch { return "\(error)" }
        }
        let typo = refusal { try query(conn, filter: "mag(r_psfFlx) < 24") }
        #expect(typo.contains("unknown column `r_psfFlx` — did you mean `r_psfFlux`?"))
        #expect(refusal { try query(conn, filter: "r_psfFlux + 1") }.contains("a boolean is needed"))
        #expect(refusal { try query(conn, filter: "frobnicate(r_psfFlux) > 1") }.contains("unknown function `frobnicate`"))
        #expect(refusal { try conn.run(.plan(CatalogQuery(dataset: "nope").plan)) }.contains("no dataset named `nope`"))
        // The cluster keeps serving.
        #expect(try query(conn).values.values.first == .int64(2_000))
    }
}
