import Foundation
import TesseraADQL
import TesseraCompute

/// The formats an answer can be written in (TAP's RESPONSEFORMAT).
public enum ResultFormat: String, Sendable, CaseIterable {
    case votableBinary2, votableTabledata, csv, json

    /// The format a RESPONSEFORMAT value names, or nil: TAP's short names and the MIME types.
    public init?(responseFormat raw: String) {
        let v = raw.lowercased().filter { $0 != " " }
        switch v {
        case "", "votable", "application/x-votable+xml", "text/xml", "application/x-votable+xml;serialization=binary2", "votable/b2", "votable/binary2":
            self = .votableBinary2
        case "application/x-votable+xml;serialization=tabledata", "votable/td", "votable/tabledata":
            self = .votableTabledata
        case "csv", "text/csv", "text/csv;header=present":
            self = .csv
        case "json", "application/json":
            self = .json
        default:
            return nil
        }
    }

    public var contentType: String {
        switch self {
        case .votableBinary2: "application/x-votable+xml;serialization=BINARY2"
        case .votableTabledata: "application/x-votable+xml;serialization=TABLEDATA"
        case .csv: "text/csv;header=present"
        case .json: "application/json"
        }
    }

    /// What the capabilities document lists.
    public static let advertised: [(mime: String, alias: String)] = [
        ("application/x-votable+xml", "votable"),
        ("application/x-votable+xml;serialization=TABLEDATA", "votable/td"),
        ("application/x-votable+xml;serialization=BINARY2", "votable/b2"),
        ("text/csv;header=present", "csv"),
        ("application/json", "json"),
    ]
}

/// Writes an answer as a sequence of chunks of about `chunkBytes`, so that the HTTP layer can
/// send each as it is made and wait for a slow reader before making the next: the gateway's
/// memory for an answer being sent is the answer plus one chunk.
public struct ResultWriter: Sendable {
    public let table: TAPTable
    public let format: ResultFormat
    /// Lines of `<INFO>` before the table (the query, the service's notes).
    public let infos: [(name: String, value: String)]
    public static let chunkBytes = 1 << 16

    public init(table: TAPTable, format: ResultFormat, infos: [(name: String, value: String)] = []) {
        self.table = table
        self.format = format
        self.infos = infos
    }

    /// Calls `emit` with each chunk, in order.
    public func write(_ emit: ([UInt8]) async throws -> Void) async throws {
        var out: [UInt8] = []
        out.reserveCapacity(Self.chunkBytes + 4096)
        func flushIfFull() async throws {
            if out.count >= Self.chunkBytes {
                try await emit(out)
                out.removeAll(keepingCapacity: true)
            }
        }
        switch format {
        case .csv:
            out.append(contentsOf: (table.fields.map { ResultTable.csvField($0.name) }.joined(separator: ",") + "\r\n").utf8)
            for r in 0..<table.rowCount {
                for (c, column) in table.columns.enumerated() {
                    if c > 0 { out.append(UInt8(ascii: ",")) }
                    Self.text(column, r, into: &out, csv: true)
                }
                out += [13, 10]
                try await flushIfFull()
            }
        case .json:
            var head = "{\"metadata\":["
            head += table.fields.map { "{\"name\":\(ResultTable.jsonString($0.name)),\"datatype\":\"\($0.datatype)\",\"unit\":\(ResultTable.jsonString($0.unit)),\"ucd\":\(ResultTable.jsonString($0.ucd))}" }.joined(separator: ",")
            head += "],\"overflow\":\(table.overflow),\"data\":["
            out.append(contentsOf: head.utf8)
            for r in 0..<table.rowCount {
                if r > 0 { out.append(UInt8(ascii: ",")) }
                out.append(UInt8(ascii: "["))
                for (c, column) in table.columns.enumerated() {
                    if c > 0 { out.append(UInt8(ascii: ",")) }
                    Self.jsonValue(column, r, into: &out)
                }
                out.append(UInt8(ascii: "]"))
                try await flushIfFull()
            }
            out.append(contentsOf: "]}\n".utf8)
        case .votableTabledata, .votableBinary2:
            out.append(contentsOf: votableHead().utf8)
            if format == .votableTabledata {
                out.append(contentsOf: "<DATA><TABLEDATA>\n".utf8)
                for r in 0..<table.rowCount {
                    out.append(contentsOf: "<TR>".utf8)
                    for column in table.columns {
                        out.append(contentsOf: "<TD>".utf8)
                        Self.text(column, r, into: &out, csv: false)
                        out.append(contentsOf: "</TD>".utf8)
                    }
                    out.append(contentsOf: "</TR>\n".utf8)
                    try await flushIfFull()
                }
                out.append(contentsOf: "</TABLEDATA></DATA>\n".utf8)
            } else {
                out.append(contentsOf: "<DATA><BINARY2><STREAM encoding=\"base64\">\n".utf8)
                // Rows are packed into a staging buffer and base64-encoded 3 bytes at a time;
                // the 0–2 bytes left over carry into the next round.
                var raw: [UInt8] = []
                raw.reserveCapacity(Self.chunkBytes)
                let flagBytes = (table.columns.count + 7) / 8
                for r in 0..<table.rowCount {
                    let flagAt = raw.count
                    raw.append(contentsOf: repeatElement(0, count: flagBytes))
                    for (c, column) in table.columns.enumerated() {
                        if Self.binary(column, r, datatype: table.fields[c].datatype, into: &raw) { raw[flagAt + c / 8] |= UInt8(0x80) >> UInt8(c % 8) }
                    }
                    if raw.count >= Self.chunkBytes / 4 * 3 {
                        let whole = raw.count / 3 * 3
                        Self.base64(raw[0..<whole], into: &out)
                        raw.removeFirst(whole)
                        try await flushIfFull()
                    }
                }
                Self.base64(raw[...], into: &out)
                out.append(contentsOf: "\n</STREAM></BINARY2></DATA>\n".utf8)
            }
            out.append(contentsOf: "</TABLE>\n".utf8)
            if table.overflow { out += Array("<INFO name=\"QUERY_STATUS\" value=\"OVERFLOW\"/>\n".utf8) }
            out.append(contentsOf: "</RESOURCE>\n</VOTABLE>\n".utf8)
        }
        if !out.isEmpty { try await emit(out) }
    }

    func votableHead() -> String {
        var s = Self.votableOpen
        s += "<RESOURCE type=\"results\">\n<INFO name=\"QUERY_STATUS\" value=\"OK\"/>\n"
        for i in infos { s += "<INFO name=\"\(Self.xml(i.name))\" value=\"\(Self.xml(i.value))\"/>\n" }
        s += "<TABLE>\n"
        for f in table.fields {
            s += "<FIELD name=\"\(Self.xml(f.name))\" datatype=\"\(f.datatype)\""
            if f.datatype == "char" { s += " arraysize=\"*\"" }
            if !f.unit.isEmpty { s += " unit=\"\(Self.xml(f.unit))\"" }
            if !f.ucd.isEmpty { s += " ucd=\"\(Self.xml(f.ucd))\"" }
            if !f.xtype.isEmpty { s += " xtype=\"\(Self.xml(f.xtype))\"" }
            s += f.description.isEmpty ? "/>\n" : "><DESCRIPTION>\(Self.xml(f.description))</DESCRIPTION></FIELD>\n"
        }
        return s
    }

    static let votableOpen = """
        <?xml version="1.0" encoding="UTF-8"?>
        <VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">

        """

    /// The error document TAP returns for a query that failed (`QUERY_STATUS` = `ERROR`).
    public static func errorVOTable(_ message: String) -> String {
        votableOpen + "<RESOURCE type=\"results\">\n<INFO name=\"QUERY_STATUS\" value=\"ERROR\">\(xml(message))</INFO>\n</RESOURCE>\n</VOTABLE>\n"
    }

    // MARK: Values

    static func text(_ column: TAPColumn, _ r: Int, into out: inout [UInt8], csv: Bool) {
        switch column {
        case .doubles(let a): number(a[r], into: &out)
        case .floats(let a): number(Double(a[r]), into: &out, float: a[r])
        case .longs(let a): out.append(contentsOf: a[r].description.utf8)
        case .bools(let a): out.append(contentsOf: (a[r] ? "T" : "F").utf8)
        case .cells(let a): cell(a[r], into: &out, csv: csv)
        }
    }

    /// A number as text: the shortest form that reads back exactly, empty for NaN (null).
    static func number(_ v: Double, into out: inout [UInt8], float: Float? = nil) {
        if v.isNaN { return }
        if v.isInfinite {
            out.append(contentsOf: (v > 0 ? "+Inf" : "-Inf").utf8)
            return
        }
        out.append(contentsOf: (float.map(\.description) ?? v.description).utf8)
    }

    static func cell(_ c: LocalCell, into out: inout [UInt8], csv: Bool) {
        switch c {
        case .null: return
        case .integer(let v): out.append(contentsOf: v.description.utf8)
        case .real(let v): number(v, into: &out)
        case .text(let s): out.append(contentsOf: (csv ? ResultTable.csvField(s) : xml(s)).utf8)
        }
    }

    static func jsonValue(_ column: TAPColumn, _ r: Int, into out: inout [UInt8]) {
        switch column {
        case .doubles(let a): out.append(contentsOf: (a[r].isFinite ? a[r].description : "null").utf8)
        case .floats(let a): out.append(contentsOf: (a[r].isFinite ? a[r].description : "null").utf8)
        case .longs(let a): out.append(contentsOf: a[r].description.utf8)
        case .bools(let a): out.append(contentsOf: (a[r] ? "true" : "false").utf8)
        case .cells(let a):
            switch a[r] {
            case .null: out.append(contentsOf: "null".utf8)
            case .integer(let v): out.append(contentsOf: v.description.utf8)
            case .real(let v): out.append(contentsOf: (v.isFinite ? v.description : "null").utf8)
            case .text(let s): out.append(contentsOf: ResultTable.jsonString(s).utf8)
            }
        }
    }

    /// Appends one BINARY2 value (big-endian); returns whether it is null.
    static func binary(_ column: TAPColumn, _ r: Int, datatype: String, into out: inout [UInt8]) -> Bool {
        func be<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.bigEndian) { out += $0 } }
        switch column {
        case .doubles(let a): be(a[r].bitPattern); return a[r].isNaN
        case .floats(let a): be(a[r].bitPattern); return a[r].isNaN
        case .longs(let a): be(a[r]); return false
        case .bools(let a): out.append(a[r] ? UInt8(ascii: "T") : UInt8(ascii: "F")); return false
        case .cells(let a):
            // The field's datatype decides the width (text is a 0-length array when NULL).
            func integer(_ v: Int64) {
                switch datatype {
                case "long": be(v)
                case "short": be(Int16(clamping: v))
                case "unsignedByte": out.append(UInt8(clamping: v))
                case "float": be(Float(v).bitPattern)
                case "double": be(Double(v).bitPattern)
                default: be(Int32(clamping: v))
                }
            }
            switch a[r] {
            case .null:
                switch datatype {
                case "float": be(Float.nan.bitPattern)
                case "double": be(Double.nan.bitPattern)
                case "char": be(UInt32(0))
                default: integer(0)
                }
                return true
            case .integer(let v):
                integer(v)
                return false
            case .real(let v):
                if datatype == "float" { be(Float(v).bitPattern) } else { be(v.bitPattern) }
                return v.isNaN
            case .text(let s):
                let u = Array(s.utf8)
                be(UInt32(u.count))
                out += u
                return false
            }
        }
    }

    /// Base64 of `bytes` in lines of 76 characters (Foundation's encoder), each ending in `\n`.
    static func base64(_ bytes: ArraySlice<UInt8>, into out: inout [UInt8]) {
        guard !bytes.isEmpty else { return }
        out += Data(bytes).base64EncodedData(options: [.lineLength76Characters, .endLineWithLineFeed])
        out.append(10)
    }

    static func xml(_ s: String) -> String {
        ResultTable.replacing(s, where: { $0 < 0x20 || $0 == UInt8(ascii: "&") || $0 == UInt8(ascii: "<") || $0 == UInt8(ascii: ">") || $0 == UInt8(ascii: "\"") }) { ch in
            switch ch {
            case "&": "&amp;"
            case "<": "&lt;"
            case ">": "&gt;"
            case "\"": "&quot;"
            // XML 1.0 forbids most control characters even as references.
            case _ where ch.value < 0x20 && ch != "\n" && ch != "\t" && ch != "\r": "?"
            default: nil
            }
        }
    }
}
