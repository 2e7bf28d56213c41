#if canImport(Glibc)
import Glibc
#endif

/// Base-10 logarithm for the column kernels: a table of 1024 reciprocals and their logarithms
/// (16 KB) plus a degree-4 series for log1p on the remainder (|r| < 1/2048), with no division. Within 3 ulp of
/// glibc's `log10` (tested); numpy's own SIMD `log10` differs from glibc by a few ulp as well, so
/// counts and histogram bins still match numpy's in practice (the anchor's answers are equal).
///
/// Arguments near 1 (0.25…4, where the result is small and the table form would lose relative
/// accuracy), zero, negatives, subnormals, infinities and NaN go to glibc.
enum FastLog {
    static let tableBits = 10
    /// Per mantissa interval: 1 / centre, and −log(1 / centre).
    static let table: [Double] = {
        var t: [Double] = []
        let n = 1 << tableBits
        for i in 0..<n {
            let inverse = 1 / (1 + (Double(i) + 0.5) / Double(n))
            t.append(inverse)
            t.append(-log(inverse))
        }
        return t
    }()

    /// `log10` of every value (Float32 values widened one at a time).
    static func log10s<T: BinaryFloatingPoint>(_ x: [T]) -> [Double] {
        table.withUnsafeBufferPointer { t in
            x.withUnsafeBufferPointer { xp in
                [Double](unsafeUninitializedCapacity: xp.count) { out, count in
                    let tb = t.baseAddress!
                    for i in 0..<xp.count { out[i] = log10(Double(xp[i]), tb) }
                    count = xp.count
                }
            }
        }
    }

    /// `−2.5 log10(f) + 31.4` of every flux, NaN unless positive (as `mag`). Generic over the
    /// element type, not over a conversion closure: a closure per element was not inlined (measured).
    ///
    /// The loop has no branch on the flux (fluxes near the detection limit are a random mix of
    /// signs, and nothing here depends on how well that predicts): non-positive and non-finite
    /// fluxes take the path of 1.0 and are masked to NaN; the rare +∞ and subnormal fluxes, which
    /// have a magnitude, are redone afterwards. Measured against the branching loop, a group-by's
    /// worker CPU moved by less than the noise: the loop is bound by its arithmetic.
    static func magnitudes<T: BinaryFloatingPoint>(_ f: [T]) -> [Double] {
        table.withUnsafeBufferPointer { t in
            f.withUnsafeBufferPointer { xp in
                [Double](unsafeUninitializedCapacity: xp.count) { out, count in
                    let tb = t.baseAddress!
                    var odd: UInt64 = 0
                    for i in 0..<xp.count {
                        let u = Double(xp[i]).bitPattern
                        out[i] = maskedMagnitude(u, tb)
                        odd |= bit(u == 0x7FF0_0000_0000_0000) | bit(u &- 1 < 0x000F_FFFF_FFFF_FFFF)
                    }
                    if odd != 0 {
                        for i in 0..<xp.count where Double(xp[i]) > 0 && !Double(xp[i]).isNormal { out[i] = magnitude(Double(xp[i])) }
                    }
                    count = xp.count
                }
            }
        }
    }

    /// `mag` of one flux, exactly as `magnitudes` gives it.
    static func magnitude(_ f: Double) -> Double {
        guard f > 0 else { return .nan }
        if !f.isNormal { return -2.5 * Glibc.log10(f) + 31.4 }
        return table.withUnsafeBufferPointer { maskedMagnitude(f.bitPattern, $0.baseAddress!) }
    }

    /// The magnitude of a positive normal finite flux from its bits, and NaN for any other bits.
    /// Near 1 the table form keeps absolute accuracy, which is what a magnitude (about 31) needs.
    @inline(__always) static func maskedMagnitude(_ u: UInt64, _ t: UnsafePointer<Double>) -> Double {
        // Positive normal finite numbers are exactly those with u − 2^52 < 0x7FE0…0 (unsigned).
        let bad = bit(u &- 0x0010_0000_0000_0000 < 0x7FE0_0000_0000_0000) &- 1   // all ones unless so
        let v = (u & ~bad) | (0x3FF0_0000_0000_0000 & bad)
        let m = -2.5 * logTable(v, t) + 31.4
        return Double(bitPattern: (m.bitPattern & ~bad) | (Double.nan.bitPattern & bad))
    }

    /// 0 or 1 without a branch (a ternary on a Bool compiled to one in these loops).
    @inline(__always) static func bit(_ b: Bool) -> UInt64 { UInt64(unsafeBitCast(b, to: UInt8.self)) }

    /// One value (for constants and per-row paths, so they agree with the kernels).
    static func log10(_ x: Double) -> Double { table.withUnsafeBufferPointer { log10(x, $0.baseAddress!) } }

    @inline(__always) static func log10(_ x: Double, _ t: UnsafePointer<Double>) -> Double {
        let u = x.bitPattern
        // Positive normal finite numbers are exactly those with u − 2^52 < 0x7FE0…0 (unsigned).
        if u &- 0x0010_0000_0000_0000 >= 0x7FE0_0000_0000_0000 || (x > 0.25 && x < 4) { return Glibc.log10(x) }
        return logTable(u, t)
    }

    /// The table form for the bits of a positive normal finite number.
    @inline(__always) static func logTable(_ u: UInt64, _ t: UnsafePointer<Double>) -> Double {
        let e = Double(Int64(bitPattern: u >> 52) - 1023)
        let i = Int((u >> (52 - UInt64(tableBits))) & UInt64((1 << tableBits) - 1))
        let m = Double(bitPattern: (u & 0x000F_FFFF_FFFF_FFFF) | 0x3FF0_0000_0000_0000)
        let r = m * t[2 * i] - 1  // |r| < 1/2048: r⁵/5 is below 1e-17
        let p = r - r * r * (0.5 - r * (1.0 / 3 - r * 0.25))
        return (e * 0.6931471805599453 + (t[2 * i + 1] + p)) * 0.4342944819032518
    }
}
