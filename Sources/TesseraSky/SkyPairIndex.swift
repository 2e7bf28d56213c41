#if canImport(Glibc)
import Glibc
#endif

/// Pairs of sky positions within an angular radius: a cross-match's inner step.
///
/// A pair is what astropy's `search_around_sky` reports: the chord between the two unit vectors
/// is at most `2 sin(radius / 2)`. The indexed positions sit in a grid of cells, as in the zones
/// algorithm (Gray, Szalay et al., "The zones algorithm for finding points-near-a-point"):
/// declination bands at least one radius high, each cut into right-ascension bins at least one
/// radius wide on the sky. A searched position's circle then meets two or three bands and, in
/// each, one run of adjacent bins, whose positions lie contiguously in memory; only those get
/// the exact test, on unit vectors held in the run. The grid is built by counting sort (no
/// comparison sort), and its cells are sized from the positions' density so that they hold a
/// few positions each whatever the radius: where positions are sparse at the radius's scale (a
/// survey at 1″), cells are wider than the radius, and a search costs a few cell lookups.
///
/// Right ascension wraps at 0/360° (a window crossing it is two runs), a band near a pole is one
/// bin, and a window reaching a pole takes its whole band. Rows with a NaN or out-of-range
/// position are never paired.
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
    /// Right ascensions are binned as `wrapped(ra − raOrigin)`, within `0 ... raSpan`: the
    /// shortest arc holding every indexed position (the whole circle when it is not short).
    let raOrigin: Double
    let raSpan: Double
    /// Per band: the half-width in right ascension of the window of any position in it (degrees;
    /// 360 where a circle may reach a pole); its bins' width, count, and first cell.
    let windowHalf: [Double]
    let binWidth: [Double]
    let binCount: [Int32]
    let firstCell: [Int32]
    /// Cell `c` holds sorted positions `cellStart[c] ..< cellStart[c + 1]`.
    let cellStart: [Int32]
    // The positions, by cell.
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
        let reach = radiusArcsec / 3600 * (1 + 1e-9) + 1e-12
        self.reach = reach
        var valid: [Int32] = []
        valid.reserveCapacity(raIn.count)
        var lowest = Double.infinity, highest = -Double.infinity
        for i in raIn.indices where Self.usable(raIn[i], decIn[i]) {
            valid.append(Int32(i))
            lowest = min(lowest, decIn[i])
            highest = max(highest, decIn[i])
        }
        // The arc of right ascension the positions occupy: as they are, or seen from 180°
        // (positions around RA 0), whichever is shorter; the whole circle if neither is short.
        var origin = 0.0, span = 360.0
        if !valid.isEmpty {
            var lo = 360.0, hi = 0.0, loShifted = 360.0, hiShifted = 0.0
            for i in valid {
                let a = Self.wrapped(raIn[Int(i)]), b = Self.wrapped(a + 180)
                lo = min(lo, a); hi = max(hi, a)
                loShifted = min(loShifted, b); hiShifted = max(hiShifted, b)
            }
            if hi - lo <= hiShifted - loShifted {
                if hi - lo < 300 { (origin, span) = (lo, hi - lo) }
            } else if hiShifted - loShifted < 300 {
                // The westernmost row's own right ascension (not one recomputed from the shifted
                // frame, which may round past it and wrap that row to the arc's far end).
                var west = 0.0, westKey = Double.infinity
                for i in valid {
                    let a = Self.wrapped(raIn[Int(i)]), b = Self.wrapped(a + 180)
                    if b < westKey { (west, westKey) = (a, b) }
                }
                (origin, span) = (west, hiShifted - loShifted)
            }
        }
        raOrigin = origin
        raSpan = span
        // Cells about four positions each on average, and never smaller than the radius.
        let decSpan = max(highest - lowest, reach)
        let meanCos = max(0.01, cos((lowest + highest) / 2 * .pi / 180))
        let area = max(span, reach) * meanCos * decSpan
        var height = max(reach, 1e-9)
        if valid.count > 1 { height = max(height, min(decSpan, (4 * area / Double(valid.count)).squareRoot())) }
        if !valid.isEmpty, decSpan / height > 1_000_000 { height = decSpan / 1_000_000 }
        zoneHeight = height
        let first = valid.isEmpty ? 0 : Self.zone(lowest, height)
        let last = valid.isEmpty ? -1 : Self.zone(highest, height)
        firstZone = first
        let bands = last - first + 1
        // Bins per band: at least one band height wide on the sky at the band's edge nearest the
        // pole, so a window (at most that wide) spans two or three; at most one per position
        // or so, so sparse wide bands cost no more cells than positions.
        var widths = [Double](repeating: max(span, 1e-9), count: max(0, bands))
        var counts = [Int32](repeating: 1, count: max(0, bands))
        var firsts = [Int32](repeating: 0, count: max(0, bands) + 1)
        let binsPerBand = max(1, 4 * valid.count / max(1, bands) + 1)
        for b in 0..<max(0, bands) {
            let top = min(90, max(abs(Double(first + b) * height - 90), abs(Double(first + b + 1) * height - 90)))
            let c = cos(top * .pi / 180)
            if c > 1e-9 && span > 1e-9 {
                let n = min(Double(binsPerBand), max(1, (span * c / height).rounded(.down)))
                counts[b] = Int32(n)
                widths[b] = span / n
            }
            firsts[b + 1] = firsts[b] + counts[b]
        }
        binWidth = widths
        binCount = counts
        // sin Δα = sin r / cos δ, at the band's poleward edge widened by the radius: wide enough
        // for every position in the band (a few more candidates, no trigonometry per search).
        windowHalf = (0..<max(0, bands)).map { b in
            Self.windowHalf(edge: max(abs(Double(first + b) * height - 90), abs(Double(first + b + 1) * height - 90)) + reach, reach: reach)
        }
        firstCell = firsts
        // Counting sort by cell.
        let cells = Int(firsts.last ?? 0)
        var cellOf = [Int32](repeating: 0, count: valid.count)
        var starts = [Int32](repeating: 0, count: cells + 1)
        for (k, i) in valid.enumerated() {
            let b = Self.zone(decIn[Int(i)], height) - first
            let c = Int(firsts[b]) + Self.bin(Self.key(raIn[Int(i)], origin, span), widths[b], Int(counts[b]))
            cellOf[k] = Int32(c)
            starts[c + 1] += 1
        }
        for c in 0..<cells { starts[c + 1] += starts[c] }
        cellStart = starts
        var next = starts
        var order = [Int32](repeating: 0, count: valid.count)
        for (k, i) in valid.enumerated() {
            let c = Int(cellOf[k])
            order[Int(next[c])] = i
            next[c] += 1
        }
        row = order
        var xs = [Double](repeating: 0, count: order.count), ys = xs, zs = xs
        for (k, i) in order.enumerated() {
            let v = Self.unitVector(raIn[Int(i)], decIn[Int(i)])
            xs[k] = v.x; ys[k] = v.y; zs[k] = v.z
        }
        x = xs; y = ys; z = zs
    }

    /// An indexed row's place along the arc `0 ... span` from `origin`: a rounding that puts it
    /// just outside (past the far end, or wrapped to just below 360) goes to the nearer end.
    @inline(__always) static func key(_ ra: Double, _ origin: Double, _ span: Double) -> Double {
        let k = wrapped(ra - origin)
        return k <= span ? k : (k - span < 360 - k ? span : 0)
    }

    /// The bin of `key` in a band of `bins` bins `width` wide: clamped to the band, in floating
    /// point first (no conversion of a huge or NaN quotient to an integer).
    @inline(__always) static func bin(_ key: Double, _ width: Double, _ bins: Int) -> Int {
        let v = key / width
        return v >= Double(bins - 1) ? bins - 1 : (v > 0 ? Int(v) : 0)
    }

    /// Half the right-ascension extent of a circle of radius `reach` whose poleward edge is at
    /// |declination| `edge` (degrees; 360 when it reaches the pole).
    static func windowHalf(edge: Double, reach: Double) -> Double {
        guard edge < 90 else { return 360 }
        let s = sin(reach * .pi / 180) / cos(edge * .pi / 180)
        return s < 1 ? asin(s) * 180 / .pi * (1 + 1e-9) + 1e-12 : 360
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
    /// - Returns: nil as soon as more than `limit` pairs are found (their memory is bounded), or
    ///   more than `examineLimit` indexed positions were compared (their time is: a dense right
    ///   side and a wide radius cost every left row the whole window, pairs or not).
    public func pairs(ra qra: [Double], dec qdec: [Double], nearest: Int? = nil, limit: Int = .max, examineLimit: Int = .max) -> Pairs? {
        var out = Pairs()
        if row.isEmpty { return out }
        let keep = nearest.map { max(1, $0) } ?? Int.max
        var examined = 0
        if keep == 1 {
            // The nearest alone: kept as the candidates come, nothing to sort.
            for i in 0..<min(qra.count, qdec.count) {
                var best = Double.infinity, bestRow: Int32 = -1
                examined &+= candidates(qra[i], qdec[i]) { r, c2 in
                    if c2 < best || (c2 == best && r < bestRow) { best = c2; bestRow = r }
                }
                if examined > examineLimit { return nil }
                if bestRow >= 0 {
                    out.left.append(Int32(i))
                    out.right.append(bestRow)
                    out.separationArcsec.append(Self.separationArcsec(chordSquared: best))
                    if out.count > limit { return nil }
                }
            }
            return out
        }
        var found: [(c2: Double, row: Int32)] = []
        for i in 0..<min(qra.count, qdec.count) {
            found.removeAll(keepingCapacity: true)
            examined &+= candidates(qra[i], qdec[i]) { r, c2 in found.append((c2, r)) }
            if examined > examineLimit { return nil }
            if found.isEmpty { continue }
            if found.count > 1 { found.sort { $0.c2 < $1.c2 || ($0.c2 == $1.c2 && $0.row < $1.row) } }
            for f in found.prefix(keep) {
                out.left.append(Int32(i))
                out.right.append(f.row)
                out.separationArcsec.append(Self.separationArcsec(chordSquared: f.c2))
            }
            if out.count > limit || found.count > limit { return nil }
        }
        return out
    }

    /// Calls `body` with each indexed position's number and squared chord within the radius of
    /// (ra, dec), in no particular order; returns how many indexed positions it compared.
    @inline(__always) @discardableResult
    func candidates(_ qra: Double, _ qdec: Double, _ body: (Int32, Double) -> Void) -> Int {
        guard Self.usable(qra, qdec) else { return 0 }
        let q = Self.unitVector(qra, qdec)
        let key = Self.wrapped(qra - raOrigin)
        let lastZone = firstZone + binCount.count - 1
        let zLo = max(firstZone, Self.zone(max(-90, qdec - reach), zoneHeight))
        let zHi = min(lastZone, Self.zone(min(90, qdec + reach), zoneHeight))
        if zLo > zHi { return 0 }
        var examined = 0
        let own = Self.zone(qdec, zoneHeight) - firstZone
        let half = own >= 0 && own < windowHalf.count ? windowHalf[own] : Self.windowHalf(edge: abs(qdec) + reach, reach: reach)
        let limit = chordSquared
        let span = raSpan
        x.withUnsafeBufferPointer { xs in
            y.withUnsafeBufferPointer { ys in
                z.withUnsafeBufferPointer { zs in
                    row.withUnsafeBufferPointer { rows in
                        cellStart.withUnsafeBufferPointer { starts in
                            func scan(_ a: Int, _ b: Int) {
                                examined &+= max(0, b - a)
                                var k = a
                                while k < b {
                                    let dx = xs[k] - q.x, dy = ys[k] - q.y, dz = zs[k] - q.z
                                    let c2 = dx * dx + dy * dy + dz * dz
                                    if c2 <= limit { body(rows[k], c2) }
                                    k += 1
                                }
                            }
                            for zone in zLo...zHi {
                                let band = zone - firstZone
                                let first = Int(firstCell[band]), bins = Int(binCount[band]), w = binWidth[band]
                                // The bins of keys within [from, to] (inside the indexed arc).
                                func run(_ from: Double, _ to: Double) {
                                    if to < 0 || from > span { return }
                                    let b0 = Self.bin(from, w, bins), b1 = Self.bin(min(span, to), w, bins)
                                    scan(Int(starts[first + b0]), Int(starts[first + b1 + 1]))
                                }
                                if half >= 180 || bins == 1 {
                                    scan(Int(starts[first]), Int(starts[first + bins]))
                                } else if key - half < 0 {
                                    run(key - half + 360, 360)
                                    run(0, key + half)
                                } else if key + half >= 360 {
                                    run(key - half, 360)
                                    run(0, key + half - 360)
                                } else {
                                    run(key - half, key + half)
                                }
                            }
                        }
                    }
                }
            }
        }
        return examined
    }
}
