import Synchronization
import Testing
import TesseraProtocol
import TesseraStorage
@testable import TesseraCompute

/// Shared scans: questions answered by one pass over a shard, attached at its start or joining
/// at any row group, give byte for byte the partial each gets alone (the independent reference
/// here is the lone scan, itself checked against brute force in `CatalogEngineTests`).
@Suite("Shared shard passes", .serialized)
struct SharedShardPassTests {
    let cat = ShardedCatalog.shared

    /// One question of every kind: counts, grouped moments and sketches (Double and Int64
    /// keys), 1-D and 2-D histograms, sky maps with sums, a collect, a head, a top-k, a sample,
    /// a cone and a box.
    static let questions: [CatalogQueryPlan] = [
        plan { $0.filter = "detect_isPrimary and refExtendedness == 0 and mag(r_psfFlux) < 24" },
        plan {
            $0.filter = "refExtendedness == 1"
            $0.groupBy = "cell"
            $0.aggregates = [aggregate(.aggMean, "mag(r_psfFlux)"), aggregate(.aggStd, "mag(r_psfFlux)"), aggregate(.aggCount),
                             aggregate(.aggMin, "g_psfFlux"), aggregate(.aggSum, "mag(g_psfFlux) - mag(r_psfFlux)"),
                             aggregate(.aggQuantile, "mag(r_psfFlux)", q: 0.9)]
        },
        plan { $0.groupBy = "objectId"; $0.aggregates = [aggregate(.aggMean, "coord_dec"), aggregate(.aggVar, "r_psfFlux")] },
        plan { $0.filter = "mag(g_psfFlux) < 23"; $0.aggregates = [aggregate(.aggMean, "mag(g_psfFlux) - mag(r_psfFlux)"), aggregate(.aggSum, "r_psfFlux")] },
        plan {
            var h = Tessera_V1_HistogramSpec()
            (h.x, h.xBins, h.xMin, h.xMax) = ("mag(r_psfFlux)", 45, 16, 25)
            $0.filter = "refExtendedness == 1"
            $0.histogram = h
        },
        plan {
            var h = Tessera_V1_HistogramSpec()
            (h.x, h.xBins, h.xMin, h.xMax) = ("mag(g_psfFlux) - mag(r_psfFlux)", 30, -1, 2)
            (h.y, h.yBins, h.yMin, h.yMax) = ("mag(r_psfFlux)", 20, 16, 24)
            $0.histogram = h
        },
        // More bins than a row group has rows: its pieces keep their rows' bins.
        plan {
            var h = Tessera_V1_HistogramSpec()
            (h.x, h.xBins, h.xMin, h.xMax) = ("mag(g_psfFlux) - mag(r_psfFlux)", 400, -1, 2)
            (h.y, h.yBins, h.yMin, h.yMax) = ("mag(r_psfFlux)", 300, 16, 24)
            $0.histogram = h
        },
        plan { var m = Tessera_V1_SkyMapSpec(); m.order = 9; m.expression = "mag(r_psfFlux)"; $0.skyMap = m },
        plan { $0.filter = "coord_dec < -44"; $0.rows.select = ["objectId", "coord_dec", "r_mag = mag(r_psfFlux)", "detect_isPrimary"] },
        plan { $0.filter = "coord_dec < -40"; $0.rows.select = ["objectId"]; $0.rows.limit = 40 },
        plan { $0.rows.select = ["objectId", "mag(r_psfFlux)"]; $0.rows.sortBy = "mag(r_psfFlux)"; $0.rows.limit = 25 },
        plan { $0.rows.select = ["objectId"]; $0.rows.sampleFraction = 0.05; $0.rows.sampleSeed = 3 },
        plan { var s = Tessera_V1_ConeSpec(); (s.ra, s.dec, s.radius) = (60, -35, 1.5); $0.cone = s; $0.aggregates = [aggregate(.aggMean, "r_psfFlux")] },
        plan { var b = Tessera_V1_BoxSpec(); (b.raMin, b.raMax, b.decMin, b.decMax) = (55, 62, -38, -33); $0.box = b; $0.rows.select = ["objectId"] },
    ]

    /// Shards with many row groups each, so that there are many places to join.
    func shards() throws -> [ShardReader] { try cat.shards(maxRows: 12_000, groupRows: 300) }

    func solo(_ p: CatalogQueryPlan, _ reader: ShardReader) throws -> [UInt8] {
        let q = try CheckedCatalogQuery(p, columns: reader.footer.columns, raColumn: "coord_ra", decColumn: "coord_dec")
        return try CatalogScan.scanSerialized(q, reader: reader, raColumn: "coord_ra", decColumn: "coord_dec")
    }

    /// Answers by question number.
    final class Answers: Sendable {
        let got = Mutex<[Int: Result<[UInt8], CatalogQueryError>]>([:])
        func done(_ k: Int) -> SharedShardPass.Completion {
            { r, _ in self.got.withLock { $0[k] = r } }
        }
        func bytes(_ k: Int) throws -> [UInt8]? { try got.withLock { $0[k] }?.get() }
    }

    @Test func everyQuestionInOnePassIsAnsweredAsAlone() throws {
        let readers = try shards()
        #expect(readers.count >= 2)
        #expect(readers.map(\.ownRowGroups.count).max()! >= 10)
        for reader in readers {
            let pass = SharedShardPass(reader: reader, raColumn: "coord_ra", decColumn: "coord_dec")
            let answers = Answers()
            for (k, p) in Self.questions.enumerated() {
                let attached = pass.attach(p, done: answers.done(k))
                #expect(attached)
            }
            pass.run()
            #expect(pass.mostAtOnce == Self.questions.count)
            // `mag(r_psfFlux)` and the like were computed once for several questions.
            #expect(pass.sharedComputations > 0)
            for (k, p) in Self.questions.enumerated() {
                let want = try solo(p, reader)
                #expect(try answers.bytes(k) == want, "question \(k) on \(reader.path)")
            }
            // Ended: a late question starts a pass of its own.
            let late = pass.attach(Self.questions[0], done: answers.done(99))
            #expect(!late)
        }
    }

    /// Every question joins at every row group of a pass another question started, and gets
    /// the rest of the pass, then the part it missed: the same bytes as alone.
    @Test func questionsJoiningMidPassAreAnsweredAsAlone() throws {
        let reader = try shards().max { $0.ownRowGroups.count < $1.ownRowGroups.count }!
        let groups = reader.ownRowGroups.count
        #expect(groups >= 10)
        for (k, p) in Self.questions.enumerated() {
            let want = try solo(p, reader)
            // The first row groups, the last ones, and some between.
            let joins = Set([0, 1, 2, groups / 3, groups / 2, groups - 2, groups - 1] + (0..<4).map { _ in Int.random(in: 0..<groups) })
            for join in joins.sorted() {
                let pass = SharedShardPass(reader: reader, raColumn: "coord_ra", decColumn: "coord_dec")
                let answers = Answers()
                // The carrier: a count over every row group, which keeps the pass going past
                // the joiner's start.
                let carrier = pass.attach(plan { $0.aggregates = [aggregate(.aggCount)] }, done: answers.done(-1))
                #expect(carrier)
                for _ in 0..<join { #expect(pass.step()) }
                let joined = pass.attach(p, done: answers.done(k))
                #expect(joined)
                pass.run()
                #expect(pass.mostAtOnce == 2 || join == 0)
                #expect(try answers.bytes(k) == want, "question \(k) joining at row group \(join)")
            }
        }
    }

    /// A question the shard cannot answer fails alone; the others in the pass are answered.
    @Test func aBadQuestionFailsAloneAndCancelledOnesStop() throws {
        let reader = try shards()[0]
        let pass = SharedShardPass(reader: reader, raColumn: "coord_ra", decColumn: "coord_dec")
        let answers = Answers()
        let attached = [pass.attach(Self.questions[0], done: answers.done(0)),
                        pass.attach(plan { $0.filter = "no_such_column > 1" }, done: answers.done(1)),
                        pass.attach(Self.questions[1], isCancelled: { true }, done: answers.done(2))]
        #expect(attached == [true, true, true])
        pass.run()
        #expect(try answers.bytes(0) == solo(Self.questions[0], reader))
        let bad = answers.got.withLock { $0[1] }
        guard case .failure(let e)? = bad else { Issue.record("an unknown column must fail the question"); return }
        #expect(e.message.contains("no_such_column"))
        guard case .failure(let c)? = answers.got.withLock({ $0[2] }) else { Issue.record("a cancelled question must stop"); return }
        #expect(c.message == "cancelled" && c.retryable)
    }

    /// A row group with no row to count holds none of a histogram's bins (ten million of them
    /// are 80 MB a piece, and a question that joins a pass mid-way keeps its later pieces
    /// waiting); the answer still has every bin.
    @Test func aPieceWithNoRowsHoldsNoBins() throws {
        let reader = try shards()[0]
        let big = plan {
            $0.filter = "r_psfFlux * 0 > 1"   // no row, and no zone map rules a row group out
            var h = Tessera_V1_HistogramSpec()
            (h.x, h.xBins, h.xMin, h.xMax) = ("r_psfFlux", 10_000_000, 0, 1)
            $0.histogram = h
        }
        let q = try CheckedCatalogQuery(big, columns: reader.footer.columns, raColumn: "coord_ra", decColumn: "coord_dec")
        let scan = try ShardScanPlan(q, reader: reader, raColumn: "coord_ra", decColumn: "coord_dec")
        let g = try #require(scan.groups.first)
        let piece = try scan.scan(rowGroup: g) { (c) throws(ShardError) in try reader.read(column: c, rowGroup: g) }
        #expect(piece.histogram.isEmpty)
        var whole = scan.accumulator()
        _ = try whole.absorb(piece)
        let answer = try whole.finish()
        #expect(answer.histogram.count == 10_000_000 && answer.histogram.allSatisfy { $0 == 0 })

        // With rows, a piece holds their bins, not ten million counts; the answer's counts are
        // those of a count by hand.
        let some = plan {
            $0.filter = "r_psfFlux > 0"
            var h = Tessera_V1_HistogramSpec()
            (h.x, h.xBins, h.xMin, h.xMax) = ("coord_dec", 10_000_000, -60, -20)
            $0.histogram = h
        }
        let q2 = try CheckedCatalogQuery(some, columns: reader.footer.columns, raColumn: "coord_ra", decColumn: "coord_dec")
        let scan2 = try ShardScanPlan(q2, reader: reader, raColumn: "coord_ra", decColumn: "coord_dec")
        var whole2 = scan2.accumulator()
        var want = [Int: UInt64]()
        let edges = HistogramBinsTests.edges(-60, -20, 10_000_000)
        for g in scan2.groups {
            let piece = try scan2.scan(rowGroup: g) { (c) throws(ShardError) in try reader.read(column: c, rowGroup: g) }
            #expect(piece.histogram.isEmpty && piece.histogramHits.count <= Int(piece.partial.rowsMatched))
            _ = try whole2.absorb(piece)
            let dec = try reader.read(column: reader.footer.columns.firstIndex { $0.name == "coord_dec" }!, rowGroup: g).doubles
            let flux = try reader.read(column: reader.footer.columns.firstIndex { $0.name == "r_psfFlux" }!, rowGroup: g).doubles
            for (d, f) in zip(dec, flux) where f > 0 {
                if let b = HistogramBinsTests.reference(d, edges) { want[b, default: 0] += 1 }
            }
        }
        let counts = try whole2.finish().histogram
        #expect(want.values.reduce(0, +) > 100)
        #expect(counts.count == 10_000_000)
        var got = [Int: UInt64]()
        for (b, c) in counts.enumerated() where c > 0 { got[b] = c }
        #expect(got == want)
    }
}
