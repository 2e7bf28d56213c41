/// Stable least-significant-digit radix sort for the spatial index: 20 million rows sort in well
/// under a second, where a comparison sort takes several.
public enum RadixSort {
    /// Positions of `keys` in ascending order (ties keep their input order). Keys must be ≥ 0.
    public static func order(_ keys: [Int64]) -> [Int] {
        let n = keys.count
        if n < 2 { return Array(0..<n) }
        let maxKey = keys.max() ?? 0
        var bits = 0
        while bits < 63 && (maxKey >> Int64(bits)) > 0 { bits += 1 }
        let digit = 11, buckets = 1 << digit
        var src = [Int32](unsafeUninitializedCapacity: n) { b, c in for i in 0..<n { b[i] = Int32(i) }; c = n }
        var dst = [Int32](repeating: 0, count: n)
        var count = [Int](repeating: 0, count: buckets)
        keys.withUnsafeBufferPointer { k in
            var shift = 0
            while shift < max(bits, 1) {
                for i in 0..<buckets { count[i] = 0 }
                src.withUnsafeBufferPointer { s in
                    for i in 0..<n { count[Int((UInt64(bitPattern: k[Int(s[i])]) >> UInt64(shift)) & UInt64(buckets - 1))] += 1 }
                    var sum = 0
                    for i in 0..<buckets { let c = count[i]; count[i] = sum; sum += c }
                    dst.withUnsafeMutableBufferPointer { d in
                        for i in 0..<n {
                            let b = Int((UInt64(bitPattern: k[Int(s[i])]) >> UInt64(shift)) & UInt64(buckets - 1))
                            d[count[b]] = s[i]
                            count[b] += 1
                        }
                    }
                }
                swap(&src, &dst)
                shift += digit
            }
        }
        return src.map(Int.init)
    }
}
