#if canImport(Glibc)
import Glibc
#endif

/// Base-10 logarithm for the column kernels: a table of 128 reciprocals and their logarithms
/// plus a degree-6 series for log1p on the small remainder, with no division. Within 3 ulp of
/// glibc's `log10` (tested); numpy's own SIMD `log10` differs from glibc by a few ulp as well, so
/// counts and histogram bins still match numpy's in practice (the anchor's answers are equal).
///
/// Arguments near 1 (0.25…4, where the result is small and the table form would lose relative
/// accuracy), zero, negatives, subnormals, infinities and NaN go to glibc.
enum FastLog {
    static let tableBits = 7
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

    /// `log10` of every value.
    static func log10s(_ x: [Double]) -> [Double] { map(x, { $0 }) { l, _ in l } }
    static func log10s(_ x: [Float]) -> [Double] { map(x, { Double($0) }) { l, _ in l } }

    /// `−2.5 log10(f) + 31.4` of every flux, NaN unless positive (as `mag`).
    static func magnitudes(_ f: [Double]) -> [Double] { map(f, { $0 }) { l, f in f > 0 ? -2.5 * l + 31.4 : .nan } }
    static func magnitudes(_ f: [Float]) -> [Double] { map(f, { Double($0) }) { l, f in f > 0 ? -2.5 * l + 31.4 : .nan } }

    /// `post(log10(x), x)` of every value, widened to Float64 one at a time.
    @inline(__always) static func map<T>(_ x: [T], _ wide: (T) -> Double, _ post: (Double, Double) -> Double) -> [Double] {
        table.withUnsafeBufferPointer { t in
            x.withUnsafeBufferPointer { xp in
                [Double](unsafeUninitializedCapacity: xp.count) { out, count in
                    for i in 0..<xp.count {
                        let v = wide(xp[i])
                        out[i] = post(log10(v, t.baseAddress!), v)
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
        let r = m * t[2 * i] - 1  // |r| < 1/256
        let p = r - r * r * (0.5 - r * (1.0 / 3 - r * (0.25 - r * (0.2 - r * (1.0 / 6)))))
        return (e * 0.6931471805599453 + (t[2 * i + 1] + p)) * 0.4342944819032518
    }
}
