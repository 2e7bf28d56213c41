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
        let sign: Double = (x < 0) != (y < 0) ? -1 : 1
        let ax = min(abs(x), r), ay = min(abs(y), r)
        if ax * ax + ay * ay <= r * r { return sign * ax * ay }
        let xa = max(0, r * r - ay * ay).squareRoot()
        return sign * (xa * ay + primitive(ax, r) - primitive(xa, r))
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
    /// that each measurement allocates nothing for its sort.
    public struct Scratch: Sendable {
        var keys: [UInt32] = []
        var sorted: [Double] = []
        /// The annulus's pixels (``ForcedPhotometry/measure(x:y:on:scratch:)``).
        var ring: [Float] = []
        public init() {}
    }

    /// The same for image pixels (finite Float32 values, as an annulus gathers them), sorted by
    /// a radix sort of their bits, which costs a few passes over them instead of a quicksort's
    /// unpredictable comparisons (most of a forced measurement's time). The answer is the same
    /// as `median(_:)` on the values as doubles: the order is the same, and the arithmetic is
    /// done in doubles on the sorted run.
    public func median(float32 values: [Float], scratch: inout Scratch) -> (median: Double, kept: Int) {
        let n = values.count
        guard n > 0 else { return (.nan, 0) }
        if scratch.keys.count < 2 * n { scratch.keys = [UInt32](repeating: 0, count: 2 * n) }
        if scratch.sorted.count < n { scratch.sorted = [Double](repeating: 0, count: n) }
        return scratch.keys.withUnsafeMutableBufferPointer { space in
            let keys = UnsafeMutableBufferPointer(rebasing: space[0..<n]), other = UnsafeMutableBufferPointer(rebasing: space[n..<(2 * n)])
            Self.radixSort(values, keys: keys, other: other)
            return scratch.sorted.withUnsafeMutableBufferPointer { out in
                for k in 0..<n { out[k] = Double(Self.float(fromKey: keys[k])) }
                return clipSorted(UnsafeBufferPointer(rebasing: out[0..<n]))
            }
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

    /// A Float32's bits as an unsigned key that orders as the values do (negative values
    /// reversed, the sign bit flipped), and back.
    @inline(__always) static func key(_ f: Float) -> UInt32 {
        let b = f.bitPattern
        return b & 0x8000_0000 != 0 ? ~b : b | 0x8000_0000
    }

    @inline(__always) static func float(fromKey k: UInt32) -> Float {
        Float(bitPattern: k & 0x8000_0000 != 0 ? k & 0x7FFF_FFFF : ~k)
    }

    /// Sorts the values' keys into `keys` (least significant byte first, four stable counting
    /// passes; a byte every key shares is skipped, as the sign and exponent byte of an image's
    /// pixels mostly is). `other` is as long as `keys`.
    static func radixSort(_ values: [Float], keys: UnsafeMutableBufferPointer<UInt32>, other: UnsafeMutableBufferPointer<UInt32>) {
        let n = keys.count
        for k in 0..<n { keys[k] = key(values[k]) }
        withUnsafeTemporaryAllocation(of: Int32.self, capacity: 4 * 256) { counts in
            counts.initialize(repeating: 0)
            for k in 0..<n {
                let x = keys[k]
                counts[Int(x & 0xFF)] += 1
                counts[256 + Int((x >> 8) & 0xFF)] += 1
                counts[512 + Int((x >> 16) & 0xFF)] += 1
                counts[768 + Int(x >> 24)] += 1
            }
            var source = keys, target = other
            for pass in 0..<4 {
                let base = pass * 256, shift = UInt32(pass * 8)
                // Every key has this byte: the pass would not move anything.
                if counts[base + Int((source[0] >> shift) & 0xFF)] == Int32(n) { continue }
                var offset: Int32 = 0
                for b in 0..<256 {
                    let c = counts[base + b]
                    counts[base + b] = offset
                    offset += c
                }
                for k in 0..<n {
                    let x = source[k]
                    let b = base + Int((x >> shift) & 0xFF)
                    target[Int(counts[b])] = x
                    counts[b] += 1
                }
                swap(&source, &target)
            }
            if source.baseAddress != keys.baseAddress {
                for k in 0..<n { keys[k] = source[k] }
            }
        }
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

    /// The same, with working space for the annulus's sort kept by the caller between
    /// measurements.
    public func measure(x: Double, y: Double, on stamp: ImageCutout, scratch: inout SigmaClippedMedian.Scratch) -> ApertureMeasurement {
        var m = ApertureMeasurement(sum: 0, sumVariance: 0, area: 0, background: .nan, backgroundPixels: 0,
                                    backgroundPixelVariance: .nan, flags: 0)
        let box = stamp.box
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
            for j in ay0...ay1 {
                let dy = Double(j) - y
                // The last edge pixel's right-hand corners: the next pixel's left-hand ones when
                // it is an edge pixel too (each corner costs two arcsines).
                var lastRight = Double.nan, lastBelow = 0.0, lastAbove = 0.0
                for i in ax0...ax1 {
                    let dx = Double(i) - x
                    // Wholly outside (the square's nearest point) or wholly inside (its farthest
                    // corner): 0 or 1 without the exact formula, which only edge pixels need.
                    let nx = max(0, abs(dx) - 0.5), ny = max(0, abs(dy) - 0.5)
                    if nx * nx + ny * ny >= r * r { continue }
                    let fx = abs(dx) + 0.5, fy = abs(dy) + 0.5
                    let weight: Double
                    if fx * fx + fy * fy <= r * r {
                        weight = 1
                    } else {
                        // CircleOverlap.area, term for term.
                        let (x0, x1, y0, y1) = (dx - 0.5, dx + 0.5, dy - 0.5, dy + 0.5)
                        let shared = x0 == lastRight
                        let c01 = shared ? lastAbove : CircleOverlap.corner(x0, y1, r)
                        let c00 = shared ? lastBelow : CircleOverlap.corner(x0, y0, r)
                        let c11 = CircleOverlap.corner(x1, y1, r), c10 = CircleOverlap.corner(x1, y0, r)
                        weight = c11 - c01 - c10 + c00
                        (lastRight, lastBelow, lastAbove) = (x1, c10, c11)
                    }
                    guard weight > 0 else { continue }
                    let k = (j - box.y0) * w + (i - box.x0)
                    let v = Double(stamp.image[k]), s2 = Double(stamp.variance[k])
                    if stamp.mask[k] & bad != 0 || !v.isFinite || !s2.isFinite {
                        m.flags |= Flag.apertureIncomplete
                        continue
                    }
                    m.sum += weight * v
                    m.sumVariance += weight * s2
                    m.area += weight
                }
            }
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
        var ring = scratch.ring
        scratch.ring = []   // one owner, so appending does not copy
        ring.removeAll(keepingCapacity: true)
        ring.reserveCapacity(Int(Double.pi * (ro2 - ri2)) + 4 * Int(ro) + 8)
        defer { scratch.ring = ring }
        var varianceSum = 0.0
        if bx0 <= bx1, by0 <= by1 {
            for j in by0...by1 {
                let dy = Double(j) - y, dy2 = dy * dy
                // Adding dx² cannot bring d² below dy²: no pixel of this row is in the ring.
                guard dy2 < ro2 else { continue }
                // Only the row's pixels near the ring are visited: its span within the outer
                // circle, less the part well inside the inner one, each a pixel wider than the
                // square roots say, and every pixel visited still gets the exact test. Tested
                // across the whole box, the pixels on the circles' edges mispredicted.
                let outer = (ro2 - dy2).squareRoot()
                let first = max(bx0, Int((x - outer).rounded(.down)) - 1), last = min(bx1, Int((x + outer).rounded(.up)) + 1)
                guard first <= last else { continue }
                var holeFirst = last + 1, holeLast = last
                if ri2 > dy2 {
                    let inner = (ri2 - dy2).squareRoot()
                    holeFirst = max(first, Int((x - inner).rounded(.up)) + 1)
                    holeLast = min(last, Int((x + inner).rounded(.down)) - 1)
                }
                let base = (j - box.y0) * w - box.x0
                func visit(_ i: Int) {
                    let dx = Double(i) - x
                    let d2 = dx * dx + dy * dy
                    guard d2 < ro2, d2 >= ri2 else { return }
                    let v = stamp.image[base + i]
                    guard stamp.mask[base + i] & bad == 0, v.isFinite else { return }
                    ring.append(v)
                    varianceSum += Double(stamp.variance[base + i])
                }
                if holeFirst > holeLast {
                    for i in first...last { visit(i) }
                } else {
                    if first < holeFirst { for i in first..<holeFirst { visit(i) } }
                    if holeLast < last { for i in (holeLast + 1)...last { visit(i) } }
                }
            }
        }
        let (median, kept) = clip.median(float32: ring, scratch: &scratch)
        m.background = median
        m.backgroundPixels = kept
        // The annulus's noise per pixel: its mean variance (clipping drops outliers in value, not
        // pixels of another noise level).
        if !ring.isEmpty {
            m.backgroundPixelVariance = varianceSum / Double(ring.count)
        }
        if kept < 10 {
            m.flags |= Flag.backgroundUnreliable
            if kept == 0 { m.background = 0 }
        }
        return m
    }
}
