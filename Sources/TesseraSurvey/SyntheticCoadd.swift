import Foundation
import Synchronization
import TesseraCompute
import TesseraProtocol
import TesseraSky
import TesseraStorage

/// Point sources to render: positions (degrees) and, per band, fluxes (nJy).
public struct CoaddSources: Sendable {
    public var ra: [Double]
    public var dec: [Double]
    public var flux: [String: [Float]]

    public init(ra: [Double], dec: [Double], flux: [String: [Float]]) { (self.ra, self.dec, self.flux) = (ra, dec, flux) }

    /// The sources of a generated catalog's columns (`coord_ra`, `coord_dec`, `<band>_psfFlux`).
    public init(catalogFiles: [String], bands: [String]) throws {
        var ra: [Double] = [], dec: [Double] = [], flux: [String: [Float]] = [:]
        for path in catalogFiles {
            let t = try FITSTableReader(path: path)
            ra += try t.read(column: "coord_ra").doubles
            dec += try t.read(column: "coord_dec").doubles
            for b in bands {
                flux[b, default: []] += try t.read(column: "\(b)_psfFlux").doubles.map { Float($0) }
            }
        }
        self.init(ra: ra, dec: dec, flux: flux)
    }
}

/// A deterministic coadd matching a synthetic catalog: every source rendered at its position with
/// its catalog flux as a Gaussian PSF (integrated over each pixel, so the pixels hold exactly the
/// flux), on a constant sky, with Gaussian noise of a known, constant variance (the variance
/// plane). The noise of a pixel depends only on the seed, band, tract and the pixel's place in the
/// tract's grid, so overlapping patches of one tract hold identical pixels.
public struct SyntheticCoadd: Sendable {
    public var tiling: SkyTiling
    public var seed: UInt64
    /// The PSF's full width at half maximum, arcseconds.
    public var psfFWHMArcsec = 0.7
    /// The 5σ depth (AB magnitude, zero point 31.4) of a point source measured in a 1″-radius
    /// aperture; sets the noise per pixel.
    public var depth5Sigma = 25.0
    /// The sky, nJy per square arcsecond (left in the images; photometry subtracts it locally).
    public var skyPerArcsec2 = 20.0

    public init(tiling: SkyTiling, seed: UInt64) { (self.tiling, self.seed) = (tiling, seed) }

    /// The noise per pixel (σ, nJy): the 1″ aperture's σ spread over the pixels it covers.
    public var noiseSigma: Double {
        let apertureSigma = pow(10, -0.4 * (depth5Sigma - SyntheticCatalog.zeroPoint)) / 5
        let s = tiling.pixelScaleArcsec
        return apertureSigma * s / (Double.pi.squareRoot() * 1.0)
    }

    public var skyPerPixel: Double { skyPerArcsec2 * tiling.pixelScaleArcsec * tiling.pixelScaleArcsec }

    /// A standard normal deviate for one pixel of one band of one tract (counter-based: the same
    /// pixel gives the same value in every patch).
    @inline(__always) func noise(band: Int, tract: Int64, x: Int, y: Int) -> Double {
        var key = seed &* 0x9E37_79B9_7F4A_7C15
        key ^= UInt64(band &+ 1) &* 0xBF58_476D_1CE4_E5B9
        key ^= UInt64(bitPattern: tract) &* 0x94D0_49BB_1331_11EB
        key ^= (UInt64(UInt32(truncatingIfNeeded: x)) << 32 | UInt64(UInt32(truncatingIfNeeded: y))) &* 0xD6E8_FEB8_6659_FD93
        var rng = SplitMix64(seed: key)
        let u1 = max(rng.nextUnit(), .leastNonzeroMagnitude), u2 = rng.nextUnit()
        return (-2 * log(u1)).squareRoot() * cos(2 * .pi * u2)
    }

    /// Renders one band of one patch.
    /// - Parameter bandIndex: the band's place in the survey's band list (its noise stream).
    public func render(patch: Int64, band: String, bandIndex: Int, sources: CoaddSources) -> (header: ImagePatchHeader, image: [Float], variance: [Float], mask: [Int32]) {
        let tract = tiling.tract(ofPatch: patch)
        let gridWCS = tiling.tractWCS(tract)
        let box = tiling.patchBox(patch)
        let w = box.width, h = box.height
        let sigma = noiseSigma, sky = skyPerPixel
        var image = [Double](repeating: sky, count: w * h)
        // Sources: a pixel-integrated Gaussian, out to 6σ of the PSF.
        let psfSigma = psfFWHMArcsec / (2 * (2 * log(2.0)).squareRoot()) / tiling.pixelScaleArcsec
        let reach = Int((6 * psfSigma).rounded(.up)) + 1
        let fluxes = sources.flux[band] ?? []
        let expanded = PixelBox(x0: box.x0 - reach, y0: box.y0 - reach, width: w + 2 * reach, height: h + 2 * reach)
        let centre = HEALPix.centerVector(order: tiling.patchOrder, pixel: patch)
        // Far sources are skipped before projecting: the patch's radius plus the border and reach.
        let maxAngle = HEALPix.maxPixelRadius(order: tiling.patchOrder)
            + Double(tiling.borderPixels + reach + 2) * tiling.pixelScaleArcsec / 3600 * .pi / 180 * 1.5
        let cosMax = cos(maxAngle)
        var gx = [Double](repeating: 0, count: 2 * reach + 1), gy = gx
        for k in 0..<min(sources.ra.count, fluxes.count) {
            let f = Double(fluxes[k])
            guard f.isFinite, Vec3(ra: sources.ra[k], dec: sources.dec[k]).dot(centre) >= cosMax,
                  let p = gridWCS.pixel(ra: sources.ra[k], dec: sources.dec[k]) else { continue }
            let ix = Int(p.x.rounded()), iy = Int(p.y.rounded())
            guard ix >= expanded.x0, ix < expanded.x1, iy >= expanded.y0, iy < expanded.y1 else { continue }
            // Separable: the fraction of the flux in each column and each row.
            func fractions(_ c: Double, _ i0: Int, into g: inout [Double]) {
                let s = psfSigma * 2.0.squareRoot()
                var previous = erf((Double(i0) - 0.5 - c) / s)
                for j in 0..<g.count {
                    let next = erf((Double(i0 + j) + 0.5 - c) / s)
                    g[j] = 0.5 * (next - previous)
                    previous = next
                }
            }
            fractions(p.x, ix - reach, into: &gx)
            fractions(p.y, iy - reach, into: &gy)
            for j in 0..<gy.count {
                let y = iy - reach + j - box.y0
                guard y >= 0, y < h else { continue }
                let fy = f * gy[j]
                for i in 0..<gx.count {
                    let x = ix - reach + i - box.x0
                    guard x >= 0, x < w else { continue }
                    image[y * w + x] += fy * gx[i]
                }
            }
        }
        var out = [Float](repeating: 0, count: w * h)
        for y in 0..<h {
            for x in 0..<w {
                out[y * w + x] = Float(image[y * w + x] + sigma * noise(band: bandIndex, tract: tract, x: box.x0 + x, y: box.y0 + y))
            }
        }
        let header = ImagePatchHeader(band: band, tract: tract, patch: patch, tractOrder: tiling.tractOrder, patchOrder: tiling.patchOrder,
                                      x0: box.x0, y0: box.y0, width: w, height: h, wcs: gridWCS.shifted(x0: box.x0, y0: box.y0))
        return (header, out, [Float](repeating: Float(sigma * sigma), count: w * h), [Int32](repeating: 0, count: w * h))
    }

    /// The keywords a generated patch carries besides its own (how it was made).
    public var keywords: [FITSKeyword] {
        [
            FITSKeyword("PSFFWHM", .text(String(psfFWHMArcsec)), "Gaussian PSF FWHM, arcsec"),
            FITSKeyword("DEPTH5", .text(String(depth5Sigma)), "5 sigma AB depth in a 1 arcsec radius aperture"),
            FITSKeyword("SKYLEVEL", .text(String(skyPerPixel)), "sky per pixel, nJy"),
            FITSKeyword("BORDER", .integer(tiling.borderPixels), "patch border, pixels"),
            FITSKeyword("SEED", .integer(Int(truncatingIfNeeded: seed)), "noise seed"),
        ]
    }

    /// The file name of a patch: `<band>-<tract>-<patch>.fits`.
    public static func fileName(band: String, tract: Int64, patch: Int64) -> String { "\(band)-\(tract)-\(patch).fits" }

    /// Renders and writes every patch meeting `region`, each band, into `directory` (durably;
    /// files already there are kept). Patches render in parallel.
    /// - Returns: the paths written, and the patches.
    @discardableResult
    public func write(region: some SkyRegion, bands: [String], sources: CoaddSources, to directory: String,
                      progress: @Sendable (Int, Int) -> Void = { _, _ in }) throws -> [String] {
        try tiling.validate()
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let patches = tiling.patches(meeting: region)
        let jobs = patches.flatMap { p in bands.enumerated().map { (p, $0.element, $0.offset) } }
        let results = Mutex<[Int: Result<String, any Error>]>([:])
        DispatchQueue.concurrentPerform(iterations: jobs.count) { i in
            let (patch, band, index) = jobs[i]
            let tract = tiling.tract(ofPatch: patch)
            let path = (directory as NSString).appendingPathComponent(Self.fileName(band: band, tract: tract, patch: patch))
            let outcome: Result<String, any Error> = Result {
                if !FileManager.default.fileExists(atPath: path) {
                    let r = render(patch: patch, band: band, bandIndex: index, sources: sources)
                    let bytes = try ImagePatchWriter.encode(header: r.header, image: r.image, variance: r.variance, mask: r.mask, extraKeywords: keywords)
                    try DurableFile.write(bytes, to: path)
                }
                return path
            }
            let done = results.withLock { $0[i] = outcome; return $0.count }
            progress(done, jobs.count)
        }
        return try results.withLock { r in try (0..<jobs.count).map { try r[$0]!.get() } }
    }
}
