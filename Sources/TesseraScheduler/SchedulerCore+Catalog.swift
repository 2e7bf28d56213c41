import SwiftProtobuf
import TesseraCompute
import TesseraProtocol
import TesseraSky
import TesseraStorage

extension SchedulerCore {
    /// A catalog question as tasks: one `catalog_scan` per shard the region may touch, pinned to
    /// the shard's holders, and a tree of `catalog_merge` over them (placed where most of its
    /// input bytes are). A collect — rows without a limit — has no tree: each shard's rows stream
    /// to the client as a batch. The plan is checked here against the dataset's schema, so a typo
    /// fails the submission, not a thousand tasks.
    func expandCatalogQuery(_ plan: CatalogQueryPlan) throws(ProtocolError) -> TaskGraph {
        guard let catalog else { throw .invalidContent("this scheduler has no registry, so it knows no catalogs") }
        let all: [(dataset: DatasetRecord, shards: [(key: String, bytes: Int64, workers: [String])])]
        do { all = try catalog.shardHolders() } catch { throw .invalidContent("registry: \(error)") }
        guard let (dataset, shards) = all.first(where: { $0.dataset.name == plan.dataset }) else {
            let names = all.map(\.dataset.name)
            throw .invalidContent("no dataset named `\(plan.dataset)`" + (names.isEmpty ? " (none ingested yet)" : "; there are: \(names.joined(separator: ", "))"))
        }
        guard let footer = try? Tessera_V1_ShardFooter(serializedBytes: [UInt8](dataset.schema)) else {
            throw .invalidContent("dataset `\(plan.dataset)` has an unreadable schema in the registry")
        }
        let query: CheckedCatalogQuery
        do {
            query = try CheckedCatalogQuery(plan, columns: footer.columns, raColumn: dataset.raColumn, decColumn: dataset.decColumn)
        } catch {
            throw .invalidContent("\(error)")
        }
        // Region pruning: only shards whose pixel meets the region.
        var keys = shards.map(\.key)
        if let region = query.region {
            let ranges = HEALPix.indexRanges(of: region, resolution: 10)
            keys = keys.filter { k in
                guard let s = ShardKey(k) else { return false }
                let r = HEALPix.children(s.pixel, order: s.order, to: HEALPix.maxOrder)
                return ranges.contains { $0.lowerBound < r.upperBound && r.lowerBound < $0.upperBound }
            }
        }
        let params = CatalogOperators.params(plan: plan, raColumn: dataset.raColumn, decColumn: dataset.decColumn)
        var g = TaskGraph(operators: ["catalog_scan", "catalog_merge"], params: [params], dataKeys: keys)
        var leaves: [UInt32] = []
        for (i, _) in keys.enumerated() {
            leaves.append(g.add(operatorIndex: 0, paramIndex: 1))
            g.dataKey.append(UInt32(i + 1))
        }
        if leaves.isEmpty {
            // An empty region still answers: zero rows.
            g.add(operatorIndex: 1, paramIndex: 1)
        } else if !Self.isCollect(plan) {
            g.addReduction(of: leaves, operatorIndex: 1, fanIn: max(2, Int(plan.fanIn == 0 ? 8 : plan.fanIn)), paramIndex: 1)
        }
        while g.dataKey.count < g.taskCount { g.dataKey.append(0) }
        return g
    }

    /// Rows without a limit: every shard's rows go to the client as they are read.
    static func isCollect(_ plan: CatalogQueryPlan) -> Bool { plan.hasRows && plan.rows.limit == 0 }

    /// How a progressive plan's snapshots are taken: by `catalog_merge` (operator 1, params 1),
    /// at least 100 ms apart.
    static func progress(of plan: CatalogQueryPlan, now: UInt64) -> JobRecord.Progress? {
        guard plan.progressive, !isCollect(plan) else { return nil }
        let seconds = max(0.1, plan.progressInterval.isFinite ? plan.progressInterval : 0.1)
        return JobRecord.Progress(operatorIndex: 1, paramIndex: 1, intervalNs: UInt64(seconds * 1e9), lastSnapshotAt: now)
    }
}
