import ArgumentParser
import Foundation
import TesseraCompute
import TesseraProtocol
import TesseraStorage

/// Writes a result table as an aligned text table, CSV, JSON (one object per row) or a FITS
/// binary table (through cfitsio).
enum ResultOutput {
    /// Rows a terminal table shows before it stops (files get every row).
    static let terminalRows = 60

    static func write(_ t: ResultTable, format: String, to path: String?) throws {
        if format == "fits" {
            guard let path else { throw ValidationError("--format fits needs -o FILE") }
            let specs = zip(t.names, t.columns).map { name, c -> ColumnSpec in
                switch c {
                case .doubles: ColumnSpec(name, .columnFloat64)
                case .int64s: ColumnSpec(name, .columnInt64)
                case .bools: ColumnSpec(name, .columnBool)
                case .floats: ColumnSpec(name, .columnFloat32)
                }
            }
            let data = t.columns.map { c -> ColumnData in
                switch c {
                case .doubles(let a): .float64(a)
                case .int64s(let a): .int64(a)
                case .bools(let a): .bool(a)
                case .floats(let a): .float32(a)
                }
            }
            try FITSTableWriter.write(to: path, columns: specs, data: data, extensionName: "RESULT")
            return
        }
        var text = ""
        switch format {
        case "csv":
            text += t.names.map(ResultTable.csvField).joined(separator: ",") + "\n"
            for r in 0..<t.rowCount {
                for c in t.names.indices {
                    if c > 0 { text += "," }
                    text += ResultTable.csvField(t.text(row: r, column: c))
                }
                text += "\n"
            }
        case "json":
            for r in 0..<t.rowCount {
                text += jsonLine(t.names.indices.map { c -> (String, Any) in
                    switch t.columns[c] {
                    case .doubles(let a): (t.names[c], a[r])
                    case .int64s(let a): (t.names[c], a[r])
                    case .bools(let a): (t.names[c], a[r])
                    case .floats(let a): (t.names[c], Double(a[r]))
                    }
                }) + "\n"
            }
        default:
            let shown = path == nil ? min(t.rowCount, terminalRows) : t.rowCount
            let cells = (0..<shown).map { r in (0..<t.names.count).map { t.text(row: r, column: $0) } }
            let widths = t.names.indices.map { c in max(t.names[c].count, cells.map { $0[c].count }.max() ?? 0) }
            func line(_ v: [String]) -> String {
                zip(v, widths).map { String(repeating: " ", count: $1 - $0.count) + $0 }.joined(separator: "  ")
            }
            text += line(t.names) + "\n"
            for row in cells { text += line(row) + "\n" }
            if shown < t.rowCount { text += "… \(t.rowCount - shown) more rows (write them all with -o FILE or --format csv)\n" }
        }
        if let path {
            do { try text.write(toFile: path, atomically: true, encoding: .utf8) } catch { throw ValidationError("cannot write \(path): \(error.localizedDescription)") }
        } else {
            print(text, terminator: "")
        }
    }
}
