import Foundation
import Testing
import TesseraProtocol
import TesseraSky
import TesseraStorage
import TesseraWorker
import TesseraTestKit

/// A worker told the position columns computes each row's spatial index itself: a client's
/// index column (off in the last bit, or hostile) never reaches the file, and a row outside
/// the shard's pixel is refused.
@Suite struct ShardStoreIndexTests {
    func request(ra: [Double], dec: [Double], order: Int, pixel: Int64) -> (Tessera_V1_StoreShard, [[UInt8]]) {
        var r = Tessera_V1_StoreShard()
        (r.requestID, r.ingestID, r.dataset, r.order, r.pixel) = (1, "i1", "mine", UInt32(order), pixel)
        (r.indexColumn, r.raColumn, r.decColumn, r.rows) = ("_healpix_29", "ra", "dec", UInt64(ra.count))
        r.columns = [("ra", Tessera_V1_ColumnType.columnFloat64), ("dec", .columnFloat64), ("_healpix_29", .columnInt64)].map {
            var c = Tessera_V1_ColumnSchema()
            (c.name, c.type) = ($0.0, $0.1)
            return c
        }
        // A bogus index, in the wrong order.
        let bogus = ra.indices.map { Int64($0 * 7 % 5) }
        return (r, [ColumnData.float64(ra).storedBytes, ColumnData.float64(dec).storedBytes, ColumnData.int64(bogus).storedBytes])
    }

    @Test func theIndexIsTheWorkersOwn() throws {
        let root = temporaryFolder("index")
        let store = try ShardStore(root: root)
        let ra = (0..<500).map { 45 + Double($0 % 50) * 0.01 }, dec = (0..<500).map { 20 + Double($0 / 50) * 0.01 }
        let pixel = HEALPix.pixel(order: 3, ra: 45.2, dec: 20.05)
        let (r, frames) = request(ra: ra, dec: dec, order: 3, pixel: pixel)
        let reply = store.store(r, frames: frames, workerName: "w")
        #expect(reply.error.isEmpty, "\(reply.error)")
        let reader = try ShardReader(path: store.path(ShardKey(dataset: "mine", ingestId: "i1", order: 3, pixel: pixel)))
        let cols = try reader.read(columns: ["ra", "dec", "_healpix_29"])
        guard case .int64(let index) = cols[2] else { Issue.record("no index"); return }
        let expected = zip(cols[0].doubles, cols[1].doubles).map { HEALPix.spatialIndex(ra: $0, dec: $1) }
        #expect(index == expected && index == index.sorted() && index.count == 500)

        // A row outside the pixel, and a row off the sky, are refused by number.
        let (outside, f2) = request(ra: ra + [200], dec: dec + [-60], order: 3, pixel: pixel)
        #expect(store.store(outside, frames: f2, workerName: "w").error.contains("row 500 at (200.0, -60.0) is not inside shard order3-pix\(pixel)"))
        let (offSky, f3) = request(ra: ra + [45.1], dec: dec + [.nan], order: 3, pixel: pixel)
        #expect(store.store(offSky, frames: f3, workerName: "w").error.contains("row 500 has no position on the sky"))
    }
}
