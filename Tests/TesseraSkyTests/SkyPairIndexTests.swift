import Foundation
import Testing
@testable import TesseraSky

/// The pair index against brute force: every pair of positions, tested one by one by their
/// angle (atan2 of the cross and dot products, not the index's chord), on positions that
/// stress its grid: both poles, right ascension 0/360, dense patches, sparse whole-sky rows,
/// and positions outside [0, 360) or not on the sky.
struct SkyPairIndexTests {
    struct Points {
        var ra: [Double] = [], dec: [Double] = []
        mutating func add(_ a: Double, _ d: Double) { ra.append(a); dec.append(d) }
    }

    static func scatter(seed: UInt64, count: Int) -> Points {
        var rng = SplitMix64(seed: seed)
        var p = Points()
        for k in 0..<count {
            let u = Double.random(in: 0..<1, using: &rng), v = Double.random(in: 0..<1, using: &rng)
            switch k % 6 {
            case 0: let (a, d) = rng.radec(); p.add(a, d)                        // the whole sky
            case 1: p.add(360 * u, 90 - 0.003 * v)                                  // the north pole
            case 2: p.add(360 * u, -90 + 0.003 * v)                                 // the south pole
            case 3: p.add((360 + 0.004 * (u - 0.5)).truncatingRemainder(dividingBy: 360), 0.004 * (v - 0.5))  // RA 0 at the equator
            case 4: p.add(0.004 * (u - 0.5) + (u < 0.5 ? 360 : 0), 60 + 0.004 * (v - 0.5))  // RA 0 at +60, written past 360 too
            default: p.add(150 + 0.003 * u, 2 + 0.003 * v)                          // a dense patch
            }
        }
        return p
    }

    static func bruteForce(_ left: Points, _ right: Points, radiusArcsec: Double) -> [[Int32]] {
        let r = radiusArcsec / 3600 * .pi / 180
        let rv = zip(right.ra, right.dec).map { Vec3(ra: $0, dec: $1) }
        return zip(left.ra, left.dec).map { a, d in
            guard a.isFinite, abs(d) <= 90 else { return [] }
            let v = Vec3(ra: a, dec: d)
            return rv.indices.filter { k in
                right.ra[k].isFinite && abs(right.dec[k]) <= 90 && v.angle(to: rv[k]) <= r * (1 - 1e-12)
            }.map { Int32($0) }
        }
    }

    @Test(arguments: [0.5, 2.0, 9.0, 3600.0])
    func everyPairWithinTheRadiusAndNoOther(radiusArcsec: Double) throws {
        let right = Self.scatter(seed: 7, count: 3_000)
        var left = Self.scatter(seed: 8, count: 1_500)
        // Positions no pair may have.
        left.add(.nan, 10); left.add(10, .nan); left.add(10, 91); left.add(.infinity, 0)
        let index = SkyPairIndex(ra: right.ra, dec: right.dec, radiusArcsec: radiusArcsec)
        let pairs = try #require(index.pairs(ra: left.ra, dec: left.dec))
        var found = [[Int32]](repeating: [], count: left.ra.count)
        for k in 0..<pairs.count { found[Int(pairs.left[k])].append(pairs.right[k]) }
        let truth = Self.bruteForce(left, right, radiusArcsec: radiusArcsec)
        let r = radiusArcsec / 3600 * .pi / 180
        var checked = 0
        for i in left.ra.indices {
            // Pairs the brute force finds well inside the radius are all found; anything found
            // is within the radius (to rounding: the index tests the chord, the brute force the angle).
            let got = Set(found[i])
            #expect(Set(truth[i]).isSubset(of: got), "left \(i) at (\(left.ra[i]), \(left.dec[i])), radius \(radiusArcsec)″")
            for k in got {
                let angle = Vec3(ra: left.ra[i], dec: left.dec[i]).angle(to: Vec3(ra: right.ra[Int(k)], dec: right.dec[Int(k)]))
                #expect(angle <= r * (1 + 1e-9))
            }
            checked += truth[i].count
        }
        #expect(checked > 100, "the positions have pairs to find")
        #expect(pairs.left.suffix(4).allSatisfy { $0 < 1_500 }, "positions not on the sky pair with nothing")
        // Separations: the angle, in arcseconds.
        for k in stride(from: 0, to: pairs.count, by: max(1, pairs.count / 500)) {
            let (i, j) = (Int(pairs.left[k]), Int(pairs.right[k]))
            let angle = Vec3(ra: left.ra[i], dec: left.dec[i]).angle(to: Vec3(ra: right.ra[j], dec: right.dec[j])) * 180 / .pi * 3600
            #expect(abs(pairs.separationArcsec[k] - angle) <= 1e-9 * max(1, angle))
        }
    }

    @Test func nearestIsTheClosestWithinTheRadius() throws {
        let right = Self.scatter(seed: 17, count: 2_000)
        let left = Self.scatter(seed: 18, count: 1_200)
        let index = SkyPairIndex(ra: right.ra, dec: right.dec, radiusArcsec: 5)
        let all = try #require(index.pairs(ra: left.ra, dec: left.dec))
        let one = try #require(index.pairs(ra: left.ra, dec: left.dec, nearest: 1))
        let three = try #require(index.pairs(ra: left.ra, dec: left.dec, nearest: 3))
        var closest: [Int32: (Double, Int32)] = [:]
        var perLeft: [Int32: [(Double, Int32)]] = [:]
        for k in 0..<all.count {
            let l = all.left[k], c = (all.separationArcsec[k], all.right[k])
            if let b = closest[l], b.0 < c.0 || (b.0 == c.0 && b.1 < c.1) {} else { closest[l] = c }
            perLeft[l, default: []].append(c)
        }
        #expect(one.count == closest.count && one.count > 50)
        for k in 0..<one.count { #expect(closest[one.left[k]]?.1 == one.right[k]) }
        let expectedThree = perLeft.values.reduce(0) { $0 + min(3, $1.count) }
        #expect(three.count == expectedThree)
        #expect(zip(three.left, three.left.dropFirst()).allSatisfy { $0 <= $1 }, "by left position")
    }

    /// A nearest match against a dense right side at a wide radius compares each left row with
    /// its whole window, pairs or not: bounded by `examineLimit`, for k = 1 and for more.
    @Test func comparisonsAreBounded() {
        // 400 positions within 0.01° of (10, 20); a radius of 60″ reaches them all.
        let n = 400
        let ra = (0..<n).map { 10 + Double($0 % 20) * 0.0005 }, dec = (0..<n).map { 20 + Double($0 / 20) * 0.0005 }
        let index = SkyPairIndex(ra: ra, dec: dec, radiusArcsec: 60)
        let left = (ra: [Double](repeating: 10.005, count: 10), dec: [Double](repeating: 20.005, count: 10))
        for k in [1, 3] {
            // Each left row compares at least the 400 (its window holds them all).
            #expect(index.pairs(ra: left.ra, dec: left.dec, nearest: k, examineLimit: 10 * n) != nil)
            #expect(index.pairs(ra: left.ra, dec: left.dec, nearest: k, examineLimit: 5 * n) == nil, "k = \(k)")
        }
        #expect(index.pairs(ra: left.ra, dec: left.dec, nearest: 1, examineLimit: 10 * n)?.count == 10)
    }

    @Test func degenerateIndexes() {
        let empty = SkyPairIndex(ra: [.nan], dec: [0], radiusArcsec: 1)
        #expect(empty.count == 0)
        #expect(empty.pairs(ra: [10, 20], dec: [0, 0])?.count == 0)
        // One position; positions all at one right ascension; at one point (a shard of one row,
        // a column of duplicates): their grids have no width.
        let one = SkyPairIndex(ra: [10], dec: [20], radiusArcsec: 1)
        #expect(one.pairs(ra: [10, 10 + 0.5 / 3600, 10], dec: [20, 20, 20 + 2.0 / 3600])?.left == [0, 1])
        let line = SkyPairIndex(ra: [10, 10, 10], dec: [20, 20.0001, 20.0002], radiusArcsec: 1)
        #expect(line.pairs(ra: [10, 10.0001], dec: [20.0001, 20.0001], nearest: 1)?.right == [1, 1])
        #expect(line.pairs(ra: [10], dec: [20.0001])?.right.first == 1 && Set(line.pairs(ra: [10], dec: [20.0001])?.right ?? []) == [0, 1, 2])
        let same = SkyPairIndex(ra: [359.9, 359.9], dec: [-89.99, -89.99], radiusArcsec: 1)
        #expect(same.pairs(ra: [-0.1], dec: [-89.99])?.right == [0, 1])
        // Rows on both sides of RA 0, written as negative and as just under 360: each is found
        // from either side.
        let straddle = SkyPairIndex(ra: [-1e-13, 359.9999999999999, 1e-13, 0.0002], dec: [0, 0, 0, 0], radiusArcsec: 1)
        #expect(Set(straddle.pairs(ra: [0], dec: [0])?.right ?? []) == [0, 1, 2, 3])
        #expect(Set(straddle.pairs(ra: [359.9999], dec: [0])?.right ?? []) == [0, 1, 2])
        // More pairs than the limit: nothing, rather than a heap of them.
        #expect(line.pairs(ra: [10, 10], dec: [20.0001, 20.0001], limit: 4) == nil)
        #expect(line.pairs(ra: [10, 10], dec: [20.0001, 20.0001], limit: 6)?.count == 6)
    }
}
