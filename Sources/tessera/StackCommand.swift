import ArgumentParser
import Foundation
import TesseraClient
import TesseraCompute
import TesseraProtocol
import TesseraSky
import TesseraStorage

struct StackCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stack",
        abstract: "Stack cutouts of an image dataset centred on every row of a catalog question, on the workers that hold them, into a FITS image.",
        discussion: """
            Each row's cutout is the SIZE × SIZE pixels around the pixel it falls in (copied, not
            resampled), from the patch of its own HEALPix pixel. The stack is a mean, a weighted
            mean (1 / variance), or a median interpolated within a per-pixel histogram of 128 bins
            over --median-range (its error is at most one bin). The file holds IMAGE, MASK (NO_DATA
            where no row covered a pixel) and VARIANCE.

            Example:
              tessera stack --dataset object --where "refExtendedness == 1 and mag(g_psfFlux) > 25" \\
                --images coadd --band g --size 41 -o faint_galaxies_g.fits
            """)

    @Option(help: "The catalog whose rows the cutouts are centred on.")
    var dataset: String

    @OptionGroup var region: SkyRegionOptions

    @Option(name: .customLong("where"), help: "A condition the rows must meet.")
    var filter: String = ""

    @Option(help: "The image dataset.")
    var images: String

    @Option(help: "The band.")
    var band: String

    @Option(help: "Pixels per side (odd).")
    var size = 31

    @Option(help: "mean, weighted (1 / variance) or median.")
    var kind = "mean"

    @Option(help: "With --kind median: the histogram's range LO,HI in nJy per pixel.")
    var medianRange: String?

    @Option(name: .shortAndLong, help: "The FITS file to write.")
    var output: String

    @OptionGroup var job: JobOptions
    @OptionGroup var target: SchedulerTarget

    var stackKind: StackKind? { ["mean": .stackMean, "weighted": .stackWeightedMean, "median": .stackMedian][kind] }

    func validate() throws {
        guard stackKind != nil else { throw ValidationError("--kind must be mean, weighted or median, not `\(kind)`") }
        guard size > 0, size % 2 == 1, size <= ImageStack.maxSize else { throw ValidationError("--size must be odd, 1 … \(ImageStack.maxSize)") }
        if kind == "median" {
            guard let medianRange else { throw ValidationError("--kind median needs --median-range LO,HI (nJy)") }
            let r = try optionNumbers(medianRange, 2, "--median-range")
            guard r[0] < r[1] else { throw ValidationError("--median-range needs LO < HI") }
        }
    }

    func run() throws {
        var q = try region.apply(to: CatalogQuery(dataset: dataset))
        if !filter.isEmpty { q = q.filter(filter) }
        let range = try medianRange.map { try optionNumbers($0, 2, "--median-range") }.map { $0[0]...$0[1] }
        q = q.stack(on: images, band: band, size: size, kind: stackKind ?? .stackMean, medianRange: range)
        let conn = try target.connect()
        job.apply(to: conn)
        let done = try conn.run(q, name: "stack \(images) on \(dataset)")
        let s = done.result.partial.stack
        guard s.size > 0 else { throw ValidationError("the cluster sent no stack") }
        guard s.size <= UInt32(ImageStack.maxSize) else { throw ValidationError("the cluster sent a stack of \(s.size) pixels a side, over the limit of \(ImageStack.maxSize)") }
        let (img, vari, msk) = ImageStack.planes(s)
        let n = Int(s.size)
        let header = ImagePatchHeader(band: band, tract: -1, patch: -1, tractOrder: -1, patchOrder: -1, x0: 0, y0: 0, width: n, height: n,
                                      wcs: .northUp(ra: 0, dec: 0, x: Double(n / 2), y: Double(n / 2), scaleArcsec: 1))
        let bytes = try ImagePatchWriter.encode(header: header, image: img, variance: vari, mask: msk, extraKeywords: [
            FITSKeyword("STACK", .text(kind), "mean, weighted or median"),
            FITSKeyword("SOURCES", .integer(Int(s.sources)), "rows whose cutouts were stacked"),
            FITSKeyword("DATASET", .text(String(dataset.prefix(60))), "the catalog"),
            FITSKeyword("IMAGES", .text(String(images.prefix(60))), "the image dataset"),
            FITSKeyword("STACKWCS", .text("nominal"), "the WCS only puts the rows' pixel at the centre"),
        ])
        try DurableFile.write(bytes, to: output)
        print("stacked \(s.sources) cutouts of \(n) × \(n) pixels (\(done.result.rowsMatched) rows asked) in \(String(format: "%.3f", done.seconds)) s: wrote \(output)")
    }
}
