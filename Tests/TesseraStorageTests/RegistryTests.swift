import Foundation
import Testing
@testable import TesseraStorage

func sampleDataset(_ name: String, rows: Int64 = 100) -> DatasetRecord {
    DatasetRecord(name: name, schema: Data([1, 2, 3]), raColumn: "coord_ra", decColumn: "coord_dec",
                  maxRowsPerShard: 1000, marginArcsec: 10, rows: rows, ingestId: "i1")
}

@Test func shardKeysRoundTrip() {
    let k = ShardKey(dataset: "object", ingestId: "a1b2", order: 7, pixel: 12345)
    #expect(k.description == "object/a1b2/order7-pix12345")
    #expect(ShardKey(k.description) == k)
    #expect(ShardKey("object/a1b2/order7-pix12345.shard") == k)
    #expect(k.relativePath == "catalogs/object/a1b2/order7-pix12345.shard")
    #expect(ShardKey("object/order7-pix1") == nil)
    #expect(ShardKey("a/b/orderx-pix1") == nil)
}

@Suite struct RegistryTests {
    /// Each start on a registry file gets the next epoch, and job ids after every id an earlier
    /// start set aside — also when that start died without writing again.
    @Test func everyStartHasANewEpochAndFreshJobIDs() throws {
        let path = tempPath("registry-epochs-\(UInt32.random(in: 0...UInt32.max)).sqlite")
        let first = try Registry(path: path).beginEpoch(reserve: 100)
        #expect(first.epoch == 1 && first.firstJobID == 1)
        // The first start hands out ids 1…140: past its reservation, so it set more aside.
        try Registry(path: path).reserveJobIDs(below: 240)
        // A stale, lower reservation never lowers the floor.
        try Registry(path: path).reserveJobIDs(below: 50)
        let second = try Registry(path: path).beginEpoch(reserve: 100)
        #expect(second.epoch == 2 && second.firstJobID == 240)
        // The second start dies at once; the third still starts past everything it may have used.
        let third = try Registry(path: path).beginEpoch(reserve: 100)
        #expect(third.epoch == 3 && third.firstJobID == 340)
    }

    /// A user's table keeps its owner, sharing and expiry, and is listed once its lifetime ends.
    @Test func usersTablesKeepTheirOwnerAndExpire() throws {
        let r = try Registry()
        var table = sampleDataset("alice..mine")
        (table.owner, table.shared, table.expiresAt) = ("alice", true, Date().addingTimeInterval(-1))
        var later = sampleDataset("bob..mine")
        (later.owner, later.expiresAt) = ("bob", Date().addingTimeInterval(3_600))
        for d in [table, later, sampleDataset("object")] { _ = try r.commitIngest(d, shards: [], replicas: [], replace: false) }
        let back = try #require(try r.dataset(named: "alice..mine"))
        #expect(back.owner == "alice" && back.shared && back.isVisible(to: "carol") && back.name(for: "alice") == "mine")
        let bobs = try #require(try r.dataset(named: "bob..mine"))
        #expect(!bobs.isVisible(to: "alice") && bobs.isVisible(to: "bob") && bobs.name(for: "alice") == "bob..mine")
        #expect(try r.dataset(named: "object")?.owner == "" && r.dataset(named: "object")?.expiresAt == nil)
        #expect(try r.expiredDatasets(before: Date()).map(\.name) == ["alice..mine"])
    }

    /// A real SQLite file in a temporary folder, opened again to show it persists.
    @Test func ingestIsRecordedAndSurvivesReopening() throws {
        let path = tempPath("registry-\(UInt32.random(in: 0...UInt32.max)).sqlite")
        do {
            let r = try Registry(path: path)
            #expect(try r.appliedMigrations() == ["v1: datasets, shards, replicas, workers", "v2: ingest ids", "v3: scheduler epochs and job ids", "v4: users' workspaces"])
            let shards = [ShardRecord(order: 5, pixel: 10, rows: 60, marginRows: 3, bytes: 1000, checksum: -5),
                          ShardRecord(order: 6, pixel: 44, rows: 40, marginRows: 1, bytes: 800, checksum: 7)]
            let d = try r.commitIngest(sampleDataset("object"), shards: shards, replicas: [["w0", "w1"], ["w1", "w2"]], replace: false)
            #expect(d.id != nil)
        }
        let r = try Registry(path: path)
        let d = try #require(try r.dataset(named: "object"))
        #expect(d.rows == 100 && d.schema == Data([1, 2, 3]))
        let shards = try r.shards(of: d)
        #expect(shards.map(\.pixel) == [10, 44])
        #expect(shards.map(\.checksum) == [-5, 7])
        let reps = try r.replicas(of: d)
        #expect(reps[shards[0].id!] == ["w0", "w1"])
        #expect(reps[shards[1].id!] == ["w1", "w2"])
    }

    @Test func existingNamesAreRefusedUnlessReplacedAtomically() throws {
        let r = try Registry()
        try r.commitIngest(sampleDataset("object", rows: 1), shards: [ShardRecord(order: 1, pixel: 1, rows: 1, marginRows: 0, bytes: 1, checksum: 1)],
                           replicas: [["w0"]], replace: false)
        #expect(throws: RegistryError.datasetExists("object")) {
            try r.commitIngest(sampleDataset("object", rows: 2), shards: [], replicas: [], replace: false)
        }
        #expect(try r.dataset(named: "object")?.rows == 1)
        try r.commitIngest(sampleDataset("object", rows: 2), shards: [ShardRecord(order: 2, pixel: 9, rows: 2, marginRows: 0, bytes: 1, checksum: 2)],
                           replicas: [["w1"]], replace: true)
        let d = try #require(try r.dataset(named: "object"))
        #expect(d.rows == 2)
        #expect(try r.shards(of: d).map(\.pixel) == [9])
        #expect(try r.datasets().count == 1)
    }

    /// A failure in the middle of recording an ingest (here: two shards for the same pixel)
    /// leaves the registry exactly as it was.
    @Test func aFailedIngestLeavesThePreviousState() throws {
        let r = try Registry()
        try r.commitIngest(sampleDataset("object", rows: 1), shards: [ShardRecord(order: 1, pixel: 1, rows: 1, marginRows: 0, bytes: 1, checksum: 1)],
                           replicas: [["w0"]], replace: false)
        let dup = ShardRecord(order: 3, pixel: 3, rows: 1, marginRows: 0, bytes: 1, checksum: 1)
        #expect(throws: (any Error).self) {
            try r.commitIngest(sampleDataset("object", rows: 2), shards: [dup, dup], replicas: [["w0"], ["w1"]], replace: true)
        }
        let d = try #require(try r.dataset(named: "object"))
        #expect(d.rows == 1)
        #expect(try r.shards(of: d).map(\.pixel) == [1])
        #expect(try r.replicas(of: d).values.flatMap { $0 } == ["w0"])
    }

    @Test func reconcileReportsLostAndOrphanedShards() throws {
        let r = try Registry()
        try r.commitIngest(sampleDataset("object"), shards: [
            ShardRecord(order: 5, pixel: 10, rows: 1, marginRows: 0, bytes: 1, checksum: 1),
            ShardRecord(order: 5, pixel: 11, rows: 1, marginRows: 0, bytes: 1, checksum: 1),
        ], replicas: [["w0", "w1"], ["w0"]], replace: false)
        let (missing, orphans) = try r.reconcile(worker: "w0", holdings: ["object/i1/order5-pix10", "old/i0/order2-pix3"])
        #expect(missing == ["object/i1/order5-pix11"])
        #expect(orphans == ["old/i0/order2-pix3"])
        let w1 = try r.reconcile(worker: "w1", holdings: ["object/i1/order5-pix10"])
        #expect(w1.missing.isEmpty && w1.orphans.isEmpty)
        try r.recordWorker(name: "w0", peerEndpoint: "tcp://127.0.0.1:9000")
        try r.recordWorker(name: "w0", peerEndpoint: "tcp://127.0.0.1:9001")
        try r.dropDataset(named: "object")
        #expect(try r.datasets().isEmpty)
        #expect(throws: RegistryError.unknownDataset("object")) { try r.dropDataset(named: "object") }
    }
}
