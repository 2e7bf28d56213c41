import Foundation
import SwiftProtobuf
import TesseraProtocol
import TesseraStorage

/// The scheduler's view of its registry: injected, so the state machine stays testable (an
/// in-memory registry in tests, the SQLite file in the daemon).
public protocol DatasetCatalog: AnyObject {
    func datasetExists(_ name: String) throws -> Bool
    /// Records a finished ingest in one transaction.
    func commit(_ c: Tessera_V1_IngestCommit, ingestId: String) throws
    /// Every dataset with its shards' pixels, sizes and the workers holding each.
    func shardLocations() throws -> [(dataset: DatasetRecord, shards: [(order: Int, pixel: Int64, bytes: Int64, workers: [String])])]
    /// What a worker holds that the registry does not expect, and the reverse.
    func reconcile(worker: String, holdings: Set<String>) throws -> (missing: [String], orphans: [String])
    /// Notes a worker's stable name and where peers reach it.
    func recordWorker(name: String, peerEndpoint: String, seen: Date) throws
}

extension Registry: DatasetCatalog {
    public func datasetExists(_ name: String) throws -> Bool { try dataset(named: name) != nil }

    public func commit(_ c: Tessera_V1_IngestCommit, ingestId: String) throws {
        var footer = Tessera_V1_ShardFooter()
        footer.columns = c.columns
        let d = DatasetRecord(
            name: c.dataset, schema: try footer.serializedBytes(), raColumn: c.raColumn, decColumn: c.decColumn,
            maxRowsPerShard: Int64(c.maxRowsPerShard), marginArcsec: c.marginArcsec,
            rows: Int64(c.shards.reduce(0) { $0 + $1.rows }), ingestId: ingestId)
        let shards = c.shards.map {
            ShardRecord(order: Int($0.order), pixel: $0.pixel, rows: Int64($0.rows), marginRows: Int64($0.marginRows),
                        bytes: Int64($0.bytes), checksum: Int64(bitPattern: $0.checksum), statistics: $0.footer)
        }
        try commitIngest(d, shards: shards, replicas: c.shards.map(\.workers), replace: c.replace)
    }

    public func shardLocations() throws -> [(dataset: DatasetRecord, shards: [(order: Int, pixel: Int64, bytes: Int64, workers: [String])])] {
        try datasets().map { d in (d, try shardLocations(of: d)) }
    }
}

/// An ingest between its plan and its commit.
struct PendingIngest {
    var client: ConnectionID
    var dataset: String
    var replace: Bool
    /// Per shard, the names of the workers it was sent to.
    var placements: [[String]]
}

extension SchedulerCore {
    mutating func ingestBegin(_ connection: ConnectionID, _ b: Tessera_V1_IngestBegin) {
        func refuse(_ why: String) {
            send(.client(connection), errorEnvelope(.errorInvalidGraph, why, clientTag: b.clientTag))
        }
        guard let catalog else { return refuse("this scheduler has no registry (start it with --registry)") }
        guard !b.dataset.isEmpty, !b.dataset.contains("/"), !b.dataset.hasPrefix(".") else {
            return refuse("`\(b.dataset)` is not a valid dataset name (no slashes, not empty)")
        }
        do {
            if try catalog.datasetExists(b.dataset) && !b.replace {
                return refuse(RegistryError.datasetExists(b.dataset).description)
            }
        } catch {
            return refuse("registry: \(error)")
        }
        guard !b.shards.isEmpty else { return refuse("an ingest needs at least one shard") }
        let live = workerOrder.compactMap { workers[$0] }
        let r = max(1, Int(b.replicas))
        guard r <= live.count else {
            return refuse("\(r) replicas asked for, but only \(live.count) workers are live")
        }
        // Each shard on the r least-loaded distinct workers (by bytes planned so far).
        var load: [WorkerID: UInt64] = Dictionary(uniqueKeysWithValues: live.map { ($0.id, 0) })
        var plan = Tessera_V1_IngestPlan()
        plan.clientTag = b.clientTag
        plan.ingestID = "i\(String(startedAt, radix: 36))\(String(nextIngest, radix: 36))"
        nextIngest += 1
        var names: [[String]] = []
        for s in b.shards {
            let chosen = live.sorted { (load[$0.id]!, $0.id) < (load[$1.id]!, $1.id) }.prefix(r)
            var p = Tessera_V1_ShardPlacement()
            p.workers = chosen.map(\.id)
            for w in chosen { load[w.id]! += max(s.bytes, s.rows) }
            plan.placements.append(p)
            names.append(chosen.map(\.name))
        }
        for w in live {
            var peer = Tessera_V1_Peer()
            peer.workerID = w.id
            peer.endpoint = w.peerEndpoint
            plan.workers.append(peer)
            plan.workerNames.append(w.name)
        }
        pendingIngests[plan.ingestID] = PendingIngest(client: connection, dataset: b.dataset, replace: b.replace, placements: names)
        var e = Envelope()
        e.ingestPlan = plan
        send(.client(connection), e)
    }

    mutating func ingestCommit(_ connection: ConnectionID, _ c: Tessera_V1_IngestCommit) {
        func refuse(_ why: String) {
            send(.client(connection), errorEnvelope(.errorInvalidGraph, why, clientTag: c.clientTag))
        }
        guard let catalog else { return refuse("this scheduler has no registry") }
        guard let p = pendingIngests[c.ingestID], p.client == connection, p.dataset == c.dataset else {
            return refuse("no ingest `\(c.ingestID)` of `\(c.dataset)` is in progress for this client")
        }
        pendingIngests.removeValue(forKey: c.ingestID)
        guard c.shards.count == p.placements.count else {
            return refuse("commit lists \(c.shards.count) shards, the plan had \(p.placements.count)")
        }
        for s in c.shards where s.workers.isEmpty {
            return refuse("shard order\(s.order)-pix\(s.pixel) has no stored copy")
        }
        do {
            var commit = c
            commit.replace = p.replace
            try catalog.commit(commit, ingestId: c.ingestID)
            planned = nil
        } catch {
            return refuse("\(error)")
        }
        // Placement learns the new shards at once (workers report them again when they re-register).
        let byName = Dictionary(workers.values.map { ($0.name, $0.id) }, uniquingKeysWith: { a, _ in a })
        for s in c.shards {
            let key = ShardKey(dataset: c.dataset, ingestId: c.ingestID, order: Int(s.order), pixel: s.pixel).description
            holders[key] = s.workers.compactMap { byName[$0] }
        }
        var done = Tessera_V1_IngestCommitted()
        done.clientTag = c.clientTag
        done.dataset = c.dataset
        done.rows = c.shards.reduce(0) { $0 + $1.rows }
        done.shards = UInt64(c.shards.count)
        var e = Envelope()
        e.ingestCommitted = done
        send(.client(connection), e)
        notices.append("dataset `\(c.dataset)` committed: \(done.rows) rows in \(done.shards) shards (ingest \(c.ingestID))")
    }

    /// Datasets with their size and how many of their shards have a live copy.
    mutating func datasetStatuses() -> [Tessera_V1_DatasetStatus] {
        guard let all = try? plannedDatasets() else { return [] }
        let live = Set(workers.values.map(\.name))
        return all.values.sorted { $0.record.name < $1.record.name }.map { d in
            var s = Tessera_V1_DatasetStatus()
            s.name = d.record.name
            s.kind = d.record.kind
            s.rows = UInt64(d.record.rows)
            s.shards = UInt64(d.keys.count)
            s.bytes = UInt64(d.bytes.reduce(0, +))
            let liveCopies = d.workers.map { $0.filter(live.contains).count }
            s.minReplicas = UInt32(liveCopies.min() ?? 0)
            s.shardsWithoutLiveReplica = UInt64(liveCopies.filter { $0 == 0 }.count)
            return s
        }
    }

    /// A worker registered: compare its holdings with the registry and say what differs.
    mutating func reconcileHoldings(_ w: WorkerRecord) {
        guard let catalog else { return }
        do {
            try catalog.recordWorker(name: w.name, peerEndpoint: w.peerEndpoint, seen: Date())
        } catch {
            notices.append("registry: cannot record worker \(w.name): \(error)")
        }
        guard let (missing, orphans) = try? catalog.reconcile(worker: w.name, holdings: w.holdings) else { return }
        if !missing.isEmpty {
            notices.append("worker \(w.name) lacks \(missing.count) shard(s) the registry expects it to hold, e.g. \(missing[0])")
        }
        if !orphans.isEmpty {
            notices.append("worker \(w.name) holds \(orphans.count) shard file(s) no dataset lists (an ingest that never committed?), e.g. \(orphans[0])")
        }
    }
}
