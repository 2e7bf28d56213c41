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
