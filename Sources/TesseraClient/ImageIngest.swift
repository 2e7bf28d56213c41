import Foundation
import TesseraCompute
import TesseraProtocol
import TesseraSky
import TesseraStorage

/// What images to ingest and how.
public struct ImageIngestOptions: Sendable {
    public var dataset: String
    public var files: [String]
    public var replicas = 2
    public var replace = false
    /// A catalog to place the images beside (each patch on the workers holding the catalog
    /// shard that covers it); empty: least-loaded workers.
    public var colocateWith = ""
    /// The band of images whose headers name none (`BAND` or `FILTER`).
    public var band: String?
    public var storeTimeout = 300.0

    public init(dataset: String, files: [String]) {
        self.dataset = dataset
        self.files = files
    }
}

/// Loads coadd images through the cluster, atomically like a catalog: Tessera's own patches
/// (`tessera generate coadd`) are stored as they are; any other FITS image with a TAN WCS (as
/// astropy writes them) is stored on its own grid, registered by its footprint. A file with no WCS
/// or another projection is refused, naming the file, before anything is sent.
public enum ImageIngest {
    struct Prepared {
        var path: String
        var header: ImagePatchHeader
        /// The file's bytes when they had to be converted (nil: the file itself is sent).
        var converted: [UInt8]?
        var bytes: Int
        /// The border a generated patch's primary header states (0 when it states none).
        var border = 0
    }

    /// Reads one file: a patch as it is, or any other image converted to the patch layout.
    static func prepare(_ path: String, band: String?) throws(IngestError) -> Prepared {
        if let f = try? ImagePatchFile(path: path), f.header.tract >= 0 {
            return Prepared(path: path, header: f.header, converted: nil, bytes: f.byteCount,
                            border: f.primaryCards["BORDER"].flatMap { Int($0) } ?? 0)
        }
        let img: FITSImage
        do { img = try FITSImage(path: path) } catch { throw IngestError.input("\(error)") }
        let wcs: TanWCS
        do { wcs = try TanWCS(cards: img.cards) } catch { throw IngestError.input("\(path) cannot be ingested as an image: \(error)") }
        guard let b = img.cards["BAND"].flatMap({ $0.isEmpty ? nil : $0 }) ?? img.cards["FILTER"].flatMap({ $0.isEmpty ? nil : $0 }) ?? band else {
            throw IngestError.input("\(path) names no band (no BAND or FILTER keyword): give one with --band")
        }
        let n = img.width * img.height
        let header = ImagePatchHeader(band: b, tract: -1, patch: -1, tractOrder: -1, patchOrder: -1, x0: 0, y0: 0,
                                      width: img.width, height: img.height, wcs: wcs)
        let bytes: [UInt8]
        do {
            bytes = try ImagePatchWriter.encode(header: header, image: img.image, variance: img.variance ?? [Float](repeating: .nan, count: n),
                                                mask: img.mask ?? [Int32](repeating: 0, count: n),
                                                extraKeywords: [FITSKeyword("SOURCE", .text(String((path as NSString).lastPathComponent.prefix(60))), "ingested from")])
        } catch {
            throw IngestError.input("\(path): \(error)")
        }
        return Prepared(path: path, header: header, converted: bytes, bytes: bytes.count)
    }

    /// - Parameter progress: short lines for a terminal.
    public static func run(_ o: ImageIngestOptions, connection conn: SchedulerConnection, progress: (String) -> Void = { _ in }) throws -> Tessera_V1_IngestCommitted {
        guard !o.files.isEmpty else { throw IngestError.input("no input files given") }
        var prepared: [Prepared] = []
        for path in o.files {
            if conn.isInterrupted() { throw IngestError.interrupted }
            var p = try prepare(path, band: o.band)
            // Converted images are kept in memory only while there are few; else re-read when sent.
            if prepared.reduce(0, { $0 + ($1.converted?.count ?? 0) }) > 1 << 30 { p.converted = nil }
            prepared.append(p)
        }
        // Bands in order of first appearance; every tract patch on one tiling.
        var bands: [String] = []
        for p in prepared where !bands.contains(p.header.band) { bands.append(p.header.band) }
        guard bands.count <= ImageDataset.maxBands else {
            throw IngestError.input("the files hold \(bands.count) bands; an image dataset holds at most \(ImageDataset.maxBands)")
        }
        var info = Tessera_V1_ImageDatasetInfo()
        info.bands = bands
        let tiled = prepared.filter { $0.header.tract >= 0 }
        if let first = tiled.first {
            info.tractOrder = UInt32(first.header.tractOrder)
            info.patchOrder = UInt32(first.header.patchOrder)
            info.pixelScaleArcsec = first.header.wcs.pixelScaleArcsec
            // The border the generator wrote down: forced photometry and stacks read no farther.
            info.borderPixels = UInt32(clamping: max(0, min(8192, tiled.map(\.border).min() ?? 0)))
            for p in tiled where p.header.tractOrder != first.header.tractOrder || p.header.patchOrder != first.header.patchOrder
                || abs(p.header.wcs.pixelScaleArcsec - info.pixelScaleArcsec) > 1e-9 * info.pixelScaleArcsec {
                throw IngestError.input("\(p.path) is on another tiling than \(first.path) (tract order, patch order or pixel scale differ)")
            }
        } else {
            let t = SkyTiling(pixelScaleArcsec: min(60, max(0.01, prepared[0].header.wcs.pixelScaleArcsec)))
            (info.tractOrder, info.patchOrder, info.pixelScaleArcsec, info.borderPixels) = (UInt32(t.tractOrder), UInt32(t.patchOrder), t.pixelScaleArcsec, UInt32(t.borderPixels))
        }
        if let why = ImageDataset.infoProblem(info) { throw IngestError.input(why) }
        let places = prepared.map { ImageDataset.shardPlace(header: $0.header, bandIndex: bands.firstIndex(of: $0.header.band)!) }
        var seen: [ShardPlace: String] = [:]
        for (p, place) in zip(prepared, places) {
            if let other = seen.updateValue(p.path, forKey: ShardPlace(order: UInt32(place.order), pixel: place.pixel)) {
                throw IngestError.input("\(p.path) and \(other) are the same patch and band (or images centred within 3″ of each other in one band)")
            }
        }
        progress("\(prepared.count) image(s) in band(s) \(bands.joined(separator: ", ")): \(tiled.count) tract patches, \(prepared.count - tiled.count) on their own grids")

        var begin = Tessera_V1_IngestBegin()
        begin.clientTag = conn.makeTag()
        begin.dataset = o.dataset
        begin.replace = o.replace
        begin.replicas = UInt32(o.replicas)
        begin.kind = ImageDataset.kind
        begin.colocateWith = o.colocateWith
        begin.shards = zip(prepared, places).map { p, place in
            var s = Tessera_V1_ShardSpec()
            s.order = UInt32(place.order)
            s.pixel = place.pixel
            s.bytes = UInt64(p.bytes)
            return s
        }
        let plan = try CatalogIngest.begin(begin, connection: conn)
        let storedName = plan.dataset.isEmpty ? o.dataset : plan.dataset
        let request = { (k: Int) -> Tessera_V1_StoreShard in
            var r = Tessera_V1_StoreShard()
            r.ingestID = plan.ingestID
            r.dataset = storedName
            r.order = UInt32(places[k].order)
            r.pixel = places[k].pixel
            r.image = true
            return r
        }
        let stored = try CatalogIngest.sending(plan, dataset: storedName, connection: conn) {
            try CatalogIngest.store(plan: plan, count: prepared.count, storeTimeout: o.storeTimeout, connection: conn,
                                    progress: progress, request: request) { (k) throws(IngestError) in
                if let b = prepared[k].converted { return [b] }
                if prepared[k].header.tract < 0 {
                    return [try prepare(prepared[k].path, band: o.band).converted ?? []]
                }
                guard let d = FileManager.default.contents(atPath: prepared[k].path) else {
                    throw IngestError.input("\(prepared[k].path) could not be read again")
                }
                return [[UInt8](d)]
            }
        }
        var commit = Tessera_V1_IngestCommit()
        commit.clientTag = conn.makeTag()
        commit.ingestID = plan.ingestID
        commit.dataset = storedName
        commit.replace = o.replace
        commit.kind = ImageDataset.kind
        commit.image = info
        return try CatalogIngest.commit(commit, places: places, stored: stored, connection: conn)
    }
}
