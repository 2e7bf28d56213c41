import Foundation
import TesseraCompute
import TesseraProtocol
import TesseraSky
import TesseraStorage

/// What ``SchedulerConnection/makeHiPS(dataset:band:tileWidth:order:cut:directory:)`` made.
public struct HiPSSummary: Sendable {
    public var directory: String
    /// The deepest tile order, and the tile width.
    public var order: Int
    public var tileWidth: Int
    /// Tiles written per order (each as FITS and PNG).
    public var tilesPerOrder: [Int: Int]
    public var bytes: Int
    public var cut: ClosedRange<Double>
    public var seconds: Double
    public var tiles: Int { tilesPerOrder.values.reduce(0, +) }
}

/// Writes a HiPS tree (IVOA HiPS 1.0) as its tiles arrive: `NorderK/DirD/NpixN.fits` and `.png`
/// per tile, then `Norder3/Allsky.fits` and `.png`, `Moc.fits` (the deepest tiles with data)
/// and `properties`. Everything goes into a staging folder beside `directory`, which replaces
/// `directory` only once the tree is whole.
public final class HiPSTreeWriter {
    public let directory: String
    let staging: String
    let tiling: HiPSTiling
    let dataset: String, band: String
    let stretch: PNGImage.AsinhStretch
    private(set) var tilesPerOrder: [Int: Int] = [:]
    private(set) var bytes = 0
    var deepest: [Int64] = []
    var order = -1
    var dataRange = (low: Float.infinity, high: -Float.infinity)
    var coaddScaleArcsec = 0.0
    /// Order-3 tiles shrunk for the Allsky preview, by pixel.
    var allsky: [Int64: [Float]] = [:]
    var madeFolders: Set<String> = []

    public init(directory: String, dataset: String, band: String, tileWidth: Int, cut: ClosedRange<Double>) throws {
        guard let t = HiPSTiling(width: tileWidth) else { throw ClientError.invalidQuery("a HiPS tile width of \(tileWidth)") }
        self.directory = directory
        staging = directory.hasSuffix("/") ? String(directory.dropLast()) + ".partial-\(getpid())" : directory + ".partial-\(getpid())"
        tiling = t
        (self.dataset, self.band) = (dataset, band)
        stretch = PNGImage.AsinhStretch(low: cut.lowerBound, high: cut.upperBound)
        try? FileManager.default.removeItem(atPath: staging)
        try FileManager.default.createDirectory(atPath: staging, withIntermediateDirectories: true)
    }

    /// Drops the staging folder (the tree was not finished).
    public func abandon() { try? FileManager.default.removeItem(atPath: staging) }

    func write(_ bytes: [UInt8], to relative: String) throws {
        let folder = (relative as NSString).deletingLastPathComponent
        if !folder.isEmpty, !madeFolders.contains(folder) {
            try FileManager.default.createDirectory(atPath: staging + "/" + folder, withIntermediateDirectories: true)
            madeFolders.insert(folder)
        }
        guard FileManager.default.createFile(atPath: staging + "/" + relative, contents: Data(bytes)) else {
            throw ClientError.invalidQuery("could not write \(staging)/\(relative)")
        }
        self.bytes += bytes.count
    }

    /// Writes one tile (its FITS from the pixels, its PNG as the worker made it).
    public func add(_ tile: HiPSTile) throws {
        let w = tiling.width
        let o = Int(tile.order)
        guard tile.width == UInt32(w), tile.pixels.count == 4 * w * w, o >= HiPSTiling.minimumOrder, o <= HEALPix.maxOrder - tiling.widthShift,
              tile.npix >= 0, tile.npix < HEALPix.pixelCount(o), !tile.png.isEmpty else {
            throw ClientError.invalidQuery("the job sent a HiPS tile that is not one (order \(tile.order), pixel \(tile.npix), width \(tile.width), \(tile.pixels.count) bytes)")
        }
        let pixels: [Float] = ImageDataset.values(tile.pixels)
        let fits = try FITSMemoryWriter.floatImage(pixels, width: w, height: w, keywords: [
            FITSKeyword("ORDER", .integer(o), "HiPS tile order"), FITSKeyword("NPIX", .integer(Int(tile.npix)), "HEALPix nested pixel of the tile"),
            FITSKeyword("BUNIT", .text("nJy"), ""), FITSKeyword("BAND", .text(band), "filter band"),
        ], name: "HiPS tile \(o)/\(tile.npix)")
        try write(fits, to: HiPSTiling.path(order: o, npix: tile.npix, ext: "fits"))
        try write(Array(tile.png), to: HiPSTiling.path(order: o, npix: tile.npix, ext: "png"))
        tilesPerOrder[o, default: 0] += 1
        if tile.coaddPixelScaleArcsec > 0 { coaddScaleArcsec = tile.coaddPixelScaleArcsec }
        if o > order {
            order = o
            deepest = []
        }
        if o == order {
            deepest.append(tile.npix)
            for v in pixels where v.isFinite {
                dataRange = (min(dataRange.low, v), max(dataRange.high, v))
            }
        }
        if o == HiPSTiling.minimumOrder { allsky[tile.npix] = shrunk(pixels) }
    }

    /// A tile shrunk 8× per side by means of the finite pixels (FITS order kept).
    func shrunk(_ pixels: [Float]) -> [Float] {
        let w = tiling.width, s = tiling.allskyTileSide(), f = w / s
        var out = [Float](repeating: .nan, count: s * s)
        for r in 0..<s {
            for c in 0..<s {
                var sum: Float = 0, n: Float = 0
                for dy in 0..<f {
                    for dx in 0..<f {
                        let v = pixels[(r * f + dy) * w + c * f + dx]
                        if v.isFinite { sum += v; n += 1 }
                    }
                }
                if n > 0 { out[r * s + c] = sum / n }
            }
        }
        return out
    }

    /// Writes the Allsky preview, the MOC and `properties`, and puts the tree in place.
    public func finish(seconds: Double, cut: ClosedRange<Double>) throws -> HiPSSummary {
        guard order >= HiPSTiling.minimumOrder else { throw ClientError.invalidQuery("the job made no HiPS tile") }
        // Allsky: tile n at column n % 27 and row n / 27 from the top (FITS's last rows).
        let s = tiling.allskyTileSide()
        let width = HiPSTiling.allskyColumns * s, height = HiPSTiling.allskyRows * s
        var sky = [Float](repeating: .nan, count: width * height)
        for (n, thumb) in allsky {
            let row = Int(n) / HiPSTiling.allskyColumns, column = Int(n) % HiPSTiling.allskyColumns
            let top = height - (row + 1) * s
            for r in 0..<s {
                for c in 0..<s { sky[(top + r) * width + column * s + c] = thumb[r * s + c] }
            }
        }
        try write(try FITSMemoryWriter.floatImage(sky, width: width, height: height, keywords: [
            FITSKeyword("ORDER", .integer(HiPSTiling.minimumOrder), "HiPS Allsky order"), FITSKeyword("BUNIT", .text("nJy"), ""),
        ], name: "HiPS Allsky"), to: "Norder\(HiPSTiling.minimumOrder)/Allsky.fits")
        let grey = sky.withUnsafeBufferPointer { PNGImage.greyAlpha($0, width: width, height: height, stretch: stretch) }
        try write(try PNGImage.encode(width: width, height: height, kind: .greyAlpha, pixels: grey), to: "Norder\(HiPSTiling.minimumOrder)/Allsky.png")
        let moc = CoverageMOC(order: order, pixels: deepest)
        try write(try moc.fitsBytes(), to: "Moc.fits")
        try write(Array(properties(moc: moc, cut: cut).utf8), to: "properties")
        // Into place: the old tree (if any) moved aside, the new one renamed, the old removed.
        let fm = FileManager.default
        let old = staging.replacingOccurrences(of: ".partial-", with: ".old-")
        if fm.fileExists(atPath: directory) {
            try? fm.removeItem(atPath: old)
            try fm.moveItem(atPath: directory, toPath: old)
        }
        try fm.moveItem(atPath: staging, toPath: directory)
        try? fm.removeItem(atPath: old)
        return HiPSSummary(directory: directory, order: order, tileWidth: tiling.width, tilesPerOrder: tilesPerOrder, bytes: bytes, cut: cut, seconds: seconds)
    }

    /// The HiPS 1.0 `properties` file.
    func properties(moc: CoverageMOC, cut: ClosedRange<Double>) -> String {
        // The initial view: the mean direction of the deepest tiles, wide enough for them all.
        var sum = Vec3(0, 0, 0)
        let centres = deepest.map { HEALPix.centerVector(order: order, pixel: $0) }
        for c in centres { sum = Vec3(sum.x + c.x, sum.y + c.y, sum.z + c.z) }
        let centre = sum.length > 0 ? sum.normalized : Vec3(1, 0, 0)
        let reach = centres.map { $0.angle(to: centre) * 180 / .pi }.max() ?? 0
        let tileSize = (4 * Double.pi / Double(HEALPix.pixelCount(order))).squareRoot() * 180 / .pi
        let fov = min(180, 2 * reach + 2 * tileSize)
        let (ra, dec) = centre.raDec
        let now = ISO8601DateFormatter.string(from: Date(), timeZone: TimeZone(identifier: "UTC")!, formatOptions: [.withFullDate, .withTime, .withColonSeparatorInTime, .withDashSeparatorInDate])
        let date = String(now.prefix(16)) + "Z"
        let skyFraction = Double(moc.cells.reduce(0) { $0 + $1.value.count * (1 << (2 * (moc.maxOrder - $1.key))) }) / Double(HEALPix.pixelCount(moc.maxOrder))
        var lines: [(String, String)] = [
            ("creator_did", "ivo://tessera/P/\(dataset)/\(band)"),
            ("obs_title", "\(dataset) \(band)"),
            ("obs_description", "Coadd of band \(band) of Tessera image dataset \(dataset)"),
            ("dataproduct_type", "image"),
            ("obs_regime", "Optical"),
            ("hips_version", "1.4"),
            ("hips_builder", "Tessera"),
            ("hips_release_date", date),
            ("hips_creation_date", date),
            ("hips_status", "public master unclonable"),
            ("hips_frame", "equatorial"),
            ("hips_order", "\(order)"),
            ("hips_order_min", "\(HiPSTiling.minimumOrder)"),
            ("hips_tile_width", "\(tiling.width)"),
            ("hips_tile_format", "png fits"),
            ("hips_pixel_bitpix", "-32"),
            ("data_pixel_bitpix", "-32"),
            ("hips_pixel_cut", "\(cut.lowerBound) \(cut.upperBound)"),
            ("hips_sampling", "none"),
            ("hips_hierarchy", "mean"),
            ("hips_pixel_scale", String(format: "%.6e", tiling.pixelSizeArcsec(order: order) / 3600)),
            ("hips_initial_ra", String(format: "%.6f", ra)),
            ("hips_initial_dec", String(format: "%.6f", dec)),
            ("hips_initial_fov", String(format: "%.6f", fov)),
            ("moc_sky_fraction", String(format: "%.6e", skyFraction)),
            ("hips_nb_tiles", "\(tilesPerOrder.values.reduce(0, +))"),
        ]
        if coaddScaleArcsec > 0 { lines.append(("s_pixel_scale", String(format: "%.6e", coaddScaleArcsec / 3600))) }
        if dataRange.low <= dataRange.high { lines.append(("hips_data_range", "\(dataRange.low) \(dataRange.high)")) }
        return lines.map { $0.0.padding(toLength: 20, withPad: " ", startingAt: 0) + " = " + $0.1 }.joined(separator: "\n") + "\n"
    }
}

extension SchedulerConnection {
    /// Makes an all-sky HiPS (IVOA HiPS 1.0) of one band of an image dataset on the workers that
    /// hold its patches, and writes the tree into `directory` (replaced whole once complete).
    ///
    /// Without a `cut`, the PNG tiles' stretch runs from the band's median pixel (the sky) to
    /// its 99.9th percentile, from the dataset's pixel statistics (one more job first).
    public func makeHiPS(dataset: String, band: String, tileWidth: Int = 512, order: Int = 0, cut: ClosedRange<Double>? = nil,
                         directory: String, onTiles: (Int, Int, Int) -> Void = { _, _, _ in }) throws -> HiPSSummary {
        let start = DispatchTime.now().uptimeNanoseconds
        let range: ClosedRange<Double>
        if let cut {
            range = cut
        } else {
            let stats = try run(CatalogQuery(dataset: dataset).imageStatistics(bands: [band], mapOrder: 1), name: "HiPS cut \(dataset) \(band)")
            guard let s = stats.result.partial.imageStatistics.first(where: { $0.band == band }) else {
                throw ClientError.invalidQuery("`\(dataset)` has no pixels of band \(band) to set the HiPS's cut from")
            }
            let sketch = QuantileSketch(s.values)
            let (low, high) = (sketch.quantile(0.5), sketch.quantile(0.999))
            let sigma = ImageStatistics.summary(s).robustSigma
            range = low...(high > low ? high : low + max(1, 10 * (sigma.isFinite ? sigma : 1)))
        }
        let writer = try HiPSTreeWriter(directory: directory, dataset: dataset, band: band, tileWidth: tileWidth, cut: range)
        var failure: (any Error)?
        do {
            _ = try run(CatalogQuery(dataset: dataset).hips(band: band, tileWidth: tileWidth, order: order, cut: range), name: "HiPS \(dataset) \(band)") { update in
                guard failure == nil else { return }
                do {
                    for tile in update.result.partial.hipsTiles { try writer.add(tile) }
                } catch {
                    failure = error
                }
                onTiles(writer.tilesPerOrder.values.reduce(0, +), update.tasksDone, update.taskCount)
            } isStopped: { failure != nil }
        } catch {
            writer.abandon()
            throw failure ?? error
        }
        if let failure {
            writer.abandon()
            throw failure
        }
        do {
            return try writer.finish(seconds: Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9, cut: range)
        } catch {
            writer.abandon()
            throw error
        }
    }
}
