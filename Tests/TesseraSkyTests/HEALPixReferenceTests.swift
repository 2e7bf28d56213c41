import Foundation
import Testing
import TesseraSky

/// HEALPix (NESTED) against healpy reference values (Fixtures/healpix.json).
@Suite("HEALPix vs healpy")
struct HEALPixReferenceTests {
    @Test("Fixture numbers parse exactly (doubles from repr strings bit for bit, int64 beyond 2^53)")
    func numbersParseExactly() throws {
        let fx = try HEALPixFixtures.get()
        #expect(fx.floatChecks.count >= 5)
        for (v, _, bits) in fx.floatChecks {
            #expect(v.bitPattern == bits, "parsed \(v) has bits \(v.bitPattern), expected \(bits)")
        }
        for (v, s) in fx.intChecks {
            #expect(String(v) == s, "parsed integer \(v), expected \(s)")
        }
    }

    // The fixture stores floats as their Python repr strings: swift-corelibs-foundation's
    // JSONSerialization (Swift 6.3, Linux) parses some JSON doubles 1–2 ulp off (e.g.
    // 0.5497787143782138), which would blur a 1e-12 comparison. The wire never uses it.

    /// Exact everywhere, pixel edges included: the RA/Dec entry point follows healpy's arithmetic
    /// (θ = π/2 − dec·π/180, z = cos θ, sin θ only near the poles), so even points exactly on an
    /// edge fall on the same side.
    @Test("ang2pix: every order 0...29, random, adversarial and exact-edge points all identical to healpy")
    func ang2pix() throws {
        let fx = try HEALPixFixtures.get()
        #expect(Set(fx.ang2pix.map(\.order)) == Set(0...29))
        #expect(fx.ang2pix.filter(\.edge).count > 1000)
        var failures: [String] = []
        for c in fx.ang2pix {
            let got = HEALPix.pixel(order: c.order, ra: c.ra, dec: c.dec)
            if got == c.pixel { continue }
            let kind = c.adversarial ? (c.edge ? "edge" : "adversarial") : "random"
            failures.append("order \(c.order) \(kind) ra=\(c.ra) dec=\(c.dec): healpy \(c.pixel), Swift \(got)")
        }
        #expect(failures.isEmpty, Comment(rawValue: summary(failures)))
    }

    @Test("Every fixture point (edges included): parent of the order-29 pixel is the pixel at its order")
    func hierarchyOnAdversarialPoints() throws {
        let fx = try HEALPixFixtures.get()
        var failures: [String] = []
        for c in fx.ang2pix {
            let fine = HEALPix.spatialIndex(ra: c.ra, dec: c.dec)
            let direct = HEALPix.pixel(order: c.order, ra: c.ra, dec: c.dec)
            if HEALPix.parent(fine, to: c.order) != direct {
                failures.append("order \(c.order) ra=\(c.ra) dec=\(c.dec): parent of \(fine) is \(HEALPix.parent(fine, to: c.order)), direct \(direct)")
            }
        }
        #expect(failures.isEmpty, Comment(rawValue: summary(failures)))
    }

    @Test("ang2pix via θ/φ, unit vectors and spatialIndex agree on the random points")
    func ang2pixOtherEntryPoints() throws {
        let fx = try HEALPixFixtures.get()
        var failures: [String] = []
        for c in fx.ang2pix where !c.adversarial {
            let theta = .pi / 2 - c.dec * (.pi / 180), phi = c.ra * (.pi / 180)
            let byAngles = HEALPix.pixel(order: c.order, theta: theta, phi: phi)
            let byVector = HEALPix.pixel(order: c.order, vector: Vec3(ra: c.ra, dec: c.dec))
            if byAngles != c.pixel || byVector != c.pixel {
                failures.append("order \(c.order) ra=\(c.ra) dec=\(c.dec): healpy \(c.pixel), θφ \(byAngles), vector \(byVector)")
            }
            if c.order == HEALPix.maxOrder, HEALPix.spatialIndex(ra: c.ra, dec: c.dec) != c.pixel {
                failures.append("spatialIndex ra=\(c.ra) dec=\(c.dec): healpy \(c.pixel)")
            }
        }
        #expect(failures.isEmpty, Comment(rawValue: summary(failures)))
    }

    @Test("ra = 360 gives the pixel of ra = 0")
    func raWraps() throws {
        for order in [0, 1, 5, 13, 29] {
            for dec in [-89.0, -41.8, -10.0, 0.0, 10.0, 41.8, 89.0] {
                #expect(HEALPix.pixel(order: order, ra: 360, dec: dec) == HEALPix.pixel(order: order, ra: 0, dec: dec))
                #expect(HEALPix.pixel(order: order, ra: -360, dec: dec) == HEALPix.pixel(order: order, ra: 0, dec: dec))
            }
        }
    }

    @Test("pix2ang: pixel centres within 1e-12 rad")
    func centers() throws {
        let fx = try HEALPixFixtures.get()
        #expect(Set(fx.centers.map(\.order)) == Set(0...29))
        var failures: [String] = []
        for c in fx.centers {
            let (t, p) = HEALPix.center(order: c.order, pixel: c.pixel)
            var dphi = abs(p - c.phi)
            dphi = min(dphi, 2 * .pi - dphi)
            let sep = chordAngle(unitVector(theta: t, phi: p), unitVector(theta: c.theta, phi: c.phi))
            let vsep = chordAngle(HEALPix.centerVector(order: c.order, pixel: c.pixel), unitVector(theta: c.theta, phi: c.phi))
            let (ra, dec) = HEALPix.centerRaDec(order: c.order, pixel: c.pixel)
            let rdsep = chordAngle(Vec3(ra: ra, dec: dec), unitVector(theta: c.theta, phi: c.phi))
            if abs(t - c.theta) > 1e-12 || dphi > 1e-12 || sep > 1e-12 || vsep > 1e-12 || rdsep > 1e-12 {
                failures.append(
                    "order \(c.order) pixel \(c.pixel): healpy θ=\(c.theta) φ=\(c.phi), Swift θ=\(t) φ=\(p) "
                        + "(sep \(sep), vector sep \(vsep), ra/dec sep \(rdsep))")
            }
        }
        #expect(failures.isEmpty, Comment(rawValue: summary(failures)))
    }

    @Test("neighbours: exact, in healpy's order (SW, W, NW, N, NE, E, SE, S), -1 included")
    func neighbours() throws {
        let fx = try HEALPixFixtures.get()
        #expect(Set(fx.neighbours.map(\.order)) == Set(0...29))
        var failures: [String] = []
        for c in fx.neighbours {
            let got = HEALPix.neighbours(order: c.order, pixel: c.pixel)
            if got != c.neighbours {
                failures.append("order \(c.order) pixel \(c.pixel): healpy \(c.neighbours), Swift \(got)")
            }
        }
        #expect(failures.isEmpty, Comment(rawValue: summary(failures)))
    }

    @Test("boundaries: step 1 and 3, same points in the same order, within 1e-12 rad")
    func boundaries() throws {
        let fx = try HEALPixFixtures.get()
        #expect(Set(fx.boundaries.map(\.order)) == Set(0...29))
        var failures: [String] = []
        for c in fx.boundaries {
            let got = HEALPix.boundaries(order: c.order, pixel: c.pixel, step: c.step)
            guard got.count == c.points.count else {
                failures.append("order \(c.order) pixel \(c.pixel) step \(c.step): \(got.count) points, healpy \(c.points.count)")
                continue
            }
            for (i, (g, e)) in zip(got, c.points).enumerated() where chordAngle(g, e) > 1e-12 {
                failures.append(
                    "order \(c.order) pixel \(c.pixel) step \(c.step) point \(i): healpy \(e), Swift \(g), sep \(chordAngle(g, e))")
            }
        }
        #expect(failures.isEmpty, Comment(rawValue: summary(failures)))
    }

    @Test("maxPixelRadius matches healpy.max_pixrad and bounds every boundary point")
    func maxPixelRadius() throws {
        let fx = try HEALPixFixtures.get()
        for order in 0...29 {
            let expected = try #require(fx.maxPixelRadius[order])
            let got = HEALPix.maxPixelRadius(order: order)
            // healpy builds its vectors from z directly, Swift through acos/cos: ~5e-17 rad apart.
            #expect(abs(got - expected) <= 1e-15 + 1e-12 * expected, "order \(order): healpy \(expected), Swift \(got)")
        }
        // Every sampled boundary point is within the bound of its pixel's centre.
        var rng = SplitMix64(seed: 7)
        for order in 0...12 {
            let r = HEALPix.maxPixelRadius(order: order)
            for _ in 0..<40 {
                let pix = Int64.random(in: 0..<HEALPix.pixelCount(order), using: &rng)
                let c = HEALPix.centerVector(order: order, pixel: pix)
                for b in HEALPix.boundaries(order: order, pixel: pix, step: 8) {
                    let d = chordAngle(c, b)
                    #expect(d <= r * (1 + 1e-12), "order \(order) pixel \(pix): boundary point \(d) rad from centre > \(r)")
                }
            }
        }
    }
}
