import CLZ4

/// LZ4 block compression of bulk frames, applied only where it pays.
public enum LZ4 {
    /// Frames smaller than this are always sent raw: the saving cannot repay the call.
    public static let minimumSize = 4096
    /// A frame is sent compressed only when it shrinks to at most this fraction (saves ≥ 10%).
    public static let worthwhileRatio = 0.9

    /// Compresses `bytes` when that saves at least ~10%; returns nil when raw is the better choice
    /// (small frames, noisy float columns).
    public static func compressIfWorthwhile(_ bytes: UnsafeRawBufferPointer) -> [UInt8]? {
        let n = bytes.count
        guard n >= minimumSize, n <= Int(LZ4_MAX_INPUT_SIZE), let src = bytes.baseAddress else { return nil }
        let limit = Int(Double(n) * worthwhileRatio)
        // Asking for no more than `limit` bytes makes LZ4 stop early on incompressible data.
        var out = [UInt8](repeating: 0, count: limit)
        let written = out.withUnsafeMutableBytes { dst in
            LZ4_compress_default(
                src.assumingMemoryBound(to: CChar.self),
                dst.baseAddress!.assumingMemoryBound(to: CChar.self), Int32(n), Int32(limit))
        }
        guard written > 0 else { return nil }
        out.removeSubrange(Int(written)...)
        return out
    }

    /// Compresses unconditionally (for measurements and tests).
    public static func compress(_ bytes: UnsafeRawBufferPointer) -> [UInt8] {
        let bound = Int(LZ4_compressBound(Int32(bytes.count)))
        var out = [UInt8](repeating: 0, count: max(bound, 1))
        let written = out.withUnsafeMutableBytes { dst in
            LZ4_compress_default(
                bytes.baseAddress?.assumingMemoryBound(to: CChar.self),
                dst.baseAddress!.assumingMemoryBound(to: CChar.self), Int32(bytes.count), Int32(bound))
        }
        out.removeSubrange(Int(max(written, 0))...)
        return out
    }

    /// Decompresses a block whose decoded length is known; fails on corrupt or mismatched input.
    public static func decompress(_ bytes: UnsafeRawBufferPointer, rawLength: Int) throws(ProtocolError) -> [UInt8] {
        guard rawLength >= 0, rawLength <= Int(LZ4_MAX_INPUT_SIZE) else {
            throw .corruptFrame(index: -1, reason: "declared raw length \(rawLength) is out of range")
        }
        // LZ4 expands at most ~255×: a larger claim is a lie, refused before allocating for it.
        guard rawLength <= bytes.count * 255 + 16 else {
            throw .corruptFrame(index: -1, reason: "declares \(rawLength) bytes from \(bytes.count) compressed, beyond what LZ4 can expand to")
        }
        var out = [UInt8](repeating: 0, count: rawLength)
        if rawLength == 0 { return out }
        let got = out.withUnsafeMutableBytes { dst in
            LZ4_decompress_safe(
                bytes.baseAddress?.assumingMemoryBound(to: CChar.self),
                dst.baseAddress!.assumingMemoryBound(to: CChar.self), Int32(bytes.count), Int32(rawLength))
        }
        guard got == Int32(rawLength) else {
            throw .corruptFrame(index: -1, reason: "LZ4 data decodes to \(got < 0 ? "garbage" : "\(got) bytes"), expected \(rawLength)")
        }
        return out
    }
}
