import Foundation
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
    public mutating func expandCatalogQuery(_ plan: CatalogQueryPlan, user: String = "") throws(ProtocolError) -> TaskGraph {
        try planCatalogQuery(plan, user: user).graph
    }

    /// The dataset `name` means to `user`: their own table of that name, else a survey dataset,
    /// else (written `OWNER..NAME`) another user's table they may read. Nil for one they may not
    /// see, as for one that does not exist.
    func resolve(_ name: String, user: String, in all: [String: PlannedDataset]) -> PlannedDataset? {
        if !user.isEmpty, !name.contains(".."), let own = all[WorkspaceTable.registryName(user: user, table: name)] { return own }
        guard let d = all[name], d.record.isVisible(to: user) else { return nil }
        return d
    }

    /// Why `name` names nothing `user` may read, with the names they may.
    func unknownDataset(_ name: String, user: String, in all: [String: PlannedDataset], _ what: String = "") -> ProtocolError {
        let names = all.values.filter { $0.record.isVisible(to: user) }.map { $0.record.name(for: user) }.sorted()
        return .invalidContent("no dataset named `\(name.prefix(200))`\(what)" + (names.isEmpty ? " (none ingested yet)" : "; there are: \(names.joined(separator: ", "))"))
    }

    /// A catalog question's tasks (as ``expandCatalogQuery(_:)``) and what it is expected to
    /// read: the shards left after pruning, and their rows and bytes scaled by the part of each
    /// shard's sky the region covers (rows are taken as spread evenly over a shard's pixel).
    public mutating func planCatalogQuery(_ plan: CatalogQueryPlan, user: String = "") throws(ProtocolError) -> (graph: TaskGraph, estimate: Tessera_V1_CostEstimate) {
        let all: [String: PlannedDataset]
        do { all = try plannedDatasets() } catch { throw .invalidContent("\(error)") }
        guard let d = resolve(plan.dataset, user: user, in: all) else { throw unknownDataset(plan.dataset, user: user, in: all) }
        if plan.hasForcedPhotometry || plan.hasStack { return try planForcedPhotometry(plan, catalog: d, datasets: all, user: user) }
        if plan.hasImageStatistics { return try planImageStatistics(plan, images: d) }
        if plan.hasHips { return try planHiPS(plan, images: d) }
        if plan.hasCutout || d.images != nil { return try planCutout(plan, images: d) }
        if plan.hasCrossmatch { return try planCrossmatch(plan, left: d, datasets: all, user: user) }
        let dataset = d.record
        let query: CheckedCatalogQuery
        do {
            query = try CheckedCatalogQuery(plan, columns: d.columns, raColumn: dataset.raColumn, decColumn: dataset.decColumn)
        } catch {
            throw .invalidContent("\(error)")
        }
        // Region pruning: only shards whose pixel meets the region.
        // A many-sided polygon costs its vertex count per pixel tested: it is covered at a
        // coarser order, which selects a superset of the shards it meets (the same answer; a
        // few more shards may be scanned), at a sixteenth of the cost.
        let resolution = plan.polygon.ra.count > 64 ? 8 : 10
        let hits = query.region.map { r in d.shards(meeting: HEALPix.indexRanges(of: r, resolution: resolution)) }
            ?? d.keys.indices.map { ($0, 1.0) }
        let keys = hits.map { d.keys[$0.shard] }
        var estimate = Tessera_V1_CostEstimate()
        for (s, covered) in hits { d.add(shard: s, fraction: covered, to: &estimate) }
        var params = CatalogOperators.params(plan: plan, raColumn: dataset.raColumn, decColumn: dataset.decColumn)
        // A Python question runs the user's function in each shard's task (and their combine in
        // the tree); the operators exist only on workers that allow Python, and run it in
        // executors of this user's alone (a function can change its process for the next call).
        if plan.hasPython { params.strings[PythonOperatorNames.userParameter] = user }
        let operators = plan.hasPython ? [PythonOperatorNames.map, PythonOperatorNames.combine] : ["catalog_scan", "catalog_merge"]
        var g = TaskGraph(operators: operators, params: [params], dataKeys: keys)
        var leaves: [UInt32] = []
        for (i, _) in keys.enumerated() {
            leaves.append(g.add(operatorIndex: 0, paramIndex: 1))
            g.dataKey.append(UInt32(i + 1))
        }
        Self.finish(&g, leaves: leaves, mergeOperator: 1, plan: plan)
        return (g, estimate)
    }

    /// A question's graph after its leaves: the tree of merges over them (an empty region still
    /// answers, zero rows, from one merge; a collect has no tree), and no data key past them.
    static func finish(_ g: inout TaskGraph, leaves: [UInt32], mergeOperator: Int, plan: CatalogQueryPlan) {
        if leaves.isEmpty {
            g.add(operatorIndex: mergeOperator, paramIndex: 1)
        } else if !isCollect(plan) {
            // Questions are refused outside the bounds when checked; every plan that reaches here
            // (an image question's statistics too) is held to them all the same.
            let fanIn = plan.fanIn == 0 ? Limits.catalogFanInDefault : plan.fanIn
            g.addReduction(of: leaves, operatorIndex: mergeOperator,
                           fanIn: Int(min(max(fanIn, Limits.catalogFanIn.lowerBound), Limits.catalogFanIn.upperBound)), paramIndex: 1)
        }
        while g.dataKey.count < g.taskCount { g.dataKey.append(0) }
    }

    /// A cross-match's tasks: for each left shard the region may touch, one `crossmatch` per
    /// right shard overlapping it (reading that shard's `crossmatch_side`: its rows with its
    /// margin), and one more for the part of it no right shard covers, reading the sides of the
    /// right shards near it; then the same reduction as a scan's. Each right shard is read once,
    /// by one `crossmatch_side`, whatever number of left shards it meets.
    mutating func planCrossmatch(_ plan: CatalogQueryPlan, left d: PlannedDataset, datasets all: [String: PlannedDataset], user: String) throws(ProtocolError) -> (graph: TaskGraph, estimate: Tessera_V1_CostEstimate) {
        let spec = plan.crossmatch
        guard let r = resolve(spec.right, user: user, in: all) else { throw unknownDataset(spec.right, user: user, in: all, " to cross-match with") }
        let checked: Crossmatch.Checked
        do {
            checked = try Crossmatch.check(plan, left: d.columns, leftRa: d.record.raColumn, leftDec: d.record.decColumn,
                                           right: r.columns, rightMarginArcsec: r.record.marginArcsec)
        } catch {
            throw .invalidContent("\(error)")
        }
        let hits = checked.region.map { d.shards(meeting: HEALPix.indexRanges(of: $0, resolution: 10)) } ?? d.keys.indices.map { ($0, 1.0) }
        let params = CatalogOperators.crossmatchParams(plan: plan, raColumn: d.record.raColumn, decColumn: d.record.decColumn,
                                                       rightRa: r.record.raColumn, rightDec: r.record.decColumn,
                                                       rightColumns: checked.columns(of: Crossmatch.rightPrefix, among: r.columns))
        // First which right shards each left shard's tasks read: those overlapping it (with
        // their margins), and for the part of it no right shard covers, those near it.
        let radius = spec.radiusArcsec / 3600 * .pi / 180
        var plans: [(p: Int, overlapping: [Int], near: [Int])] = []
        var readers: [Int: [(p: Int, rows: Double)]] = [:]
        for (p, _) in hits {
            let own = d.range(p)
            let overlapping = r.shards(meeting: [own]).map(\.shard)
            var near: [Int] = []
            if !Crossmatch.subtracting(overlapping.map { r.range($0) }, from: own).isEmpty {
                // Right shards near the shard: within its bounding circle widened by the radius.
                let cone = ConeRegion(center: HEALPix.centerVector(order: d.orders[p], pixel: d.pixels[p]),
                                      radius: min(.pi, HEALPix.maxPixelRadius(order: d.orders[p]) * (1 + 1e-9) + radius))
                near = r.shards(meeting: HEALPix.indexRanges(of: cone, resolution: min(14, max(4, d.orders[p] + 2)))).map(\.shard)
            }
            plans.append((p, overlapping, near))
            let span = Double(max(1, own.count))
            for q in overlapping {
                let shared = Crossmatch.intersecting([own], [r.range(q)]).first?.count ?? 0
                readers[q, default: []].append((p, Double(max(0, d.rows[p])) * Double(shared) / span))
            }
            for q in near where !overlapping.contains(q) { readers[q, default: []].append((p, Double(max(0, d.rows[p])))) }
        }
        // A right shard much denser than the left rows that meet it sends only its rows near
        // them: the left shards' covers go to its side (a user's 100,000 rows against a survey
        // of millions then read a few percent of its rows, not all).
        var g = TaskGraph(operators: ["crossmatch_side", "crossmatch", "catalog_merge", "crossmatch_cover"], params: [params], dataKeys: d.keys + r.keys)
        var estimate = Tessera_V1_CostEstimate()
        var coverTask: [Int: UInt32] = [:]
        var sideTask: [Int: UInt32] = [:]
        func cover(_ p: Int) -> UInt32 {
            if let t = coverTask[p] { return t }
            let t = g.add(operatorIndex: 3, paramIndex: 1)
            g.dataKey.append(UInt32(p + 1))
            coverTask[p] = t
            return t
        }
        func side(_ q: Int) -> UInt32 {
            if let t = sideTask[q] { return t }
            let leftRows = (readers[q] ?? []).reduce(0) { $0 + $1.rows }
            let sparse = leftRows * Self.coverRatio < Double(max(0, r.rows[q]))
            let inputs = sparse ? Array(Set((readers[q] ?? []).map(\.p))).sorted().map(cover) : []
            let t = g.add(operatorIndex: 0, inputs: inputs, paramIndex: 1)
            g.dataKey.append(UInt32(d.keys.count + q + 1))
            sideTask[q] = t
            r.add(shard: q, fraction: sparse ? min(1, leftRows * Self.coverRatio / Double(max(1, r.rows[q]))) : 1, to: &estimate)
            return t
        }
        var pairs: [UInt32] = []
        for (p, overlapping, near) in plans {
            for q in overlapping {
                let t = g.add(operatorIndex: 1, arg: 0, inputs: [side(q)], paramIndex: 1)
                g.dataKey.append(UInt32(p + 1))
                pairs.append(t)
            }
            if !near.isEmpty {
                let t = g.add(operatorIndex: 1, arg: 1, inputs: near.map(side), paramIndex: 1)
                g.dataKey.append(UInt32(p + 1))
                pairs.append(t)
            }
        }
        for (p, covered) in hits { d.add(shard: p, fraction: covered, to: &estimate) }
        Self.finish(&g, leaves: pairs, mergeOperator: 2, plan: plan)
        return (g, estimate)
    }

    /// A right shard with more than this many rows per left row meeting it sends only its rows
    /// near theirs (a cover is 9 pixels per left row, each several radii wide: below this the
    /// covers would hold most of the shard anyway, and cost their own pass over the left rows).
    static let coverRatio = 36.0

    /// The registry's datasets as the planner uses them, read once and kept until an ingest
    /// commits (planning a question then costs no registry query, however many shards there are).
    mutating func plannedDatasets() throws -> [String: PlannedDataset] {
        if let planned { return planned }
        guard let catalog else { throw CatalogQueryError("this scheduler has no registry, so it knows no catalogs") }
        var out: [String: PlannedDataset] = [:]
        do {
            let (all, skipped) = try catalog.shardLocations()
            registeredShards = [:]
            for (d, shards) in all {
                var p = PlannedDataset(d, shards)
                if d.kind == ImageDataset.kind { p.loadImages(try catalog.shardStatistics(of: d)) }
                out[d.name] = p
                for (k, shard) in zip(p.keys, shards) {
                    registeredShards[k] = RegisteredShard(checksum: shard.checksum, bytes: UInt64(max(0, shard.bytes)), rows: UInt64(max(0, shard.rows)))
                }
            }
            for why in skipped { notices.append("registry: skipped \(why)") }
        } catch {
            throw CatalogQueryError("registry: \(error)")
        }
        planned = out
        return out
    }

    /// Loads the registry's datasets into the planner (a registry that cannot be read is reported
    /// when a question needs it).
    public mutating func warmPlanner() { _ = try? plannedDatasets() }

    /// `graph`, unless it names an operator only the scheduler's own plans place
    /// (`OperatorRegistry.planOnly`): from a client's graph or generic plan, its parameters
    /// would be a catalog question, tile or box nobody checked.
    static func withoutPlanOnlyOperators(_ graph: TaskGraph) throws(ProtocolError) -> TaskGraph {
        if let op = graph.operators.first(where: OperatorRegistry.planOnly.contains) {
            throw .invalidContent("operator `\(op)` is placed only from a plan (a catalog question, cutout, photometry, stack or HiPS), which the scheduler checks: submit that plan instead")
        }
        return graph
    }

    /// Why an interactive question is refused: what it would read, the budget, and what to do.
    static func overBudget(_ e: Tessera_V1_CostEstimate, dataset: String, budget: UInt64) -> String {
        "this interactive question is expected to read \(e.rows) rows (\(e.shards) shards, \(e.bytes >> 20) MiB) of `\(dataset)`, "
            + "over the interactive budget of \(budget) rows: narrow the region, or submit it as normal or batch (--priority batch)"
    }

    /// Rows without a limit: every shard's rows go to the client as they are read.
    static func isCollect(_ plan: CatalogQueryPlan) -> Bool {
        plan.hasPython ? plan.python.combine.isEmpty : plan.collectsRows
    }

    /// How a progressive plan's snapshots are taken: by `catalog_merge` (operator 1, params 1),
    /// at least 100 ms apart.
    static func progress(of plan: CatalogQueryPlan, now: UInt64) -> JobRecord.Progress? {
        guard plan.progressive, !isCollect(plan), !plan.hasPython else { return nil }
        // The plan's check refused intervals outside the limits; clamping again keeps the
        // conversion to nanoseconds safe for any Double.
        let limits = Limits.progressIntervalSeconds
        let asked = plan.progressInterval.isFinite && plan.progressInterval > 0 ? plan.progressInterval : limits.lowerBound
        let seconds = min(max(asked, limits.lowerBound), limits.upperBound)
        return JobRecord.Progress(operatorIndex: 1, paramIndex: 1, intervalNs: UInt64(seconds * 1e9), lastSnapshotAt: now)
    }
}

/// A dataset's shards held in memory for planning: keys, sizes, holders, and each shard's
/// order-29 index range, sorted so that a region's ranges find their shards by binary search.
struct PlannedDataset {
    let record: DatasetRecord
    let columns: [Tessera_V1_ColumnSchema]
    let keys: [String]
    let bytes: [Int64]
    let rows: [Int64]
    let workers: [[String]]
    let orders: [Int]
    let pixels: [Int64]
    /// Shard indices by ascending index range (shards of a dataset never overlap).
    let byRange: [Int]
    let lower: [Int64]
    let upper: [Int64]
    /// Each shard's position in `byRange`.
    let rangePosition: [Int]
    /// An image dataset's bands, tiling and patches (nil for a catalog).
    var images: PlannedImages?

    init(_ d: DatasetRecord, _ shards: [ShardLocation]) {
        record = d
        columns = d.kind == ImageDataset.kind ? [] : (try? Tessera_V1_ShardFooter(serializedBytes: [UInt8](d.schema)))?.columns ?? []
        keys = shards.map { ShardKey(dataset: d.name, ingestId: d.ingestId, order: $0.order, pixel: $0.pixel).description }
        bytes = shards.map(\.bytes)
        rows = shards.map(\.rows)
        workers = shards.map(\.workers)
        orders = shards.map(\.order)
        pixels = shards.map(\.pixel)
        let ranges = shards.map { HEALPix.children($0.pixel, order: $0.order, to: HEALPix.maxOrder) }
        byRange = ranges.indices.sorted { ranges[$0].lowerBound < ranges[$1].lowerBound }
        lower = byRange.map { ranges[$0].lowerBound }
        upper = byRange.map { ranges[$0].upperBound }
        var position = [Int](repeating: 0, count: ranges.count)
        for (k, s) in byRange.enumerated() { position[s] = k }
        rangePosition = position
    }

    /// Reads an image dataset's bands and tiling (its schema) and each shard's patch.
    mutating func loadImages(_ statistics: [ShardPlace: Data]) {
        guard let info = try? Tessera_V1_ImageDatasetInfo(serializedBytes: [UInt8](record.schema)), ImageDataset.infoProblem(info) == nil else { return }
        let patches = orders.indices.map { s -> ImagePatchHeader? in
            guard let blob = statistics[ShardPlace(order: UInt32(clamping: orders[s]), pixel: pixels[s])],
                  let i = try? Tessera_V1_ImagePatchInfo(serializedBytes: [UInt8](blob)) else { return nil }
            return ImageDataset.header(i)
        }
        images = PlannedImages(info: info, patches: patches)
    }

    /// Counts shard `s` into a cost estimate: one shard, and `fraction` of its rows and bytes
    /// (rows are taken as spread evenly over a shard's pixel).
    func add(shard s: Int, fraction: Double, to e: inout Tessera_V1_CostEstimate) {
        e.shards &+= 1
        e.rows &+= UInt64((Double(max(0, rows[s])) * fraction).rounded(.up))
        e.bytes &+= UInt64((Double(max(0, bytes[s])) * fraction).rounded(.up))
    }

    /// Shard `s`'s order-29 index range.
    func range(_ s: Int) -> Range<Int64> {
        let k = rangePosition[s]
        return lower[k]..<upper[k]
    }

    /// Shards whose range meets one of `ranges`, in shard order, each with the fraction of its
    /// range they cover (ranges do not overlap one another).
    func shards(meeting ranges: [Range<Int64>]) -> [(shard: Int, covered: Double)] {
        var hit: [Int: Int64] = [:]
        for r in ranges {
            // The first shard whose range ends after r starts.
            var a = 0, b = upper.count
            while a < b {
                let m = (a + b) / 2
                if upper[m] <= r.lowerBound { a = m + 1 } else { b = m }
            }
            var k = a
            while k < lower.count && lower[k] < r.upperBound {
                let overlap = min(upper[k], r.upperBound) - max(lower[k], r.lowerBound)
                hit[byRange[k], default: 0] += max(0, overlap)
                k += 1
            }
        }
        return hit.keys.sorted().map { s in
            let k = rangePosition[s]
            return (s, min(1, Double(hit[s]!) / Double(max(1, upper[k] - lower[k]))))
        }
    }
}
