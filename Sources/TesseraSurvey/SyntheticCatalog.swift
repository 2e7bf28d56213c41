import Foundation
import TesseraCompute
import TesseraProtocol
import TesseraSky
import TesseraStorage

/// A deterministic LSST-like object catalog: the same rows for the same seed on every machine.
///
/// Positions are uniform in area over a field, with 5% of objects in 20 dense clusters (so shard
/// orders must adapt); r magnitudes follow number counts rising as 10^(0.3 m) from 16 to 27;
/// stars and galaxies have their own g−r and r−i colours; fluxes are in nJy (AB zero point 31.4)
/// with 2% + sky-noise errors, as in `../shared/bench/anchor_catalog.py`.
public struct SyntheticCatalog: Sendable {
    public var raRange = 50.0...70.0
    public var decRange = -45.0...(-25.0)
    public var seed: UInt64

    public init(seed: UInt64) { self.seed = seed }

    public static let bands = ["g", "r", "i", "z"]
    public static let zeroPoint = 31.4

    public static var schema: [ColumnSpec] {
        var s = [
            ColumnSpec("objectId", .columnInt64, description: "unique object id"),
            ColumnSpec("coord_ra", .columnFloat64, unit: "deg", description: "right ascension (ICRS)"),
            ColumnSpec("coord_dec", .columnFloat64, unit: "deg", description: "declination (ICRS)"),
        ]
        for b in bands {
            s.append(ColumnSpec("\(b)_psfFlux", .columnFloat32, unit: "nJy", description: "\(b)-band PSF flux"))
            s.append(ColumnSpec("\(b)_psfFluxErr", .columnFloat32, unit: "nJy", description: "\(b)-band PSF flux uncertainty"))
        }
        s += [
            ColumnSpec("refExtendedness", .columnFloat32, description: "1 for extended (galaxy), 0 for point sources"),
            ColumnSpec("detect_isPrimary", .columnBool, description: "primary detection"),
            ColumnSpec("cell", .columnInt32, description: "1°×1° cell number (tract/patch stand-in)"),
        ]
        return s
    }

    /// Rows `first ..< first + count` of the catalog (any split of the rows gives the same catalog).
    public func rows(_ first: Int, count: Int) -> [ColumnData] {
        var id = [Int64](), ra = [Double](), dec = [Double](), ext = [Float](), primary = [Bool](), cell = [Int32]()
        var flux = [[Float]](repeating: [], count: Self.bands.count), err = [[Float]](repeating: [], count: Self.bands.count)
        let sin0 = sin(decRange.lowerBound * .pi / 180), sin1 = sin(decRange.upperBound * .pi / 180)
        // Cluster centres depend on the seed only, at least a degree inside the field (a quarter
        // of a field narrower than 4°).
        var crng = SplitMix64(seed: seed ^ 0xC1C1_C1C1)
        let raWidth = raRange.upperBound - raRange.lowerBound, decWidth = decRange.upperBound - decRange.lowerBound
        let raInset = min(1, raWidth / 4), decInset = min(1, decWidth / 4)
        let clusters = (0..<20).map { _ in
            (raRange.lowerBound + raInset + (raWidth - 2 * raInset) * crng.nextUnit(),
             decRange.lowerBound + decInset + (decWidth - 2 * decInset) * crng.nextUnit())
        }
        let a = 0.3 * log(10.0)
        let sky = pow(10, -0.4 * (24.5 - Self.zeroPoint)) / 5
        for row in first..<(first + count) {
            // One generator per row: rows do not depend on how the catalog is split.
            var rng = SplitMix64(seed: seed &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(row))
            func normal() -> Double {
                let u1 = max(rng.nextUnit(), .leastNonzeroMagnitude), u2 = rng.nextUnit()
                return (-2 * log(u1)).squareRoot() * cos(2 * .pi * u2)
            }
            var r: Double, d: Double
            if rng.nextUnit() < 0.05 {
                let c = clusters[Int(rng.next() % 20)]
                r = c.0 + 0.1 * normal()
                d = c.1 + 0.1 * normal()
            } else {
                r = raRange.lowerBound + (raRange.upperBound - raRange.lowerBound) * rng.nextUnit()
                d = asin(sin0 + (sin1 - sin0) * rng.nextUnit()) * 180 / .pi
            }
            let rmag = 16 + log1p(rng.nextUnit() * (exp(a * 11) - 1)) / a
            let isGalaxy = rng.nextUnit() < 0.35 + 0.5 * (rmag > 23 ? 1 : 0)
            let gr = isGalaxy ? 0.8 + 0.3 * normal() : 0.5 + 0.35 * normal()
            let ri = isGalaxy ? 0.4 + 0.2 * normal() : 0.2 + 0.25 * normal()
            let iz = isGalaxy ? 0.3 + 0.15 * normal() : 0.1 + 0.15 * normal()
            let mags = [rmag + gr, rmag, rmag - ri, rmag - ri - iz]
            for (k, m) in mags.enumerated() {
                let f = pow(10, -0.4 * (m - Self.zeroPoint))
                let e = 0.02 * f + sky
                flux[k].append(Float(f + normal() * e))
                err[k].append(Float(e))
            }
            id.append(Int64(row) + 1)
            ra.append(r)
            dec.append(d)
            ext.append(isGalaxy ? 1 : 0)
            primary.append(rng.nextUnit() < 0.97)
            cell.append(Int32(floor(r - raRange.lowerBound) * 20 + floor(d - decRange.lowerBound)))
        }
        var out: [ColumnData] = [.int64(id), .float64(ra), .float64(dec)]
        for k in 0..<Self.bands.count { out += [.float32(flux[k]), .float32(err[k])] }
        out += [.float32(ext), .bool(primary), .int32(cell)]
        return out
    }

    /// Writes the catalog as FITS binary tables of at most `rowsPerFile` rows (`part0000.fits`, ...)
    /// into `directory`, skipping files that already exist with the right name.
    /// - Returns: the files' paths.
    @discardableResult
    public func writeFITS(rows total: Int, rowsPerFile: Int = 1_000_000, to directory: String,
                          progress: (Int, Int) -> Void = { _, _ in }) throws -> [String] {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var paths: [String] = []
        var first = 0, part = 0
        while first < total {
            let n = min(rowsPerFile, total - first)
            let path = (directory as NSString).appendingPathComponent(String(format: "part%04d.fits", part))
            if !FileManager.default.fileExists(atPath: path) {
                try FITSTableWriter.write(to: path, columns: Self.schema, data: rows(first, count: n))
            }
            paths.append(path)
            first += n
            part += 1
            progress(first, total)
        }
        return paths
    }
}
