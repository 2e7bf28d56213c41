#if canImport(Glibc)
import Glibc
#endif

/// How a spherical cap (a pixel's bounding circle) lies relative to a region.
public enum Overlap: Sendable {
    case outside, partial, inside
}

/// A region of the sky that queries and shard pruning can ask about.
public protocol SkyRegion: Sendable {
    /// Whether a point is in the region.
    func contains(_ v: Vec3) -> Bool
    /// Where the cap of angular radius `radius` (radians) around `center` lies: `inside` and
    /// `outside` must be certain; `partial` may be said when unsure.
    func classify(center: Vec3, radius: Double) -> Overlap
}

extension SkyRegion {
    /// Whether a position (degrees) is in the region.
    public func contains(ra: Double, dec: Double) -> Bool { contains(Vec3(ra: ra, dec: dec)) }
}

/// All points within `radius` of `center`.
public struct ConeRegion: SkyRegion, Equatable {
    public let center: Vec3
    /// Radians.
    public let radius: Double
    private let cosRadius: Double

    /// - Parameters: ra, dec and radius in degrees.
    public init(ra: Double, dec: Double, radius: Double) {
        self.init(center: Vec3(ra: ra, dec: dec), radius: radius * .pi / 180)
    }

    public init(center: Vec3, radius: Double) {
        self.center = center.normalized
        self.radius = radius
        cosRadius = cos(radius)
    }

    public func contains(_ v: Vec3) -> Bool {
        // A cheap dot-product test, with the exact angle only where rounding could decide it.
        let d = center.dot(v)
        if abs(d - cosRadius) > 1e-9 { return d > cosRadius }
        return center.angle(to: v) <= radius
    }

    public func classify(center c: Vec3, radius r: Double) -> Overlap {
        let d = center.angle(to: c)
        if d > radius + r { return .outside }
        if d + r <= radius { return .inside }
        return .partial
    }
}

/// A convex spherical polygon (less than a hemisphere), vertices in either order.
public struct PolygonRegion: SkyRegion {
    public let vertices: [Vec3]
    /// Inward unit normals of the edges' great circles.
    private let normals: [Vec3]

    /// - Parameter vertices: at least 3, as RA/Dec in degrees.
    public init(raDec: [(ra: Double, dec: Double)]) throws(SkyError) {
        try self.init(vertices: raDec.map { Vec3(ra: $0.ra, dec: $0.dec) })
    }

    public init(vertices: [Vec3]) throws(SkyError) {
        guard vertices.count >= 3 else { throw .invalidRegion("a polygon needs at least 3 vertices, got \(vertices.count)") }
        let vs = vertices.map(\.normalized)
        var ns: [Vec3] = []
        for i in 0..<vs.count {
            let n = vs[i].cross(vs[(i + 1) % vs.count])
            guard n.length > 1e-15 else { throw .invalidRegion("polygon vertices \(i) and \((i + 1) % vs.count) coincide or are antipodal") }
            ns.append(n.normalized)
        }
        // Orient the normals towards the vertices' centroid; then every vertex must be on the
        // inner side of every edge, or the polygon is not convex.
        let c = Vec3(vs.reduce(0) { $0 + $1.x }, vs.reduce(0) { $0 + $1.y }, vs.reduce(0) { $0 + $1.z })
        guard c.length > 1e-12 else { throw .invalidRegion("polygon has no well-defined inside (vertices balance around the sphere)") }
        if ns[0].dot(c) < 0 { ns = ns.map { Vec3(-$0.x, -$0.y, -$0.z) } }
        for (i, n) in ns.enumerated() {
            for (j, v) in vs.enumerated() where n.dot(v) < -1e-12 {
                throw .invalidRegion("polygon is not convex: vertex \(j) lies outside edge \(i)")
            }
        }
        self.vertices = vs
        normals = ns
    }

    public func contains(_ v: Vec3) -> Bool { normals.allSatisfy { $0.dot(v) >= 0 } }

    public func classify(center c: Vec3, radius r: Double) -> Overlap {
        let sr = sin(min(r, .pi / 2))
        var inside = true
        for n in normals {
            let d = n.dot(c)  // sine of the distance from c to the edge's great circle, signed
            if d < -sr { return .outside }
            if d < sr { inside = false }
        }
        return inside ? .inside : .partial
    }
}

/// Right ascension from `raMin` to `raMax` (wrapping through 0 when raMin > raMax) and
/// declination from `decMin` to `decMax`, degrees.
public struct BoxRegion: SkyRegion, Equatable {
    public let raMin: Double, raMax: Double, decMin: Double, decMax: Double

    public init(raMin: Double, raMax: Double, decMin: Double, decMax: Double) throws(SkyError) {
        guard decMin <= decMax, decMin >= -90, decMax <= 90 else {
            throw .invalidRegion("declination range \(decMin)…\(decMax) must be ordered and within ±90°")
        }
        guard raMin.isFinite, raMax.isFinite else { throw .invalidRegion("right ascension bounds must be finite") }
        self.raMin = Self.wrap(raMin)
        self.raMax = raMax - raMin >= 360 ? Self.wrap(raMin) + 360 : Self.wrap(raMax)
        self.decMin = decMin
        self.decMax = decMax
    }

    static func wrap(_ ra: Double) -> Double {
        let r = ra.truncatingRemainder(dividingBy: 360)
        return r < 0 ? r + 360 : r
    }

    /// Degrees of RA from raMin, eastwards, to `ra`.
    private func offset(_ ra: Double) -> Double { Self.wrap(ra - raMin) }
    private var width: Double { raMax - raMin >= 360 ? 360 : Self.wrap(raMax - raMin) }
    /// Degrees of RA the box spans eastwards from `raMin` (360: the whole circle).
    public var raWidth: Double { width }
    /// The box's middle: half its RA span east of `raMin`, half way between its declinations.
    public var centre: (ra: Double, dec: Double) { (Self.wrap(raMin + width / 2), (decMin + decMax) / 2) }

    public func contains(_ v: Vec3) -> Bool {
        let (ra, dec) = v.raDec
        return dec >= decMin && dec <= decMax && (width >= 360 || offset(ra) <= width)
    }

    public func classify(center c: Vec3, radius r: Double) -> Overlap {
        let (ra, dec) = c.raDec
        let rd = r * 180 / .pi
        if dec - rd > decMax || dec + rd < decMin { return .outside }
        let decInside = dec - rd >= decMin && dec + rd <= decMax
        // A cap reaching a pole spans every RA.
        if abs(dec) + rd >= 90 { return .partial }
        let half = asin(min(1, sin(r) / cos(dec * .pi / 180))) * 180 / .pi
        if width >= 360 { return decInside ? .inside : .partial }
        let lo = offset(ra - half)
        let hi = lo + 2 * half
        // Outside when the cap's RA interval misses [0, width] modulo 360.
        if lo > width && hi < 360 { return .outside }
        if decInside && hi <= width { return .inside }
        return .partial
    }
}

/// Invalid region or tiling parameters.
public enum SkyError: Error, CustomStringConvertible, Equatable {
    case invalidRegion(String)
    case invalidTiling(String)
    public var description: String {
        switch self {
        case .invalidRegion(let m): "invalid sky region: \(m)"
        case .invalidTiling(let m): "invalid image tiling: \(m)"
        }
    }
}
