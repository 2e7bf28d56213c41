import Foundation
import Hummingbird
import Synchronization
import TesseraClient
import TesseraCompute
import TesseraProtocol
import TesseraSky
import TesseraStorage

/// A SODA or DataLink error, as DALI has them: an HTTP status and a plain-text document that
/// starts with the error's label (`UsageError: …`, `NotFoundFault: …`).
struct SODAError: Error {
    let status: Int
    let label: String
    let message: String

    static func usage(_ m: String) -> SODAError { SODAError(status: 400, label: "UsageError", message: m) }
    static func notFound(_ m: String) -> SODAError { SODAError(status: 404, label: "NotFoundFault", message: m) }
    static func multiValued(_ m: String) -> SODAError { SODAError(status: 400, label: "MultiValuedParamNotSupported", message: m) }
    /// The service's own trouble (a file it cannot open for a reason other than its absence):
    /// SODA's `ServiceUnavailable` when it is worth asking again (503), else its `Error`.
    static func serviceError(status: Int = 500, _ m: String) -> SODAError {
        SODAError(status: status, label: status == 503 ? "ServiceUnavailable" : "Error", message: m)
    }

    var response: Response { Gateway.text(status, "\(label): \(message)\n") }
}

/// What an `ID` names: an image dataset, or one band of one of its patches
/// (`ivo://tessera/NAME?BAND/PATCH`, the patch as its HEALPix pixel at the patch order).
struct ImageID: Equatable {
    var dataset: String
    var patch: (band: String, pixel: Int64)?

    static let authority = "ivo://tessera/"

    init(dataset: String, patch: (band: String, pixel: Int64)? = nil) {
        self.dataset = dataset
        self.patch = patch
    }

    /// `ivo://tessera/NAME`, `ivo://tessera/NAME?BAND/PATCH`, or a bare dataset name.
    init?(_ raw: String) {
        var s = Substring(raw)
        if s.hasPrefix(Self.authority) { s = s.dropFirst(Self.authority.count) }
        let parts = s.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        guard let name = parts.first, !name.isEmpty, name.count <= Limits.datasetNameCharacters,
              name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "_-.".contains($0)) }) else { return nil }
        dataset = String(name)
        if parts.count == 2 {
            let p = parts[1].split(separator: "/")
            guard p.count == 2, let pixel = Int64(p[1]), pixel >= 0, !p[0].isEmpty, p[0].count <= 16 else { return nil }
            patch = (String(p[0]), pixel)
        }
    }

    var text: String { Self.authority + dataset + (patch.map { "?\($0.band)/\($0.pixel)" } ?? "") }

    static func == (a: ImageID, b: ImageID) -> Bool { a.text == b.text }
}

/// IVOA SODA 1.0 synchronous cutouts of image datasets (`/soda/sync`), DataLink 1.1 `{links}`
/// for a dataset and its patches (`/soda/links`), and HiPS trees served as static files
/// (`/hips/NAME/…`).
final class SODAService: Sendable {
    let pool: SchedulerPool
    /// The folder holding HiPS trees, one per subfolder (`tessera hips -o ROOT/NAME`).
    let hipsRoot: String?
    private let cache = Mutex<[String: (at: Double, images: [String: Tessera_V1_DatasetStatus])]>([:])

    init(pool: SchedulerPool, hipsRoot: String?) {
        self.pool = pool
        self.hipsRoot = hipsRoot
    }

    /// The image datasets `user` may read, with their patches (kept ten seconds per user).
    func images(for user: String) async throws -> [String: Tessera_V1_DatasetStatus] {
        let now = Date().timeIntervalSince1970
        if let hit = cache.withLock({ $0[user] }), now - hit.at < 10 { return hit.images }
        let reply = try await pool.run(as: user) { conn, _ in try conn.status(withCoverage: true) }
        var out: [String: Tessera_V1_DatasetStatus] = [:]
        for d in reply.datasets where d.kind == ImageDataset.kind { out[d.name] = d }
        cache.withLock { c in
            c = c.filter { now - $0.value.at < 10 }
            c[user] = (now, out)
        }
        return out
    }

    // MARK: SODA

    /// The filters' wavelength ranges (metres), for SODA's BAND: LSST's u, g, r, i, z, y.
    static let filterRanges: [String: ClosedRange<Double>] = [
        "u": 320e-9...400e-9, "g": 400e-9...552e-9, "r": 552e-9...691e-9, "i": 691e-9...818e-9, "z": 818e-9...922e-9, "y": 948e-9...1060e-9,
    ]

    static func numbers(_ text: String, _ what: String) throws(SODAError) -> [Double] {
        var out: [Double] = []
        for word in text.split(whereSeparator: { $0 == " " || $0 == "\t" }) {
            guard word.count <= 40, let v = Double(word.replacingOccurrences(of: "Inf", with: "inf")) else {
                throw .usage("\(what): `\(word.prefix(40))` is not a number")
            }
            out.append(v)
        }
        return out
    }

    static func single(_ lists: [String: [String]], _ key: String) throws(SODAError) -> String? {
        guard let values = lists[key] else { return nil }
        guard values.count == 1 else { throw .multiValued("\(key) is given \(values.count) times; this service makes one cutout per request") }
        return values[0]
    }

    /// The region a SODA request asks for: `POS` (`CIRCLE`, `RANGE` or `POLYGON`), `CIRCLE` or
    /// `POLYGON`, at most one of them; nil when none is given.
    static func region(_ lists: [String: [String]]) throws(SODAError) -> CatalogQuery.Region? {
        let given = ["POS", "CIRCLE", "POLYGON"].filter { lists[$0] != nil }
        guard given.count <= 1 else { throw .multiValued("give one of POS, CIRCLE and POLYGON, not \(given.joined(separator: " and "))") }
        guard let key = given.first, var text = try single(lists, key) else { return nil }
        var shape = key
        if key == "POS" {
            let words = text.split(separator: " ", maxSplits: 1)
            guard words.count == 2 else { throw .usage("POS must be CIRCLE, RANGE or POLYGON followed by numbers, got `\(text.prefix(80))`") }
            shape = words[0].uppercased()
            text = String(words[1])
        }
        let v = try numbers(text, key)
        func finite(_ what: String) throws(SODAError) {
            guard v.allSatisfy(\.isFinite) else { throw .usage("\(what) must be finite numbers: a cutout needs bounds") }
        }
        switch shape {
        case "CIRCLE":
            guard v.count == 3 else { throw .usage("a circle is `ra dec radius` in degrees, got \(v.count) numbers") }
            try finite("a circle")
            guard (-90...90).contains(v[1]), v[2] > 0, v[2] <= 180 else { throw .usage("a circle needs -90 ≤ dec ≤ 90 and 0 < radius ≤ 180 degrees") }
            return .cone(ra: v[0], dec: v[1], radius: v[2])
        case "RANGE":
            guard v.count == 4 else { throw .usage("a range is `ra1 ra2 dec1 dec2` in degrees, got \(v.count) numbers") }
            try finite("a range")
            guard v[0] <= v[1], v[1] - v[0] <= 360, v[2] <= v[3], (-90...90).contains(v[2]), (-90...90).contains(v[3]) else {
                throw .usage("a range needs ra1 ≤ ra2 ≤ ra1 + 360 and -90 ≤ dec1 ≤ dec2 ≤ 90")
            }
            return .box(raMin: v[0], raMax: v[1], decMin: v[2], decMax: v[3])
        case "POLYGON":
            guard v.count >= 6, v.count % 2 == 0, v.count / 2 <= Limits.polygonVertices else {
                throw .usage("a polygon is 3 to \(Limits.polygonVertices) vertices `ra1 dec1 ra2 dec2 …` in degrees, got \(v.count) numbers")
            }
            try finite("a polygon")
            return .polygon(stride(from: 0, to: v.count, by: 2).map { (v[$0], v[$0 + 1]) })
        default:
            throw .usage("POS must be CIRCLE, RANGE or POLYGON, not `\(shape.prefix(20))`")
        }
    }

    /// The bands `BAND` selects among `bands`: a wavelength interval `lo hi` in metres (the
    /// filters whose range meets it), or, as Tessera's extension, band names `r` or `g,r`.
    static func bands(_ raw: String?, of bands: [String]) throws(SODAError) -> [String] {
        guard let raw, !raw.trimmingCharacters(in: .whitespaces).isEmpty else { return [] }
        if let first = raw.trimmingCharacters(in: .whitespaces).first, first.isNumber || "+-.".contains(first) || raw.contains("Inf") {
            let v = try numbers(raw, "BAND")
            guard v.count == 2, !v[0].isNaN, !v[1].isNaN, v[0] <= v[1] else { throw .usage("BAND is a wavelength interval `lo hi` in metres, got `\(raw.prefix(80))`") }
            let picked = bands.filter { b in Self.filterRanges[b].map { $0.lowerBound <= v[1] && v[0] <= $0.upperBound } ?? false }
            guard !picked.isEmpty else {
                throw .notFound("no band of this dataset (\(bands.joined(separator: ", "))) has light between \(v[0]) and \(v[1]) m")
            }
            return picked
        }
        let names = raw.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        for n in names where !bands.contains(n) {
            throw .notFound("band `\(n.prefix(20))` is not one of this dataset's: \(bands.joined(separator: ", "))")
        }
        return names
    }

    /// The patch an ID names, with its box.
    static func patch(_ id: ImageID, in d: Tessera_V1_DatasetStatus) -> Tessera_V1_ImagePatchInfo? {
        guard let p = id.patch else { return nil }
        return d.patches.first { $0.band == p.band && $0.patch == p.pixel && $0.tract >= 0 }
    }

    /// A cutout as SODA asks it, as the FITS file `tessera cutout` writes for the same region.
    func cutout(_ lists: [String: [String]], user: String) async throws -> (bytes: [UInt8], name: String) {
        for unsupported in ["TIME", "POL"] where lists[unsupported] != nil {
            throw SODAError.usage("\(unsupported) is not supported: coadds have no \(unsupported == "TIME" ? "time" : "polarization") axis")
        }
        if let f = try Self.single(lists, "RESPONSEFORMAT"), !["application/fits", "image/fits", "fits"].contains(f.lowercased()) {
            throw SODAError.usage("RESPONSEFORMAT=\(f.prefix(60)) is not supported: cutouts are FITS (application/fits)")
        }
        guard let rawID = try Self.single(lists, "ID") else { throw SODAError.usage("no ID: give ID=\(ImageID.authority)DATASET (see /soda/links)") }
        guard let id = ImageID(rawID) else { throw SODAError.usage("ID `\(rawID.prefix(120))` is not \(ImageID.authority)DATASET or \(ImageID.authority)DATASET?BAND/PATCH") }
        guard let d = try await images(for: user)[id.dataset] else { throw SODAError.notFound("no image dataset `\(id.dataset)` is visible to you") }
        var bands = try Self.bands(try Self.single(lists, "BAND"), of: d.images.bands)
        var region = try Self.region(lists)
        var size = (width: 0, height: 0)
        if id.patch != nil {
            guard let p = Self.patch(id, in: d), let h = ImageDataset.header(p) else { throw SODAError.notFound("`\(id.text)` names no patch of `\(id.dataset)`") }
            guard bands.isEmpty || bands == [h.band] else { throw SODAError.usage("`\(id.text)` is a band-\(h.band) patch: BAND cannot ask for \(bands.joined(separator: ", "))") }
            bands = [h.band]
            if region == nil {
                // The whole patch: a box of its size centred on its middle pixel, in its grid.
                let c = h.wcs.sky(x: Double(h.width - 1) / 2, y: Double(h.height - 1) / 2)
                region = .cone(ra: c.ra, dec: c.dec, radius: h.wcs.pixelScaleArcsec / 3600)
                size = (h.width, h.height)
            }
        }
        guard let region else { throw SODAError.usage("give where the cutout is: POS, CIRCLE or POLYGON (only a patch's ID may stand alone, for the whole patch)") }
        let q = CatalogQuery(dataset: id.dataset).region(region).cutout(bands: bands, width: size.width, height: size.height).priority(.interactive)
        let cuts: [ImageCutout]
        do {
            cuts = try await pool.run(as: user) { conn, isStopped in try conn.run(q, name: "soda \(id.dataset)", isStopped: isStopped).result.cutouts }
        } catch ClientError.rejected(_, let message) {
            throw message.contains("no coverage") ? SODAError.notFound(message) : SODAError.usage(message)
        }
        guard !cuts.isEmpty else { throw SODAError.notFound("the cluster made no cutout there") }
        return (try ImageCutout.fitsFile(cuts, dataset: id.dataset), id.dataset + "-cutout.fits")
    }

    // MARK: DataLink

    /// The tree of `dataset`'s band `band` under the HiPS root, if one was made.
    func hipsTree(_ dataset: String, _ band: String) -> String? {
        guard let hipsRoot else { return nil }
        let name = "\(dataset)_\(band)"
        return FileManager.default.fileExists(atPath: "\(hipsRoot)/\(name)/properties") ? name : nil
    }

    struct Link {
        var id: String
        var url = "", serviceDef = "", error = "", description = "", semantics = "", contentType = ""
        var length: Int64?
    }

    /// DataLink rows for each ID: for a dataset, each patch (`#this`, its whole patch through
    /// SODA, or why not), the cutout service, and each band's HiPS preview and coverage when
    /// made; for a patch, its own `#this`, the cutout service and its HiPS tile.
    func links(_ lists: [String: [String]], base: String, user: String) async throws -> String {
        let ids = lists["ID"] ?? []
        guard !ids.isEmpty else { throw SODAError.usage("no ID: give ID=\(ImageID.authority)DATASET or a patch's ID") }
        guard ids.count <= 100 else { throw SODAError.usage("\(ids.count) IDs: at most 100 per request") }
        let all = try await images(for: user)
        var rows: [Link] = []
        var descriptors: [String] = []
        // A dataset's ID lists every patch: the same ID a hundred times would list them a
        // hundred times, so each ID is answered once, and the rows are bounded.
        var seen = Set<String>()
        for raw in ids where seen.insert(raw).inserted {
            guard let id = ImageID(raw) else {
                rows.append(Link(id: raw, error: "UsageError: `\(raw.prefix(120))` is not \(ImageID.authority)DATASET or \(ImageID.authority)DATASET?BAND/PATCH"))
                continue
            }
            guard let d = all[id.dataset] else {
                rows.append(Link(id: raw, error: "NotFoundFault: no image dataset `\(id.dataset)` is visible to you"))
                continue
            }
            let patches: [Tessera_V1_ImagePatchInfo]
            if id.patch != nil {
                guard let p = Self.patch(id, in: d) else {
                    rows.append(Link(id: raw, error: "NotFoundFault: `\(id.text)` names no patch of `\(id.dataset)`"))
                    continue
                }
                patches = [p]
            } else {
                patches = d.patches.filter { $0.tract >= 0 && $0.width > 0 }.sorted { ($0.band, $0.patch) < ($1.band, $1.patch) }
            }
            // Checked per patch: one dataset's ID alone lists every patch it has.
            for p in patches {
                guard rows.count < Self.maxLinkRows else {
                    throw SODAError.usage("these IDs list over \(Self.maxLinkRows) links: ask for fewer datasets, or for patches by their IDs")
                }
                let pid = ImageID(dataset: id.dataset, patch: (p.band, p.patch)).text
                var link = Link(id: raw, description: "band \(p.band), patch \(p.patch) of tract \(p.tract): \(p.width) × \(p.height) pixels", semantics: "#this")
                if Int(p.width) <= CutoutGeometry.maxSide, Int(p.height) <= CutoutGeometry.maxSide {
                    link.url = "\(base)/soda/sync?ID=\(Self.escaped(pid))"
                    link.contentType = "application/fits"
                    link.length = Int64(p.width) * Int64(p.height) * 12
                } else {
                    link.error = "UsageError: the patch is \(p.width) × \(p.height) pixels, over the cutout limit of \(CutoutGeometry.maxSide) per side: cut it in parts with #cutout"
                }
                rows.append(link)
                if id.patch != nil, let tree = hipsTree(id.dataset, p.band) {
                    let tile = HiPSTiling.path(order: Int(p.patchOrder), npix: p.patch, ext: "png")
                    if FileManager.default.fileExists(atPath: "\(hipsRoot ?? "")/\(tree)/\(tile)") {
                        rows.append(Link(id: raw, url: "\(base)/hips/\(tree)/\(tile)", description: "the patch's HiPS tile (its own HEALPix pixel)",
                                         semantics: "#preview", contentType: "image/png"))
                    }
                }
            }
            let descriptor = "soda-" + id.text.replacingOccurrences(of: "[^A-Za-z0-9]", with: "-", options: .regularExpression)
            rows.append(Link(id: raw, serviceDef: descriptor, description: "cutouts (SODA): POS, CIRCLE or POLYGON, and BAND", semantics: "#cutout",
                             contentType: "application/fits"))
            descriptors.append(Self.serviceDescriptor(descriptor, id: id.text, base: base, bands: id.patch.map { [$0.band] } ?? d.images.bands))
            if id.patch == nil {
                for band in d.images.bands {
                    guard let tree = hipsTree(id.dataset, band) else { continue }
                    rows.append(Link(id: raw, url: "\(base)/hips/\(tree)/Norder3/Allsky.png", description: "band \(band) of the whole dataset (HiPS Allsky)",
                                     semantics: "#preview", contentType: "image/png"))
                    rows.append(Link(id: raw, url: "\(base)/hips/\(tree)/Moc.fits", description: "band \(band)'s coverage (MOC of its HiPS)",
                                     semantics: "#coverage", contentType: "application/fits"))
                }
            }
        }
        return Self.linksVOTable(rows, descriptors: descriptors)
    }

    /// The most DataLink rows one request lists.
    static let maxLinkRows = 100_000

    static func escaped(_ s: String) -> String {
        s.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? s
    }

    static func serviceDescriptor(_ name: String, id: String, base: String, bands: [String]) -> String {
        let x = ResultWriter.xml
        return """
             <RESOURCE type="meta" utype="adhoc:service" ID="\(x(name))">
              <DESCRIPTION>SODA synchronous cutouts of \(x(id)): FITS with IMAGE, MASK and VARIANCE per band (bands \(x(bands.joined(separator: ", "))))</DESCRIPTION>
              <PARAM name="standardID" datatype="char" arraysize="*" value="ivo://ivoa.net/std/SODA#sync-1.0"/>
              <PARAM name="accessURL" datatype="char" arraysize="*" value="\(x(base))/soda/sync"/>
              <GROUP name="inputParams">
               <PARAM name="ID" datatype="char" arraysize="*" ucd="meta.id;meta.dataset" value="\(x(id))"/>
               <PARAM name="POS" datatype="char" arraysize="*" ucd="pos.outline;obs" value=""><DESCRIPTION>CIRCLE ra dec radius, RANGE ra1 ra2 dec1 dec2 or POLYGON ra1 dec1 …, degrees</DESCRIPTION></PARAM>
               <PARAM name="CIRCLE" datatype="double" arraysize="3" xtype="circle" unit="deg" ucd="phys.angArea;obs" value=""/>
               <PARAM name="POLYGON" datatype="double" arraysize="*" xtype="polygon" unit="deg" ucd="pos.outline;obs" value=""/>
               <PARAM name="BAND" datatype="double" arraysize="2" xtype="interval" unit="m" ucd="em.wl;stat.interval" value=""><DESCRIPTION>a wavelength interval (or band names: \(x(bands.joined(separator: ",")))</DESCRIPTION></PARAM>
              </GROUP>
             </RESOURCE>
            """
    }

    static func linksVOTable(_ rows: [Link], descriptors: [String]) -> String {
        let x = ResultWriter.xml
        var s = """
            <?xml version="1.0" encoding="UTF-8"?>
            <VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">
             <RESOURCE type="results">
              <TABLE>
               <FIELD name="ID" datatype="char" arraysize="*" ucd="meta.id;meta.main"/>
               <FIELD name="access_url" datatype="char" arraysize="*" ucd="meta.ref.url"/>
               <FIELD name="service_def" datatype="char" arraysize="*" ucd="meta.ref"/>
               <FIELD name="error_message" datatype="char" arraysize="*" ucd="meta.code.error"/>
               <FIELD name="description" datatype="char" arraysize="*" ucd="meta.note"/>
               <FIELD name="semantics" datatype="char" arraysize="*" ucd="meta.code"/>
               <FIELD name="content_type" datatype="char" arraysize="*" ucd="meta.code.mime"/>
               <FIELD name="content_length" datatype="long" unit="byte" ucd="phys.size;meta.file"><VALUES null="-1"/></FIELD>
               <DATA><TABLEDATA>

            """
        for r in rows {
            let cells = [r.id, r.url, r.serviceDef, r.error, r.description, r.semantics, r.contentType].map { "<TD>\(x($0))</TD>" }.joined()
            s += "    <TR>\(cells)<TD>\(r.length ?? -1)</TD></TR>\n"
        }
        s += "   </TABLEDATA></DATA>\n  </TABLE>\n </RESOURCE>\n"
        for d in descriptors { s += d + "\n" }
        return s + "</VOTABLE>\n"
    }

    // MARK: HiPS

    /// A file of a HiPS tree: its bytes' path and content type, or why not. Paths are the
    /// standard's names only (letters, digits, `_`, `-`, `.` and `/`, no `..`).
    func hipsFile(_ path: String) throws(SODAError) -> OpenHiPSFile {
        guard let hipsRoot else { throw .notFound("this gateway serves no HiPS (start it with --hips-dir)") }
        let parts = path.split(separator: "/", omittingEmptySubsequences: false)
        guard path.utf8.count <= 256, parts.count >= 2, parts.allSatisfy({ p in !p.isEmpty && p != "." && p != ".." && p.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "_-.".contains($0)) } }) else {
            throw .usage("`\(path.prefix(120))` is not a HiPS file's path (NAME/properties, NAME/NorderK/DirD/NpixN.fits, …)")
        }
        let types = ["fits": "application/fits", "png": "image/png", "jpg": "image/jpeg", "html": "text/html;charset=utf-8", "xml": "text/xml;charset=utf-8"]
        let file = parts[parts.count - 1]
        let ext = file.split(separator: ".").dropFirst().last.map(String.init) ?? ""
        let type = file == "properties" ? "text/plain;charset=utf-8" : types[ext]
        guard let type else { throw .notFound("`\(path.prefix(120))` is not a file a HiPS holds") }
        return try OpenHiPSFile(path: hipsRoot + "/" + path, contentType: type, name: String(path.prefix(120)))
    }

    /// The HiPS trees served, as a HiPS list (their properties, one block each).
    func hipsList(base: String) -> String {
        guard let hipsRoot, let names = try? FileManager.default.contentsOfDirectory(atPath: hipsRoot) else { return "" }
        var out = ""
        for name in names.sorted() where !name.contains(".partial-") && !name.contains(".old-") {
            guard let props = try? String(contentsOfFile: "\(hipsRoot)/\(name)/properties", encoding: .utf8) else { continue }
            out += props + "hips_service_url     = \(base)/hips/\(name)\n\n"
        }
        return out
    }
}
