import ArgumentParser
import Foundation
import TesseraClient
import TesseraCompute
import TesseraProtocol
import TesseraSky
import TesseraStorage

struct CutoutCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cutout",
        abstract: "Cut pixels out of a coadd image dataset, on the workers that hold its patches, into a FITS file.",
        discussion: """
            The cutout is an exact copy of the patches' pixels in the grid of the tract holding its
            centre (never resampled), assembled across patches; pixels no patch covers are NaN with
            the NO_DATA mask bit. The file has IMAGE, MASK and VARIANCE extensions per band (EXTVER
            1, 2, … when several), each with the cutout's own TAN WCS, as astropy reads them.

            Examples:
              tessera cutout --dataset coadd --cone 60.1,-34.9,0.005 --band r -o cut.fits
              tessera cutout --dataset coadd --cone 60.1,-34.9,0.005 --size 256x256 --band g,r,i -o cut.fits
            """)

    @Option(help: "The image dataset.")
    var dataset: String

    /// A cone's cutout is its diameter wide; a box's covers it.
    @OptionGroup var region: SkyRegionOptions

    @Option(help: "Pixels, WIDTHxHEIGHT, around the region's centre (instead of the region's extent).")
    var size: String?

    @Option(help: "Bands, comma-separated (default: every band).")
    var band: String?

    @Option(name: .shortAndLong, help: "The FITS file to write.")
    var output: String

    @OptionGroup var job: JobOptions
    @OptionGroup var target: SchedulerTarget

    func validate() throws {
        guard (region.cone == nil) != (region.box == nil) else { throw ValidationError("give where the cutout is: --cone or --box (one of them)") }
        if let size {
            let p = size.lowercased().split(separator: "x").compactMap { Int($0) }
            guard p.count == 2, p.allSatisfy({ $0 > 0 }) else { throw ValidationError("--size needs WIDTHxHEIGHT in pixels, got `\(size)`") }
        }
    }

    func run() throws {
        var q = try region.apply(to: CatalogQuery(dataset: dataset))
        let wh = size.map { $0.lowercased().split(separator: "x").compactMap { Int($0) } } ?? [0, 0]
        let bands = band.map { $0.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) } } ?? []
        q = q.cutout(bands: bands, width: wh[0], height: wh[1])
        let conn = try target.connect()
        job.apply(to: conn)
        let done = try conn.run(q, name: "cutout \(dataset)")
        let cuts = done.result.cutouts
        guard !cuts.isEmpty else { throw ValidationError("the cluster sent no cutout") }
        let bytes = try ImageCutout.fitsFile(cuts, dataset: dataset)
        try DurableFile.write(bytes, to: output)
        for c in cuts {
            let covered = c.coveredPixels
            print("\(c.band): \(c.box.width) × \(c.box.height) pixels at \(c.box) of tract \(c.tract), \(covered) covered (\(String(format: "%.1f", 100 * Double(covered) / Double(max(1, c.box.pixelCount))))%)")
        }
        print("wrote \(output) (\(bytes.count) bytes) in \(String(format: "%.3f", done.seconds)) s")
    }
}
