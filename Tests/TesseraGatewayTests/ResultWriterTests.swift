import Foundation
import Testing
@testable import TesseraGateway
import TesseraADQL

/// The gateway's own encoders against independent ones: Foundation's base64, and hand-decoded
/// form fields (as `urllib.parse.parse_qs` reads them).
struct ResultWriterTests {
    @Test func base64MatchesFoundations() {
        var rng = SystemRandomNumberGenerator()
        for n in [0, 1, 2, 3, 4, 56, 57, 58, 1000] {
            let bytes = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            var out: [UInt8] = []
            ResultWriter.base64(bytes[...], into: &out)
            let ours = String(decoding: out, as: UTF8.self).replacingOccurrences(of: "\n", with: "")
            #expect(ours == Data(bytes).base64EncodedString(), "\(n) bytes")
            // Lines of at most 76 characters, as MIME has them.
            #expect(String(decoding: out, as: UTF8.self).split(separator: "\n").allSatisfy { $0.count <= 76 })
        }
    }

    @Test func formFieldsDecodeAsBrowsersEncode() {
        var out: [String: String] = [:]
        Gateway.formFields("query=SELECT+TOP+1+%2A+FROM+t%20WHERE+x%3E%3D1&lang=ADQL&Lang=SQL&empty=&novalue&bad=%zz%4&utf=%C3%A9t%C3%A9&=x", into: &out)
        #expect(out["QUERY"] == "SELECT TOP 1 * FROM t WHERE x>=1")
        #expect(out["LANG"] == "ADQL")  // the first value of a name, whatever its case
        #expect(out["EMPTY"] == "" && out["NOVALUE"] == "")
        #expect(out["BAD"] == "%zz%4")
        #expect(out["UTF"] == "été")
        #expect(out[""] == nil)
        var invalid: [String: String] = [:]
        Gateway.formFields("q=%FF%FE", into: &invalid)
        #expect(invalid["Q"] == "\u{FFFD}\u{FFFD}")
    }

    @Test func textIsEscapedForEachFormat() async throws {
        let table = TAPTable(local: [.init("name", "char", ""), .init("n", "int", "")],
                             rows: [[.text("a<b & \"c\", d\ne"), .integer(7)], [.null, .null]], overflow: true)
        func written(_ f: ResultFormat) async throws -> String {
            var out: [UInt8] = []
            try await ResultWriter(table: table, format: f).write { out += $0 }
            return String(decoding: out, as: UTF8.self)
        }
        let csv = try await written(.csv)
        #expect(csv == "name,n\r\n\"a<b & \"\"c\"\", d\ne\",7\r\n,\r\n")
        let td = try await written(.votableTabledata)
        #expect(td.contains("<TR><TD>a&lt;b &amp; &quot;c&quot;, d\ne</TD><TD>7</TD></TR>"))
        #expect(td.contains("<TR><TD></TD><TD></TD></TR>"))
        // The overflow flag comes after the table, as TAP 1.1 §5.3 places it.
        let overflow = try #require(td.range(of: "value=\"OVERFLOW\""))
        #expect(try #require(td.range(of: "</TABLE>")).upperBound <= overflow.lowerBound)
        let json = try await written(.json)
        let doc = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        let rows = try #require(doc["data"] as? [[Any]])
        #expect(rows[0][0] as? String == "a<b & \"c\", d\ne" && rows[0][1] as? Int == 7 && rows[1][0] is NSNull)
    }
}

/// What reaches links from a request's Host, and what counts as loopback for `--anonymous`.
struct AddressTests {
    @Test func onlyPlainAuthoritiesReachLinks() {
        for ok in ["127.0.0.1:7780", "tap.example.org", "tap.example.org:443", "[::1]:7780", "[fe80::1]"] {
            #expect(Gateway.isPlainAuthority(ok), "\(ok)")
        }
        for bad in ["", "a&b", "evil.example/x", "a b", "h:99999", "h:", "[::1", "[zz]:1", "tap.example.org:80\"><x", "user@host", String(repeating: "a", count: 300)] {
            #expect(!Gateway.isPlainAuthority(bad), "\(bad)")
        }
    }

    @Test func publicURLsArePlainHTTP() {
        #expect(Gateway.publicURL("https://archive.example/tessera/") == "https://archive.example/tessera")
        #expect(Gateway.publicURL("http://10.0.0.5:8080") == "http://10.0.0.5:8080")
        for bad in ["ftp://x", "https://", "https:///x", "https://a b", "https://x\"/y", "https://user@host/", "javascript:alert(1)", "https://h:99999/",
                    "https://h/x?y", "https://h/#f", "xhttps://h"] {
            #expect(Gateway.publicURL(bad) == nil, "\(bad)")
        }
    }

    @Test func loopbackIsNumericOrLocalhost() {
        for ok in ["127.0.0.1", "127.1.2.3", "localhost", "::1", "[::1]"] { #expect(Gateway.isLoopbackHost(ok), "\(ok)") }
        for bad in ["127.evil.example", "0.0.0.0", "10.0.0.1", "127.0.0", "127.0.0.256", "::", ""] { #expect(!Gateway.isLoopbackHost(bad), "\(bad)") }
    }
}
