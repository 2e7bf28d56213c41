import TesseraCompute
import TesseraProtocol

/// A column as TAP describes it.
public struct ADQLColumn: Sendable, Equatable {
    public var name: String
    public var type: Tessera_V1_ColumnType
    public var unit: String
    public var ucd: String
    public var description: String
    /// Text the gateway keeps itself (an uploaded table's): it can be selected, and is looked up
    /// by the row's number in ``ADQLTable/rowColumn``; nothing computes with it.
    public var isText: Bool

    public init(name: String, type: Tessera_V1_ColumnType, unit: String = "", ucd: String = "", description: String = "", isText: Bool = false) {
        (self.name, self.type, self.unit, self.ucd, self.description, self.isText) = (name, type, unit, ucd, description, isText)
    }
}

/// A catalog table a query may name: a dataset the asking user can read.
public struct ADQLTable: Sendable, Equatable {
    /// The schema TAP lists it under, and its name there (the dataset's name for its user).
    public var schema: String
    public var name: String
    public var columns: [ADQLColumn]
    public var raColumn: String
    public var decColumn: String
    public var description: String
    /// The dataset a plan names for it (an upload is stored under a name of its own).
    public var dataset: String
    /// The stored column numbering its rows, where its text columns are looked up (an upload
    /// with text), else nil.
    public var rowColumn: String?

    public init(schema: String, name: String, columns: [ADQLColumn], raColumn: String, decColumn: String, description: String = "",
                dataset: String? = nil, rowColumn: String? = nil) {
        (self.schema, self.name, self.columns, self.raColumn, self.decColumn, self.description) = (schema, name, columns, raColumn, decColumn, description)
        self.dataset = dataset ?? name
        self.rowColumn = rowColumn
    }

    /// `schema.name`, as TAP_SCHEMA lists it.
    public var qualifiedName: String { "\(schema).\(name)" }

    /// The column `name`: exactly as written, else the one matching it ignoring case.
    func column(_ name: String) -> ADQLColumn? {
        if let c = columns.first(where: { $0.name == name }) { return c }
        let matches = columns.filter { $0.name.lowercased() == name.lowercased() }
        return matches.count == 1 ? matches[0] : nil
    }
}

/// One column of the answer: its name in the VOTable, where it comes from in the catalog
/// answer's table, and what TAP says about it.
public struct ADQLField: Sendable, Equatable {
    public var name: String
    /// The column of ``CatalogResult/table`` holding its values.
    public var source: Int
    public var unit: String
    public var ucd: String
    public var description: String
    /// A text column of an upload: its values are that column's at the row numbers the source holds.
    public var text: ADQLTextSource?
}

/// Where an answer's text comes from: a column of an upload (``ADQLTable/qualifiedName``).
public struct ADQLTextSource: Sendable, Equatable {
    public var table: String
    public var column: String
}

/// A query translated: the plan to submit, and how to turn its answer into the TAP table.
public struct ADQLPlan: Sendable {
    public var plan: CatalogQueryPlan
    public var fields: [ADQLField]
    /// Sorting done on the answer (grouped answers are small; rows come sorted by the plan).
    public var localOrder: [(field: Int, descending: Bool)]
    /// The most rows to return: `TOP`, and one past `MAXREC` so an overflow shows.
    public var rowLimit: Int?
}

/// Translates a parsed query against the tables the user may read into a catalog plan.
///
/// The translation is exact or refused: each ADQL construct maps to an expression of the
/// plan's language with the same meaning (`=` to `==`, `BETWEEN` to two comparisons,
/// `IS NULL` to `isnan`, NULL being NaN in the catalog's columns), `CONTAINS` of the table's
/// own position in a constant `CIRCLE`, `BOX` or `POLYGON` in the top-level `AND` becomes the
/// plan's region (pruned by the spatial index), and anything the plan cannot say is an error
/// naming the construct and its place.
public struct ADQLTranslator {
    public let tables: [ADQLTable]

    public init(tables: [ADQLTable]) { self.tables = tables }

    /// `terms` joined by `op` as a balanced tree, in parentheses: the engine's parser makes a
    /// chain of `a or b or c …` as deep as it is long, and a 250-value `IN` under a few `AND`s
    /// then passed the engine's depth limit with an error about text the user never wrote.
    static func balanced(_ terms: [String], _ op: String) -> String {
        guard terms.count > 2 else { return "(" + terms.joined(separator: " \(op) ") + ")" }
        let half = terms.count / 2
        return "(" + balanced(Array(terms[..<half]), op) + " \(op) " + balanced(Array(terms[half...]), op) + ")"
    }

    /// Scalar functions: ADQL's name → the expression language's, with their argument counts.
    static let functions: [String: (name: String, arity: Int)] = [
        "ABS": ("abs", 1), "SQRT": ("sqrt", 1), "LOG10": ("log10", 1), "LOG": ("ln", 1), "EXP": ("exp", 1),
        "POWER": ("pow", 2), "FLOOR": ("floor", 1), "CEILING": ("ceil", 1),
        // A user-defined function of this service (declared in its capabilities): AB magnitude of a flux in nJy.
        "MAG": ("mag", 1),
    ]

    /// One table of the query, and how its columns are named in the plan.
    struct Scope {
        var table: ADQLTable
        var alias: String?
        /// `left_`/`right_` in a cross-match, nothing otherwise.
        var prefix: String
    }

    var scopes: [Scope] = []

    public func table(_ ref: ADQLTableReference) throws(ADQLError) -> ADQLTable {
        let want = ref.name.lowercased()
        let candidates = tables.filter { $0.name.lowercased() == want && (ref.schema == nil || ref.schema?.lowercased() == $0.schema.lowercased()) }
        if let exact = candidates.first(where: { $0.name == ref.name }) { return exact }
        if candidates.count == 1 { return candidates[0] }
        let names = tables.prefix(20).map(\.qualifiedName).joined(separator: ", ")
        throw ADQLError("no table named `\(ref.qualifiedName)` (tables: \(names.isEmpty ? "none" : names)); see /tap/tables", at: ref.position)
    }

    /// The plan for `query`; `maxrec` is the most rows to return (TAP's MAXREC).
    public mutating func translate(_ query: ADQLQuery, maxrec: Int) throws(ADQLError) -> ADQLPlan {
        var plan = CatalogQueryPlan()
        let left = try table(query.from)
        plan.dataset = left.dataset
        scopes = [Scope(table: left, alias: query.from.alias, prefix: "")]
        var conjuncts = query.whereClause.map(Self.conjuncts) ?? []
        if let join = query.join {
            let right = try table(join.table)
            scopes = [Scope(table: left, alias: query.from.alias ?? query.from.name, prefix: "left_"),
                      Scope(table: right, alias: join.table.alias ?? join.table.name, prefix: "right_")]
            var radius: Double?
            for c in Self.conjuncts(join.condition) {
                if radius == nil, let r = try crossmatchRadius(c) {
                    radius = r
                } else {
                    conjuncts.append(c)
                }
            }
            guard let radius else {
                throw ADQLError("a join needs a positional condition on the two tables' positions: `DISTANCE(POINT(a.ra, a.dec), POINT(b.ra, b.dec)) < r` or `1 = CONTAINS(POINT(a.ra, a.dec), CIRCLE(b.ra, b.dec, r))`, r in degrees", at: join.condition.position)
            }
            plan.crossmatch.right = right.dataset
            plan.crossmatch.radiusArcsec = radius * 3600
            plan.crossmatch.kind = .crossmatchAll
        }
        var filters: [String] = []
        for c in conjuncts {
            if plan.region == nil, try region(c, into: &plan) { continue }
            filters.append(try condition(c))
        }
        if !filters.isEmpty { plan.filter = filters.count == 1 ? filters[0] : Self.balanced(filters.map { "(\($0))" }, "and") }

        let aggregated = !query.groupBy.isEmpty || query.items.contains { if case .expression(let e, _) = $0 { e.containsAggregate } else { false } }
        var result = aggregated ? try aggregatePlan(query, plan: plan) : try rowsPlan(query, plan: plan, maxrec: maxrec)
        // Each text goes to the engine, which reads at most this much of one expression.
        for text in [result.plan.filter, result.plan.groupBy, result.plan.rows.sortBy] + result.plan.rows.select + result.plan.aggregates.map(\.expression)
        where text.utf8.count > Limits.expressionCharacters {
            throw ADQLError("the query becomes an expression of \(text.utf8.count) bytes, over the engine's limit of \(Limits.expressionCharacters): shorten it (a long IN list, or a long chain of conditions)")
        }
        result.fields = Self.uniqueNames(result.fields)
        return result
    }

    // MARK: Rows

    func rowsPlan(_ query: ADQLQuery, plan: CatalogQueryPlan, maxrec: Int) throws(ADQLError) -> ADQLPlan {
        var plan = plan
        var fields: [ADQLField] = []
        var select: [String] = []
        for item in query.items {
            switch item {
            case .all(let t, let at):
                for s in try scopes(named: t, at: at) {
                    for c in s.table.columns {
                        guard Self.isEngineName(c.name) else {
                            throw ADQLError("the column `\(c.name)` of `\(s.table.name)` cannot be read here (its name is not an identifier): name the columns instead of `*`", at: at)
                        }
                        var field = ADQLField(name: scopes.count > 1 ? s.prefix + c.name : c.name, source: select.count, unit: c.unit, ucd: c.ucd, description: c.description)
                        select.append(try selected(c, of: s, into: &field, at: at))
                        fields.append(field)
                    }
                }
            case .expression(let e, let alias):
                let meta = try metadata(e)
                var field = ADQLField(name: alias ?? meta.name, source: select.count, unit: meta.unit, ucd: meta.ucd, description: meta.description)
                if case .column(let t, let n) = e.kind {
                    let (s, c) = try resolve(t, n, at: e.position)
                    select.append(try selected(c, of: s, into: &field, at: e.position))
                } else {
                    select.append(try value(e))
                }
                fields.append(field)
            }
        }
        plan.rows.select = select
        if query.orderBy.count > 1 {
            throw ADQLError("ORDER BY more than one key is not supported on rows (only on grouped answers)", at: query.orderBy[1].key.position)
        }
        if let order = query.orderBy.first {
            plan.rows.sortBy = try orderKey(order.key, query: query)
            plan.rows.descending = order.descending
        }
        // TOP, and one row past MAXREC so that an overflow can be flagged.
        let limit = min(query.top ?? Int.max, maxrec == Int.max ? Int.max : maxrec + 1)
        if limit < Int.max { plan.rows.limit = UInt64(limit) }
        if limit == 0 { plan.rows.limit = 1 }
        // The plan's own cap on rows returned (a million unless raised) gives way to MAXREC.
        if limit < Int.max { plan.rows.maxRows = UInt64(max(limit, 1)) }
        if !plan.rows.sortBy.isEmpty && plan.rows.limit == 0 {
            throw ADQLError("ORDER BY on rows needs `SELECT TOP n` (or a MAXREC): the rows are sorted as a top-n", at: query.orderBy[0].key.position)
        }
        return ADQLPlan(plan: plan, fields: fields, localOrder: [], rowLimit: limit == Int.max ? nil : limit)
    }

    /// What the plan selects for column `c` of scope `s`: the column itself, or for text an
    /// upload keeps in the gateway, its row number (and `field` says where the text is).
    func selected(_ c: ADQLColumn, of s: Scope, into field: inout ADQLField, at: ADQLPosition) throws(ADQLError) -> String {
        guard c.isText else { return s.prefix + c.name }
        guard let rows = s.table.rowColumn else { throw ADQLError("the text column `\(c.name)` of `\(s.table.qualifiedName)` cannot be read", at: at) }
        field.text = ADQLTextSource(table: s.table.qualifiedName, column: c.name)
        field.unit = c.unit
        return s.prefix + rows
    }

    /// An ORDER BY key: a select alias, a select position (1-based), or an expression.
    func orderKey(_ key: ADQLExpression, query: ADQLQuery) throws(ADQLError) -> String {
        if case .column(nil, let name) = key.kind {
            for case .expression(let e, let alias?) in query.items where alias.lowercased() == name.lowercased() { return try value(e) }
        }
        if case .number(let v, _) = key.kind {
            guard v == v.rounded(), v >= 1, v <= Double(query.items.count), case .expression(let e, _) = query.items[Int(v) - 1] else {
                throw ADQLError("ORDER BY \(v): not the position of a select item (1…\(query.items.count))", at: key.position)
            }
            return try value(e)
        }
        return try value(key)
    }

    // MARK: Aggregates

    func aggregatePlan(_ query: ADQLQuery, plan: CatalogQueryPlan) throws(ADQLError) -> ADQLPlan {
        var plan = plan
        if query.groupBy.count > 1 {
            throw ADQLError("GROUP BY more than one key is not supported; group by one numeric expression", at: query.groupBy[1].position)
        }
        let key = try query.groupBy.first.map { e throws(ADQLError) in try value(e) }
        if let key { plan.groupBy = key }
        var fields: [ADQLField] = []
        var outputs: [String] = []  // each field's expression, to find ORDER BY keys
        let keyColumn = key == nil ? 0 : 1
        for item in query.items {
            guard case .expression(let e, let alias) = item else {
                if case .all(_, let at) = item { throw ADQLError("`*` with aggregates: name the columns", at: at) }
                continue
            }
            switch e.kind {
            case .countAll:
                plan.aggregates.append(Self.aggregate(.aggCount, ""))
                fields.append(ADQLField(name: alias ?? "count", source: keyColumn + plan.aggregates.count - 1, unit: "", ucd: "meta.number", description: "rows"))
                outputs.append("count(*)")
            case .aggregate(let f, let arg, let distinct):
                if distinct { throw ADQLError("`\(f)(DISTINCT ...)` is not supported", at: e.position) }
                let text = try value(arg)
                let function: AggregateFunction = switch f {
                case "COUNT": .aggCount
                case "SUM": .aggSum
                case "AVG": .aggMean
                case "MIN": .aggMin
                default: .aggMax
                }
                plan.aggregates.append(Self.aggregate(function, text))
                let meta = try metadata(arg)
                fields.append(ADQLField(name: alias ?? "\(f.lowercased())_\(meta.name)", source: keyColumn + plan.aggregates.count - 1,
                                        unit: f == "COUNT" ? "" : meta.unit, ucd: f == "COUNT" ? "meta.number" : "", description: "\(f.lowercased()) of \(text)"))
                outputs.append("\(f)(\(text))")
            default:
                if e.containsAggregate {
                    throw ADQLError("an aggregate must be a whole select item (an expression of aggregates is not supported)", at: e.position)
                }
                let text = try value(e)
                guard let key, text == key else {
                    throw ADQLError("`\(text)` is neither an aggregate nor the GROUP BY key", at: e.position)
                }
                let meta = try metadata(e)
                fields.append(ADQLField(name: alias ?? meta.name, source: 0, unit: meta.unit, ucd: meta.ucd, description: meta.description))
                outputs.append(text)
            }
        }
        var order: [(field: Int, descending: Bool)] = []
        for o in query.orderBy {
            order.append((try orderField(o.key, query: query, fields: fields, outputs: outputs), o.descending))
        }
        return ADQLPlan(plan: plan, fields: fields, localOrder: order, rowLimit: query.top)
    }

    func orderField(_ key: ADQLExpression, query: ADQLQuery, fields: [ADQLField], outputs: [String]) throws(ADQLError) -> Int {
        if case .column(nil, let name) = key.kind {
            for (i, item) in query.items.enumerated() {
                if case .expression(_, let alias?) = item, alias.lowercased() == name.lowercased() { return i }
            }
        }
        if case .number(let v, _) = key.kind, v == v.rounded(), v >= 1, v <= Double(fields.count) { return Int(v) - 1 }
        let text: String
        switch key.kind {
        case .countAll: text = "count(*)"
        case .aggregate(let f, let arg, _): text = "\(f)(\(try value(arg)))"
        default: text = try value(key)
        }
        guard let i = outputs.firstIndex(of: text) else {
            throw ADQLError("ORDER BY of a grouped answer must name one of its columns (`\(text)` is not selected)", at: key.position)
        }
        return i
    }

    static func aggregate(_ f: AggregateFunction, _ e: String) -> AggregateSpec {
        var s = AggregateSpec()
        s.function = f
        s.expression = e
        return s
    }

    // MARK: Regions and cross-match conditions

    static func conjuncts(_ e: ADQLExpression) -> [ADQLExpression] {
        if case .and(let a, let b) = e.kind { return conjuncts(a) + conjuncts(b) }
        return [e]
    }

    /// `CONTAINS(...) = 1` (either way round), as its call, or nil.
    static func containsCall(_ e: ADQLExpression) -> (name: String, args: [ADQLExpression], inside: Bool)? {
        guard case .binary("=", let a, let b) = e.kind else { return nil }
        for (call, flag) in [(a, b), (b, a)] {
            if case .call(let name, let args) = call.kind, name == "CONTAINS" || name == "INTERSECTS",
               case .number(let v, _) = flag.kind, v == 0 || v == 1 {
                return (name, args, v == 1)
            }
        }
        return nil
    }

    /// The arguments of a `POINT`, `CIRCLE`, `BOX` or `POLYGON`, without the coordinate system.
    func shape(_ e: ADQLExpression) throws(ADQLError) -> (name: String, args: [ADQLExpression])? {
        guard case .call(let name, var args) = e.kind, ["POINT", "CIRCLE", "BOX", "POLYGON"].contains(name) else { return nil }
        if let first = args.first, case .string(let frame) = first.kind {
            let f = frame.uppercased().filter { $0 != " " }
            guard f.isEmpty || f.hasPrefix("ICRS") || f == "J2000" else {
                throw ADQLError("the coordinate system '\(frame)' is not supported: positions are ICRS", at: first.position)
            }
            args.removeFirst()
        }
        let arity: ClosedRange<Int> = switch name {
        case "POINT": 2...2
        case "CIRCLE": 3...3
        case "BOX": 4...4
        default: 6...(2 * 100)
        }
        guard arity.contains(args.count), name != "POLYGON" || args.count % 2 == 0 else {
            throw ADQLError("`\(name)` takes \(name == "POLYGON" ? "3 to 100 vertices (ra, dec pairs)" : "\(arity.lowerBound) coordinates") after its optional coordinate system; got \(args.count)", at: e.position)
        }
        return (name, args)
    }

    /// The value of an expression of numbers only.
    static func constant(_ e: ADQLExpression) -> Double? {
        switch e.kind {
        case .number(let v, _): return v
        case .negate(let x): return constant(x).map { -$0 }
        case .call("PI", let a) where a.isEmpty: return Double.pi
        case .binary(let op, let a, let b):
            guard let x = constant(a), let y = constant(b) else { return nil }
            switch op {
            case "+": return x + y
            case "-": return x - y
            case "*": return x * y
            case "/": return x / y
            default: return nil
            }
        default: return nil
        }
    }

    func constants(_ args: [ADQLExpression], of what: String) throws(ADQLError) -> [Double] {
        var out: [Double] = []
        for a in args {
            guard let v = Self.constant(a), v.isFinite else {
                throw ADQLError("the coordinates of a `\(what)` must be numbers here", at: a.position)
            }
            out.append(v)
        }
        return out
    }

    /// Whether `point` is the first table's own position columns.
    func isOwnPosition(_ point: [ADQLExpression]) throws(ADQLError) -> Bool {
        guard case .column = point[0].kind, case .column = point[1].kind else { return false }
        let scope = scopes[0]
        let ra = try value(point[0]), dec = try value(point[1])
        return ra == scope.prefix + scope.table.raColumn && dec == scope.prefix + scope.table.decColumn
    }

    /// Makes `c` the plan's region if it is `CONTAINS(POINT(ra, dec), shape) = 1` on the
    /// (left) table's position and a constant shape.
    func region(_ c: ADQLExpression, into plan: inout CatalogQueryPlan) throws(ADQLError) -> Bool {
        guard let call = Self.containsCall(c), call.inside, call.args.count == 2,
              let point = try shape(call.args[0]), point.name == "POINT", try isOwnPosition(point.args),
              let region = try shape(call.args[1]) else { return false }
        switch region.name {
        case "CIRCLE":
            guard region.args.allSatisfy({ Self.constant($0) != nil }) else { return false }
            let v = try constants(region.args, of: "CIRCLE")
            plan.cone.ra = v[0]
            plan.cone.dec = v[1]
            plan.cone.radius = v[2]
        case "BOX":
            // ADQL 2.0's BOX: a centre, and a width and height along the coordinate axes (it is
            // deprecated in ADQL 2.1 for this ambiguity; this service reads it as the range).
            let v = try constants(region.args, of: "BOX")
            guard v[2] >= 0, v[3] >= 0 else {
                throw ADQLError("a BOX's width and height must not be negative (got \(v[2]) × \(v[3]) degrees)", at: call.args[1].position)
            }
            var ra0 = (v[0] - v[2] / 2).truncatingRemainder(dividingBy: 360), ra1 = (v[0] + v[2] / 2).truncatingRemainder(dividingBy: 360)
            if ra0 < 0 { ra0 += 360 }
            if ra1 < 0 { ra1 += 360 }
            if v[2] >= 360 { (ra0, ra1) = (0, 360) }
            plan.box.raMin = ra0
            plan.box.raMax = ra1
            plan.box.decMin = max(-90, v[1] - v[3] / 2)
            plan.box.decMax = min(90, v[1] + v[3] / 2)
        case "POLYGON":
            let v = try constants(region.args, of: "POLYGON")
            plan.polygon.ra = stride(from: 0, to: v.count, by: 2).map { v[$0] }
            plan.polygon.dec = stride(from: 1, to: v.count, by: 2).map { v[$0] }
        default:
            return false
        }
        return true
    }

    /// Whether `p` and `q` are POINTs of the two joined tables' positions (either way round).
    func joinsPositions(_ p: ADQLExpression, _ q: ADQLExpression) throws(ADQLError) -> Bool {
        guard scopes.count == 2, let a = try shape(p), a.name == "POINT", let b = try shape(q), b.name == "POINT" else { return false }
        return try joinsPositions(a.args, b.args)
    }

    func joinsPositions(_ a: [ADQLExpression], _ b: [ADQLExpression]) throws(ADQLError) -> Bool {
        guard scopes.count == 2 else { return false }
        let x = (try value(a[0]), try value(a[1])), y = (try value(b[0]), try value(b[1]))
        let l = (scopes[0].prefix + scopes[0].table.raColumn, scopes[0].prefix + scopes[0].table.decColumn)
        let r = (scopes[1].prefix + scopes[1].table.raColumn, scopes[1].prefix + scopes[1].table.decColumn)
        return (x == l && y == r) || (x == r && y == l)
    }

    /// The radius (degrees) of a join condition between the two tables' positions, or nil.
    func crossmatchRadius(_ c: ADQLExpression) throws(ADQLError) -> Double? {
        if case .binary(let op, let a, let b) = c.kind, op == "<" || op == "<=" || op == ">" || op == ">=" {
            let (d, r) = op.hasPrefix("<") ? (a, b) : (b, a)
            if case .call("DISTANCE", let args) = d.kind, args.count == 2, try joinsPositions(args[0], args[1]), let radius = Self.constant(r) {
                return radius
            }
        }
        if let call = Self.containsCall(c), call.inside, call.args.count == 2, let point = try shape(call.args[0]), point.name == "POINT",
           let circle = try shape(call.args[1]), circle.name == "CIRCLE", let radius = Self.constant(circle.args[2]),
           try joinsPositions(point.args, Array(circle.args[0...1])) {
            return radius
        }
        return nil
    }

    // MARK: Expressions

    func scopes(named table: String?, at: ADQLPosition) throws(ADQLError) -> [Scope] {
        guard let table else { return scopes }
        let t = table.lowercased()
        let found = scopes.filter { ($0.alias ?? $0.table.name).lowercased() == t || $0.table.name.lowercased() == t }
        guard !found.isEmpty else { throw ADQLError("no table or alias `\(table)` in FROM", at: at) }
        return found
    }

    func resolve(_ table: String?, _ name: String, at: ADQLPosition) throws(ADQLError) -> (Scope, ADQLColumn) {
        let candidates = try scopes(named: table, at: at)
        let matches = candidates.compactMap { s in s.table.column(name).map { (s, $0) } }
        if matches.count > 1 {
            throw ADQLError("the column `\(name)` is in both tables: qualify it (`\(matches[0].0.alias ?? matches[0].0.table.name).\(name)`)", at: at)
        }
        if let m = matches.first, !Self.isEngineName(m.1.name) {
            throw ADQLError("the column `\(m.1.name)` cannot be used in queries here: its name is not an identifier (letters, digits and _)", at: at)
        }
        guard let m = matches.first else {
            let known = candidates.flatMap { $0.table.columns.map(\.name) }
            let list = known.prefix(30).joined(separator: ", ") + (known.count > 30 ? ", …" : "")
            throw ADQLError("no column `\(name)` in \(candidates.map { "`\($0.table.name)`" }.joined(separator: " or ")) (its columns: \(list))", at: at)
        }
        return m
    }

    /// Whether the expression language reads `name` as one column: a name of letters, digits
    /// and `_`, not one of its words. A stored column named otherwise (`g-mag`) would be read as
    /// an expression, so it is refused rather than quoted.
    public static func isEngineName(_ name: String) -> Bool {
        func isLetter(_ b: UInt8) -> Bool { (b | 0x20) >= 97 && (b | 0x20) <= 122 }
        guard let first = name.utf8.first, first == UInt8(ascii: "_") || isLetter(first) else { return false }
        return name.utf8.allSatisfy { $0 == UInt8(ascii: "_") || isLetter($0) || ($0 >= 48 && $0 <= 57) }
            && !["and", "or", "not"].contains(name.lowercased())
    }

    /// What TAP says about a select item: a name, and a column's unit, UCD and description.
    func metadata(_ e: ADQLExpression) throws(ADQLError) -> (name: String, unit: String, ucd: String, description: String) {
        switch e.kind {
        case .column(let t, let n):
            // A column named in a join keeps its own name, as in SQL (`a.id, b.id` are `id` and
            // `id_2`); `*` of a join names them `left_…` and `right_…`.
            let (_, c) = try resolve(t, n, at: e.position)
            return (c.name, c.unit, c.ucd, c.description)
        case .call(let f, _):
            return (f == "DISTANCE" ? "distance" : f.lowercased(), f == "DISTANCE" ? "deg" : "", "", "")
        default:
            return ("expr", "", "", "")
        }
    }

    /// An expression's text in the plan's language, checked to be a number.
    func value(_ e: ADQLExpression) throws(ADQLError) -> String {
        switch e.kind {
        case .number(_, let text):
            return text
        case .string:
            throw ADQLError("a string here: the catalog's columns are numbers", at: e.position)
        case .null:
            throw ADQLError("NULL as a value: test for it with `IS NULL`", at: e.position)
        case .column(let t, let n):
            let (s, c) = try resolve(t, n, at: e.position)
            guard !c.isText else {
                throw ADQLError("the column `\(c.name)` of `\(s.table.qualifiedName)` is text: it can be selected, but not computed with, compared, sorted or grouped on", at: e.position)
            }
            return s.prefix + c.name
        case .negate(let x):
            return "-(\(try value(x)))"
        case .binary(let op, let a, let b) where ["+", "-", "*", "/"].contains(op):
            return "(\(try value(a)) \(op) \(try value(b)))"
        case .call(let name, let args):
            return try call(name, args, at: e.position)
        case .countAll, .aggregate:
            throw ADQLError("an aggregate here: aggregates belong in the select list", at: e.position)
        default:
            throw ADQLError("a condition where a value belongs", at: e.position)
        }
    }

    func call(_ name: String, _ args: [ADQLExpression], at: ADQLPosition) throws(ADQLError) -> String {
        switch name {
        case "PI":
            guard args.isEmpty else { throw ADQLError("`PI` takes no arguments", at: at) }
            return "3.141592653589793"
        case "DISTANCE":
            var coordinates: [ADQLExpression]
            if args.count == 2 {
                guard let p = try shape(args[0]), p.name == "POINT", let q = try shape(args[1]), q.name == "POINT" else {
                    throw ADQLError("`DISTANCE` takes two POINTs (or four coordinates)", at: at)
                }
                coordinates = p.args + q.args
            } else if args.count == 4 {
                coordinates = args
            } else {
                throw ADQLError("`DISTANCE` takes two POINTs (or four coordinates); got \(args.count) arguments", at: at)
            }
            if args.count == 2, try joinsPositions(args[0], args[1]) {
                // The pair's own separation, as the cross-match measured it.
                return "(sep_arcsec / 3600)"
            }
            var texts: [String] = []
            for c in coordinates { texts.append(try value(c)) }
            return "distance(\(texts.joined(separator: ", ")))"
        case "ROUND" where args.count == 1 || args.count == 2:
            if args.count == 2 {
                guard let digits = Self.constant(args[1]), digits == 0 else {
                    throw ADQLError("`ROUND(x, n)` is supported for n = 0 only", at: args[1].position)
                }
            }
            // SQL rounds halves away from zero; the engine's round() to even, as numpy does.
            return "round_away(\(try value(args[0])))"
        case "POINT", "CIRCLE", "BOX", "POLYGON", "CONTAINS", "INTERSECTS", "AREA", "CENTROID", "COORD1", "COORD2", "COORDSYS", "REGION":
            throw ADQLError("`\(name)` is supported only as `CONTAINS(POINT(ra, dec), CIRCLE|BOX|POLYGON(...)) = 1` and in `DISTANCE(POINT, POINT)`", at: at)
        default:
            guard let f = Self.functions[name] else {
                let known = (Self.functions.keys + ["DISTANCE", "PI", "ROUND"]).sorted().joined(separator: ", ")
                throw ADQLError("the function `\(name)` is not supported (supported: \(known), and CONTAINS with POINT, CIRCLE, BOX, POLYGON)", at: at)
            }
            guard args.count == f.arity else {
                throw ADQLError("`\(name)` takes \(f.arity) argument\(f.arity == 1 ? "" : "s"), got \(args.count)", at: at)
            }
            var texts: [String] = []
            for a in args { texts.append(try value(a)) }
            return "\(f.name)(\(texts.joined(separator: ", ")))"
        }
    }

    /// A condition's text in the plan's language, with SQL's three-valued logic: NULL (NaN in
    /// the catalog) makes a comparison unknown, and unknown rows are kept by neither a condition
    /// nor its negation. `negated` asks for the rows where the condition is false (not merely
    /// not true): NOT is pushed down to the comparisons, each replaced by its complement, which
    /// is false for NaN as the comparison is (`x <> y` is `x < y or x > y` for the same reason).
    func condition(_ e: ADQLExpression, negated: Bool = false) throws(ADQLError) -> String {
        switch e.kind {
        case .and(let a, let b):
            let x = try condition(a, negated: negated), y = try condition(b, negated: negated)
            return negated ? "(\(x) or \(y))" : "(\(x) and \(y))"
        case .or(let a, let b):
            let x = try condition(a, negated: negated), y = try condition(b, negated: negated)
            return negated ? "(\(x) and \(y))" : "(\(x) or \(y))"
        case .not(let a):
            return try condition(a, negated: !negated)
        case .binary(let op, let a, let b) where ["=", "<>", "<", ">", "<=", ">="].contains(op):
            if let call = Self.containsCall(e) {
                return try containsCondition(call.args, inside: call.inside != negated, at: e.position)
            }
            if op == "=" || op == "<>" {
                var test = try booleanTest(a, b, truth: (op == "=") != negated)
                if test == nil { test = try booleanTest(b, a, truth: (op == "=") != negated) }
                if let test { return test }
            }
            let complement = ["=": "<>", "<>": "=", "<": ">=", ">=": "<", ">": "<=", "<=": ">"]
            let effective = negated ? complement[op, default: op] : op
            let x = try value(a), y = try value(b)
            switch effective {
            case "=": return "(\(x) == \(y))"
            case "<>": return "(\(x) < \(y) or \(x) > \(y))"
            default: return "(\(x) \(effective) \(y))"
            }
        case .between(let x, let lo, let hi, let n):
            let v = try value(x), l = try value(lo), h = try value(hi)
            return n != negated ? "(\(v) < \(l) or \(v) > \(h))" : "(\(v) >= \(l) and \(v) <= \(h))"
        case .inList(let x, let list, let n):
            let v = try value(x)
            var terms: [String] = []
            for item in list { terms.append(try value(item)) }
            if n != negated { return Self.balanced(terms.map { "(\(v) < \($0) or \(v) > \($0))" }, "and") }
            return Self.balanced(terms.map { "(\(v) == \($0))" }, "or")
        case .isNull(let x, let n):
            // IS NULL is never unknown: negation is plain.
            return n != negated ? "not isnan(\(try value(x)))" : "isnan(\(try value(x)))"
        case .like:
            throw ADQLError("`LIKE` needs text columns; the catalog's columns are numbers", at: e.position)
        case .call(let name, _) where name == "CONTAINS" || name == "INTERSECTS":
            throw ADQLError("`\(name)` is a number: compare it, `\(name)(...) = 1`", at: e.position)
        default:
            throw ADQLError("a value where a condition belongs (compare it with something)", at: e.position)
        }
    }

    /// A boolean column compared with 1 or 0 (or 'T'/'F', 'true'/'false'), as TAP clients test
    /// VOTable booleans: the column itself, or its negation.
    func booleanTest(_ column: ADQLExpression, _ flag: ADQLExpression, truth wanted: Bool) throws(ADQLError) -> String? {
        guard case .column(let t, let n) = column.kind else { return nil }
        let (s, c) = try resolve(t, n, at: column.position)
        guard c.type == .columnBool else { return nil }
        let truth: Bool
        switch flag.kind {
        case .number(let v, _) where v == 0 || v == 1: truth = v == 1
        case .string(let text) where ["T", "F", "TRUE", "FALSE"].contains(text.uppercased()): truth = text.uppercased().hasPrefix("T")
        default: throw ADQLError("`\(c.name)` is a boolean: compare it with 1 or 0", at: flag.position)
        }
        return truth == wanted ? "(\(s.prefix + c.name))" : "not (\(s.prefix + c.name))"
    }

    /// `CONTAINS(POINT, CIRCLE)` that is not the plan's region: a distance test per row.
    func containsCondition(_ args: [ADQLExpression], inside: Bool, at: ADQLPosition) throws(ADQLError) -> String {
        guard args.count == 2, let point = try shape(args[0]), point.name == "POINT", let region = try shape(args[1]) else {
            throw ADQLError("`CONTAINS` takes a POINT and a CIRCLE, BOX or POLYGON", at: at)
        }
        guard region.name == "CIRCLE" else {
            throw ADQLError("a `\(region.name)` is supported once per query, as `CONTAINS(POINT(ra, dec), \(region.name)(...)) = 1` on the table's own position in the WHERE's top-level AND", at: at)
        }
        let d = "distance(\(try value(point.args[0])), \(try value(point.args[1])), \(try value(region.args[0])), \(try value(region.args[1])))"
        let r = try value(region.args[2])
        // Outside is `>`, not `not <=`: a row without a position is in neither.
        return inside ? "(\(d) <= \(r))" : "(\(d) > \(r))"
    }

    /// Field names made unique (`x`, `x_2`, ...), as VOTable and pandas need.
    static func uniqueNames(_ fields: [ADQLField]) -> [ADQLField] {
        var seen: [String: Int] = [:]
        return fields.map { f in
            var f = f
            let key = f.name.lowercased()
            if let n = seen[key] {
                seen[key] = n + 1
                f.name = "\(f.name)_\(n + 1)"
            } else {
                seen[key] = 1
            }
            return f
        }
    }
}
