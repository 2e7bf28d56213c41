import Foundation
import SwiftProtobuf
import TesseraADQL
import TesseraCompute
import TesseraProtocol
import TesseraScheduler
import TesseraSky
import TesseraStorage
import TesseraSurvey
import TesseraWorker

/// The fuzz targets: each takes arbitrary bytes and feeds them to one part of Tessera that reads
/// input from outside. A target must never trap, whatever the bytes; errors are fine.
public enum FuzzTarget: String, CaseIterable, Sendable {
    /// Multipart messages through `WireProtocol.decode` (header, frame count, LZ4 frames, budget).
    case envelope
    /// Decoded messages to every `SchedulerCore` handler, from clients and workers, against a
    /// live scheduler with workers and a registry.
    case scheduler
    /// Decoded messages to every `WorkerEngine` handler, against a live worker.
    case worker
    /// Expression text through the parser and the checker.
    case expression
    /// Catalog plans as JSON: checked, expanded by the scheduler, scanned by `catalog_scan` over a
    /// real shard, merged by `catalog_merge`, and rendered as a result table.
    case plan
    /// Shard files: footer and every chunk of every row group.
    case shard
    /// CSV text.
    case csv
    /// FITS files through cfitsio.
    case fits
    /// ADQL text (the gateway's TAP queries): parsed, translated against the fixture table,
    /// expanded by the scheduler, and run on TAP_SCHEMA-like local tables.
    case adql
    /// VOTable documents (a TAP UPLOAD's table): read within small limits, each column as stored.
    case votable
    /// Image questions as JSON (cutouts, pixel statistics, HiPS of the image dataset `coadd`;
    /// forced photometry and stacks of `object` on it), checked and expanded by the scheduler
    /// against tract patches of two bands and an image on its own grid.
    case images
}

/// Runs fuzz inputs; holds the live state some targets keep between inputs.
public final class FuzzHarness: @unchecked Sendable {
    public let target: FuzzTarget
    let scratch: String
    var scheduler: SchedulerCore
    var worker = WorkerEngine()
    var inputs = 0
    var now: UInt64 = 1_000_000_000
    let registry: Registry
    static let schema: [String: ExpressionType] = [
        "coord_ra": .number, "coord_dec": .number, "r_psfFlux": .number, "g_psfFlux": .number,
        "refExtendedness": .number, "detect_isPrimary": .boolean, "objectId": .number, "cell": .number,
    ]

    /// - Parameter scratch: a folder for the fixture shard, registry and temporary files.
    public init(_ target: FuzzTarget, scratch: String) throws {
        self.target = target
        self.scratch = scratch
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        try Self.writeFixtureShard(root: scratch)
        let registryPath = scratch + "/registry.sqlite"
        try? FileManager.default.removeItem(atPath: registryPath)
        registry = try Registry(path: registryPath)
        try Self.registerFixture(registry, root: scratch)
        try Self.registerImages(registry)
        scheduler = SchedulerCore(now: now)
        resetScheduler()
        worker.registered(as: 1)
        worker.dataRoot = scratch
    }

    // MARK: Fixture

    static let fixtureKey = ShardKey(dataset: "object", ingestId: "i1", order: 0, pixel: 4)
    static let fixtureRows = 3_000

    /// A real shard of the synthetic survey, as ingest writes it.
    public static func fixtureShard() throws -> (columns: [ColumnSpec], data: [ColumnData]) {
        let cat = SyntheticCatalog(seed: 3)
        var data = cat.rows(0, count: fixtureRows)
        var columns = SyntheticCatalog.schema
        let ra = data[1].doubles, dec = data[2].doubles
        columns.append(ColumnSpec("_healpix_29", .columnInt64))
        data.append(.int64(zip(ra, dec).map { HEALPix.spatialIndex(ra: $0, dec: $1) }))
        return (columns, data)
    }

    static func writeFixtureShard(root: String) throws {
        let (columns, data) = try fixtureShard()
        let path = root + "/" + fixtureKey.relativePath
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try ShardWriter.write(to: path, columns: columns, data: data, indexColumn: "_healpix_29", order: 0, pixel: 4, rowGroupRows: 1_000)
    }

    static func registerFixture(_ registry: Registry, root: String) throws {
        let reader = try ShardReader(path: root + "/" + fixtureKey.relativePath)
        var footer = Tessera_V1_ShardFooter()
        footer.columns = reader.footer.columns
        let d = DatasetRecord(name: "object", schema: try footer.serializedBytes(), raColumn: "coord_ra", decColumn: "coord_dec",
                              maxRowsPerShard: 10_000, marginArcsec: 10, rows: Int64(fixtureRows), ingestId: "i1")
        // The fixture's one shard, and more on other pixels so that plans expand to many scans.
        var shards = [ShardRecord(order: 0, pixel: 4, rows: Int64(fixtureRows), marginRows: 0, bytes: 1_000, checksum: 0)]
        for p in 0..<48 where p / 4 != 4 { shards.append(ShardRecord(order: 1, pixel: Int64(p), rows: 10, marginRows: 0, bytes: 100, checksum: 0)) }
        try registry.commitIngest(d, shards: shards, replicas: shards.map { _ in ["w1", "w2"] }, replace: true)
    }

    /// The image dataset's tiling: tracts of order 5, patches of order 8, 0.2″ pixels.
    static let imageTiling = SkyTiling(tractOrder: 5, patchOrder: 8, pixelScaleArcsec: 0.2, borderPixels: 100)

    /// `coadd`: the patch holding the fixture's first row and its three siblings, in bands g
    /// and r, and a 1000 × 1000 image of band g on its own grid a degree away.
    static func registerImages(_ registry: Registry) throws {
        let (_, data) = try fixtureShard()
        let ra = data[1].doubles[0], dec = data[2].doubles[0]
        let t = imageTiling
        var info = Tessera_V1_ImageDatasetInfo()
        info.bands = ["g", "r"]
        (info.tractOrder, info.patchOrder, info.pixelScaleArcsec, info.borderPixels) = (5, 8, 0.2, 100)
        var headers: [ImagePatchHeader] = []
        let first = t.patch(ra: ra, dec: dec) & ~3
        for p in first..<(first + 4) {
            let tract = t.tract(ofPatch: p), box = t.patchBox(p)
            for band in info.bands {
                headers.append(ImagePatchHeader(band: band, tract: tract, patch: p, tractOrder: 5, patchOrder: 8, x0: box.x0, y0: box.y0,
                                                width: box.width, height: box.height, wcs: t.tractWCS(tract).shifted(x0: box.x0, y0: box.y0)))
            }
        }
        headers.append(ImagePatchHeader(band: "g", tract: -1, patch: -1, tractOrder: -1, patchOrder: -1, x0: 0, y0: 0, width: 1000, height: 1000,
                                        wcs: .northUp(ra: ra + 1, dec: dec, x: 500, y: 500, scaleArcsec: 0.5)))
        let shards = headers.map { h -> ShardRecord in
            let place = ImageDataset.shardPlace(header: h, bandIndex: info.bands.firstIndex(of: h.band) ?? 0)
            return ShardRecord(order: place.order, pixel: place.pixel, rows: 0, marginRows: 0, bytes: Int64(h.width * h.height * 12), checksum: 0,
                               statistics: (try? ImageDataset.info(h).serializedData()) ?? Data())
        }
        let d = DatasetRecord(name: "coadd", kind: ImageDataset.kind, schema: try info.serializedData(), raColumn: "", decColumn: "",
                              maxRowsPerShard: 0, marginArcsec: 0, rows: 0, ingestId: "i2")
        try registry.commitIngest(d, shards: shards, replicas: shards.map { _ in ["w1", "w2"] }, replace: true)
    }

    func resetScheduler() {
        var config = SchedulerConfig()
        config.maxTasksPerJob = 100_000
        scheduler = SchedulerCore(config: config, now: now)
        scheduler.catalog = registry
        for (k, name) in ["w1", "w2", "w3"].enumerated() {
            var r = Tessera_V1_RegisterWorker()
            r.name = name
            r.threads = 2
            r.peerEndpoint = "tcp://127.0.0.1:\(7800 + k)"
            r.operators = ["catalog_scan", "catalog_merge", "inc", "sum", "sleep"]
            if name != "w3" { r.holdings = [Self.fixtureKey.description] }
            var e = Envelope()
            e.registerWorker = r
            scheduler.handleWorker(ConnectionID(k + 1), e, frames: [], now: now)
        }
        _ = scheduler.flush(now: now)
    }

    // MARK: Inputs

    /// Feeds one input to the target.
    public func run(_ bytes: [UInt8]) {
        inputs += 1
        switch target {
        case .envelope: envelope(bytes)
        case .scheduler: schedulerMessage(bytes)
        case .worker: workerMessage(bytes)
        case .expression: expression(bytes)
        case .plan: plan(bytes)
        case .shard: shard(bytes)
        case .csv: _ = try? CSVTable.parse(bytes)
        case .fits: fits(bytes)
        case .adql: adql(bytes)
        case .votable: votable(bytes)
        case .images: images(bytes)
        }
    }

    /// Cuts bytes into message parts: byte 0 says how many bulk frames follow (0–4), then each
    /// frame's length in two bytes, then the header and the frames.
    public static func parts(_ b: [UInt8]) -> [[UInt8]] {
        guard let first = b.first else { return [] }
        let k = Int(first % 5)
        var lengths: [Int] = []
        var i = 1
        for _ in 0..<k where i + 1 < b.count {
            lengths.append(Int(b[i]) | Int(b[i + 1]) << 8)
            i += 2
        }
        var rest = Array(b[min(i, b.count)...])
        let framesBytes = lengths.reduce(0, +)
        let headerCount = max(0, rest.count - framesBytes)
        var parts = [Array(rest.prefix(headerCount))]
        rest.removeFirst(headerCount)
        for n in lengths {
            let take = min(n, rest.count)
            parts.append(Array(rest.prefix(take)))
            rest.removeFirst(take)
        }
        return parts
    }

    /// The inverse of `parts`, for seeds.
    public static func joined(_ parts: [[UInt8]]) -> [UInt8] {
        let frames = parts.dropFirst().prefix(4)
        var out: [UInt8] = [UInt8(frames.count)]
        for f in frames { out += [UInt8(f.count & 0xFF), UInt8((f.count >> 8) & 0xFF)] }
        out += parts.first ?? []
        for f in frames { out += f.prefix(0xFFFF) }
        return out
    }

    func envelope(_ b: [UInt8]) {
        _ = try? WireProtocol.decode(Self.parts(b), budget: 1 << 22)
    }

    /// Byte 0: who sends (even: a client, odd: a worker) and on which connection; the rest is
    /// a multipart message as `parts` cuts it.
    func schedulerMessage(_ b: [UInt8]) {
        guard let first = b.first else { return }
        guard let (env, frames) = try? WireProtocol.decode(Self.parts(Array(b.dropFirst())), budget: 1 << 22) else { return }
        now &+= UInt64(first) * 10_000_000
        let connection = ConnectionID(first >> 1) % 5 + 1
        if first & 1 == 0 {
            let identity = ClientIdentity(user: first & 2 == 0 ? "alice" : "bob", isAdmin: first & 4 == 0, publicKey: "k")
            scheduler.handleClient(connection, env, frames: frames, now: now, identity: identity)
        } else {
            scheduler.handleWorker(connection, env, frames: frames, now: now)
        }
        _ = scheduler.flush(now: now)
        if first & 0xF0 == 0xF0 { scheduler.tick(now: now) }
        _ = scheduler.status(now: now)
        // A fresh scheduler now and then, so the state stays bounded over a million inputs.
        if inputs % 2_000 == 0 { resetScheduler() }
    }

    func workerMessage(_ b: [UInt8]) {
        guard let (env, frames) = try? WireProtocol.decode(Self.parts(b), budget: 1 << 22) else { return }
        now &+= 1_000_000
        switch env.body {
        case .fetchRequest(let r): _ = worker.serveFetch(r, epoch: env.epoch, from: [1])
        case .fetchReply(let r): _ = worker.fetched(r, frames: frames)
        case .storeShard(let s):
            // As the daemon does: admitted, then (its write done) finished.
            if worker.admitStore(s, frameBytes: frames.reduce(0) { $0 &+ UInt64($1.count) }) == nil { worker.stored(s) }
        // Everything else as the daemon hands it over: what the scheduler might send.
        default: _ = worker.handleScheduler(env, now: now, pool: nil)
        }
        _ = worker.tick(now: now &+ 60_000_000_000)
        _ = worker.heartbeat(rssBytes: 0, peakRSSBytes: 0)
        if inputs % 2_000 == 0 {
            worker = WorkerEngine()
            worker.registered(as: 1)
            worker.dataRoot = scratch
        }
    }

    func expression(_ b: [UInt8]) {
        let text = String(decoding: b, as: UTF8.self)
        _ = try? ExpressionChecker.check(text, schema: Self.schema)
    }

    static let adqlTables = [
        ADQLTable(schema: "tessera", name: "object", columns: [
            ADQLColumn(name: "objectId", type: .columnInt64), ADQLColumn(name: "coord_ra", type: .columnFloat64),
            ADQLColumn(name: "coord_dec", type: .columnFloat64), ADQLColumn(name: "r_psfFlux", type: .columnFloat32),
            ADQLColumn(name: "g_psfFlux", type: .columnFloat32), ADQLColumn(name: "refExtendedness", type: .columnFloat32),
            ADQLColumn(name: "detect_isPrimary", type: .columnBool), ADQLColumn(name: "cell", type: .columnInt64),
        ], raColumn: "coord_ra", decColumn: "coord_dec"),
    ]
    static let adqlLocal = LocalTable(schema: "TAP_SCHEMA", name: "tables", description: "",
                                      columns: [.init("table_name", "char", ""), .init("table_index", "int", "")],
                                      rows: [[.text("tessera.object"), .integer(0)], [.null, .integer(1)]])

    static let votableLimits: UploadLimits = {
        var l = UploadLimits()
        (l.rows, l.columns, l.bytes) = (10_000, 64, 1 << 20)
        return l
    }()

    func votable(_ b: [UInt8]) {
        guard let t = try? VOTableReader.read(b, limits: Self.votableLimits) else { return }
        for c in t.columns { _ = c.values.stored?.count }
    }

    func adql(_ b: [UInt8]) {
        guard let query = try? ADQLParser.parse(String(decoding: b, as: UTF8.self)) else { return }
        _ = try? Self.adqlLocal.run(query, maxrec: 10)
        var translator = ADQLTranslator(tables: Self.adqlTables)
        guard var p = try? translator.translate(query, maxrec: 100).plan else { return }
        p.dataset = "object"
        if p.hasCrossmatch { p.crossmatch.right = "object" }
        _ = try? scheduler.expandCatalogQuery(p)
    }

    func plan(_ b: [UInt8]) {
        guard var p = try? CatalogQueryPlan(jsonUTF8Bytes: b) else { return }
        p.dataset = "object"
        _ = try? scheduler.expandCatalogQuery(p)
        let params = CatalogOperators.params(plan: p, raColumn: "coord_ra", decColumn: "coord_dec")
        let ctx = OperatorContext(params: params, dataKey: Self.fixtureKey.description, dataRoot: scratch)
        guard let scanned = try? CatalogOperators.catalogScan.run(ctx) else { return }
        let merge = OperatorContext(params: params, inputs: [scanned, scanned])
        guard case .bytes(let merged)? = try? CatalogOperators.catalogMerge.run(merge),
              let partial = try? CatalogPartial(serializedBytes: merged) else { return }
        _ = CatalogResult(plan: p, partial: partial).table
    }

    /// A plan on the image dataset, or (with forced photometry or a stack) on the catalog with
    /// the image dataset's pixels, as a client would send it.
    func images(_ b: [UInt8]) {
        _ = imagePlan(b)
    }

    /// "N tasks" for the plan `images` makes of `b`, or why it refused (for a test that the
    /// fixture is reached: a harness whose plans all fail early fuzzes nothing).
    public func imagePlan(_ b: [UInt8]) -> String? {
        guard var p = try? CatalogQueryPlan(jsonUTF8Bytes: b) else { return nil }
        if p.hasForcedPhotometry || p.hasStack {
            p.dataset = "object"
            if p.hasForcedPhotometry { p.forcedPhotometry.images = "coadd" }
            if p.hasStack { p.stack.images = "coadd" }
        } else {
            p.dataset = "coadd"
        }
        do throws(ProtocolError) {
            return "\(try scheduler.expandCatalogQuery(p, user: "alice").taskCount) tasks"
        } catch {
            return "refused: \(error)"
        }
    }

    func temporaryFile(_ b: [UInt8], _ suffix: String) -> String {
        let path = scratch + "/input-\(getpid()).\(suffix)"
        _ = FileManager.default.createFile(atPath: path, contents: Data(b))
        return path
    }

    func shard(_ b: [UInt8]) {
        let path = temporaryFile(b, "shard")
        guard let reader = try? ShardReader(path: path) else { return }
        for g in reader.footer.rowGroups.indices {
            for c in reader.footer.columns.indices { _ = try? reader.read(column: c, rowGroup: g) }
        }
    }

    func fits(_ b: [UInt8]) {
        let path = temporaryFile(b, "fits")
        guard let table = try? FITSTableReader(path: path) else { return }
        for c in table.columns { _ = try? table.read(column: c.name) }
    }
}
