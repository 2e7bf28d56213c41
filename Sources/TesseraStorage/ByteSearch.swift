extension Array where Element == UInt8 {
    /// Where `needle` first starts at or after `from`, or nil: a scan for its first byte and a
    /// comparison at each, over the contiguous bytes (Foundation's generic `firstRange(of:)`
    /// took half of a 5 MB upload's time).
    public func firstIndex(of needle: [UInt8], from: Int = 0) -> Int? {
        guard let first = needle.first, from >= 0, from <= count, count - from >= needle.count else { return nil }
        return withUnsafeBufferPointer { hay in
            needle.withUnsafeBufferPointer { n in
                let last = hay.count - n.count
                var i = from
                while i <= last {
                    if hay[i] == first && (1..<n.count).allSatisfy({ hay[i + $0] == n[$0] }) { return i }
                    i += 1
                }
                return nil
            }
        }
    }
}
