import Foundation
import TesseraProtocol

/// A CSV problem, with the line and column where it is.
public enum CSVError: Error, CustomStringConvertible, Equatable {
    case unreadable(path: String, reason: String)
    case empty(path: String)
    case raggedRow(path: String, line: Int, fields: Int, expected: Int)
    case badNumber(path: String, line: Int, column: String, text: String)
    case duplicateColumn(path: String, column: String)

    public var description: String {
        switch self {
        case .unreadable(let p, let why): "\(p): cannot read: \(why)"
        case .empty(let p): "\(p) is empty: a CSV file needs a header line and at least one row"
        case .raggedRow(let p, let l, let f, let e): "\(p), line \(l): \(f) fields, but the header has \(e)"
        case .badNumber(let p, let l, let c, let t): "\(p), line \(l), column `\(c)`: `\(t)` is not a number"
        case .duplicateColumn(let p, let c): "\(p): column `\(c)` appears twice in the header"
        }
    }
}

/// Reads a CSV file with a header line into typed columns: a column of integers is Int64, one of
/// `true`/`false` is Bool, anything else numeric is Float64; an empty field is NaN (an integer
/// column with empty fields becomes Float64, as pandas reads it).
public enum CSVTable {
    public static func read(path: String) throws(CSVError) -> (columns: [ColumnSpec], data: [ColumnData]) {
        let bytes: [UInt8]
        do {
            bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        } catch {
            throw .unreadable(path: path, reason: error.localizedDescription)
        }
        return try parse(bytes, path: path)
    }

    public static func parse(_ bytes: [UInt8], path: String = "<csv>") throws(CSVError) -> (columns: [ColumnSpec], data: [ColumnData]) {
        // Split into lines (LF or CRLF), skipping blank lines; keep 1-based line numbers.
        var lines: [(number: Int, range: Range<Int>)] = []
        var start = 0, number = 1
        for i in 0...bytes.count {
            if i == bytes.count || bytes[i] == UInt8(ascii: "\n") {
                var end = i
                if end > start && bytes[end - 1] == UInt8(ascii: "\r") { end -= 1 }
                if end > start { lines.append((number, start..<end)) }
                start = i + 1
                number += 1
            }
        }
        guard let header = lines.first else { throw .empty(path: path) }
        let names = fields(bytes, header.range).map { String(decoding: bytes[trimmed(bytes, $0)], as: UTF8.self) }
        var seen = Set<String>()
        for n in names where !seen.insert(n).inserted { throw .duplicateColumn(path: path, column: n) }
        guard lines.count > 1 else { throw .empty(path: path) }
        let m = names.count
        var cells = [[Range<Int>]](repeating: [], count: m)
        for c in 0..<m { cells[c].reserveCapacity(lines.count - 1) }
        for line in lines.dropFirst() {
            let f = fields(bytes, line.range)
            guard f.count == m else { throw .raggedRow(path: path, line: line.number, fields: f.count, expected: m) }
            for c in 0..<m { cells[c].append(f[c]) }
        }
        var specs: [ColumnSpec] = []
        var data: [ColumnData] = []
        for c in 0..<m {
            let texts = cells[c].map { trimmed(bytes, $0) }
            let lineOf = { (row: Int) in lines[row + 1].number }
            if texts.allSatisfy({ isBool(bytes, $0) }) {
                specs.append(ColumnSpec(names[c], .columnBool))
                data.append(.bool(texts.map { bytes[$0.lowerBound] == UInt8(ascii: "t") || bytes[$0.lowerBound] == UInt8(ascii: "T") }))
                continue
            }
            var ints: [Int64] = []
            ints.reserveCapacity(texts.count)
            var allInts = true
            for t in texts {
                guard !t.isEmpty, let v = Int64(String(decoding: bytes[t], as: UTF8.self)) else { allInts = false; break }
                ints.append(v)
            }
            if allInts {
                specs.append(ColumnSpec(names[c], .columnInt64))
                data.append(.int64(ints))
                continue
            }
            var doubles: [Double] = []
            doubles.reserveCapacity(texts.count)
            for (row, t) in texts.enumerated() {
                if t.isEmpty { doubles.append(.nan); continue }
                let s = String(decoding: bytes[t], as: UTF8.self)
                guard let v = Double(s) else { throw .badNumber(path: path, line: lineOf(row), column: names[c], text: s) }
                doubles.append(v)
            }
            specs.append(ColumnSpec(names[c], .columnFloat64))
            data.append(.float64(doubles))
        }
        return (specs, data)
    }

    /// Field ranges of one line; a field in double quotes may hold commas.
    static func fields(_ b: [UInt8], _ r: Range<Int>) -> [Range<Int>] {
        var out: [Range<Int>] = []
        var i = r.lowerBound
        var fieldStart = i
        var quoted = false
        while i < r.upperBound {
            let ch = b[i]
            if ch == UInt8(ascii: "\"") { quoted.toggle() } else if ch == UInt8(ascii: ","), !quoted {
                out.append(fieldStart..<i)
                fieldStart = i + 1
            }
            i += 1
        }
        out.append(fieldStart..<r.upperBound)
        return out
    }

    static func trimmed(_ b: [UInt8], _ r: Range<Int>) -> Range<Int> {
        var lo = r.lowerBound, hi = r.upperBound
        while lo < hi && (b[lo] == 32 || b[lo] == 9 || b[lo] == UInt8(ascii: "\"")) { lo += 1 }
        while hi > lo && (b[hi - 1] == 32 || b[hi - 1] == 9 || b[hi - 1] == UInt8(ascii: "\"")) { hi -= 1 }
        return lo..<hi
    }

    static func isBool(_ b: [UInt8], _ r: Range<Int>) -> Bool {
        let s = String(decoding: b[r], as: UTF8.self).lowercased()
        return s == "true" || s == "false"
    }
}
