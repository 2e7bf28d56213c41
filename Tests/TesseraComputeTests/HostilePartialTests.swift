import Foundation
import Testing
@testable import TesseraCompute
import TesseraProtocol

/// Values another process sent (a peer's partial, a task graph's inputs) are checked, not
/// trusted: each of these trapped a worker once.
struct HostilePartialTests {
    /// Rows with a spatial index merged with rows without one, under a limit: the trim read
    /// the missing index past its end.
    @Test func rowsWithAndWithoutAnIndexAreACorruptPartial() throws {
        func partial(_ values: [Double], index: [Int64]) -> CatalogPartial {
            var b = RowBatchBuilder()
            b.append(names: ["x"], values: [.doubles(values)], index: index, sortKeys: nil)
            var p = CatalogPartial()
            p.rows = b.proto(withIndex: !index.isEmpty)
            return p
        }
        var plan = CatalogQueryPlan()
        plan.dataset = "object"
        plan.rows.select = ["x"]
        plan.rows.limit = 10
        let indexed = partial([1, 2, 3], index: [7, 8, 9]), bare = partial([4, 5], index: [])
        #expect(throws: CatalogQueryError.self) { _ = try CatalogMerge.merge([indexed, bare], plan: plan) }
        // Both without an index: merged, ties in arrival order.
        let merged = try CatalogMerge.merge([bare, partial([6], index: [])], plan: plan)
        let rows = try RowBatchBuilder(merged.rows)
        #expect(merged.rows.index.isEmpty && rows.count == 3)
        // Both with: as before.
        #expect(try CatalogMerge.merge([indexed, partial([0], index: [1])], plan: plan).rows.index == [1, 7, 8, 9])
    }

    /// Sketches that each passed, merged from two sides, past the budget: refused by the merge.
    @Test func quantileSketchesMergedPastTheBudgetAreRefused() {
        var left = QuantileSketch(), right = QuantileSketch()
        left.add(1e-300)
        right.add(1e300)
        #expect(left.buckets == 1 && right.buckets == 1)
        left.merge(right)
        #expect(left.buckets > 130_000)
        #expect(throws: CatalogQueryError.self) { try QuantileSketch.checkBudget(Array(repeating: [left], count: 130)) }
        #expect(throws: Never.self) { try QuantileSketch.checkBudget(Array(repeating: [left], count: 100)) }
    }

    /// Image statistics from two workers: a depth map whose counts are shorter than its pixels
    /// read past their end in the merge; counts near 2⁶⁴ overflowed the sum.
    @Test func malformedImageStatisticsAreACorruptPartial() throws {
        func partial(band: String, pixels: [UInt64], counts: [UInt64], total: UInt64) -> CatalogPartial {
            var s = ImageStatisticsPartial()
            s.band = band
            s.pixels = total
            s.depth.order = 8
            s.depth.pixels = pixels
            s.depth.counts = counts
            var p = CatalogPartial()
            p.imageStatistics = [s]
            return p
        }
        var plan = CatalogQueryPlan()
        plan.dataset = "coadd"
        let good = partial(band: "r", pixels: [3, 9], counts: [10, 20], total: 30)
        let merged = try CatalogMerge.merge([good, partial(band: "r", pixels: [9, 12], counts: [1, 2], total: 3)], plan: plan)
        #expect(merged.imageStatistics.count == 1 && merged.imageStatistics[0].pixels == 33)
        #expect(merged.imageStatistics[0].depth.pixels == [3, 9, 12] && merged.imageStatistics[0].depth.counts == [10, 21, 2])
        #expect(throws: CatalogQueryError.self) { _ = try CatalogMerge.merge([good, partial(band: "r", pixels: [9, 12], counts: [1], total: 3)], plan: plan) }
        #expect(throws: CatalogQueryError.self) { _ = try CatalogMerge.merge([good, partial(band: "r", pixels: [12, 9], counts: [1, 2], total: 3)], plan: plan) }
        #expect(throws: Never.self) { _ = try CatalogMerge.merge([partial(band: "g", pixels: [], counts: [], total: .max), partial(band: "g", pixels: [], counts: [], total: .max)], plan: plan) }
    }

    /// `count` over moments whose count is not a whole number that fits (NaN, or doubled
    /// past 2⁶³ by a graph feeding a merge its own output twice) is an error, not a trap.
    @Test func countOfImpossibleMomentsIsAnError() {
        func count(_ inputs: [Value]) -> String {
            do { return "\(try BuiltinOperators.count.run(OperatorContext(inputs: inputs)))" } catch { return "\(error)" }
        }
        var m = Moments()
        m.count = .nan
        #expect(count([.moments(m)]).contains("not a whole number"))
        m.count = 1e19
        #expect(count([.moments(m)]).contains("not a whole number"))
        m.count = 3
        #expect(count([.moments(m), .int64(1)]) == "\(Value.int64(4))")
        #expect(count([.int64Column([Int64](repeating: 0, count: 5)), .int64(Int64.max)]) == "\(Value.int64(6))")
    }
}
