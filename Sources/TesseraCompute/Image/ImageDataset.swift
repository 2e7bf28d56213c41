import Foundation
import TesseraProtocol
import TesseraSky
import TesseraStorage

/// How an image dataset's patches are keyed, and its wire forms (ImagePatchInfo, ImageCutoutPiece).
///
/// An image dataset is stored through the same machinery as a catalog (registry shards, replicas,
/// manifests, ingest transactions). Each shard is one band of one patch; its HEALPix key is the
/// patch's pixel's child two orders down numbered by the band's place in the dataset's band list,
/// so keys of a dataset never collide or overlap, and each lies inside its patch on the sky.
public enum ImageDataset {
    public static let kind = "image"
    /// At most this many bands: a patch pixel has 16 children two orders down.
    public static let maxBands = 16
    /// Images on their own grid are keyed under their centre's pixel at this order (3.2″).
    public static let ownGridOrder = 16

    /// The shard key of `band` (its index in the dataset's bands) of a patch, or of an image on
    /// its own grid centred at `centre` (tract -1).
    public static func shardPlace(header h: ImagePatchHeader, bandIndex: Int) -> (order: Int, pixel: Int64) {
        if h.tract >= 0 {
            return (h.patchOrder + 2, h.patch << 4 | Int64(bandIndex))
        }
        let c = h.wcs.sky(x: Double(h.width - 1) / 2, y: Double(h.height - 1) / 2)
        return (ownGridOrder + 2, HEALPix.pixel(order: ownGridOrder, ra: c.ra, dec: c.dec) << 4 | Int64(bandIndex))
    }

    /// Why a stored file cannot be the shard `(order, pixel)`, or nil.
    public static func placeProblem(header h: ImagePatchHeader, order: Int, pixel: Int64) -> String? {
        let want = shardPlace(header: h, bandIndex: Int(pixel & 15))
        return want.order == order && want.pixel == pixel ? nil
            : "the file is band \(h.band) of tract \(h.tract) patch \(h.patch), which is shard order\(want.order)-pix\(want.pixel & ~15)+band, not order\(order)-pix\(pixel)"
    }

    public static func wcs(_ w: TanWCS) -> [Double] { [w.crval1, w.crval2, w.crpix1, w.crpix2, w.cd11, w.cd12, w.cd21, w.cd22, w.lonpole] }

    public static func wcs(_ v: [Double]) -> TanWCS? {
        guard v.count == 9 else { return nil }
        let w = TanWCS(crval1: v[0], crval2: v[1], crpix1: v[2], crpix2: v[3], cd11: v[4], cd12: v[5], cd21: v[6], cd22: v[7], lonpole: v[8])
        return w.problem == nil ? w : nil
    }

    public static func info(_ h: ImagePatchHeader) -> Tessera_V1_ImagePatchInfo {
        var i = Tessera_V1_ImagePatchInfo()
        i.band = h.band
        i.tract = h.tract
        i.patch = h.patch
        i.tractOrder = UInt32(clamping: max(0, h.tractOrder))
        i.patchOrder = UInt32(clamping: max(0, h.patchOrder))
        i.x0 = Int64(h.x0)
        i.y0 = Int64(h.y0)
        i.width = UInt32(h.width)
        i.height = UInt32(h.height)
        i.wcs = wcs(h.wcs)
        return i
    }

    /// The patch a registry record describes (nil for a record that does not describe one).
    public static func header(_ i: Tessera_V1_ImagePatchInfo) -> ImagePatchHeader? {
        guard let w = wcs(i.wcs), i.width > 0, i.height > 0, i.x0.magnitude < 1 << 40, i.y0.magnitude < 1 << 40 else { return nil }
        return ImagePatchHeader(band: i.band, tract: i.tract, patch: i.patch, tractOrder: Int(i.tractOrder), patchOrder: Int(i.patchOrder),
                                x0: Int(i.x0), y0: Int(i.y0), width: Int(i.width), height: Int(i.height), wcs: w)
    }

    /// The grid's WCS of a patch (its own, shifted back to the grid's first pixel).
    public static func gridWCS(_ h: ImagePatchHeader) -> TanWCS { h.wcs.shifted(x0: -h.x0, y0: -h.y0) }

    public static func piece(_ c: ImageCutout, tiling: (tractOrder: Int, patchOrder: Int)) -> Tessera_V1_ImageCutoutPiece {
        var p = Tessera_V1_ImageCutoutPiece()
        p.band = c.band
        p.tract = c.tract
        p.x0 = Int64(c.box.x0)
        p.y0 = Int64(c.box.y0)
        p.width = UInt32(c.box.width)
        p.height = UInt32(c.box.height)
        p.gridWcs = wcs(c.gridWCS)
        p.image = c.image.withUnsafeBytes { Data($0) }
        p.variance = c.variance.withUnsafeBytes { Data($0) }
        p.mask = c.mask.withUnsafeBytes { Data($0) }
        p.tractOrder = UInt32(max(0, tiling.tractOrder))
        p.patchOrder = UInt32(max(0, tiling.patchOrder))
        return p
    }

    /// A piece read back, or why it cannot be (sizes that do not agree).
    public static func cutout(_ p: Tessera_V1_ImageCutoutPiece) -> ImageCutout? {
        // The sides first: the product of two unchecked 32-bit sides can overflow.
        guard p.width <= 1 << 16, p.height <= 1 << 16, let w = wcs(p.gridWcs) else { return nil }
        let n = Int(p.width) * Int(p.height)
        guard p.image.count == 4 * n, p.variance.count == 4 * n, p.mask.count == 4 * n else { return nil }
        var c = ImageCutout(band: p.band, box: PixelBox(x0: Int(p.x0), y0: Int(p.y0), width: Int(p.width), height: Int(p.height)), gridWCS: w, tract: p.tract)
        c.image = values(p.image)
        c.variance = values(p.variance)
        c.mask = values(p.mask)
        return c
    }

    /// The values a wire field holds (little-endian, as this machine's: Float or Int32), copied
    /// out of bytes that need not be aligned.
    public static func values<T: BitwiseCopyable>(_ d: Data) -> [T] {
        [T](unsafeUninitializedCapacity: d.count / MemoryLayout<T>.stride) { buf, n in
            n = d.copyBytes(to: buf) / MemoryLayout<T>.stride
        }
    }

    /// The bands a question asks of an image dataset (`asked`; empty: all of them), checked: each
    /// one the dataset's, none twice.
    public static func bands(_ asked: [String], of info: Tessera_V1_ImageDatasetInfo, dataset: String) throws(CatalogQueryError) -> [String] {
        let bands = asked.isEmpty ? info.bands : asked
        for b in bands where !info.bands.contains(b) {
            throw CatalogQueryError("`\(dataset.prefix(100))` has no band `\(b.prefix(40))` (it has \(info.bands.joined(separator: ", ")))")
        }
        guard Set(bands).count == bands.count else { throw CatalogQueryError("a question names a band twice") }
        return bands
    }

    /// Why a dataset's bands and tiling cannot be recorded, or nil.
    public static func infoProblem(_ i: Tessera_V1_ImageDatasetInfo) -> String? {
        guard !i.bands.isEmpty, i.bands.count <= maxBands, Set(i.bands).count == i.bands.count else {
            return "an image dataset needs 1…\(maxBands) distinct bands (has \(i.bands.count))"
        }
        for b in i.bands where b.isEmpty || b.utf8.count > 16 || !b.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") }) {
            return "band name `\(b.prefix(40))`: 1 to 16 letters, digits or _"
        }
        do {
            try SkyTiling(tractOrder: Int(i.tractOrder), patchOrder: Int(i.patchOrder), pixelScaleArcsec: i.pixelScaleArcsec, borderPixels: Int(i.borderPixels)).validate()
        } catch {
            return "\(error)"
        }
        return nil
    }
}

/// Where a cutout lies: the sky position that picks its grid, and its box in a grid.
public enum CutoutGeometry {
    /// The most pixels per side of one band's cutout.
    public static let maxSide = 4096
    /// The most pixels of all bands' cutouts of one question (12 bytes each: 768 MB).
    public static let maxPixels = 64 << 20
    /// The most pixels a cutout's pieces may hold together (one per patch it spans, each the
    /// size of the whole cutout, merged in a tree).
    public static let maxLeafPixels = 4 * maxPixels

    /// The position a region is centred on (a cone's centre, a box's middle, a polygon's mean
    /// direction), or nil for no region.
    public static func centre(_ region: CatalogQueryPlan.OneOf_Region?) -> (ra: Double, dec: Double)? {
        switch region {
        case .cone(let c): return (c.ra, c.dec)
        case .box(let b):
            // As the checked region has it (RA wrapped, a span over 360° the whole circle): the
            // plan's own numbers may be anything finite, and their difference overflow.
            return (try? BoxRegion(raMin: b.raMin, raMax: b.raMax, decMin: b.decMin, decMax: b.decMax))?.centre
        case .polygon(let p):
            var x = 0.0, y = 0.0, z = 0.0
            for (r, d) in zip(p.ra, p.dec) { let v = Vec3(ra: r, dec: d); x += v.x; y += v.y; z += v.z }
            let v = Vec3(x, y, z)
            return v.length > 0 ? v.normalized.raDec : nil
        case nil: return nil
        }
    }

    /// Points along a region's outline (for its bounding box in a grid).
    static func outline(_ region: CatalogQueryPlan.OneOf_Region?) -> [(ra: Double, dec: Double)] {
        let steps = 32
        switch region {
        case .box(let plan):
            guard let b = try? BoxRegion(raMin: plan.raMin, raMax: plan.raMax, decMin: plan.decMin, decMax: plan.decMax) else { return [] }
            let span = b.raWidth
            var out: [(Double, Double)] = []
            for i in 0...steps {
                let f = Double(i) / Double(steps)
                out += [(b.raMin + span * f, b.decMin), (b.raMin + span * f, b.decMax),
                        (b.raMin, b.decMin + (b.decMax - b.decMin) * f), (b.raMin + span, b.decMin + (b.decMax - b.decMin) * f)]
            }
            return out
        case .polygon(let p):
            var out: [(Double, Double)] = []
            let v = zip(p.ra, p.dec).map { Vec3(ra: $0, dec: $1) }
            for k in v.indices {
                let a = v[k], b = v[(k + 1) % v.count]
                for i in 0..<steps {
                    let f = Double(i) / Double(steps)
                    out.append(Vec3(a.x + (b.x - a.x) * f, a.y + (b.y - a.y) * f, a.z + (b.z - a.z) * f).normalized.raDec)
                }
            }
            return out
        default: return []
        }
    }

    /// The cutout's box in the grid of `wcs`: `width × height` pixels around the centre when
    /// given (as astropy's Cutout2D places them); else a cone's diameter (2⌈r / scale⌉ + 1
    /// pixels, the centre's pixel in the middle), or the pixels whose centres lie inside a box's
    /// or polygon's outline's bounding box.
    /// - Throws: a message naming the limit when it is larger than `maxSide`.
    public static func box(region: CatalogQueryPlan.OneOf_Region?, width: Int, height: Int, wcs: TanWCS) throws(CatalogQueryError) -> PixelBox {
        guard let c = centre(region), let p = wcs.pixel(ra: c.ra, dec: c.dec) else {
            throw CatalogQueryError("a cutout needs a region (a cone, box or polygon) to say where it is")
        }
        // Pixel coordinates become integers below: only near the grid (the caller picks the grid
        // holding the centre).
        guard abs(p.x) < 1e9, abs(p.y) < 1e9 else {
            throw CatalogQueryError("the cutout's centre (\(c.ra), \(c.dec)) lies outside the image's grid")
        }
        var box: PixelBox
        if width > 0 || height > 0 {
            box = .centred(x: p.x, y: p.y, width: max(width, 1), height: max(height, 1))
        } else if case .cone(let cone) = region {
            let n = 2 * Int((cone.radius * 3600 / wcs.pixelScaleArcsec).rounded(.up).clamped(to: 0...1e7)) + 1
            box = .centred(x: p.x, y: p.y, width: n, height: n)
        } else {
            var (x0, y0, x1, y1) = (Double.infinity, Double.infinity, -Double.infinity, -Double.infinity)
            for q in outline(region) {
                guard let g = wcs.pixel(ra: q.ra, dec: q.dec) else {
                    throw CatalogQueryError("the cutout's region reaches 90° from its centre: it cannot be drawn on one tangent plane")
                }
                (x0, y0, x1, y1) = (min(x0, g.x), min(y0, g.y), max(x1, g.x), max(y1, g.y))
            }
            let side = Double(maxSide) * 4
            guard x1 - x0 < side, y1 - y0 < side, abs(x0) < 1e9, abs(y0) < 1e9 else {
                throw CatalogQueryError("a cutout of \((x1 - x0).wholeText) × \((y1 - y0).wholeText) pixels is larger than the limit of \(maxSide) × \(maxSide): narrow the region")
            }
            let a = Int(x0.rounded(.up)), b = Int(y0.rounded(.up))
            box = PixelBox(x0: a, y0: b, width: Int(x1.rounded(.down)) + 1 - a, height: Int(y1.rounded(.down)) + 1 - b)
        }
        guard box.width <= maxSide, box.height <= maxSide, !box.isEmpty else {
            throw CatalogQueryError("a cutout of \(box.width) × \(box.height) pixels is larger than the limit of \(maxSide) × \(maxSide) pixels (\(String(format: "%.1f", Double(maxSide) * wcs.pixelScaleArcsec / 60))′ at this dataset's \(wcs.pixelScaleArcsec)″ pixels): ask for a smaller region")
        }
        return box
    }
}

extension Double {
    func clamped(to r: ClosedRange<Double>) -> Double { Swift.min(Swift.max(self, r.lowerBound), r.upperBound) }
}
