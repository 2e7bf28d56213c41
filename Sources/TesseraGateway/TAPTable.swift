import Foundation
import TesseraADQL
import TesseraCompute

/// A column of an answer as TAP describes it.
public struct TAPField: Sendable, Equatable {
    public var name: String
    /// VOTable's datatype: `double`, `float`, `long`, `int`, `boolean` or `char` (`arraysize="*"`).
    public var datatype: String
    public var unit: String
    public var ucd: String
    public var description: String
    /// VOTable's xtype (`timestamp`, …), echoed from an upload's column.
    public var xtype = ""

    public init(name: String, datatype: String, unit: String = "", ucd: String = "", description: String = "", xtype: String = "") {
        (self.name, self.datatype, self.unit, self.ucd, self.description, self.xtype) = (name, datatype, unit, ucd, description, xtype)
    }
}

/// An answer's values, one column at a time.
public enum TAPColumn: Sendable, Equatable {
    case doubles([Double])
    case floats([Float])
    case longs([Int64])
    case bools([Bool])
    /// Text or integers with NULLs (the gateway's own TAP_SCHEMA tables).
    case cells([LocalCell])

    var count: Int {
        switch self {
        case .doubles(let a): a.count
        case .floats(let a): a.count
        case .longs(let a): a.count
        case .bools(let a): a.count
        case .cells(let a): a.count
        }
    }

    func rows(_ keep: [Int]) -> TAPColumn {
        switch self {
        case .doubles(let a): .doubles(keep.map { a[$0] })
        case .floats(let a): .floats(keep.map { a[$0] })
        case .longs(let a): .longs(keep.map { a[$0] })
        case .bools(let a): .bools(keep.map { a[$0] })
        case .cells(let a): .cells(keep.map { a[$0] })
        }
    }

    /// A value to sort on (NaN and NULL first).
    func sortKey(_ i: Int) -> Double {
        switch self {
        case .doubles(let a): a[i].isNaN ? -.infinity : a[i]
        case .floats(let a): a[i].isNaN ? -.infinity : Double(a[i])
        case .longs(let a): Double(a[i])
        case .bools(let a): a[i] ? 1 : 0
        case .cells(let a): a[i].number.map { $0.isNaN ? -.infinity : $0 } ?? -.infinity
        }
    }
}

/// An answer: fields, values, and whether MAXREC cut it short.
public struct TAPTable: Sendable, Equatable {
    public var fields: [TAPField]
    public var columns: [TAPColumn]
    public var overflow: Bool

    public var rowCount: Int { columns.first?.count ?? 0 }

    /// A table of the given columns (a client's own, to upload).
    public init(fields: [TAPField], columns: [TAPColumn], overflow: Bool = false) {
        (self.fields, self.columns, self.overflow) = (fields, columns, overflow)
    }

    /// A catalog answer as a TAP table: the plan's fields, sorted and cut as the query asked.
    /// `texts` gives an upload's text column (by table and column) for fields that hold its row
    /// numbers.
    public init(_ answer: ResultTable, plan: ADQLPlan, maxrec: Int, texts: (_ table: String, _ column: String) -> [String?]? = { _, _ in nil }) {
        var columns: [TAPColumn] = []
        fields = []
        let rows = answer.rowCount
        for f in plan.fields {
            // Every field keeps its place (ORDER BY refers to fields by position); one the
            // answer lacks would be a bug, and is shown as NULLs rather than shifting the rest.
            let values: RowValues = f.source < answer.columns.count ? answer.columns[f.source] : .doubles([Double](repeating: .nan, count: rows))
            let (column, type): (TAPColumn, String) = switch values {
            case .int64s(let a) where f.text != nil:
                // Row numbers of an upload: its text at each (NULL where there is none).
                (.cells(Self.text(at: a, in: f.text.flatMap { texts($0.table, $0.column) } ?? [])), "char")
            case .doubles(let a): (.doubles(a), "double")
            case .floats(let a): (.floats(a), "float")
            case .int64s(let a): (.longs(a), "long")
            case .bools(let a): (.bools(a), "boolean")
            }
            columns.append(column)
            fields.append(TAPField(name: f.name, datatype: type, unit: f.unit, ucd: f.ucd, description: f.description))
        }
        var order = Array(0..<(columns.first?.count ?? 0))
        if !plan.localOrder.isEmpty {
            order.sort { a, b in
                for (k, desc) in plan.localOrder where k < columns.count {
                    let x = columns[k].sortKey(a), y = columns[k].sortKey(b)
                    if x != y { return desc ? x > y : x < y }
                }
                return a < b
            }
        }
        let cut = min(plan.rowLimit ?? Int.max, maxrec)
        overflow = order.count > maxrec && (plan.rowLimit ?? Int.max) > maxrec
        if order.count > cut { order = Array(order.prefix(cut)) }
        let identity = order.enumerated().allSatisfy { $0.offset == $0.element } && order.count == (columns.first?.count ?? 0)
        self.columns = identity ? columns : columns.map { $0.rows(order) }
    }

    /// `values` at each of `rows` (NULL for a number outside them, or a value that is NULL).
    static func text(at rows: [Int64], in values: [String?]) -> [LocalCell] {
        rows.map { r in
            guard r >= 0, r < values.count, let v = values[Int(r)] else { return .null }
            return .text(v)
        }
    }

    /// A gateway-evaluated answer (TAP_SCHEMA).
    public init(local: [LocalTable.Column], rows: [[LocalCell]], overflow: Bool) {
        fields = local.map { TAPField(name: $0.name, datatype: $0.datatype, unit: $0.unit, ucd: $0.ucd, description: $0.description, xtype: $0.xtype) }
        columns = local.indices.map { c in .cells(rows.map { $0[c] }) }
        self.overflow = overflow
    }
}
