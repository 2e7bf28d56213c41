import Foundation
import Testing
import TesseraSky

/// The TAN WCS against astropy.wcs (Fixtures/wcs.json, written by scripts/make_wcs_fixtures.py),
/// and the tract/patch tiling against brute force.
struct TanWCSTests {
    struct Case: Sendable {
        var name: String
        var cards: [String: String]
        var scale: Double
        var pix2world: [[Double]]
        var world2pix: [[Double]]
    }

    static let cases: [Case] = {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/wcs.json")
        guard let data = try? Data(contentsOf: url),
              let root = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let list = root["cases"] as? [[String: Any]] else { return [] }
        func rows(_ v: Any?) -> [[Double]] { (v as? [[String]] ?? []).map { $0.compactMap(Double.init) } }
        return list.map {
            Case(name: $0["name"] as? String ?? "", cards: $0["cards"] as? [String: String] ?? [:],
                 scale: Double($0["pixel_scale_arcsec"] as? String ?? "") ?? .nan,
                 pix2world: rows($0["pix2world"]), world2pix: rows($0["world2pix"]))
        }
    }()

    @Test func fixturesLoaded() {
        #expect(Self.cases.count == 9)
        #expect(Self.cases.allSatisfy { $0.pix2world.count == 63 && $0.world2pix.count == 60 })
    }

    /// Both directions within 1e-9 pixel of astropy; pixel → sky compared as the angle between
    /// the two positions, in pixels, beyond what a double RA can represent.
    @Test(arguments: cases.map(\.name))
    func matchesAstropy(name: String) throws {
        let c = try #require(Self.cases.first { $0.name == name })
        let wcs = try TanWCS(cards: c.cards)
        #expect(abs(wcs.pixelScaleArcsec - c.scale) < 1e-9 * c.scale)
        var worstSky = 0.0, worstPix = 0.0
        for p in c.pix2world {
            let s = wcs.sky(x: p[0], y: p[1])
            let sep = Vec3(ra: s.ra, dec: s.dec).angle(to: Vec3(ra: p[2], dec: p[3])) * 180 / .pi * 3600 / c.scale
            // A double RA near 360° resolves only 5.7e-14° (1e-9 pixel at 0.2″): both answers
            // may be rounded by that much, so that part of the difference is not the WCS's.
            let representable = (s.ra.ulp + p[2].ulp) * cos(p[3] * .pi / 180) * 3600 / c.scale
            worstSky = max(worstSky, (sep - representable).isNaN ? .infinity : sep - representable)
            // And back: astropy's sky position to our pixel.
            let back = try #require(wcs.pixel(ra: p[2], dec: p[3]))
            worstPix = max(worstPix, abs(back.x - p[0]).isNaN ? .infinity : abs(back.x - p[0]), abs(back.y - p[1]))
        }
        // The projector (unit vectors, no angles) meets the same fixtures.
        let projector = TanWCS.Projector(wcs)
        var worstProjected = 0.0
        for p in c.world2pix {
            let q = try #require(wcs.pixel(ra: p[0], dec: p[1]))
            worstPix = max(worstPix, abs(q.x - p[2]).isNaN ? .infinity : abs(q.x - p[2]), abs(q.y - p[3]))
            // Its unit vector from an RA near 360° is rounded by that RA's ulp, as above.
            let r = try #require(projector.pixel(Vec3(ra: p[0], dec: p[1])))
            let representable = p[0].ulp * 3600 / c.scale
            worstProjected = max(worstProjected, hypot(r.x - p[2], r.y - p[3]).isNaN ? .infinity : hypot(r.x - p[2], r.y - p[3]) - representable)
        }
        #expect(worstProjected < 1e-9, "\(name): projected sky → pixel off by \(worstProjected) pixel")
        #expect(worstSky < 1e-9, "\(name): pixel → sky off by \(worstSky) pixel")
        #expect(worstPix < 1e-9, "\(name): sky → pixel off by \(worstPix) pixel")
    }

    @Test func refusesOtherProjectionsAndMissingWCS() {
        var cards = ["CTYPE1": "RA---SIN", "CTYPE2": "DEC--SIN", "CRVAL1": "1", "CRVAL2": "2", "CRPIX1": "1", "CRPIX2": "1", "CD1_1": "-1e-4", "CD2_2": "1e-4"]
        #expect(throws: WCSError.unsupportedProjection(ctype1: "RA---SIN", ctype2: "DEC--SIN")) { try TanWCS(cards: cards) }
        cards["CTYPE1"] = "RA---TAN-SIP"; cards["CTYPE2"] = "DEC--TAN-SIP"
        #expect(throws: WCSError.unsupportedProjection(ctype1: "RA---TAN-SIP", ctype2: "DEC--TAN-SIP")) { try TanWCS(cards: cards) }
        cards["CTYPE1"] = "GLON-TAN"; cards["CTYPE2"] = "GLAT-TAN"
        #expect(throws: WCSError.unsupportedProjection(ctype1: "GLON-TAN", ctype2: "GLAT-TAN")) { try TanWCS(cards: cards) }
        #expect(throws: WCSError.noWCS) { try TanWCS(cards: ["NAXIS": "2"]) }
        cards["CTYPE1"] = "RA---TAN"; cards["CTYPE2"] = "DEC--TAN"; cards["CRPIX2"] = nil
        #expect(throws: WCSError.missing(keyword: "CRPIX2")) { try TanWCS(cards: cards) }
        cards["CRPIX2"] = "nan"
        #expect(throws: WCSError.badValue(keyword: "CRPIX2", value: "nan")) { try TanWCS(cards: cards) }
        cards["CRPIX2"] = "1"; cards["CD1_1"] = "0"; cards["CD2_2"] = "0"
        #expect(throws: WCSError.singular) { try TanWCS(cards: cards) }
        cards["CD1_1"] = "-1e-4"; cards["CD2_2"] = "1e-4"; cards["A_ORDER"] = "2"
        #expect(throws: WCSError.distortion(keyword: "A_ORDER")) { try TanWCS(cards: cards) }
        cards["A_ORDER"] = nil; cards["RADESYS"] = "GAPPT"
        #expect(throws: WCSError.unsupportedFrame("GAPPT")) { try TanWCS(cards: cards) }
    }

    /// A CD matrix whose determinant underflows or overflows passes "not singular" yet places
    /// pixels at NaN, which trapped a worker where a position became a HEALPix pixel: refused.
    @Test func refusesProjectionsThatCannotPlacePixels() throws {
        var cards = ["CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": "10", "CRVAL2": "20", "CRPIX1": "1", "CRPIX2": "1",
                     "CD1_1": "-1e-150", "CD2_2": "1e-150", "CD1_2": "0", "CD2_1": "0"]
        for (cd11, cd12, cd21, cd22) in [("-1e-150", "0", "0", "1e-150"), ("1e308", "-1e308", "0", "1e-4"), ("-20", "0", "0", "20"), ("-1e-4", "0", "0", "1e-4")] {
            (cards["CD1_1"], cards["CD1_2"], cards["CD2_1"], cards["CD2_2"]) = (cd11, cd12, cd21, cd22)
            if cd11 == "-1e-4" {
                let w = try TanWCS(cards: cards)
                #expect(w.problem == nil && w.sky(x: 2, y: 2).ra.isFinite)
                cards["CRPIX1"] = "1e13"
                #expect(throws: WCSError.self) { try TanWCS(cards: cards) }
                continue
            }
            #expect(throws: WCSError.self, "CD \(cd11) \(cd12) \(cd21) \(cd22)") { try TanWCS(cards: cards) }
        }
        let bad = TanWCS(crval1: 10, crval2: 20, crpix1: 1, crpix2: 1, cd11: 1e308, cd12: -1e308, cd21: 0, cd22: 1e-4)
        #expect(bad.problem != nil && bad.sky(x: 2, y: 2).ra.isNaN)   // what it would have placed
    }

    @Test func farSideHasNoPixel() {
        let w = TanWCS.northUp(ra: 10, dec: 20, x: 100, y: 100, scaleArcsec: 1)
        #expect(w.pixel(ra: 190, dec: -20) == nil)
        #expect(TanWCS.Projector(w).pixel(Vec3(ra: 190, dec: -20)) == nil)
        #expect(w.pixel(ra: 10, dec: 20).map { abs($0.x - 100) < 1e-9 && abs($0.y - 100) < 1e-9 } == true)
    }

    // MARK: Tiling

    /// Every point's patch box (in its tract's grid) holds the point with at least the border
    /// around it, so a cutout of `singlePatchCutoutPixels` centred there is inside one patch —
    /// near the poles and across RA = 0 too.
    @Test func patchBoxesHoldTheirPixelsWithTheBorder() throws {
        let tiling = SkyTiling(tractOrder: 5, patchOrder: 8, pixelScaleArcsec: 0.5, borderPixels: 64)
        try tiling.validate()
        var state: UInt64 = 7
        func unit() -> Double {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Double(state >> 11) / Double(1 << 53)
        }
        let n = tiling.singlePatchCutoutPixels
        var checked = 0
        for i in 0..<600 {
            // Uniform on the sphere, plus bands near the poles and RA 0.
            var ra = 360 * unit(), dec = asin(2 * unit() - 1) * 180 / .pi
            if i % 3 == 1 { dec = (unit() < 0.5 ? 1 : -1) * (88 + 2 * unit()) }
            if i % 3 == 2 { ra = unit() < 0.5 ? 0.01 * unit() : 359.99 + 0.009 * unit() }
            let tract = tiling.tract(ra: ra, dec: dec), patch = tiling.patch(ra: ra, dec: dec)
            #expect(tiling.tract(ofPatch: patch) == tract)
            #expect(tiling.patches(ofTract: tract).contains(patch))
            let wcs = tiling.tractWCS(tract)
            let p = try #require(wcs.pixel(ra: ra, dec: dec))
            let box = tiling.patchBox(patch)
            let cut = PixelBox.centred(x: p.x, y: p.y, width: n, height: n)
            #expect(box.contains(cut), "(\(ra), \(dec)): cutout \(cut) not inside patch \(patch)'s box \(box)")
            #expect(tiling.tractBox(tract).contains(box))
            #expect(box.width <= tiling.maxPatchSide && box.height <= tiling.maxPatchSide)
            checked += 1
        }
        #expect(checked == 600)
    }

    @Test func refusesUnusableTilings() {
        #expect(throws: SkyError.self) { try SkyTiling(tractOrder: 8, patchOrder: 8).validate() }
        #expect(throws: SkyError.self) { try SkyTiling(pixelScaleArcsec: 0).validate() }
        #expect(throws: SkyError.self) { try SkyTiling(pixelScaleArcsec: .nan).validate() }
        #expect(throws: SkyError.self) { try SkyTiling(tractOrder: 2, patchOrder: 3, pixelScaleArcsec: 0.2).validate() }
        #expect(throws: SkyError.self) { try SkyTiling(borderPixels: -1).validate() }
    }
}
