import Foundation
import Testing
import TesseraADQL
@testable import TesseraGateway
import TesseraProtocol
import TesseraStorage
import TesseraTestKit

/// TAP UPLOAD's parts: VOTables written by astropy in each serialization (fixtures, with the
/// values astropy wrote as JSON: scripts/make_votable_fixtures.py), multipart bodies, the
/// addresses a URL upload may reach, and text columns in queries.
struct UploadTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")

    struct Expected: Decodable {
        var id: [Int64]
        var ra: [Double]
        var dec: [Double]
        var mag: [Double?]
        var flag: [Int64?]
        var good: [Bool]
        var band: [UInt8]
        var name: [String?]
    }

    func read(_ file: String, limits: UploadLimits = UploadLimits()) throws -> UploadedTable {
        let bytes = try [UInt8](Data(contentsOf: Self.fixtures.appendingPathComponent(file)))
        return try VOTableReader.read(bytes, limits: limits)
    }

    func refusal(_ xml: String, limits: UploadLimits = UploadLimits()) -> String {
        do {
            _ = try VOTableReader.read(Array(xml.utf8), limits: limits)
            return "read"
        } catch {
            return error.message
        }
    }

    @Test(arguments: ["tabledata", "binary", "binary2"])
    func astropysVOTablesReadBack(_ format: String) throws {
        let expected = try JSONDecoder().decode(Expected.self, from: Data(contentsOf: Self.fixtures.appendingPathComponent("upload_expected.json")))
        let t = try read("upload_\(format).xml")
        #expect(t.rows == expected.id.count)
        #expect(t.columns.map(\.name) == ["id", "ra", "dec", "mag", "flag", "good", "band", "name"])
        #expect(t.columns[1].unit == "deg" && t.columns[3].unit == "mag")
        func values(_ k: Int) -> UploadedTable.Values { t.columns[k].values }
        guard case .numbers(.int64(let id)) = values(0), case .numbers(.float64(let ra)) = values(1), case .numbers(.float64(let dec)) = values(2),
              case .numbers(.float32(let mag)) = values(3), case .integersWithNulls(.columnInt16, let flag) = values(4),
              case .numbers(.bool(let good)) = values(5), case .numbers(.uint8(let band)) = values(6), case .text(let name) = values(7) else {
            Issue.record("unexpected column types: \(t.columns.map(\.values))")
            return
        }
        #expect(id == expected.id && ra == expected.ra && dec == expected.dec)
        #expect(mag.map { $0.isNaN ? nil : Double($0) } == expected.mag.map { $0.map { Double(Float($0)) } })
        #expect(flag == expected.flag && good == expected.good && band == expected.band && name == expected.name)
        // Stored, an integer with NULLs is a double (NULL is NaN).
        guard case .float64(let stored)? = values(4).stored else { Issue.record("flag is not stored as doubles"); return }
        #expect(zip(stored, expected.flag).allSatisfy { value, flag in flag.map { Double($0) == value } ?? value.isNaN })
        #expect(TAPService.positionColumns(t)! == ("ra", "dec"))
    }

    @Test func aLargeTabledataDocumentReads() throws {
        // 100,000 rows of TABLEDATA, about 11 MB: more than libxml2 takes in one chunk (10 MB).
        var xml = "<?xml version=\"1.0\"?><VOTABLE><RESOURCE><TABLE><FIELD name=\"id\" datatype=\"long\"/><FIELD name=\"ra\" datatype=\"double\"/>"
            + "<FIELD name=\"name\" datatype=\"char\" arraysize=\"*\"/><DATA><TABLEDATA>\n"
        for i in 0..<100_000 { xml += "  <TR>\n   <TD>\(i)</TD>\n   <TD>\(Double(i) / 3 + 0.123456789012345)</TD>\n   <TD>source number \(i) of this upload</TD>\n  </TR>\n" }
        xml += "</TABLEDATA></DATA></TABLE></RESOURCE></VOTABLE>\n"
        #expect(xml.utf8.count > 10_000_000)
        let t = try VOTableReader.read(Array(xml.utf8))
        guard case .numbers(.int64(let id)) = t.columns[0].values, case .text(let name) = t.columns[2].values else { Issue.record("types"); return }
        #expect(id.count == 100_000 && id.last == 99_999 && name.last == "source number 99999 of this upload")
    }

    @Test func hostileOrUnreadableDocumentsAreRefused() {
        let head = "<VOTABLE><RESOURCE><TABLE>"
        #expect(refusal("<?xml version=\"1.0\"?><!DOCTYPE v [<!ENTITY a \"aaaa\">]><VOTABLE/>").contains("document type declaration"))
        #expect(refusal(head + "<FIELD name=\"v\" datatype=\"double\" arraysize=\"3\"/></TABLE></RESOURCE></VOTABLE>").contains("is an array (arraysize 3)"))
        #expect(refusal(head + "<FIELD name=\"z\" datatype=\"doubleComplex\"/></TABLE></RESOURCE></VOTABLE>").contains("datatype `doubleComplex`"))
        #expect(refusal(head + "<FIELD name=\"a\" datatype=\"int\"/><DATA><FITS/></DATA></TABLE></RESOURCE></VOTABLE>").contains("FITS serialization"))
        #expect(refusal(head + "<FIELD name=\"a\" datatype=\"int\"/><DATA><BINARY2><STREAM href=\"http://x/y\"/></BINARY2></DATA></TABLE></RESOURCE></VOTABLE>").contains("href"))
        #expect(refusal(head + "<FIELD name=\"a\" datatype=\"short\"/><DATA><TABLEDATA><TR><TD>1</TD></TR><TR><TD>70000</TD></TR></TABLEDATA></DATA></TABLE></RESOURCE></VOTABLE>")
            .contains("row 2, column `a`: `70000` is not an integer of its type"))
        #expect(refusal(head + "<FIELD name=\"a\" datatype=\"int\"/><FIELD name=\"b\" datatype=\"int\"/><DATA><TABLEDATA><TR><TD>1</TD></TR></TABLEDATA></DATA></TABLE></RESOURCE></VOTABLE>")
            .contains("row 1 has 1 cells for the table's 2 columns"))
        #expect(refusal(head + "<FIELD name=\"a\" datatype=\"int\"/><DATA><TABLEDATA><TR><TD>1</TD><TD>2</TD></TR></TABLEDATA></DATA></TABLE></RESOURCE></VOTABLE>")
            .contains("row 1 has more cells than the table's 1 columns"))
        #expect(refusal(head + "<FIELD name=\"a\" datatype=\"int\"/><DATA><TABLEDATA><TR><TD>1</TD>").contains("not well-formed"))
        #expect(refusal(head + "<FIELD name=\"a\" datatype=\"int\"/><DATA><BINARY2><STREAM encoding=\"base64\">AAAA</STREAM></BINARY2></DATA></TABLE></RESOURCE></VOTABLE>")
            .contains("ends inside row 1"))
        var small = UploadLimits()
        small.rows = 2
        let rows = (0..<3).map { "<TR><TD>\($0)</TD></TR>" }.joined()
        #expect(refusal(head + "<FIELD name=\"a\" datatype=\"int\"/><DATA><TABLEDATA>\(rows)</TABLEDATA></DATA></TABLE></RESOURCE></VOTABLE>", limits: small)
            .contains("more than 2 rows, this service's limit"))
        #expect(refusal("<VOTABLE/>").contains("no TABLE"))
        #expect(refusal(head + "<FIELD name=\"a\" datatype=\"int\"/><DATA><TABLEDATA><TR><TD>1</TD></TR></TABLEDATA></DATA><FIELD name=\"b\" datatype=\"int\"/></TABLE></RESOURCE></VOTABLE>")
            .contains("a FIELD after the table's DATA"))
        #expect(refusal(head + "<FIELD name=\"a\" datatype=\"char\" arraysize=\"0\"/></TABLE></RESOURCE></VOTABLE>").contains("arraysize `0`"))
        var fewCells = UploadLimits()
        fewCells.cells = 5
        #expect(refusal(head + "<FIELD name=\"a\" datatype=\"int\"/><FIELD name=\"b\" datatype=\"int\"/><DATA><TABLEDATA>"
                        + String(repeating: "<TR><TD>1</TD><TD>2</TD></TR>", count: 3) + "</TABLEDATA></DATA></TABLE></RESOURCE></VOTABLE>", limits: fewCells)
            .contains("more than 5 cells (rows × columns)"))
    }

    @Test func multipartBodiesGiveTheirParts() throws {
        let body = Array("""
            --XyZ\r
            Content-Disposition: form-data; name="QUERY"\r
            \r
            SELECT * FROM TAP_UPLOAD.t\r
            --XyZ\r
            Content-Disposition: form-data; name="t"; filename="t.xml"\r
            Content-Type: application/x-votable+xml\r
            \r
            <VOTABLE>\r
            --XyZ-not-the-boundary</VOTABLE>\r
            --XyZ--\r

            """.utf8)
        let form = try MultipartForm.parse(body, contentType: "multipart/form-data; boundary=\"XyZ\"")
        #expect(form.fields == ["QUERY": ["SELECT * FROM TAP_UPLOAD.t"]])
        #expect(form.parts["t"].map { String(decoding: $0, as: UTF8.self) } == "<VOTABLE>\r\n--XyZ-not-the-boundary</VOTABLE>")
        func refusal(_ body: String, _ type: String = "multipart/form-data; boundary=b") -> String {
            do { _ = try MultipartForm.parse(Array(body.utf8), contentType: type); return "parsed" } catch { return error.message }
        }
        #expect(refusal("--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx", "multipart/form-data").contains("needs a boundary"))
        #expect(refusal("--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx").contains("without its closing boundary"))
        #expect(refusal("--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--").contains("no Content-Disposition"))
        #expect(refusal("--b\r\n\r\nx\r\n--b--").contains("no Content-Disposition"))  // no headers at all
        let many = (0..<70).map { "--b\r\nContent-Disposition: form-data; name=\"p\($0)\"\r\n\r\nx\r\n" }.joined() + "--b--"
        #expect(refusal(many).contains("more than 64 parts"))
    }

    @Test func uploadNamesAreIdentifiersQueriesCanUse() {
        for good in ["t", "mine", "xray_2026", String(repeating: "a", count: 64)] { #expect(TAPService.isUploadName(good), "\(good)") }
        for bad in ["", "_upload_row", "2mass", "a-b", "a b", "and", "é", String(repeating: "a", count: 65)] { #expect(!TAPService.isUploadName(bad), "\(bad)") }
    }

    @Test func urlUploadsReachPublicAddressesOnly() {
        for a in ["8.8.8.8", "93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8"] { #expect(UploadFetcher.isPublic(a), "\(a)") }
        for a in ["127.0.0.1", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
                  "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fd00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "not an address"] {
            #expect(!UploadFetcher.isPublic(a), "\(a)")
        }
        #expect(UploadFetcher.isPublic("172.32.0.1") && UploadFetcher.isPublic("11.0.0.1"))
    }

    /// A one-row table of one text column holding `characters` characters.
    func oneTextCell(_ characters: Int) throws -> UploadedTable {
        let xml = "<?xml version=\"1.0\"?><VOTABLE version=\"1.4\"><RESOURCE><TABLE><FIELD name=\"s\" datatype=\"char\" arraysize=\"*\"/><DATA><TABLEDATA><TR><TD>"
            + String(repeating: "a", count: characters) + "</TD></TR></TABLEDATA></DATA></TABLE></RESOURCE></VOTABLE>"
        return try VOTableReader.read(Array(xml.utf8))
    }

    /// Async jobs hold their uploads until they run: charged by what they hold, not by cells (a
    /// one-cell table of 20 MB of text is one cell). Twice one upload's limit (64 MiB) a user.
    @Test func asyncUploadsAreChargedByWhatTheyHold() async throws {
        let big = try oneTextCell(20 << 20)
        #expect(big.rows * big.columns.count == 1 && big.heldBytes >= 20 << 20)
        let jobs = AsyncJobs(service: TAPService(endpoint: "tcp://127.0.0.1:9"))
        let query = ["LANG": "ADQL", "QUERY": "SELECT COUNT(*) FROM TAP_UPLOAD.a"]
        let two = [TAPUpload(name: "a", table: big), TAPUpload(name: "b", table: big)]
        _ = try await jobs.create(owner: "carol", parameters: query, uploads: two)
        do throws(TAPError) {
            _ = try await jobs.create(owner: "carol", parameters: query, uploads: two)
            Issue.record("a second 40 MB of uploads was taken")
        } catch {
            #expect(error.status == 429 && error.message.contains("MiB of uploads"), "\(error.message)")
        }
        // Another user's are her own.
        _ = try await jobs.create(owner: "dan", parameters: query, uploads: two)
    }

    /// An upload without positions is answered in the gateway from rows of cells (24 bytes each,
    /// held several times): at most a million cells.
    @Test func localUploadsAreBoundedByCells() throws {
        let columns = 200, rows = 5_001
        var xml = "<?xml version=\"1.0\"?><VOTABLE version=\"1.4\"><RESOURCE><TABLE>"
        for c in 0..<columns { xml += "<FIELD name=\"c\(c)\" datatype=\"unsignedByte\"/>" }
        xml += "<DATA><TABLEDATA>"
        let row = "<TR>" + String(repeating: "<TD>1</TD>", count: columns) + "</TR>"
        xml += String(repeating: row, count: rows) + "</TABLEDATA></DATA></TABLE></RESOURCE></VOTABLE>"
        let table = try VOTableReader.read(Array(xml.utf8))
        do throws(TAPError) {
            _ = try TAPService.localTable(TAPUpload(name: "wide", table: table))
            Issue.record("\(rows) × \(columns) cells were taken")
        } catch {
            #expect(error.status == 400 && error.message.contains("\(TAPService.maxLocalUploadCells) cells"), "\(error.message)")
        }
        #expect(try TAPService.localTable(TAPUpload(name: "small", table: try oneTextCell(10))).rows.count == 1)
    }

    @Test func textColumnsAreSelectedByRowNumberAndNothingElse() throws {
        let upload = ADQLTable(schema: "TAP_UPLOAD", name: "mine", columns: [
            ADQLColumn(name: "ra", type: .columnFloat64), ADQLColumn(name: "dec", type: .columnFloat64),
            ADQLColumn(name: "name", type: .columnInt64, isText: true),
        ], raColumn: "ra", decColumn: "dec", dataset: "tapupload-mine-1", rowColumn: "_upload_row")
        var translator = ADQLTranslator(tables: [upload])
        let p = try translator.translate(try ADQLParser.parse("SELECT name, ra FROM TAP_UPLOAD.mine"), maxrec: 10)
        #expect(p.plan.dataset == "tapupload-mine-1")
        #expect(p.plan.rows.select == ["_upload_row", "ra"])
        #expect(p.fields[0].text?.table == "TAP_UPLOAD.mine" && p.fields[0].text?.column == "name" && p.fields[1].text == nil)
        let star = try translator.translate(try ADQLParser.parse("SELECT * FROM TAP_UPLOAD.mine"), maxrec: 10)
        #expect(star.plan.rows.select == ["ra", "dec", "_upload_row"] && star.fields.map(\.name) == ["ra", "dec", "name"])
        #expect(throws: ADQLError.self) { try translator.translate(try ADQLParser.parse("SELECT ra FROM TAP_UPLOAD.mine WHERE name = 'a'"), maxrec: 10) }
        #expect(throws: ADQLError.self) { try translator.translate(try ADQLParser.parse("SELECT TOP 3 ra FROM TAP_UPLOAD.mine ORDER BY name"), maxrec: 10) }
        // The answer's row numbers become the upload's text, NULL where it has none.
        #expect(TAPTable.text(at: [2, 0, 7, -1], in: ["a", nil, "c"]) == [.text("c"), .text("a"), .null, .null])
    }
}

/// Bearer tokens: a new one works at once, a removed one stops within a second.
struct TokenStoreTests {
    @Test func tokensComeAndGoWithTheFile() throws {
        let path = temporaryFolder("tokens") + "/gateway-tokens"
        let store = TokenStore(path: path)
        let alice = try TokenStore.create(user: "alice", path: path)
        #expect(store.user(for: alice) == "alice")
        let bob = try TokenStore.create(user: "bob", path: path)
        #expect(store.user(for: bob) == "bob")  // at once, though alice's was just looked up
        #expect(store.user(for: "tsr_" + String(repeating: "0", count: 64)) == nil)
        // Alice's line removed: refused once a second has passed.
        let kept = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").filter { !$0.hasPrefix("alice ") }.joined(separator: "\n") + "\n"
        try kept.write(toFile: path, atomically: true, encoding: .utf8)
        Thread.sleep(forTimeInterval: 1.1)
        #expect(store.user(for: alice) == nil)
        #expect(store.user(for: bob) == "bob")
    }
}

/// A user's uploads in progress are bounded; the rest wait, and each gets its turn.
struct PerUserSlotsTests {
    @Test func atMostTheLimitHoldAtOnceAndEveryoneGetsATurn() async {
        let slots = PerUserSlots(limit: 4)
        let peak = Peak()
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<12 {
                group.addTask {
                    await slots.acquire("ann")
                    await peak.enter()
                    try? await Task.sleep(nanoseconds: 2_000_000)
                    await peak.leave()
                    await slots.release("ann")
                }
            }
            // Another user is not held back by ann's queue.
            group.addTask {
                await slots.acquire("bob")
                await slots.release("bob")
            }
        }
        let (most, count) = (await peak.most, await peak.count)
        #expect(most == 4 && count == 12)
        let (ann, bob) = (await slots.holding("ann"), await slots.holding("bob"))
        #expect(ann == 0 && bob == 0)
    }

    actor Peak {
        var now = 0, most = 0, count = 0
        func enter() { now += 1; count += 1; most = max(most, now) }
        func leave() { now -= 1 }
    }
}
