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
