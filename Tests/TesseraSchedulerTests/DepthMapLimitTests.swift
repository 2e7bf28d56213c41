import Foundation
import SwiftProtobuf
import Testing
import TesseraCompute
import TesseraProtocol
import TesseraScheduler
import TesseraSky
import TesseraStorage
import TesseraTestKit

/// A depth map's size is bounded before it is planned: its pixels grow four times an order and
/// with the area asked for.
struct DepthMapLimitTests {
    /// An image dataset of one image on its own grid, `side` × `side` pixels of `scale`″, in
    /// band r, registered in a fresh registry beside a scheduler reading it.
    static func scheduler(side: Int, scaleArcsec: Double) throws -> (SchedulerCore, Registry, String) {
        let folder = temporaryFolder("depth-map-\(side)")
        let registry = try Registry(path: folder + "/registry.sqlite")
        var info = Tessera_V1_ImageDatasetInfo()
        info.bands = ["r"]
        (info.tractOrder, info.patchOrder, info.pixelScaleArcsec, info.borderPixels) = (5, 8, scaleArcsec, 0)
        let h = ImagePatchHeader(band: "r", tract: -1, patch: -1, tractOrder: -1, patchOrder: -1, x0: 0, y0: 0, width: side, height: side,
                                 wcs: .northUp(ra: 150, dec: 2, x: Double(side) / 2, y: Double(side) / 2, scaleArcsec: scaleArcsec))
        let place = ImageDataset.shardPlace(header: h, bandIndex: 0)
        let shard = ShardRecord(order: place.order, pixel: place.pixel, rows: 0, marginRows: 0, bytes: Int64(side * side * 12), checksum: 0,
                                statistics: try ImageDataset.info(h).serializedData())
        let d = DatasetRecord(name: "wide", kind: ImageDataset.kind, schema: try info.serializedData(), raColumn: "", decColumn: "",
                              maxRowsPerShard: 0, marginArcsec: 0, rows: 0, ingestId: "i1")
        _ = try registry.commitIngest(d, shards: [shard], replicas: [["w1"]], replace: true)
        var core = SchedulerCore(config: SchedulerConfig(), now: 0)
        core.catalog = registry
        return (core, registry, folder)
    }

    static func depthMap(order: UInt32) -> CatalogQueryPlan {
        var p = CatalogQueryPlan()
        p.dataset = "wide"
        p.imageStatistics.bands = ["r"]
        p.imageStatistics.mapOrder = order
        return p
    }

    /// 3,000² pixels of 4″ (a 3.3° field): at order 16 (3.2″ map pixels) the map would hold
    /// about as many pixels as the image, 9 million, over the limit of 4 Mi: refused with the
    /// estimate and what to do. At order 12 (51″) it holds about 55,000 and is planned.
    @Test func aDepthMapOverTheLimitIsRefusedInWords() throws {
        var (core, _, folder) = try Self.scheduler(side: 3000, scaleArcsec: 4)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        do {
            _ = try core.expandCatalogQuery(Self.depthMap(order: 16), user: "alice")
            Issue.record("a depth map of 9 million pixels was planned")
        } catch {
            let words = "\(error)"
            #expect(words.contains("a depth map of order 16 over 1 patches would hold about 9000000 pixels")
                    && words.contains("over the limit of \(ImageStatistics.maxMapPixels)") && words.contains("ask for a lower order"), "\(words)")
        }
        let planned = try core.expandCatalogQuery(Self.depthMap(order: 12), user: "alice")
        #expect(planned.taskCount >= 1)
        #expect(throws: ProtocolError.self) { try core.expandCatalogQuery(Self.depthMap(order: 17), user: "alice") }
    }
}
