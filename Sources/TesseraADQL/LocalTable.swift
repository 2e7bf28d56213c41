/// A value of a small table held by the gateway itself (TAP_SCHEMA's tables, an upload without
/// positions): text, an integer, a real number, or NULL. Numbers compare by value whatever their
/// kind; NULL sorts first, then numbers, then text.
public enum LocalCell: Sendable, Equatable, Comparable {
    case null
    case integer(Int64)
    case real(Double)
    case text(String)

    /// The value of a number.
    public var number: Double? {
        switch self {
        case .integer(let v): Double(v)
        case .real(let v): v
        default: nil
        }
    }

    var rank: Int {
        switch self {
        case .null: 0
        case .integer, .real: 1
        case .text: 2
        }
    }

    public static func == (a: LocalCell, b: LocalCell) -> Bool {
        switch (a, b) {
        case (.null, .null): true
        case (.integer(let x), .integer(let y)): x == y
        case (.text(let x), .text(let y)): x == y
        case (.integer(let x), .real(let y)), (.real(let y), .integer(let x)): order(x, y) == 0
        default: a.number != nil && a.number == b.number
        }
    }

    public static func < (a: LocalCell, b: LocalCell) -> Bool {
        switch (a, b) {
        case (.integer(let x), .integer(let y)): x < y
        case (.text(let x), .text(let y)): x < y
        case (.integer(let x), .real(let y)): order(x, y) < 0
        case (.real(let x), .integer(let y)): order(y, x) > 0
        default:
            if let x = a.number, let y = b.number { x < y } else { a.rank < b.rank }
        }
    }

    /// An integer against a real, exactly (-1, 0 or 1; a NaN is above every integer): through
    /// Double, every integer within 512 of 5853498713190525697 would equal it.
    static func order(_ x: Int64, _ y: Double) -> Int {
        guard !y.isNaN else { return -1 }
        if y >= 0x1p63 { return -1 }
        if y < -0x1p63 { return 1 }
        let whole = y.rounded(.down), w = Int64(whole)
        if x != w { return x < w ? -1 : 1 }
        return y > whole ? -1 : 0
    }
}

/// A small table evaluated in the gateway: TAP_SCHEMA's `schemas`, `tables`, `columns`, `keys`
/// and `key_columns`. Queries of it get the same ADQL subset as the catalog (but for geometry),
/// plus `LIKE` on its text.
public struct LocalTable: Sendable, Equatable {
    public struct Column: Sendable, Equatable {
        public var name: String
        /// VOTable's datatype: `char`, `int`, `long`, `short`, `unsignedByte`, `float` or `double`.
        public var datatype: String
        public var description: String
        public var unit = ""
        public var ucd = ""
        public var xtype = ""
        public init(_ name: String, _ datatype: String, _ description: String) {
            (self.name, self.datatype, self.description) = (name, datatype, description)
        }
    }

    public var schema: String
    public var name: String
    public var description: String
    public var columns: [Column]
    public var rows: [[LocalCell]]

    public init(schema: String, name: String, description: String, columns: [Column], rows: [[LocalCell]]) {
        (self.schema, self.name, self.description, self.columns, self.rows) = (schema, name, description, columns, rows)
    }

    public var qualifiedName: String { "\(schema).\(name)" }

    /// The answer to `query` (which names this table): its columns and rows, and whether more
    /// rows than `maxrec` matched.
    /// - Parameter likeSteps: what all of the query's LIKEs may take (`LocalTable.likeSteps`).
    public func run(_ query: ADQLQuery, maxrec: Int, likeSteps: Int = LocalTable.likeSteps) throws(ADQLError) -> (columns: [Column], rows: [[LocalCell]], overflow: Bool) {
        if let join = query.join { throw ADQLError("joins of TAP_SCHEMA tables are not supported", at: join.table.position) }
        if let g = query.groupBy.first { throw ADQLError("GROUP BY on TAP_SCHEMA tables is not supported", at: g.position) }
        let alias = query.from.alias?.lowercased()
        func columnIndex(_ table: String?, _ name: String, _ at: ADQLPosition) throws(ADQLError) -> Int {
            if let table, table.lowercased() != self.name.lowercased(), table.lowercased() != alias {
                throw ADQLError("no table or alias `\(table)` in FROM", at: at)
            }
            guard let i = columns.firstIndex(where: { $0.name.lowercased() == name.lowercased() }) else {
                throw ADQLError("no column `\(name)` in `\(qualifiedName)` (its columns: \(columns.map(\.name).joined(separator: ", ")))", at: at)
            }
            return i
        }
        func eval(_ e: ADQLExpression, _ row: [LocalCell]) throws(ADQLError) -> LocalCell {
            switch e.kind {
            case .number(let v, let text):
                // An integer literal as written (a 64-bit id is not a Double's); else its value.
                if let i = Int64(text) { return .integer(i) }
                return v == v.rounded() && abs(v) < 9e15 ? .integer(Int64(v)) : .real(v)
            case .string(let s): return .text(s)
            case .null: return .null
            case .column(let t, let n): return row[try columnIndex(t, n, e.position)]
            default: throw ADQLError("TAP_SCHEMA queries support columns and literals here, not this expression", at: e.position)
            }
        }
        // SQL's three-valued logic: a comparison with NULL is unknown (nil), NOT of unknown is
        // unknown, and a row is kept only where the condition is true (as the cluster's
        // translation keeps them: `NOT (mag > 20)` leaves out rows whose mag is NULL).
        func compare(_ op: String, _ x: LocalCell, _ y: LocalCell, _ at: ADQLPosition) throws(ADQLError) -> Bool? {
            if x == .null || y == .null { return nil }
            switch op {
            case "=": return x == y
            case "<>": return x != y
            case "<": return x < y
            case ">": return y < x
            case "<=": return !(y < x)
            case ">=": return !(x < y)
            default: throw ADQLError("`\(op)` is not a comparison", at: at)
            }
        }
        func both(_ a: Bool?, _ b: Bool?) -> Bool? {
            if a == false || b == false { return false }
            return a == nil || b == nil ? nil : true
        }
        var likeBudget = likeSteps
        func test(_ e: ADQLExpression, _ row: [LocalCell]) throws(ADQLError) -> Bool? {
            switch e.kind {
            case .and(let a, let b):
                let x = try test(a, row)
                if x == false { return false }
                return both(x, try test(b, row))
            case .or(let a, let b):
                let x = try test(a, row)
                if x == true { return true }
                let y = try test(b, row)
                if y == true { return true }
                return x == nil || y == nil ? nil : false
            case .not(let a): return try test(a, row).map { !$0 }
            case .binary(let op, let a, let b):
                return try compare(op, try eval(a, row), try eval(b, row), e.position)
            case .isNull(let a, let negated): return (try eval(a, row) == .null) != negated
            case .inList(let a, let list, let negated):
                let x = try eval(a, row)
                if x == .null { return nil }
                var unknown = false
                for item in list {
                    let v = try eval(item, row)
                    if v == .null { unknown = true } else if v == x { return !negated }
                }
                return unknown ? nil : negated
            case .between(let a, let lo, let hi, let negated):
                let x = try eval(a, row)
                let inside = both(try compare(">=", x, try eval(lo, row), e.position), try compare("<=", x, try eval(hi, row), e.position))
                return inside.map { $0 != negated }
            case .like(let a, let p, let negated, let insensitive):
                let text = try eval(a, row), given = try eval(p, row)
                if text == .null || given == .null { return nil }
                guard case .text(var s) = text, case .text(var pattern) = given else { return false }
                // Matching costs up to the pattern's length times the text's, for every row.
                guard pattern.count <= Self.maxPatternCharacters else {
                    throw ADQLError("a LIKE pattern of \(pattern.count) characters is over the limit of \(Self.maxPatternCharacters)", at: p.position)
                }
                // Every comparison is charged to the query's budget: a text of 33 million
                // characters against sixty patterns took minutes of a thread the gateway shares.
                likeBudget -= s.utf8.count
                guard likeBudget >= 0 else { throw Self.overBudget(p.position) }
                if insensitive { (s, pattern) = (s.lowercased(), pattern.lowercased()) }
                guard let matched = Self.like(Array(s.unicodeScalars), Array(pattern.unicodeScalars), budget: &likeBudget) else {
                    throw Self.overBudget(p.position)
                }
                return matched != negated
            default:
                throw ADQLError("a value where a condition belongs", at: e.position)
            }
        }
        // The select list: indices of columns, or constants.
        enum Output { case column(Int), constant(LocalCell), count }
        var outputs: [(Column, Output)] = []
        for item in query.items {
            switch item {
            case .all(let t, let at):
                if let t, t.lowercased() != name.lowercased(), t.lowercased() != alias { throw ADQLError("no table or alias `\(t)` in FROM", at: at) }
                outputs += columns.indices.map { (columns[$0], .column($0)) }
            case .expression(let e, let a):
                switch e.kind {
                case .column(let t, let n):
                    let i = try columnIndex(t, n, e.position)
                    var c = columns[i]
                    if let a { c.name = a }
                    outputs.append((c, .column(i)))
                case .countAll:
                    outputs.append((Column(a ?? "count", "long", "rows"), .count))
                default:
                    let v = try eval(e, [])
                    let datatype = switch v {
                    case .text: "char"
                    case .real: "double"
                    default: "long"
                    }
                    outputs.append((Column(a ?? "expr", datatype, ""), .constant(v)))
                }
            }
        }
        var kept: [[LocalCell]] = []
        for row in rows where try query.whereClause.map({ e throws(ADQLError) in try test(e, row) == true }) ?? true { kept.append(row) }
        if outputs.contains(where: { if case .count = $0.1 { true } else { false } }) {
            let row = outputs.map { o -> LocalCell in
                switch o.1 {
                case .count: .integer(Int64(kept.count))
                case .constant(let v): v
                case .column: .null
                }
            }
            return (outputs.map(\.0), [row], false)
        }
        var keys: [(Int, Bool)] = []
        for o in query.orderBy {
            if case .number(let v, _) = o.key.kind, v == v.rounded(), v >= 1, v <= Double(outputs.count), case .column(let i) = outputs[Int(v) - 1].1 {
                keys.append((i, o.descending))
            } else if case .column(let t, let n) = o.key.kind {
                keys.append((try columnIndex(t, n, o.key.position), o.descending))
            } else {
                throw ADQLError("ORDER BY a column of the table", at: o.key.position)
            }
        }
        if !keys.isEmpty {
            kept.sort { a, b in
                for (i, desc) in keys where a[i] != b[i] { return desc ? b[i] < a[i] : a[i] < b[i] }
                return false
            }
        }
        let limit = min(query.top ?? Int.max, maxrec)
        let overflow = kept.count > limit && (query.top == nil || query.top! > maxrec)
        let out = kept.prefix(limit).map { row in
            outputs.map { o -> LocalCell in
                switch o.1 {
                case .column(let i): row[i]
                case .constant(let v): v
                case .count: .null
                }
            }
        }
        return (outputs.map(\.0), Array(out), overflow)
    }

    /// The longest LIKE pattern accepted.
    public static let maxPatternCharacters = 256
    /// Steps (characters compared, and each text's length) all of a query's LIKEs may take.
    public static let likeSteps = 200_000_000

    static func overBudget(_ at: ADQLPosition) -> ADQLError {
        ADQLError("this query's LIKE comparisons ran past their budget of steps (text length times pattern, over all rows): narrow it with other conditions, or use shorter patterns", at: at)
    }

    /// SQL's LIKE: `%` any run, `_` any one character (a code point); nil when it would take more
    /// than `budget` steps (each taken from it). Iterative: a mismatch after `%` moves back to
    /// just past it, so a step costs up to the pattern's length.
    static func like(_ s: [Unicode.Scalar], _ p: [Unicode.Scalar], budget: inout Int) -> Bool? {
        var i = 0, j = 0, star = -1, mark = 0
        while i < s.count {
            budget -= 1
            if budget < 0 { return nil }
            if j < p.count && (p[j] == "_" || p[j] == s[i]) {
                i += 1; j += 1
            } else if j < p.count && p[j] == "%" {
                star = j; mark = i; j += 1
            } else if star >= 0 {
                j = star + 1; mark += 1; i = mark
            } else {
                return false
            }
        }
        while j < p.count && p[j] == "%" { j += 1 }
        return j == p.count
    }
}
