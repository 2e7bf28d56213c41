import Foundation
import Testing
@testable import TesseraCompute

/// The histogram kernel's bins, four rows at a time and one at a time, against numpy's rule
/// found by binary search over `linspace`'s edges, on the
/// values where a rounding slip would show: every edge, its neighbours one ulp either side,
/// the range's ends, NaN, infinities and values outside, with a random part of the rows kept.
struct HistogramBinsTests {
    static let specs: [(lo: Double, hi: Double, bins: Int)] = [
        (0, 1, 10), (0.1, 0.7, 6), (16, 24.3, 43), (20, 23, 30), (-1e6, 1e-3, 7),
        (1e15, 1e15 + 4096, 1000), (-3.7, -3.2, 1), (0, 1, 5000),   // 5000: counted in place, not in copies
    ]

    /// numpy's bin of `v` over `edges` (`linspace`, last bin closed; nil outside), by binary
    /// search.
    static func reference(_ v: Double, _ edges: [Double]) -> Int? {
        let n = edges.count - 1
        guard v >= edges[0] && v <= edges[n] else { return nil }
        if v == edges[n] { return n - 1 }
        var a = 0, b = n
        while b - a > 1 {
            let m = (a + b) / 2
            if edges[m] <= v { a = m } else { b = m }
        }
        return a
    }

    static func edges(_ lo: Double, _ hi: Double, _ bins: Int) -> [Double] {
        let step = (hi - lo) / Double(bins)
        return (0...bins).map { $0 == bins ? hi : Double($0) * step + lo }
    }

    static func values(_ lo: Double, _ hi: Double, _ bins: Int, using rng: inout SystemRandomNumberGenerator) -> [Double] {
        let step = (hi - lo) / Double(bins)
        var v: [Double] = [.nan, .infinity, -.infinity, lo, hi, lo.nextDown, hi.nextUp, lo.nextUp, hi.nextDown, lo - 1, hi + 1]
        for k in 0...bins {
            let e = k == bins ? hi : Double(k) * step + lo
            v += [e, e.nextUp, e.nextDown, e.nextUp.nextUp, e.nextDown.nextDown]
        }
        for _ in 0..<2_000 { v.append(Double.random(in: (lo - step)...(hi + step), using: &rng)) }
        v.shuffle(using: &rng)
        // Not a whole number of fours: the last rows go one at a time.
        return v + [hi, lo, .nan]
    }

    @Test func oneDimensionalBinsAreNumpys() {
        var rng = SystemRandomNumberGenerator()
        for s in Self.specs {
            let edges = Self.edges(s.lo, s.hi, s.bins)
            let xs = Self.values(s.lo, s.hi, s.bins, using: &rng)
            let keep = xs.map { _ in Int.random(in: 0..<4, using: &rng) > 0 }
            var want = [UInt64](repeating: 0, count: s.bins)
            for (x, k) in zip(xs, keep) where k {
                if let b = Self.reference(x, edges) { want[b] += 1 }
            }
            var got = [UInt64](repeating: 0, count: s.bins), noHits: [UInt32] = []
            ScanAccumulator.count(into: &got, hits: &noHits, rows: xs.count, keep: keep, xs: xs, xBins: Bins(count: s.bins, lo: s.lo, hi: s.hi))
            #expect(got == want, "\(s)")
            #expect(noHits.isEmpty)
            #expect(want.reduce(0, +) > 100)
            // With no counts (a piece of a histogram of many bins): the counted rows' bins,
            // after what was there.
            #expect(Self.countedAsHits(bins: s.bins, want) { empty, hits in
                ScanAccumulator.count(into: &empty, hits: &hits, rows: xs.count, keep: keep, xs: xs, xBins: Bins(count: s.bins, lo: s.lo, hi: s.hi))
            }, "\(s)")
            // Each value alone, four at a time and one at a time, so that a slip is named.
            let bins = Bins(count: s.bins, lo: s.lo, hi: s.hi)
            for x in xs {
                let reference = Self.reference(x, edges)
                let (b1, in1) = bins.slot(x)
                let (b4, in4) = bins.slots(SIMD4(repeating: x))
                #expect((in1 == 1 ? b1 : nil) == reference, "slot(\(x)) in \(s)")
                #expect((in4[2] == -1 ? Int(b4[2]) : nil) == reference, "slots(\(x)) in \(s)")
                #expect((0..<s.bins).contains(b1) && (0..<s.bins).contains(Int(b4[0])), "clamped bin of \(x) in \(s)")
            }
        }
    }

    @Test func twoDimensionalBinsAreNumpys() {
        var rng = SystemRandomNumberGenerator()
        let (x, y) = (Self.specs[2], Self.specs[1])
        var xs = Self.values(x.lo, x.hi, x.bins, using: &rng)
        var ys = Self.values(y.lo, y.hi, y.bins, using: &rng)
        let n = min(xs.count, ys.count)
        (xs, ys) = (Array(xs.prefix(n)), Array(ys.prefix(n)))
        let keep = xs.map { _ in Int.random(in: 0..<5, using: &rng) > 0 }
        let (xe, ye) = (Self.edges(x.lo, x.hi, x.bins), Self.edges(y.lo, y.hi, y.bins))
        var want = [UInt64](repeating: 0, count: x.bins * y.bins)
        for i in 0..<n where keep[i] {
            if let bx = Self.reference(xs[i], xe), let by = Self.reference(ys[i], ye) {
                want[bx * y.bins + by] += 1
            }
        }
        var got = [UInt64](repeating: 0, count: x.bins * y.bins), noHits: [UInt32] = []
        ScanAccumulator.count(into: &got, hits: &noHits, rows: n, keep: keep, xs: xs, xBins: Bins(count: x.bins, lo: x.lo, hi: x.hi),
                              ys: ys, yBins: Bins(count: y.bins, lo: y.lo, hi: y.hi))
        #expect(got == want)
        #expect(want.reduce(0, +) > 100)
        #expect(Self.countedAsHits(bins: x.bins * y.bins, want) { empty, hits in
            ScanAccumulator.count(into: &empty, hits: &hits, rows: n, keep: keep, xs: xs, xBins: Bins(count: x.bins, lo: x.lo, hi: x.hi),
                                  ys: ys, yBins: Bins(count: y.bins, lo: y.lo, hi: y.hi))
        })
    }

    /// Whether `count`, given no counts and hits holding one bin already, leaves the counts
    /// empty and appends bins that count up to `want`.
    static func countedAsHits(bins: Int, _ want: [UInt64], _ count: (inout [UInt64], inout [UInt32]) -> Void) -> Bool {
        var empty: [UInt64] = [], hits: [UInt32] = [UInt32(bins - 1)]
        count(&empty, &hits)
        var counts = [UInt64](repeating: 0, count: bins)
        for b in hits.dropFirst() { counts[Int(b)] += 1 }
        return empty.isEmpty && hits.first == UInt32(bins - 1) && counts == want
    }
}
