import Testing
@testable import TesseraCompute
import TesseraProtocol

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
                // Long runs of a group, broken now and then by a short run of another (ending
                // inside a block of sixteen).
                let g = i % 1_009 < 19 ? (i / 1_009) % 3 : (i / 1_700 + batch) % 3
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

/// Group slots for Float64 keys: runs of one key (the common case, taken sixteen rows at a time),
/// runs broken by a single row, -0 beside 0, NaN keys and rows that do not count, against a
/// plain per-row reference (a dictionary of first appearances, -0 as 0, NaN and uncounted rows
/// taking no slot of their own).
@Suite struct GroupSlotTests {
    @Test func slotsMatchAPerRowReference() throws {
        var schema = Tessera_V1_ColumnSchema()
        schema.name = "k"
        schema.type = .columnFloat64
        var plan = CatalogQueryPlan()
        plan.dataset = "t"
        plan.groupBy = "k"
        let q = try CheckedCatalogQuery(plan, columns: [schema], raColumn: "k", decColumn: "k")
        var rng = SplitMix64(seed: 41)
        for trial in 0..<60 {
            var acc = ScanAccumulator(q)
            var reference: [UInt64: Int32] = [:]
            var refLast: Int32 = 0
            for _ in 0..<3 {
                // One batch: runs of random lengths (1…40) over a few keys, some of them ±0 and NaN.
                var keys: [Double] = [], valid: [Bool] = []
                let palette: [Double] = [0, -0.0, .nan, 1, 2.5, -3, Double(trial)]
                while keys.count < 500 {
                    let key = palette[Int(rng.next() % UInt64(palette.count))]
                    for _ in 0..<(1 + Int(rng.next() % 40)) {
                        keys.append(key)
                        valid.append(rng.next() % 9 != 0)
                    }
                }
                var slots = [Int32](repeating: -1, count: keys.count), counted = valid
                try acc.assignSlots(keys, &slots, &counted)
                for i in keys.indices {
                    let counts = valid[i] && !keys[i].isNaN
                    #expect(counted[i] == counts, "row \(i) of trial \(trial): counts")
                    if counts {
                        let bits = (keys[i] == 0 ? 0 : keys[i]).bitPattern
                        if reference[bits] == nil { reference[bits] = Int32(reference.count) }
                        refLast = reference[bits]!
                        #expect(slots[i] == refLast, "row \(i) of trial \(trial): key \(keys[i])")
                    } else {
                        // A row that does not count keeps the slot before it.
                        #expect(slots[i] == refLast, "row \(i) of trial \(trial): uncounted")
                    }
                }
            }
        }
    }
}
