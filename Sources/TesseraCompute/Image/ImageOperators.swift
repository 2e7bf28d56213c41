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
    public static let all: [TaskOperator] = [imageCutout, imageMerge, forcedPhot, forcedPhotRows, forcedPhotMeasure, imageStack, imageStackMeasure, imageStats]

    /// One patch's pixel statistics (`plan.image_statistics`), as a partial `catalog_merge` merges.
    public static let imageStats = TaskOperator("image_stats", "count a patch's own pixels: quantiles, masked fraction, depth map") { ctx throws(OperatorError) in
        let name = "image_stats"
        let plan = try CatalogOperators.taskPlan(ctx, name)
        let file = try openPatch(ctx, name)
        let order = plan.imageStatistics.mapOrder == 0 ? ImageStatistics.defaultMapOrder : Int(plan.imageStatistics.mapOrder)
        guard (0...16).contains(order) else { throw OperatorError(name, "a depth map of order \(order) (at most 16)", retryable: false) }
        var out = CatalogPartial()
        out.shards = 1
        out.imageStatistics = [ImageStatistics.measure(file, mapOrder: order)]
        file.releasePages()
        return .bytes(try CatalogOperators.serialized(out, name))
    }

    /// Parameters of a forced-photometry shard's tasks: the catalog question's, and blob
    /// `patches` (the patches it may read).
    public static func forcedPhotometryParams(plan: CatalogQueryPlan, raColumn: String, decColumn: String,
                                              patches: Tessera_V1_ForcedPhotometryPatches) -> Tessera_V1_OperatorParams {
        var p = CatalogOperators.params(plan: plan, raColumn: raColumn, decColumn: decColumn)
        p.blobs["patches"] = (try? patches.serializedData()) ?? Data()
        return p
    }

    /// The task's shard, question and patches, checked.
    static func forcedPhotometryTask(_ ctx: OperatorContext, _ name: String, measured: [ForcedPhotometryTask.RowPatch: (Double, Double, Double, Int64)] = [:]) throws(OperatorError) -> ForcedPhotometryTask {
        let plan = try CatalogOperators.taskPlan(ctx, name)
        guard let blob = ctx.params.blobs["patches"], let refs = try? Tessera_V1_ForcedPhotometryPatches(serializedBytes: blob),
              refs.keys.count == refs.patches.count else {
            throw OperatorError(name, "the task carries no readable list of patches", retryable: false)
        }
        let (reader, ra, dec) = try CatalogOperators.openShard(ctx, name)
        guard let root = ctx.dataRoot else { throw OperatorError(name, "this worker has no data folder") }
        do throws(CatalogQueryError) {
            if plan.hasStack {
                // A stack reads the rows' positions only; its filter reads stored columns.
                try ImageStack.check(plan.stack, images: refs.images)
                let q = try CheckedCatalogQuery(plan, columns: reader.footer.columns, raColumn: ra, decColumn: dec)
                return ForcedPhotometryTask(q: q, reader: reader, raColumn: ra, decColumn: dec, bands: [plan.stack.band],
                                            photometry: ForcedPhotometry(apertureRadius: 1), patches: ForcedPhotometryPatchIndex(refs), root: root, measured: measured)
            }
            let (bands, fp) = try ForcedPhotometryQuestion.check(plan.forcedPhotometry, images: refs.images)
            let q = try CheckedCatalogQuery(plan, columns: ForcedPhotometryQuestion.schema(catalog: reader.footer.columns, bands: bands), raColumn: ra, decColumn: dec)
            return ForcedPhotometryTask(q: q, reader: reader, raColumn: ra, decColumn: dec, bands: bands, photometry: fp,
                                        patches: ForcedPhotometryPatchIndex(refs), root: root, measured: measured)
        } catch {
            throw OperatorError(name, error.message, retryable: error.retryable)
        }
    }

    /// The task's patch, opened and checked against the registry's checksum (a damaged or
    /// missing file fails the task retryably: another replica may serve).
    static func openPatch(_ ctx: OperatorContext, _ name: String) throws(OperatorError) -> ImagePatchFile {
        guard let key = ctx.dataKey, let shard = ShardKey(key), let root = ctx.dataRoot else {
            throw OperatorError(name, "the task names no patch this worker can open (data key \(ctx.dataKey ?? "none"))")
        }
        do { return try ImagePatchPool.shared.file(path: root + "/" + shard.relativePath, checksum: ctx.dataChecksum ?? 0) } catch {
            throw OperatorError(name, "\(error)")
        }
    }

    /// What a task measuring another worker's rows on a patch here reads: the question, the
    /// shard's patch list, the patch (its index in that list is the task's argument), the rows
    /// listed (input 0), and which of them lie on this patch.
    static func measureTask(_ ctx: OperatorContext, _ name: String) throws(OperatorError)
        -> (plan: CatalogQueryPlan, refs: Tessera_V1_ForcedPhotometryPatches, file: ImagePatchFile, asked: Tessera_V1_ForcedPhotometryRows, picked: [Int]) {
        let plan = try CatalogOperators.taskPlan(ctx, name)
        guard let blob = ctx.params.blobs["patches"], let refs = try? Tessera_V1_ForcedPhotometryPatches(serializedBytes: blob),
              ctx.inputs.count == 1, let ref = Int(exactly: ctx.arg), ref >= 0, ref < refs.keys.count else {
            throw OperatorError(name, "the task carries no readable patch or rows", retryable: false)
        }
        let file = try openPatch(ctx, name)
        let asked = try rows(ctx.inputs[0], input: 0, name)
        let n = min(asked.rows.count, asked.patch.count, asked.ra.count, asked.dec.count)
        return (plan, refs, file, asked, (0..<n).filter { Int(asked.patch[$0]) == ref })
    }

    static func rows(_ v: Value, input k: Int, _ name: String) throws(OperatorError) -> Tessera_V1_ForcedPhotometryRows {
        guard case .bytes(let b) = v, let r = try? Tessera_V1_ForcedPhotometryRows(serializedBytes: b) else {
            throw OperatorError(name, "input \(k) is not a list of rows to measure")
        }
        return r
    }

    /// A catalog question over one shard with forced photometry columns: rows on this worker's
    /// patches measured here, the others' taken from the inputs (`forced_phot_measure`).
    public static let forcedPhot = TaskOperator("forced_phot", "answer a catalog question with forced photometry over one shard") { ctx throws(OperatorError) in
        let name = "forced_phot"
        var measured: [ForcedPhotometryTask.RowPatch: (Double, Double, Double, Int64)] = [:]
        for (k, v) in ctx.inputs.enumerated() {
            let r = try rows(v, input: k, name)
            guard r.flux.count == r.rows.count, r.fluxErr.count == r.rows.count, r.background.count == r.rows.count,
                  r.flag.count == r.rows.count, r.patch.count == r.rows.count else {
                throw OperatorError(name, "input \(k) holds measurements of unequal lengths")
            }
            for i in r.rows.indices {
                measured[.init(row: r.rows[i], ref: Int(r.patch[i]))] = (r.flux[i], r.fluxErr[i], r.background[i], r.flag[i])
            }
        }
        let task = try forcedPhotometryTask(ctx, name, measured: measured)
        do throws(CatalogQueryError) {
            var acc = try task.run(isCancelled: ctx.isCancelled)
            return .bytes(try acc.serializedPartial())
        } catch {
            throw OperatorError(name, error.message, retryable: error.retryable)
        }
    }

    /// The rows of one shard that other workers' patches must measure.
    public static let forcedPhotRows = TaskOperator("forced_phot_rows", "list a shard's rows to measure on other workers' patches") { ctx throws(OperatorError) in
        let name = "forced_phot_rows"
        let task = try forcedPhotometryTask(ctx, name)
        let listed: Tessera_V1_ForcedPhotometryRows
        do throws(CatalogQueryError) { listed = try task.remoteRows(isCancelled: ctx.isCancelled) } catch {
            throw OperatorError(name, error.message, retryable: error.retryable)
        }
        do { return .bytes(try listed.serializedBytes()) } catch { throw OperatorError(name, "\(error)") }
    }

    /// Measures, on this worker's patch (argument: its index in the task's patch list), the rows
    /// input 0 lists for it.
    public static let forcedPhotMeasure = TaskOperator("forced_phot_measure", "measure rows of another worker's shard on a patch here") { ctx throws(OperatorError) in
        let name = "forced_phot_measure"
        let (plan, refs, file, asked, picked) = try measureTask(ctx, name)
        let fp: ForcedPhotometry
        do throws(CatalogQueryError) { fp = try ForcedPhotometryQuestion.check(plan.forcedPhotometry, images: refs.images).photometry } catch {
            throw OperatorError(name, error.message, retryable: false)
        }
        var out = Tessera_V1_ForcedPhotometryRows()
        var scratch = SigmaClippedMedian.Scratch()
        for i in picked {
            let m = ForcedPhotometryQuestion.measure(file, ra: asked.ra[i], dec: asked.dec[i], with: fp, scratch: &scratch)
            out.rows.append(asked.rows[i])
            out.patch.append(asked.patch[i])
            out.ra.append(asked.ra[i])
            out.dec.append(asked.dec[i])
            out.flux.append(m.flux)
            out.fluxErr.append(m.error)
            out.background.append(m.background)
            out.flag.append(m.flags)
        }
        do { return .bytes(try out.serializedBytes()) } catch { throw OperatorError(name, "\(error)") }
    }

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
              piece.width > 0, piece.height > 0, piece.width <= UInt32(CutoutGeometry.maxSide), piece.height <= UInt32(CutoutGeometry.maxSide),
              // Grid coordinates as a patch's (its edges are computed by adding the sides).
              piece.x0.magnitude < 1 << 40, piece.y0.magnitude < 1 << 40 else {
            throw OperatorError(name, "the task carries no readable cutout box", retryable: false)
        }
        return (PixelBox(x0: Int(piece.x0), y0: Int(piece.y0), width: Int(piece.width), height: Int(piece.height)), piece, wcs)
    }

    /// One patch's pixels inside the cutout's box (the rest no data): a `CatalogPartial` with one
    /// piece.
    public static let imageCutout = TaskOperator("image_cutout", "copy a patch's pixels inside a cutout's box") { ctx throws(OperatorError) in
        let name = "image_cutout"
        let (box, piece, wcs) = try box(ctx, name)
        let file = try openPatch(ctx, name)
        var partial = CatalogPartial()
        partial.shards = 1
        let h = file.header
        if h.box.contains(box) {
            // The whole cutout is in this patch (the usual case): each plane copied once, from
            // the file's memory map into the answer's buffer.
            var out = piece
            out.band = h.band
            let own = PixelBox(x0: box.x0 - h.x0, y0: box.y0 - h.y0, width: box.width, height: box.height)
            func plane(_ p: ImagePlane) -> Data {
                var d = Data(count: 4 * box.pixelCount)
                d.withUnsafeMutableBytes { file.copy(p, box: own, into: $0) }
                return d
            }
            (out.image, out.variance, out.mask) = (plane(.image), plane(.variance), plane(.mask))
            partial.cutouts = [out]
        } else {
            var cut = ImageCutout(band: h.band, box: box, gridWCS: wcs, tract: piece.tract)
            cut.paste(file)
            partial.cutouts = [ImageDataset.piece(cut, tiling: (Int(piece.tractOrder), Int(piece.patchOrder)))]
        }
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
            shards &+= p.shards
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

    /// The stack of one shard's rows (`plan.stack`): those on this worker's patches, plus the
    /// inputs' stacks of the rows on other workers' patches.
    public static let imageStack = TaskOperator("image_stack", "stack cutouts around one shard's rows") { ctx throws(OperatorError) in
        let name = "image_stack"
        let plan = try CatalogOperators.taskPlan(ctx, name)
        var others: [StackPartial] = []
        for (k, v) in ctx.inputs.enumerated() { others.append(try CatalogOperators.partial(v, input: k, name).stack) }
        let task = try forcedPhotometryTask(ctx, name)
        let partial: CatalogPartial
        do throws(CatalogQueryError) { partial = try task.stack(plan.stack, others: others, isCancelled: ctx.isCancelled) } catch {
            throw OperatorError(name, error.message, retryable: error.retryable)
        }
        return .bytes(try CatalogOperators.serialized(partial, name))
    }

    /// Stacks, on this worker's patch (argument: its index in the task's patch list), the rows
    /// input 0 lists for it.
    public static let imageStackMeasure = TaskOperator("image_stack_measure", "stack rows of another worker's shard on a patch here") { ctx throws(OperatorError) in
        let name = "image_stack_measure"
        let (plan, refs, file, asked, picked) = try measureTask(ctx, name)
        guard plan.hasStack else { throw OperatorError(name, "the task's question asks for no stack", retryable: false) }
        do throws(CatalogQueryError) { try ImageStack.check(plan.stack, images: refs.images) } catch {
            throw OperatorError(name, error.message, retryable: false)
        }
        var s = ImageStack.empty(plan.stack)
        for i in picked {
            ImageStack.add(file, ra: asked.ra[i], dec: asked.dec[i], into: &s)
        }
        var out = CatalogPartial()
        out.stack = s
        return .bytes(try CatalogOperators.serialized(out, name))
    }
}
