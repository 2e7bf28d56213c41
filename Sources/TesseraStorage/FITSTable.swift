import CFITSIO
import TesseraProtocol

#if canImport(Glibc)
import Glibc
#endif

/// A FITS file problem, naming the file and what was being done.
public enum FITSError: Error, CustomStringConvertible, Equatable {
    case cfitsio(path: String, operation: String, status: Int32, message: String)
    case noBinaryTable(path: String)
    case unknownColumn(path: String, column: String, available: [String])
    case unsupportedColumn(path: String, column: String, reason: String)

    public var description: String {
        switch self {
        case .cfitsio(let p, let op, let st, let m): "\(p): \(op) failed: \(m) (cfitsio status \(st))"
        case .noBinaryTable(let p): "\(p) has no binary table extension"
        case .unknownColumn(let p, let c, let a): "\(p) has no column `\(c)` (it has: \(a.joined(separator: ", ")))"
        case .unsupportedColumn(let p, let c, let why): "\(p): column `\(c)` cannot be read: \(why)"
        }
    }

    static func check(_ status: Int32, _ path: String, _ op: String) throws(FITSError) {
        guard status != 0 else { return }
        var text = [CChar](repeating: 0, count: 81)
        ffgerr(status, &text)
        throw .cfitsio(path: path, operation: op, status: status, message: String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }
}

/// A column of a FITS binary table as the file declares it.
public struct FITSColumnInfo: Sendable, Equatable {
    public var name: String
    public var unit: String
    /// cfitsio's type code (TDOUBLE, TFLOAT, TLONGLONG, ...).
    public var typeCode: Int32
    public var repeatCount: Int

    /// The Tessera type this column reads as, or why it cannot be read.
    public var columnType: Result<ColumnType, FITSError> {
        if repeatCount != 1 && typeCode != TSTRING {
            return .failure(.unsupportedColumn(path: "", column: name, reason: "array cells (\(repeatCount) values per row) are not supported"))
        }
        switch typeCode {
        case TDOUBLE: return .success(.columnFloat64)
        case TFLOAT: return .success(.columnFloat32)
        case TLONGLONG, TULONG, TUINT: return .success(.columnInt64)
        case TLONG, TINT: return .success(.columnInt32)
        case TSHORT: return .success(.columnInt16)
        case TUSHORT: return .success(.columnInt32)
        case TBYTE: return .success(.columnUint8)
        case TSBYTE: return .success(.columnInt16)
        case TLOGICAL: return .success(.columnBool)
        case TSTRING: return .failure(.unsupportedColumn(path: "", column: name, reason: "string columns are not supported"))
        default: return .failure(.unsupportedColumn(path: "", column: name, reason: "FITS type code \(typeCode) is not supported"))
        }
    }
}

/// Reads a FITS binary table through cfitsio: the first binary-table extension of the file.
public final class FITSTableReader {
    public let path: String
    public let rowCount: Int
    public let columns: [FITSColumnInfo]
    private var file: UnsafeMutablePointer<fitsfile>?

    public init(path: String) throws(FITSError) {
        self.path = path
        var status: Int32 = 0
        var f: UnsafeMutablePointer<fitsfile>?
        try FITSHeaderCheck.validate(path: path)
        ffopen(&f, path, READONLY, &status)
        try FITSError.check(status, path, "open")
        file = f
        // Find the first binary table.
        var hdus: Int32 = 0
        ffthdu(f, &hdus, &status)
        var found = false
        var hdu: Int32 = 1
        while hdu <= hdus && !found {
            var type: Int32 = 0
            ffmahd(f, hdu, &type, &status)
            if status != 0 { break }
            found = type == BINARY_TBL
            hdu += 1
        }
        guard status == 0, found else {
            var s: Int32 = 0
            ffclos(f, &s)
            if status != 0 { try FITSError.check(status, path, "read header units") }
            throw .noBinaryTable(path: path)
        }
        var nrows: Int64 = 0
        var ncols: Int32 = 0
        ffgnrwll(f, &nrows, &status)
        ffgncl(f, &ncols, &status)
        var cols: [FITSColumnInfo] = []
        for c in 1...max(ncols, 1) where ncols > 0 {
            var type: Int32 = 0
            var rep: Int64 = 0, width: Int64 = 0
            ffgtclll(f, c, &type, &rep, &width, &status)
            func key(_ k: String) -> String {
                var value = [CChar](repeating: 0, count: 72)
                var s: Int32 = 0
                ffgkys(f, "\(k)\(c)", &value, nil, &s)
                return s == 0 ? String(decoding: value.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
            }
            cols.append(FITSColumnInfo(name: key("TTYPE"), unit: key("TUNIT"), typeCode: type, repeatCount: Int(rep)))
        }
        if status != 0 {
            var s: Int32 = 0
            ffclos(f, &s)
            try FITSError.check(status, path, "read the table's columns")
        }
        rowCount = Int(nrows)
        columns = cols
    }

    deinit {
        var s: Int32 = 0
        if let file { ffclos(file, &s) }
    }

    /// Reads one column. Integer columns with null values (TNULL) become Float64 with NaN there,
    /// as pandas reads them; float nulls are NaN already.
    public func read(column name: String, rows: Range<Int>? = nil) throws(FITSError) -> ColumnData {
        guard let i = columns.firstIndex(where: { $0.name == name }) else {
            throw .unknownColumn(path: path, column: name, available: columns.map(\.name))
        }
        let info = columns[i]
        let type: ColumnType
        switch info.columnType {
        case .success(let t): type = t
        case .failure(.unsupportedColumn(_, let c, let why)): throw .unsupportedColumn(path: path, column: c, reason: why)
        case .failure(let e): throw e
        }
        let r = rows ?? 0..<rowCount
        let n = r.count
        let col = Int32(i + 1)
        var status: Int32 = 0
        var anyNull: Int32 = 0
        // Values and, per row, whether the file marks it null (TNULL for integers, NaN for floats).
        var nulls = [CChar](repeating: 0, count: n)
        func get<T>(_ code: Int32, _ fill: T) throws(FITSError) -> [T] {
            var out = [T](repeating: fill, count: n)
            if n > 0 {
                out.withUnsafeMutableBytes { buf in
                    _ = ffgcf(file, code, col, Int64(r.lowerBound + 1), 1, Int64(n), buf.baseAddress, &nulls, &anyNull, &status)
                }
            }
            try FITSError.check(status, path, "read column `\(name)`")
            return out
        }
        /// Integers with nulls: doubles with NaN for the nulls.
        func withNulls<T: BinaryInteger>(_ v: [T]) -> ColumnData {
            .float64(zip(v, nulls).map { $1 != 0 ? .nan : Double($0) })
        }
        switch type {
        case .columnFloat64:
            let v: [Double] = try get(TDOUBLE, 0)
            return .float64(anyNull != 0 ? zip(v, nulls).map { $1 != 0 ? .nan : $0 } : v)
        case .columnFloat32:
            let v: [Float] = try get(TFLOAT, 0)
            return .float32(anyNull != 0 ? zip(v, nulls).map { $1 != 0 ? .nan : $0 } : v)
        case .columnInt64:
            let v: [Int64] = try get(TLONGLONG, 0)
            return anyNull != 0 ? withNulls(v) : .int64(v)
        case .columnInt32:
            let v: [Int32] = try get(TINT, 0)
            return anyNull != 0 ? withNulls(v) : .int32(v)
        case .columnInt16:
            let v: [Int16] = try get(TSHORT, 0)
            return anyNull != 0 ? withNulls(v) : .int16(v)
        case .columnUint8:
            let v: [UInt8] = try get(TBYTE, 0)
            return anyNull != 0 ? withNulls(v) : .uint8(v)
        case .columnBool:
            let v: [CChar] = try get(TLOGICAL, 0)
            return .bool(v.map { $0 != 0 })
        default:
            throw .unsupportedColumn(path: path, column: name, reason: "type \(type)")
        }
    }
}

/// A header keyword of a written table (a standard's, like a MOC's PIXTYPE or MOCORDER).
public struct FITSKeyword: Sendable, Equatable {
    public enum Value: Sendable, Equatable {
        case text(String)
        case integer(Int)
    }

    public var name: String
    public var value: Value
    public var comment: String

    public init(_ name: String, _ value: Value, _ comment: String = "") {
        (self.name, self.value, self.comment) = (name, value, comment)
    }
}

/// Writes a FITS binary table through cfitsio (readable by astropy), durably: a temporary file
/// renamed into place.
public enum FITSTableWriter {
    public static func write(to path: String, columns: [ColumnSpec], data: [ColumnData], extensionName: String = "CATALOG",
                             keywords: [FITSKeyword] = []) throws(FITSError) {
        let table = try FITSTableAppender(path: path, columns: columns, extensionName: extensionName, keywords: keywords)
        do {
            try table.append(data)
            try table.finish()
        } catch {
            table.discard()
            throw error
        }
    }
}

/// A FITS binary table written a batch of rows at a time (cfitsio extends the table and its
/// `NAXIS2` as rows are added), so that a large answer need never be held whole. The file is
/// written beside `path` and renamed into place by ``finish()``; ``discard()`` leaves `path`
/// untouched.
public final class FITSTableAppender {
    public let path: String
    public let columns: [ColumnSpec]
    private let partial: String
    private var file: UnsafeMutablePointer<fitsfile>?
    /// Rows written so far.
    public private(set) var rows: Int64 = 0

    public init(path: String, columns: [ColumnSpec], extensionName: String = "CATALOG", keywords: [FITSKeyword] = []) throws(FITSError) {
        self.path = path
        self.columns = columns
        partial = "\(path).tmp-\(getpid())"
        unlink(partial)
        var status: Int32 = 0
        ffinit(&file, partial, &status)
        try FITSError.check(status, path, "create")
        func form(_ t: ColumnType) -> String {
            switch t {
            case .columnFloat64: "D"
            case .columnFloat32: "E"
            case .columnInt64: "K"
            case .columnInt32: "J"
            case .columnInt16: "I"
            case .columnUint8: "B"
            case .columnBool: "L"
            default: "D"
            }
        }
        var cStrings: [UnsafeMutablePointer<CChar>?] = []
        defer { for p in cStrings { free(p) } }
        func c(_ s: String) -> UnsafeMutablePointer<CChar>? {
            let p = strdup(s)
            cStrings.append(p)
            return p
        }
        var ttype = columns.map { c($0.name) }
        var tform = columns.map { c(form($0.type)) }
        var tunit = columns.map { c($0.unit) }
        ffcrtb(file, BINARY_TBL, 0, Int32(columns.count), &ttype, &tform, &tunit, extensionName, &status)
        for k in keywords where status == 0 {
            switch k.value {
            case .text(let v): ffpkys(file, k.name, v, k.comment, &status)
            case .integer(let v): ffpkyj(file, k.name, Int64(v), k.comment, &status)
            }
        }
        if status != 0 {
            discard()
            try FITSError.check(status, path, "write the table's header")
        }
    }

    /// Adds rows: one array per column, in the columns' order and types, all of one length.
    public func append(_ data: [ColumnData]) throws(FITSError) {
        guard let file else { throw .cfitsio(path: path, operation: "add rows", status: 0, message: "the table is already closed") }
        let count = data.first?.count ?? 0
        guard data.count == columns.count, zip(data, columns).allSatisfy({ $0.type == $1.type && $0.count == count }) else {
            throw .cfitsio(path: path, operation: "add rows", status: 0,
                           message: "the rows' columns (\(data.map { "\($0.type)×\($0.count)" }.joined(separator: ", "))) are not the table's (\(columns.map { "\($0.type)" }.joined(separator: ", ")))")
        }
        guard count > 0 else { return }
        var status: Int32 = 0
        let first = rows + 1
        for (i, d) in data.enumerated() where status == 0 {
            let col = Int32(i + 1)
            switch d {
            case .float64(var a): ffpcl(file, TDOUBLE, col, first, 1, Int64(count), &a, &status)
            case .float32(var a): ffpcl(file, TFLOAT, col, first, 1, Int64(count), &a, &status)
            case .int64(var a): ffpcl(file, TLONGLONG, col, first, 1, Int64(count), &a, &status)
            case .int32(var a): ffpcl(file, TINT, col, first, 1, Int64(count), &a, &status)
            case .int16(var a): ffpcl(file, TSHORT, col, first, 1, Int64(count), &a, &status)
            case .uint8(var a): ffpcl(file, TBYTE, col, first, 1, Int64(count), &a, &status)
            case .bool(let b):
                var a = b.map { CChar($0 ? 1 : 0) }
                ffpcl(file, TLOGICAL, col, first, 1, Int64(count), &a, &status)
            }
        }
        try FITSError.check(status, path, "write rows \(first)…\(rows + Int64(count))")
        rows += Int64(count)
    }

    /// Closes the file and renames it into place.
    public func finish() throws(FITSError) {
        guard let f = file else { throw .cfitsio(path: path, operation: "finish", status: 0, message: "the table is already closed") }
        file = nil
        var status: Int32 = 0
        ffclos(f, &status)
        if status != 0 { unlink(partial) }
        try FITSError.check(status, path, "write the table")
        guard rename(partial, path) == 0 else {
            unlink(partial)
            throw .cfitsio(path: path, operation: "rename into place", status: 0, message: String(cString: strerror(errno)))
        }
    }

    /// Closes and removes what was written (nothing, once finished).
    public func discard() {
        guard let f = file else { return }
        var status: Int32 = 0
        ffclos(f, &status)
        file = nil
        unlink(partial)
    }

    deinit { discard() }
}
