import Foundation
import Testing
import TesseraCompute
import TesseraSky
import TesseraStorage
import TesseraSurvey

/// The synthetic coadd closes the loop with its catalog: forced photometry at the catalog's
/// positions recovers the catalog's fluxes within the stated errors.
struct SyntheticCoaddTests {
    static let tiling = SkyTiling(tractOrder: 5, patchOrder: 8, pixelScaleArcsec: 0.5, borderPixels: 32)

    /// 200,000 rows on 2° × 2°: about 2,600 in one patch.
    static func catalog() -> (sources: CoaddSources, rows: Int) {
        var cat = SyntheticCatalog(seed: 5)
        cat.raRange = 60...62
        cat.decRange = -36...(-34)
        let cols = cat.rows(0, count: 200_000)
        let schema = SyntheticCatalog.schema.map(\.name)
        func col(_ n: String) -> [Double] { cols[schema.firstIndex(of: n)!].doubles }
        return (CoaddSources(ra: col("coord_ra"), dec: col("coord_dec"), flux: ["r": col("r_psfFlux").map { Float($0) }]), 200_000)
    }

    @Test func forcedPhotometryPullsAreStandardNormal() throws {
        let (sources, _) = Self.catalog()
        let coadd = SyntheticCoadd(tiling: Self.tiling, seed: 11)
        let patch = Self.tiling.patch(ra: 61, dec: -35)
        let r = coadd.render(patch: patch, band: "r", bandIndex: 1, sources: sources)
        var stamp = ImageCutout(band: "r", box: r.header.box, gridWCS: Self.tiling.tractWCS(r.header.tract), tract: r.header.tract)
        stamp.write(r.header.box, image: r.image, variance: r.variance, mask: r.mask)
        #expect(r.variance.allSatisfy { abs(Double($0) - coadd.noiseSigma * coadd.noiseSigma) < 1e-3 })

        // Rows inside the patch (away from its edges) with no other source within 8″.
        let fp = ForcedPhotometry(apertureRadius: 3)  // 1.5″: 5σ of the 0.7″ PSF
        let inside = (0..<sources.ra.count).filter { k in
            guard let p = stamp.gridWCS.pixel(ra: sources.ra[k], dec: sources.dec[k]) else { return false }
            return p.x > Double(stamp.box.x0 + 20) && p.x < Double(stamp.box.x1 - 20) && p.y > Double(stamp.box.y0 + 20) && p.y < Double(stamp.box.y1 - 20)
        }
        // Neighbours can only be among the sources within the patch's radius plus 8″ of its centre.
        let centre = HEALPix.centerVector(order: 8, pixel: patch)
        let reach = cos(HEALPix.maxPixelRadius(order: 8) + 2 * Double(Self.tiling.borderPixels) * 0.5 / 3600 * .pi / 180)
        let nearby = (0..<sources.ra.count).map { Vec3(ra: sources.ra[$0], dec: sources.dec[$0]) }.enumerated().filter { $0.element.dot(centre) > reach }
        let near = cos(8.0 / 3600 * .pi / 180)
        let isolated = inside.filter { k in
            let v = Vec3(ra: sources.ra[k], dec: sources.dec[k])
            return !nearby.contains { $0.offset != k && $0.element.dot(v) > near }
        }
        var pulls: [Double] = []
        for k in isolated {
            let p = stamp.gridWCS.pixel(ra: sources.ra[k], dec: sources.dec[k])!
            let m = fp.measure(x: p.x, y: p.y, on: stamp)
            #expect(m.flags == 0)
            pulls.append((m.flux - Double(sources.flux["r"]![k])) / m.fluxError)
        }
        let mean = pulls.reduce(0, +) / Double(pulls.count)
        let sd = (pulls.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(pulls.count - 1)).squareRoot()
        print("forced photometry pulls over \(pulls.count) isolated sources: mean \(mean), σ \(sd)")
        #expect(pulls.count > 800, "only \(pulls.count) isolated sources measured")
        #expect(abs(mean) < 0.1 && abs(sd - 1) < 0.1, "pulls: mean \(mean), σ \(sd) over \(pulls.count)")
    }

    /// Neighbouring patches of one tract hold the same pixels where they overlap, and the same
    /// seed renders the same bytes.
    @Test func overlapsAgreeAndRendersRepeat() throws {
        let (sources, _) = Self.catalog()
        let coadd = SyntheticCoadd(tiling: Self.tiling, seed: 11)
        let a = Self.tiling.patch(ra: 61, dec: -35)
        let b = HEALPix.neighbours(order: 8, pixel: a).first { Self.tiling.tract(ofPatch: $0) == Self.tiling.tract(ofPatch: a) && $0 >= 0 }!
        let ra = coadd.render(patch: a, band: "r", bandIndex: 1, sources: sources)
        let rb = coadd.render(patch: b, band: "r", bandIndex: 1, sources: sources)
        let overlap = ra.header.box.intersection(rb.header.box)
        #expect(overlap.pixelCount > 1000)
        var differ = 0
        for y in overlap.y0..<overlap.y1 {
            for x in overlap.x0..<overlap.x1 {
                let va = ra.image[(y - ra.header.y0) * ra.header.width + (x - ra.header.x0)]
                let vb = rb.image[(y - rb.header.y0) * rb.header.width + (x - rb.header.x0)]
                if va != vb { differ += 1 }
            }
        }
        #expect(differ == 0)
        let again = coadd.render(patch: a, band: "r", bandIndex: 1, sources: sources)
        #expect(again.image == ra.image)
        // The noise is what the variance plane says: the sky-subtracted pixels' spread, far from sources.
        let values = ra.image.map { Double($0) - coadd.skyPerPixel }.sorted()
        let med = values[values.count / 2]
        let mad = values.map { abs($0 - med) }.sorted()[values.count / 2] * 1.4826
        #expect(abs(mad / coadd.noiseSigma - 1) < 0.02, "noise \(mad) against \(coadd.noiseSigma)")
    }
}
