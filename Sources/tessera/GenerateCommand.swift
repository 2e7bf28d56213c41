import ArgumentParser
import Foundation
import TesseraSky
import TesseraSurvey

struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate", abstract: "Generate synthetic survey data.", subcommands: [GenerateCatalog.self, GenerateCoadd.self])
}

struct GenerateCatalog: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "catalog",
        abstract: "Write a deterministic LSST-like object catalog as FITS binary tables (the same seed gives the same rows).")

    @Option(help: "Rows in all.")
    var rows = 1_000_000

    @Option(help: "Random seed.")
    var seed: UInt64 = 42

    @Option(help: "Output folder (created if missing).")
    var out: String

    @Option(help: "Rows per FITS file.")
    var rowsPerFile = 1_000_000

    @Option(help: "The field, RAMIN,RAMAX,DECMIN,DECMAX in degrees (default 50,70,-45,-25).")
    var field: String?

    func parsedField() throws -> (ClosedRange<Double>, ClosedRange<Double>)? {
        guard let field else { return nil }
        let v = field.split(separator: ",").compactMap { Double($0.trimmingCharacters(in: .whitespaces)) }
        guard v.count == 4, v.allSatisfy(\.isFinite), 0 <= v[0], v[0] < v[1], v[1] <= 360, -90 <= v[2], v[2] < v[3], v[3] <= 90 else {
            throw ValidationError("--field must be RAMIN,RAMAX,DECMIN,DECMAX with 0 ≤ RAMIN < RAMAX ≤ 360 and -90 ≤ DECMIN < DECMAX ≤ 90 (got `\(field)`)")
        }
        return (v[0]...v[1], v[2]...v[3])
    }

    func validate() throws {
        guard rows > 0 else { throw ValidationError("--rows must be positive") }
        guard rowsPerFile > 0 else { throw ValidationError("--rows-per-file must be positive") }
        _ = try parsedField()
    }

    func run() throws {
        let start = Date()
        var catalog = SyntheticCatalog(seed: seed)
        if let (ra, dec) = try parsedField() { (catalog.raRange, catalog.decRange) = (ra, dec) }
        let paths = try catalog.writeFITS(rows: rows, rowsPerFile: rowsPerFile, to: out) { done, total in
            FileHandle.standardError.write(Data("\r  \(done)/\(total) rows".utf8))
        }
        FileHandle.standardError.write(Data("\n".utf8))
        print("wrote \(rows) rows in \(paths.count) files to \(out) in \(String(format: "%.1f", Date().timeIntervalSince(start))) s")
    }
}

struct GenerateCoadd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coadd",
        abstract: "Render coadd patches matching a generated catalog: its objects at their positions with their fluxes, a Gaussian PSF, sky and noise.",
        discussion: """
            Writes one FITS file per band and patch (`BAND-TRACT-PATCH.fits`: IMAGE, MASK and VARIANCE in nJy, \
            with the tract's TAN WCS) for every patch meeting the region. Mind the sizes: one square degree at \
            0.2″ is 18,000² pixels (1.3 GB per plane and band); try --pixel-scale 1 for a quick look.
            """)

    @Option(parsing: .upToNextOption, help: "The catalog's FITS files (from `tessera generate catalog`).")
    var catalog: [String]

    @Option(help: "Bands, comma-separated (of g, r, i, z).")
    var bands = "g,r,i"

    @Option(help: "RAMIN,RAMAX,DECMIN,DECMAX in degrees: patches meeting this box are rendered.")
    var region: String

    @Option(help: "Pixel size, arcseconds.")
    var pixelScale = 0.2

    @Option(help: "Patch border, pixels: cutouts up to 2×border+1 pixels lie inside one patch.")
    var border = SkyTiling.defaultBorderPixels

    @Option(help: "5σ point-source depth in a 1″-radius aperture, AB magnitude.")
    var depth = 25.0

    @Option(help: "PSF full width at half maximum, arcseconds.")
    var psfFwhm = 0.7

    @Option(help: "Noise seed.")
    var seed: UInt64 = 42

    @Option(help: "Output folder (created if missing; patches already there are kept).")
    var out: String

    func parsedRegion() throws -> BoxRegion {
        let v = region.split(separator: ",").map { Double($0.trimmingCharacters(in: .whitespaces)) }
        guard v.count == 4, let a = v[0], let b = v[1], let c = v[2], let d = v[3] else {
            throw ValidationError("--region must be RAMIN,RAMAX,DECMIN,DECMAX in degrees (got `\(region)`)")
        }
        do { return try BoxRegion(raMin: a, raMax: b, decMin: c, decMax: d) } catch { throw ValidationError("--region: \(error)") }
    }

    func parsedBands() throws -> [String] {
        let list = bands.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) }
        for b in list where !SyntheticCatalog.bands.contains(b) {
            throw ValidationError("band `\(b)` is not in the catalog (it has \(SyntheticCatalog.bands.joined(separator: ", ")))")
        }
        guard !list.isEmpty, Set(list).count == list.count else { throw ValidationError("--bands must name each band once") }
        return list
    }

    func validate() throws {
        guard !catalog.isEmpty else { throw ValidationError("--catalog needs at least one FITS file") }
        _ = try parsedRegion()
        _ = try parsedBands()
        do { try SkyTiling(pixelScaleArcsec: pixelScale, borderPixels: border).validate() } catch { throw ValidationError("\(error)") }
        guard psfFwhm.isFinite, (0.05...10).contains(psfFwhm) else { throw ValidationError("--psf-fwhm must be within 0.05 … 10 arcseconds") }
        guard depth.isFinite, (10...35).contains(depth) else { throw ValidationError("--depth must be within 10 … 35 mag") }
    }

    func run() throws {
        let start = Date()
        let box = try parsedRegion(), bandList = try parsedBands()
        var coadd = SyntheticCoadd(tiling: SkyTiling(pixelScaleArcsec: pixelScale, borderPixels: border), seed: seed)
        coadd.depth5Sigma = depth
        coadd.psfFWHMArcsec = psfFwhm
        let patches = coadd.tiling.patches(meeting: box)
        let side = coadd.tiling.maxPatchSide
        let bytes = Double(patches.count * bandList.count) * Double(side * side) * 12
        FileHandle.standardError.write(Data("rendering \(patches.count) patches × \(bandList.count) bands (up to \(side)² pixels each, about \(String(format: "%.1f", bytes / 1e9)) GB)\n".utf8))
        let sources = try CoaddSources(catalogFiles: catalog, bands: bandList)
        let paths = try coadd.write(region: box, bands: bandList, sources: sources, to: out) { done, total in
            FileHandle.standardError.write(Data("\r  \(done)/\(total) patch files".utf8))
        }
        FileHandle.standardError.write(Data("\n".utf8))
        print("wrote \(paths.count) patch files (\(sources.ra.count) catalog rows read) to \(out) in \(String(format: "%.1f", Date().timeIntervalSince(start))) s")
    }
}
