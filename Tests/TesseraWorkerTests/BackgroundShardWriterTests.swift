import Foundation
import Synchronization
import Testing
import TesseraProtocol
import TesseraSky
import TesseraStorage
import TesseraWorker
import TesseraTestKit

/// Shards are written off the event loop: `submit` returns at once, the wake-up comes when the
/// file is on disk, and the reply (or the refusal of a bad request) comes out of `drainFinished`.
@Suite struct BackgroundShardWriterTests {
    func request(rows: Int, dataset: String) -> (Tessera_V1_StoreShard, [[UInt8]]) {
        // Positions inside pixel 5 of order 3 (the worker computes their index itself).
        let centre = HEALPix.centerRaDec(order: 3, pixel: 5)
        let ra = (0..<rows).map { centre.ra + Double($0 % 100) * 1e-4 }, dec = (0..<rows).map { centre.dec + Double($0 % 7) * 1e-4 }
        let index = zip(ra, dec).map { _ in Int64.random(in: 0..<(1 << 40)) }
        var r = Tessera_V1_StoreShard()
        r.requestID = 7
        r.ingestID = "ingest-1"
        r.dataset = dataset
        r.order = 3
        r.pixel = 5
        r.indexColumn = "_healpix_29"
        (r.raColumn, r.decColumn) = ("coord_ra", "coord_dec")
        r.rows = UInt64(rows)
        r.columns = [("coord_ra", Tessera_V1_ColumnType.columnFloat64), ("coord_dec", .columnFloat64), ("_healpix_29", .columnInt64)].map {
            var c = Tessera_V1_ColumnSchema()
            (c.name, c.type) = ($0.0, $0.1)
            return c
        }
        return (r, [ColumnData.float64(ra).storedBytes, ColumnData.float64(dec).storedBytes, ColumnData.int64(index).storedBytes])
    }

    @Test func answersOnceTheFileIsOnDisk() throws {
        let root = temporaryFolder("bgwriter")
        let store = try ShardStore(root: root)
        let wakes = Atomic<Int>(0)
        let writer = BackgroundShardWriter(store: store, workerName: "w1") { wakes.add(1, ordering: .relaxed) }
        let (good, frames) = request(rows: 200_000, dataset: "object")
        let (bad, _) = request(rows: 10, dataset: "../etc")
        writer.submit(good, frames: frames, identity: [1, 2, 3])
        writer.submit(bad, frames: [], identity: [4])
        var finished: [BackgroundShardWriter.Finished] = []
        let deadline = Date().addingTimeInterval(30)
        while finished.count < 2 && Date() < deadline {
            finished += writer.drainFinished()
            Thread.sleep(forTimeInterval: 0.01)
        }
        #expect(finished.count == 2)
        #expect(writer.inFlight == 0)
        #expect(wakes.load(ordering: .relaxed) == 2)
        let ok = try #require(finished.first { $0.identity == [1, 2, 3] })
        #expect(ok.reply.error.isEmpty && ok.reply.rows == 200_000 && ok.reply.workerName == "w1")
        let key = ShardKey(dataset: "object", ingestId: "ingest-1", order: 3, pixel: 5)
        #expect(try ShardReader(path: store.path(key)).footer.rows == 200_000)
        let refused = try #require(finished.first { $0.identity == [4] })
        #expect(refused.reply.error.contains("dataset name `../etc` may hold only"))
    }
}
