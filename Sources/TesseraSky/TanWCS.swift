import Foundation

/// A FITS world coordinate system with the TAN (gnomonic) projection, celestial (RA/Dec, degrees).
///
/// Pixel coordinates here are **0-based**, as astropy's `origin=0` and numpy indices: the centre
/// of the first pixel is (0, 0). FITS headers are 1-based (`CRPIX`); `crpix1`/`crpix2` keep the
/// header's values and the conversion happens in one place, `pixel`/`sky`.
///
/// The celestial rotation follows Calabretta & Greisen (2002), eq. 2 and 5, with the native
/// longitude of the celestial pole `lonpole` (φ_p): by default 180° (0° when `CRVAL2` is +90°),
/// as wcslib defaults it for zenithal projections. Latitudes are taken with `atan2` rather than
/// `asin`, which keeps full precision near the poles.
public struct TanWCS: Sendable, Equatable, Hashable, Codable {
    /// The tangent point (`CRVAL1`, `CRVAL2`), degrees.
    public var crval1: Double
    public var crval2: Double
    /// The tangent point's pixel (`CRPIX1`, `CRPIX2`), 1-based as in a FITS header.
    public var crpix1: Double
    public var crpix2: Double
    /// The linear transformation (`CD1_1`, `CD1_2`, `CD2_1`, `CD2_2`), degrees per pixel.
    public var cd11: Double, cd12: Double, cd21: Double, cd22: Double
    /// `LONPOLE`, degrees.
    public var lonpole: Double

    public init(crval1: Double, crval2: Double, crpix1: Double, crpix2: Double,
                cd11: Double, cd12: Double, cd21: Double, cd22: Double, lonpole: Double? = nil) {
        (self.crval1, self.crval2, self.crpix1, self.crpix2) = (crval1, crval2, crpix1, crpix2)
        (self.cd11, self.cd12, self.cd21, self.cd22) = (cd11, cd12, cd21, cd22)
        self.lonpole = lonpole ?? (crval2 >= 90 ? 0 : 180)
    }

    /// North up, east to the left (RA decreasing with x), square pixels of `scaleArcsec`, with the
    /// tangent point `(ra, dec)` at 0-based pixel `(x, y)`.
    public static func northUp(ra: Double, dec: Double, x: Double, y: Double, scaleArcsec: Double) -> TanWCS {
        let s = scaleArcsec / 3600
        return TanWCS(crval1: ra, crval2: dec, crpix1: x + 1, crpix2: y + 1, cd11: -s, cd12: 0, cd21: 0, cd22: s)
    }

    /// The same projection for a sub-image whose first pixel is this image's 0-based `(x0, y0)`.
    public func shifted(x0: Int, y0: Int) -> TanWCS {
        var w = self
        w.crpix1 -= Double(x0)
        w.crpix2 -= Double(y0)
        return w
    }

    /// Why this projection cannot place pixels on the sky with finite numbers, or nil: each
    /// number finite, the tangent point's declination within ±90°, its pixel within 2⁴⁰, each CD
    /// element at most 10° a pixel and the determinant's square root (the pixel's side) from
    /// 1e-6″ to 3600″. A determinant that overflows or underflows (CD elements of 1e308 or
    /// 1e-150) would make `sky` return NaN, and a NaN position traps where it becomes an
    /// integer (a HEALPix pixel).
    public var problem: String? {
        let all = [crval1, crval2, crpix1, crpix2, cd11, cd12, cd21, cd22, lonpole]
        guard all.allSatisfy(\.isFinite) else { return "a WCS number is not finite" }
        guard (-90...90).contains(crval2) else { return "CRVAL2 \(crval2) is not a declination" }
        guard crpix1.magnitude < 0x1p40, crpix2.magnitude < 0x1p40 else { return "CRPIX \(crpix1), \(crpix2) lies over 2⁴⁰ pixels away" }
        guard [cd11, cd12, cd21, cd22].allSatisfy({ $0.magnitude <= 10 }) else { return "a CD element is over 10° a pixel" }
        let scale = pixelScaleArcsec
        guard scale.isFinite, (1e-6...3600).contains(scale) else { return "a pixel \(scale)″ wide (from the CD matrix's determinant): must be from 1e-6″ to 3600″" }
        return nil
    }

    /// The side of a pixel, arcseconds (the square root of the CD matrix's determinant).
    public var pixelScaleArcsec: Double { abs(cd11 * cd22 - cd12 * cd21).squareRoot() * 3600 }

    @inline(__always) static func rad(_ d: Double) -> Double { d * .pi / 180 }
    @inline(__always) static func deg(_ r: Double) -> Double { r * 180 / .pi }

    /// The sky position of 0-based pixel `(x, y)`: RA in [0, 360), Dec in [-90, 90] degrees.
    public func sky(x: Double, y: Double) -> (ra: Double, dec: Double) {
        let dx = x + 1 - crpix1, dy = y + 1 - crpix2
        // Intermediate world coordinates, degrees.
        let u = cd11 * dx + cd12 * dy
        let v = cd21 * dx + cd22 * dy
        // TAN: native spherical (φ, θ), with R_θ = (180/π) cot θ.
        let r = (u * u + v * v).squareRoot()
        let phi = r == 0 ? 0 : atan2(u, -v)
        let theta = atan2(180 / .pi, r)
        // Native to celestial.
        let dp = Self.rad(crval2)
        let dphi = phi - Self.rad(lonpole)
        let (st, ct) = (sin(theta), cos(theta))
        let (sdp, cdp) = (sin(dp), cos(dp))
        let a = -ct * sin(dphi)
        let b = st * cdp - ct * sdp * cos(dphi)
        let z = st * sdp + ct * cdp * cos(dphi)
        var ra = crval1 + Self.deg(atan2(a, b))
        ra = ra.truncatingRemainder(dividingBy: 360)
        if ra < 0 { ra += 360 }
        if ra >= 360 { ra -= 360 }
        let dec = Self.deg(atan2(z, (a * a + b * b).squareRoot()))
        return (ra, dec)
    }

    /// The 0-based pixel of a sky position, or nil on the far side of the tangent plane (90° or
    /// more from the tangent point), where the projection is not defined.
    public func pixel(ra: Double, dec: Double) -> (x: Double, y: Double)? {
        let d = Self.rad(dec), dp = Self.rad(crval2)
        // The RA difference reduced to (-180, 180] in degrees first: near RA 0/360 this is exact
        // (Sterbenz), where reducing in radians would round again.
        var dra = ra - crval1
        if dra > 180 { dra -= 360 } else if dra <= -180 { dra += 360 }
        let da = Self.rad(dra)
        let (sd, cd) = (sin(d), cos(d))
        let (sdp, cdp) = (sin(dp), cos(dp))
        let (sda, cda) = (sin(da), cos(da))
        let a = -cd * sda
        let b = sd * cdp - cd * sdp * cda
        let z = sd * sdp + cd * cdp * cda  // sin θ
        guard z > 0 else { return nil }
        let phi = atan2(a, b) + Self.rad(lonpole)
        // R_θ = (180/π) cos θ / sin θ, with cos θ = |(a, b)|.
        let r = Self.deg((a * a + b * b).squareRoot() / z)
        let u = r * sin(phi), v = -r * cos(phi)
        // Invert the CD matrix.
        let det = cd11 * cd22 - cd12 * cd21
        let dx = (cd22 * u - cd12 * v) / det
        let dy = (-cd21 * u + cd11 * v) / det
        return (dx + crpix1 - 1, dy + crpix2 - 1)
    }

    /// Projects sky directions (unit vectors) to pixels with three dot products each and no
    /// trigonometry: the same projection as ``pixel(ra:dec:)``, for many points.
    public struct Projector: Sendable {
        let wcs: TanWCS
        /// The tangent point, and the plane's two native axes (φ = 90° and φ = 180° before LONPOLE).
        let tangent: Vec3, axisA: Vec3, axisB: Vec3
        let cosL: Double, sinL: Double, det: Double

        public init(_ w: TanWCS) {
            wcs = w
            let ra0 = TanWCS.rad(w.crval1), d0 = TanWCS.rad(w.crval2)
            tangent = Vec3(cos(d0) * cos(ra0), cos(d0) * sin(ra0), sin(d0))
            axisA = Vec3(sin(ra0), -cos(ra0), 0)
            axisB = Vec3(-sin(d0) * cos(ra0), -sin(d0) * sin(ra0), cos(d0))
            (cosL, sinL) = (cos(TanWCS.rad(w.lonpole)), sin(TanWCS.rad(w.lonpole)))
            det = w.cd11 * w.cd22 - w.cd12 * w.cd21
        }

        /// The 0-based pixel of direction `p`, or nil 90° or more from the tangent point.
        @inline(__always) public func pixel(_ p: Vec3) -> (x: Double, y: Double)? {
            let z = p.dot(tangent)
            guard z > 0 else { return nil }
            let a = p.dot(axisA), b = p.dot(axisB)
            // φ = atan2(a, b) + LONPOLE and R = (180/π) √(a² + b²) / z, without the angles.
            let u = TanWCS.deg((a * cosL + b * sinL) / z), v = -TanWCS.deg((b * cosL - a * sinL) / z)
            let dx = (wcs.cd22 * u - wcs.cd12 * v) / det
            let dy = (-wcs.cd21 * u + wcs.cd11 * v) / det
            return (dx + wcs.crpix1 - 1, dy + wcs.crpix2 - 1)
        }
    }

    /// The header cards of this WCS, as a FITS image carries them.
    public var headerCards: [(name: String, value: WCSCardValue, comment: String)] {
        [
            ("WCSAXES", .integer(2), "two celestial axes"),
            ("CTYPE1", .text("RA---TAN"), "gnomonic projection"),
            ("CTYPE2", .text("DEC--TAN"), "gnomonic projection"),
            ("CUNIT1", .text("deg"), ""),
            ("CUNIT2", .text("deg"), ""),
            ("CRVAL1", .real(crval1), "RA of the tangent point"),
            ("CRVAL2", .real(crval2), "Dec of the tangent point"),
            ("CRPIX1", .real(crpix1), "1-based pixel of the tangent point"),
            ("CRPIX2", .real(crpix2), ""),
            ("CD1_1", .real(cd11), "degrees per pixel"),
            ("CD1_2", .real(cd12), ""),
            ("CD2_1", .real(cd21), ""),
            ("CD2_2", .real(cd22), ""),
            ("LONPOLE", .real(lonpole), "native longitude of the celestial pole"),
            ("RADESYS", .text("ICRS"), ""),
        ]
    }

    /// Reads a TAN WCS from a FITS header's cards (`cards[name]`: the value as written, strings
    /// without quotes). Accepts a `CD` matrix, or `PC` with `CDELT`, or `CDELT` with `CROTA2`.
    /// - Throws: `WCSError` naming what is missing or not supported (another projection, SIP
    ///   distortion, non-celestial or galactic axes).
    public init(cards: [String: String]) throws(WCSError) {
        func text(_ k: String) -> String? { cards[k].map { $0.trimmingCharacters(in: .whitespaces) } }
        func number(_ k: String) throws(WCSError) -> Double? {
            guard let t = text(k) else { return nil }
            guard let v = Double(t.replacingOccurrences(of: "D", with: "E")), v.isFinite else { throw .badValue(keyword: k, value: t) }
            return v
        }
        func required(_ k: String) throws(WCSError) -> Double {
            guard let v = try number(k) else { throw .missing(keyword: k) }
            return v
        }
        guard let c1 = text("CTYPE1"), let c2 = text("CTYPE2") else { throw .noWCS }
        guard c1.uppercased() == "RA---TAN", c2.uppercased() == "DEC--TAN" else {
            throw .unsupportedProjection(ctype1: c1, ctype2: c2)
        }
        if let naxis = try number("WCSAXES"), naxis != 2 { throw .badValue(keyword: "WCSAXES", value: String(naxis)) }
        for k in ["CUNIT1", "CUNIT2"] {
            if let u = text(k), !u.isEmpty, u.lowercased() != "deg" { throw .badValue(keyword: k, value: u) }
        }
        if let sys = text("RADESYS") ?? text("RADECSYS"), !["ICRS", "FK5", ""].contains(sys.uppercased()) {
            throw .unsupportedFrame(sys)
        }
        for k in ["A_ORDER", "B_ORDER", "PV2_1", "PV2_2", "PV1_1", "PV1_2"] where cards[k] != nil {
            throw .distortion(keyword: k)
        }
        let cr1 = try required("CRVAL1"), cr2 = try required("CRVAL2")
        guard (-90...90).contains(cr2) else { throw .badValue(keyword: "CRVAL2", value: String(cr2)) }
        let p1 = try required("CRPIX1"), p2 = try required("CRPIX2")
        // Read every candidate first (`??` and `||` take closures, which lose the typed throw).
        let cd = (try number("CD1_1"), try number("CD1_2"), try number("CD2_1"), try number("CD2_2"))
        let pc = (try number("PC1_1"), try number("PC1_2"), try number("PC2_1"), try number("PC2_2"))
        let m: (Double, Double, Double, Double)
        if cd.0 != nil || cd.1 != nil || cd.2 != nil || cd.3 != nil {
            m = (cd.0 ?? 0, cd.1 ?? 0, cd.2 ?? 0, cd.3 ?? 0)
        } else {
            let d1 = try required("CDELT1"), d2 = try required("CDELT2")
            if pc.0 != nil || pc.1 != nil || pc.2 != nil || pc.3 != nil {
                m = (d1 * (pc.0 ?? 1), d1 * (pc.1 ?? 0), d2 * (pc.2 ?? 0), d2 * (pc.3 ?? 1))
            } else {
                let rot = Self.rad(try number("CROTA2") ?? 0)
                m = (d1 * cos(rot), -d2 * sin(rot), d1 * sin(rot), d2 * cos(rot))
            }
        }
        guard m.0 * m.3 - m.1 * m.2 != 0 else { throw .singular }
        self.init(crval1: cr1, crval2: cr2, crpix1: p1, crpix2: p2, cd11: m.0, cd12: m.1, cd21: m.2, cd22: m.3,
                  lonpole: try number("LONPOLE"))
        if let why = problem { throw .unusable(why) }
    }
}

/// A header card's value, as `TanWCS.headerCards` gives them.
public enum WCSCardValue: Sendable, Equatable {
    case text(String)
    case integer(Int)
    case real(Double)
}

/// Why a FITS header's WCS cannot be used.
public enum WCSError: Error, Sendable, Equatable, CustomStringConvertible {
    case noWCS
    case unsupportedProjection(ctype1: String, ctype2: String)
    case unsupportedFrame(String)
    case distortion(keyword: String)
    case missing(keyword: String)
    case badValue(keyword: String, value: String)
    case singular
    case unusable(String)

    public var description: String {
        switch self {
        case .noWCS: "the header has no celestial WCS (no CTYPE1/CTYPE2)"
        case .unsupportedProjection(let a, let b):
            "the WCS projection is \(a)/\(b); only the TAN (gnomonic) projection in RA/Dec is supported (CTYPE1 = 'RA---TAN', CTYPE2 = 'DEC--TAN')"
        case .unsupportedFrame(let f): "the WCS frame is \(f); only ICRS (or FK5) RA/Dec is supported"
        case .distortion(let k): "the WCS has distortion terms (\(k)); only plain TAN without SIP or PV distortion is supported"
        case .missing(let k): "the WCS keyword \(k) is missing"
        case .badValue(let k, let v): "the WCS keyword \(k) has an unusable value `\(v)`"
        case .singular: "the WCS's CD matrix is singular (pixels have no area)"
        case .unusable(let why): "the WCS cannot place pixels on the sky: \(why)"
        }
    }
}
