import TesseraProtocol
import TesseraSky
import TesseraStorage

/// Operators that read catalog shards on the worker that holds them.
public enum CatalogOperators {
    public static let all: [TaskOperator] = [catalogAggregate]

    /// Scans one shard: rows in the cone (if any) that pass the filter, reduced to a count
    /// (`int64`) or to the moments of an expression. Row groups outside the cone are skipped by
    /// their index range; only the columns the expressions need are decoded.
    ///
    /// Parameters: strings `filter`, `expression`, `aggregate` ("count" | "moments"), `ra`, `dec`
    /// (column names); numbers `cone_ra`, `cone_dec`, `cone_radius` (degrees, 0 = no cone).
    public static let catalogAggregate = TaskOperator("catalog_aggregate", "filter and aggregate one catalog shard") { ctx throws(OperatorError) in
        let name = "catalog_aggregate"
        guard let key = ctx.dataKey, let shard = ShardKey(key), let root = ctx.dataRoot else {
            throw OperatorError(name, "the task names no shard this worker can open (data key \(ctx.dataKey ?? "none"))")
        }
        let reader: ShardReader
        do {
            reader = try ShardReader(path: root + "/" + shard.relativePath)
        } catch {
            throw OperatorError(name, "\(error)")
        }
        var schema: [String: ExpressionType] = [:]
        for c in reader.footer.columns { schema[c.name] = c.type == .columnBool ? .boolean : .number }
        let filterText = ctx.params.strings["filter"] ?? ""
        let exprText = ctx.params.strings["expression"] ?? ""
        let moments = ctx.params.strings["aggregate"] == "moments"
        let filter: CheckedExpression?
        let expr: CheckedExpression?
        do {
            filter = filterText.isEmpty ? nil : try ExpressionChecker.check(filterText, schema: schema, expecting: .boolean)
            expr = moments ? try ExpressionChecker.check(exprText, schema: schema, expecting: .number) : nil
        } catch {
            throw OperatorError(name, "\(error)")
        }
        let radius = ctx.number("cone_radius", default: 0)
        let cone = radius > 0 ? ConeRegion(ra: ctx.number("cone_ra", default: 0), dec: ctx.number("cone_dec", default: 0), radius: radius) : nil
        let raName = ctx.params.strings["ra"] ?? "coord_ra", decName = ctx.params.strings["dec"] ?? "coord_dec"
        var needed = (filter?.columns ?? []) + (expr?.columns ?? [])
        if cone != nil { needed += [raName, decName] }
        var names: [String] = []
        for n in needed where !names.contains(n) { names.append(n) }
        let groups = cone.map { reader.rowGroups(overlapping: HEALPix.indexRanges(of: $0)) } ?? Array(reader.ownRowGroups)

        var count: Int64 = 0
        var m = Moments()
        for g in groups {
            if ctx.isCancelled() { throw OperatorError(name, "cancelled") }
            let rows = Int(reader.footer.rowGroups[g].rows)
            var cols: [String: ExpressionVector] = [:]
            do {
                for n in names { cols[n] = vector(try reader.read(column: try reader.columnIndex(n), rowGroup: g)) }
            } catch {
                throw OperatorError(name, "\(error)")
            }
            var keep = filter.map { ExpressionEvaluator.evaluate($0, columns: cols, rows: rows).booleans(rows) } ?? [Bool](repeating: true, count: rows)
            if let cone, case .numbers(let ra)? = cols[raName], case .numbers(let dec)? = cols[decName] {
                for i in 0..<rows where keep[i] { keep[i] = cone.contains(ra: ra[i], dec: dec[i]) }
            }
            if let expr {
                let v = ExpressionEvaluator.evaluate(expr, columns: cols, rows: rows).numbers(rows)
                var part = Moments()
                for i in 0..<rows where keep[i] && !v[i].isNaN { part.add(v[i]) }
                m.merge(part)
            } else {
                for k in keep where k { count += 1 }
            }
        }
        return expr == nil ? .int64(count) : .moments(m)
    }

    /// A stored column as expression values (integers promoted to Float64).
    static func vector(_ c: ColumnData) -> ExpressionVector {
        if case .bool(let a) = c { return .booleans(a) }
        return .numbers(c.doubles)
    }
}
