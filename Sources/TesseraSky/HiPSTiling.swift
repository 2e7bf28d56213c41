import Foundation

/// The geometry of an IVOA HiPS 1.0 image tree: which sky each tile pixel is, where tiles and
/// their files go, and how a tile is made from its four children.
///
/// A tile of order `k` is the HEALPix pixel `npix` at order `k`, cut into `width` × `width`
/// pixels: the HEALPix pixels at order `k + log2(width)` inside it. Its FITS pixels are stored as
/// the standard (and Aladin's Hipsgen) lays them out — row `i`, column `j` (0-based, first stored
/// row first) is the pixel whose x within the tile (north-east; the nested index's even bits) is
/// `width − 1 − i` and whose y (north-west; odd bits) is `j`. PNG tiles store the same rows top
/// row first, so PNG row `r` is FITS row `width − 1 − r`.
public struct HiPSTiling: Sendable, Hashable {
    /// Tile order `order` is `pixelOrder − log2(width)`.
    public let width: Int
    public let widthShift: Int

    /// The shallowest order written: order 3 holds the `Allsky` preview, and clients start there.
    public static let minimumOrder = 3
    public static let allowedWidths = [64, 128, 256, 512]

    public init?(width: Int) {
        guard Self.allowedWidths.contains(width) else { return nil }
        self.width = width
        widthShift = width.trailingZeroBitCount
    }

    /// The deepest order whose pixels are nearest, in logarithm, to `pixelScaleArcsec`: HEALPix
    /// pixels at order `p` are about 58.6° / 2^p across (the square root of their area).
    public func nativeOrder(pixelScaleArcsec: Double) -> Int {
        let order0 = (4 * Double.pi / 12).squareRoot() * 180 / .pi * 3600
        let p = Int(log2(order0 / pixelScaleArcsec).rounded())
        return p - widthShift
    }

    /// The side of one pixel of a tile of `order`, arcseconds.
    public func pixelSizeArcsec(order: Int) -> Double {
        (4 * Double.pi / Double(HEALPix.pixelCount(order + widthShift))).squareRoot() * 180 / .pi * 3600
    }

    /// The centre of the pixel at FITS row `row`, column `column` of the tile whose ``origin(order:npix:)``
    /// is (`face`, `ix`, `iy`), as a unit vector (what ``TanWCS/Projector`` takes).
    @inline(__always) public func centreVector(order: Int, face: Int64, ix: Int64, iy: Int64, row: Int, column: Int) -> Vec3 {
        let x = Double((ix << Int64(widthShift)) + Int64(width - 1 - row)) + 0.5
        let y = Double((iy << Int64(widthShift)) + Int64(column)) + 0.5
        let (z, sth, phi) = HEALPix.locate(x: x, y: y, face: face, nside: Double(HEALPix.nside(order + widthShift)))
        return Vec3(sth * cos(phi), sth * sin(phi), z)
    }

    /// A tile's face and its first pixel's x, y on it (at the tile's order).
    public func origin(order: Int, npix: Int64) -> (face: Int64, ix: Int64, iy: Int64) {
        let (ix, iy, face) = HEALPix.nest2xyf(npix, order: order)
        return (face, ix, iy)
    }

    /// Adds child tile `child` (at `order + 1`; `child >> 2` is the parent) into its parent's
    /// quadrant: each parent pixel becomes the mean of the finite values of the 2×2 child
    /// pixels it covers, NaN when none is finite. Both buffers are FITS-ordered `width²`.
    public func bin(child: Int64, pixels: UnsafeBufferPointer<Float>, into parent: UnsafeMutableBufferPointer<Float>) {
        let w = width, half = w / 2
        let q = Int(child & 3)
        // The quadrant's offset in the parent's x (north-east) and y (north-west).
        let qx = (q & 1) * half, qy = (q >> 1) * half
        for px in 0..<half {
            // Parent x = qx + px covers child x 2px, 2px + 1: child rows w − 1 − 2px and w − 2 − 2px.
            let rowA = (w - 1 - 2 * px) * w, rowB = (w - 2 - 2 * px) * w
            let out = (w - 1 - (qx + px)) * w + qy
            for py in 0..<half {
                let c = 2 * py
                var sum: Float = 0, n: Float = 0
                @inline(__always) func add(_ v: Float) { if v.isFinite { sum += v; n += 1 } }
                add(pixels[rowA + c]); add(pixels[rowA + c + 1]); add(pixels[rowB + c]); add(pixels[rowB + c + 1])
                parent[out + py] = n > 0 ? sum / n : .nan
            }
        }
    }

    /// A tile's path inside the tree: `Norder{k}/Dir{D}/Npix{n}.{ext}`, D = n rounded down to
    /// a multiple of 10,000.
    public static func path(order: Int, npix: Int64, ext: String) -> String {
        "Norder\(order)/Dir\((npix / 10_000) * 10_000)/Npix\(npix).\(ext)"
    }

    /// The `Allsky` preview: the 768 order-3 tiles, each shrunk to `side` pixels, in rows of 27
    /// (29 rows), tile `n` at column `n % 27` and row `n / 27` counting from the top.
    public static let allskyColumns = 27
    public static let allskyRows = 29
    public func allskyTileSide() -> Int { max(1, width / 8) }
}
