import Foundation
import SwiftProtobuf
import Synchronization
import TesseraProtocol
import TesseraSky
import TesseraStorage

/// Patch files kept open between tasks, each checked once against the registry's checksum (the
/// whole file's xxHash64), and again whenever the path names another file.
public final class ImagePatchPool: Sendable {
    struct Kept {
        var file: ImagePatchFile
        var verified: UInt64
        var lastUse: UInt64
    }

    private let state = Mutex<(files: [String: Kept], clock: UInt64)>(([:], 0))
    public let capacity: Int

    public init(capacity: Int = 64) { self.capacity = capacity }

    /// The worker's pool.
    public static let shared = ImagePatchPool()

    /// The file at `path`, checked against `checksum` (0: not checked).
    public func file(path: String, checksum: UInt64) throws(ImageFileError) -> ImagePatchFile {
        let now = FileIdentity.of(path)
        let kept: ImagePatchFile? = state.withLock { s in
            s.clock += 1
            guard var k = s.files[path], k.file.identity == now, checksum == 0 || k.verified == checksum else { return nil }
            k.lastUse = s.clock
            s.files[path] = k
            return k.file
        }
        if let kept { return kept }
        let f = try ImagePatchFile(path: path)
        if checksum != 0 {
            let found = f.checksum()
            guard found == checksum else { throw .checksumMismatch(path: path, expected: checksum, found: found) }
        }
        state.withLock { s in
            s.clock += 1
            s.files[path] = Kept(file: f, verified: checksum, lastUse: s.clock)
            while s.files.count > capacity, let oldest = s.files.min(by: { $0.value.lastUse < $1.value.lastUse }) {
                s.files[oldest.key] = nil
            }
        }
        return f
    }
}

/// Operators over coadd patches, run on the worker that holds each patch.
public enum ImageOperators {
    public static let all: [TaskOperator] = [imageCutout, imageMerge]

    /// Parameters of a cutout's tasks: blob `box`, an `ImageCutoutPiece` with the cutout's box
    /// and grid (no pixels).
    public static func cutoutParams(box: PixelBox, tract: Int64, gridWCS: TanWCS, tiling: (tractOrder: Int, patchOrder: Int)) -> Tessera_V1_OperatorParams {
        var piece = Tessera_V1_ImageCutoutPiece()
        piece.tract = tract
        piece.x0 = Int64(box.x0)
        piece.y0 = Int64(box.y0)
        piece.width = UInt32(box.width)
        piece.height = UInt32(box.height)
        piece.gridWcs = ImageDataset.wcs(gridWCS)
        piece.tractOrder = UInt32(max(0, tiling.tractOrder))
        piece.patchOrder = UInt32(max(0, tiling.patchOrder))
        var p = Tessera_V1_OperatorParams()
        p.blobs["box"] = (try? piece.serializedData()) ?? Data()
        return p
    }

    static func box(_ ctx: OperatorContext, _ name: String) throws(OperatorError) -> (box: PixelBox, piece: Tessera_V1_ImageCutoutPiece, wcs: TanWCS) {
        guard let b = ctx.params.blobs["box"], let piece = try? Tessera_V1_ImageCutoutPiece(serializedBytes: b), let wcs = ImageDataset.wcs(piece.gridWcs),
              piece.width > 0, piece.height > 0, piece.width <= UInt32(CutoutGeometry.maxSide), piece.height <= UInt32(CutoutGeometry.maxSide) else {
            throw OperatorError(name, "the task carries no readable cutout box", retryable: false)
        }
        return (PixelBox(x0: Int(piece.x0), y0: Int(piece.y0), width: Int(piece.width), height: Int(piece.height)), piece, wcs)
    }

    /// One patch's pixels inside the cutout's box (the rest no data): a `CatalogPartial` with one
    /// piece.
    public static let imageCutout = TaskOperator("image_cutout", "copy a patch's pixels inside a cutout's box") { ctx throws(OperatorError) in
        let name = "image_cutout"
        let (box, piece, wcs) = try box(ctx, name)
        guard let key = ctx.dataKey, let shard = ShardKey(key), let root = ctx.dataRoot else {
            throw OperatorError(name, "the task names no patch this worker can open (data key \(ctx.dataKey ?? "none"))")
        }
        let file: ImagePatchFile
        do {
            file = try ImagePatchPool.shared.file(path: root + "/" + shard.relativePath, checksum: ctx.dataChecksum ?? 0)
        } catch {
            // A damaged or missing file: another replica may serve.
            throw OperatorError(name, "\(error)")
        }
        var cut = ImageCutout(band: file.header.band, box: box, gridWCS: wcs, tract: piece.tract)
        cut.paste(file)
        var partial = CatalogPartial()
        partial.shards = 1
        partial.cutouts = [ImageDataset.piece(cut, tiling: (Int(piece.tractOrder), Int(piece.patchOrder)))]
        return .bytes(try CatalogOperators.serialized(partial, name))
    }

    /// Pieces of one cutout merged: per band, every covered pixel pasted into the cutout's box.
    public static let imageMerge = TaskOperator("image_merge", "merge pieces of a cutout") { ctx throws(OperatorError) in
        let name = "image_merge"
        var byBand: [String: ImageCutout] = [:]
        var order: [String] = []
        var shards: UInt64 = 0
        var tiling = (tractOrder: 0, patchOrder: 0)
        for (k, v) in ctx.inputs.enumerated() {
            let p = try CatalogOperators.partial(v, input: k, name)
            shards += p.shards
            for piece in p.cutouts {
                guard let c = ImageDataset.cutout(piece) else { throw OperatorError(name, "input \(k) holds a cutout piece whose sizes disagree") }
                tiling = (Int(piece.tractOrder), Int(piece.patchOrder))
                if var merged = byBand[c.band], merged.tract == c.tract, merged.box == c.box {
                    merged.paste(c)
                    byBand[c.band] = merged
                } else if byBand[c.band] == nil {
                    byBand[c.band] = c
                    order.append(c.band)
                }
            }
        }
        var out = CatalogPartial()
        out.shards = shards
        out.cutouts = order.compactMap { byBand[$0].map { ImageDataset.piece($0, tiling: tiling) } }
        return .bytes(try CatalogOperators.serialized(out, name))
    }
}
