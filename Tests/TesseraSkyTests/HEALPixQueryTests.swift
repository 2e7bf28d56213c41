import Foundation
import Testing
import TesseraSky

/// queryDisc / queryPolygon against healpy's query_disc / query_polygon (Fixtures/healpix.json).
@Suite("HEALPix queries vs healpy")
struct HEALPixQueryTests {
    @Test("queryDisc exact (centres inside) equals healpy query_disc(inclusive=False)")
    func discExact() throws {
        let fx = try HEALPixFixtures.get()
        #expect(fx.discs.count >= 40)
        for d in fx.discs {
            let got = HEALPix.queryDisc(order: d.order, center: d.center, radius: d.radius, inclusive: false)
            let (missing, extra) = diff(expected: d.exact, got: got)
            #expect(
                got == d.exact,
                "order \(d.order) disc ra=\(d.ra) dec=\(d.dec) r=\(d.radius): healpy \(d.exact.count) pixels, Swift \(got.count); missing \(missing.prefix(10)), extra \(extra.prefix(10))"
            )
        }
    }

    @Test("queryDisc inclusive: sorted superset of healpy's exact list, every overlapping pixel, not absurdly large")
    func discInclusive() throws {
        let fx = try HEALPixFixtures.get()
        for d in fx.discs {
            let got = HEALPix.queryDisc(order: d.order, center: d.center, radius: d.radius, inclusive: true)
            let label = "order \(d.order) disc ra=\(d.ra) dec=\(d.dec) r=\(d.radius)"
            #expect(got == got.sorted() && Set(got).count == got.count, "\(label): not sorted and unique")
            let have = Set(got)
            let missingExact = d.exact.filter { !have.contains($0) }
            #expect(missingExact.isEmpty, "\(label): inclusive result lacks healpy exact pixels \(missingExact.prefix(10))")
            let overlapping = bruteForceOverlap(order: d.order, maxPixrad: fx.maxPixelRadius) { v in
                chordAngle(v, d.center) < d.radius - 1e-13
            } near: { c, reach in
                chordAngle(c, d.center) <= d.radius + reach
            }
            #expect(overlapping.count >= d.exact.count, "\(label): brute force found \(overlapping.count), healpy exact \(d.exact.count)")
            let missed = overlapping.filter { !have.contains($0) }
            #expect(missed.isEmpty, "\(label): inclusive result misses overlapping pixels \(missed.prefix(10)) (of \(overlapping.count))")
            #expect(
                got.count <= 4 * d.inclusive.count + 64,
                "\(label): inclusive result has \(got.count) pixels, healpy's inclusive \(d.inclusive.count)")
        }
    }

    @Test("queryPolygon exact (centres inside) equals healpy query_polygon(inclusive=False)")
    func polygonExact() throws {
        let fx = try HEALPixFixtures.get()
        #expect(fx.polygons.count >= 20)
        for p in fx.polygons {
            let got = try HEALPix.queryPolygon(order: p.order, vertices: p.vertices, inclusive: false)
            let (missing, extra) = diff(expected: p.exact, got: got)
            #expect(
                got == p.exact,
                "order \(p.order) polygon \(p.name): healpy \(p.exact.count) pixels, Swift \(got.count); missing \(missing.prefix(10)), extra \(extra.prefix(10))"
            )
        }
    }

    @Test("queryPolygon exact is the same with the vertices in the other order (as healpy)")
    func polygonReversed() throws {
        let fx = try HEALPixFixtures.get()
        for p in fx.polygons {
            let got = try HEALPix.queryPolygon(order: p.order, vertices: p.vertices.reversed(), inclusive: false)
            #expect(got == p.exact, "order \(p.order) polygon \(p.name) reversed: healpy \(p.exact.count), Swift \(got.count)")
        }
    }

    @Test("queryPolygon inclusive: superset of healpy's exact list and of every overlapping pixel")
    func polygonInclusive() throws {
        let fx = try HEALPixFixtures.get()
        for p in fx.polygons {
            let got = try HEALPix.queryPolygon(order: p.order, vertices: p.vertices, inclusive: true)
            let label = "order \(p.order) polygon \(p.name)"
            #expect(got == got.sorted() && Set(got).count == got.count, "\(label): not sorted and unique")
            let have = Set(got)
            let missingExact = p.exact.filter { !have.contains($0) }
            #expect(missingExact.isEmpty, "\(label): inclusive result lacks healpy exact pixels \(missingExact.prefix(10))")
            let normals = inwardNormals(p.vertices)
            let overlapping = bruteForceOverlap(order: p.order, maxPixrad: fx.maxPixelRadius) { v in
                normals.allSatisfy { $0.dot(v) > 1e-13 }
            } near: { c, reach in
                normals.allSatisfy { $0.dot(c) >= -sin(min(reach, .pi / 2)) }
            }
            #expect(overlapping.count >= p.exact.count, "\(label): brute force found \(overlapping.count), healpy exact \(p.exact.count)")
            let missed = overlapping.filter { !have.contains($0) }
            #expect(missed.isEmpty, "\(label): inclusive result misses overlapping pixels \(missed.prefix(10))")
            #expect(got.count <= 4 * p.exact.count + 256, "\(label): inclusive result has \(got.count) pixels, exact \(p.exact.count)")
        }
    }
}

/// Pixels in `expected` but not `got`, and in `got` but not `expected`.
private func diff(expected: [Int64], got: [Int64]) -> (missing: [Int64], extra: [Int64]) {
    let e = Set(expected), g = Set(got)
    return (expected.filter { !g.contains($0) }, got.filter { !e.contains($0) })
}

/// Unit normals of a convex polygon's edges, pointing inwards (towards the vertices' centroid).
private func inwardNormals(_ vs: [Vec3]) -> [Vec3] {
    let c = Vec3(vs.map(\.x).reduce(0, +), vs.map(\.y).reduce(0, +), vs.map(\.z).reduce(0, +))
    return vs.indices.map { i in
        let n = vs[i].cross(vs[(i + 1) % vs.count]).normalized
        return n.dot(c) < 0 ? Vec3(-n.x, -n.y, -n.z) : n
    }
}

/// Every pixel at `order` with its centre or one of its boundary points (step 8) inside a region,
/// by descending the hierarchy from the 12 base pixels. `near(centre, reach)` must be true for any
/// pixel that could hold a point of the region within `reach` of its centre; pruning uses twice
/// healpy's max_pixrad, generous for any point of a pixel.
private func bruteForceOverlap(
    order: Int, maxPixrad: [Int: Double], inside: (Vec3) -> Bool, near: (Vec3, Double) -> Bool
) -> [Int64] {
    var out: [Int64] = []
    var stack: [(Int, Int64)] = (0..<12).map { (0, Int64($0)) }
    while let (level, pix) = stack.popLast() {
        let c = HEALPix.centerVector(order: level, pixel: pix)
        guard near(c, 2 * (maxPixrad[level] ?? .pi) + 1e-9) else { continue }
        if level < order {
            for k in 0..<Int64(4) { stack.append((level + 1, pix * 4 + k)) }
        } else if inside(c) || HEALPix.boundaries(order: order, pixel: pix, step: 8).contains(where: inside) {
            out.append(pix)
        }
    }
    return out.sorted()
}
