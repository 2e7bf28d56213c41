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
        if RowWriter.formats.contains(format) {
            var rows = try RowWriter(format: format, to: path)
            try rows.complete(appending: t)
            return
        }
        var out = try TextSink(path: path)
        switch format {
        default:
            let shown = path == nil ? min(t.rowCount, terminalRows) : t.rowCount
            let cells = (0..<shown).map { r in (0..<t.names.count).map { t.text(row: r, column: $0) } }
            let widths = t.names.indices.map { c in max(t.names[c].count, cells.map { $0[c].count }.max() ?? 0) }
            func line(_ v: [String]) -> String {
                zip(v, widths).map { String(repeating: " ", count: $1 - $0.count) + $0 }.joined(separator: "  ")
            }
            out.write(line(t.names) + "\n")
            for row in cells { out.write(line(row) + "\n") }
            if shown < t.rowCount { out.write("… \(t.rowCount - shown) more rows (write them all with -o FILE or --format csv)\n") }
        }
        try out.finish()
    }
}

/// Rows written as CSV, JSON or a FITS binary table, a table at a time: a collect's batches are
/// written as they arrive, and none is kept. A file appears, whole, only at ``finish()``.
struct RowWriter {
    /// The formats written a batch at a time.
    static let formats: Set = ["csv", "json", "fits"]
    private enum Sink {
        case text(RowTextWriter)
        /// The table is made from the first batch: it names the columns and their types.
        case fits(path: String, table: FITSTableAppender?)
    }
    private var sink: Sink

    init(format: String, to path: String?) throws {
        if format == "fits" {
            guard let path else { throw ValidationError("--format fits needs -o FILE") }
            sink = .fits(path: path, table: nil)
        } else {
            sink = .text(try RowTextWriter(format: format, to: path))
        }
    }

    mutating func append(_ t: ResultTable) throws {
        switch sink {
        case .text(var text):
            text.append(t)
            sink = .text(text)
        case .fits(let path, let made):
            let data = t.columns.map { c -> ColumnData in
                switch c {
                case .doubles(let a): .float64(a)
                case .int64s(let a): .int64(a)
                case .bools(let a): .bool(a)
                case .floats(let a): .float32(a)
                }
            }
            let table = try made ?? FITSTableAppender(path: path, columns: zip(t.names, data).map { ColumnSpec($0, $1.type) }, extensionName: "RESULT")
            sink = .fits(path: path, table: table)
            try table.append(data)
        }
    }

    /// Appends `last` (when given) and puts the file in place; on any failure nothing is left
    /// at the path.
    mutating func complete(appending last: ResultTable? = nil) throws {
        do {
            if let last { try append(last) }
            switch sink {
            case .text(var text): try text.finish()
            case .fits(_, let table): try table?.finish()
            }
        } catch {
            discard()
            throw error
        }
    }

    func discard() {
        switch sink {
        case .text(let text): text.discard()
        case .fits(_, let table): table?.discard()
        }
    }
}

/// Rows written as CSV (a header, then a line per row) or JSON (an object per line), a table
/// at a time.
struct RowTextWriter {
    private var sink: TextSink
    private let csv: Bool
    private var wroteHeader = false

    init(format: String, to path: String?) throws {
        sink = try TextSink(path: path)
        csv = format == "csv"
    }

    mutating func append(_ t: ResultTable) {
        if csv {
            if !wroteHeader { sink.write(t.names.map(ResultTable.csvField).joined(separator: ",") + "\n") }
            wroteHeader = true
            for r in 0..<t.rowCount {
                for c in t.names.indices {
                    if c > 0 { sink.write(",") }
                    sink.write(ResultTable.csvField(t.text(row: r, column: c)))
                }
                sink.write("\n")
            }
            return
        }
        for r in 0..<t.rowCount {
            sink.write(jsonLine(t.names.indices.map { c -> (String, Any) in
                switch t.columns[c] {
                case .doubles(let a): (t.names[c], a[r])
                case .int64s(let a): (t.names[c], a[r])
                case .bools(let a): (t.names[c], a[r])
                case .floats(let a): (t.names[c], Double(a[r]))
                }
            }) + "\n")
        }
    }

    mutating func finish() throws { try sink.finish() }
    func discard() { sink.discard() }
}

/// Text written as it is made, a megabyte at a time, to standard output or to a file (through a
/// file beside it, renamed into place when complete): a result of ten million rows was built as
/// one string first, twice its size in memory.
struct TextSink {
    /// The file asked for, the one beside it being written, and its handle (nil: standard
    /// output, through `print`, in order with the command's other output).
    private let file: (path: String, partial: String, handle: FileHandle)?
    private var buffer: [UInt8] = []
    private var failed: (any Error)?

    init(path: String?) throws {
        guard let path else {
            file = nil
            return
        }
        let partial = path + ".partial-\(getpid())"
        guard FileManager.default.createFile(atPath: partial, contents: nil), let h = FileHandle(forWritingAtPath: partial) else {
            throw ValidationError("cannot write \(path): cannot create \(partial)")
        }
        file = (path, partial, h)
        buffer.reserveCapacity(1 << 20)
    }

    mutating func write(_ s: String) {
        buffer.append(contentsOf: s.utf8)
        if buffer.count >= 1 << 20 { flush() }
    }

    private mutating func flush() {
        guard failed == nil, !buffer.isEmpty else { return }
        if let file {
            do { try file.handle.write(contentsOf: buffer) } catch { failed = error }
        } else {
            print(String(decoding: buffer, as: UTF8.self), terminator: "")
        }
        buffer.removeAll(keepingCapacity: true)
    }

    /// Writes what is left; a file is renamed into place only if every write succeeded.
    mutating func finish() throws {
        flush()
        guard let file else { return }
        try? file.handle.close()
        if let failed {
            try? FileManager.default.removeItem(atPath: file.partial)
            throw ValidationError("cannot write \(file.path): \(failed.localizedDescription)")
        }
        guard rename(file.partial, file.path) == 0 else {
            let why = String(cString: strerror(errno))
            try? FileManager.default.removeItem(atPath: file.partial)
            throw ValidationError("cannot write \(file.path): \(why)")
        }
    }

    /// Drops what was written (the question failed): the file asked for is not touched.
    func discard() {
        guard let file else { return }
        try? file.handle.close()
        try? FileManager.default.removeItem(atPath: file.partial)
    }
}
