import ArgumentParser
import Foundation
import TesseraClient
import TesseraCompute
import TesseraProtocol

struct ImageStatsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image-stats",
        abstract: "Pixel statistics of an image dataset per band, counted where its patches are: median, robust σ, masked fraction, and a HEALPix map of depth.",
        discussion: """
            Each patch counts the pixels whose centres lie in its own HEALPix pixel, so overlaps
            count once. The median and quartiles come from a mergeable DDSketch (relative error
            0.5%); the robust σ is (q75 − q25) / 1.349. The depth is the 5σ AB magnitude of a point
            source in a 1″-radius aperture, from the mean variance per map pixel.

            Example:
              tessera image-stats --dataset coadd --map-order 10 --map-out depth.csv
            """)

    @Option(help: "The image dataset.")
    var dataset: String

    @Option(help: "Bands, comma-separated (default: every band).")
    var bands: String?

    /// Only patches meeting the region.
    @OptionGroup var region: SkyRegionOptions

    @Option(help: "The depth map's HEALPix order (default 10, 3.4′ pixels).")
    var mapOrder = 10

    @Option(help: "Write the depth map as CSV: band, pixel, pixels counted, mean variance, depth.")
    var mapOut: String?

    @OptionGroup var job: JobOptions
    @OptionGroup var target: SchedulerTarget

    func validate() throws {
        guard (1...16).contains(mapOrder) else { throw ValidationError("--map-order must be 1 … 16") }
    }

    func run() throws {
        let q = try region.apply(to: CatalogQuery(dataset: dataset))
            .imageStatistics(bands: bands.map { $0.split(separator: ",").map(String.init) } ?? [], mapOrder: mapOrder)
        let conn = try target.connect()
        job.apply(to: conn)
        let done = try conn.run(q, name: "image statistics \(dataset)")
        var csv = "band,pixel,pixels,mean_variance,depth5\n"
        print("band  pixels        masked   median        robust σ      depth5 (median of \(mapOrder)-order pixels, min … max)")
        for s in done.result.partial.imageStatistics {
            let (median, sigma, masked) = ImageStatistics.summary(s)
            var depths: [Double] = []
            for k in s.depth.pixels.indices where s.depth.counts[k] > 0 {
                let mean = s.depth.sums[k] / Double(s.depth.counts[k])
                let d = ImageStatistics.depth(meanVariance: mean, pixelScaleArcsec: s.pixelScaleArcsec)
                depths.append(d)
                csv += "\(s.band),\(s.depth.pixels[k]),\(s.depth.counts[k]),\(mean),\(d)\n"
            }
            depths.sort()
            let mid = depths.isEmpty ? Double.nan : depths[depths.count / 2]
            print(String(format: "%-5@ %-13llu %6.3f%%  %-12.4f  %-12.4f  %.2f (%.2f … %.2f)", s.band as NSString, s.pixels, 100 * masked, median, sigma,
                         mid, depths.first ?? .nan, depths.last ?? .nan))
        }
        if let mapOut { try csv.write(toFile: mapOut, atomically: true, encoding: .utf8) }
        print(String(format: "%d patches in %.3f s", done.result.shards, done.seconds))
    }
}
