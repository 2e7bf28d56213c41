import TesseraProtocol
import TesseraSky

public typealias CatalogQueryPlan = Tessera_V1_CatalogQueryPlan
public typealias CatalogPartial = Tessera_V1_CatalogPartial

/// Why a catalog question cannot be asked as written: the message says what to change.
public struct CatalogQueryError: Error, CustomStringConvertible, Sendable, Equatable {
    public let message: String
    /// False for a question that cannot be answered as asked (a schema mismatch, too many groups,
    /// over the row cap): the same on every copy of the data. True where another try may
    /// succeed: a shard or partial that could not be read.
    public let retryable: Bool
    public init(_ message: String, retryable: Bool = false) {
        self.message = message
        self.retryable = retryable
    }
    public var description: String { message }

    /// A collect that returns more rows than its cap.
    public static func overRowCap(_ cap: Int) -> CatalogQueryError {
        CatalogQueryError("the query returns more than \(cap) rows (the row cap); narrow the region or filter, add a limit, or raise max_rows")
    }
}

extension CatalogQueryPlan {
    /// Rows without a limit (not for a Python function): each shard's rows are an answer of
    /// their own, held together to the row cap.
    public var collectsRows: Bool { hasRows && rows.limit == 0 && !hasPython }
}

/// A catalog plan checked against a dataset's schema: every expression parsed and typed, every
/// number in range. The scheduler checks a plan this way before expanding it (so a typo fails
/// the submission, not a thousand tasks) and each worker checks it again against the shard it opens.
public struct CheckedCatalogQuery: Sendable {
    /// Groups a group-by may produce unless the plan sets `max_groups`.
    public static let defaultMaxGroups = Limits.groupsDefault
    /// Rows a collect (rows without a limit) may return unless the plan sets `max_rows`.
    public static let defaultMaxRows = 1_000_000
    /// Highest HEALPix order a sky map may use (12·4^13 ≈ 800M pixels, sparse).
    public static let maxSkyMapOrder = 13

    /// One column of a rows result: a stored column keeps its type; an expression gives numbers.
    public struct Selected: Sendable {
        public let name: String
        public let expression: CheckedExpression
        /// The stored column when the selection is exactly a column name.
        public let column: String?
    }

    public enum Output: Sendable {
        /// Rows passing, and aggregates of expressions: per group when `groupBy` is set.
        case aggregates(groupBy: CheckedExpression?, moments: [CheckedExpression], sketches: [CheckedExpression])
        case histogram(x: CheckedExpression, y: CheckedExpression?)
        case skyMap(order: Int, expression: CheckedExpression?)
        case rows(select: [Selected], sortBy: CheckedExpression?)
    }

    public let plan: CatalogQueryPlan
    public let filter: CheckedExpression?
    public let region: (any SkyRegion)?
    public let output: Output
    /// Per moments expression: whether a `min` or `max` of it is asked for (the scan's loops
    /// skip tracking extremes otherwise).
    public private(set) var momentExtremes: [Bool] = []
    public let maxGroups: Int
    public let maxRows: Int

    /// The most rows a collect of `plan` may return.
    public static func rowCap(_ plan: CatalogQueryPlan) -> Int {
        plan.rows.maxRows == 0 ? defaultMaxRows : Int(clamping: plan.rows.maxRows)
    }

    /// - Parameters:
    ///   - columns: the dataset's schema (name and stored type of each column).
    ///   - raColumn, decColumn: the position columns, for regions.
    public init(_ plan: CatalogQueryPlan, columns: [Tessera_V1_ColumnSchema], raColumn: String, decColumn: String) throws(CatalogQueryError) {
        self.plan = plan
        var schema: [String: ExpressionType] = [:]
        for c in columns { schema[c.name] = c.type == .columnBool ? .boolean : .number }
        func check(_ text: String, _ what: String, _ type: ExpressionType) throws(CatalogQueryError) -> CheckedExpression {
            guard !trimmed(text).isEmpty else { throw CatalogQueryError("the \(what) is empty") }
            do {
                return try ExpressionChecker.check(text, schema: schema, expecting: type)
            } catch {
                throw CatalogQueryError("in the \(what): \(error)")
            }
        }
        for (count, what) in [(plan.aggregates.count, "aggregates"), (plan.rows.select.count, "selected columns")] where count > Limits.planExpressions {
            throw CatalogQueryError("\(count) \(what) are more than the limit of \(Limits.planExpressions)")
        }
        // All the text the checks below will parse, bounded before any is parsed.
        let texts = [plan.filter, plan.groupBy, plan.histogram.x, plan.histogram.y, plan.skyMap.expression, plan.rows.sortBy]
            + plan.rows.select + plan.aggregates.map(\.expression)
        let textBytes = texts.reduce(0) { $0 + $1.utf8.count }
        guard textBytes <= Limits.planTextBytes else {
            throw CatalogQueryError("the question's expressions hold \(textBytes) bytes together, over the limit of \(Limits.planTextBytes)")
        }
        if plan.progressive {
            let s = plan.progressInterval
            guard s == 0 || Limits.progressIntervalSeconds.contains(s) else {
                throw CatalogQueryError("a progress interval of \(s) s is outside the allowed \(Limits.progressIntervalSeconds.lowerBound)…\(Limits.progressIntervalSeconds.upperBound) s")
            }
        }
        filter = plan.filter.isEmpty ? nil : try check(plan.filter, "filter", .boolean)
        region = try Self.checkedRegion(plan)
        if region != nil {
            guard schema[raColumn] == .number, schema[decColumn] == .number else {
                throw CatalogQueryError("a region needs the position columns `\(raColumn)` and `\(decColumn)`, which this dataset lacks")
            }
        }
        guard plan.maxGroups <= Limits.groups else {
            throw CatalogQueryError("max_groups \(plan.maxGroups) is over the limit of \(Limits.groups) groups: group by a coarser key")
        }
        guard plan.fanIn == 0 || Limits.catalogFanIn.contains(plan.fanIn) else {
            throw CatalogQueryError("a fan-in of \(plan.fanIn) is outside the allowed \(Limits.catalogFanIn.lowerBound)…\(Limits.catalogFanIn.upperBound) partials a merge (0 takes the default, \(Limits.catalogFanInDefault))")
        }
        maxGroups = plan.maxGroups == 0 ? Self.defaultMaxGroups : Int(plan.maxGroups)
        maxRows = Self.rowCap(plan)

        let kinds = [plan.hasHistogram, plan.hasSkyMap, plan.hasRows, !plan.aggregates.isEmpty || !plan.groupBy.isEmpty]
        guard kinds.filter({ $0 }).count <= 1 else {
            throw CatalogQueryError("a plan asks for one result: aggregates (with an optional group-by), a histogram, a sky map or rows — this one asks for several")
        }
        if plan.hasHistogram {
            let h = plan.histogram
            let x = try check(h.x, "histogram's x expression", .number)
            try Self.checkBins(h.xBins, h.xMin, h.xMax, "x")
            var y: CheckedExpression?
            if !h.y.isEmpty {
                y = try check(h.y, "histogram's y expression", .number)
                try Self.checkBins(h.yBins, h.yMin, h.yMax, "y")
            }
            // In 64 bits unsigned, where two 32-bit counts cannot overflow (nor trap).
            guard UInt64(h.xBins) * (y == nil ? 1 : UInt64(h.yBins)) <= UInt64(Limits.histogramBins) else {
                throw CatalogQueryError("a histogram of \(h.xBins) × \(h.yBins) bins is more than the limit of \(Limits.histogramBins) bins")
            }
            output = .histogram(x: x, y: y)
        } else if plan.hasSkyMap {
            let m = plan.skyMap
            guard m.order <= Self.maxSkyMapOrder else {
                throw CatalogQueryError("a sky map of order \(m.order) is too fine; the highest is \(Self.maxSkyMapOrder)")
            }
            output = .skyMap(order: Int(m.order), expression: m.expression.isEmpty ? nil : try check(m.expression, "sky map's expression", .number))
        } else if plan.hasRows {
            let r = plan.rows
            var select: [Selected] = []
            let names = r.select.isEmpty ? columns.map(\.name) : r.select
            for s in names {
                let (label, text) = Self.namedSelection(trimmed(s))
                let stored = columns.first { $0.name == text }
                let e = try check(text, "selected column `\(label)`", stored?.type == .columnBool ? .boolean : .number)
                select.append(Selected(name: label, expression: e, column: stored?.name))
            }
            var sort: CheckedExpression?
            if !r.sortBy.isEmpty {
                sort = try check(r.sortBy, "sort expression", .number)
                guard r.limit > 0 else { throw CatalogQueryError("sorting needs a limit (top-k): say how many rows") }
            }
            guard r.sampleFraction >= 0, r.sampleFraction <= 1 else {
                throw CatalogQueryError("a sample fraction must be within 0…1, not \(r.sampleFraction)")
            }
            if r.limit > 0 && Int(clamping: r.limit) > maxRows {
                throw CatalogQueryError("a limit of \(r.limit) rows is over the row cap of \(maxRows); raise max_rows or lower the limit")
            }
            output = .rows(select: select, sortBy: sort)
            if plan.hasPython { try Self.checkPython(plan) }
        } else if plan.hasPython {
            throw CatalogQueryError("a Python function runs on rows: the plan needs `rows` (the columns to hand it)")
        } else {
            var moments: [CheckedExpression] = [], sketches: [CheckedExpression] = [], extremes: [Bool] = []
            for a in plan.aggregates {
                if a.function == .aggCount && a.expression.isEmpty { continue }
                let e = try check(a.expression, "\(Self.name(of: a.function)) aggregate", .number)
                if a.function == .aggQuantile {
                    guard a.quantile >= 0, a.quantile <= 1 else {
                        throw CatalogQueryError("a quantile must be within 0…1, not \(a.quantile)")
                    }
                    if !sketches.contains(where: { $0.text == e.text }) { sketches.append(e) }
                } else {
                    let wantsExtreme = a.function == .aggMin || a.function == .aggMax
                    if let k = moments.firstIndex(where: { $0.text == e.text }) {
                        extremes[k] = extremes[k] || wantsExtreme
                    } else {
                        moments.append(e)
                        extremes.append(wantsExtreme)
                    }
                }
            }
            let group = plan.groupBy.isEmpty ? nil : try check(plan.groupBy, "group-by key", .number)
            // Each group holds every expression's moments, in every scan piece and merge.
            let perGroup = moments.count * MemoryLayout<Moments>.stride
            if group != nil && perGroup > 0 && maxGroups > Limits.groupMomentsBytes / perGroup {
                throw CatalogQueryError("\(moments.count) aggregated expressions over up to \(maxGroups) groups need \(maxGroups * perGroup) bytes, "
                                        + "over the limit of \(Limits.groupMomentsBytes): ask for fewer groups (max_groups) or fewer expressions")
            }
            output = .aggregates(groupBy: group, moments: moments, sketches: sketches)
            momentExtremes = extremes
        }
    }

    /// `name = expression` names a computed column (as pandas' `assign` does); any other
    /// selection is named by its own text. (`==`, `<=`, `>=` and `!=` are comparisons, not names.)
    static func namedSelection(_ s: String) -> (name: String, expression: String) {
        guard let eq = s.firstIndex(of: "=") else { return (s, s) }
        let head = trimmed(String(s[..<eq]))
        let after = s.index(after: eq)
        let isName = !head.isEmpty && head.allSatisfy { $0.isLetter || $0.isNumber || $0 == "_" } && !(head.first?.isNumber ?? true)
        guard isName, after == s.endIndex || s[after] != "=" else { return (s, s) }
        return (head, trimmed(String(s[after...])))
    }

    /// A Python map or reduce: a function, on every selected row of each shard, within the limits.
    static func checkPython(_ plan: CatalogQueryPlan) throws(CatalogQueryError) {
        let py = plan.python, r = plan.rows
        guard r.limit == 0, r.sortBy.isEmpty, r.sampleFraction == 0 else {
            throw CatalogQueryError("a Python function gets every selected row of a shard: drop the limit, sort or sample")
        }
        guard !plan.progressive else { throw CatalogQueryError("a Python question cannot be progressive") }
        guard !py.function.isEmpty else { throw CatalogQueryError("the Python question carries no function") }
        let size = py.function.count + py.combine.count
        guard size <= Limits.pythonFunctionBytes else {
            throw CatalogQueryError("the pickled Python function is \(size) bytes, over the limit of \(Limits.pythonFunctionBytes) (a closure that captured a large object? pass data as columns instead)")
        }
        guard py.timeoutS == 0 || (py.timeoutS.isFinite && Limits.taskTimeoutSeconds.contains(py.timeoutS)) else {
            throw CatalogQueryError("a Python deadline of \(py.timeoutS) s is outside the allowed \(Limits.taskTimeoutSeconds.lowerBound)…\(Int(Limits.taskTimeoutSeconds.upperBound)) s")
        }
    }

    static func checkBins(_ bins: UInt32, _ lo: Double, _ hi: Double, _ axis: String) throws(CatalogQueryError) {
        guard bins > 0 else { throw CatalogQueryError("the histogram needs at least one \(axis) bin") }
        guard lo.isFinite, hi.isFinite, lo < hi else {
            throw CatalogQueryError("the histogram's \(axis) range \(lo)…\(hi) must be finite and increasing")
        }
        // The width, a bin's width and bins per unit must all be ordinary numbers: a range so
        // wide it overflows (-1e308…1e308) or so narrow its bins underflow (0…5e-324) has no
        // bin a value can be placed in.
        let width = hi - lo, step = width / Double(bins), perUnit = Double(bins) / width
        guard width.isFinite, step.isNormal, perUnit.isFinite, perUnit.isNormal else {
            throw CatalogQueryError("the histogram's \(axis) range \(lo)…\(hi) cannot be cut into \(bins) bins of ordinary floating-point width")
        }
    }

    /// The plan's region, checked: on the sky, within the limits (nil: the whole sky).
    public static func checkedRegion(_ plan: CatalogQueryPlan) throws(CatalogQueryError) -> (any SkyRegion)? {
        switch plan.region {
        case .cone(let c):
            guard c.radius > 0, c.radius <= 180, abs(c.dec) <= 90, c.ra.isFinite else {
                throw CatalogQueryError("cone (\(c.ra), \(c.dec)) of radius \(c.radius)° is not on the sky (radius must be in (0, 180], |dec| ≤ 90)")
            }
            return ConeRegion(ra: c.ra, dec: c.dec, radius: c.radius)
        case .box(let b):
            do { return try BoxRegion(raMin: b.raMin, raMax: b.raMax, decMin: b.decMin, decMax: b.decMax) } catch { throw CatalogQueryError("\(error)") }
        case .polygon(let p):
            guard p.ra.count == p.dec.count, p.ra.count >= 3 else {
                throw CatalogQueryError("a polygon needs at least 3 vertices with an RA and a Dec each (got \(p.ra.count) RAs, \(p.dec.count) Decs)")
            }
            // Its convexity check is quadratic in the vertices: bounded before it runs.
            guard p.ra.count <= Limits.polygonVertices else {
                throw CatalogQueryError("a polygon of \(p.ra.count) vertices is over the limit of \(Limits.polygonVertices)")
            }
            guard p.ra.allSatisfy(\.isFinite), p.dec.allSatisfy({ abs($0) <= 90 }) else {
                throw CatalogQueryError("a polygon's vertices must have finite RAs and Decs within ±90°")
            }
            do { return try PolygonRegion(raDec: zip(p.ra, p.dec).map { (ra: $0, dec: $1) }) } catch { throw CatalogQueryError("\(error)") }
        case nil:
            return nil
        }
    }

    /// The result is rows (which keep stored columns' types).
    public var returnsRows: Bool {
        if case .rows = output { return true }
        return false
    }

    /// Every column a shard scan reads.
    public var columns: [String] {
        var out: [String] = []
        func add(_ e: CheckedExpression?) { for c in e?.columns ?? [] where !out.contains(c) { out.append(c) } }
        add(filter)
        switch output {
        case .aggregates(let g, let m, let s): add(g); m.forEach(add); s.forEach(add)
        case .histogram(let x, let y): add(x); add(y)
        case .skyMap(_, let e): add(e)
        case .rows(let sel, let sort): sel.forEach { add($0.expression) }; add(sort)
        }
        return out
    }

    /// Lower-case name of an aggregate function, as the command line and result headers spell it.
    public static func name(of f: AggregateFunction) -> String {
        switch f {
        case .aggCount: "count"
        case .aggSum: "sum"
        case .aggMean: "mean"
        case .aggMin: "min"
        case .aggMax: "max"
        case .aggVar: "var"
        case .aggStd: "std"
        case .aggQuantile: "quantile"
        case .UNRECOGNIZED(let k): "aggregate#\(k)"
        }
    }
}

public typealias AggregateFunction = Tessera_V1_AggregateFunction

/// `s` without leading and trailing spaces, tabs and newlines.
func trimmed(_ s: String) -> String {
    var t = Substring(s)
    while let f = t.first, f == " " || f == "\t" || f == "\n" { t.removeFirst() }
    while let l = t.last, l == " " || l == "\t" || l == "\n" { t.removeLast() }
    return String(t)
}
