import Foundation
import TesseraSky

// The healpy reference values of Fixtures/healpix.json (written by scripts/make_healpix_fixtures.py),
// parsed once into plain Sendable structs shared by the reference tests. Floats are JSON strings
// (Python repr) read with Double(String); integers are JSON numbers.

struct Ang2PixCase: Sendable {
    var order: Int, ra: Double, dec: Double, pixel: Int64
    /// Adversarial (constructed) rather than random.
    var adversarial: Bool
    /// healpy puts a point 1e-12 rad away in another pixel: equally valid float paths may disagree.
    var edge: Bool
    /// healpy's pixels within 1e-12 rad of the point (edge points only; includes `pixel`).
    var near: [Int64]
}

struct CenterCase: Sendable { var order: Int, pixel: Int64, theta: Double, phi: Double }
struct NeighbourCase: Sendable { var order: Int, pixel: Int64, neighbours: [Int64] }
struct BoundaryCase: Sendable { var order: Int, pixel: Int64, step: Int, points: [Vec3] }
struct DiscCase: Sendable {
    var order: Int, center: Vec3, ra: Double, dec: Double, radius: Double
    var exact: [Int64], inclusive: [Int64]
}
struct PolygonCase: Sendable { var order: Int, name: String, vertices: [Vec3], exact: [Int64] }

struct HEALPixFixtures: Sendable {
    var healpyVersion: String
    /// Each double as parsed from its repr string, as parsed from a raw JSON number, and its bits.
    var floatChecks: [(value: Double, raw: Double, bits: UInt64)]
    var intChecks: [(value: Int64, text: String)]
    var ang2pix: [Ang2PixCase]
    var centers: [CenterCase]
    var neighbours: [NeighbourCase]
    var boundaries: [BoundaryCase]
    var maxPixelRadius: [Int: Double]
    var discs: [DiscCase]
    var polygons: [PolygonCase]

    static let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Fixtures/healpix.json")

    /// Parsed once for all tests.
    static let shared: Result<HEALPixFixtures, FixtureError> = Result { () throws(FixtureError) in try load() }

    static func get() throws -> HEALPixFixtures { try shared.get() }

    static func load() throws(FixtureError) -> HEALPixFixtures {
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw FixtureError("cannot read \(url.path): \(error) (run scripts/make_healpix_fixtures.py)")
        }
        guard let root = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw FixtureError("\(url.path) is not a JSON object")
        }
        func list(_ key: String) throws(FixtureError) -> [[String: Any]] {
            guard let l = root[key] as? [[String: Any]] else { throw FixtureError("missing section \(key)") }
            return l
        }
        var fx = HEALPixFixtures(
            healpyVersion: root["healpy"] as? String ?? "?", floatChecks: [], intChecks: [], ang2pix: [],
            centers: [], neighbours: [], boundaries: [], maxPixelRadius: [:], discs: [], polygons: [])

        guard let fc = root["float_check"] as? [String: Any],
            let floats = fc["floats"] as? [[String: Any]], let ints = fc["ints"] as? [[String: Any]]
        else { throw FixtureError("missing float_check") }
        for r in floats {
            guard let b = UInt64(try str(r["bits"])) else { throw FixtureError("bad bits") }
            fx.floatChecks.append((try dbl(r["x"]), try dbl(r["n"]), b))
        }
        for r in ints { fx.intChecks.append((try int64(r["x"]), try str(r["s"]))) }

        for r in try list("ang2pix") {
            fx.ang2pix.append(
                Ang2PixCase(
                    order: try int(r["o"]), ra: try dbl(r["ra"]), dec: try dbl(r["dec"]), pixel: try int64(r["pix"]),
                    adversarial: r["adv"] != nil, edge: (r["edge"] as? Bool) ?? false,
                    near: try (r["near"] as? [Any] ?? []).map { (x) throws(FixtureError) in try int64(x) }))
        }
        for r in try list("pix2ang") {
            fx.centers.append(
                CenterCase(order: try int(r["o"]), pixel: try int64(r["pix"]), theta: try dbl(r["theta"]), phi: try dbl(r["phi"])))
        }
        for r in try list("neighbours") {
            fx.neighbours.append(NeighbourCase(order: try int(r["o"]), pixel: try int64(r["pix"]), neighbours: try int64s(r["nb"])))
        }
        for r in try list("boundaries") {
            fx.boundaries.append(
                BoundaryCase(order: try int(r["o"]), pixel: try int64(r["pix"]), step: try int(r["step"]), points: try vecs(r["v"])))
        }
        for r in try list("max_pixrad") { fx.maxPixelRadius[try int(r["o"])] = try dbl(r["r"]) }
        for r in try list("query_disc") {
            fx.discs.append(
                DiscCase(
                    order: try int(r["o"]), center: try vec(r["v"]), ra: try dbl(r["ra"]), dec: try dbl(r["dec"]),
                    radius: try dbl(r["r"]), exact: try int64s(r["exact"]), inclusive: try int64s(r["inclusive"])))
        }
        for r in try list("query_polygon") {
            fx.polygons.append(
                PolygonCase(order: try int(r["o"]), name: try str(r["name"]), vertices: try vecs(r["v"]), exact: try int64s(r["exact"])))
        }
        return fx
    }
}

struct FixtureError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

private func str(_ a: Any?) throws(FixtureError) -> String {
    guard let s = a as? String else { throw FixtureError("expected a string, got \(String(describing: a))") }
    return s
}

/// Floats are stored as repr strings: Swift's Double(String) is correctly rounded, while
/// JSONSerialization's number parsing on Linux is not (see the float_check test).
private func dbl(_ a: Any?) throws(FixtureError) -> Double {
    switch a {
    case let s as String:
        guard let d = Double(s) else { throw FixtureError("not a double: \(s)") }
        return d
    case let n as NSNumber: return n.doubleValue
    case let d as Double: return d
    case let i as Int: return Double(i)
    default: throw FixtureError("expected a number, got \(String(describing: a))")
    }
}

private func int64(_ a: Any?) throws(FixtureError) -> Int64 {
    switch a {
    case let i as Int: return Int64(i)
    case let i as Int64: return i
    case let n as NSNumber: return n.int64Value
    default: throw FixtureError("expected an integer, got \(String(describing: a))")
    }
}

private func int(_ a: Any?) throws(FixtureError) -> Int { Int(try int64(a)) }

private func int64s(_ a: Any?) throws(FixtureError) -> [Int64] {
    guard let l = a as? [Any] else { throw FixtureError("expected a list of integers") }
    return try l.map { (x) throws(FixtureError) in try int64(x) }
}

private func vec(_ a: Any?) throws(FixtureError) -> Vec3 {
    guard let l = a as? [Any], l.count == 3 else { throw FixtureError("expected [x, y, z]") }
    return Vec3(try dbl(l[0]), try dbl(l[1]), try dbl(l[2]))
}

private func vecs(_ a: Any?) throws(FixtureError) -> [Vec3] {
    guard let l = a as? [Any] else { throw FixtureError("expected a list of vectors") }
    return try l.map { (x) throws(FixtureError) in try vec(x) }
}

// MARK: Helpers shared by the tests (independent of the code under test)

/// The angle between two (nearly) unit vectors from their chord: accurate for small angles, which
/// is all the tolerance checks need (and does not use `Vec3.angle`, which is itself under test).
func chordAngle(_ a: Vec3, _ b: Vec3) -> Double {
    let la = a.length, lb = b.length
    let dx = a.x / la - b.x / lb, dy = a.y / la - b.y / lb, dz = a.z / la - b.z / lb
    let c = (dx * dx + dy * dy + dz * dz).squareRoot()
    return 2 * asin(min(1, c / 2))
}

func unitVector(theta: Double, phi: Double) -> Vec3 {
    Vec3(sin(theta) * cos(phi), sin(theta) * sin(phi), cos(theta))
}

/// A small deterministic generator (SplitMix64) for the property tests.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension SplitMix64 {
    /// A point uniform on the sphere, RA/Dec in degrees.
    mutating func radec() -> (ra: Double, dec: Double) {
        let ra = Double.random(in: 0..<360, using: &self)
        let dec = asin(Double.random(in: -1...1, using: &self)) * 180 / .pi
        return (ra, dec)
    }
}

/// Up to `limit` lines of a failure list, with the total.
func summary(_ lines: [String], limit: Int = 25) -> String {
    lines.isEmpty ? "" : "\(lines.count) mismatches:\n" + lines.prefix(limit).joined(separator: "\n")
}
