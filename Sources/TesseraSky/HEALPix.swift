#if canImport(Glibc)
import Glibc
#endif

/// A unit vector on the sphere.
public struct Vec3: Sendable, Equatable {
    public var x: Double, y: Double, z: Double
    public init(_ x: Double, _ y: Double, _ z: Double) { self.x = x; self.y = y; self.z = z }

    /// From colatitude θ and longitude φ, radians.
    public init(theta: Double, phi: Double) {
        let s = sin(theta)
        self.init(s * cos(phi), s * sin(phi), cos(theta))
    }

    /// From right ascension and declination, degrees.
    public init(ra: Double, dec: Double) {
        let r = ra * .pi / 180, d = dec * .pi / 180
        let c = cos(d)
        self.init(c * cos(r), c * sin(r), sin(d))
    }

    @inline(__always) public func dot(_ o: Vec3) -> Double { x * o.x + y * o.y + z * o.z }
    @inline(__always) public func cross(_ o: Vec3) -> Vec3 { Vec3(y * o.z - z * o.y, z * o.x - x * o.z, x * o.y - y * o.x) }
    public var length: Double { (x * x + y * y + z * z).squareRoot() }
    public var normalized: Vec3 { let l = length; return Vec3(x / l, y / l, z / l) }

    /// Colatitude and longitude (φ in [0, 2π)), radians.
    public var thetaPhi: (theta: Double, phi: Double) {
        var phi = atan2(y, x)
        if phi < 0 { phi += 2 * .pi }
        return (atan2((x * x + y * y).squareRoot(), z), phi)
    }

    /// Right ascension in [0, 360) and declination, degrees.
    public var raDec: (ra: Double, dec: Double) {
        let (t, p) = thetaPhi
        return (p * 180 / .pi, 90 - t * 180 / .pi)
    }

    /// The angle to another unit vector, radians: atan2(|a×b|, a·b) stays accurate from
    /// sub-milliarcsecond separations to antipodes (acos of the dot product does not).
    @inline(__always) public func angle(to o: Vec3) -> Double { atan2(cross(o).length, dot(o)) }
}

/// HEALPix in the NESTED scheme (Górski et al. 2005), orders 0–29 (nside = 2^order).
///
/// Pixel indices are `Int64`; a position's order-29 index is the spatial index stored with each
/// catalog row (HATS's `_healpix_29`), and its pixel at a coarser order `k` is `index >> 2(29 − k)`.
public enum HEALPix {
    public static let maxOrder = 29
    static let jrll: [Int64] = [2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4]
    static let jpll: [Int64] = [1, 3, 5, 7, 0, 2, 4, 6, 1, 3, 5, 7]

    @inline(__always) public static func nside(_ order: Int) -> Int64 { 1 << Int64(order) }
    @inline(__always) public static func pixelCount(_ order: Int) -> Int64 { 12 << (2 * Int64(order)) }

    /// The order-29 spatial index of a position (RA/Dec in degrees).
    @inline(__always) public static func spatialIndex(ra: Double, dec: Double) -> Int64 {
        pixel(order: maxOrder, ra: ra, dec: dec)
    }

    /// The pixel at `order` holding a spatial index (or a pixel of a finer order `from`).
    @inline(__always) public static func parent(_ index: Int64, from: Int = maxOrder, to order: Int) -> Int64 {
        index >> (2 * Int64(from - order))
    }

    /// The range of order-`to` indices inside pixel `pix` of order `order` (to ≥ order).
    public static func children(_ pix: Int64, order: Int, to: Int) -> Range<Int64> {
        let s = 2 * Int64(to - order)
        return (pix << s)..<((pix + 1) << s)
    }

    // MARK: Positions to pixels

    /// The pixel holding a position given as RA/Dec in degrees.
    ///
    /// The arithmetic follows healpy's `ang2pix(..., lonlat=True)` step by step (θ = π/2 − dec·π/180,
    /// z = cos θ, sin θ only within 0.01 rad of a pole), so that points exactly on a pixel edge land
    /// in the same pixel as there.
    public static func pixel(order: Int, ra: Double, dec: Double) -> Int64 {
        pixel(order: order, theta: .pi / 2 - dec * (.pi / 180), phi: ra * (.pi / 180))
    }

    /// The pixel holding colatitude θ and longitude φ (radians).
    public static func pixel(order: Int, theta: Double, phi: Double) -> Int64 {
        let nearPole = theta < 0.01 || theta > 3.14159 - 0.01
        return pixel(order: order, z: cos(theta), phi: phi, sinTheta: nearPole ? sin(theta) : nil)
    }

    /// The pixel holding a unit vector.
    public static func pixel(order: Int, vector v: Vec3) -> Int64 {
        let r = v.length
        let z = v.z / r
        // sin θ from x and y keeps its digits near the poles.
        return pixel(order: order, z: z, phi: atan2(v.y, v.x), sinTheta: abs(z) > 0.99 ? (v.x * v.x + v.y * v.y).squareRoot() / r : nil)
    }

    /// z = cos θ and φ (any range); sin θ, when given, is used near the poles where 1 − |z| has
    /// lost its digits.
    static func pixel(order: Int, z: Double, phi: Double, sinTheta: Double?) -> Int64 {
        let ns = nside(order)
        let nsD = Double(ns)
        let za = abs(z)
        // φ / (π/2) reduced to [0, 4), as healpy's fmodulo does it.
        var tt = phi * (2 / .pi)
        if !(tt >= 0 && tt < 4) {
            tt = tt.truncatingRemainder(dividingBy: 4)
            if tt < 0 { tt += 4 }
            if tt >= 4 { tt = 0 }
        }
        let face: Int64, ix: Int64, iy: Int64
        if za <= 2.0 / 3.0 {
            // Equatorial region: the two families of edge lines.
            let t1 = nsD * (0.5 + tt)
            let t2 = nsD * (z * 0.75)
            let jp = Int64(t1 - t2)
            let jm = Int64(t1 + t2)
            let ifp = jp >> Int64(order)
            let ifm = jm >> Int64(order)
            face = ifp == ifm ? (ifp | 4) : (ifp < ifm ? ifp : ifm + 8)
            ix = jm & (ns - 1)
            iy = ns - (jp & (ns - 1)) - 1
        } else {
            // Polar caps.
            let ntt = min(3, Int64(tt))
            let tp = tt - Double(ntt)
            // nside·√(3(1−|z|)), via sin θ near the pole where 1 − |z| loses its digits.
            let tmp: Double
            if za < 0.99 || sinTheta == nil {
                tmp = nsD * (3 * (1 - za)).squareRoot()
            } else {
                tmp = nsD * sinTheta! / ((1 + za) / 3).squareRoot()
            }
            let jp = min(ns - 1, Int64(tp * tmp))
            let jm = min(ns - 1, Int64((1 - tp) * tmp))
            if z >= 0 {
                face = ntt; ix = ns - jm - 1; iy = ns - jp - 1
            } else {
                face = ntt + 8; ix = jp; iy = jm
            }
        }
        return xyf2nest(ix, iy, face, order: order)
    }

    // MARK: Pixels to positions

    /// The centre of a pixel as colatitude θ and longitude φ, radians.
    public static func center(order: Int, pixel pix: Int64) -> (theta: Double, phi: Double) {
        let (ix, iy, face) = nest2xyf(pix, order: order)
        let ns = nside(order)
        let (z, sth, phi) = locate(x: Double(ix) + 0.5, y: Double(iy) + 0.5, face: face, nside: Double(ns))
        return (atan2(sth, z), phi)
    }

    /// The centre of a pixel as RA/Dec, degrees.
    public static func centerRaDec(order: Int, pixel pix: Int64) -> (ra: Double, dec: Double) {
        let (t, p) = center(order: order, pixel: pix)
        return (p * 180 / .pi, 90 - t * 180 / .pi)
    }

    /// The centre of a pixel as a unit vector.
    public static func centerVector(order: Int, pixel pix: Int64) -> Vec3 {
        let (ix, iy, face) = nest2xyf(pix, order: order)
        let (z, sth, phi) = locate(x: Double(ix) + 0.5, y: Double(iy) + 0.5, face: face, nside: Double(nside(order)))
        return Vec3(sth * cos(phi), sth * sin(phi), z)
    }

    /// Points along a pixel's boundary, `step` per side, starting at its north corner and going
    /// west, south, east (the order of healpy's `boundaries`).
    public static func boundaries(order: Int, pixel pix: Int64, step: Int = 1) -> [Vec3] {
        let (ix, iy, face) = nest2xyf(pix, order: order)
        let ns = Double(nside(order))
        let x0 = Double(ix), y0 = Double(iy)
        let d = 1.0 / Double(step)
        var out = [Vec3](repeating: Vec3(0, 0, 0), count: 4 * step)
        func v(_ x: Double, _ y: Double) -> Vec3 {
            let (z, sth, phi) = locate(x: x, y: y, face: face, nside: ns)
            return Vec3(sth * cos(phi), sth * sin(phi), z)
        }
        for i in 0..<step {
            let f = Double(i) * d
            out[i] = v(x0 + 1 - f, y0 + 1)
            out[i + step] = v(x0, y0 + 1 - f)
            out[i + 2 * step] = v(x0 + f, y0)
            out[i + 3 * step] = v(x0 + 1, y0 + f)
        }
        return out
    }

    /// z, sin θ and φ of a point given in face coordinates (x, y in pixels of the face, 0…nside).
    static func locate(x: Double, y: Double, face: Int64, nside ns: Double) -> (z: Double, sinTheta: Double, phi: Double) {
        let jr = Double(jrll[Int(face)]) * ns - x - y
        var nr: Double
        var z: Double, sth: Double
        if jr < ns {
            nr = jr
            let tmp = nr * nr / (3 * ns * ns)
            z = 1 - tmp
            sth = (tmp * (2 - tmp)).squareRoot()
        } else if jr > 3 * ns {
            nr = 4 * ns - jr
            let tmp = nr * nr / (3 * ns * ns)
            z = tmp - 1
            sth = (tmp * (2 - tmp)).squareRoot()
        } else {
            nr = ns
            z = (2 * ns - jr) * 2 / (3 * ns)
            sth = ((1 - z) * (1 + z)).squareRoot()
        }
        var tmp = Double(jpll[Int(face)]) * nr + x - y
        if tmp < 0 { tmp += 8 * ns }
        if tmp >= 8 * ns { tmp -= 8 * ns }
        let phi = nr < 1e-15 ? 0 : (0.25 * .pi * tmp) / nr
        return (z, sth, phi)
    }

    // MARK: Neighbours

    static let xOffset: [Int64] = [-1, -1, 0, 1, 1, 1, 0, -1]
    static let yOffset: [Int64] = [0, 1, 1, 1, 0, -1, -1, -1]
    static let faceTable: [[Int64]] = [
        [8, 9, 10, 11, -1, -1, -1, -1, 10, 11, 8, 9],  // S
        [5, 6, 7, 4, 8, 9, 10, 11, 9, 10, 11, 8],  // SE
        [-1, -1, -1, -1, 5, 6, 7, 4, -1, -1, -1, -1],  // E
        [4, 5, 6, 7, 11, 8, 9, 10, 11, 8, 9, 10],  // SW
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],  // centre
        [1, 2, 3, 0, 0, 1, 2, 3, 5, 6, 7, 4],  // NE
        [-1, -1, -1, -1, 7, 4, 5, 6, -1, -1, -1, -1],  // W
        [3, 0, 1, 2, 3, 0, 1, 2, 4, 5, 6, 7],  // NW
        [2, 3, 0, 1, -1, -1, -1, -1, 0, 1, 2, 3],  // N
    ]
    // Bit 0: mirror x, bit 1: mirror y, bit 2: swap x and y, when stepping onto that face.
    static let swapTable: [[Int64]] = [
        [0, 0, 0, 0, 0, 0, 0, 0, 3, 3, 3, 3],
        [0, 0, 0, 0, 0, 0, 0, 0, 6, 6, 6, 6],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 5, 5, 5, 5],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [5, 5, 5, 5, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [6, 6, 6, 6, 0, 0, 0, 0, 0, 0, 0, 0],
        [3, 3, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0],
    ]

    /// The 8 neighbours in healpy's order (SW, W, NW, N, NE, E, SE, S); -1 where a pixel has only 7.
    public static func neighbours(order: Int, pixel pix: Int64) -> [Int64] {
        let (ix, iy, face) = nest2xyf(pix, order: order)
        let ns = nside(order)
        var out = [Int64](repeating: -1, count: 8)
        for i in 0..<8 {
            var x = ix + xOffset[i], y = iy + yOffset[i]
            var nb = 4
            if x < 0 { x += ns; nb -= 1 } else if x >= ns { x -= ns; nb += 1 }
            if y < 0 { y += ns; nb -= 3 } else if y >= ns { y -= ns; nb += 3 }
            let f = faceTable[nb][Int(face)]
            guard f >= 0 else { continue }
            let bits = swapTable[nb][Int(face)]
            if bits & 1 != 0 { x = ns - x - 1 }
            if bits & 2 != 0 { y = ns - y - 1 }
            if bits & 4 != 0 { swap(&x, &y) }
            out[i] = xyf2nest(x, y, f, order: order)
        }
        return out
    }

    // MARK: Bit interleaving

    @inline(__always) static func spread(_ v: Int64) -> Int64 {
        var x = UInt64(bitPattern: v) & 0x0000_0000_FFFF_FFFF
        x = (x | (x << 16)) & 0x0000_FFFF_0000_FFFF
        x = (x | (x << 8)) & 0x00FF_00FF_00FF_00FF
        x = (x | (x << 4)) & 0x0F0F_0F0F_0F0F_0F0F
        x = (x | (x << 2)) & 0x3333_3333_3333_3333
        x = (x | (x << 1)) & 0x5555_5555_5555_5555
        return Int64(bitPattern: x)
    }

    @inline(__always) static func compress(_ v: Int64) -> Int64 {
        var x = UInt64(bitPattern: v) & 0x5555_5555_5555_5555
        x = (x | (x >> 1)) & 0x3333_3333_3333_3333
        x = (x | (x >> 2)) & 0x0F0F_0F0F_0F0F_0F0F
        x = (x | (x >> 4)) & 0x00FF_00FF_00FF_00FF
        x = (x | (x >> 8)) & 0x0000_FFFF_0000_FFFF
        x = (x | (x >> 16)) & 0x0000_0000_FFFF_FFFF
        return Int64(bitPattern: x)
    }

    @inline(__always) static func xyf2nest(_ ix: Int64, _ iy: Int64, _ face: Int64, order: Int) -> Int64 {
        (face << (2 * Int64(order))) + spread(ix) + (spread(iy) << 1)
    }

    @inline(__always) static func nest2xyf(_ pix: Int64, order: Int) -> (Int64, Int64, Int64) {
        let npface = Int64(1) << (2 * Int64(order))
        let face = pix >> (2 * Int64(order))
        let p = pix & (npface - 1)
        return (compress(p), compress(p >> 1), face)
    }

    /// An upper bound on the angle from any pixel's centre to its boundary at `order`, radians.
    /// (From a table: every coverage walk asks for each order's bound, and working it out takes
    /// several trigonometric calls — measured as most of the ingest's margin search.)
    @inline(__always) public static func maxPixelRadius(order: Int) -> Double { maxPixelRadii[order] }

    static let maxPixelRadii: [Double] = (0...maxOrder).map(computedMaxPixelRadius)

    static func computedMaxPixelRadius(order: Int) -> Double {
        let ns = Double(nside(order))
        let va = Vec3(theta: acos(2.0 / 3.0), phi: .pi / (4 * ns))
        var t1 = 1 - 1 / ns
        t1 *= t1
        let vb = Vec3(theta: acos(1 - t1 / 3), phi: 0)
        return va.angle(to: vb)
    }
}
