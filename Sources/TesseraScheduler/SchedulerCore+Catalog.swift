import SwiftProtobuf
import TesseraCompute
import TesseraProtocol
import TesseraSky
import TesseraStorage

extension SchedulerCore {
    /// A catalog query as tasks: one `catalog_aggregate` per shard that the region may touch,
    /// pinned to the shard's holders, and a reduction tree over them. Expressions are checked
    /// here against the dataset's schema, so a typo fails the submission, not a thousand tasks.
    func expandCatalogQuery(_ q: Tessera_V1_CatalogQueryPlan) throws(ProtocolError) -> TaskGraph {
        guard let catalog else { throw .invalidContent("this scheduler has no registry, so it knows no catalogs") }
        let all: [(dataset: DatasetRecord, shards: [(key: String, bytes: Int64, workers: [String])])]
        do { all = try catalog.shardHolders() } catch { throw .invalidContent("registry: \(error)") }
        guard let (dataset, shards) = all.first(where: { $0.dataset.name == q.dataset }) else {
            let names = all.map(\.dataset.name)
            throw .invalidContent("no dataset named `\(q.dataset)`" + (names.isEmpty ? " (none ingested yet)" : "; there are: \(names.joined(separator: ", "))"))
        }
        guard let footer = try? Tessera_V1_ShardFooter(serializedBytes: [UInt8](dataset.schema)) else {
            throw .invalidContent("dataset `\(q.dataset)` has an unreadable schema in the registry")
        }
        var schema: [String: ExpressionType] = [:]
        for c in footer.columns { schema[c.name] = c.type == .columnBool ? .boolean : .number }
        do {
            if !q.filter.isEmpty { _ = try ExpressionChecker.check(q.filter, schema: schema, expecting: .boolean) }
            if q.aggregate == .aggregateMoments { _ = try ExpressionChecker.check(q.expression, schema: schema, expecting: .number) }
        } catch {
            throw .invalidContent("\(error)")
        }
        guard q.coneRadius >= 0, q.coneRadius <= 180, abs(q.coneDec) <= 90 else {
            throw .invalidContent("cone (\(q.coneRa), \(q.coneDec)) radius \(q.coneRadius)° is not on the sky")
        }
        // Region pruning: only shards whose pixel meets the cone.
        var keys = shards.map(\.key)
        if q.coneRadius > 0 {
            let ranges = HEALPix.indexRanges(of: ConeRegion(ra: q.coneRa, dec: q.coneDec, radius: q.coneRadius), resolution: 10)
            keys = keys.filter { k in
                guard let s = ShardKey(k) else { return false }
                let r = HEALPix.children(s.pixel, order: s.order, to: HEALPix.maxOrder)
                return ranges.contains { $0.lowerBound < r.upperBound && r.lowerBound < $0.upperBound }
            }
        }
        let moments = q.aggregate == .aggregateMoments
        var params = Tessera_V1_OperatorParams()
        params.strings = ["filter": q.filter, "expression": q.expression, "aggregate": moments ? "moments" : "count",
                          "ra": dataset.raColumn, "dec": dataset.decColumn]
        params.numbers = ["cone_ra": q.coneRa, "cone_dec": q.coneDec, "cone_radius": q.coneRadius]
        var g = TaskGraph(operators: ["catalog_aggregate", moments ? "merge_moments" : "sum"], params: [params], dataKeys: keys)
        var leaves: [UInt32] = []
        for (i, _) in keys.enumerated() {
            leaves.append(g.add(operatorIndex: 0, paramIndex: 1))
            g.dataKey.append(UInt32(i + 1))
        }
        if leaves.isEmpty {
            // An empty region still answers: zero rows.
            g.add(operatorIndex: 1)
        } else {
            g.addReduction(of: leaves, operatorIndex: 1, fanIn: max(2, Int(q.fanIn == 0 ? 8 : q.fanIn)))
        }
        while g.dataKey.count < g.taskCount { g.dataKey.append(0) }
        return g
    }
}
