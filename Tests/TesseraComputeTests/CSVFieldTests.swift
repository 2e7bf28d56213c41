import Foundation
import Testing
import TesseraCompute

/// CSV fields as RFC 4180 has them: a field with a comma, a quote or a line break is quoted, its
/// quotes doubled; any other is written as it is.
struct CSVFieldTests {
    @Test func fieldsAreQuotedOnlyWhenTheyMustBe() {
        let cases: [(String, String)] = [
            ("plain", "plain"),
            ("", ""),
            ("-1.5e-07", "-1.5e-07"),
            ("a,b", "\"a,b\""),
            ("say \"hi\"", "\"say \"\"hi\"\"\""),
            ("two\nlines", "\"two\nlines\""),
            ("cr\rlf", "\"cr\rlf\""),
            ("\"", "\"\"\"\""),
            ("Ångström, µJy", "\"Ångström, µJy\""),
            ("naïve", "naïve"),
        ]
        for (field, written) in cases {
            #expect(ResultTable.csvField(field) == written, "\(field.debugDescription)")
        }
    }
}

/// JSON strings as RFC 8259 has them, read back by Foundation's own JSON parser.
struct JSONStringTests {
    @Test func everyStringReadsBackAsItself() throws {
        let controls = String(String.UnicodeScalarView((0..<0x20).compactMap(Unicode.Scalar.init)))
        let cases = ["plain", "", "say \"hi\"", "back\\slash", "two\nlines", "tab\there", controls, "Ångström µJy 🌌", "\u{7F}\u{2028}", "mag(\"r\")"]
        for s in cases {
            let written = ResultTable.jsonString(s)
            let data = Data("[\(written)]".utf8)
            let back = try JSONSerialization.jsonObject(with: data) as? [String]
            #expect(back == [s], "\(s.debugDescription) written as \(written)")
        }
        #expect(ResultTable.jsonString("a\u{1}b") == "\"a\\u0001b\"")
        #expect(ResultTable.jsonString("plain") == "\"plain\"")
    }
}
