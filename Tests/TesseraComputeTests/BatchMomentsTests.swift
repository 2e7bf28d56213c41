import Testing
@testable import TesseraCompute

@Suite struct BatchMomentsTests {
    /// Values far from zero with a small spread, an outlier first, NaN and uncounted rows mixed
    /// in, over several batches and groups: the moments match an exact two-pass reference, with
    /// and without min/max tracking (without, they stay at ±∞).
    @Test(arguments: [true, false]) func stableForLargeOffsetsAndOutliers(extremes: Bool) {
        var rng = SplitMix64(seed: 23)
        var moments = [Moments](repeating: Moments(), count: 3)
        var reference: [[Double]] = [[], [], []]
        var rowsSeen = [UInt64](repeating: 0, count: 3)
        for batch in 0..<5 {
            var v: [Double] = [], slots: [Int32] = [], valid: [Bool] = []
            for i in 0..<10_000 {
                let g = (i / 1_700 + batch) % 3
                var x = 1e9 + (rng.nextUnit() - 0.5) * 2
                if batch == 0 && i == 0 { x = -4e12 }  // the first value of group 0 is far out
                if i % 97 == 0 { x = .nan }
                let counts = i % 13 != 0
                v.append(x)
                slots.append(Int32(g))
                valid.append(counts)
                if counts {
                    rowsSeen[g] += 1
                    if !x.isNaN { reference[g].append(x) }
                }
            }
            let rows = BatchMoments.add(values: v, slots: slots, valid: valid, extremes: extremes, into: &moments)
            #expect(rows.reduce(0, +) == UInt64(valid.filter { $0 }.count))
        }
        for g in 0..<3 {
            let xs = reference[g]
            let mean = xs.reduce(0, +) / Double(xs.count)
            let m2 = xs.reduce(0) { $0 + ($1 - mean) * ($1 - mean) }
            #expect(moments[g].count == Double(xs.count))
            #expect(abs(moments[g].mean - mean) <= 1e-12 * abs(mean))
            #expect(abs(moments[g].m2 - m2) <= 1e-8 * m2, "group \(g): \(moments[g].m2) vs \(m2)")
            if extremes {
                #expect(moments[g].min == xs.min() && moments[g].max == xs.max())
            } else {
                #expect(moments[g].min == .infinity && moments[g].max == -.infinity)
            }
        }
    }
}
