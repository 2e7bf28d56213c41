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
    static func magnitudes<T: BinaryFloatingPoint>(_ f: [T]) -> [Double] {
        table.withUnsafeBufferPointer { t in
            f.withUnsafeBufferPointer { xp in
                [Double](unsafeUninitializedCapacity: xp.count) { out, count in
                    let tb = t.baseAddress!
                    for i in 0..<xp.count {
                        let v = Double(xp[i])
                        out[i] = v > 0 ? -2.5 * log10(v, tb) + 31.4 : .nan
                    }
                    count = xp.count
                }
            }
        }
    }

    /// One value (for constants and per-row paths, so they agree with the kernels).
    static func log10(_ x: Double) -> Double { table.withUnsafeBufferPointer { log10(x, $0.baseAddress!) } }

    @inline(__always) static func log10(_ x: Double, _ t: UnsafePointer<Double>) -> Double {
        let u = x.bitPattern
        // Positive normal finite numbers are exactly those with u − 2^52 < 0x7FE0…0 (unsigned).
        if u &- 0x0010_0000_0000_0000 >= 0x7FE0_0000_0000_0000 || (x > 0.25 && x < 4) { return Glibc.log10(x) }
        let e = Double(Int64(bitPattern: u >> 52) - 1023)
        let i = Int((u >> (52 - UInt64(tableBits))) & UInt64((1 << tableBits) - 1))
        let m = Double(bitPattern: (u & 0x000F_FFFF_FFFF_FFFF) | 0x3FF0_0000_0000_0000)
        let r = m * t[2 * i] - 1  // |r| < 1/2048: r⁵/5 is below 1e-17
        let p = r - r * r * (0.5 - r * (1.0 / 3 - r * 0.25))
        return (e * 0.6931471805599453 + (t[2 * i + 1] + p)) * 0.4342944819032518
    }
}
