import Foundation
import SwiftProtobuf
import TesseraCompute
import TesseraProtocol
import TesseraSky
import TesseraStorage

/// The catalog shards on this worker's disk: `ROOT/catalogs/DATASET/INGEST/orderK-pixP.shard`.
public struct ShardStore: Sendable {
    public let root: String

    public init(root: String) throws {
        self.root = root
        try FileManager.default.createDirectory(atPath: root + "/catalogs", withIntermediateDirectories: true)
    }

    public func path(_ key: ShardKey) -> String { root + "/" + key.relativePath }

    /// Every complete shard file here (temporary files of interrupted writes are not shards).
    public func manifest() -> [ShardKey] {
        let base = root + "/catalogs"
        guard let e = FileManager.default.enumerator(atPath: base) else { return [] }
        var keys: [ShardKey] = []
        while let rel = e.nextObject() as? String {
            if rel.hasSuffix(".shard"), let k = ShardKey(rel) { keys.append(k) }
        }
        return keys.sorted { $0.description < $1.description }
    }

    /// Deletes the files of shards no dataset references (the scheduler decides which), and
    /// folders left empty. Keys that do not parse as shard keys are ignored.
    /// - Returns: how many files were removed.
    @discardableResult
    public func remove(_ keys: [String]) -> Int {
        var removed = 0
        for text in keys {
            guard let key = ShardKey(text) else { continue }
            let p = path(key)
            if unlink(p) == 0 { removed += 1 }
            let ingest = (p as NSString).deletingLastPathComponent
            // rmdir fails, harmlessly, on a folder that still holds something.
            if rmdir(ingest) == 0 { rmdir((ingest as NSString).deletingLastPathComponent) }
        }
        return removed
    }

    /// Replaces the rows' index column with the order-29 index of their positions, and checks
    /// that each lies in the shard's pixel (for its own rows; margin rows lie outside it).
    static func indexFromPositions(_ r: Tessera_V1_StoreShard, _ cols: inout [ColumnData], inside pixel: (order: Int, pixel: Int64)?) throws(ShardError) {
        let names = r.columns.map(\.name)
        guard let a = names.firstIndex(of: r.raColumn), let d = names.firstIndex(of: r.decColumn), let ic = names.firstIndex(of: r.indexColumn),
              r.columns[a].type != .columnBool, r.columns[d].type != .columnBool else {
            throw .invalidInput("the position columns `\(r.raColumn)`, `\(r.decColumn)` or the index column `\(r.indexColumn)` are not numeric columns of this shard")
        }
        let ra = cols[a].doubles, dec = cols[d].doubles
        var index = [Int64](repeating: 0, count: ra.count)
        let shift = Int64(2 * (HEALPix.maxOrder - (pixel?.order ?? 0)))
        for i in ra.indices {
            guard ra[i].isFinite, dec[i] >= -90, dec[i] <= 90 else {
                throw .invalidInput("row \(i) has no position on the sky (\(r.raColumn) \(ra[i]), \(r.decColumn) \(dec[i]))")
            }
            index[i] = HEALPix.spatialIndex(ra: ra[i], dec: dec[i])
            if let pixel, index[i] >> shift != pixel.pixel {
                throw .invalidInput("row \(i) at (\(ra[i]), \(dec[i])) is not inside shard order\(pixel.order)-pix\(pixel.pixel)")
            }
        }
        cols[ic] = .int64(index)
    }

    /// Writes one shard from a client's `StoreShard` message; the file is complete and on disk
    /// before the reply says so.
    public func store(_ r: Tessera_V1_StoreShard, frames: [[UInt8]], workerName: String) -> Tessera_V1_ShardStored {
        var reply = Tessera_V1_ShardStored()
        reply.requestID = r.requestID
        reply.workerName = workerName
        reply.ingestID = r.ingestID
        reply.dataset = r.dataset
        reply.order = r.order
        reply.pixel = r.pixel
        if r.image { return storeImage(r, frames: frames, reply: reply) }
        do {
            let n = r.columns.count
            let key = ShardKey(dataset: r.dataset, ingestId: r.ingestID, order: Int(r.order), pixel: r.pixel)
            if let why = key.problem { throw ShardError.invalidInput(why) }
            guard r.rows <= Limits.shardRows, r.marginRows <= Limits.shardRows else {
                throw ShardError.invalidInput("a shard of \(r.rows) rows and \(r.marginRows) margin rows is over the limit of \(Limits.shardRows)")
            }
            guard n > 0, n <= Limits.planExpressions else {
                throw ShardError.invalidInput("a shard needs 1…\(Limits.planExpressions) columns, this one has \(n)")
            }
            let withMargin = r.marginRows > 0
            guard frames.count == (withMargin ? 2 * n : n) else {
                throw ShardError.invalidInput("expected \(withMargin ? 2 * n : n) column frames, got \(frames.count)")
            }
            func columns(_ offset: Int, _ rows: Int) throws -> [ColumnData] {
                try (0..<n).map { c in
                    try frames[offset + c].withUnsafeBytes { try ColumnData(type: r.columns[c].type, rows: rows, storedBytes: $0) }
                }
            }
            var own = try columns(0, Int(r.rows))
            var margin = withMargin ? try columns(n, Int(r.marginRows)) : nil
            // The index is the worker's own, from the positions: a client may not name it.
            guard !r.raColumn.isEmpty, !r.decColumn.isEmpty else {
                throw ShardError.invalidInput("a shard must name its position columns (ra_column, dec_column): the worker computes each row's spatial index from them")
            }
            try Self.indexFromPositions(r, &own, inside: (Int(r.order), r.pixel))
            if margin != nil { try Self.indexFromPositions(r, &margin!, inside: nil) }
            let p = path(key)
            try FileManager.default.createDirectory(atPath: (p as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            let specs = r.columns.map { ColumnSpec($0.name, $0.type, unit: $0.unit, description: $0.description_p) }
            let s = try ShardWriter.write(to: p, columns: specs, data: own, indexColumn: r.indexColumn,
                                          order: Int(r.order), pixel: r.pixel, margin: margin)
            reply.rows = UInt64(s.rows)
            reply.marginRows = UInt64(s.marginRows)
            reply.bytes = UInt64(s.bytes)
            reply.checksum = s.checksum
            reply.footer = Data(s.footer)
        } catch {
            reply.error = "\(error)"
        }
        return reply
    }

    /// Stores one image patch: the client's FITS file, written durably under a temporary name,
    /// read through (headers, WCS, planes, and that it is the patch the key names), then renamed
    /// into place. The reply carries the file's xxHash64 and the patch's place for the registry.
    func storeImage(_ r: Tessera_V1_StoreShard, frames: [[UInt8]], reply: Tessera_V1_ShardStored) -> Tessera_V1_ShardStored {
        var reply = reply
        let key = ShardKey(dataset: r.dataset, ingestId: r.ingestID, order: Int(r.order), pixel: r.pixel)
        let p = path(key)
        let incoming = p + ".incoming"
        do {
            if let why = key.problem { throw ShardError.invalidInput(why) }
            guard frames.count == 1 else { throw ShardError.invalidInput("an image patch is one frame (its FITS file); got \(frames.count)") }
            try FileManager.default.createDirectory(atPath: (p as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try DurableFile.write(frames[0], to: incoming)
            let file = try ImagePatchFile(path: incoming)
            if let why = ImageDataset.placeProblem(header: file.header, order: Int(r.order), pixel: r.pixel) {
                throw ShardError.invalidInput(why)
            }
            let checksum = file.checksum()
            guard rename(incoming, p) == 0 else { throw ShardError.io(path: p, operation: "rename into place", errno: errno) }
            let dfd = open((p as NSString).deletingLastPathComponent, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if dfd >= 0 { fsync(dfd); close(dfd) }
            reply.bytes = UInt64(file.byteCount)
            reply.checksum = checksum
            reply.footer = try ImageDataset.info(file.header).serializedData()
        } catch {
            unlink(incoming)
            reply.error = "\(error)"
        }
        return reply
    }
}
