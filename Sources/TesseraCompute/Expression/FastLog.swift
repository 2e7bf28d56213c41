#if canImport(Glibc)
import Glibc
#endif

/// Logarithms for the column kernels.
///
/// `log10`: a table of 1024 reciprocals and their logarithms (16 KB) plus a degree-4 series for
/// log1p on the remainder (|r| < 1/2048), with no division. Within 3 ulp of glibc's `log10`
/// (tested); numpy's own SIMD `log10` differs from glibc by a few ulp as well, so counts and
/// histogram bins still match numpy's in practice (the anchor's answers are equal). Arguments
/// near 1 (0.25…4, where the result is small and the table form would lose relative accuracy),
/// zero, negatives, subnormals, infinities and NaN go to glibc.
///
/// `mag`: fdlibm's `log` on eight SIMD lanes, with no table (a table needs a gather per lane,
/// which the baseline x86-64 target does not have).
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

    /// `−2.5 log10(f) + 31.4` of every flux, NaN unless positive (as `mag`), eight at a time in
    /// SIMD lanes (``magnitudes8(_:_:)``); Float32 fluxes are widened eight at a time too.
    /// Generic over the element type, not over a conversion closure: a closure per element was
    /// not inlined (measured).
    ///
    /// Nothing branches on the flux (fluxes near the detection limit are a random mix of signs):
    /// non-positive and non-finite lanes are masked to NaN; the rare +∞ and subnormal Float64
    /// fluxes, which have a magnitude, are flagged on the way and redone one at a time.
    static func magnitudes<T: BinaryFloatingPoint>(_ f: [T]) -> [Double] {
        f.withUnsafeBufferPointer { xp in
            [Double](unsafeUninitializedCapacity: xp.count) { out, count in
                let n = xp.count
                var odd = Lanes()
                var i = 0
                // Float32 and Float64 columns (the only kinds an expression holds) in lanes; any
                // other type one at a time below.
                if T.self == Float.self || T.self == Double.self, let base = xp.baseAddress, let o = out.baseAddress {
                    let raw = UnsafeRawPointer(base), store = UnsafeMutableRawPointer(o)
                    while i + 8 <= n {
                        let x = T.self == Float.self
                            ? Vector(raw.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self))
                            : raw.loadUnaligned(fromByteOffset: i * 8, as: Vector.self)
                        store.storeBytes(of: magnitudes8(x, &odd), toByteOffset: i * 8, as: Vector.self)
                        i += 8
                    }
                }
                while i < n { out[i] = magnitude(Double(xp[i])); i += 1 }
                if odd != Lanes() {
                    for i in 0..<n where Double(xp[i]) > 0 && !Double(xp[i]).isNormal { out[i] = magnitude(Double(xp[i])) }
                }
                count = n
            }
        }
    }

    /// `mag` of one flux, exactly as `magnitudes` gives it (the same lanes, one of them used).
    static func magnitude(_ f: Double) -> Double {
        guard f > 0 else { return .nan }
        if !f.isNormal { return -2.5 * Glibc.log10(f) + 31.4 }
        var odd = Lanes()
        return magnitudes8(Vector(repeating: f), &odd)[0]
    }

    typealias Vector = SIMD8<Double>
    typealias Lanes = SIMD8<UInt64>

    /// fdlibm's `log` (within 1 ulp) on eight lanes, scaled to a magnitude: x = 2^k·m with
    /// m in [√2/2, √2), f = m − 1, s = f / (2 + f), log m = f − s²·f/2·… from a degree-14
    /// even series in s. Only lane-wise arithmetic and bit operations: Swift's SIMD masks and
    /// `replacing(with:where:)` compiled to a loop over the lanes through the stack (measured
    /// 3× slower), so the masks here are integers. Lanes that are not positive normal finite
    /// numbers come out NaN; `odd` gets a bit in lanes holding +∞ or a positive subnormal.
    @inline(__always) static func magnitudes8(_ x: Vector, _ odd: inout Lanes) -> Vector {
        let u = unsafeBitCast(x, to: Lanes.self)
        // Positive normal finite: u − 2^52 < 0x7FE0…0, unsigned; halved first so that the
        // subtraction's sign bit says so without wrapping.
        let good = (((u &- 0x0010_0000_0000_0000) &>> 1) &- 0x3FF0_0000_0000_0000) &>> 63
        let keep = 0 &- good
        // +∞ (u = 0x7FF0…0 exactly) and positive subnormals (u − 1 < 2^52 − 1), which the caller
        // redoes; the sign bit rules out negative numbers (a random half of faint fluxes), and
        // 0 − u rules out +0.
        odd |= ((((u ^ 0x7FF0_0000_0000_0000) &- 1) | (((u &- 1) &- 0x000F_FFFF_FFFF_FFFF) & (0 &- u))) & ~u) &>> 63
        // m in [1, 2), halved when above √2, with k raised to match.
        var biasedExponent = (u &>> 52) & 0x7FF
        var mantissa = (u & 0x000F_FFFF_FFFF_FFFF) | 0x3FF0_0000_0000_0000
        let above = (0x3FF6_A09E_667F_3BCD &- mantissa) &>> 63
        mantissa &-= above &<< 52
        biasedExponent &+= above
        // k as a Double without an integer conversion (none exists for 64-bit lanes before AVX-512).
        let k = unsafeBitCast(biasedExponent | 0x4330_0000_0000_0000, to: Vector.self) - (0x1p52 + 1023)
        let f = unsafeBitCast(mantissa, to: Vector.self) - 1
        let s = f / (2 + f)
        let z = s * s, w = z * z
        let even = w * (lg2 + w * (lg4 + w * lg6))
        let odd7 = z * (lg1 + w * (lg3 + w * (lg5 + w * lg7)))
        let halfSquare = 0.5 * f * f
        let ln = k * ln2High - ((halfSquare - (s * (halfSquare + (odd7 + even)) + k * ln2Low)) - f)
        let m = -2.5 / 2.302585092994046 * ln + 31.4
        return unsafeBitCast((unsafeBitCast(m, to: Lanes.self) & keep) | (Double.nan.bitPattern & ~keep), to: Vector.self)
    }

    // fdlibm's e_log.c: log(2) in two parts, and the series' coefficients.
    static let ln2High = 6.93147180369123816490e-01, ln2Low = 1.90821492927058770002e-10
    static let lg1 = 6.666666666666735130e-01, lg2 = 3.999999999940941908e-01, lg3 = 2.857142874366239149e-01
    static let lg4 = 2.222219843214978396e-01, lg5 = 1.818357216161805012e-01, lg6 = 1.531383769920937332e-01
    static let lg7 = 1.479819860511658591e-01

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
