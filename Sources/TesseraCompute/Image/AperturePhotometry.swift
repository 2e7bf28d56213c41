import Foundation
import TesseraSky
import TesseraStorage

/// The exact area of a circle (centred at the origin) inside an axis-aligned rectangle, as
/// photutils' `method="exact"` weighs pixels.
///
/// With H(x, y) the signed area of the circle inside [0, x] × [0, y] (odd in each argument), the
/// rectangle's area is H(x1, y1) − H(x0, y1) − H(x1, y0) + H(x0, y0). For x, y ≥ 0, H is x·y when
/// the corner (x, y) is inside the circle; otherwise the strip left of where the circle crosses
/// y = Y, plus the integral of √(r² − t²) from there to x.
public enum CircleOverlap {
    @inline(__always) static func primitive(_ t: Double, _ r: Double) -> Double {
        0.5 * (t * max(0, r * r - t * t).squareRoot() + r * r * asin(min(1, t / r)))
    }

    @inline(__always) static func corner(_ x: Double, _ y: Double, _ r: Double) -> Double {
        corner(x, column(x, r), y, row(y, r), r)
    }

    /// What H(x, ·) takes from x alone: |x| capped at r, and the primitive there.
    @inline(__always) static func column(_ x: Double, _ r: Double) -> (capped: Double, primitive: Double) {
        let ax = min(abs(x), r)
        return (ax, primitive(ax, r))
    }

    /// What H(·, y) takes from y alone: |y| capped at r, where the circle crosses it, and the
    /// primitive there.
    @inline(__always) static func row(_ y: Double, _ r: Double) -> (capped: Double, crossing: Double, primitive: Double) {
        let ay = min(abs(y), r)
        let xa = max(0, r * r - ay * ay).squareRoot()
        return (ay, xa, primitive(xa, r))
    }

    /// H(x, y) from its column's and row's parts: an aperture's edge pixels share them along
    /// their pixel column and row, so its arcsines are two per column and row edge rather than
    /// up to four per corner.
    @inline(__always) static func corner(_ x: Double, _ c: (capped: Double, primitive: Double), _ y: Double,
                                         _ w: (capped: Double, crossing: Double, primitive: Double), _ r: Double) -> Double {
        let sign: Double = (x < 0) != (y < 0) ? -1 : 1
        if c.capped * c.capped + w.capped * w.capped <= r * r { return sign * c.capped * w.capped }
        return sign * (w.crossing * w.capped + c.primitive - w.primitive)
    }

    /// The area of the circle of radius `r` at the origin inside [x0, x1] × [y0, y1].
    public static func area(x0: Double, y0: Double, x1: Double, y1: Double, radius r: Double) -> Double {
        corner(x1, y1, r) - corner(x0, y1, r) - corner(x1, y0, r) + corner(x0, y0, r)
    }
}

/// Astropy's `SigmaClip` (median centre, standard deviation, symmetric bounds kept inclusive,
/// iterated until nothing changes or `maxIterations`), then the median of what is left.
public struct SigmaClippedMedian: Sendable, Equatable {
    public var sigma: Double
    public var maxIterations: Int

    public init(sigma: Double = 3, maxIterations: Int = 10) { (self.sigma, self.maxIterations) = (sigma, maxIterations) }

    /// The clipped median and how many values it kept (NaN values are dropped first). Sorts
    /// `values`; the kept ones are a run of them.
    ///
    /// Sorted once (an in-place quicksort: the library's stable merge sort was most of a forced
    /// measurement's time), each iteration's median is the middle of the kept run, its mean and
    /// spread one pass over it, and the clip moves the run's two ends.
    public func median(_ values: inout [Double]) -> (median: Double, kept: Int) {
        values.removeAll { $0.isNaN }
        return values.withUnsafeMutableBufferPointer { v -> (Double, Int) in
            Self.sort(v, 0, v.count - 1)
            return clipSorted(UnsafeBufferPointer(v))
        }
    }

    /// Working space for `median(float32:scratch:)`, kept by a caller measuring many rows so
    /// that each measurement allocates nothing.
    public struct Scratch: Sendable {
        /// The values (the annulus's pixels, gathered by
        /// ``ForcedPhotometry/measure(x:y:on:scratch:)``).
        var floats: [Float] = []
        /// The values bucket by bucket (`RankBuckets`), then room to sort one bucket.
        var window: [Float] = []
        /// Each value's bucket, and the buckets' counts and places (`RankBuckets`).
        var indices: [UInt8] = []
        var tables: [Int32] = []
        /// The annulus's runs of pixels, row by row (`ForcedPhotometry.ringRuns`).
        var runs: [SIMD4<Int32>] = []
        /// The aperture's pixel columns' parts of their corners (left edge, right edge).
        var columns: [(left: (capped: Double, primitive: Double), right: (capped: Double, primitive: Double))] = []
        public init() {}

        /// Room for `n` values.
        mutating func reserve(_ n: Int) {
            if floats.count < n + 1 { floats = [Float](repeating: 0, count: n + 1) }
            // The values bucket by bucket, then room for a bucket sorted by rank (at most
            // `rankedUpTo`), which the rank sort and the tallies also read up to seven values
            // into, past the last bucket (twice that and more: room to spare).
            let room = n + 2 * (RankBuckets.rankedUpTo + 8)
            if window.count < room { window = [Float](repeating: 0, count: room) }
            if indices.count < n + 8 { indices = [UInt8](repeating: 0, count: n + 8) }
            if tables.count < RankBuckets.tableRoom { tables = [Int32](repeating: 0, count: RankBuckets.tableRoom) }
        }
    }

    /// The same for image pixels (finite Float32 values, as an annulus gathers them), without
    /// sorting them: see `clipSelected`. The answer is that of `median(_:)` on the values as
    /// doubles, up to the order its sums are added in.
    public func median(float32 values: [Float], scratch: inout Scratch) -> (median: Double, kept: Int) {
        scratch.reserve(values.count)
        for (k, x) in values.enumerated() { scratch.floats[k] = x }
        return median(gathered: values.count, scratch: &scratch)
    }

    /// The same for the first `n` of `scratch.floats` (room reserved for them).
    func median(gathered n: Int, scratch: inout Scratch) -> (median: Double, kept: Int) {
        guard n > 0 else { return (.nan, 0) }
        // The buckets count and place values in 32 bits; more values than that are sorted.
        guard n < Int(Int32.max) else {
            var values = scratch.floats[0..<n].map(Double.init)
            return median(&values)
        }
        return scratch.floats.withUnsafeBufferPointer { f in
            scratch.window.withUnsafeMutableBufferPointer { w in
                scratch.indices.withUnsafeMutableBufferPointer { i in
                    scratch.tables.withUnsafeMutableBufferPointer { t in
                        clipSelected(UnsafeBufferPointer(rebasing: f[0..<n]), window: w, indices: i, tables: t)
                    }
                }
            }
        }
    }

    /// How many values lie below a bound, how many inside the bounds, and the inside ones'
    /// sums of offsets from a shift and of their squares.
    struct Tally {
        var below = 0, inside = 0, sum = 0.0, squares = 0.0
    }

    /// The clip and median of finite values in any order, as `clipSorted` has them, but with
    /// no sort of the whole (a sort of an annulus's ~650 pixels was half of a forced
    /// measurement's time).
    ///
    /// Each iteration keeps the values in a closed interval [low, high] (its bounds only ever
    /// tighten, as the sorted run's ends only move inwards), so the kept values are a run of
    /// ranks `below..<below + kept` in sorted order. The values are counted into buckets once
    /// (`RankBuckets`), stored bucket by bucket; a bound's bucket follows from the same
    /// arithmetic as a value's, so every value of a bucket below the low bound's is below it,
    /// and every value of a bucket between the bounds' buckets is kept. An iteration's counts
    /// and sums are then those of the whole buckets between (kept from the iteration before,
    /// less the buckets the bounds have passed, each summed once as it leaves) and of the two
    /// bounds' buckets, each some dozen values. The medians' ranks are read from the buckets, a
    /// bucket sorted when a median first falls in it.
    ///
    /// The sums are of offsets from a shift, a sample's middle, and summed again directly
    /// whenever the shift is over ten deviations from the kept values' mean (a difference of
    /// squares around a point d deviations off loses d² of its digits) or what left the whole
    /// buckets' sums is over 10⁴ times what stayed (the subtraction's rounding, relative to what
    /// stays). (Before: a pass over the values outside a core of the first median each
    /// iteration, and the values copied as doubles, a fifth of a measurement in all.)
    /// `window` has room for every value and twice `RankBuckets.rankedUpTo` and sixteen more (a
    /// bucket sorted by rank needs `rankedUpTo`, and the sorts and tallies read up to seven
    /// values past the last one);
    /// `indices` for every value and eight more; `tables` for `RankBuckets.tableRoom`.
    func clipSelected(_ floats: UnsafeBufferPointer<Float>, window: UnsafeMutableBufferPointer<Float>,
                      indices: UnsafeMutableBufferPointer<UInt8>, tables: UnsafeMutableBufferPointer<Int32>) -> (median: Double, kept: Int) {
        let n = floats.count
        guard n > 0, let w = window.baseAddress, let ix = indices.baseAddress, let tb = tables.baseAddress,
              window.count >= n + 2 * (RankBuckets.rankedUpTo + 8), indices.count >= n + 8,
              tables.count >= RankBuckets.tableRoom else { return (.nan, 0) }
        var ranks = RankBuckets(floats, values: w, sorting: w + n, indices: ix, tables: tb)
        let values = UnsafePointer(ranks.values), starts = ranks.starts
        var shift = ranks.estimate.middle.isFinite ? ranks.estimate.middle : 0
        // The sums over whole buckets fullLow...fullHigh, and the squares subtracted from them
        // since they were last summed directly (nil: not summed yet).
        var fullLow = 0, fullHigh = -1
        var full: Tally?
        var removed = 0.0
        func range(_ first: Int, _ last: Int) -> Tally {
            guard first <= last else { return Tally() }
            let s = Int(starts[first])
            return Self.tally(values + s, Int(starts[last + 1]) - s, -.infinity, .infinity, around: shift)
        }
        func tally(_ a: Double, _ b: Double) -> Tally {
            let ba = ranks.bucket(of: a), bb = ranks.bucket(of: b)
            let low = ba + 1, high = bb - 1
            if var f = full, low <= high {
                // Only inwards: the bounds only tighten.
                func drop(_ gone: Tally) {
                    f.inside -= gone.inside
                    f.sum -= gone.sum
                    f.squares -= gone.squares
                    removed += gone.squares
                }
                if low > fullLow { drop(range(fullLow, min(low, fullHigh + 1) - 1)) }
                if high < fullHigh { drop(range(max(high + 1, low, fullLow), fullHigh)) }
                full = removed > 1e4 * f.squares ? nil : f
            } else if low > high {
                full = Tally()
            }
            if full == nil {
                full = range(low, high)
                removed = 0
            }
            (fullLow, fullHigh) = (low, high)
            var t = full ?? Tally()
            t.below = Int(starts[ba])
            func add(_ edge: Int) {
                let s = Int(starts[edge])
                let e = Self.tally(values + s, Int(starts[edge + 1]) - s, a, b, around: shift)
                t.below += e.below
                t.inside += e.inside
                t.sum += e.sum
                t.squares += e.squares
            }
            add(ba)
            if bb != ba { add(bb) }
            return t
        }
        var low = -Double.infinity, high = Double.infinity
        var t = tally(low, high)
        func centre() -> Double {
            let middle = t.below + t.inside / 2
            if t.inside % 2 == 1 { return ranks.value(rank: middle) }
            return 0.5 * (ranks.value(rank: middle - 1) + ranks.value(rank: middle))
        }
        var iteration = 0
        while iteration < maxIterations, t.inside > 0 {
            iteration += 1
            let k = Double(t.inside)
            var offset = t.sum / k
            var ss = max(0, t.squares - t.sum * offset)
            if offset * offset > 100 * (ss / k) {
                // The shift is more than ten deviations from these values' mean (the sample it
                // came from hit outliers, as a hot column at its stride would, or the medians
                // moved far): the difference of squares would lose that square of its digits,
                // and a value within a billionth of a bound could land on the wrong side of it.
                // Sum again around the mean.
                shift += offset
                full = nil
                t = tally(low, high)
                offset = t.sum / k
                ss = max(0, t.squares - t.sum * offset)
            }
            let spread = (ss / k).squareRoot()
            let c = centre()
            let minimum = c - sigma * spread, maximum = c + sigma * spread
            // The run's ends move only inwards (and a NaN bound clips nothing).
            var newLow = low, newHigh = high
            if minimum > newLow { newLow = minimum }
            if maximum < newHigh { newHigh = maximum }
            if newLow == low, newHigh == high { break }
            let next = tally(newLow, newHigh)
            if next.inside == t.inside { break }
            (low, high, t) = (newLow, newHigh, next)
        }
        return t.inside > 0 ? (centre(), t.inside) : (.nan, 0)
    }

    /// Over `n` values from `base`: how many are below `a`, how many lie in [a, b], and for
    /// those, the sum of their offsets from `c` and of its squares (in running sums, as `sum`
    /// has them). Eight values at a time, the last eight read past the end (up to seven values
    /// there must be readable) with the lanes past it made NaN, which no comparison counts: a
    /// bound's bucket holds values on both sides of the bound, and one at a time the branches
    /// on them mispredicted.
    @inline(__always) static func tally(_ base: UnsafePointer<Float>, _ n: Int, _ a: Double, _ b: Double,
                                        around c: Double) -> Tally {
        let va = SIMD4<Double>(repeating: a), vb = SIMD4<Double>(repeating: b), shift = SIMD4<Double>(repeating: c)
        let zero = SIMD4<Double>(repeating: 0), none = SIMD4<Int64>(repeating: 0)
        var under = none, inside = none, s0 = zero, s1 = zero, q0 = zero, q1 = zero
        let lane = SIMD8<Int32>(0, 1, 2, 3, 4, 5, 6, 7), nan = SIMD8<UInt32>(repeating: Float.nan.bitPattern)
        var i = 0
        while i < n {
            var v = UnsafeRawPointer(base + i).loadUnaligned(as: SIMD8<Float>.self)
            if i &+ 8 > n {
                let keep = unsafeBitCast(lane .< SIMD8<Int32>(repeating: Int32(truncatingIfNeeded: n &- i)), to: SIMD8<UInt32>.self)
                v = unsafeBitCast((unsafeBitCast(v, to: SIMD8<UInt32>.self) & keep) | (nan & ~keep), to: SIMD8<Float>.self)
            }
            let x = SIMD4<Double>(v.lowHalf), y = SIMD4<Double>(v.highHalf)
            let xin = (x .>= va) .& (x .<= vb), yin = (y .>= va) .& (y .<= vb)
            // A mask's true lanes are −1.
            under &-= unsafeBitCast(x .< va, to: SIMD4<Int64>.self) &+ unsafeBitCast(y .< va, to: SIMD4<Int64>.self)
            inside &-= unsafeBitCast(xin, to: SIMD4<Int64>.self) &+ unsafeBitCast(yin, to: SIMD4<Int64>.self)
            // The offsets where inside, else 0, by the masks' bits.
            let dx = unsafeBitCast(unsafeBitCast(x - shift, to: SIMD4<Int64>.self) & unsafeBitCast(xin, to: SIMD4<Int64>.self), to: SIMD4<Double>.self)
            let dy = unsafeBitCast(unsafeBitCast(y - shift, to: SIMD4<Int64>.self) & unsafeBitCast(yin, to: SIMD4<Int64>.self), to: SIMD4<Double>.self)
            s0 += dx
            s1 += dy
            q0 += dx * dx
            q1 += dy * dy
            i &+= 8
        }
        return Tally(below: Int(under.wrappedSum()), inside: Int(inside.wrappedSum()), sum: (s0 + s1).sum(), squares: (q0 + q1).sum())
    }

    /// The values as a counting sort's first pass leaves them: counted into buckets of equal
    /// width around a sample's middle (and one below them all, one above), then stored bucket
    /// by bucket, so that every value of a bucket is at most every value of the next (the
    /// bucket of a value only grows with it). The ranks a median needs are then in a bucket of
    /// some dozens of values, sorted the first time one of them is asked for.
    ///
    /// (Before: a window of ranks found by counting passes over every value, gathered by
    /// another, and found again when the medians left it: 2.3 times a measurement, a fifth of
    /// its instructions.)
    struct RankBuckets {
        /// Inner buckets, over the sample's middle ± `reach` deviations (about ten values each
        /// at the middle of an annulus of 650), and the two outside them. 128 rather than 64:
        /// a sorted bucket costs the square of its size (2.5% fewer instructions in all; 224
        /// saved 0.1% more). At most 253, so that a bucket's index is a byte.
        static let inner = 128, reach = 3.0
        static let total = inner + 2
        /// Working space, in `Int32`s, for `starts`, the counting and which buckets are sorted.
        static let tableRoom = 6 * (total + 1)

        /// The values, bucket by bucket: bucket b is `values[starts[b]..<starts[b + 1]]`.
        let values: UnsafeMutablePointer<Float>
        let starts: UnsafeMutablePointer<Int32>
        /// Room for a bucket's values sorted by rank (`rankedUpTo`), just past `values` (a
        /// rank sort reads up to seven values past a bucket's end).
        let sorting: UnsafeMutablePointer<Float>
        /// Nonzero: bucket b is sorted.
        let sorted: UnsafeMutablePointer<Int32>
        /// The middle and spread of a sample of the values (where the buckets lie).
        let estimate: (middle: Double, spread: Double)
        /// The bucket of the rank last asked for.
        var recent = total / 2
        /// The inner buckets' low edge and their count per unit, as every lane of a vector.
        let lowEdge: SIMD8<Float>, scale: SIMD8<Float>

        /// Counts `floats` into buckets and stores them in `values` (room for all of them);
        /// `indices` has room for every value and eight more, `tables` for `tableRoom`.
        init(_ floats: UnsafeBufferPointer<Float>, values: UnsafeMutablePointer<Float>, sorting: UnsafeMutablePointer<Float>,
             indices: UnsafeMutablePointer<UInt8>, tables: UnsafeMutablePointer<Int32>) {
            (self.values, self.sorting) = (values, sorting)
            let n = floats.count
            let t = Self.total
            starts = tables
            sorted = tables + (t + 1) + 4 * t
            sorted.initialize(repeating: 0, count: t)
            guard let src = floats.baseAddress else {
                (estimate, lowEdge, scale) = ((.nan, .nan), .zero, .zero)
                return
            }
            // Fifteen values spread through the list (or all of fewer), sorted by rank. (Sorted
            // by insertion, with a division per place, they were a tenth of the buckets' time.)
            let m = min(n, 15)
            estimate = withUnsafeTemporaryAllocation(of: Float.self, capacity: 40) { s in
                guard let s = s.baseAddress else { return (.nan, .nan) }
                if m == 15 {
                    for k in 0..<15 { s[k] = src[k &* n / 15] }
                } else {
                    for k in 0..<m { s[k] = src[k] }
                }
                (s + m).initialize(repeating: 0, count: 24 - m)  // read past the sample by the rank sort
                Self.rankSort(s, m, into: s + 24)
                // The quartiles' distance, as a normal deviation.
                return (Double(s[m / 2]), (Double(s[(3 * m) / 4]) - Double(s[m / 4])) / 1.35)
            }
            // Any width keeps the buckets in order; a poor one only makes a bucket long (many
            // equal values: one bucket, sorted by the library's sort).
            let spread = estimate.spread > 0 && estimate.spread.isFinite ? estimate.spread : max(abs(estimate.middle) * 1e-6, 1e-30)
            let width = 2 * Self.reach * spread / Double(Self.inner)
            let low = Float(estimate.middle - Self.reach * spread)
            let scale = Float(1 / width)
            lowEdge = SIMD8<Float>(repeating: low.isFinite ? low : 0)
            self.scale = SIMD8<Float>(repeating: scale.isFinite ? scale : 0)
            var k = 0
            while k < n {
                var lane = SIMD8<Float>(repeating: 0)
                if k + 8 <= n {
                    lane = UnsafeRawPointer(src + k).loadUnaligned(as: SIMD8<Float>.self)
                } else {
                    // The last few; the other lanes' buckets are written past n and never read.
                    for j in 0..<(n - k) { lane[j] = src[k + j] }
                }
                let b = Self.buckets(of: lane, lowEdge: lowEdge, scale: self.scale)
                UnsafeMutableRawPointer(indices + k).storeBytes(of: SIMD8<UInt8>(truncatingIfNeeded: b), as: SIMD8<UInt8>.self)
                k &+= 8
            }
            // Counted in two tables, even and odd values, and stored through two sets of
            // places: each chain of increments is half as long.
            let even = tables + (t + 1), odd = even + t, evenAt = odd + t, oddAt = evenAt + t
            even.initialize(repeating: 0, count: 2 * t)
            // (Unchecked arithmetic on the places: i < n, far from overflowing.)
            var i = 0
            while i &+ 1 < n {
                even[Int(indices[i])] &+= 1
                odd[Int(indices[i &+ 1])] &+= 1
                i &+= 2
            }
            if i < n { even[Int(indices[i])] &+= 1 }
            starts[0] = 0
            for b in 0..<t {
                evenAt[b] = starts[b]
                oddAt[b] = starts[b] &+ even[b]
                starts[b + 1] = oddAt[b] &+ odd[b]
            }
            i = 0
            while i &+ 1 < n {
                let e = Int(indices[i]), o = Int(indices[i &+ 1])
                values[Int(evenAt[e])] = src[i]
                evenAt[e] &+= 1
                values[Int(oddAt[o])] = src[i &+ 1]
                oddAt[o] &+= 1
                i &+= 2
            }
            if i < n {
                let e = Int(indices[i])
                values[Int(evenAt[e])] = src[i]
            }
        }

        /// The buckets of eight values: (x − low)·scale held to [−1, inner], rounded, plus one,
        /// from the same Float32 arithmetic for every value (so it never decreases as x grows).
        @inline(__always) static func buckets(of lane: SIMD8<Float>, lowEdge: SIMD8<Float>, scale: SIMD8<Float>) -> SIMD8<Int32> {
            var f = (lane - lowEdge) * scale
            f = f.replacing(with: 0, where: f .!= f)
            f = f.replacing(with: -1, where: f .< -1).replacing(with: Float(inner), where: f .> Float(inner))
            // Rounded to an integer by adding 1.5·2²³ (its low bits are then the integer):
            // the library's conversion of a vector went lane by lane through generic code.
            let magic: Float = 12_582_912
            return unsafeBitCast(f + SIMD8<Float>(repeating: magic), to: SIMD8<Int32>.self) &- Int32(bitPattern: magic.bitPattern) &+ 1
        }

        /// The bucket a bound falls in, by the values' arithmetic: a value below the bound is in
        /// it or a bucket before (its Float32 is at most the bound's, rounded), a value above in
        /// it or a bucket after.
        func bucket(of bound: Double) -> Int {
            Int(Self.buckets(of: SIMD8<Float>(repeating: Float(bound)), lowEdge: lowEdge, scale: scale)[0])
        }

        /// The bucket holding rank `r`, found from the last one asked for: the medians move a
        /// few ranks an iteration. (A binary search each time was 3% of a measurement.)
        mutating func bucket(ofRank r: Int) -> Int {
            var b = recent
            while b > 0, Int(starts[b]) > r { b -= 1 }
            while b < Self.total - 1, Int(starts[b + 1]) <= r { b += 1 }
            recent = b
            return b
        }

        /// Values in bucket `b`.
        func size(_ b: Int) -> Int { Int(starts[b + 1] - starts[b]) }

        /// The value of rank `r` (0-based, ascending; below the number of values).
        mutating func value(rank r: Int) -> Double {
            let b = bucket(ofRank: r)
            if sorted[b] == 0 {
                sorted[b] = 1
                let start = Int(starts[b]), m = size(b)
                if m > Self.rankedUpTo {
                    var bucket = UnsafeMutableBufferPointer(start: values + start, count: m)
                    bucket.sort()
                } else if m > 1 {
                    Self.rankSort(values + start, m, into: sorting)
                }
            }
            return Double(values[r])
        }

        /// Buckets up to this long are sorted by counting, for each value, those less than it
        /// (no branch on the values: a quicksort's comparisons mispredicted half the time and
        /// were a third of a forced measurement's time); longer ones (an outer bucket, or many
        /// equal values) by the standard library's sort.
        static let rankedUpTo = 128

        /// Sorts `v[0..<m]` (m ≤ `rankedUpTo`) by rank: each value goes to the place of the
        /// count of values less than it, and the places of equal values after the first are
        /// filled from the left. Eight values' ranks at a time: each value of the bucket is
        /// compared with all eight at once, so no vector is summed across its lanes (a sum per
        /// value was two thirds of the sort). `v` is read up to seven values past `m` (lanes
        /// whose ranks are not used); `out` has room for `m`. The result is copied back.
        static func rankSort(_ v: UnsafeMutablePointer<Float>, _ m: Int, into out: UnsafeMutablePointer<Float>) {
            guard m > 1 else { return }
            for k in 0..<m { out[k] = .nan }
            var b = 0
            while b < m {
                let x = UnsafeRawPointer(v + b).loadUnaligned(as: SIMD8<Float>.self)
                // Two counts, each half of the values: each chain of additions is half as long.
                var less0 = SIMD8<Int32>(repeating: 0), less1 = less0
                var j = 0
                while j &+ 1 < m {
                    less0 &-= unsafeBitCast(SIMD8<Float>(repeating: v[j]) .< x, to: SIMD8<Int32>.self)
                    less1 &-= unsafeBitCast(SIMD8<Float>(repeating: v[j &+ 1]) .< x, to: SIMD8<Int32>.self)
                    j &+= 2
                }
                if j < m { less0 &-= unsafeBitCast(SIMD8<Float>(repeating: v[j]) .< x, to: SIMD8<Int32>.self) }
                let less = less0 &+ less1
                for l in 0..<min(8, m &- b) { out[Int(less[l])] = x[l] }
                b &+= 8
            }
            for k in 1..<m where out[k].isNaN { out[k] = out[k - 1] }
            v.update(from: out, count: m)
        }
    }

    /// The clip and median on values already sorted ascending (no NaN).
    func clipSorted(_ v: UnsafeBufferPointer<Double>) -> (median: Double, kept: Int) {
        var lo = 0, hi = v.count  // the kept values: v[lo..<hi]
        func median(_ a: Int, _ b: Int) -> Double {
            let n = b - a
            return n % 2 == 1 ? v[a + n / 2] : 0.5 * (v[a + n / 2 - 1] + v[a + n / 2])
        }
        var iteration = 0
        while iteration < maxIterations, hi > lo {
            iteration += 1
            let centre = median(lo, hi)
            let mean = Self.sum(v, lo, hi, around: 0, squared: false) / Double(hi - lo)
            let ss = Self.sum(v, lo, hi, around: mean, squared: true)
            let std = (ss / Double(hi - lo)).squareRoot()
            let minimum = centre - sigma * std, maximum = centre + sigma * std
            var a = lo, b = hi
            while a < b, v[a] < minimum { a += 1 }
            while b > a, v[b - 1] > maximum { b -= 1 }
            if a == lo, b == hi { break }
            (lo, hi) = (a, b)
        }
        return hi > lo ? (median(lo, hi), hi - lo) : (.nan, 0)
    }

    /// Σ v[i] − c (or its square) over lo..<hi, in sixteen running sums: one sum's chain of
    /// additions (four cycles each) was most of the clip's time (and with eight, still an eighth
    /// of a measurement's), and numpy sums pairwise rather than in order anyway, so neither
    /// order is its to the last bit.
    @inline(__always) static func sum(_ v: UnsafeBufferPointer<Double>, _ lo: Int, _ hi: Int, around c: Double, squared: Bool) -> Double {
        guard let base = v.baseAddress, hi > lo else { return 0 }
        var a = SIMD4<Double>(repeating: 0), b = a, d = a, e = a
        let shift = SIMD4<Double>(repeating: c)
        var i = lo
        while i + 16 <= hi {
            let p = UnsafeRawPointer(base + i)
            let w = p.loadUnaligned(as: SIMD4<Double>.self) - shift
            let x = p.loadUnaligned(fromByteOffset: 32, as: SIMD4<Double>.self) - shift
            let y = p.loadUnaligned(fromByteOffset: 64, as: SIMD4<Double>.self) - shift
            let z = p.loadUnaligned(fromByteOffset: 96, as: SIMD4<Double>.self) - shift
            if squared { a += w * w; b += x * x; d += y * y; e += z * z } else { a += w; b += x; d += y; e += z }
            i += 16
        }
        while i + 4 <= hi {
            let w = UnsafeRawPointer(base + i).loadUnaligned(as: SIMD4<Double>.self) - shift
            if squared { a += w * w } else { a += w }
            i += 4
        }
        var total = ((a + b) + (d + e)).sum()
        while i < hi {
            let x = base[i] - c
            total += squared ? x * x : x
            i += 1
        }
        return total
    }

    /// Sorts `v[lo...hi]` ascending in place: quicksort (median-of-three pivot, the smaller side
    /// first by recursion), insertion sort below 16 values. No NaN may be among them.
    static func sort(_ v: UnsafeMutableBufferPointer<Double>, _ lo: Int, _ hi: Int) {
        var lo = lo, hi = hi
        while hi - lo >= 16 {
            let mid = lo + (hi - lo) / 2
            if v[mid] < v[lo] { v.swapAt(mid, lo) }
            if v[hi] < v[lo] { v.swapAt(hi, lo) }
            if v[hi] < v[mid] { v.swapAt(hi, mid) }
            let pivot = v[mid]
            var i = lo, j = hi
            while i <= j {
                while v[i] < pivot { i += 1 }
                while v[j] > pivot { j -= 1 }
                if i <= j {
                    v.swapAt(i, j)
                    i += 1
                    j -= 1
                }
            }
            if j - lo < hi - i {
                sort(v, lo, j)
                lo = i
            } else {
                sort(v, i, hi)
                hi = j
            }
        }
        if hi > lo {
            for i in (lo + 1)...hi {
                let x = v[i]
                var k = i - 1
                while k >= lo, v[k] > x {
                    v[k + 1] = v[k]
                    k -= 1
                }
                v[k + 1] = x
            }
        }
    }
}

/// One forced measurement.
public struct ApertureMeasurement: Sendable, Equatable {
    /// Σ w·image over the aperture (w: the exact overlap of each pixel with the circle).
    public var sum: Double
    /// Σ w·variance (photutils' `aperture_sum_err` squared).
    public var sumVariance: Double
    /// Σ w: the aperture's area in pixels (less where pixels have no data).
    public var area: Double
    /// The sigma-clipped median of the annulus (per pixel), and the pixels it kept.
    public var background: Double
    public var backgroundPixels: Int
    /// The mean variance of the annulus pixels kept.
    public var backgroundPixelVariance: Double
    /// `ForcedPhotometry.Flag` bits.
    public var flags: Int32

    /// The background-subtracted flux.
    public var flux: Double { sum - area * background }

    /// Its error: the aperture's variance plus the background's. A median of n values with
    /// Gaussian noise σ has variance (π/2)·σ²/n; the aperture subtracts it `area` times.
    public var fluxError: Double {
        (sumVariance + area * area * (Double.pi / 2) * backgroundPixelVariance / Double(max(backgroundPixels, 1))).squareRoot()
    }
}

/// How a plane's 4-byte pixels are stored: as this machine's numbers (a cutout's arrays) or
/// big-endian (a FITS file's planes, read in place through its mapping).
public protocol PixelByteOrder {
    static func host(_ bits: UInt32) -> UInt32
    static func host(_ bits: SIMD4<UInt32>) -> SIMD4<UInt32>
}

/// Pixels stored as this machine's numbers.
public enum HostByteOrder: PixelByteOrder {
    @inline(__always) public static func host(_ bits: UInt32) -> UInt32 { bits }
    @inline(__always) public static func host(_ bits: SIMD4<UInt32>) -> SIMD4<UInt32> { bits }
}

/// Pixels stored big-endian, as FITS stores them.
public enum BigEndianByteOrder: PixelByteOrder {
    @inline(__always) public static func host(_ bits: UInt32) -> UInt32 { UInt32(bigEndian: bits) }
    @inline(__always) public static func host(_ bits: SIMD4<UInt32>) -> SIMD4<UInt32> {
        #if _endian(little)
        return (bits &<< 24) | ((bits & 0xFF00) &<< 8) | ((bits &>> 8) & 0xFF00) | (bits &>> 24)
        #else
        return bits
        #endif
    }
}

/// An image's three planes over a box of its grid, row by row (`box.width` pixels a row), read
/// where they lie: a cutout's arrays, or a patch file's mapped planes (no copy per measurement).
/// The pointers must stay valid while the planes are used.
public struct PixelPlanes<Order: PixelByteOrder> {
    public let image: UnsafeRawPointer, variance: UnsafeRawPointer, mask: UnsafeRawPointer
    /// The grid pixels the planes hold.
    public let box: PixelBox

    public init(image: UnsafeRawPointer, variance: UnsafeRawPointer, mask: UnsafeRawPointer, box: PixelBox) {
        (self.image, self.variance, self.mask, self.box) = (image, variance, mask, box)
    }

    @inline(__always) func bits(_ plane: UnsafeRawPointer, _ k: Int) -> UInt32 {
        Order.host(plane.loadUnaligned(fromByteOffset: 4 * k, as: UInt32.self))
    }
    @inline(__always) func bits4(_ plane: UnsafeRawPointer, _ k: Int) -> SIMD4<UInt32> {
        Order.host(plane.loadUnaligned(fromByteOffset: 4 * k, as: SIMD4<UInt32>.self))
    }
    /// The pixel at offset `k` (row-major in `box`).
    @inline(__always) func image(_ k: Int) -> Float { Float(bitPattern: bits(image, k)) }
    @inline(__always) func variance(_ k: Int) -> Float { Float(bitPattern: bits(variance, k)) }
    @inline(__always) func mask(_ k: Int) -> Int32 { Int32(bitPattern: bits(mask, k)) }
}

/// Forced aperture photometry at given positions: an exact circular aperture, the local
/// background from an annulus (sigma-clipped median), and errors from the variance plane.
/// Radii are in pixels; positions are 0-based pixel coordinates of the stamp's grid.
public struct ForcedPhotometry: Sendable, Equatable {
    public enum Flag {
        /// The position has no image (outside coverage): the flux is NaN.
        public static let noCoverage: Int32 = 1 << 0
        /// Part of the aperture has no data, or is masked bad or saturated.
        public static let apertureIncomplete: Int32 = 1 << 1
        /// The annulus kept too few pixels for a background (fewer than 10).
        public static let backgroundUnreliable: Int32 = 1 << 2
        /// The position is on no patch of the dataset (a catalog row outside the images).
        public static let outsideImages: Int32 = 1 << 3
    }

    public var apertureRadius: Double
    public var annulusInner: Double
    public var annulusOuter: Double
    public var clip: SigmaClippedMedian

    public init(apertureRadius: Double, annulusInner: Double, annulusOuter: Double, clip: SigmaClippedMedian = SigmaClippedMedian()) {
        (self.apertureRadius, self.annulusInner, self.annulusOuter, self.clip) = (apertureRadius, annulusInner, annulusOuter, clip)
    }

    /// The default annulus for an aperture of radius r: from 2r to 3.5r.
    public init(apertureRadius r: Double) {
        self.init(apertureRadius: r, annulusInner: 2 * r, annulusOuter: 3.5 * r)
    }

    /// The pixels a measurement at (x, y) reads.
    public func stampBox(x: Double, y: Double) -> PixelBox {
        let r = max(apertureRadius, annulusOuter) + 1
        let x0 = Int((x - r).rounded(.down)), y0 = Int((y - r).rounded(.down))
        return PixelBox(x0: x0, y0: y0, width: Int((x + r).rounded(.up)) - x0 + 1, height: Int((y + r).rounded(.up)) - y0 + 1)
    }

    /// Measures at (x, y) on `stamp` (a cutout of the grid holding at least `stampBox(x:y:)`).
    public func measure(x: Double, y: Double, on stamp: ImageCutout) -> ApertureMeasurement {
        var scratch = SigmaClippedMedian.Scratch()
        return measure(x: x, y: y, on: stamp, scratch: &scratch)
    }

    /// The same, with working space for the annulus's median kept by the caller between
    /// measurements.
    public func measure(x: Double, y: Double, on stamp: ImageCutout, scratch: inout SigmaClippedMedian.Scratch) -> ApertureMeasurement {
        // (An empty cutout's arrays have no storage: one value stands in, never read.)
        let none: [Float] = [0]
        return stamp.image.withUnsafeBytes { image in
            stamp.variance.withUnsafeBytes { variance in
                stamp.mask.withUnsafeBytes { mask in
                    none.withUnsafeBytes { none in
                        let planes = PixelPlanes<HostByteOrder>(image: image.baseAddress ?? none.baseAddress!, variance: variance.baseAddress ?? none.baseAddress!,
                                                                mask: mask.baseAddress ?? none.baseAddress!, box: stamp.box)
                        return measure(x: x, y: y, in: planes, scratch: &scratch)
                    }
                }
            }
        }
    }

    /// Measures at (x, y) on `planes`, pixels outside their box counting as missing.
    public func measure<Order>(x: Double, y: Double, in planes: PixelPlanes<Order>, scratch: inout SigmaClippedMedian.Scratch) -> ApertureMeasurement {
        var m = ApertureMeasurement(sum: 0, sumVariance: 0, area: 0, background: .nan, backgroundPixels: 0,
                                    backgroundPixelVariance: .nan, flags: 0)
        let box = planes.box
        let w = box.width
        let bad = ImageMask.noData | ImageMask.bad | ImageMask.saturated
        let r = apertureRadius
        // The aperture: every pixel whose square meets the circle, weighted by the overlap.
        let ax0 = max(box.x0, Int((x - r - 0.5).rounded(.down))), ax1 = min(box.x1 - 1, Int((x + r + 0.5).rounded(.up)))
        let ay0 = max(box.y0, Int((y - r - 0.5).rounded(.down))), ay1 = min(box.y1 - 1, Int((y + r + 0.5).rounded(.up)))
        if ax0 > Int((x - r - 0.5).rounded(.down)) || ay0 > Int((y - r - 0.5).rounded(.down))
            || ax1 < Int((x + r + 0.5).rounded(.up)) || ay1 < Int((y + r + 0.5).rounded(.up)) {
            m.flags |= Flag.apertureIncomplete
        }
        if ax0 <= ax1, ay0 <= ay1 {
            // The corners' parts from each pixel column's two x edges and each row's two y edges.
            var columns = scratch.columns
            scratch.columns = []   // one owner, so appending does not copy
            columns.removeAll(keepingCapacity: true)
            // A column's right edge is the next one's left, and a row's top edge the next one's
            // bottom: each edge's arcsine is taken once.
            var left = CircleOverlap.column(Double(ax0) - x - 0.5, r)
            for i in ax0...ax1 {
                let right = CircleOverlap.column(Double(i) - x + 0.5, r)
                columns.append((left, right))
                left = right
            }
            defer { scratch.columns = columns }
            var top: (row: Int, parts: (capped: Double, crossing: Double, primitive: Double))?
            let r2 = r * r, nearest = Int(x.rounded())
            // The sums in variables of their own, which stay in registers (as the measurement's
            // fields they went through memory on every pixel).
            var sum = 0.0, sumVariance = 0.0, area = 0.0, incomplete = false
            for j in ay0...ay1 {
                let dy = Double(j) - y
                var rows: (below: (capped: Double, crossing: Double, primitive: Double), above: (capped: Double, crossing: Double, primitive: Double))?
                defer { if let rows { top = (j, rows.above) } }
                // Along a row the pixels touching the circle (their nearest point inside it) are
                // a run around the pixel nearest the centre, and those wholly inside it (their
                // farthest corner) a run within that: their ends from the square roots'
                // estimates, moved until exact. Only the pixels between the two runs' ends need
                // the exact formula. (Classifying every pixel of the box was a tenth of a
                // measurement.)
                let ny = max(0, abs(dy) - 0.5), fy = abs(dy) + 0.5
                guard ny * ny < r2 else { continue }
                let touches = { (i: Int) -> Bool in
                    let nx = max(0, abs(Double(i) - x) - 0.5)
                    return nx * nx + ny * ny < r2
                }
                let inside = { (i: Int) -> Bool in
                    let fx = abs(Double(i) - x) + 0.5
                    return fx * fx + fy * fy <= r2
                }
                let reach = (r2 - ny * ny).squareRoot() + 0.5
                var first = min(nearest, Int((x - reach).rounded(.down))), last = max(nearest, Int((x + reach).rounded(.up)))
                while !touches(first) { first += 1 }
                while touches(first - 1) { first -= 1 }
                while !touches(last) { last -= 1 }
                while touches(last + 1) { last += 1 }
                // The run wholly inside: empty (first > last) unless the nearest pixel is.
                var innerFirst = nearest + 1, innerLast = nearest
                if fy * fy <= r2, inside(nearest) {
                    let inward = (r2 - fy * fy).squareRoot() - 0.5
                    innerFirst = min(nearest, Int((x - inward).rounded(.up)))
                    innerLast = max(nearest, Int((x + inward).rounded(.down)))
                    while !inside(innerFirst) { innerFirst += 1 }
                    while inside(innerFirst - 1) { innerFirst -= 1 }
                    while !inside(innerLast) { innerLast -= 1 }
                    while inside(innerLast + 1) { innerLast += 1 }
                }
                let (lo, hi) = (max(first, ax0), min(last, ax1))
                guard lo <= hi else { continue }
                // The pixels wholly inside, summed four at a time (one by one, checked, when one
                // of them is masked or not finite).
                let (insideLo, insideHi) = (max(innerFirst, lo), min(innerLast, hi))
                var i = lo
                while i <= hi {
                    if i == insideLo, insideLo <= insideHi {
                        if let run = Self.sumRun(planes, from: (j - box.y0) * w + (i - box.x0), count: insideHi - insideLo + 1, bad: bad) {
                            sum += run.image
                            sumVariance += run.variance
                            area += Double(insideHi - insideLo + 1)
                            i = insideHi &+ 1
                            continue
                        }
                    }
                    defer { i &+= 1 }
                    let dx = Double(i) - x
                    let weight: Double
                    if i >= insideLo, i <= insideHi {
                        weight = 1
                    } else {
                        // CircleOverlap.area, term for term.
                        let (x0, x1, y0, y1) = (dx - 0.5, dx + 0.5, dy - 0.5, dy + 0.5)
                        let rw = rows ?? (top.flatMap { $0.row == j - 1 ? $0.parts : nil } ?? CircleOverlap.row(y0, r), CircleOverlap.row(y1, r))
                        rows = rw
                        let (left, right) = columns[i - ax0]
                        let c11 = CircleOverlap.corner(x1, right, y1, rw.above, r), c01 = CircleOverlap.corner(x0, left, y1, rw.above, r)
                        let c10 = CircleOverlap.corner(x1, right, y0, rw.below, r), c00 = CircleOverlap.corner(x0, left, y0, rw.below, r)
                        weight = c11 - c01 - c10 + c00
                    }
                    guard weight > 0 else { continue }
                    let k = (j - box.y0) * w + (i - box.x0)
                    let v = Double(planes.image(k)), s2 = Double(planes.variance(k))
                    if planes.mask(k) & bad != 0 || !v.isFinite || !s2.isFinite {
                        incomplete = true
                        continue
                    }
                    sum += weight * v
                    sumVariance += weight * s2
                    area += weight
                }
            }
            (m.sum, m.sumVariance, m.area) = (sum, sumVariance, area)
            if incomplete { m.flags |= Flag.apertureIncomplete }
        }
        if m.area == 0 {
            m.flags |= Flag.noCoverage
            m.sum = .nan
            m.sumVariance = .nan
        }
        // The annulus: pixels whose centres lie at r_in ≤ d < r_out (photutils' "center" method).
        let ro = annulusOuter, ri2 = annulusInner * annulusInner, ro2 = ro * ro
        let bx0 = max(box.x0, Int((x - ro).rounded(.down))), bx1 = min(box.x1 - 1, Int((x + ro).rounded(.up)))
        let by0 = max(box.y0, Int((y - ro).rounded(.down))), by1 = min(box.y1 - 1, Int((y + ro).rounded(.up)))
        scratch.reserve(max(0, bx1 - bx0 + 1) * max(0, by1 - by0 + 1))
        var ring = RingPixels()
        if bx0 <= bx1, by0 <= by1 {
            if scratch.runs.count < by1 - by0 + 5 { scratch.runs = [SIMD4<Int32>](repeating: .zero, count: by1 - by0 + 5) }
            ring = scratch.floats.withUnsafeMutableBufferPointer { ring in
                scratch.runs.withUnsafeMutableBufferPointer { runs in
                    Self.ringRuns(x: x, y: y, inner2: ri2, outer2: ro2, columns: bx0...bx1, from: box.x0, rows: by0...by1, into: runs.baseAddress!)
                    return Self.gatherRing(planes, runs: UnsafePointer(runs.baseAddress!), rows: by0...by1, bad: bad, into: ring.baseAddress!)
                }
            }
        }
        let (median, kept) = clip.median(gathered: ring.count, scratch: &scratch)
        m.background = median
        m.backgroundPixels = kept
        // The annulus's noise per pixel: its mean variance (clipping drops outliers in value, not
        // pixels of another noise level).
        if ring.variancePixels > 0 {
            m.backgroundPixelVariance = ring.variance / Double(ring.variancePixels)
        }
        if kept < 10 {
            m.flags |= Flag.backgroundUnreliable
            if kept == 0 { m.background = 0 }
        }
        return m
    }

    /// The sums of `count` pixels' images and variances from offset `start`, four at a time;
    /// nil if one is masked `bad` or has an image or variance not finite.
    @inline(__always) static func sumRun<Order>(_ planes: PixelPlanes<Order>, from start: Int, count: Int, bad: Int32) -> (image: Double, variance: Double)? {
        var image = SIMD4<Double>(repeating: 0), variance = image, flags = SIMD4<UInt32>(repeating: 0), finite = SIMD4<Float>(repeating: 0)
        var q = 0
        while q &+ 4 <= count {
            let v = unsafeBitCast(planes.bits4(planes.image, start &+ q), to: SIMD4<Float>.self)
            let s2 = unsafeBitCast(planes.bits4(planes.variance, start &+ q), to: SIMD4<Float>.self)
            image += SIMD4<Double>(v)
            variance += SIMD4<Double>(s2)
            flags |= planes.bits4(planes.mask, start &+ q)
            finite += v - v + s2 - s2   // NaN from a NaN or an infinity
            q &+= 4
        }
        var total = (image.sum(), variance.sum())
        var anyFlags = flags[0] | flags[1] | flags[2] | flags[3], check = finite.sum()
        while q < count {
            let v = planes.image(start &+ q), s2 = planes.variance(start &+ q)
            total.0 += Double(v)
            total.1 += Double(s2)
            anyFlags |= UInt32(bitPattern: planes.mask(start &+ q))
            check += v - v + s2 - s2
            q &+= 1
        }
        guard Int32(bitPattern: anyFlags) & bad == 0, !check.isNaN else { return nil }
        return total
    }

    /// The annulus's pixels, the runs `ringRuns` found for `rows`, into `out`, less those masked
    /// `bad` or whose image is not finite (photutils leaves out only those), and the mean of
    /// their finite variances. Its own function, its running counts its own variables:
    /// captured by a nested function in a generic one, they were checked for exclusive access
    /// at run time on every use.
    static func gatherRing<Order>(_ planes: PixelPlanes<Order>, runs: UnsafePointer<SIMD4<Int32>>, rows: ClosedRange<Int>, bad: Int32,
                                  into out: UnsafeMutablePointer<Float>) -> RingPixels {
        if let fast = copyRing(planes, runs: runs, rows: rows, into: out, bad: bad) { return fast }
        let box = planes.box
        var ring = RingPixels()
        for j in rows {
            let parts = runs[j - rows.lowerBound]
            let base = (j - box.y0) * box.width
            for part in 0..<2 where parts[2 * part] <= parts[2 * part + 1] {
                for k in (base + Int(parts[2 * part]))...(base + Int(parts[2 * part + 1])) {
                    let v = planes.image(k)
                    guard planes.mask(k) & bad == 0, v.isFinite else { continue }
                    out[ring.count] = v
                    ring.count &+= 1
                    let s2 = planes.variance(k)
                    if s2.isFinite {
                        ring.variance += Double(s2)
                        ring.variancePixels &+= 1
                    }
                }
            }
        }
        return ring
    }

    /// What `gatherRing` gathered: how many pixels, and the sum of the finite variances among
    /// them and how many.
    struct RingPixels {
        var count = 0, variance = 0.0, variancePixels = 0
    }

    /// Each row's pixels in the ring (centres at inner ≤ d < outer, squared distances given,
    /// from (x, y)), within `columns`: one run or two, as (first, last, first, last) counted
    /// from column `origin` (the columns must lie within 2³¹ of it), a run with last < first
    /// empty, into `runs` (room for every row). Along a row the pixels with d² < r² are a run
    /// around the nearest one (d² grows with |i − x|), whose first pixel is one of three around
    /// x − √(r² − dy²) and last one of three around x + √(r² − dy²) (the square root's rounding
    /// is far below a pixel): the right ones found by the test itself. Row by row, in scalars:
    /// the candidates' tests nearly always go the same way, so their branches are predicted.
    /// (A loop per row moving each end until exact was a tenth of a measurement; four rows at
    /// a time in vectors, the lanes' square roots and masks went back and forth between
    /// vector and scalar registers, and with AVX-512 through mask registers lane by lane, half
    /// as slow again.)
    static func ringRuns(x: Double, y: Double, inner2 ri2: Double, outer2 ro2: Double, columns: ClosedRange<Int>, from origin: Int,
                         rows: ClosedRange<Int>, into runs: UnsafeMutablePointer<SIMD4<Int32>>) {
        let nearest = x.rounded(), dn = nearest - x
        let c0 = Double(columns.lowerBound), c1 = Double(columns.upperBound), o = Double(origin)
        var k = 0
        for j in rows {
            let dy = Double(j) - y, dy2 = dy * dy
            /// The run of pixels with d² < r² along this row, nil when even the nearest is out.
            @inline(__always) func run(_ r2: Double) -> (first: Double, last: Double)? {
                guard dn * dn + dy2 < r2 else { return nil }
                @inline(__always) func inside(_ i: Double) -> Bool {
                    let dx = i - x
                    return dx * dx + dy2 < r2
                }
                let reach = (r2 - dy2).squareRoot()   // r2 > dy2 here
                let l = (x - reach).rounded(.down), h = (x + reach).rounded(.up)
                return (inside(l) ? l : inside(l + 1) ? l + 1 : l + 2, inside(h) ? h : inside(h - 1) ? h - 1 : h - 2)
            }
            // Within the columns, counted from `origin`; an empty run is (1, 0).
            @inline(__always) func part(_ first: Double, _ last: Double) -> (Int32, Int32) {
                let a = max(first, c0), b = min(last, c1)
                return a <= b ? (Int32(truncatingIfNeeded: Int(a - o)), Int32(truncatingIfNeeded: Int(b - o))) : (1, 0)
            }
            var left: (Int32, Int32) = (1, 0), right: (Int32, Int32) = (1, 0)
            if let outer = run(ro2) {
                if let hole = run(ri2) {
                    left = part(outer.first, hole.first - 1)
                    right = part(hole.last + 1, outer.last)
                } else {
                    left = part(outer.first, outer.last)
                }
            }
            runs[k] = SIMD4<Int32>(left.0, left.1, right.0, right.1)
            k &+= 1
        }
    }

    /// `gatherRing` when no pixel of the ring is masked `bad` or has an image or variance not
    /// finite (nearly always): the
    /// runs copied four at a time (a run's last few by a vector ending at its end, its lanes
    /// already copied left out of the sums), the checks and sums kept in vectors across all the
    /// runs and looked at once. Nil when some pixel must be left out.
    static func copyRing<Order>(_ planes: PixelPlanes<Order>, runs: UnsafePointer<SIMD4<Int32>>, rows: ClosedRange<Int>,
                                into out: UnsafeMutablePointer<Float>, bad: Int32) -> RingPixels? {
        let box = planes.box
        var gathered = 0
        var sums = SIMD4<Double>(repeating: 0), flags = SIMD4<UInt32>(repeating: 0), finite = SIMD4<Float>(repeating: 0)
        let lane = SIMD4<Int32>(0, 1, 2, 3), wide = SIMD4<Int64>(0, 1, 2, 3)
        for j in rows {
            let parts = SIMD4<Int>(truncatingIfNeeded: runs[j - rows.lowerBound])
            let base = (j - box.y0) * box.width
            for part in 0..<2 where parts[2 * part] <= parts[2 * part + 1] {
                let (lo, hi) = (parts[2 * part], parts[2 * part + 1])
                let start = base + lo, count = hi - lo + 1, to = out + gathered
                if count < 4 {
                    for q in 0..<count {
                        let v = planes.image(start + q)
                        to[q] = v
                        let s2 = planes.variance(start + q)
                        sums[0] += Double(s2)
                        finite[0] += s2 - s2
                        flags[0] |= UInt32(bitPattern: planes.mask(start + q))
                        finite[0] += v - v
                    }
                } else {
                    var q = 0
                    while q &+ 4 <= count {
                        let v = unsafeBitCast(planes.bits4(planes.image, start + q), to: SIMD4<Float>.self)
                        UnsafeMutableRawPointer(to + q).storeBytes(of: v, as: SIMD4<Float>.self)
                        let s2 = unsafeBitCast(planes.bits4(planes.variance, start + q), to: SIMD4<Float>.self)
                        sums += SIMD4<Double>(s2)
                        flags |= planes.bits4(planes.mask, start + q)
                        finite += v - v + s2 - s2   // NaN from a NaN or an infinity
                        q &+= 4
                    }
                    if q < count {
                        // The last vector ends at the run's end; its lanes before `q` were copied.
                        let at = count - 4
                        let keep = lane .>= SIMD4<Int32>(repeating: Int32(q - at)), keepWide = wide .>= SIMD4<Int64>(repeating: Int64(q - at))
                        let v = unsafeBitCast(planes.bits4(planes.image, start + at), to: SIMD4<Float>.self)
                        UnsafeMutableRawPointer(to + at).storeBytes(of: v, as: SIMD4<Float>.self)
                        let s2 = unsafeBitCast(planes.bits4(planes.variance, start + at), to: SIMD4<Float>.self)
                        sums += SIMD4<Double>(s2).replacing(with: 0, where: .!keepWide)
                        flags |= planes.bits4(planes.mask, start + at).replacing(with: 0, where: .!keep)
                        finite += (v - v + s2 - s2).replacing(with: 0, where: .!keep)
                    }
                }
                gathered &+= count
            }
        }
        let anyFlags = Int32(bitPattern: flags[0] | flags[1] | flags[2] | flags[3])
        guard anyFlags & bad == 0, !finite.sum().isNaN else { return nil }
        return RingPixels(count: gathered, variance: sums.sum(), variancePixels: gathered)
    }

}
