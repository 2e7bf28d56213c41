import Foundation
import SwiftProtobuf
import TesseraCompute
import TesseraProtocol
import TesseraSky
import TesseraStorage

/// The scheduler's view of its registry: injected, so the state machine stays testable (an
/// in-memory registry in tests, the SQLite file in the daemon).
public protocol DatasetCatalog: AnyObject {
    func datasetExists(_ name: String) throws -> Bool
    /// Records a finished ingest in one transaction (a user's table with its owner and lifetime).
    func commit(_ c: Tessera_V1_IngestCommit, ingestId: String, workspace: WorkspaceTable?) throws
    /// Users' tables past their lifetime.
    func expiredDatasets(before now: Date) throws -> [DatasetRecord]
    /// Drops a dataset (its shard files become orphans, removed after a grace period).
    func dropDataset(named name: String) throws
    /// Every dataset with its shards' pixels, sizes and the workers holding each. Rows that fail
    /// validation (a damaged or hand-edited registry) are left out and described in `skipped`.
    func shardLocations() throws -> (datasets: [(dataset: DatasetRecord, shards: [ShardLocation])], skipped: [String])
    /// What a worker holds that the registry does not expect, and the reverse.
    func reconcile(worker: String, holdings: Set<String>) throws -> (missing: [String], orphans: [String])
    /// Notes a worker's stable name and where peers reach it.
    func recordWorker(name: String, peerEndpoint: String, seen: Date) throws
    /// Each shard's statistics blob (an image dataset's: its patch's place and WCS).
    func shardStatistics(of dataset: DatasetRecord) throws -> [ShardPlace: Data]
}

extension Registry: DatasetCatalog {
    public func shardStatistics(of dataset: DatasetRecord) throws -> [ShardPlace: Data] {
        Dictionary(try shards(of: dataset).map { (ShardPlace(order: UInt32(clamping: $0.order), pixel: $0.pixel), $0.statistics) },
                   uniquingKeysWith: { a, _ in a })
    }

    public func datasetExists(_ name: String) throws -> Bool { try dataset(named: name) != nil }

    public func commit(_ c: Tessera_V1_IngestCommit, ingestId: String, workspace: WorkspaceTable?) throws {
        var footer = Tessera_V1_ShardFooter()
        footer.columns = c.columns
        // An image dataset's schema is its bands and tiling.
        let isImage = c.kind == ImageDataset.kind
        let d = DatasetRecord(
            name: c.dataset, kind: isImage ? ImageDataset.kind : "catalog",
            schema: isImage ? try c.image.serializedBytes() : try footer.serializedBytes(), raColumn: c.raColumn, decColumn: c.decColumn,
            // Clamped, not converted: the numbers come from a client and its workers' reports.
            maxRowsPerShard: Int64(clamping: c.maxRowsPerShard), marginArcsec: c.marginArcsec,
            rows: Int64(clamping: c.shards.reduce(UInt64(0)) { $0 &+ $1.rows }), ingestId: ingestId,
            owner: workspace?.owner ?? "", shared: workspace?.shared ?? false, expiresAt: workspace?.expiresAt)
        let shards = c.shards.map {
            ShardRecord(order: Int($0.order), pixel: $0.pixel, rows: Int64(clamping: $0.rows), marginRows: Int64(clamping: $0.marginRows),
                        bytes: Int64(clamping: $0.bytes), checksum: Int64(bitPattern: $0.checksum), statistics: $0.footer)
        }
        try commitIngest(d, shards: shards, replicas: c.shards.map(\.workers), replace: c.replace)
    }

    public func shardLocations() throws -> (datasets: [(dataset: DatasetRecord, shards: [ShardLocation])], skipped: [String]) {
        let (all, skippedDatasets) = try validDatasets()
        var out: [(dataset: DatasetRecord, shards: [ShardLocation])] = []
        var skipped = skippedDatasets
        for d in all {
            let (shards, bad) = try validShardLocations(of: d)
            skipped += bad
            out.append((d, shards))
        }
        return (out, skipped)
    }
}

/// An ingest between its plan and its commit.
/// A user's table as an ingest records it: whose, whether shared, and when it goes.
public struct WorkspaceTable: Sendable, Equatable {
    public var owner: String
    public var shared: Bool
    public var expiresAt: Date
    public init(owner: String, shared: Bool, expiresAt: Date) { self.owner = owner; self.shared = shared; self.expiresAt = expiresAt }

    /// The registry name of `user`'s table `name`: `USER..NAME` (`..` is refused in survey
    /// dataset names and in table names, so the two never meet and the pair is unambiguous).
    public static func registryName(user: String, table: String) -> String { "\(user)..\(table)" }
}

struct PendingIngest {
    /// A user's table: whose, and whether shared (its expiry is set at commit, `lifetime` on).
    var workspace: WorkspaceTable?
    var lifetime: TimeInterval = 0
    /// Bytes it said it would store (every copy): counted against its user's quota until it ends.
    var askedBytes: UInt64 = 0
    var client: ConnectionID
    /// Who began it (pending ingests are counted per user).
    var user: String
    /// Order of beginning (the oldest goes first when a user begins too many).
    var sequence: UInt64 = 0
    var dataset: String
    var replace: Bool
    /// The planned shards, in the client's order.
    var shards: [(order: UInt32, pixel: Int64)]
    /// Shard index by (order, pixel).
    var index: [ShardPlace: Int]
    /// Per shard, the names of the workers it was sent to.
    var placements: [[String]]
    /// Per shard, what each worker that wrote it reported (worker name → report).
    var stored: [[String: Tessera_V1_ShardStored]]
    /// The client's commit, waiting for workers' reports still on their way.
    var commit: Tessera_V1_IngestCommit?
    /// When the commit arrived (it fails if the reports do not follow in time).
    var commitAt: UInt64 = 0
    /// When it was begun, or a worker last reported one of its shards (see
    /// `SchedulerConfig.ingestIdleNs`).
    var lastActivity: UInt64 = 0
}

extension SchedulerCore {
    /// How long a commit waits for the reports of the workers that stored its shards: as long as
    /// a worker may be silent before it is declared dead.
    var commitWaitNs: UInt64 { config.workerTimeoutNs }

    mutating func ingestBegin(_ connection: ConnectionID, _ b: Tessera_V1_IngestBegin, identity asked: ClientIdentity) {
        func refuse(_ why: String) {
            send(.client(connection), errorEnvelope(.errorInvalidGraph, why, clientTag: b.clientTag))
        }
        // A gateway uploads a TAP user's table into that user's workspace, and only there.
        let identity: ClientIdentity
        switch asked.acting(for: b.onBehalfOf, what: "upload") {
        case .success(let acting): identity = acting
        case .failure(let refusal): return send(.client(connection), errorEnvelope(refusal.code, refusal.message, clientTag: b.clientTag))
        }
        guard let catalog else { return refuse("this scheduler has no registry (start it with --registry)") }
        if let why = Validate.name(b.dataset, what: "dataset name", limit: Limits.datasetNameCharacters) { return refuse(why) }
        guard !b.dataset.contains("..") else {
            return refuse("a dataset name may not contain `..` (it separates a user from their table's name in the workspace): `\(b.dataset)`")
        }
        guard !b.shards.isEmpty else { return refuse("an ingest needs at least one shard") }
        guard b.kind.isEmpty || b.kind == ImageDataset.kind else { return refuse("an ingest of kind `\(b.kind.prefix(40))`: only catalogs and `image` exist") }
        guard b.colocateWith.isEmpty || b.kind == ImageDataset.kind else { return refuse("only images are placed beside a catalog (colocate_with)") }
        var dataset = b.dataset
        var workspace: WorkspaceTable?
        // The survey's datasets are the cluster's: only an admin key loads or replaces them.
        // Everyone else loads tables into their own workspace.
        guard b.workspace || identity.isAdmin else {
            return refuse("only an admin key may load survey datasets; this key is user `\(identity.user)`: upload a table of your own into your workspace instead (tessera upload)")
        }
        if b.workspace {
            switch workspaceProblem(b, user: identity.user) {
            case .refused(let why): return refuse(why)
            case .table(let name, let table): (dataset, workspace) = (name, table)
            }
        }
        do {
            if try catalog.datasetExists(dataset) && !b.replace {
                return refuse(RegistryError.datasetExists(b.workspace ? b.dataset : dataset).description + (b.workspace ? " in your workspace (--replace replaces it)" : ""))
            }
        } catch {
            return refuse("registry: \(error)")
        }
        // A user's ingests begun and never committed (a killed client says nothing) would hold
        // their plans here for good: past the limit, the oldest not yet committing is abandoned.
        let open = pendingIngests.filter { $0.value.user == identity.user && $0.value.commit == nil }
        if open.count >= Limits.pendingIngestsPerUser, let oldest = open.min(by: { $0.value.sequence < $1.value.sequence }) {
            abandonIngest(oldest.key)
            notices.append("abandoned ingest \(oldest.key) of `\(oldest.value.dataset)`: \(identity.user) began more than \(Limits.pendingIngestsPerUser) without committing")
        }
        guard b.shards.count <= Limits.ingestShards else {
            return refuse("an ingest of \(b.shards.count) shards is over the limit of \(Limits.ingestShards)")
        }
        var index: [ShardPlace: Int] = [:]
        var ranges: [Range<Int64>] = []
        for (k, s) in b.shards.enumerated() {
            if let why = ShardKey.pixelProblem(order: Int(s.order), pixel: s.pixel) { return refuse("shard \(k): \(why)") }
            guard s.rows <= Limits.shardRows else { return refuse("shard \(k) of \(s.rows) rows is over the limit of \(Limits.shardRows)") }
            guard index.updateValue(k, forKey: ShardPlace(order: s.order, pixel: s.pixel)) == nil else {
                return refuse("shard order\(s.order)-pix\(s.pixel) is listed twice")
            }
            ranges.append(HEALPix.children(s.pixel, order: Int(s.order), to: HEALPix.maxOrder))
        }
        // Shards of a dataset never overlap (a pixel and one of its children would count rows twice).
        ranges.sort { $0.lowerBound < $1.lowerBound }
        for i in ranges.indices.dropFirst() where ranges[i].lowerBound < ranges[i - 1].upperBound {
            return refuse("the ingest's shards overlap on the sky (one pixel inside another)")
        }
        let live = workerOrder.compactMap { workers[$0] }
        let r = max(1, Int(b.replicas))
        guard r <= Limits.replicas else { return refuse("\(r) replicas are more than the limit of \(Limits.replicas)") }
        guard r <= live.count else {
            return refuse("\(r) replicas asked for, but only \(live.count) workers are live")
        }
        // Images beside a catalog: each patch first on the live holders of the catalog shard that
        // covers most of it, as the forced photometry and stacking that read both want.
        var beside: PlannedDataset?
        if !b.colocateWith.isEmpty {
            let all: [String: PlannedDataset]
            do { all = try plannedDatasets() } catch { return refuse("registry: \(error)") }
            guard let c = resolve(b.colocateWith, user: identity.user, in: all), c.record.kind != ImageDataset.kind else {
                return refuse("no catalog named `\(b.colocateWith.prefix(200))` to place the images beside")
            }
            beside = c
        }
        let liveIndex = Dictionary(live.enumerated().map { ($0.element.name, $0.offset) }, uniquingKeysWith: { a, _ in a })
        // Each shard on the r least-loaded distinct workers (by bytes planned so far; the sizes
        // are the client's estimates, so the sums saturate rather than overflow).
        var load = [UInt64](repeating: 0, count: live.count)
        var plan = Tessera_V1_IngestPlan()
        plan.clientTag = b.clientTag
        plan.ingestID = "i\(String(startedAt, radix: 36))\(String(nextIngest, radix: 36))"
        plan.dataset = dataset
        nextIngest += 1
        var names: [[String]] = []
        var expected: [WorkerID: Tessera_V1_ExpectShards] = [:]
        var chosen: [Int] = []
        chosen.reserveCapacity(r)
        for s in b.shards {
            // The r least-loaded workers, ties to the earlier: r passes over the few workers.
            chosen.removeAll(keepingCapacity: true)
            if let c = beside {
                let range = HEALPix.children(s.pixel, order: Int(s.order), to: HEALPix.maxOrder)
                if let best = c.shards(meeting: [range]).max(by: { $0.covered < $1.covered }) {
                    for name in c.workers[best.shard] where chosen.count < r {
                        if let k = liveIndex[name], !chosen.contains(k) { chosen.append(k) }
                    }
                }
            }
            while chosen.count < r {
                var best = -1
                for k in live.indices where !chosen.contains(k) && (best < 0 || load[k] < load[best]) { best = k }
                chosen.append(best)
            }
            var p = Tessera_V1_ShardPlacement()
            p.workers = chosen.map { live[$0].id }
            for k in chosen {
                let (sum, overflow) = load[k].addingReportingOverflow(max(s.bytes, s.rows))
                load[k] = overflow ? .max : sum
                expected[live[k].id, default: .init()].orders.append(s.order)
                expected[live[k].id]!.pixels.append(s.pixel)
                expected[live[k].id]!.bytes.append(s.bytes)
            }
            plan.placements.append(p)
            names.append(chosen.map { live[$0].name })
        }
        for w in live {
            var peer = Tessera_V1_Peer()
            peer.workerID = w.id
            peer.endpoint = w.peerEndpoint
            peer.publicKey = w.publicKey
            plan.workers.append(peer)
            plan.workerNames.append(w.name)
        }
        // Workers accept only the shards they are told to expect, so no one can write into a
        // worker's data folder what the scheduler did not plan.
        for (id, var x) in expected.sorted(by: { $0.key < $1.key }) {
            guard let w = workers[id] else { continue }
            x.ingestID = plan.ingestID
            x.dataset = dataset
            x.clientKey = identity.publicKey
            var e = Envelope()
            e.expectShards = x
            send(.worker(w.connection), e)
        }
        pendingIngests[plan.ingestID] = PendingIngest(
            workspace: workspace, lifetime: Self.lifetime(of: b), askedBytes: workspace == nil ? 0 : Self.askedBytes(b),
            client: connection, user: identity.user, sequence: nextIngest, dataset: dataset, replace: b.replace, shards: b.shards.map { ($0.order, $0.pixel) },
            index: index, placements: names, stored: Array(repeating: [:], count: b.shards.count), lastActivity: lastNow)
        var e = Envelope()
        e.ingestPlan = plan
        send(.client(connection), e)
    }

    enum WorkspaceCheck {
        case table(name: String, WorkspaceTable)
        case refused(String)
    }

    /// A user's upload checked: its name (not a survey dataset's), and their workspace's quota
    /// with it (the client's size estimates; a replaced table of theirs no longer counts).
    mutating func workspaceProblem(_ b: Tessera_V1_IngestBegin, user: String) -> WorkspaceCheck {
        guard !user.contains("..") else { return .refused("user `\(user)` cannot have a workspace: `..` in a user name is reserved") }
        let name = WorkspaceTable.registryName(user: user, table: b.dataset)
        if let why = Validate.name(name, what: "the table's name with its owner's", limit: Limits.datasetNameCharacters) { return .refused(why) }
        let all: [String: PlannedDataset]
        do { all = try plannedDatasets() } catch { return .refused("registry: \(error)") }
        if let survey = all[b.dataset], survey.record.owner.isEmpty {
            return .refused("`\(b.dataset)` is a survey dataset: a table of yours needs another name")
        }
        // Their tables, and their uploads still in progress (of other tables).
        var used = workspaceBytes(of: user, except: name)
        for p in pendingIngests.values where p.workspace?.owner == user && p.dataset != name { used &+= p.askedBytes }
        let asked = Self.askedBytes(b)
        let quota = config.workspaceQuotaBytes
        guard used &+ asked <= quota else {
            return .refused("this upload of about \(asked >> 20) MiB would take your workspace to \((used &+ asked) >> 20) MiB, over its quota of \(quota >> 20) MiB: remove or let expire tables you no longer need (yours now hold \(used >> 20) MiB)")
        }
        return .table(name: name, WorkspaceTable(owner: user, shared: b.shared, expiresAt: .distantFuture))
    }

    /// Bytes a user's tables hold (every copy), but for the one named `except` (being replaced).
    mutating func workspaceBytes(of user: String, except: String) -> UInt64 {
        guard let all = try? plannedDatasets() else { return 0 }
        var used: UInt64 = 0
        for d in all.values where d.record.owner == user && d.record.name != except {
            for (bytes, holders) in zip(d.bytes, d.workers) { used &+= UInt64(max(0, bytes)) &* UInt64(max(1, holders.count)) }
        }
        return used
    }

    /// What an ingest says it will store: its shards' estimated bytes, once per copy.
    static func askedBytes(_ b: Tessera_V1_IngestBegin) -> UInt64 {
        b.shards.reduce(UInt64(0)) { $0 &+ $1.bytes } &* UInt64(max(1, b.replicas))
    }

    /// How long a user's table lives: as asked within `Limits.workspaceLifetimeSeconds`, a day by default.
    static func lifetime(of b: Tessera_V1_IngestBegin) -> TimeInterval {
        let asked = b.lifetimeS.isFinite && b.lifetimeS > 0 ? b.lifetimeS : 86_400
        return min(max(asked, Limits.workspaceLifetimeSeconds.lowerBound), Limits.workspaceLifetimeSeconds.upperBound)
    }

    /// Drops users' tables past their lifetime (checked every 2 s): their shard files become
    /// orphans, which workers remove after the grace period.
    mutating func expireWorkspaces(now: UInt64) {
        guard let catalog, now &- lastWorkspaceSweep >= 2_000_000_000 || lastWorkspaceSweep == 0 else { return }
        lastWorkspaceSweep = max(1, now)
        guard let expired = try? catalog.expiredDatasets(before: Date()), !expired.isEmpty else { return }
        let planned = try? plannedDatasets()
        for d in expired {
            do { try catalog.dropDataset(named: d.name) } catch { notices.append("registry: could not drop expired `\(d.name)`: \(error)"); continue }
            if let p = planned?[d.name] { orphan(p, now: now) }
            notices.append("table `\(d.name)` of \(d.owner) expired and was dropped")
        }
        self.planned = nil
    }

    /// Every copy of a dataset no longer in the registry becomes an orphan, removed from its
    /// worker after the grace period.
    mutating func orphan(_ d: PlannedDataset, now: UInt64) {
        for (key, names) in zip(d.keys, d.workers) {
            for n in names { markOrphan(key, on: n, now: now) }
        }
    }

    /// A worker reports a shard it wrote for an ingest: the registry will hold what workers
    /// report, never what the client claims.
    mutating func shardStored(_ w: WorkerRecord, _ r: Tessera_V1_ShardStored, now: UInt64) {
        guard r.error.isEmpty, var p = pendingIngests[r.ingestID], p.dataset == r.dataset,
              let k = p.index[ShardPlace(order: r.order, pixel: r.pixel)], p.placements[k].contains(w.name)
        else {
            notices.append("worker \(w.name) reported shard \(r.dataset)/\(r.ingestID)/order\(r.order)-pix\(r.pixel), which no pending ingest planned for it")
            // Written after its ingest was stopped or abandoned (it was under way then): an
            // orphan (an abandoned ingest never commits), removed at once if its client stopped
            // it, else after the grace. It used to stay until the worker next registered.
            let key = ShardKey(dataset: r.dataset, ingestId: r.ingestID, order: Int(r.order), pixel: r.pixel)
            if r.error.isEmpty, let ended = endedIngests[r.ingestID], key.problem == nil {
                markOrphan(key.description, on: w.name, now: now, atOnce: ended.stoppedByClient)
            }
            return
        }
        guard r.rows <= Limits.shardRows, r.marginRows <= Limits.shardRows, r.bytes <= UInt64(Int64.max) else {
            notices.append("worker \(w.name) reported impossible sizes for shard order\(r.order)-pix\(r.pixel); ignored")
            return
        }
        p.stored[k][w.name] = r
        p.lastActivity = now
        pendingIngests[r.ingestID] = p
        if p.commit != nil { tryCommit(r.ingestID, now: now) }
    }

    mutating func ingestCommit(_ connection: ConnectionID, _ c: Tessera_V1_IngestCommit, now: UInt64) {
        func refuse(_ why: String) {
            send(.client(connection), errorEnvelope(.errorInvalidGraph, why, clientTag: c.clientTag))
        }
        guard catalog != nil else { return refuse("this scheduler has no registry") }
        guard var p = pendingIngests[c.ingestID], p.client == connection, p.dataset == c.dataset, p.commit == nil else {
            return refuse("no ingest `\(c.ingestID.prefix(100))` of `\(c.dataset.prefix(100))` is in progress for this client")
        }
        if let why = Self.commitProblem(c) {
            abandonIngest(c.ingestID)
            return refuse(why)
        }
        p.commit = c
        p.commitAt = now
        pendingIngests[c.ingestID] = p
        tryCommit(c.ingestID, now: now)
    }

    /// How long an abandoned ingest's late copies are recognised: five times the clients' wait
    /// for one copy (their store timeout, two minutes), the 1,024 latest at most.
    static let endedIngestMemoryNs: UInt64 = 600_000_000_000
    static let endedIngestsRemembered = 1_024

    /// The client stops an ingest it began and has not committed: it is forgotten at once, and
    /// the copies its workers stored are removed on the next tick (nothing can ever claim them:
    /// their keys name this ingest), not after the grace an idle ingest's get.
    mutating func ingestAbort(_ connection: ConnectionID, _ a: Tessera_V1_IngestAbort, now: UInt64) {
        func refuse(_ why: String) {
            send(.client(connection), errorEnvelope(.errorInvalidGraph, why, clientTag: a.clientTag))
        }
        guard let p = pendingIngests[a.ingestID], p.client == connection, p.dataset == a.dataset else {
            return refuse("no ingest `\(a.ingestID.prefix(100))` of `\(a.dataset.prefix(100))` is in progress for this client")
        }
        guard p.commit == nil else { return refuse("ingest \(a.ingestID) of `\(p.dataset)` is being committed: it can no longer be stopped") }
        let copies = p.stored.reduce(0) { $0 + $1.count }
        abandonIngest(a.ingestID, atOnce: true)
        notices.append("abandoned ingest \(a.ingestID) of `\(p.dataset)` (\(p.user)): its client stopped it; \(copies) shard copies stored are removed")
        var done = Tessera_V1_IngestAborted()
        done.clientTag = a.clientTag
        done.ingestID = a.ingestID
        done.copiesRemoved = UInt64(copies)
        var e = Envelope()
        e.ingestAborted = done
        send(.client(connection), e)
    }

    /// Why the client's description of a dataset cannot be recorded, or nil.
    static func commitProblem(_ c: Tessera_V1_IngestCommit) -> String? {
        if c.kind == ImageDataset.kind { return ImageDataset.infoProblem(c.image) }
        guard c.kind.isEmpty else { return "a dataset of kind `\(c.kind.prefix(40))`: only catalogs and `image` exist" }
        guard !c.columns.isEmpty, c.columns.count <= Limits.planExpressions else {
            return "a dataset needs 1…\(Limits.planExpressions) columns, this one has \(c.columns.count)"
        }
        var seen = Set<String>()
        for col in c.columns {
            guard !col.name.isEmpty, col.name.utf8.count <= Limits.identifierCharacters, seen.insert(col.name).inserted else {
                return "column name `\(col.name.prefix(100))` is empty, repeated, or over \(Limits.identifierCharacters) bytes"
            }
        }
        guard seen.contains(c.raColumn), seen.contains(c.decColumn) else {
            return "the position columns `\(c.raColumn.prefix(100))` and `\(c.decColumn.prefix(100))` are not among the dataset's columns"
        }
        if let problem = IngestOptionsCheck.problem(marginArcsec: c.marginArcsec, maxRowsPerShard: c.maxRowsPerShard) { return problem }
        return nil
    }

    /// Commits an ingest once every planned shard has a copy its worker reported; replicas must
    /// agree. Until then the commit waits (reports travel on other connections than the commit).
    mutating func tryCommit(_ id: String, now: UInt64) {
        guard let p = pendingIngests[id], let c = p.commit, let catalog else { return }
        func refuse(_ why: String) {
            abandonIngest(id)
            send(.client(p.client), errorEnvelope(.errorInvalidGraph, why, clientTag: c.clientTag))
        }
        var commit = c
        commit.replace = p.replace
        commit.shards = []
        for (k, s) in p.shards.enumerated() {
            let copies = p.stored[k].sorted { $0.key < $1.key }
            guard let first = copies.first?.value else {
                if now &- p.commitAt < commitWaitNs { return }
                return refuse("shard order\(s.order)-pix\(s.pixel) was not reported stored by any of its workers (\(p.placements[k].joined(separator: ", ")))")
            }
            for (name, r) in copies.dropFirst() where r.rows != first.rows || r.checksum != first.checksum || r.bytes != first.bytes {
                return refuse("the copies of shard order\(s.order)-pix\(s.pixel) differ: \(copies[0].key) and \(name) stored different files")
            }
            var cs = Tessera_V1_CommittedShard()
            cs.order = s.order
            cs.pixel = s.pixel
            cs.rows = first.rows
            cs.marginRows = first.marginRows
            cs.bytes = first.bytes
            cs.checksum = first.checksum
            cs.footer = first.footer
            cs.workers = copies.map(\.key)
            commit.shards.append(cs)
        }
        // What a replaced dataset held becomes orphaned once the new one is committed.
        let replaced = (try? plannedDatasets())?[c.dataset]
        do {
            // A table's lifetime runs from its commit; its quota is checked again with the bytes
            // its workers reported (the client's estimate at the start was its own claim).
            let table = p.workspace.map { WorkspaceTable(owner: $0.owner, shared: $0.shared, expiresAt: Date().addingTimeInterval(p.lifetime)) }
            if let t = table {
                let stored = commit.shards.reduce(UInt64(0)) { $0 &+ $1.bytes &* UInt64(max(1, $1.workers.count)) }
                let used = workspaceBytes(of: t.owner, except: c.dataset)
                guard used &+ stored <= config.workspaceQuotaBytes else {
                    return refuse("this upload stored \(stored >> 20) MiB, which would take your workspace to \((used &+ stored) >> 20) MiB, over its quota of \(config.workspaceQuotaBytes >> 20) MiB")
                }
            }
            try catalog.commit(commit, ingestId: id, workspace: table)
            planned = nil
        } catch {
            return refuse("\(error)")
        }
        if let replaced { orphan(replaced, now: now) }
        abandonIngest(id, committed: true)
        // Placement learns the new shards at once (workers report them again when they re-register).
        let byName = Dictionary(workers.values.map { ($0.name, $0.id) }, uniquingKeysWith: { a, _ in a })
        for s in commit.shards {
            let key = ShardKey(dataset: c.dataset, ingestId: id, order: Int(s.order), pixel: s.pixel).description
            holders[key] = s.workers.compactMap { byName[$0] }
        }
        var done = Tessera_V1_IngestCommitted()
        done.clientTag = c.clientTag
        // A user's table by the name they gave it.
        done.dataset = p.workspace.map { String(c.dataset.dropFirst($0.owner.count + 2)) } ?? c.dataset
        done.rows = commit.shards.reduce(0) { $0 + $1.rows }
        done.shards = UInt64(commit.shards.count)
        var e = Envelope()
        e.ingestCommitted = done
        send(.client(p.client), e)
        notices.append("dataset `\(c.dataset)` committed: \(done.rows) rows in \(done.shards) shards (ingest \(id))")
    }

    /// Forgets an ingest and tells its workers to stop expecting its shards. Shards stored for
    /// an ingest that never committed are orphans (removed `atOnce`, or after the grace).
    mutating func abandonIngest(_ id: String, committed: Bool = false, atOnce: Bool = false) {
        guard let p = pendingIngests.removeValue(forKey: id) else { return }
        if !committed {
            for (k, s) in p.shards.enumerated() {
                let key = ShardKey(dataset: p.dataset, ingestId: id, order: Int(s.order), pixel: s.pixel).description
                for n in p.stored[k].keys { markOrphan(key, on: n, now: lastNow, atOnce: atOnce) }
            }
            // Remembered while a copy under way may still be reported; the oldest forgotten first.
            endedIngests = endedIngests.filter { lastNow &- $0.value.at < Self.endedIngestMemoryNs }
            if endedIngests.count >= Self.endedIngestsRemembered, let oldest = endedIngests.min(by: { $0.value.at < $1.value.at }) {
                endedIngests.removeValue(forKey: oldest.key)
            }
            endedIngests[id] = (lastNow, atOnce)
        }
        let names = Set(p.placements.joined())
        for w in workers.values where names.contains(w.name) {
            var x = Tessera_V1_ExpectShards()
            x.ingestID = id
            x.dataset = p.dataset
            x.finished = true
            var e = Envelope()
            e.expectShards = x
            send(.worker(w.connection), e)
        }
    }

    /// Notes shard file `key` on worker `worker` as an orphan, to be removed after the grace
    /// period (or on the next tick, `atOnce`); an orphan already noted keeps its earlier time.
    mutating func markOrphan(_ key: String, on worker: String, now: UInt64, atOnce: Bool = false) {
        let at = atOnce ? now : (now > UInt64.max - config.orphanGraceNs ? UInt64.max : now + config.orphanGraceNs)
        orphans[worker, default: [:]][key] = min(orphans[worker]?[key] ?? .max, at)
    }

    /// Tells workers to delete orphaned shard files past their grace period, unless a dataset or
    /// an ingest under way has claimed them since.
    mutating func removeOrphans(now: UInt64) {
        let byName = Dictionary(workers.values.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        var referenced: Set<String>?
        for (name, keys) in orphans {
            guard let w = byName[name] else { continue }
            let due = keys.filter { now >= $0.value }.map(\.key)
            guard !due.isEmpty else { continue }
            // Fails closed: with the registry unreadable, nothing is known unreferenced.
            if referenced == nil {
                guard let all = try? plannedDatasets() else { return }
                referenced = Set(all.values.flatMap(\.keys))
            }
            let remove = due.filter { key in
                !(referenced?.contains(key) ?? true) && !(ShardKey(key).map { pendingIngests[$0.ingestId] != nil } ?? true)
            }.sorted()
            for key in due { orphans[name]?.removeValue(forKey: key) }
            if orphans[name]?.isEmpty ?? false { orphans.removeValue(forKey: name) }
            guard !remove.isEmpty else { continue }
            var r = Tessera_V1_RemoveShards()
            r.keys = remove
            var e = Envelope()
            e.removeShards = r
            send(.worker(w.connection), e)
            notices.append("asked worker \(name) to remove \(remove.count) orphaned shard file(s), e.g. \(remove[0])")
        }
    }

    /// Commits whose workers' reports never came are refused; ingests begun and left idle past
    /// `SchedulerConfig.ingestIdleNs` without a commit are abandoned.
    mutating func expireIngests(now: UInt64) {
        for (id, p) in pendingIngests.sorted(by: { $0.key < $1.key }) {
            if p.commit != nil {
                if now &- p.commitAt >= commitWaitNs { tryCommit(id, now: now) }
            } else if config.ingestIdleNs > 0, now &- p.lastActivity >= config.ingestIdleNs {
                abandonIngest(id)
                notices.append("abandoned ingest \(id) of `\(p.dataset)` (\(p.user)): nothing was heard of it for \(config.ingestIdleNs / 1_000_000_000) s and it was never committed")
            }
        }
    }

    /// Datasets with their size and how many of their shards have a live copy.
    /// The datasets `user` may read: the survey's, their own tables (by the names they gave
    /// them) and tables others share (as `OWNER..NAME`).
    mutating func datasetStatuses(for user: String, withCoverage: Bool = false) -> [Tessera_V1_DatasetStatus] {
        guard let all = try? plannedDatasets() else { return [] }
        let live = Set(workers.values.map(\.name))
        let now = Date()
        return all.values.filter { $0.record.isVisible(to: user) }.sorted { $0.record.name < $1.record.name }.map { d in
            var s = Tessera_V1_DatasetStatus()
            s.name = d.record.name(for: user)
            s.owner = d.record.owner
            s.shared = d.record.shared
            if let e = d.record.expiresAt { s.expiresInS = max(0, e.timeIntervalSince(now)) }
            s.kind = d.record.kind
            // Clamped and saturating: a damaged registry row must not stop the scheduler here.
            s.rows = UInt64(clamping: d.record.rows)
            s.shards = UInt64(d.keys.count)
            s.bytes = d.bytes.reduce(UInt64(0)) { t, b in
                let (sum, over) = t.addingReportingOverflow(UInt64(clamping: b))
                return over ? .max : sum
            }
            let liveCopies = d.workers.map { $0.filter(live.contains).count }
            s.minReplicas = UInt32(liveCopies.min() ?? 0)
            s.shardsWithoutLiveReplica = UInt64(liveCopies.filter { $0 == 0 }.count)
            s.columns = d.columns
            s.raColumn = d.record.raColumn
            s.decColumn = d.record.decColumn
            if withCoverage {
                s.shardOrders = d.orders.map { UInt32(clamping: $0) }
                s.shardPixels = d.pixels.map { UInt64(clamping: $0) }
            }
            if let images = d.images {
                s.images = images.info
                if withCoverage { s.patches = images.patches.map { $0.map(ImageDataset.info) ?? Tessera_V1_ImagePatchInfo() } }
            }
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
        let unclaimed = orphans.filter { key in ShardKey(key).map { pendingIngests[$0.ingestId] == nil } ?? false }
        if !unclaimed.isEmpty {
            notices.append("worker \(w.name) holds \(unclaimed.count) shard file(s) no dataset lists (an ingest that never committed, a replaced dataset, or a planted file), e.g. \(unclaimed[0]); removed after \(config.orphanGraceNs / 1_000_000_000) s unless a dataset claims them")
            for key in unclaimed { markOrphan(key, on: w.name, now: lastNow) }
        }
    }
}
