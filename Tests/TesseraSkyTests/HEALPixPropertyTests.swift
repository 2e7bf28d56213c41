import Foundation
import Testing
import TesseraSky

/// Pure-Swift HEALPix properties (no reference data).
@Suite("HEALPix properties")
struct HEALPixPropertyTests {
    @Test("pixel(order: 29) then parent(to: k) equals pixel(order: k), for every k")
    func parentOfSpatialIndex() {
        var rng = SplitMix64(seed: 1)
        var failures: [String] = []
        for _ in 0..<2000 {
            let (ra, dec) = rng.radec()
            let idx = HEALPix.spatialIndex(ra: ra, dec: dec)
            #expect(idx == HEALPix.pixel(order: 29, ra: ra, dec: dec))
            for k in 0...29 where HEALPix.parent(idx, to: k) != HEALPix.pixel(order: k, ra: ra, dec: dec) {
                failures.append("ra=\(ra) dec=\(dec) order \(k): parent \(HEALPix.parent(idx, to: k)), direct \(HEALPix.pixel(order: k, ra: ra, dec: dec))")
            }
        }
        #expect(failures.isEmpty, Comment(rawValue: summary(failures)))
    }

    @Test("parent/children are consistent")
    func parentChildren() {
        var rng = SplitMix64(seed: 2)
        for order in 0...27 {
            for _ in 0..<20 {
                let pix = Int64.random(in: 0..<HEALPix.pixelCount(order), using: &rng)
                let to = Int.random(in: order...29, using: &rng)
                let kids = HEALPix.children(pix, order: order, to: to)
                #expect(Int64(kids.count) == Int64(1) << (2 * Int64(to - order)))
                #expect(HEALPix.parent(kids.lowerBound, from: to, to: order) == pix)
                #expect(HEALPix.parent(kids.upperBound - 1, from: to, to: order) == pix)
                // The centre of the pixel lies in one of its children.
                let (ra, dec) = HEALPix.centerRaDec(order: order, pixel: pix)
                #expect(kids.contains(HEALPix.pixel(order: to, ra: ra, dec: dec)), "order \(order) pixel \(pix) → \(to)")
            }
        }
    }

    @Test("pixel → centre → pixel is the identity at every order (θ/φ, vector and RA/Dec)")
    func centreRoundTrip() {
        var rng = SplitMix64(seed: 3)
        var failures: [String] = []
        for order in 0...29 {
            var pixels = (0..<200).map { _ in Int64.random(in: 0..<HEALPix.pixelCount(order), using: &rng) }
            pixels += [0, HEALPix.pixelCount(order) - 1]
            for pix in pixels {
                let (t, p) = HEALPix.center(order: order, pixel: pix)
                let (ra, dec) = HEALPix.centerRaDec(order: order, pixel: pix)
                let a = HEALPix.pixel(order: order, theta: t, phi: p)
                let b = HEALPix.pixel(order: order, vector: HEALPix.centerVector(order: order, pixel: pix))
                let c = HEALPix.pixel(order: order, ra: ra, dec: dec)
                if a != pix || b != pix || c != pix {
                    failures.append("order \(order) pixel \(pix): θφ \(a), vector \(b), ra/dec \(c)")
                }
            }
        }
        #expect(failures.isEmpty, Comment(rawValue: summary(failures)))
    }

    @Test("neighbours are symmetric and touch the pixel")
    func neighbourSymmetry() {
        var rng = SplitMix64(seed: 4)
        for order in [0, 1, 2, 3, 7, 15, 29] {
            for _ in 0..<50 {
                let pix = Int64.random(in: 0..<HEALPix.pixelCount(order), using: &rng)
                let nbs = HEALPix.neighbours(order: order, pixel: pix)
                #expect(nbs.count == 8)
                // Corner pixels of the 8 faces touching a pole on only one side lack one neighbour;
                // at order 0 the base pixels lack two (as healpy).
                #expect(nbs.filter { $0 == -1 }.count <= (order == 0 ? 2 : 1), "order \(order) pixel \(pix): \(nbs)")
                for n in nbs where n >= 0 {
                    #expect(n != pix && n < HEALPix.pixelCount(order))
                    #expect(HEALPix.neighbours(order: order, pixel: n).contains(pix), "order \(order): \(n) lists not \(pix)")
                }
            }
        }
    }

    @Test("Vec3.angle(to:) is accurate for tiny separations (vs haversine in Float80 / the chord)")
    func angleTiny() {
        var rng = SplitMix64(seed: 5)
        for delta in [1e-10, 3e-9, 1e-7, 1e-4] {
            for _ in 0..<200 {
                let (ra1, dec1) = rng.radec()
                let dir = Double.random(in: 0..<(2 * .pi), using: &rng)
                let dec2 = max(-90, min(90, dec1 + delta * cos(dir) * 180 / .pi))
                let cosd = max(cos(dec1 * .pi / 180), 1e-3)
                let ra2 = ra1 + delta * sin(dir) / cosd * 180 / .pi
                let a = Vec3(ra: ra1, dec: dec1), b = Vec3(ra: ra2, dec: dec2)
                let got = a.angle(to: b)
                let ref = haversine80(ra1, dec1, ra2, dec2)
                // The vectors themselves carry ~1e-16 of rounding, so agreement is absolute, not relative
                // (acos of the dot product would be off by ~1e-8 at δ = 1e-10).
                #expect(abs(got - ref) <= 4e-15 + 1e-12 * ref, "δ≈\(delta): angle \(got), haversine \(ref)")
                #expect(abs(got - chordAngle(a, b)) <= 4e-15 + 1e-12 * ref, "δ≈\(delta): angle \(got), chord \(chordAngle(a, b))")
            }
        }
        // A point against itself, and a 1e-10 rad step along the equator.
        let p = Vec3(ra: 12.3, dec: -45.6)
        #expect(p.angle(to: p) == 0)
        let e = Vec3(1, 0, 0), f = Vec3(cos(1e-10), sin(1e-10), 0)
        #expect(abs(e.angle(to: f) - 1e-10) <= 1e-24)
    }

    @Test("Vec3.angle(to:) is accurate near antipodes")
    func angleAntipodal() {
        var rng = SplitMix64(seed: 6)
        for delta in [0.0, 1e-10, 1e-8, 1e-5] {
            for _ in 0..<200 {
                let (ra1, dec1) = rng.radec()
                // The antipode of (ra1, dec1) is (ra1 + 180, -dec1); step `delta` away from it in dec.
                let dec2 = -dec1 + (dec1 >= 0 ? delta : -delta) * 180 / .pi
                let a = Vec3(ra: ra1, dec: dec1), b = Vec3(ra: ra1 + 180, dec: dec2)
                let got = a.angle(to: b)
                let ref = haversine80(ra1, dec1, ra1 + 180, dec2, antipodeOfSecond: true)
                #expect(abs(got - ref) <= 4e-15, "δ=\(delta): angle \(got), haversine \(ref), π−angle \(Double.pi - got)")
            }
        }
        let v = Vec3(0.6, -0.48, 0.64)
        #expect(v.angle(to: Vec3(-v.x, -v.y, -v.z)) == .pi)
    }
}

/// Great-circle distance in radians by the haversine formula, evaluated in Float80 where available
/// (the inputs are degrees; extended precision keeps the reference far below Double rounding).
/// With `antipodeOfSecond`, the distance is π minus the distance to the second point's antipode
/// (haversine loses its digits as h → 1, so near-antipodal references go through the antipode).
private func haversine80(_ ra1: Double, _ dec1: Double, _ ra2: Double, _ dec2: Double, antipodeOfSecond: Bool = false) -> Double {
    #if arch(x86_64) && !os(Windows)
    typealias R = Float80
    let k = R.pi / 180
    let flip = antipodeOfSecond
    let d1 = R(dec1) * k, d2 = (flip ? -R(dec2) : R(dec2)) * k, dr = ((flip ? R(ra2) + 180 : R(ra2)) - R(ra1)) * k
    func s2(_ x: R) -> R { let s = sinl(x / 2); return s * s }
    let h = s2(d2 - d1) + cosl(d1) * cosl(d2) * s2(dr)
    let d = 2 * atan2l(h.squareRoot(), (1 - h).squareRoot())
    return Double(flip ? R.pi - d : d)
    #else
    let k = Double.pi / 180
    let flip = antipodeOfSecond
    let d1 = dec1 * k, d2 = (flip ? -dec2 : dec2) * k, dr = ((flip ? ra2 + 180 : ra2) - ra1) * k
    func s2(_ x: Double) -> Double { let s = sin(x / 2); return s * s }
    let h = s2(d2 - d1) + cos(d1) * cos(d2) * s2(dr)
    let d = 2 * atan2(h.squareRoot(), (1 - h).squareRoot())
    return flip ? .pi - d : d
    #endif
}
