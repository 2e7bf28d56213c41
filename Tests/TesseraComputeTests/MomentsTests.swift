import Testing
import TesseraCompute

/// Seeded data with an offset so naive one-pass formulas would lose precision.
func seededData(_ n: Int, seed: UInt64, offset: Double = 1000, scale: Double = 5) -> [Double] {
    var rng = SplitMix64(seed: seed)
    return (0..<n).map { _ in offset + scale * (rng.nextUnit() * 2 - 1) }
}

func bruteMean(_ x: [Double]) -> Double { x.reduce(0, +) / Double(x.count) }
func bruteVariance(_ x: [Double]) -> Double {
    let m = bruteMean(x)
    return x.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Double(x.count - 1)
}

func relClose(_ a: Double, _ b: Double, _ tol: Double = 1e-9) -> Bool {
    if a == b { return true }
    return abs(a - b) <= tol * max(abs(a), abs(b))
}

@Suite("Moments")
struct MomentsTests {
    @Test(arguments: [UInt64(1), 2, 3, 99])
    func matchesTwoPassOnSeededData(seed: UInt64) {
        let x = seededData(10_000 + Int(seed), seed: seed)
        let m = Moments(of: x)
        #expect(m.count == Double(x.count))
        #expect(relClose(m.mean, bruteMean(x), 1e-12))
        #expect(relClose(m.variance, bruteVariance(x), 1e-9), "\(m.variance) vs \(bruteVariance(x))")
        #expect(relClose(m.standardDeviation, bruteVariance(x).squareRoot(), 1e-9))
        #expect(m.min == x.min())
        #expect(m.max == x.max())
        #expect(relClose(m.sum, x.reduce(0, +), 1e-12))
    }

    @Test func smallKnownValues() {
        let m = Moments(of: [2.0, 4, 4, 4, 5, 5, 7, 9])
        #expect(m.count == 8)
        #expect(m.mean == 5)
        #expect(m.m2 == 32)
        #expect(relClose(m.variance, 32.0 / 7.0, 1e-15))
        #expect(m.min == 2)
        #expect(m.max == 9)
        #expect(m.sum == 40)
    }

    @Test func emptyAndSingleValue() {
        let e = Moments()
        #expect(e.count == 0)
        #expect(e.variance.isNaN)
        #expect(Moments(of: [Double]()) == e)
        let one = Moments(of: [3.5])
        #expect(one.count == 1)
        #expect(one.mean == 3.5)
        #expect(one.variance.isNaN) // ddof = 1
        #expect(one.min == 3.5 && one.max == 3.5)
    }

    @Test func nanIsSkipped() {
        let clean: [Double] = [1, 2, 3, 4]
        let dirty: [Double] = [.nan, 1, 2, .nan, 3, 4, .nan]
        #expect(Moments(of: dirty) == Moments(of: clean))
        let allNaN = Moments(of: [Double.nan, .nan])
        #expect(allNaN.count == 0)
        #expect(!allNaN.mean.isNaN)
        #expect(!allNaN.sum.isNaN)
    }

    @Test func mergingWithEmptyIsIdentity() {
        let m = Moments(of: seededData(100, seed: 5))
        var a = m
        a.merge(Moments())
        #expect(a == m)
        var b = Moments()
        b.merge(m)
        #expect(b == m)
    }

    @Test(arguments: [UInt64(11), 12, 13, 14, 15])
    func mergingRandomSplitsInRandomOrdersMatchesWhole(seed: UInt64) {
        let x = seededData(5000, seed: seed)
        let whole = Moments(of: x)
        var rng = SplitMix64(seed: seed &* 7919)
        for _ in 0..<20 {
            // Random cut points into 1...30 chunks (some possibly empty).
            let cuts = (0..<Int(rng.next() % 30)).map { _ in Int(rng.next() % UInt64(x.count + 1)) }.sorted()
            let bounds = [0] + cuts + [x.count]
            var parts = zip(bounds, bounds.dropFirst()).map { Moments(of: x[$0..<$1]) }
            parts.shuffle(using: &rng)
            // Merge either left to right or as a random tree.
            if rng.next() % 2 == 0 {
                var acc = Moments()
                for p in parts { acc.merge(p) }
                check(acc, whole)
            } else {
                while parts.count > 1 {
                    let i = Int(rng.next() % UInt64(parts.count))
                    var a = parts.remove(at: i)
                    let j = Int(rng.next() % UInt64(parts.count))
                    a.merge(parts[j])
                    parts[j] = a
                }
                check(parts[0], whole)
            }
        }
    }

    func check(_ got: Moments, _ want: Moments, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(got.count == want.count, sourceLocation: sourceLocation)
        #expect(relClose(got.mean, want.mean), "mean \(got.mean) vs \(want.mean)", sourceLocation: sourceLocation)
        #expect(relClose(got.m2, want.m2), "m2 \(got.m2) vs \(want.m2)", sourceLocation: sourceLocation)
        #expect(relClose(got.variance, want.variance), sourceLocation: sourceLocation)
        #expect(relClose(got.sum, want.sum), sourceLocation: sourceLocation)
        #expect(got.min == want.min, sourceLocation: sourceLocation)
        #expect(got.max == want.max, sourceLocation: sourceLocation)
    }

    @Test func mergeOfTwoKnownHalves() {
        var a = Moments(of: [1.0, 2, 3])
        a.merge(Moments(of: [10.0, 20]))
        let w = Moments(of: [1.0, 2, 3, 10, 20])
        #expect(a.count == 5)
        #expect(relClose(a.mean, 7.2, 1e-15))
        #expect(relClose(a.m2, w.m2, 1e-12))
        #expect(a.min == 1 && a.max == 20 && a.sum == 36)
    }
}
