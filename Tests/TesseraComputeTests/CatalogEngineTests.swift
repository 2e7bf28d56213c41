import SwiftProtobuf
import Foundation
import Testing
import TesseraCompute
import TesseraProtocol
import TesseraSky
import TesseraStorage
import TesseraSurvey
import TesseraTestKit

/// A synthetic catalog written as real shard files at a chosen shard size, plus its rows in
/// memory for brute force.
final class ShardedCatalog: Sendable {
    static let rows = 30_000
    static let shared = ShardedCatalog()

    let columns: [String: [Double]]
    let objectId: [Int64]
    let index: [Int64]
    let schema: [ColumnSpec]

    init() {
        let cat = SyntheticCatalog(seed: 5)
        let data = cat.rows(0, count: Self.rows)
        var cols: [String: [Double]] = [:]
        for (spec, c) in zip(SyntheticCatalog.schema, data) { cols[spec.name] = c.doubles }
        columns = cols
        if case .int64(let ids) = data[0] { objectId = ids } else { objectId = [] }
        index = zip(cols["coord_ra"]!, cols["coord_dec"]!).map { HEALPix.spatialIndex(ra: $0, dec: $1) }
        schema = SyntheticCatalog.schema + [ColumnSpec("_healpix_29", .columnInt64)]
        rawData = data
    }

    private let rawData: [ColumnData]

    /// Writes the catalog as shards of at most `maxRows` rows (row groups of `groupRows`) and
    /// returns their readers.
    func shards(maxRows: Int, groupRows: Int = 1_000) throws -> [ShardReader] {
        let dir = temporaryFolder("engine-\(maxRows)")
        let order = index.indices.sorted { index[$0] < index[$1] }
        let data = (rawData + [.int64(index)]).map { $0.gathered(order) }
        let plans = SkyPartitioner.partition(sortedIndex: order.map { index[$0] }, maxRows: maxRows)
        var readers: [ShardReader] = []
        for p in plans {
            let path = "\(dir)/\(p.name).shard"
            try ShardWriter.write(to: path, columns: schema, data: data.map { $0.slice(p.rows) }, indexColumn: "_healpix_29",
                                  order: p.order, pixel: p.pixel, rowGroupRows: groupRows)
            readers.append(try ShardReader(path: path))
        }
        return readers
    }

    func col(_ n: String) -> [Double] { columns[n]! }

    static func mag(_ f: Double) -> Double { f > 0 ? -2.5 * log10(f) + 31.4 : .nan }
}

/// Answers a plan over shards the way the cluster does: a scan per shard, then merges in a
/// seeded random tree shape.
func answer(_ plan: CatalogQueryPlan, _ shards: [ShardReader], seed: UInt64 = 1) throws -> CatalogResult {
    let columns = shards[0].footer.columns
    let q = try CheckedCatalogQuery(plan, columns: columns, raColumn: "coord_ra", decColumn: "coord_dec")
    var parts = try shards.map { try CatalogScan.scan(q, reader: $0, raColumn: "coord_ra", decColumn: "coord_dec") }
    // Through the wire form, as between workers.
    parts = try parts.map { p in
        let bytes: [UInt8] = try p.serializedBytes()
        return try CatalogPartial(serializedBytes: bytes)
    }
    var rng = SplitMix64(seed: seed)
    while parts.count > 1 {
        let k = min(parts.count, 2 + Int(rng.next() % 4))
        var picked: [CatalogPartial] = []
        for _ in 0..<k { picked.append(parts.remove(at: Int(rng.next() % UInt64(parts.count)))) }
        parts.append(try CatalogMerge.merge(picked, plan: plan))
    }
    return CatalogResult(plan: plan, partial: parts[0])
}

func plan(_ dataset: String = "object", _ change: (inout CatalogQueryPlan) -> Void) -> CatalogQueryPlan {
    var p = CatalogQueryPlan()
    p.dataset = dataset
    change(&p)
    return p
}

func aggregate(_ f: AggregateFunction, _ e: String = "", q: Double = 0) -> AggregateSpec {
    var a = AggregateSpec()
    a.function = f
    a.expression = e
    a.quantile = q
    return a
}

@Suite("Catalog engine", .serialized)
struct CatalogEngineTests {
    let cat = ShardedCatalog.shared

    /// Shards of two sizes: every answer must be the same on both.
    func layouts() throws -> [[ShardReader]] {
        [try cat.shards(maxRows: 1_500), try cat.shards(maxRows: 40_000, groupRows: 4_096)]
    }

    @Test func countsWithFilterAndConeMatchBruteForce() throws {
        let ra = cat.col("coord_ra"), dec = cat.col("coord_dec"), r = cat.col("r_psfFlux")
        let ext = cat.col("refExtendedness"), primary = cat.col("detect_isPrimary")
        let expected = (0..<ShardedCatalog.rows).filter { primary[$0] == 1 && ext[$0] == 0 && ShardedCatalog.mag(r[$0]) < 24 }.count
        let cone = ConeRegion(ra: 60, dec: -35, radius: 1.5)
        let inCone = (0..<ShardedCatalog.rows).filter { cone.contains(ra: ra[$0], dec: dec[$0]) }.count
        #expect(inCone > 200)
        for shards in try layouts() {
            let a = try answer(plan { $0.filter = "detect_isPrimary and refExtendedness == 0 and mag(r_psfFlux) < 24" }, shards)
            #expect(a.table.numbers("count") == [Double(expected)])
            #expect(a.shards == shards.count)
            let c = try answer(plan { var s = Tessera_V1_ConeSpec(); (s.ra, s.dec, s.radius) = (60, -35, 1.5); $0.cone = s }, shards)
            #expect(c.rowsMatched == inCone)
            // Row groups outside the cone are never read.
            #expect(c.rowsScanned < ShardedCatalog.rows / 3)
        }
    }

    /// Small regions (a few of a row group's rows, where the scan finds them by binary search on
    /// the index and runs the filter on them alone) and wide ones, with and without a filter:
    /// the rows are those a test of every row finds.
    @Test func smallRegionsWithFiltersReturnTheRowsEveryRowTestFinds() throws {
        let ra = cat.col("coord_ra"), dec = cat.col("coord_dec"), r = cat.col("r_psfFlux"), ext = cat.col("refExtendedness")
        var rng = SplitMix64(seed: 77)
        var regions: [(Tessera_V1_ConeSpec?, Tessera_V1_BoxSpec?, (Double, Double) -> Bool)] = []
        for k in 0..<12 {
            let u = Double(rng.next() % 1_000_000) / 1e6, v = Double(rng.next() % 1_000_000) / 1e6
            let (cra, cdec) = (52 + 16 * u, -43 + 16 * v)
            if k % 3 == 2 {
                var b = Tessera_V1_BoxSpec()
                (b.raMin, b.raMax, b.decMin, b.decMax) = (cra, cra + 0.4, cdec, cdec + 0.3)
                let box = try BoxRegion(raMin: b.raMin, raMax: b.raMax, decMin: b.decMin, decMax: b.decMax)
                regions.append((nil, b, { box.contains(ra: $0, dec: $1) }))
            } else {
                let radius = k % 3 == 0 ? 0.1 : 2.5
                var c = Tessera_V1_ConeSpec()
                (c.ra, c.dec, c.radius) = (cra, cdec, radius)
                let cone = ConeRegion(ra: cra, dec: cdec, radius: radius)
                regions.append((c, nil, { cone.contains(ra: $0, dec: $1) }))
            }
        }
        for shards in try layouts() {
            for (cone, box, inside) in regions {
                for filter in ["", "refExtendedness == 0 and mag(r_psfFlux) < 23.5"] {
                    let want = (0..<ShardedCatalog.rows).filter {
                        inside(ra[$0], dec[$0]) && (filter.isEmpty || (ext[$0] == 0 && ShardedCatalog.mag(r[$0]) < 23.5))
                    }.map { cat.objectId[$0] }
                    let got = try answer(plan {
                        if let cone { $0.cone = cone }
                        if let box { $0.box = box }
                        $0.filter = filter
                        $0.rows.select = ["objectId"]
                    }, shards).table
                    var ids: [Int64] = []
                    if let column = got.columns.first {
                        guard case .int64s(let values) = column else { Issue.record("objectId is Int64"); continue }
                        ids = values
                    }
                    #expect(ids.sorted() == want.sorted(), "\(cone.map { "cone \($0.ra) \($0.dec) \($0.radius)" } ?? "box") filter `\(filter)`")
                }
            }
        }
    }

    @Test func predicatePushdownSkipsRowGroupsWithoutChangingTheAnswer() throws {
        let dec = cat.col("coord_dec")
        let expected = dec.filter { $0 > -26.5 }.count
        let shards = try cat.shards(maxRows: 40_000, groupRows: 500)
        let a = try answer(plan { $0.filter = "coord_dec > -26.5" }, shards)
        #expect(a.rowsMatched == expected)
        #expect(a.rowsScanned < ShardedCatalog.rows)
        // `-26.5 < coord_dec` is the same bound written the other way round.
        let b = try answer(plan { $0.filter = "-26.5 < coord_dec and detect_isPrimary" }, shards)
        let primary = cat.col("detect_isPrimary")
        #expect(b.rowsMatched == dec.indices.filter { dec[$0] > -26.5 && primary[$0] == 1 }.count)
    }

    @Test func groupByCellMatchesPandasSemantics() throws {
        let r = cat.col("r_psfFlux"), ext = cat.col("refExtendedness"), cell = cat.col("cell")
        var groups: [Double: [Double]] = [:]
        for i in 0..<ShardedCatalog.rows where ext[i] == 1 {
            groups[cell[i], default: []].append(ShardedCatalog.mag(r[i]))
        }
        let keys = groups.keys.sorted()
        let p = plan {
            $0.filter = "refExtendedness == 1"
            $0.groupBy = "cell"
            $0.aggregates = [aggregate(.aggCount, "mag(r_psfFlux)"), aggregate(.aggMean, "mag(r_psfFlux)"), aggregate(.aggStd, "mag(r_psfFlux)"),
                             aggregate(.aggCount), aggregate(.aggMin, "mag(r_psfFlux)"), aggregate(.aggMax, "mag(r_psfFlux)"),
                             aggregate(.aggSum, "mag(r_psfFlux)"), aggregate(.aggVar, "mag(r_psfFlux)"), aggregate(.aggQuantile, "mag(r_psfFlux)", q: 0.9)]
        }
        var tables: [ResultTable] = []
        for shards in try layouts() {
            let t = try answer(p, shards).table
            tables.append(t)
            #expect(t.numbers("cell") == keys)
            for (k, key) in keys.enumerated() {
                let all = groups[key]!
                let v = all.filter { !$0.isNaN }
                let mean = v.reduce(0, +) / Double(v.count)
                let variance = v.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(v.count - 1)
                #expect(t.numbers("count(mag(r_psfFlux))")![k] == Double(v.count))
                #expect(t.numbers("count")![k] == Double(all.count))
                #expect(abs(t.numbers("mean(mag(r_psfFlux))")![k] - mean) <= 1e-9 * abs(mean))
                #expect(abs(t.numbers("var(mag(r_psfFlux))")![k] - variance) <= 1e-9 * variance)
                #expect(abs(t.numbers("std(mag(r_psfFlux))")![k] - variance.squareRoot()) <= 1e-9 * variance.squareRoot())
                // Magnitudes come from the kernels' log10, within a few ulp of glibc's.
                #expect(abs(t.numbers("min(mag(r_psfFlux))")![k] - v.min()!) <= 1e-14 * v.min()!)
                #expect(abs(t.numbers("max(mag(r_psfFlux))")![k] - v.max()!) <= 1e-14 * v.max()!)
                #expect(abs(t.numbers("sum(mag(r_psfFlux))")![k] - v.reduce(0, +)) <= 1e-9 * abs(v.reduce(0, +)))
                // The sketch's guarantee: within 0.5% of the value at rank ⌊q(n−1)⌋.
                let sorted = v.sorted()
                let exact = sorted[Int((0.9 * Double(v.count - 1)).rounded(.down))]
                let got = t.numbers("quantile(0.9, mag(r_psfFlux))")![k]
                #expect(abs(got - exact) <= QuantileSketch.relativeAccuracy * abs(exact) * (1 + 1e-9))
            }
        }
        // Counts and sketches do not depend on the sharding at all.
        #expect(tables[0].numbers("count") == tables[1].numbers("count"))
        #expect(tables[0].numbers("quantile(0.9, mag(r_psfFlux))") == tables[1].numbers("quantile(0.9, mag(r_psfFlux))"))
    }

    /// Keys from an expression, NaN for non-positive fluxes: those rows are dropped (pandas'
    /// default), whether they open a row group or sit between groups.
    @Test func groupByExpressionDropsNaNKeys() throws {
        let g = cat.col("g_psfFlux"), r = cat.col("r_psfFlux")
        var expected: [Double: (Int, Double)] = [:]
        for i in 0..<ShardedCatalog.rows {
            let k = ShardedCatalog.mag(g[i]).rounded(.down)
            if k.isNaN { continue }
            let m = ShardedCatalog.mag(r[i])
            var e = expected[k, default: (0, 0)]
            if !m.isNaN { e.0 += 1; e.1 += m }
            expected[k] = e
        }
        #expect(g.contains { $0 <= 0 })
        let p = plan { $0.groupBy = "floor(mag(g_psfFlux))"; $0.aggregates = [aggregate(.aggCount, "mag(r_psfFlux)"), aggregate(.aggMean, "mag(r_psfFlux)")] }
        for shards in try layouts() {
            let t = try answer(p, shards).table
            let keys = expected.keys.sorted()
            #expect(t.numbers("floor(mag(g_psfFlux))") == keys)
            #expect(t.numbers("count(mag(r_psfFlux))") == keys.map { Double(expected[$0]!.0) })
            for (k, key) in keys.enumerated() where expected[key]!.0 > 0 {
                let want = expected[key]!.1 / Double(expected[key]!.0)
                #expect(abs(t.numbers("mean(mag(r_psfFlux))")![k] - want) <= 1e-9 * abs(want))
            }
        }
    }

    @Test func quantileSketchKeepsItsErrorBoundOnBothSigns() {
        var rng = SplitMix64(seed: 3)
        var values: [Double] = []
        for _ in 0..<20_000 { values.append((Double(rng.next() % 2_000_000) - 1_000_000) / 137.0) }
        values += [0, 0, 0, .nan]
        var a = QuantileSketch(), b = QuantileSketch()
        for (k, v) in values.enumerated() { if k % 3 == 0 { a.add(v) } else { b.add(v) } }
        a.merge(b)
        let sorted = values.filter { !$0.isNaN }.sorted()
        #expect(a.count == UInt64(sorted.count))
        for q in stride(from: 0.0, through: 1.0, by: 0.05) {
            let exact = sorted[Int((q * Double(sorted.count - 1)).rounded(.down))]
            #expect(abs(a.quantile(q) - exact) <= QuantileSketch.relativeAccuracy * abs(exact) * (1 + 1e-9), "q = \(q)")
        }
        #expect(QuantileSketch().quantile(0.5).isNaN)
    }

    /// numpy's bins, by an independent rule: bin i holds edges[i] <= v < edges[i+1] with
    /// edges = linspace(lo, hi, n+1), the last bin closed — found by binary search.
    static func referenceBin(_ v: Double, _ lo: Double, _ hi: Double, _ n: Int) -> Int? {
        HistogramBinsTests.reference(v, HistogramBinsTests.edges(lo, hi, n))
    }

    @Test func histogramsFollowNumpyBins() throws {
        let g = cat.col("g_psfFlux"), r = cat.col("r_psfFlux"), ext = cat.col("refExtendedness")
        var expected = [UInt64](repeating: 0, count: 60 * 80)
        for i in 0..<ShardedCatalog.rows where ext[i] == 0 && r[i] > 0 && g[i] > 0 {
            let x = ShardedCatalog.mag(g[i]) - ShardedCatalog.mag(r[i]), y = ShardedCatalog.mag(r[i])
            if let bx = Self.referenceBin(x, -1, 2, 60), let by = Self.referenceBin(y, 16, 24, 80) { expected[bx * 80 + by] += 1 }
        }
        #expect(expected.reduce(0, +) > 1_000)
        for shards in try layouts() {
            let a = try answer(plan {
                $0.filter = "refExtendedness == 0 and r_psfFlux > 0 and g_psfFlux > 0"
                var h = Tessera_V1_HistogramSpec()
                (h.x, h.xBins, h.xMin, h.xMax) = ("mag(g_psfFlux) - mag(r_psfFlux)", 60, -1, 2)
                (h.y, h.yBins, h.yMin, h.yMax) = ("mag(r_psfFlux)", 80, 16, 24)
                $0.histogram = h
            }, shards)
            #expect(a.histogram == expected)
        }
        // 1-D, as the engine bins each row on its own, each case against the reference bins of
        // the same rows:
        // - magnitudes (NaN for fluxes ≤ 0, most rows outside [20, 23]) behind a filter that
        //   keeps a random part of the rows;
        // - the same with a selective filter on the column the output reads too (the survivors'
        //   values are gathered from it);
        // - a column whose values sit exactly on the first edge and on the closed last one;
        // - 0.3 and 0.6 on interior edges of six bins over [0.1, 0.7], where the scaled value
        //   rounds next to the edge.
        struct OneD {
            var filter: String, x: String, bins: UInt32, lo: Double, hi: Double
            var keeps: (Int) -> Bool, value: (Int) -> Double
        }
        let cases = [
            OneD(filter: "refExtendedness == 1", x: "mag(r_psfFlux)", bins: 30, lo: 20, hi: 23,
                 keeps: { ext[$0] == 1 }, value: { ShardedCatalog.mag(r[$0]) }),
            OneD(filter: "refExtendedness == 1 and r_psfFlux > 3000", x: "mag(r_psfFlux)", bins: 30, lo: 20, hi: 23,
                 keeps: { ext[$0] == 1 && r[$0] > 3000 }, value: { ShardedCatalog.mag(r[$0]) }),
            OneD(filter: "", x: "refExtendedness", bins: 7, lo: 0, hi: 1, keeps: { _ in true }, value: { ext[$0] }),
            OneD(filter: "", x: "refExtendedness * 0.3 + 0.3", bins: 6, lo: 0.1, hi: 0.7, keeps: { _ in true }, value: { ext[$0] * 0.3 + 0.3 }),
        ]
        let references = cases.map { c in
            var h = [UInt64](repeating: 0, count: Int(c.bins))
            for i in 0..<ShardedCatalog.rows where c.keeps(i) {
                if let b = Self.referenceBin(c.value(i), c.lo, c.hi, Int(c.bins)) { h[b] += 1 }
            }
            return h
        }
        let counted = references.map { $0.reduce(0, +) }
        #expect(counted[0] > 100 && counted[0] < UInt64(ShardedCatalog.rows) / 2)
        #expect(counted[1] > 20 && counted[1] < counted[0])
        #expect(references[2].first! > 0 && references[2].last! > 0)
        #expect(references[3].filter { $0 > 0 }.count == 2)
        for shards in try layouts() {
            for (c, want) in zip(cases, references) {
                let got = try answer(plan {
                    if !c.filter.isEmpty { $0.filter = c.filter }
                    var h = Tessera_V1_HistogramSpec()
                    (h.x, h.xBins, h.xMin, h.xMax) = (c.x, c.bins, c.lo, c.hi)
                    $0.histogram = h
                }, shards)
                #expect(got.histogram == want, "\(c.filter) → \(c.x)")
            }
        }
        // Values exactly on edges, and the closed last bin: 0, 0.1, ..., 1 in 10 bins of [0, 1].
        let edges = (0...10).map { Double($0) / 10 }
        let bins = edges.map { Self.referenceBin($0, 0, 1, 10) }
        #expect(bins.last == 9)
        #expect(bins.first == 0)
    }

    @Test func skyMapsCountAndAveragePerPixel() throws {
        let ra = cat.col("coord_ra"), dec = cat.col("coord_dec"), r = cat.col("r_psfFlux")
        var counts: [Int64: Int] = [:], sums: [Int64: Double] = [:], n: [Int64: Int] = [:]
        for i in 0..<ShardedCatalog.rows {
            let p = HEALPix.pixel(order: 7, ra: ra[i], dec: dec[i])
            counts[p, default: 0] += 1
            let m = ShardedCatalog.mag(r[i])
            if !m.isNaN { sums[p, default: 0] += m; n[p, default: 0] += 1 }
        }
        let pixels = counts.keys.sorted()
        for shards in try layouts() {
            let t = try answer(plan { var m = Tessera_V1_SkyMapSpec(); m.order = 7; m.expression = "mag(r_psfFlux)"; $0.skyMap = m }, shards).table
            #expect(t.numbers("pixel") == pixels.map(Double.init))
            #expect(t.numbers("count") == pixels.map { Double(counts[$0]!) })
            let means = t.numbers("mean(mag(r_psfFlux))")!
            for (k, p) in pixels.enumerated() {
                let want = sums[p]! / Double(n[p]!)
                #expect(abs(means[k] - want) <= 1e-9 * abs(want))
            }
        }
    }

    @Test func topKHeadSampleAndCollect() throws {
        let r = cat.col("r_psfFlux"), dec = cat.col("coord_dec")
        let mags = r.map(ShardedCatalog.mag)
        let brightest = mags.indices.filter { !mags[$0].isNaN }.sorted { mags[$0] != mags[$1] ? mags[$0] < mags[$1] : cat.index[$0] < cat.index[$1] }.prefix(25)
        let head = cat.index.indices.filter { dec[$0] < -40 }.sorted { cat.index[$0] < cat.index[$1] }.prefix(40)
        var samples: [[Int64]] = []
        for shards in try layouts() {
            let top = try answer(plan {
                $0.rows.select = ["objectId", "mag(r_psfFlux)", "detect_isPrimary"]
                $0.rows.sortBy = "mag(r_psfFlux)"
                $0.rows.limit = 25
            }, shards).table
            #expect(top.names == ["objectId", "mag(r_psfFlux)", "detect_isPrimary"])
            #expect(top.columns[0] == .int64s(brightest.map { cat.objectId[$0] }))
            if case .bools = top.columns[2] {} else { Issue.record("a stored boolean column stays boolean") }

            let h = try answer(plan { $0.filter = "coord_dec < -40"; $0.rows.select = ["objectId"]; $0.rows.limit = 40 }, shards).table
            #expect(h.columns[0] == .int64s(head.map { cat.objectId[$0] }))

            let s = try answer(plan { $0.rows.select = ["objectId"]; $0.rows.sampleFraction = 0.1; $0.rows.sampleSeed = 9 }, shards).table
            if case .int64s(let ids) = s.columns[0] { samples.append(ids.sorted()) }

            // Collect: every row of a small cone, and the row cap enforced.
            let all = try answer(plan { $0.filter = "coord_dec < -44.5"; $0.rows.select = ["objectId", "coord_dec"] }, shards).table
            #expect(all.rowCount == dec.filter { $0 < -44.5 }.count)
            #expect(throws: CatalogQueryError.self) {
                _ = try answer(plan { $0.rows.select = ["objectId"]; $0.rows.maxRows = 1_000 }, shards)
            }

            // A computed column named as with pandas' `assign`: `name = expression`.
            let named = try answer(plan { $0.filter = "coord_dec < -44.5"; $0.rows.select = ["objectId", "r_mag = mag(r_psfFlux)"] }, shards).table
            #expect(named.names == ["objectId", "r_mag"])
            guard case .int64s(let namedIDs) = named.columns[0], case .doubles(let mags) = named.columns[1] else { Issue.record("types"); continue }
            let flux = cat.col("r_psfFlux")
            let rowOf = Dictionary(uniqueKeysWithValues: cat.objectId.enumerated().map { ($1, $0) })
            for (id, m) in zip(namedIDs, mags) {
                let exact = ShardedCatalog.mag(flux[rowOf[id]!])
                #expect(m == exact || abs(m - exact) <= 1e-12 * 31.4 || (m.isNaN && exact.isNaN))
            }
        }
        // The same sample whatever the sharding, of about the asked fraction (binomial, 6 sigma).
        #expect(samples.count == 2 && samples[0] == samples[1])
        let n = Double(ShardedCatalog.rows), got = Double(samples[0].count)
        #expect(abs(got - 0.1 * n) < 6 * (n * 0.1 * 0.9).squareRoot())
    }

    /// A collect's partial written straight from the row groups is byte for byte what
    /// SwiftProtobuf writes for the partial the scan builds, for every column kind (Int64,
    /// Float32, Float64, Bool, computed), filters that keep all, some or none of a row group's
    /// rows, regions and samples; and other questions (a head, a histogram) are unchanged.
    @Test func aCollectsWireBytesAreSwiftProtobufs() throws {
        let plans: [CatalogQueryPlan] = [
            plan { $0.rows.select = ["objectId", "coord_ra", "r_psfFlux", "detect_isPrimary", "mag(r_psfFlux)"] },
            plan { $0.rows.select = [] },
            plan { $0.filter = "mag(r_psfFlux) < 23"; $0.rows.select = ["objectId", "g_psfFlux"] },
            plan { $0.filter = "coord_dec < -1000"; $0.rows.select = ["objectId"] },
            plan { $0.cone.ra = 60; $0.cone.dec = -35; $0.cone.radius = 1; $0.rows.select = ["objectId", "coord_dec"] },
            plan { $0.rows.select = ["objectId"]; $0.rows.sampleFraction = 0.2; $0.rows.sampleSeed = 3 },
            plan { $0.rows.select = ["objectId"]; $0.rows.limit = 7 },
            plan { $0.histogram.x = "mag(r_psfFlux)"; $0.histogram.xBins = 10; $0.histogram.xMin = 16; $0.histogram.xMax = 26 },
        ]
        var rowsSeen = 0
        for shards in try layouts() {
            for p in plans {
                let q = try CheckedCatalogQuery(p, columns: shards[0].footer.columns, raColumn: "coord_ra", decColumn: "coord_dec")
                for reader in shards {
                    let built = try CatalogScan.scan(q, reader: reader, raColumn: "coord_ra", decColumn: "coord_dec")
                    let expected: [UInt8] = try built.serializedBytes()
                    let written = try CatalogScan.scanSerialized(q, reader: reader, raColumn: "coord_ra", decColumn: "coord_dec")
                    #expect(written == expected, "plan \(p.rows.select) filter `\(p.filter)` on \(reader.path)")
                    if case .int64S(let ids)? = built.rows.columns.first?.values { rowsSeen += ids.values.count }
                }
            }
        }
        #expect(rowsSeen > ShardedCatalog.rows * 4)
    }

    @Test func badPlansAreRefusedWithWhatToChange() throws {
        let columns = try cat.shards(maxRows: 40_000)[0].footer.columns
        func refusal(_ change: (inout CatalogQueryPlan) -> Void) -> String {
            do {
                _ = try CheckedCatalogQuery(plan("object", change), columns: columns, raColumn: "coord_ra", decColumn: "coord_dec")
                return "accepted"
            } catch {
                return error.message
            }
        }
        #expect(refusal { $0.groupBy = "cel" }.contains("unknown column `cel` — did you mean `cell`?"))
        // `==`, `<=` are comparisons, not names; a name needs an expression after it.
        #expect(refusal { $0.rows.select = ["coord_ra <= 60"] }.contains("a number is needed"))
        #expect(refusal { $0.rows.select = ["1st = coord_ra"] }.contains("`=` is not an operator"))
        #expect(refusal { $0.rows.select = ["r_mag = "] }.contains("selected column `r_mag`"))
        #expect(refusal { $0.aggregates = [aggregate(.aggMean, "r_psfFlux > 1")] }.contains("a number is needed"))
        #expect(refusal { $0.aggregates = [aggregate(.aggMean, "sqr(r_psfFlux)")] }.contains("unknown function `sqr`"))
        #expect(refusal { var h = Tessera_V1_HistogramSpec(); h.x = "coord_ra"; h.xBins = 10; h.xMin = 5; h.xMax = 1; $0.histogram = h }.contains("increasing"))
        #expect(refusal { var h = Tessera_V1_HistogramSpec(); h.x = "coord_ra"; h.xBins = 10; h.xMax = 1; $0.histogram = h; $0.groupBy = "cell" }.contains("one result"))
        #expect(refusal { var m = Tessera_V1_SkyMapSpec(); m.order = 20; $0.skyMap = m }.contains("too fine"))
        // Bins whose product overflows 64 bits (it trapped), with and without a y axis.
        #expect(refusal { var h = Tessera_V1_HistogramSpec(); (h.x, h.xBins, h.xMax, h.y, h.yBins, h.yMax) = ("coord_ra", .max, 1, "coord_dec", .max, 1); $0.histogram = h }
            .contains("more than the limit"))
        #expect(refusal { var h = Tessera_V1_HistogramSpec(); (h.x, h.xBins, h.xMax, h.yBins) = ("coord_ra", .max, 1, .max); $0.histogram = h }.contains("more than the limit"))
        #expect(refusal { var h = Tessera_V1_HistogramSpec(); (h.x, h.xBins, h.xMax, h.yBins) = ("coord_ra", 100, 1, .max); $0.histogram = h } == "accepted")
        #expect(refusal { $0.groupBy = "cell"; $0.maxGroups = .max }.contains("over the limit of \(Limits.groups) groups"))
        #expect(refusal { $0.groupBy = "cell"; $0.maxGroups = UInt64(Limits.groups) } == "accepted")
        // Groups times aggregated expressions: memory on every worker and merge.
        let many = (0..<60).map { aggregate(.aggMean, "coord_ra + \($0)") }
        #expect(refusal { $0.groupBy = "cell"; $0.aggregates = many }.contains("over the limit of \(Limits.groupMomentsBytes)"))
        #expect(refusal { $0.groupBy = "cell"; $0.aggregates = Array(many.prefix(50)) } == "accepted")
        #expect(refusal { $0.groupBy = "cell"; $0.aggregates = many; $0.maxGroups = 10_000 } == "accepted")
        #expect(refusal { $0.aggregates = many } == "accepted")
        // A merge's fan-in: within bounds, or 0 for the default.
        #expect(refusal { $0.fanIn = 65 }.contains("outside the allowed 2…64"))
        #expect(refusal { $0.fanIn = 1 }.contains("outside the allowed 2…64"))
        #expect(refusal { $0.fanIn = .max }.contains("outside the allowed 2…64"))
        #expect(refusal { $0.fanIn = 64 } == "accepted")
        #expect(refusal { $0.fanIn = 0 } == "accepted")
        #expect(refusal { $0.rows.sortBy = "coord_ra" }.contains("needs a limit"))
        #expect(refusal { var c = Tessera_V1_ConeSpec(); c.dec = 95; c.radius = 1; $0.cone = c }.contains("not on the sky"))
        #expect(refusal { $0.aggregates = [aggregate(.aggQuantile, "coord_ra", q: 1.5)] }.contains("within 0…1"))
        // Python functions: on every selected row of a shard, within the limits.
        func python(_ f: Int = 10, combine: Int = 0, timeout: Double = 0) -> Tessera_V1_PythonSpec {
            var py = Tessera_V1_PythonSpec()
            py.function = Data(count: f)
            py.combine = Data(count: combine)
            py.timeoutS = timeout
            return py
        }
        #expect(refusal { $0.python = python(); $0.rows.select = ["coord_ra"] } == "accepted")
        #expect(refusal { $0.python = python() }.contains("needs `rows`"))
        #expect(refusal { $0.python = python(); $0.rows.limit = 5 }.contains("drop the limit"))
        #expect(refusal { $0.python = python(0); $0.rows.select = ["coord_ra"] }.contains("carries no function"))
        #expect(refusal { $0.python = python(Limits.pythonFunctionBytes, combine: 1); $0.rows.select = ["coord_ra"] }.contains("over the limit of \(Limits.pythonFunctionBytes)"))
        #expect(refusal { $0.python = python(timeout: -1); $0.rows.select = ["coord_ra"] }.contains("outside the allowed"))
        #expect(refusal { $0.python = python(); $0.rows.select = ["coord_ra"]; $0.progressive = true }.contains("cannot be progressive"))
        #expect(refusal { $0.python = python(); $0.rows.select = ["coord_rb"] }.contains("did you mean `coord_ra`"))

        // Too many groups: a clear limit, from the scan and from the merge.
        let shards = try cat.shards(maxRows: 1_500)
        let p = plan { $0.groupBy = "objectId"; $0.maxGroups = 1_000 }
        #expect(throws: CatalogQueryError.self) { _ = try answer(p, shards) }
        do {
            _ = try answer(p, shards)
        } catch {
            #expect("\(error)".contains("more than 1000 groups"))
        }
        // Corrupt partials are named, not trusted.
        var bad = CatalogPartial()
        bad.groupKeys = [3, 1]
        bad.groupRows = [1, 1]
        #expect(throws: CatalogQueryError.self) { _ = try CatalogMerge.merge([bad, CatalogPartial()], plan: plan { $0.groupBy = "cell" }) }

        // Quantile sketches grow with the span of their values: 130 of values from 1e-300 to
        // 1e300 would hold 18M buckets (140 MiB) on every worker. Refused by the scan, with the
        // limit; two of them are answered.
        let wide = "pow(10, 600 * (coord_ra * 1000 - floor(coord_ra * 1000)) - 300)"
        func quantiles(_ k: Int) -> CatalogQueryPlan { plan { $0.aggregates = (0..<k).map { aggregate(.aggQuantile, "\(wide) * \($0 + 1)", q: 0.5) } } }
        do {
            _ = try answer(quantiles(130), Array(shards.prefix(1)))
            Issue.record("130 wide quantiles were answered")
        } catch {
            #expect("\(error)".contains("over \(Limits.quantileBuckets) buckets"), "\(error)")
        }
        #expect(try answer(quantiles(2), Array(shards.prefix(2))).table.names.count == 2)
    }
}
