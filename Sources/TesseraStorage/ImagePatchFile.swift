import CFITSIO
import Foundation
import TesseraSky

#if canImport(Glibc)
import Glibc
#endif

/// The planes of a coadd patch.
public enum ImagePlane: String, Sendable, CaseIterable {
    /// Flux per pixel, nJy (float32).
    case image = "IMAGE"
    /// Bit flags per pixel (int32): see `ImageMask`.
    case mask = "MASK"
    /// Flux variance per pixel, nJy² (float32).
    case variance = "VARIANCE"
}

/// The mask plane's bits (as LSST names its mask planes; written as `MP_<NAME>` keywords).
public enum ImageMask {
    public static let bad: Int32 = 1 << 0
    public static let saturated: Int32 = 1 << 1
    public static let edge: Int32 = 1 << 4
    /// No image covers the pixel (a cutout's pixels outside coverage).
    public static let noData: Int32 = 1 << 8
    public static let planes: [(name: String, bit: Int)] = [("BAD", 0), ("SAT", 1), ("EDGE", 4), ("NO_DATA", 8)]
}

/// A coadd patch: three planes of one size over one TAN grid, and what it is (dataset, band, tract,
/// patch, and where its first pixel lies in the tract's grid).
public struct ImagePatchHeader: Sendable, Equatable {
    public var band: String
    /// The tract (the HEALPix pixel at `tractOrder`), and the patch (the pixel at `patchOrder`);
    /// -1 for an image registered by its own footprint rather than cut from a tract.
    public var tract: Int64
    public var patch: Int64
    public var tractOrder: Int
    public var patchOrder: Int
    /// The patch's first pixel in its tract's grid (0 for an image on its own grid).
    public var x0: Int
    public var y0: Int
    public var width: Int
    public var height: Int
    /// The patch's own WCS (its first pixel is 0-based (0, 0)).
    public var wcs: TanWCS

    public init(band: String, tract: Int64, patch: Int64, tractOrder: Int, patchOrder: Int, x0: Int, y0: Int, width: Int, height: Int, wcs: TanWCS) {
        (self.band, self.tract, self.patch, self.tractOrder, self.patchOrder) = (band, tract, patch, tractOrder, patchOrder)
        (self.x0, self.y0, self.width, self.height, self.wcs) = (x0, y0, width, height, wcs)
    }

    /// The patch's pixels in its tract's grid.
    public var box: PixelBox { PixelBox(x0: x0, y0: y0, width: width, height: height) }
}

/// What can go wrong with an image file; every case names the file.
public enum ImageFileError: Error, Sendable, Equatable, CustomStringConvertible {
    case fits(FITSError)
    case io(path: String, operation: String, errno: Int32)
    case notAPatch(path: String, reason: String)
    case wcs(path: String, WCSError)
    case checksumMismatch(path: String, expected: UInt64, found: UInt64)
    case invalidInput(String)

    public var description: String {
        switch self {
        case .fits(let e): e.description
        case .io(let p, let op, let e): "\(p): \(op) failed: \(String(cString: strerror(e)))"
        case .notAPatch(let p, let why): "\(p) is not a usable image: \(why)"
        case .wcs(let p, let e): "\(p): \(e)"
        case .checksumMismatch(let p, let e, let f):
            "\(p) is corrupt: its checksum is \(String(f, radix: 16)), the registry recorded \(String(e, radix: 16))"
        case .invalidInput(let why): "cannot write the image: \(why)"
        }
    }
}

/// Opens a FITS file for reading through cfitsio, its headers checked first (`FITSHeaderCheck`),
/// with its count of header-and-data units. The caller closes it (`ffclos`).
func openFITS(_ path: String) throws(ImageFileError) -> (file: UnsafeMutablePointer<fitsfile>?, units: Int32) {
    do { try FITSHeaderCheck.validate(path: path) } catch { throw .fits(error) }
    var status: Int32 = 0
    var f: UnsafeMutablePointer<fitsfile>?
    ffopen(&f, path, READONLY, &status)
    var units: Int32 = 0
    if status == 0 { ffthdu(f, &units, &status) }
    if status != 0 {
        var s: Int32 = 0
        if f != nil { ffclos(f, &s) }
        do { try FITSError.check(status, path, "open") } catch { throw .fits(error) }
    }
    return (f, units)
}

/// Reads a FITS header's cards through cfitsio: name → value (string values unquoted).
func fitsCards(_ f: UnsafeMutablePointer<fitsfile>?) -> [String: String] {
    var status: Int32 = 0
    var count: Int32 = 0, more: Int32 = 0
    ffghsp(f, &count, &more, &status)
    var out: [String: String] = [:]
    guard status == 0 else { return out }
    var name = [CChar](repeating: 0, count: 80), value = [CChar](repeating: 0, count: 80), comment = [CChar](repeating: 0, count: 80)
    func text(_ a: [CChar]) -> String { String(decoding: a.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
    for i in 1...max(count, 1) where count > 0 {
        var s: Int32 = 0
        ffgkyn(f, i, &name, &value, &comment, &s)
        guard s == 0 else { continue }
        var v = text(value).trimmingCharacters(in: .whitespaces)
        if v.hasPrefix("'"), v.hasSuffix("'"), v.count >= 2 {
            v = String(v.dropFirst().dropLast()).replacingOccurrences(of: "''", with: "'").trimmingCharacters(in: .whitespaces)
        }
        out[text(name)] = v
    }
    return out
}

/// Writes a patch as FITS through cfitsio, in memory: an empty primary header with what the patch
/// is, then the IMAGE, MASK and VARIANCE extensions, each with the patch's TAN WCS and a FITS
/// CHECKSUM/DATASUM (which astropy and `fitsverify` check). The bytes are then stored durably
/// (`DurableFile`) and hashed (`XXHash64`) for the registry.
public enum ImagePatchWriter {
    /// One band's planes and what they are.
    public struct Planes: Sendable {
        public var header: ImagePatchHeader
        public var image: [Float], variance: [Float], mask: [Int32]
        public init(header: ImagePatchHeader, image: [Float], variance: [Float], mask: [Int32]) {
            (self.header, self.image, self.variance, self.mask) = (header, image, variance, mask)
        }
    }

    public static func encode(header h: ImagePatchHeader, image: [Float], variance: [Float], mask: [Int32],
                              extraKeywords: [FITSKeyword] = []) throws(ImageFileError) -> [UInt8] {
        try encode(bands: [Planes(header: h, image: image, variance: variance, mask: mask)], extraKeywords: extraKeywords)
    }

    /// Several bands in one file (a cutout's): the primary header describes the first; each band
    /// has its IMAGE, MASK and VARIANCE extensions, numbered by `EXTVER` 1, 2, … with a `BAND` card.
    public static func encode(bands: [Planes], extraKeywords: [FITSKeyword] = []) throws(ImageFileError) -> [UInt8] {
        guard let h = bands.first?.header else { throw .invalidInput("no bands to write") }
        for b in bands {
            let hb = b.header, n = hb.width * hb.height
            guard hb.width > 0, hb.height > 0, hb.width <= 1 << 16, hb.height <= 1 << 16 else {
                throw .invalidInput("an image of \(hb.width) × \(hb.height) pixels (each side 1 … 65536)")
            }
            guard b.image.count == n, b.variance.count == n, b.mask.count == n else {
                throw .invalidInput("planes of \(b.image.count), \(b.variance.count) and \(b.mask.count) pixels for a \(hb.width) × \(hb.height) image")
            }
            guard !hb.band.isEmpty, hb.band.utf8.count <= 16, hb.band.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") }) else {
                throw .invalidInput("band name `\(hb.band)`: 1 to 16 letters, digits or _")
            }
        }
        let w = try FITSMemoryWriter(name: "patch \(h.band)/\(h.tract)/\(h.patch)")
        // The primary header: no data, what the patch is.
        w.image(bitpix: 8, width: 0, height: 0)
        w.key("ORIGIN", .text("Tessera"), "")
        w.key("BAND", .text(h.band), "filter band")
        w.key("TRACT", .integer(Int(h.tract)), "HEALPix nested pixel at TRORDER (-1: own grid)")
        w.key("PATCH", .integer(Int(h.patch)), "HEALPix nested pixel at PAORDER (-1: own grid)")
        w.key("TRORDER", .integer(h.tractOrder), "HEALPix order of tracts")
        w.key("PAORDER", .integer(h.patchOrder), "HEALPix order of patches")
        w.key("GRID_X0", .integer(h.x0), "first pixel's column in the tract grid (0-based)")
        w.key("GRID_Y0", .integer(h.y0), "first pixel's row in the tract grid (0-based)")
        w.keys(extraKeywords)
        if bands.count > 1 { w.key("BANDS", .text(bands.map(\.header.band).joined(separator: ",")), "bands, one EXTVER each") }
        w.checksum()
        for (k, b) in bands.enumerated() {
            func plane(_ p: ImagePlane, bitpix: Int32, unit: String, write: (FITSMemoryWriter) -> Void) {
                w.image(bitpix: bitpix, width: b.header.width, height: b.header.height)
                w.key("EXTNAME", .text(p.rawValue), "")
                if bands.count > 1 { w.key("EXTVER", .integer(k + 1), "") }
                w.key("BAND", .text(b.header.band), "filter band")
                if !unit.isEmpty { w.key("BUNIT", .text(unit), "") }
                for c in b.header.wcs.headerCards { w.key(c.name, c.value, c.comment) }
                if p == .mask {
                    for (name, bit) in ImageMask.planes { w.key("MP_\(name)", .integer(bit), "mask bit") }
                }
                write(w)
                w.checksum()
            }
            plane(.image, bitpix: FLOAT_IMG, unit: "nJy") { $0.write(b.image) }
            plane(.mask, bitpix: LONG_IMG, unit: "") { $0.write(b.mask) }
            plane(.variance, bitpix: FLOAT_IMG, unit: "nJy2") { $0.write(b.variance) }
        }
        return try w.finish()
    }
}

/// A FITS file written in memory through cfitsio, HDU by HDU: errors are kept (cfitsio's
/// status) and reported by `finish`, which returns the file's bytes.
public final class FITSMemoryWriter {
    let name: String
    // cfitsio keeps these two pointers and writes through them until the file is closed.
    let bufferPointer = UnsafeMutablePointer<UnsafeMutableRawPointer?>.allocate(capacity: 1)
    let sizePointer = UnsafeMutablePointer<Int>.allocate(capacity: 1)
    var file: UnsafeMutablePointer<fitsfile>?
    var status: Int32 = 0
    var closed = false
    /// HDUs (1-based) given a checksum.
    var summed: Set<Int> = []

    /// `name` says what the file is in errors.
    public init(name: String) throws(ImageFileError) {
        self.name = name
        // One zeroed block, as cfitsio's manual shows: the mem driver takes a larger first buffer's
        // bytes past the first header as existing HDUs (a reused allocation held an old patch's).
        sizePointer.pointee = 2880
        bufferPointer.pointee = calloc(2880, 1)
        ffimem(&file, bufferPointer, sizePointer, 2880 * 64, realloc, &status)
        guard status == 0 else {
            let e = Self.error(status, "create in memory", name)
            free(bufferPointer.pointee)
            bufferPointer.deallocate()
            sizePointer.deallocate()
            closed = true
            throw e
        }
    }

    deinit {
        if !closed {
            var s: Int32 = 0
            ffclos(file, &s)
            free(bufferPointer.pointee)
            bufferPointer.deallocate()
            sizePointer.deallocate()
        }
    }

    static func error(_ status: Int32, _ op: String, _ name: String) -> ImageFileError {
        var text = [CChar](repeating: 0, count: 81)
        ffgerr(status, &text)
        return .fits(.cfitsio(path: name, operation: op, status: status,
                              message: String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)))
    }

    /// Starts an image HDU (the primary first) of `bitpix` (8, FLOAT_IMG, LONG_IMG), no data when 0 × 0.
    public func image(bitpix: Int32, width: Int, height: Int) {
        guard status == 0 else { return }
        var axes = width == 0 && height == 0 ? [] : [width, height]
        ffcrim(file, bitpix, Int32(axes.count), &axes, &status)
    }

    public func key(_ name: String, _ v: WCSCardValue, _ comment: String) {
        guard status == 0 else { return }
        switch v {
        case .text(let t): ffpkys(file, name, t, comment, &status)
        case .integer(let i): ffpkyj(file, name, Int64(i), comment, &status)
        case .real(let d): ffpkyd(file, name, d, -17, comment, &status)
        }
    }

    public func keys(_ list: [FITSKeyword]) {
        for k in list {
            switch k.value {
            case .text(let v): key(k.name, .text(v), k.comment)
            case .integer(let v): key(k.name, .integer(v), k.comment)
            }
        }
    }

    public func write(_ values: [Float]) {
        guard status == 0 else { return }
        var a = values
        ffppr(file, TFLOAT, 1, Int64(a.count), &a, &status)
    }

    public func write(_ values: [Int32]) {
        guard status == 0 else { return }
        var a = values
        ffppr(file, TINT, 1, Int64(a.count), &a, &status)
    }

    /// Gives the current HDU a CHECKSUM and DATASUM (the FITS checksum convention, which astropy
    /// and fitsverify check). They are computed in `finish`, without cfitsio's time stamp in
    /// their comments, so the same pixels always make the same bytes.
    public func checksum() {
        guard status == 0 else { return }
        key("CHECKSUM", .text("0000000000000000"), "HDU checksum")
        key("DATASUM", .text("0"), "data unit checksum")
        var hdu: Int32 = 0
        ffghdn(file, &hdu)
        summed.insert(Int(hdu))
    }

    /// Closes the file and returns its bytes.
    public func finish() throws(ImageFileError) -> [UInt8] {
        guard !closed else { throw .invalidInput("\(name) was already written") }
        // Each HDU's header and data offsets (for the sums); the file ends with the last HDU's
        // data, padded to its 2880-byte block (the buffer may be larger: it grows by increments).
        var count: Int32 = 0
        ffthdu(file, &count, &status)
        var hdus: [(header: Int, data: Int, end: Int)] = []
        for k in 1...max(1, Int(count)) where status == 0 {
            var type: Int32 = 0
            ffmahd(file, Int32(k), &type, &status)
            var head: Int64 = 0, dataStart: Int64 = 0, dataEnd: Int64 = 0
            ffghadll(file, &head, &dataStart, &dataEnd, &status)
            hdus.append((Int(head), Int(dataStart), (Int(dataEnd) + 2879) / 2880 * 2880))
        }
        let logicalEnd = hdus.last?.end ?? 0
        var closeStatus: Int32 = 0
        ffclos(file, &closeStatus)
        closed = true
        if status == 0 { status = closeStatus }
        defer {
            free(bufferPointer.pointee)
            bufferPointer.deallocate()
            sizePointer.deallocate()
        }
        guard status == 0, let base = bufferPointer.pointee else { throw Self.error(status, "write", name) }
        guard logicalEnd > 0, logicalEnd <= sizePointer.pointee else {
            throw .invalidInput("cfitsio's buffer ends before its file (\(logicalEnd) > \(sizePointer.pointee) bytes)")
        }
        var bytes = [UInt8](UnsafeRawBufferPointer(start: base, count: logicalEnd))
        for (k, h) in hdus.enumerated() where summed.contains(k + 1) {
            FITSChecksum.seal(&bytes, header: h.header..<h.data, data: h.data..<h.end)
        }
        return bytes
    }

    /// A FITS file of one float32 image in its primary HDU, with `keywords` and a checksum.
    public static func floatImage(_ pixels: [Float], width: Int, height: Int, keywords: [FITSKeyword], name: String) throws(ImageFileError) -> [UInt8] {
        guard width > 0, height > 0, pixels.count == width * height else {
            throw .invalidInput("an image of \(pixels.count) pixels for \(width) × \(height)")
        }
        let w = try FITSMemoryWriter(name: name)
        w.image(bitpix: FLOAT_IMG, width: width, height: height)
        w.keys(keywords)
        w.write(pixels)
        w.checksum()
        return try w.finish()
    }
}

/// A patch file opened for reading: headers parsed through cfitsio once, then the data read
/// through a read-only memory map, one box at a time (the whole file is never loaded).
///
/// Sendable because nothing in it changes after `init` (the mapping is read-only).
public final class ImagePatchFile: @unchecked Sendable {
    public let path: String
    public let header: ImagePatchHeader
    /// The primary header's cards (how the patch was made: `BORDER`, `PSFFWHM`, ...).
    public let primaryCards: [String: String]
    public let identity: FileIdentity
    public let byteCount: Int
    private let base: UnsafeRawPointer
    /// Byte offset of each plane's data.
    private let offsets: [ImagePlane: Int]

    public init(path: String) throws(ImageFileError) {
        self.path = path
        let (primary, found, offsets) = try Self.readHeaders(path)
        primaryCards = primary
        func refuse(_ why: String) -> ImageFileError { .notAPatch(path: path, reason: why) }
        guard let image = found[.image] else { throw refuse("it has no IMAGE extension") }
        let width = Int(image.cards["NAXIS1"] ?? "") ?? 0, height = Int(image.cards["NAXIS2"] ?? "") ?? 0
        guard width > 0, height > 0, width <= 1 << 16, height <= 1 << 16 else {
            throw refuse("its IMAGE is \(width) × \(height) pixels (each side 1 … 65536)")
        }
        for p in ImagePlane.allCases {
            guard let plane = found[p] else { throw refuse("it has no \(p.rawValue) extension") }
            let bitpix = p == .mask ? "32" : "-32"
            guard plane.cards["BITPIX"] == bitpix, plane.cards["NAXIS"] == "2",
                  Int(plane.cards["NAXIS1"] ?? "") == width, Int(plane.cards["NAXIS2"] ?? "") == height else {
                throw refuse("its \(p.rawValue) is not a \(width) × \(height) image of BITPIX \(bitpix)")
            }
            if let z = plane.cards["BZERO"], Double(z) != 0 { throw refuse("its \(p.rawValue) is scaled (BZERO = \(z))") }
            if let s = plane.cards["BSCALE"], Double(s) != 1 { throw refuse("its \(p.rawValue) is scaled (BSCALE = \(s))") }
        }
        let wcs: TanWCS
        do { wcs = try TanWCS(cards: image.cards) } catch { throw .wcs(path: path, error) }
        func int(_ k: String, _ fallback: Int) -> Int { primary[k].flatMap { Int($0) } ?? fallback }
        header = ImagePatchHeader(
            band: primary["BAND"] ?? "", tract: Int64(int("TRACT", -1)), patch: Int64(int("PATCH", -1)),
            tractOrder: int("TRORDER", -1), patchOrder: int("PAORDER", -1),
            x0: int("GRID_X0", 0), y0: int("GRID_Y0", 0), width: width, height: height, wcs: wcs)
        guard !header.band.isEmpty else { throw refuse("its primary header has no BAND") }
        // The tiling's cards, when there are any, name a HEALPix tract and patch (orders up to
        // 29, the patch no coarser than the tract): the registry, the scheduler's planning and
        // the shard's key compute with them, and a grid offset beyond ±2⁴⁰ pixels is no grid.
        let tiled = ["TRACT", "PATCH", "TRORDER", "PAORDER"].contains { primary[$0] != nil }
        if tiled {
            let (t, p, to, po) = (header.tract, header.patch, header.tractOrder, header.patchOrder)
            // Tract and patch -1: an image on its own grid (a cutout written here, say).
            let ownGrid = t == -1 && p == -1 && (-1...29).contains(to) && (-1...29).contains(po)
            let patch = (0...29).contains(to) && (to...29).contains(po) && t >= 0 && t < Int64(12) << (2 * to) && p >= 0 && p < Int64(12) << (2 * po)
            guard ownGrid || patch else {
                throw refuse("its tiling cards TRACT = \(t), PATCH = \(p), TRORDER = \(to), PAORDER = \(po) are not a HEALPix tract and patch (orders 0 … 29, the patch's no coarser than the tract's, pixels below 12·4^order; -1 for an image on its own grid)")
            }
        }
        guard header.x0.magnitude < 1 << 40, header.y0.magnitude < 1 << 40 else {
            throw refuse("its grid offset GRID_X0 = \(header.x0), GRID_Y0 = \(header.y0) is beyond ±2^40 pixels")
        }

        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .io(path: path, operation: "open", errno: errno) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .io(path: path, operation: "stat", errno: errno) }
        identity = FileIdentity(st)
        byteCount = Int(st.st_size)
        for p in ImagePlane.allCases where offsets[p]! + 4 * width * height > byteCount {
            throw refuse("its \(p.rawValue) data runs past the end of the file (truncated?)")
        }
        guard let m = mmap(nil, byteCount, PROT_READ, MAP_PRIVATE, fd, 0), m != MAP_FAILED else {
            throw .io(path: path, operation: "mmap", errno: errno)
        }
        base = UnsafeRawPointer(m)
        self.offsets = offsets
    }

    deinit { munmap(UnsafeMutableRawPointer(mutating: base), byteCount) }

    /// The primary header's cards, and each plane's header cards and data offset (cfitsio).
    private static func readHeaders(_ path: String) throws(ImageFileError)
        -> ([String: String], [ImagePlane: (cards: [String: String], end: Int)], [ImagePlane: Int]) {
        let (f, units) = try openFITS(path)
        defer { var s: Int32 = 0; ffclos(f, &s) }
        var status: Int32 = 0
        let primary = fitsCards(f)
        var offsets: [ImagePlane: Int] = [:]
        var found: [ImagePlane: (cards: [String: String], end: Int)] = [:]
        var hdu: Int32 = 2
        while hdu <= units, status == 0 {
            var type: Int32 = 0
            ffmahd(f, hdu, &type, &status)
            hdu += 1
            guard status == 0, type == IMAGE_HDU else { continue }
            let cards = fitsCards(f)
            guard let name = cards["EXTNAME"], let p = ImagePlane(rawValue: name.uppercased()), found[p] == nil else { continue }
            var head: Int64 = 0, data: Int64 = 0, end: Int64 = 0
            ffghadll(f, &head, &data, &end, &status)
            offsets[p] = Int(data)
            found[p] = (cards, Int(end))
        }
        if status != 0 {
            do { try FITSError.check(status, path, "read the headers") } catch { throw .fits(error) }
        }
        return (primary, found, offsets)
    }

    /// The xxHash64 of the whole file, as the registry records it.
    /// Reading it maps every page of the file; they are let go afterwards (the mapping is
    /// read-only, so later reads fault in only the boxes they touch), or the worker would count
    /// every patch it ever checked as resident.
    public func checksum() -> UInt64 {
        let h = XXHash64.hash(UnsafeRawBufferPointer(start: base, count: byteCount))
        releasePages()
        return h
    }

    /// Lets go of the mapping's pages (after reading a whole plane): the page cache keeps them,
    /// but the worker no longer counts them as its own resident memory.
    public func releasePages() {
        _ = madvise(UnsafeMutableRawPointer(mutating: base), byteCount, MADV_DONTNEED)
    }

    /// The image, variance and mask planes as stored (big-endian 4-byte values, row by row,
    /// `header.width` a row) for reading in place, without a copy, while `body` runs.
    public func withPlanes<R>(_ body: (_ image: UnsafeRawPointer, _ variance: UnsafeRawPointer, _ mask: UnsafeRawPointer) throws -> R) rethrows -> R {
        try withExtendedLifetime(self) {
            try body(base + offsets[.image]!, base + offsets[.variance]!, base + offsets[.mask]!)
        }
    }

    /// Copies the part of `box` (in this file's own pixels) that lies inside the file into `out`,
    /// a row-major buffer of `box.width × box.height` 4-byte values (Float, or Int32 for the
    /// mask), converting from FITS's big-endian order. Pixels of `box` outside the file are left
    /// as they were.
    public func copy(_ plane: ImagePlane, box: PixelBox, into out: UnsafeMutableRawBufferPointer) {
        guard out.count >= 4 * box.pixelCount, let dst = out.baseAddress else { return }
        copy(plane, box: box, into: dst, rowLength: box.width, at: (0, 0))
    }

    /// Copies the part of `box` (this file's own pixels) inside the file into a row-major buffer
    /// of `rowLength` 4-byte values per row, `box`'s first pixel going to column and row `at`
    /// of it (the caller makes sure the buffer holds that much).
    public func copy(_ plane: ImagePlane, box: PixelBox, into dst: UnsafeMutableRawPointer, rowLength: Int, at: (x: Int, y: Int)) {
        let own = PixelBox(x0: 0, y0: 0, width: header.width, height: header.height)
        let part = own.intersection(box)
        guard !part.isEmpty else { return }
        let start = base + offsets[plane]!
        let w = header.width
        for y in part.y0..<part.y1 {
            let src = start + 4 * (y * w + part.x0)
            let to = dst + 4 * ((y - box.y0 + at.y) * rowLength + (part.x0 - box.x0 + at.x))
            for i in 0..<part.width {
                let v = src.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)
                to.storeBytes(of: UInt32(bigEndian: v), toByteOffset: 4 * i, as: UInt32.self)
            }
        }
    }

    /// One plane's values over `box` (in this file's own pixels); pixels outside the file are
    /// `fill`.
    public func floats(_ plane: ImagePlane, box: PixelBox, fill: Float = .nan) -> [Float] {
        var out = [Float](repeating: fill, count: box.pixelCount)
        out.withUnsafeMutableBytes { copy(plane, box: box, into: $0) }
        return out
    }

    /// The mask over `box`; pixels outside the file are `ImageMask.noData`.
    public func mask(box: PixelBox) -> [Int32] {
        var out = [Int32](repeating: ImageMask.noData, count: box.pixelCount)
        out.withUnsafeMutableBytes { copy(.mask, box: box, into: $0) }
        return out
    }
}

/// An image in any FITS layout astropy writes: the first two-dimensional image HDU (primary or
/// extension), read whole as float32 with its header's cards (the primary's under them, so a WCS
/// in either is found), and `VARIANCE` and `MASK` extensions of the same size if present.
public struct FITSImage: Sendable {
    public var cards: [String: String]
    public var width: Int
    public var height: Int
    public var image: [Float]
    public var variance: [Float]?
    public var mask: [Int32]?

    /// The most pixels read from a file (1 GiB of float32).
    public static let maxPixels = 1 << 28

    public init(path: String) throws(ImageFileError) {
        let (f, units) = try openFITS(path)
        defer { var s: Int32 = 0; ffclos(f, &s) }
        var status: Int32 = 0
        let primary = fitsCards(f)
        func size(_ c: [String: String]) throws(ImageFileError) -> (Int, Int)? {
            guard c["NAXIS"] == "2", let w = Int(c["NAXIS1"] ?? ""), let h = Int(c["NAXIS2"] ?? ""), w > 0, h > 0 else { return nil }
            // Each side first (a header's numbers are anyone's), then the pixels.
            guard w <= 1 << 16, h <= 1 << 16, w * h <= Self.maxPixels else {
                throw .notAPatch(path: path, reason: "its image of \(w) × \(h) pixels is over the limit (65536 per side, \(Self.maxPixels) pixels)")
            }
            return (w, h)
        }
        func read<T>(_ code: Int32, _ n: Int, _ fill: T) throws(ImageFileError) -> [T] {
            var out = [T](repeating: fill, count: n)
            var any: Int32 = 0
            var s: Int32 = 0
            out.withUnsafeMutableBytes { _ = ffgpv(f, code, 1, Int64(n), nil, $0.baseAddress, &any, &s) }
            if s != 0 { do { try FITSError.check(s, path, "read the image") } catch { throw .fits(error) } }
            return out
        }
        var found: (cards: [String: String], w: Int, h: Int, image: [Float])?
        var variance: [Float]?, mask: [Int32]?
        for hdu in 1...max(units, 1) where units > 0 {
            var type: Int32 = 0
            ffmahd(f, hdu, &type, &status)
            guard status == 0, type == IMAGE_HDU else { continue }
            let cards = fitsCards(f)
            guard let (w, h) = try size(cards) else { continue }
            let name = (cards["EXTNAME"] ?? "").uppercased()
            if let first = found {
                guard w == first.w, h == first.h else { continue }
                if name == "VARIANCE", variance == nil { variance = try read(TFLOAT, w * h, Float.nan) }
                if name == "MASK", mask == nil { mask = try read(TINT, w * h, Int32(0)) }
            } else if name != "MASK", name != "VARIANCE" {
                found = (primary.merging(cards) { _, own in own }, w, h, try read(TFLOAT, w * h, Float.nan))
            }
        }
        guard let image = found else { throw .notAPatch(path: path, reason: "it has no two-dimensional image") }
        (cards, width, height, self.image, self.variance, self.mask) = (image.cards, image.w, image.h, image.image, variance, mask)
    }
}

/// The FITS checksum convention (Seaman, Pence & Rots): DATASUM is the 32-bit ones'-complement
/// sum of the data's big-endian words, and CHECKSUM the 16-character ASCII encoding of the
/// complement of the header's and data's sum, so that the whole HDU sums to −0.
public enum FITSChecksum {
    /// The ones'-complement sum of `bytes` (a whole number of 2880-byte blocks) as 32-bit words.
    public static func sum(_ bytes: ArraySlice<UInt8>) -> UInt32 {
        var s: UInt64 = 0
        bytes.withUnsafeBytes { raw in
            let words = raw.count / 4
            for i in 0..<words { s &+= UInt64(UInt32(bigEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))) }
        }
        while s >> 32 != 0 { s = (s & 0xFFFF_FFFF) + (s >> 32) }
        return UInt32(s)
    }

    static func add(_ a: UInt32, _ b: UInt32) -> UInt32 {
        var s = UInt64(a) + UInt64(b)
        while s >> 32 != 0 { s = (s & 0xFFFF_FFFF) + (s >> 32) }
        return UInt32(s)
    }

    /// The 16 characters for `sum`'s complement: each byte spread over four characters from '0',
    /// stepped off the punctuation between the digits and letters, then rotated right by one.
    public static func encode(complementOf sum: UInt32) -> String {
        let value = ~sum
        func isExcluded(_ c: UInt8) -> Bool { (0x3A...0x40).contains(c) || (0x5B...0x60).contains(c) }
        var asc = [UInt8](repeating: 0, count: 16)
        for i in 0..<4 {
            let byte = UInt8((value >> (24 - 8 * UInt32(i))) & 0xFF)
            var ch = [UInt8](repeating: byte / 4 + 0x30, count: 4)
            ch[0] += byte % 4
            var changed = true
            while changed {
                changed = false
                for j in stride(from: 0, to: 4, by: 2) where isExcluded(ch[j]) || isExcluded(ch[j + 1]) {
                    ch[j] += 1
                    ch[j + 1] -= 1
                    changed = true
                }
            }
            for j in 0..<4 { asc[4 * j + i] = ch[j] }
        }
        return String(decoding: (0..<16).map { asc[($0 + 15) % 16] }, as: UTF8.self)
    }

    /// An 80-character header card holding a string value.
    static func card(_ name: String, _ value: String, _ comment: String) -> [UInt8] {
        let quoted = "'" + value.padding(toLength: max(8, value.count), withPad: " ", startingAt: 0) + "'"
        let text = name.padding(toLength: 8, withPad: " ", startingAt: 0) + "= " + quoted.padding(toLength: max(20, quoted.count), withPad: " ", startingAt: 0) + " / " + comment
        return Array(text.padding(toLength: 80, withPad: " ", startingAt: 0).utf8.prefix(80))
    }

    /// Writes the DATASUM and CHECKSUM cards of the HDU whose header and data are at `header`
    /// and `data` in `bytes` (the cards must be in the header already).
    static func seal(_ bytes: inout [UInt8], header: Range<Int>, data: Range<Int>) {
        func find(_ name: String) -> Int? {
            let key = Array(name.padding(toLength: 8, withPad: " ", startingAt: 0).utf8)
            return stride(from: header.lowerBound, to: header.upperBound, by: 80).first { Array(bytes[$0..<$0 + 8]) == key }
        }
        guard let datasumAt = find("DATASUM"), let checksumAt = find("CHECKSUM") else { return }
        let dataSum = sum(bytes[data])
        bytes.replaceSubrange(datasumAt..<datasumAt + 80, with: card("DATASUM", "\(dataSum)", "data unit checksum"))
        bytes.replaceSubrange(checksumAt..<checksumAt + 80, with: card("CHECKSUM", "0000000000000000", "HDU checksum"))
        let total = add(sum(bytes[header]), dataSum)
        bytes.replaceSubrange(checksumAt..<checksumAt + 80, with: card("CHECKSUM", encode(complementOf: total), "HDU checksum"))
    }
}
