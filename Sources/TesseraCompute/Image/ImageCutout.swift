import TesseraSky
import TesseraStorage

/// A box of one band's pixels in one grid (a tract's, or an image's own): image, variance and
/// mask, row-major, `box.width` values per row. Pixels no patch covered are NaN with
/// `ImageMask.noData` set.
///
/// Cutouts are assembled by pasting patches (each an exact copy of its pixels); partial cutouts
/// from several workers merge by pasting too, so a cutout spanning patches on two workers is
/// the same as one made on a single machine.
public struct ImageCutout: Sendable, Equatable {
    public var band: String
    /// Where the cutout lies in its grid.
    public var box: PixelBox
    /// The grid's WCS (0-based pixel (0, 0) of the grid); the cutout's own is `wcs`.
    public var gridWCS: TanWCS
    /// The tract the grid belongs to (-1: an image's own grid), and the tiling's orders.
    public var tract: Int64
    public var image: [Float]
    public var variance: [Float]
    public var mask: [Int32]

    public init(band: String, box: PixelBox, gridWCS: TanWCS, tract: Int64) {
        (self.band, self.box, self.gridWCS, self.tract) = (band, box, gridWCS, tract)
        image = [Float](repeating: .nan, count: box.pixelCount)
        variance = [Float](repeating: .nan, count: box.pixelCount)
        mask = [Int32](repeating: ImageMask.noData, count: box.pixelCount)
    }

    /// The cutout's own WCS: the grid's, shifted to the cutout's first pixel (as astropy's
    /// `Cutout2D` shifts `CRPIX`).
    public var wcs: TanWCS { gridWCS.shifted(x0: box.x0, y0: box.y0) }

    /// Pixels covered by some patch.
    public var coveredPixels: Int { mask.reduce(0) { $0 + ($1 & ImageMask.noData == 0 ? 1 : 0) } }

    /// Copies the part of a patch file that falls inside this cutout (the patch's header says
    /// where it lies in the grid).
    public mutating func paste(_ file: ImagePatchFile) {
        let h = file.header
        let part = box.intersection(h.box)
        guard !part.isEmpty else { return }
        // The part, in the file's own pixels, copied straight into the planes.
        let inFile = PixelBox(x0: part.x0 - h.x0, y0: part.y0 - h.y0, width: part.width, height: part.height)
        let at = (x: part.x0 - box.x0, y: part.y0 - box.y0)
        let w = box.width
        image.withUnsafeMutableBytes { file.copy(.image, box: inFile, into: $0.baseAddress!, rowLength: w, at: at) }
        variance.withUnsafeMutableBytes { file.copy(.variance, box: inFile, into: $0.baseAddress!, rowLength: w, at: at) }
        mask.withUnsafeMutableBytes { file.copy(.mask, box: inFile, into: $0.baseAddress!, rowLength: w, at: at) }
    }

    /// Copies another cutout of the same grid into this one, where they overlap (a reduction's
    /// merge of partial cutouts). Only covered pixels are copied.
    public mutating func paste(_ other: ImageCutout) {
        let part = box.intersection(other.box)
        guard !part.isEmpty else { return }
        for y in part.y0..<part.y1 {
            let src = (y - other.box.y0) * other.box.width + (part.x0 - other.box.x0)
            let dst = (y - box.y0) * box.width + (part.x0 - box.x0)
            for i in 0..<part.width where other.mask[src + i] & ImageMask.noData == 0 {
                image[dst + i] = other.image[src + i]
                variance[dst + i] = other.variance[src + i]
                mask[dst + i] = other.mask[src + i]
            }
        }
    }

    /// Writes row-major planes of `part` (inside `box`) into the cutout.
    public mutating func write(_ part: PixelBox, image img: [Float], variance vari: [Float], mask msk: [Int32]) {
        for y in part.y0..<part.y1 {
            let src = (y - part.y0) * part.width
            let dst = (y - box.y0) * box.width + (part.x0 - box.x0)
            for i in 0..<part.width {
                image[dst + i] = img[src + i]
                variance[dst + i] = vari[src + i]
                mask[dst + i] = msk[src + i]
            }
        }
    }

    /// The cutout as a patch file's header (its first pixel's place in the grid, its own WCS).
    public func patchHeader(tiling: SkyTiling?) -> ImagePatchHeader {
        ImagePatchHeader(band: band, tract: tract, patch: -1, tractOrder: tiling?.tractOrder ?? -1, patchOrder: tiling?.patchOrder ?? -1,
                         x0: box.x0, y0: box.y0, width: box.width, height: box.height, wcs: wcs)
    }

    /// The FITS file of a cutout's bands (`tessera cutout` and SODA write the same bytes): an
    /// IMAGE, MASK and VARIANCE per band, each with the cutout's WCS, and the dataset's name.
    public static func fitsFile(_ cuts: [ImageCutout], dataset: String) throws(ImageFileError) -> [UInt8] {
        let planes = cuts.map { ImagePatchWriter.Planes(header: $0.patchHeader(tiling: nil), image: $0.image, variance: $0.variance, mask: $0.mask) }
        return try ImagePatchWriter.encode(bands: planes, extraKeywords: [FITSKeyword("DATASET", .text(String(dataset.prefix(60))), "Tessera image dataset")])
    }
}
