import ArgumentParser
import Foundation
import TesseraClient
import TesseraSky

struct HiPSCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hips",
        abstract: "Make an all-sky HiPS (IVOA HiPS 1.0) of one band of a coadd, on the workers that hold its patches, into a folder a web server can serve.",
        discussion: """
            Each patch's worker makes the deepest tiles inside the patch's own HEALPix pixel (each
            tile pixel is the coadd pixel nearest the HEALPix pixel's centre, not interpolated) and
            the coarser ones up to the patch order by 2×2 means; a tree of tasks makes the tiles
            above, down to order 3. Tiles are FITS (float32, nJy) and PNG (grey, arcsinh-stretched
            from --cut, transparent where there is no data), laid out as the standard says, with
            Norder3/Allsky.fits and .png, Moc.fits (the deepest tiles with data) and properties.
            The folder is written beside OUT and replaces it only when complete.

            Without --cut, the stretch runs from the band's median pixel to its 99.9th
            percentile (from `tessera image-stats`, run first).

            Example:
              tessera hips --dataset coadd --band r -o tessera-data/hips/coadd_r
            """)

    @Option(help: "The image dataset (a tiled coadd).")
    var dataset: String

    @Option(help: "The band.")
    var band: String

    @Option(name: .shortAndLong, help: "The HiPS folder to write (replaced when complete).")
    var output: String

    @Option(help: "Pixels per tile side: 64, 128, 256 or 512.")
    var tileWidth = 512

    @Option(help: "The deepest tile order (default: the one whose pixels are nearest the coadd's).")
    var order: Int?

    @Option(help: "The PNG stretch LO,HI in nJy per pixel (default: median … 99.9th percentile).")
    var cut: String?

    @OptionGroup var job: JobOptions
    @OptionGroup var target: SchedulerTarget

    func validate() throws {
        guard HiPSTiling(width: tileWidth) != nil else { throw ValidationError("--tile-width must be one of \(HiPSTiling.allowedWidths.map(String.init).joined(separator: ", "))") }
        if let order { guard (HiPSTiling.minimumOrder...(HEALPix.maxOrder - 6)).contains(order) else { throw ValidationError("--order must be \(HiPSTiling.minimumOrder) … \(HEALPix.maxOrder - 6)") } }
        if let cut {
            let c = try optionNumbers(cut, 2, "--cut")
            guard c[0] < c[1] else { throw ValidationError("--cut needs LO < HI") }
        }
    }

    func run() throws {
        let range = try cut.map { s -> ClosedRange<Double> in let c = try optionNumbers(s, 2, "--cut"); return c[0]...c[1] }
        let conn = try target.connect()
        job.apply(to: conn)
        let s = try conn.makeHiPS(dataset: dataset, band: band, tileWidth: tileWidth, order: order ?? 0, cut: range, directory: output) { tiles, done, total in
            FileHandle.standardError.write(Data("\r\(tiles) tiles, \(done)/\(total) tasks".utf8))
        }
        FileHandle.standardError.write(Data("\n".utf8))
        let orders = s.tilesPerOrder.keys.sorted().map { "order \($0): \(s.tilesPerOrder[$0]!)" }.joined(separator: ", ")
        print("HiPS of \(dataset) band \(band) in \(s.directory): \(s.tiles) tiles of \(s.tileWidth) pixels (\(orders)), \(s.bytes / 1_048_576) MiB, cut \(s.cut.lowerBound) … \(s.cut.upperBound) nJy, \(String(format: "%.2f", s.seconds)) s")
    }
}
