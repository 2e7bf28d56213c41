import CZlib
import Foundation

/// Writes 8-bit greyscale, grey-and-alpha or RGB PNG images (zlib's deflate and CRC-32), as HiPS tiles and
/// previews need them.
public enum PNGImage {
    public enum Kind: UInt8, Sendable {
        case grey = 0
        case rgb = 2
        /// Grey then alpha (0: transparent), two bytes a pixel.
        case greyAlpha = 4
        var channels: Int {
            switch self {
            case .grey: 1
            case .rgb: 3
            case .greyAlpha: 2
            }
        }
    }

    /// The PNG file of `pixels` (row-major, top row first, `channels` bytes per pixel), deflated
    /// at zlib `level` (1 is about 13 times faster than 6 on noisy sky, for 12% more bytes).
    public static func encode(width: Int, height: Int, kind: Kind, pixels: [UInt8], level: Int32 = 6) throws(ImageFileError) -> [UInt8] {
        guard width > 0, height > 0, width <= 1 << 15, height <= 1 << 15, pixels.count == width * height * kind.channels else {
            throw .invalidInput("a PNG of \(width) × \(height) with \(pixels.count) bytes of pixels")
        }
        // Each row: filter type 0 (none), then its bytes.
        let stride = width * kind.channels
        var raw = [UInt8](repeating: 0, count: height * (stride + 1))
        for y in 0..<height {
            raw.withUnsafeMutableBufferPointer { dst in
                pixels.withUnsafeBufferPointer { src in
                    for i in 0..<stride { dst[y * (stride + 1) + 1 + i] = src[y * stride + i] }
                }
            }
        }
        var bound = compressBound(uLong(raw.count))
        var packed = [UInt8](repeating: 0, count: Int(bound))
        let status = packed.withUnsafeMutableBufferPointer { p in raw.withUnsafeBufferPointer { r in compress2(p.baseAddress, &bound, r.baseAddress, uLong(r.count), max(0, min(9, level))) } }
        guard status == Z_OK else { throw .invalidInput("zlib could not compress the PNG's pixels (status \(status))") }
        packed.removeSubrange(Int(bound)...)
        var out: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
        func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)] }
        func chunk(_ type: String, _ data: [UInt8]) {
            let body = Array(type.utf8) + data
            out += be32(UInt32(data.count)) + body
            let crc = body.withUnsafeBufferPointer { crc32(0, $0.baseAddress, uInt($0.count)) }
            out += be32(UInt32(truncatingIfNeeded: crc))
        }
        chunk("IHDR", be32(UInt32(width)) + be32(UInt32(height)) + [8, kind.rawValue, 0, 0, 0])
        chunk("IDAT", packed)
        chunk("IEND", [])
        return out
    }

    /// Grey levels of a float image, top row first (FITS's first row is the bottom): an arcsinh
    /// stretch from the median (the sky: black) to the brightest value, so that sources stand out
    /// of the noise; NaN is black.
    public static func stretched(_ values: [Float], width: Int, height: Int) -> [UInt8] {
        let finite = values.filter(\.isFinite).sorted()
        guard !finite.isEmpty else { return [UInt8](repeating: 0, count: width * height) }
        let stretch = AsinhStretch(low: Double(finite[finite.count / 2]), high: Double(finite[finite.count - 1]))
        var out = [UInt8](repeating: 0, count: width * height)
        for y in 0..<height {
            for x in 0..<width {
                let v = values[(height - 1 - y) * width + x]
                if v.isFinite { out[y * width + x] = stretch.grey(v) }
            }
        }
        return out
    }

    /// Grey and alpha of a float image, top row first (FITS's first row is the bottom): the
    /// stretch's grey level, transparent where NaN.
    public static func greyAlpha(_ values: UnsafeBufferPointer<Float>, width: Int, height: Int, stretch: AsinhStretch) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 2 * width * height)
        for y in 0..<height {
            let row = (height - 1 - y) * width
            for x in 0..<width {
                let v = values[row + x]
                guard v.isFinite else { continue }
                out[2 * (y * width + x)] = stretch.grey(v)
                out[2 * (y * width + x) + 1] = 255
            }
        }
        return out
    }

    /// An arcsinh stretch of values to grey levels: `low` black, `high` white, and between them
    /// asinh(100 t) / asinh(100) of the fraction t, so that faint sources stand out of the noise
    /// while bright ones keep their shape.
    public struct AsinhStretch: Sendable {
        public let low: Double, high: Double
        let scale: Double
        public init(low: Double, high: Double) {
            self.low = low
            self.high = high
            scale = 1 / max(high - low, 1e-30)
        }
        @inline(__always) public func grey(_ v: Float) -> UInt8 {
            let t = asinh(100 * max(0, min(1, (Double(v) - low) * scale))) / asinh(100.0)
            return UInt8(max(0, min(255, (t * 255).rounded())))
        }
    }
}
