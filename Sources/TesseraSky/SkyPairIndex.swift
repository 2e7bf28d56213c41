#if canImport(Glibc)
import Glibc
#endif

/// Pairs of sky positions within an angular radius: a cross-match's inner step.
///
/// A pair is what astropy's `search_around_sky` reports: the chord between the two unit vectors
/// is at most `2 sin(radius / 2)`. The positions searched are held by the zones algorithm
/// (Gray, Szalay et al., "The zones algorithm for finding points-near-a-point"): declination
/// bands one radius high, each sorted by right ascension, so a position meets at most three
/// bands, each by one binary search and a short run of candidates. Only candidates get the
/// exact test, on unit vectors held beside them (the run is contiguous in memory).
///
/// Right ascension wraps at 0/360° (a window crossing it is searched in two runs), and a window
/// that reaches a pole takes its whole band. Rows with a NaN or out-of-range position are never
/// paired.
public struct SkyPairIndex: Sendable {
    /// Most positions one index holds (rows are numbered by `Int32`).
    public static let maxRows = Int(Int32.max)

    public let radiusArcsec: Double
    /// The chord's square at the radius: pairs have `|a − b|² <= chordSquared`.
    let chordSquared: Double
    /// Degrees: the radius, slightly widened for the band and window bounds (the exact test
    /// decides; the bounds only must not cut a pair off by a rounding).
    let reach: Double
    let zoneHeight: Double
    let firstZone: Int
    /// Band `firstZone + b` holds sorted rows `zoneStart[b] ..< zoneStart[b + 1]`.
    let zoneStart: [Int32]
    // The positions, by band and then right ascension.
    let ra: [Double]
    let x: [Double], y: [Double], z: [Double]
    /// Each sorted position's number in the input.
    let row: [Int32]

    public var count: Int { row.count }

    /// Pairs found for a batch of positions, by position (ascending) and then separation.
    public struct Pairs: Sendable, Equatable {
        /// The searched position's number in its batch.
        public var left: [Int32] = []
        /// The indexed position's number.
        public var right: [Int32] = []
        public var separationArcsec: [Double] = []
        public init() {}
        public var count: Int { left.count }
    }

    /// - Parameters:
    ///   - ra, dec: degrees; equally long, at most ``maxRows``.
    ///   - radiusArcsec: positive and finite, at most 180°.
    public init(ra raIn: [Double], dec decIn: [Double], radiusArcsec: Double) {
        precondition(raIn.count == decIn.count && raIn.count <= Self.maxRows, "positions of equal count, at most Int32.max")
        precondition(radiusArcsec > 0 && radiusArcsec <= 648_000, "a radius in (0, 180°]")
        self.radiusArcsec = radiusArcsec
        let radians = radiusArcsec / 3600 * .pi / 180
        let chord = 2 * sin(radians / 2)
        chordSquared = chord * chord
        reach = radiusArcsec / 3600 * (1 + 1e-9) + 1e-12
        // Valid rows and their bands. Bands one radius high; fewer (and higher) when the rows'
        // declinations span more bands than are worth an array entry each.
        var valid: [Int32] = []
        valid.reserveCapacity(raIn.count)
        var lowest = Double.infinity, highest = -Double.infinity
        for i in raIn.indices where Self.usable(raIn[i], decIn[i]) {
            valid.append(Int32(i))
            lowest = min(lowest, decIn[i])
            highest = max(highest, decIn[i])
        }
        var height = max(reach, 1e-9)
        if !valid.isEmpty, (highest - lowest) / height > 4_000_000 { height = (highest - lowest) / 4_000_000 }
        zoneHeight = height
        let first = valid.isEmpty ? 0 : Self.zone(lowest, height)
        let last = valid.isEmpty ? -1 : Self.zone(highest, height)
        firstZone = first
        let bands = last - first + 1
        // Counting sort by band, then each band by right ascension.
        var counts = [Int32](repeating: 0, count: bands + 1)
        var bandOf = [Int32](repeating: 0, count: valid.count)
        for (k, i) in valid.enumerated() {
            let b = Self.zone(decIn[Int(i)], height) - first
            bandOf[k] = Int32(b)
            counts[b + 1] += 1
        }
        for b in 0..<bands { counts[b + 1] += counts[b] }
        zoneStart = counts
        var next = counts
        var order = [Int32](repeating: 0, count: valid.count)
        var keys = [Double](repeating: 0, count: valid.count)
        for (k, i) in valid.enumerated() {
            let b = Int(bandOf[k])
            let at = Int(next[b])
            next[b] += 1
            order[at] = i
            keys[at] = Self.wrapped(raIn[Int(i)])
        }
        for b in 0..<max(0, bands) {
            let lo = Int(counts[b]), hi = Int(counts[b + 1])
            if hi - lo > 1 {
                var pairs = (lo..<hi).map { (keys[$0], order[$0]) }
                pairs.sort { $0.0 < $1.0 || ($0.0 == $1.0 && $0.1 < $1.1) }
                for (j, p) in pairs.enumerated() { keys[lo + j] = p.0; order[lo + j] = p.1 }
            }
        }
        ra = keys
        row = order
        var xs = [Double](repeating: 0, count: order.count), ys = xs, zs = xs
        for (k, i) in order.enumerated() {
            let v = Self.unitVector(raIn[Int(i)], decIn[Int(i)])
            xs[k] = v.x; ys[k] = v.y; zs[k] = v.z
        }
        x = xs; y = ys; z = zs
    }

    @inline(__always) static func usable(_ ra: Double, _ dec: Double) -> Bool {
        ra.isFinite && dec >= -90 && dec <= 90
    }

    @inline(__always) static func zone(_ dec: Double, _ height: Double) -> Int {
        Int(((dec + 90) / height).rounded(.down))
    }

    /// Right ascension in [0, 360).
    @inline(__always) static func wrapped(_ ra: Double) -> Double {
        var a = ra.truncatingRemainder(dividingBy: 360)
        if a < 0 { a += 360 }
        return a >= 360 ? 0 : a
    }

    /// The unit vector as astropy computes it (cos δ cos α, cos δ sin α, sin δ).
    @inline(__always) static func unitVector(_ ra: Double, _ dec: Double) -> (x: Double, y: Double, z: Double) {
        let a = ra * .pi / 180, d = dec * .pi / 180
        let c = cos(d)
        return (c * cos(a), c * sin(a), sin(d))
    }

    /// The separation of two unit vectors `chord` apart, arcseconds.
    @inline(__always) public static func separationArcsec(chordSquared c2: Double) -> Double {
        2 * asin(min(1, c2.squareRoot() / 2)) * (180 / .pi) * 3600
    }

    /// Indexed positions within the radius of each of `ra`/`dec` (degrees), by position then
    /// separation (ties by indexed number); with `nearest`, only the first that many per position.
    public func pairs(ra qra: [Double], dec qdec: [Double], nearest: Int? = nil) -> Pairs {
        var out = Pairs()
        if row.isEmpty { return out }
        var found: [(c2: Double, row: Int32)] = []
        let keep = nearest.map { max(1, $0) } ?? Int.max
        for i in 0..<min(qra.count, qdec.count) {
            found.removeAll(keepingCapacity: true)
            candidates(qra[i], qdec[i]) { r, c2 in found.append((c2, r)) }
            if found.isEmpty { continue }
            if found.count > 1 { found.sort { $0.c2 < $1.c2 || ($0.c2 == $1.c2 && $0.row < $1.row) } }
            for f in found.prefix(keep) {
                out.left.append(Int32(i))
                out.right.append(f.row)
                out.separationArcsec.append(Self.separationArcsec(chordSquared: f.c2))
            }
        }
        return out
    }

    /// Calls `body` with each indexed position's number and squared chord within the radius of
    /// (ra, dec), in no particular order.
    @inline(__always)
    func candidates(_ qra: Double, _ qdec: Double, _ body: (Int32, Double) -> Void) {
        guard Self.usable(qra, qdec) else { return }
        let q = Self.unitVector(qra, qdec)
        let a = Self.wrapped(qra)
        let lastZone = firstZone + zoneStart.count - 2
        let zLo = max(firstZone, Self.zone(max(-90, qdec - reach), zoneHeight))
        let zHi = min(lastZone, Self.zone(min(90, qdec + reach), zoneHeight))
        if zLo > zHi { return }
        // The window in right ascension: sin Δα = sin r / cos δ at the band's edge nearest the pole.
        let edge = abs(qdec) + reach
        var half = 360.0
        if edge < 90 {
            let s = sin(reach * .pi / 180) / cos(edge * .pi / 180)
            if s < 1 { half = asin(s) * 180 / .pi * (1 + 1e-9) + 1e-12 }
        }
        let limit = chordSquared
        ra.withUnsafeBufferPointer { ras in
            x.withUnsafeBufferPointer { xs in
                y.withUnsafeBufferPointer { ys in
                    z.withUnsafeBufferPointer { zs in
                        row.withUnsafeBufferPointer { rows in
                            func run(_ lo: Int, _ hi: Int, from: Double, to: Double) {
                                // The first sorted position at or past `from`.
                                var a = lo, b = hi
                                while a < b {
                                    let m = (a + b) >> 1
                                    if ras[m] < from { a = m + 1 } else { b = m }
                                }
                                var k = a
                                while k < hi && ras[k] <= to {
                                    let dx = xs[k] - q.x, dy = ys[k] - q.y, dz = zs[k] - q.z
                                    let c2 = dx * dx + dy * dy + dz * dz
                                    if c2 <= limit { body(rows[k], c2) }
                                    k += 1
                                }
                            }
                            for zone in zLo...zHi {
                                let lo = Int(zoneStart[zone - firstZone]), hi = Int(zoneStart[zone - firstZone + 1])
                                if lo == hi { continue }
                                if half >= 180 {
                                    run(lo, hi, from: 0, to: 360)
                                } else if a - half < 0 {
                                    run(lo, hi, from: a - half + 360, to: 360)
                                    run(lo, hi, from: 0, to: a + half)
                                } else if a + half >= 360 {
                                    run(lo, hi, from: a - half, to: 360)
                                    run(lo, hi, from: 0, to: a + half - 360)
                                } else {
                                    run(lo, hi, from: a - half, to: a + half)
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
