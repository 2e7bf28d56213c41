import Foundation
import Testing
import TesseraProtocol
@testable import TesseraStorage

let astropyFixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/astropy_table.fits").path

/// Reads the table `scripts/make_fits_fixtures.py` wrote with astropy; values follow its formulas.
@Suite struct FITSTableTests {
    @Test func readsEveryColumnTypeAstropyWrites() throws {
        let t = try FITSTableReader(path: astropyFixture)
        #expect(t.rowCount == 1000)
        #expect(t.columns.map(\.name) == ["coord_ra", "coord_dec", "r_psfFlux", "objectId", "cell", "band", "ext", "detect_isPrimary", "name", "shape", "visits"])
        #expect(t.columns[2].unit == "nJy")
        let i = (0..<1000).map(Double.init)
        #expect(try t.read(column: "coord_ra") == .float64(i.map { $0 * 0.36 }))
        #expect(try t.read(column: "coord_dec") == .float64(i.map { -45 + $0 * 0.09 }))
        guard case .float32(let flux) = try t.read(column: "r_psfFlux") else { Issue.record("flux type"); return }
        for k in 0..<1000 {
            if k % 10 == 0 { #expect(flux[k].isNaN) } else { #expect(flux[k] == Float(Double(k) * 1.5)) }
        }
        #expect(try t.read(column: "objectId") == .int64((0..<1000).map { (Int64(1) << 40) + Int64($0) }))
        #expect(try t.read(column: "cell") == .int32((0..<1000).map { Int32($0 % 400) }))
        #expect(try t.read(column: "band") == .int16((0..<1000).map { Int16($0 % 6 - 3) }))
        #expect(try t.read(column: "ext") == .uint8((0..<1000).map { UInt8($0 % 2) }))
        #expect(try t.read(column: "detect_isPrimary") == .bool((0..<1000).map { $0 % 3 != 0 }))
        // A part of the rows.
        #expect(try t.read(column: "cell", rows: 10..<13) == .int32([10, 11, 12]))
    }

    @Test func integerNullsBecomeNaNAsPandasReadsThem() throws {
        let t = try FITSTableReader(path: astropyFixture)
        guard case .float64(let v) = try t.read(column: "visits") else { Issue.record("expected float64 with NaN"); return }
        for k in 0..<1000 {
            if k % 7 == 0 { #expect(v[k].isNaN) } else { #expect(v[k] == Double(k % 50)) }
        }
    }

    @Test func unsupportedAndUnknownColumnsAreNamed() throws {
        let t = try FITSTableReader(path: astropyFixture)
        #expect { try t.read(column: "name") } throws: { e in
            guard case FITSError.unsupportedColumn(let p, "name", let why) = e else { return false }
            return p == astropyFixture && why.contains("string")
        }
        #expect { try t.read(column: "shape") } throws: { e in
            guard case FITSError.unsupportedColumn(_, "shape", let why) = e else { return false }
            return why.contains("array")
        }
        #expect { try t.read(column: "coord_raa") } throws: { e in
            guard case FITSError.unknownColumn(_, "coord_raa", let avail) = e else { return false }
            return avail.contains("coord_ra")
        }
    }

    @Test func badFilesAreReportedByName() throws {
        #expect { _ = try FITSTableReader(path: "/nonexistent/table.fits") } throws: { e in
            guard case FITSError.cfitsio(let p, "open", _, _) = e else { return false }
            return p == "/nonexistent/table.fits"
        }
        let junk = tempPath("junk.fits")
        try Data(String(repeating: "not a FITS file\n", count: 300).utf8).write(to: URL(fileURLWithPath: junk))
        #expect(throws: FITSError.self) { _ = try FITSTableReader(path: junk) }
        // A truncated copy of a real table.
        let bytes = try Data(contentsOf: URL(fileURLWithPath: astropyFixture))
        let cut = tempPath("truncated.fits")
        try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: cut))
        #expect(throws: FITSError.self) {
            let t = try FITSTableReader(path: cut)
            _ = try t.read(column: "visits")
        }
    }

    @Test func writtenTablesReadBack() throws {
        let path = tempPath("written.fits")
        let specs = [ColumnSpec("a", .columnFloat64, unit: "deg"), ColumnSpec("b", .columnFloat32), ColumnSpec("c", .columnInt64),
                     ColumnSpec("d", .columnInt32), ColumnSpec("e", .columnInt16), ColumnSpec("f", .columnUint8), ColumnSpec("g", .columnBool)]
        let data: [ColumnData] = [.float64([1.5, -2, .nan]), .float32([1, 2, 3]), .int64([Int64.max, 0, -5]), .int32([1, -2, 3]),
                                  .int16([-7, 8, 9]), .uint8([0, 255, 7]), .bool([true, false, true])]
        try FITSTableWriter.write(to: path, columns: specs, data: data)
        let t = try FITSTableReader(path: path)
        #expect(t.columns.map(\.name) == specs.map(\.name))
        #expect(t.columns[0].unit == "deg")
        for (k, s) in specs.enumerated() where k != 0 { #expect(try t.read(column: s.name) == data[k], "\(s.name)") }
        guard case .float64(let a) = try t.read(column: "a") else { return }
        #expect(a[0] == 1.5 && a[1] == -2 && a[2].isNaN)
    }

    @Test func tablesWrittenABatchAtATimeReadBackWhole() throws {
        let path = tempPath("batches.fits")
        let specs = [ColumnSpec("id", .columnInt64), ColumnSpec("ra", .columnFloat64), ColumnSpec("flux", .columnFloat32), ColumnSpec("ok", .columnBool)]
        // Batches of 0, 1, 2,879 (a block's worth of bytes is 2,880) and 10,000 rows.
        let sizes = [0, 1, 2_879, 10_000, 3]
        let table = try FITSTableAppender(path: path, columns: specs, extensionName: "RESULT")
        var ids: [Int64] = [], ras: [Double] = [], fluxes: [Float] = [], oks: [Bool] = []
        for n in sizes {
            let base = ids.count
            let batch: [ColumnData] = [.int64((0..<n).map { Int64(base + $0) * 7 - 3 }), .float64((0..<n).map { Double(base + $0) * 0.001 }),
                                       .float32((0..<n).map { Float(base + $0) / 3 }), .bool((0..<n).map { (base + $0) % 3 == 0 })]
            try table.append(batch)
            guard case .int64(let i) = batch[0], case .float64(let r) = batch[1], case .float32(let f) = batch[2], case .bool(let o) = batch[3] else { return }
            (ids, ras, fluxes, oks) = (ids + i, ras + r, fluxes + f, oks + o)
            // Nothing at the path until the table is finished.
            #expect(!FileManager.default.fileExists(atPath: path))
        }
        // Rows whose columns are not the table's are refused by name, and the table goes on.
        #expect(throws: FITSError.self) { try table.append([.float64([1]), .float64([1]), .float32([1]), .bool([true])]) }
        #expect(throws: FITSError.self) { try table.append([.int64([1, 2]), .float64([1]), .float32([1]), .bool([true])]) }
        try table.finish()
        let t = try FITSTableReader(path: path)
        #expect(t.rowCount == ids.count)
        #expect(try t.read(column: "id") == .int64(ids))
        #expect(try t.read(column: "ra") == .float64(ras))
        #expect(try t.read(column: "flux") == .float32(fluxes))
        #expect(try t.read(column: "ok") == .bool(oks))
        // A table discarded leaves nothing, and what was at the path stays.
        let other = try FITSTableAppender(path: path, columns: specs)
        try other.append([.int64([1]), .float64([1]), .float32([1]), .bool([true])])
        other.discard()
        #expect(try FITSTableReader(path: path).rowCount == ids.count)
        let folder = (path as NSString).deletingLastPathComponent
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder).filter { $0.contains("batches.fits.tmp") }.isEmpty)
    }
}

/// Headers cfitsio would mis-handle are refused before cfitsio reads them (found by fuzzing:
/// Debian's cfitsio overflows a buffer on an unquoted 70-character TTYPE and glibc aborts).
struct FITSHeaderCheckTests {
    static let regressions = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path + "/Fuzz/regressions/fits/"

    @Test func overflowingHeadersAreRefusedWithAMessage() {
        for (file, why) in [("cfitsio-ttype-overflow-nonascii", "not printable ASCII"), ("cfitsio-ttype-overflow-unquoted", "TTYPE1 must be a quoted string")] {
            do {
                _ = try FITSTableReader(path: Self.regressions + file)
                Issue.record("\(file) was opened")
            } catch {
                #expect("\(error)".contains(why), "\(error)")
            }
        }
    }
}

/// Headers whose data sizes this check and cfitsio could read differently are refused: the walk
/// must never stop early while cfitsio reads on into headers nobody checked.
struct FITSHeaderWalkTests {
    /// A header of `cards` (keyword, value), padded to whole blocks, then `data` zero bytes.
    static func unit(_ cards: [(String, String)], data: Int = 0) -> [UInt8] {
        var text = ""
        for (k, v) in cards { text += (k.padding(toLength: 8, withPad: " ", startingAt: 0) + "= " + v).padding(toLength: 80, withPad: " ", startingAt: 0) }
        text += "END".padding(toLength: 80, withPad: " ", startingAt: 0)
        var bytes = Array(text.utf8)
        bytes += [UInt8](repeating: 0x20, count: (2880 - bytes.count % 2880) % 2880)
        return bytes + [UInt8](repeating: 0, count: (data + 2879) / 2880 * 2880)
    }
    static let primary = unit([("SIMPLE", "T"), ("BITPIX", "8"), ("NAXIS", "0")])

    func refusal(_ bytes: [UInt8]) throws -> String {
        let path = tempPath("walk.fits")
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        do {
            try FITSHeaderCheck.validate(path: path)
            return "accepted"
        } catch {
            return "\(error)"
        }
    }

    @Test func sizesTheWalkCannotFollowAreRefused() throws {
        let image = { (bitpix: String, axes: [String]) in
            Self.unit([("XTENSION", "'IMAGE   '"), ("BITPIX", bitpix), ("NAXIS", "\(axes.count)")]
                      + axes.enumerated().map { ("NAXIS\($0.offset + 1)", $0.element) } + [("PCOUNT", "0"), ("GCOUNT", "1")])
        }
        // A small image: accepted (with its data).
        #expect(try refusal(Self.primary + image("-32", ["10", "10"]) + [UInt8](repeating: 0, count: 2880)) == "accepted")
        // BITPIX of Int.min: abs() of it trapped.
        #expect(try refusal(Self.primary + image("-9223372036854775808", ["1"])).contains("BITPIX, PCOUNT or GCOUNT out of range"))
        #expect(try refusal(Self.primary + image("12", ["1"])).contains("BITPIX, PCOUNT or GCOUNT out of range"))
        // A size whose product overflows 64 bits (cfitsio's wraps to a small one and reads on).
        #expect(try refusal(Self.primary + image("-64", ["2305843009213694312"])).contains("the data size overflows"))
        // A data unit past the end of the file (a table of 10^15 rows in a few blocks).
        #expect(try refusal(Self.primary + image("8", ["1000000000000000"])).contains("runs past the end of the file"))
        // Random groups: cfitsio sizes them without NAXIS1.
        let groups = Self.unit([("SIMPLE", "T"), ("BITPIX", "8"), ("NAXIS", "2"), ("NAXIS1", "0"), ("NAXIS2", "1"), ("GROUPS", "T"), ("PCOUNT", "0"), ("GCOUNT", "1")])
        #expect(try refusal(groups + [UInt8](repeating: 0, count: 2880)).contains("random groups"))
        // More units than the walk looks at: refused, not left unchecked.
        let empty = Self.unit([("XTENSION", "'IMAGE   '"), ("BITPIX", "8"), ("NAXIS", "0"), ("PCOUNT", "0"), ("GCOUNT", "1")])
        let many = Self.primary + Array([[UInt8]](repeating: empty, count: FITSHeaderCheck.maxUnits).joined())
        #expect(try refusal(many).contains("more than \(FITSHeaderCheck.maxUnits) header-and-data units"))
        #expect(try refusal(Array(many.dropLast(2880))) == "accepted")
    }
}

/// FITS checksums (the convention astropy checks) computed by us: the same planes make the same
/// bytes, and every HDU then sums to −0 as 32-bit ones'-complement words.
struct FITSChecksumTests {
    @Test func sameInputSameBytesAndEachHDUSumsToNegativeZero() throws {
        let pixels = (0..<(37 * 23)).map { Float($0 % 97) * 1.5 - 20 }
        let a = try FITSMemoryWriter.floatImage(pixels, width: 37, height: 23, keywords: [FITSKeyword("ORDER", .integer(3))], name: "t")
        Thread.sleep(forTimeInterval: 1.1)
        let b = try FITSMemoryWriter.floatImage(pixels, width: 37, height: 23, keywords: [FITSKeyword("ORDER", .integer(3))], name: "t")
        #expect(a == b)
        #expect(a.count % 2880 == 0)
        #expect(FITSChecksum.sum(a[...]) == 0xFFFF_FFFF)
        let text = String(decoding: a.prefix(2880), as: UTF8.self)
        #expect(text.contains("CHECKSUM= '") && text.contains("DATASUM = '"))
        // One bit changed in the data breaks the sum.
        var c = a
        c[2880 + 5] ^= 1
        #expect(FITSChecksum.sum(c[...]) != 0xFFFF_FFFF)
    }
}
