import Foundation
import Testing
import TesseraProtocol
@testable import TesseraScheduler
import TesseraStorage
import TesseraTestKit

/// Ingests begun and never committed, on the state machine with its clock: a client killed
/// mid-upload says nothing more, and its plan must not hold its user's quota for good.
struct SchedulerIngestTests {
    static let alice = ClientIdentity(user: "alice", isAdmin: false, publicKey: "alice-key")
    static let minute: UInt64 = 60_000_000_000

    /// A scheduler with a registry, one worker, a 2 MiB workspace quota and ingests abandoned
    /// after a minute without news.
    static func cluster() throws -> FakeCluster {
        var config = SchedulerConfig()
        config.workspaceQuotaBytes = 2 << 20
        config.ingestIdleNs = minute
        // The worker is never declared dead over these minutes of the fake clock.
        config.workerTimeoutNs = 100 * minute
        let c = FakeCluster(config: config)
        c.core.catalog = try Registry(path: temporaryFolder("ingest-idle") + "/registry.sqlite")
        c.addWorker(name: "w1")
        return c
    }

    enum Answer {
        case success(Tessera_V1_IngestPlan)
        case failure(String)
    }

    /// Begins an upload of one shard claiming `bytes` into alice's workspace; its plan, or the
    /// refusal's message.
    static func begin(_ c: FakeCluster, table: String, bytes: UInt64) -> Answer {
        var b = Tessera_V1_IngestBegin()
        (b.clientTag, b.dataset, b.replicas, b.workspace) = (7, table, 1, true)
        var s = Tessera_V1_ShardSpec()
        (s.order, s.pixel, s.rows, s.bytes) = (0, 3, 1_000, bytes)
        b.shards = [s]
        var e = Envelope()
        e.ingestBegin = b
        c.core.handleClient(2000, e, frames: [], now: c.now, identity: alice)
        for m in c.core.flush(now: c.now) where m.destination == .client(2000) {
            switch m.envelope.body {
            case .ingestPlan(let p): return .success(p)
            case .error(let r): return .failure(r.message)
            default: continue
            }
        }
        return .failure("no answer")
    }

    static func advance(_ c: FakeCluster, by ns: UInt64) {
        c.now += ns
        c.core.tick(now: c.now)
    }

    @Test func anIngestLeftIdleIsAbandonedAndGivesBackItsQuota() throws {
        let c = try Self.cluster()
        guard case .success(let plan) = Self.begin(c, table: "first", bytes: 1_500_000) else { Issue.record("the first upload was refused"); return }
        guard case .failure(let over) = Self.begin(c, table: "second", bytes: 1_500_000) else { Issue.record("the quota held nothing"); return }
        #expect(over.contains("quota"), "\(over)")

        // A worker's report of one of its shards is news of it: the clock starts again.
        Self.advance(c, by: Self.minute - 1_000_000_000)
        var r = Tessera_V1_ShardStored()
        (r.ingestID, r.dataset, r.order, r.pixel, r.rows, r.bytes, r.workerName) = (plan.ingestID, plan.dataset, 0, 3, 1_000, 1_500_000, "w1")
        var e = Envelope()
        e.shardStored = r
        e.epoch = c.core.config.epoch
        c.core.handleWorker(c.workers[0].connection, e, frames: [], now: c.now)
        Self.advance(c, by: 2_000_000_000)
        #expect(!c.core.notices.contains { $0.contains("abandoned ingest") }, "abandoned while its shards were still arriving")
        guard case .failure = Self.begin(c, table: "second", bytes: 1_500_000) else { Issue.record("the pending upload stopped counting"); return }

        // A minute with no news: abandoned, its worker told to stop expecting it, its stored
        // shard an orphan, and the quota free again.
        Self.advance(c, by: Self.minute)
        #expect(c.core.notices.contains { $0.contains("abandoned ingest \(plan.ingestID)") && $0.contains("never committed") }, "\(c.core.notices)")
        let told = c.core.flush(now: c.now).contains { m in
            guard m.destination == .worker(c.workers[0].connection), case .expectShards(let x) = m.envelope.body else { return false }
            return x.ingestID == plan.ingestID && x.finished
        }
        #expect(told, "the worker was not told the ingest ended")
        #expect(c.core.orphans["w1"]?.keys.contains { $0.contains(plan.ingestID) } ?? false)
        guard case .success = Self.begin(c, table: "second", bytes: 1_500_000) else { Issue.record("the abandoned upload still holds the quota"); return }
    }

    /// Sends `e` from client connection `connection` (as alice) and returns what it was answered
    /// (and what else went out, in `sent`).
    static func answer(_ c: FakeCluster, _ e: Envelope, from connection: ConnectionID = 2000, sent: inout [OutgoingMessage]) -> [Envelope] {
        c.core.handleClient(connection, e, frames: [], now: c.now, identity: alice)
        sent = c.core.flush(now: c.now)
        return sent.filter { $0.destination == .client(connection) }.map(\.envelope)
    }

    static func answer(_ c: FakeCluster, _ e: Envelope, from connection: ConnectionID = 2000) -> [Envelope] {
        var sent: [OutgoingMessage] = []
        return answer(c, e, from: connection, sent: &sent)
    }

    static func abort(_ plan: Tessera_V1_IngestPlan, dataset: String? = nil) -> Envelope {
        var a = Tessera_V1_IngestAbort()
        (a.clientTag, a.ingestID, a.dataset) = (9, plan.ingestID, dataset ?? plan.dataset)
        var e = Envelope()
        e.ingestAbort = a
        return e
    }

    static func report(_ c: FakeCluster, _ plan: Tessera_V1_IngestPlan, bytes: UInt64) {
        var r = Tessera_V1_ShardStored()
        (r.ingestID, r.dataset, r.order, r.pixel, r.rows, r.bytes, r.workerName) = (plan.ingestID, plan.dataset, 0, 3, 1_000, bytes, "w1")
        var e = Envelope()
        e.shardStored = r
        e.epoch = c.core.config.epoch
        c.core.handleWorker(c.workers[0].connection, e, frames: [], now: c.now)
    }

    /// The shard keys the scheduler asked worker w1 to remove since the last flush.
    static func removals(_ c: FakeCluster) -> [String] {
        c.core.flush(now: c.now).flatMap { m -> [String] in
            guard m.destination == .worker(c.workers[0].connection), case .removeShards(let r) = m.envelope.body else { return [] }
            return r.keys
        }
    }

    /// A client that stops its ingest (Ctrl-C, a failure while sending) has it forgotten at
    /// once: the quota is free, and the copy its worker stored is removed on the next tick, not
    /// after the idle limit and the orphans' grace. Only the ingest's own client may stop it, and
    /// not once it is committing.
    @Test func aStoppedIngestIsForgottenAtOnceAndItsCopiesRemoved() throws {
        let c = try Self.cluster()
        c.core.config.orphanGraceNs = 60 * Self.minute
        guard case .success(let plan) = Self.begin(c, table: "first", bytes: 1_500_000) else { Issue.record("the upload was refused"); return }
        Self.report(c, plan, bytes: 1_500_000)
        _ = c.core.flush(now: c.now)

        // Another connection's, or one naming another dataset: refused, and nothing changes.
        for (e, from) in [(Self.abort(plan), ConnectionID(2001)), (Self.abort(plan, dataset: "other"), 2000)] {
            let refused = Self.answer(c, e, from: from)
            #expect(refused.count == 1 && refused.allSatisfy { if case .error(let r) = $0.body { r.message.contains("is in progress for this client") } else { false } }, "\(refused)")
        }
        guard case .failure = Self.begin(c, table: "second", bytes: 1_500_000) else { Issue.record("a refused stop freed the quota"); return }

        c.now += 1_000_000_000
        var sent: [OutgoingMessage] = []
        let answered = Self.answer(c, Self.abort(plan), sent: &sent)
        guard answered.count == 1, case .ingestAborted(let done) = answered[0].body else { Issue.record("\(answered)"); return }
        #expect(done.clientTag == 9 && done.ingestID == plan.ingestID && done.copiesRemoved == 1)
        #expect(c.core.notices.contains { $0.contains("abandoned ingest \(plan.ingestID)") && $0.contains("its client stopped it") }, "\(c.core.notices)")
        // Its worker stops expecting it, and the stored copy goes on the next tick.
        let told = sent.contains { m in
            guard m.destination == .worker(c.workers[0].connection), case .expectShards(let x) = m.envelope.body else { return false }
            return x.ingestID == plan.ingestID && x.finished
        }
        #expect(told, "the worker was not told the ingest ended")
        Self.advance(c, by: 100_000_000)
        #expect(Self.removals(c) == ["\(plan.dataset)/\(plan.ingestID)/order0-pix3"])
        guard case .success = Self.begin(c, table: "second", bytes: 1_500_000) else { Issue.record("the stopped upload still holds the quota"); return }
        _ = c.core.flush(now: c.now)

        // Stopped twice: the second is refused. A copy whose write was under way when it was
        // stopped, reported late, is removed at once too (it stayed until the worker next
        // registered).
        let again = Self.answer(c, Self.abort(plan))
        #expect(again.count == 1 && again.allSatisfy { if case .error = $0.body { true } else { false } })
        Self.report(c, plan, bytes: 1_500_000)
        Self.advance(c, by: 100_000_000)
        #expect(Self.removals(c) == ["\(plan.dataset)/\(plan.ingestID)/order0-pix3"])

        // One of an ingest abandoned for its silence, reported late: an orphan for the grace.
        guard case .success(let idle) = Self.begin(c, table: "idle", bytes: 1_000) else { Issue.record("refused"); return }
        Self.advance(c, by: Self.minute + 1)
        #expect(c.core.notices.contains { $0.contains("abandoned ingest \(idle.ingestID)") })
        Self.report(c, idle, bytes: 1_000)
        Self.advance(c, by: 100_000_000)
        #expect(Self.removals(c).isEmpty, "a late copy of an idle ingest was removed before its grace")
        Self.advance(c, by: 60 * Self.minute)
        #expect(Self.removals(c) == ["\(idle.dataset)/\(idle.ingestID)/order0-pix3"])
    }

    @Test func anIngestBeingCommittedCannotBeStopped() throws {
        let c = try Self.cluster()
        guard case .success(let plan) = Self.begin(c, table: "t", bytes: 1_000) else { Issue.record("refused"); return }
        // Committed before its worker's report came: the commit waits for it.
        var commit = Tessera_V1_IngestCommit()
        (commit.clientTag, commit.ingestID, commit.dataset, commit.raColumn, commit.decColumn, commit.maxRowsPerShard) = (8, plan.ingestID, plan.dataset, "ra", "dec", 1_000)
        commit.columns = ["ra", "dec"].map { name in
            var col = Tessera_V1_ColumnSchema()
            (col.name, col.type) = (name, .columnFloat64)
            return col
        }
        var e = Envelope()
        e.ingestCommit = commit
        #expect(Self.answer(c, e).isEmpty, "the commit did not wait for its worker's report")
        let refused = Self.answer(c, Self.abort(plan))
        #expect(refused.count == 1 && refused.allSatisfy { if case .error(let r) = $0.body { r.message.contains("is being committed") } else { false } }, "\(refused)")
    }

    @Test func aCommitArrivingAfterTheIngestWasAbandonedIsRefused() throws {
        let c = try Self.cluster()
        guard case .success(let plan) = Self.begin(c, table: "late", bytes: 1_000) else { Issue.record("refused"); return }
        Self.advance(c, by: Self.minute + 1)
        var commit = Tessera_V1_IngestCommit()
        (commit.clientTag, commit.ingestID, commit.dataset) = (8, plan.ingestID, plan.dataset)
        var e = Envelope()
        e.ingestCommit = commit
        c.core.handleClient(2000, e, frames: [], now: c.now, identity: Self.alice)
        let refusal = c.core.flush(now: c.now).compactMap { m -> String? in
            if case .error(let r) = m.envelope.body { return r.message } else { return nil }
        }
        #expect(refusal.count == 1, "\(refusal)")
        #expect(try c.core.catalog?.datasetExists(plan.dataset) == false)
    }
}
