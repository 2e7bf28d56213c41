import Foundation

/// A rectangle of pixels: columns `x0 ..< x0 + width`, rows `y0 ..< y0 + height` (0-based).
public struct PixelBox: Sendable, Hashable, Codable, CustomStringConvertible {
    public var x0: Int, y0: Int, width: Int, height: Int

    public init(x0: Int, y0: Int, width: Int, height: Int) {
        (self.x0, self.y0, self.width, self.height) = (x0, y0, max(0, width), max(0, height))
    }

    public var x1: Int { x0 + width }
    public var y1: Int { y0 + height }
    public var isEmpty: Bool { width == 0 || height == 0 }
    public var pixelCount: Int { width * height }

    public func intersection(_ o: PixelBox) -> PixelBox {
        let a = max(x0, o.x0), b = max(y0, o.y0)
        return PixelBox(x0: a, y0: b, width: min(x1, o.x1) - a, height: min(y1, o.y1) - b)
    }

    public func contains(_ o: PixelBox) -> Bool { o.x0 >= x0 && o.y0 >= y0 && o.x1 <= x1 && o.y1 <= y1 }

    /// The box of `size` pixels per side that astropy's `Cutout2D` takes around a 0-based position:
    /// it starts at `ceil(position - size / 2)` on each axis.
    public static func centred(x: Double, y: Double, width: Int, height: Int) -> PixelBox {
        PixelBox(x0: Int((x - Double(width) / 2).rounded(.up)), y0: Int((y - Double(height) / 2).rounded(.up)), width: width, height: height)
    }

    public var description: String { "[\(x0)..<\(x1)] × [\(y0)..<\(y1)]" }
}

/// How coadd images cover the sky, as LSST's tracts and patches do, aligned with the catalog's
/// HEALPix sharding.
///
/// - A **tract** is a HEALPix pixel at `tractOrder` (5: about 1.8°). It has one TAN projection,
///   north up, tangent at the pixel's centre, with `pixelScaleArcsec` pixels; its pixel grid is
///   square, with the tangent point at its middle, large enough for every patch below.
/// - A **patch** is a box of its tract's grid covering one HEALPix pixel at `patchOrder` (8:
///   about 14′) inside the tract — the bounding box of the pixel's outline — plus `borderPixels`
///   on every side.
/// - The border is the overlap: patches overlap their neighbours by twice the border, and a tract's
///   edge patches reach `borderPixels` into the neighbouring tracts. A cutout of at most
///   `2 × borderPixels + 1` pixels per side centred anywhere therefore lies inside one patch
///   (the patch of its centre's pixel) — an exact copy of its pixels, never resampled. Larger
///   cutouts are assembled from the patches of the centre's tract, in that tract's grid.
public struct SkyTiling: Sendable, Hashable, Codable {
    public var tractOrder: Int
    public var patchOrder: Int
    public var pixelScaleArcsec: Double
    public var borderPixels: Int

    public static let defaultBorderPixels = 256

    public init(tractOrder: Int = 5, patchOrder: Int = 8, pixelScaleArcsec: Double = 0.2, borderPixels: Int = defaultBorderPixels) {
        (self.tractOrder, self.patchOrder, self.pixelScaleArcsec, self.borderPixels) = (tractOrder, patchOrder, pixelScaleArcsec, borderPixels)
    }

    /// Why a tiling's parameters cannot be used.
    public func validate() throws(SkyError) {
        guard (0...12).contains(tractOrder), tractOrder < patchOrder, patchOrder <= tractOrder + 6 else {
            throw .invalidTiling("tract order \(tractOrder) and patch order \(patchOrder): need 0 ≤ tract order ≤ 12 and tract order < patch order ≤ tract order + 6")
        }
        guard pixelScaleArcsec.isFinite, (0.01...60).contains(pixelScaleArcsec) else {
            throw .invalidTiling("pixel scale \(pixelScaleArcsec)″: must be within 0.01″ … 60″")
        }
        guard (0...8192).contains(borderPixels) else { throw .invalidTiling("patch border \(borderPixels) pixels: must be within 0 … 8192") }
        // Every patch must fit in memory-sized files: at most 32768 pixels per side.
        let side = Double(maxPatchSide)
        guard side <= 32768 else {
            throw .invalidTiling("patches of order \(patchOrder) at \(pixelScaleArcsec)″ would be \(Int(side)) pixels wide (at most 32768): use a finer patch order or coarser pixels")
        }
    }

    /// The largest cutout, in pixels per side, that always lies inside one patch.
    public var singlePatchCutoutPixels: Int { 2 * borderPixels + 1 }

    /// The tract holding a position (the HEALPix pixel at `tractOrder`).
    public func tract(ra: Double, dec: Double) -> Int64 { HEALPix.pixel(order: tractOrder, ra: ra, dec: dec) }

    /// The patch holding a position (the HEALPix pixel at `patchOrder`).
    public func patch(ra: Double, dec: Double) -> Int64 { HEALPix.pixel(order: patchOrder, ra: ra, dec: dec) }

    /// The tract a patch belongs to.
    public func tract(ofPatch patch: Int64) -> Int64 { patch >> (2 * Int64(patchOrder - tractOrder)) }

    /// A tract's patches.
    public func patches(ofTract tract: Int64) -> Range<Int64> { HEALPix.children(tract, order: tractOrder, to: patchOrder) }

    private var scaleRadians: Double { pixelScaleArcsec / 3600 * .pi / 180 }

    /// Pixels from a tract's tangent point to the edge of its grid: the farthest point of the tract's
    /// outline, projected, plus the border and a little slack.
    public func tractHalfSide(_ tract: Int64) -> Int {
        let c = HEALPix.centerVector(order: tractOrder, pixel: tract)
        var far = 0.0
        for b in HEALPix.boundaries(order: tractOrder, pixel: tract, step: 16) { far = max(far, c.angle(to: b)) }
        return Int((tan(far) / scaleRadians).rounded(.up)) + borderPixels + 2
    }

    /// A tract's grid: `2 × half + 1` pixels per side, the tangent point at pixel `(half, half)`.
    public func tractBox(_ tract: Int64) -> PixelBox {
        let h = tractHalfSide(tract)
        return PixelBox(x0: 0, y0: 0, width: 2 * h + 1, height: 2 * h + 1)
    }

    /// A tract's projection, for its whole grid (0-based pixels of `tractBox`).
    public func tractWCS(_ tract: Int64) -> TanWCS {
        let (ra, dec) = HEALPix.centerRaDec(order: tractOrder, pixel: tract)
        let h = Double(tractHalfSide(tract))
        return .northUp(ra: ra, dec: dec, x: h, y: h, scaleArcsec: pixelScaleArcsec)
    }

    /// A patch's box in its tract's grid: the projected outline's bounding box (one pixel of
    /// slack for the curved edges between the outline's samples), plus the border.
    public func patchBox(_ patch: Int64) -> PixelBox {
        let tract = tract(ofPatch: patch)
        let wcs = tractWCS(tract)
        var (xMin, yMin, xMax, yMax) = (Double.infinity, Double.infinity, -Double.infinity, -Double.infinity)
        for v in HEALPix.boundaries(order: patchOrder, pixel: patch, step: 16) {
            let (ra, dec) = v.raDec
            guard let p = wcs.pixel(ra: ra, dec: dec) else { continue }
            (xMin, yMin, xMax, yMax) = (min(xMin, p.x), min(yMin, p.y), max(xMax, p.x), max(yMax, p.y))
        }
        let x0 = Int(xMin.rounded(.down)) - 1 - borderPixels
        let y0 = Int(yMin.rounded(.down)) - 1 - borderPixels
        let x1 = Int(xMax.rounded(.up)) + 2 + borderPixels
        let y1 = Int(yMax.rounded(.up)) + 2 + borderPixels
        return PixelBox(x0: x0, y0: y0, width: x1 - x0, height: y1 - y0)
    }

    /// An upper bound on a patch's side, pixels (for checking a tiling's sizes before any work).
    public var maxPatchSide: Int {
        Int((2 * HEALPix.maxPixelRadius(order: patchOrder) / scaleRadians).rounded(.up)) + 2 * borderPixels + 4
    }

    /// The patches whose outline (without border) may meet a region (HEALPix's inclusive cover).
    public func patches(meeting region: some SkyRegion) -> [Int64] {
        HEALPix.pixels(of: region, order: patchOrder, inclusive: true)
    }
}
