import Foundation
import Testing
@testable import TesseraCompute
import TesseraSky

/// The covers that let a sparse left side read only the right rows near it.
struct CrossmatchCoverTests {
    /// Every point within the radius of a row lies in the row's cover: points at the radius in
    /// every direction around rows anywhere (poles and face corners included), radius 0.1″…1°.
    @Test(arguments: [0.1, 1.0, 10.0, 3600.0])
    func aCoverHoldsEveryPointWithinTheRadius(radiusArcsec: Double) {
        var rng = SystemRandomNumberGenerator()
        var rows: [(Double, Double)] = (0..<300).map { _ in (Double.random(in: 0..<360, using: &rng), asin(Double.random(in: -1...1, using: &rng)) * 180 / .pi) }
        rows += [(0, 90), (0, -90), (45, 41.8103), (0, 0), (90, -41.8103), (359.9999, 89.99)]
        let index = rows.map { HEALPix.spatialIndex(ra: $0.0, dec: $0.1) }.sorted()
        let cover = Crossmatch.cover(index: index, radiusArcsec: radiusArcsec)
        #expect(zip(cover, cover.dropFirst()).allSatisfy { $0.upperBound < $1.lowerBound }, "ascending and disjoint")
        let r = radiusArcsec / 3600 * .pi / 180 * (1 - 1e-9)
        var missed = 0
        for (ra, dec) in rows {
            let c = Vec3(ra: ra, dec: dec)
            // An orthonormal pair at the row, then points at the radius all around it.
            let a = (abs(c.z) < 0.9 ? Vec3(0, 0, 1) : Vec3(1, 0, 0)).cross(c).normalized
            let b = c.cross(a)
            for k in 0..<72 {
                let t = Double(k) * .pi / 36
                let d = Vec3(a.x * cos(t) + b.x * sin(t), a.y * cos(t) + b.y * sin(t), a.z * cos(t) + b.z * sin(t))
                let p = Vec3(c.x * cos(r) + d.x * sin(r), c.y * cos(r) + d.y * sin(r), c.z * cos(r) + d.z * sin(r))
                let (pra, pdec) = p.raDec
                if Crossmatch.rows(of: [HEALPix.spatialIndex(ra: pra, dec: pdec)], within: cover).isEmpty { missed += 1 }
            }
        }
        #expect(missed == 0)
    }

    /// The sweep keeps exactly the rows a range holds (brute force).
    @Test func theSweepKeepsTheRowsInTheRanges() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            let index = (0..<Int.random(in: 0...300, using: &rng)).map { _ in Int64.random(in: 0..<2_000, using: &rng) }.sorted()
            var bounds = Set((0..<Int.random(in: 0...40, using: &rng)).map { _ in Int64.random(in: 0..<2_100, using: &rng) }).sorted()
            if bounds.count % 2 == 1 { bounds.removeLast() }
            let ranges = stride(from: 0, to: bounds.count, by: 2).map { bounds[$0]..<bounds[$0 + 1] }
            let expected = index.indices.filter { i in ranges.contains { $0.contains(index[i]) } }
            #expect(Crossmatch.rows(of: index, within: ranges) == expected)
        }
    }
}
