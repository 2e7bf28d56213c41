import Foundation
import CLibXML2
import TesseraProtocol

/// A table a client sent (a TAP `UPLOAD`): its columns, numbers as a catalog stores them and
/// text as the gateway keeps it.
public struct UploadedTable: Sendable {
    public struct Column: Sendable {
        public var name: String
        public var unit: String
        public var ucd: String
        public var description: String
        /// VOTable's xtype (`timestamp`, …), given back with the column.
        public var xtype: String
        public var values: Values
    }

    public enum Values: Sendable {
        case numbers(ColumnData)
        /// Integers (or booleans) of a type with NULLs.
        case integersWithNulls(ColumnType, [Int64?])
        case text([String?])

        public var count: Int {
            switch self {
            case .numbers(let d): d.count
            case .integersWithNulls(_, let v): v.count
            case .text(let t): t.count
            }
        }

        /// The numbers as a catalog stores them: integers with NULLs as doubles (NULL is NaN), as
        /// in every other ingest; nil for text.
        public var stored: ColumnData? {
            switch self {
            case .numbers(let d): d
            case .integersWithNulls(_, let v): .float64(v.map { $0.map(Double.init) ?? .nan })
            case .text: nil
            }
        }
    }

    public var columns: [Column]
    public var rows: Int { columns.first?.values.count ?? 0 }

    /// About what the table holds in memory: 8 bytes a number (9 with a NULL flag), a text's
    /// UTF-8 bytes and 16 more. (A one-cell table can hold 32 MB of text: its cells say
    /// nothing of its size.)
    public var heldBytes: Int {
        columns.reduce(0) { total, c in
            switch c.values {
            case .numbers(let d): total + 8 * d.count
            case .integersWithNulls(_, let v): total + 9 * v.count
            case .text(let t): t.reduce(total) { $0 + 16 + ($1?.utf8.count ?? 0) }
            }
        }
    }
}

/// Why a VOTable could not be read: what is wrong, and where (a row, a column, a limit).
public struct VOTableError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}

/// What an upload may hold.
public struct UploadLimits: Sendable {
    public var bytes = 32 << 20
    public var rows = 1_000_000
    public var columns = 200
    public var cells = 20_000_000
    public init() {}
}

/// Reads the first TABLE of a VOTable (1.1–1.4): TABLEDATA, BINARY or BINARY2, scalar
/// `boolean`, `bit`, `unsignedByte`, `short`, `int`, `long`, `float`, `double`, and `char` or
/// `unicodeChar` text. Everything else is refused with the column and the reason.
///
/// The document is hostile until read: no DOCTYPE (so no entities to expand), no external
/// streams, at most `limits` rows and columns; a bad value names its row and column.
public enum VOTableReader {
    public static func read(_ bytes: [UInt8], limits: UploadLimits = UploadLimits()) throws(VOTableError) -> UploadedTable {
        func refuse(_ why: String) -> VOTableError { VOTableError(message: why) }
        guard !bytes.isEmpty else { throw refuse("the document is empty: send a VOTable") }
        guard bytes.count <= limits.bytes else { throw refuse("\(bytes.count) bytes, over this service's limit of \(limits.bytes)") }
        guard String(validating: bytes, as: UTF8.self) != nil else {
            throw refuse("the document is not UTF-8 text (a VOTable upload must be UTF-8)")
        }
        // A DTD is where entities (and their expansion) live; a VOTable needs none.
        if bytes.firstIndex(of: Array("<!DOCTYPE".utf8)) != nil || bytes.firstIndex(of: Array("<!ENTITY".utf8)) != nil {
            throw refuse("a document type declaration (<!DOCTYPE or <!ENTITY>) is not accepted in an uploaded VOTable")
        }
        let reader = Reader(limits: limits)
        try bytes.withUnsafeBufferPointer { (buffer) throws(VOTableError) in
            try parse(buffer, into: reader)
        }
        guard reader.sawTable else { throw refuse("no TABLE in the document: send a VOTable") }
        guard !reader.fields.isEmpty else { throw refuse("the table has no FIELD") }
        guard reader.sawData else { throw refuse("the table has no DATA (TABLEDATA, BINARY or BINARY2)") }
        if let stream = reader.stream {
            try reader.decodeBinary(stream)
        }
        let table = UploadedTable(columns: reader.fields.map(\.column))
        guard table.columns.allSatisfy({ $0.values.count == table.rows }) else {
            throw refuse("the table's columns have different numbers of rows")
        }
        return table
    }

    /// The first error libxml2 reports while reading a document.
    final class ParseErrors {
        var first: (message: String, line: Int, column: Int)?
    }

    /// Walks the document with libxml2's pull parser (no network, no DTD; large text nodes
    /// allowed, the document's size being bounded already), handing elements and text to `reader`.
    static func parse(_ buffer: UnsafeBufferPointer<UInt8>, into reader: Reader) throws(VOTableError) {
        let options = Int32(XML_PARSE_NONET.rawValue | XML_PARSE_HUGE.rawValue | XML_PARSE_NOERROR.rawValue | XML_PARSE_NOWARNING.rawValue)
        guard let base = buffer.baseAddress,
              let xml = xmlReaderForMemory(UnsafeRawPointer(base).assumingMemoryBound(to: CChar.self), Int32(buffer.count), nil, "UTF-8", options) else {
            throw VOTableError(message: "the XML reader could not start")
        }
        defer { xmlFreeTextReader(xml) }
        let errors = ParseErrors()
        let sink = Unmanaged.passUnretained(errors).toOpaque()
        xmlTextReaderSetStructuredErrorHandler(xml, { context, error in
            guard let context, let error else { return }
            let errors = Unmanaged<ParseErrors>.fromOpaque(context).takeUnretainedValue()
            guard errors.first == nil else { return }
            let message = error.pointee.message.map { String(cString: $0).trimmingCharacters(in: .whitespacesAndNewlines) } ?? "parse error"
            errors.first = (message, Int(error.pointee.line), Int(error.pointee.int2))
        }, sink)
        func text(_ p: UnsafePointer<xmlChar>?) -> String {
            p.map { String(cString: $0) } ?? ""
        }
        while true {
            let step = xmlTextReaderRead(xml)
            if step == 0 { break }
            guard step > 0 else {
                let e = errors.first
                throw VOTableError(message: "not well-formed XML\(e.map { " at line \($0.line), column \($0.column): \($0.message)" } ?? "")")
            }
            switch UInt32(xmlTextReaderNodeType(xml)) {
            case XML_READER_TYPE_ELEMENT.rawValue:
                let name = text(xmlTextReaderConstLocalName(xml))
                try reader.start(name) { attribute in
                    // (The reader owns the value: nothing to free.)
                    guard xmlTextReaderMoveToAttribute(xml, attribute) == 1 else { return nil }
                    defer { xmlTextReaderMoveToElement(xml) }
                    return text(xmlTextReaderConstValue(xml))
                }
                if xmlTextReaderIsEmptyElement(xml) == 1 { try reader.end(name) }
            case XML_READER_TYPE_END_ELEMENT.rawValue:
                try reader.end(text(xmlTextReaderConstLocalName(xml)))
            case XML_READER_TYPE_TEXT.rawValue, XML_READER_TYPE_CDATA.rawValue,
                 XML_READER_TYPE_WHITESPACE.rawValue, XML_READER_TYPE_SIGNIFICANT_WHITESPACE.rawValue:
                // Text is turned into a string only where it is read.
                if reader.wantsText { try reader.characters(text(xmlTextReaderConstValue(xml))) }
            case XML_READER_TYPE_DOCUMENT_TYPE.rawValue:
                throw VOTableError(message: "a document type declaration is not accepted in an uploaded VOTable")
            default:
                continue
            }
        }
    }

    /// A column's type as a VOTable FIELD declares it.
    enum Kind {
        /// `bit` is a boolean too (astropy writes booleans so): one byte in the binary forms.
        case boolean, bit, uint8, int16, int32, int64, float32, float64
        /// Text; `width` is the fixed count of characters (BINARY), nil for a variable one;
        /// `unicode` for 2-byte UCS-2 characters.
        case text(width: Int?, unicode: Bool)

        var isInteger: Bool {
            switch self {
            case .uint8, .int16, .int32, .int64: true
            default: false
            }
        }
    }

    /// One column being read: its values so far.
    struct Field {
        var name: String
        var unit: String
        var ucd: String
        var xtype: String
        var description = ""
        var kind: Kind
        /// `<VALUES null="…">` of an integer column.
        var nullValue: Int64?
        var integers: [Int64] = []
        var doubles: [Double] = []
        var texts: [String?] = []
        var nulls: [Bool] = []
        var anyNull = false

        mutating func appendNull() {
            anyNull = true
            nulls.append(true)
            switch kind {
            case .text: texts.append(nil)
            case .float32, .float64: doubles.append(.nan)
            default: integers.append(0)
            }
        }

        mutating func append(integer v: Int64) {
            if let n = nullValue, n == v { return appendNull() }
            integers.append(v)
            nulls.append(false)
        }

        mutating func append(double v: Double) {
            doubles.append(v)
            nulls.append(false)
        }

        /// (An empty text is NULL, as DALI has it for `char`.)
        mutating func append(text v: String) {
            if v.isEmpty { return appendNull() }
            texts.append(v)
            nulls.append(false)
        }

        /// A TABLEDATA cell.
        mutating func append(cell raw: String, row: Int) throws(VOTableError) {
            // (Trimmed only when there is white space at an end: most cells have none.)
            let ends = raw.utf8.first.map { $0 <= 32 } == true || raw.utf8.last.map { $0 <= 32 } == true
            let s = ends ? raw.trimmingCharacters(in: .whitespacesAndNewlines) : raw
            switch kind {
            case .text:
                return append(text: raw)
            case _ where s.isEmpty:
                return appendNull()
            case .boolean, .bit:
                switch s.lowercased() {
                case "t", "true", "1": append(integer: 1)
                case "f", "false", "0": append(integer: 0)
                case "?": appendNull()
                default: throw VOTableError(message: "row \(row), column `\(name)`: `\(s.prefix(40))` is not a boolean (T, F, true, false, 1, 0 or ?)")
                }
            case .float32, .float64:
                guard let v = Double(s) else { throw VOTableError(message: "row \(row), column `\(name)`: `\(s.prefix(40))` is not a number") }
                append(double: v)
            default:
                let v: Int64? = s.hasPrefix("0x") || s.hasPrefix("0X") ? Int64(s.dropFirst(2), radix: 16) : Int64(s)
                guard let v, fits(v) else {
                    throw VOTableError(message: "row \(row), column `\(name)`: `\(s.prefix(40))` is not an integer of its type")
                }
                append(integer: v)
            }
        }

        func fits(_ v: Int64) -> Bool {
            switch kind {
            case .uint8: (0...255).contains(v)
            case .int16: Int64(Int16.min)...Int64(Int16.max) ~= v
            case .int32: Int64(Int32.min)...Int64(Int32.max) ~= v
            default: true
            }
        }

        /// The column as it is stored: integers with NULLs as doubles, booleans as booleans.
        var column: UploadedTable.Column {
            let values: UploadedTable.Values
            switch kind {
            case .text: values = .text(texts)
            case .float32: values = .numbers(.float32(doubles.map { Float($0) }))
            case .float64: values = .numbers(.float64(doubles))
            case .boolean where anyNull, .bit where anyNull: values = .integersWithNulls(.columnBool, zip(integers, nulls).map { $1 ? nil : $0 })
            case .uint8 where anyNull: values = .integersWithNulls(.columnUint8, zip(integers, nulls).map { $1 ? nil : $0 })
            case .int16 where anyNull: values = .integersWithNulls(.columnInt16, zip(integers, nulls).map { $1 ? nil : $0 })
            case .int32 where anyNull: values = .integersWithNulls(.columnInt32, zip(integers, nulls).map { $1 ? nil : $0 })
            case .int64 where anyNull: values = .integersWithNulls(.columnInt64, zip(integers, nulls).map { $1 ? nil : $0 })
            case .boolean, .bit: values = .numbers(.bool(integers.map { $0 != 0 }))
            case .uint8: values = .numbers(.uint8(integers.map { UInt8(truncatingIfNeeded: $0) }))
            case .int16: values = .numbers(.int16(integers.map { Int16(truncatingIfNeeded: $0) }))
            case .int32: values = .numbers(.int32(integers.map { Int32(truncatingIfNeeded: $0) }))
            case .int64: values = .numbers(.int64(integers))
            }
            return UploadedTable.Column(name: name, unit: unit, ucd: ucd, description: description, xtype: xtype, values: values)
        }
    }

    /// What the pull parser meets, in order: FIELDs of the first TABLE, then its TABLEDATA rows
    /// or its binary stream.
    final class Reader {
        let limits: UploadLimits
        var fields: [Field] = []
        var sawTable = false
        var sawData = false
        /// TABLE elements ended (a second table is ignored).
        var tablesDone = 0
        var inTable = false
        var inField = false
        var inDescription = false
        var inTD = false
        var inStream = false
        var binary2 = false
        var cell = ""
        var row: [String?] = []
        var rows = 0
        var streamText: [UInt8] = []
        var stream: [UInt8]? { sawStream ? streamText : nil }
        var sawStream = false

        init(limits: UploadLimits) { self.limits = limits }

        /// Refuses a table past its rows, or its cells (rows × columns: a cell costs memory
        /// however few bytes it took to send).
        func checkSize() throws(VOTableError) {
            guard rows <= limits.rows else { throw VOTableError(message: "more than \(limits.rows) rows, this service's limit") }
            guard rows * max(1, fields.count) <= limits.cells else {
                throw VOTableError(message: "more than \(limits.cells) cells (rows × columns), this service's limit")
            }
        }

        /// Whether text here is read: in a cell, a field's description, or a binary stream.
        var wantsText: Bool { inTD || inDescription || inStream }

        func start(_ name: String, attribute: (String) -> String?) throws(VOTableError) {
            if name == "TABLE" {
                if tablesDone == 0 && !inTable { inTable = true; sawTable = true }
                return
            }
            guard inTable else { return }
            switch name {
            case "FIELD":
                // Every column is declared before the rows (one declared after would be shorter).
                guard !sawData else { throw VOTableError(message: "a FIELD after the table's DATA: declare every column first") }
                guard fields.count < limits.columns else { throw VOTableError(message: "more than \(limits.columns) columns, this service's limit") }
                fields.append(try Self.field(attribute))
                inField = true
            case "DESCRIPTION" where inField:
                inDescription = true
                cell = ""
            case "VALUES" where inField:
                if let n = attribute("null"), let v = Int64(n.trimmingCharacters(in: .whitespaces)) { fields[fields.count - 1].nullValue = v }
            case "TABLEDATA":
                sawData = true
            case "TR":
                row = []
            case "TD":
                inTD = true
                cell = ""
            case "BINARY", "BINARY2":
                sawData = true
                binary2 = name == "BINARY2"
            case "STREAM":
                if attribute("href") != nil { throw VOTableError(message: "a STREAM with an href (data elsewhere) is not accepted: send the rows inline") }
                let encoding = attribute("encoding") ?? ""
                guard encoding == "base64" else { throw VOTableError(message: "a STREAM encoded as `\(encoding.prefix(40))`: only base64 is read") }
                inStream = true
                sawStream = true
            case "FITS":
                throw VOTableError(message: "FITS serialization inside a VOTable is not read: send TABLEDATA, BINARY or BINARY2")
            default:
                return
            }
        }

        func characters(_ string: String) throws(VOTableError) {
            if inTD || inDescription {
                cell += string
            } else if inStream {
                streamText += string.utf8.filter { $0 > 32 }
                if streamText.count > limits.bytes { throw VOTableError(message: "its binary stream is over \(limits.bytes) bytes") }
            }
        }

        func end(_ name: String) throws(VOTableError) {
            guard inTable else { return }
            switch name {
            case "TABLE":
                inTable = false
                tablesDone += 1
            case "FIELD":
                inField = false
            case "DESCRIPTION" where inDescription:
                inDescription = false
                fields[fields.count - 1].description = String(cell.prefix(1000))
            case "TD":
                inTD = false
                guard row.count < fields.count else {
                    throw VOTableError(message: "row \(rows + 1) has more cells than the table's \(fields.count) columns")
                }
                row.append(cell)
            case "TR":
                rows += 1
                try checkSize()
                guard row.count == fields.count else {
                    throw VOTableError(message: "row \(rows) has \(row.count) cells for the table's \(fields.count) columns")
                }
                for k in fields.indices { try fields[k].append(cell: row[k] ?? "", row: rows) }
            case "STREAM":
                inStream = false
            default:
                return
            }
        }

        /// A FIELD's name and type, checked.
        static func field(_ a: (String) -> String?) throws(VOTableError) -> Field {
            guard let name = a("name") ?? a("ID"), !name.isEmpty else { throw VOTableError(message: "a FIELD without a name") }
            let datatype = a("datatype") ?? ""
            let arraysize = (a("arraysize") ?? "").trimmingCharacters(in: .whitespaces)
            let kind: Kind
            switch datatype {
            case "char", "unicodeChar":
                let unicode = datatype == "unicodeChar"
                if arraysize.isEmpty {
                    kind = .text(width: 1, unicode: unicode)
                } else if arraysize.hasSuffix("*") {
                    guard arraysize == "*" || Int(arraysize.dropLast()) != nil else {
                        throw VOTableError(message: "column `\(name)`: arraysize `\(arraysize.prefix(20))` of text: only one dimension is read")
                    }
                    kind = .text(width: nil, unicode: unicode)
                } else {
                    // (At least one character: a row of zero-width cells would take no bytes.)
                    guard let n = Int(arraysize), n >= 1, n <= 1 << 20 else {
                        throw VOTableError(message: "column `\(name)`: arraysize `\(arraysize.prefix(20))` of text: only one dimension is read")
                    }
                    kind = .text(width: n, unicode: unicode)
                }
            default:
                let scalar: Kind? = switch datatype {
                case "boolean": .boolean
                case "bit": .bit
                case "unsignedByte": .uint8
                case "short": .int16
                case "int": .int32
                case "long": .int64
                case "float": .float32
                case "double": .float64
                default: nil
                }
                guard let scalar else {
                    throw VOTableError(message: "column `\(name)` is of datatype `\(datatype.prefix(30))`: an upload holds boolean, unsignedByte, short, int, long, float, double and char columns")
                }
                guard arraysize.isEmpty || arraysize == "1" else {
                    throw VOTableError(message: "column `\(name)` is an array (arraysize \(arraysize.prefix(20))): an upload holds one value per cell")
                }
                kind = scalar
            }
            return Field(name: String(name.prefix(256)), unit: String((a("unit") ?? "").prefix(256)), ucd: String((a("ucd") ?? "").prefix(256)),
                         xtype: String((a("xtype") ?? "").prefix(64)), kind: kind)
        }

        /// Reads the rows of a BINARY or BINARY2 stream (base64 text, whitespace dropped).
        func decodeBinary(_ text: [UInt8]) throws(VOTableError) {
            guard let data = Data(base64Encoded: Data(text)) else { throw VOTableError(message: "its binary stream is not valid base64") }
            let bytes = [UInt8](data)
            var at = 0
            func take(_ n: Int) throws(VOTableError) -> ArraySlice<UInt8> {
                guard n >= 0, at + n <= bytes.count else { throw VOTableError(message: "its binary stream ends inside row \(rows)") }
                defer { at += n }
                return bytes[at..<(at + n)]
            }
            func integer(_ n: Int) throws(VOTableError) -> UInt64 {
                try take(n).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            }
            let flagBytes = binary2 ? (fields.count + 7) / 8 : 0
            while at < bytes.count {
                rows += 1
                try checkSize()
                let flags = Array(try take(flagBytes))
                for k in fields.indices {
                    let isNull = binary2 && flags[k / 8] & (0x80 >> UInt8(k % 8)) != 0
                    switch fields[k].kind {
                    case .boolean:
                        let b = try take(1).first ?? 0
                        if isNull || b == UInt8(ascii: "?") || b == 0 || b == 32 {
                            fields[k].appendNull()
                        } else {
                            fields[k].append(integer: "Tt1".utf8.contains(b) ? 1 : 0)
                        }
                    case .bit:
                        let b = try take(1).first ?? 0
                        // The standard puts a scalar bit in the byte's top bit; astropy writes 0x08.
                        isNull ? fields[k].appendNull() : fields[k].append(integer: b != 0 ? 1 : 0)
                    case .uint8:
                        let v = try integer(1)
                        isNull ? fields[k].appendNull() : fields[k].append(integer: Int64(v))
                    case .int16:
                        let v = Int16(truncatingIfNeeded: try integer(2))
                        isNull ? fields[k].appendNull() : fields[k].append(integer: Int64(v))
                    case .int32:
                        let v = Int32(truncatingIfNeeded: try integer(4))
                        isNull ? fields[k].appendNull() : fields[k].append(integer: Int64(v))
                    case .int64:
                        let v = Int64(bitPattern: try integer(8))
                        isNull ? fields[k].appendNull() : fields[k].append(integer: v)
                    case .float32:
                        let v = Double(Float(bitPattern: UInt32(truncatingIfNeeded: try integer(4))))
                        isNull ? fields[k].appendNull() : fields[k].append(double: v)
                    case .float64:
                        let v = Double(bitPattern: try integer(8))
                        isNull ? fields[k].appendNull() : fields[k].append(double: v)
                    case .text(let width, let unicode):
                        var count = 0
                        if let width { count = width } else { count = Int(try integer(4)) }
                        guard count <= 1 << 20 else { throw VOTableError(message: "row \(rows), column `\(fields[k].name)`: a text of \(count) characters") }
                        let raw = try take(unicode ? count * 2 : count)
                        var s: String
                        if unicode {
                            let units = stride(from: raw.startIndex, to: raw.endIndex, by: 2).map { UInt16(raw[$0]) << 8 | UInt16(raw[$0 + 1]) }
                            s = String(decoding: units, as: UTF16.self)
                        } else {
                            s = String(decoding: raw, as: UTF8.self)
                        }
                        // Fixed-width text is padded with NULs (or spaces, by some writers).
                        if width != nil, let end = s.firstIndex(of: "\0") { s = String(s[..<end]) }
                        isNull ? fields[k].appendNull() : fields[k].append(text: s)
                    }
                }
            }
        }
    }
}
