import Foundation
import SwiftProtobuf
import TesseraProtocol
import TesseraSky
import TesseraStorage

public typealias HiPSSpec = Tessera_V1_HiPSSpec
public typealias HiPSTile = Tessera_V1_HiPSTile

/// A HiPS question checked against the image dataset: the band, the tile geometry, the deepest
/// order and the PNG stretch. The scheduler checks it before planning, each worker again.
public struct HiPSQuestion: Sendable {
    public let band: String
    public let tiling: HiPSTiling
    /// The deepest tile order (at least the patch order, so each of its tiles lies in one patch).
    public let order: Int
    public let patchOrder: Int
    public let stretch: PNGImage.AsinhStretch

    /// The most tile pixels one patch's task makes (its tiles from `order` up to the patch order):
    /// 128 MiB of float32, well inside a message.
    public static let maxPixelsPerPatch = 1 << 25

    public init(_ spec: HiPSSpec, images: Tessera_V1_ImageDatasetInfo, dataset: String) throws(CatalogQueryError) {
        band = try ImageDataset.bands([spec.band], of: images, dataset: dataset)[0]
        let width = spec.tileWidth == 0 ? 512 : Int(spec.tileWidth)
        guard let t = HiPSTiling(width: width) else {
            throw CatalogQueryError("a HiPS tile width of \(spec.tileWidth) pixels: it must be one of \(HiPSTiling.allowedWidths.map(String.init).joined(separator: ", "))")
        }
        tiling = t
        patchOrder = Int(images.patchOrder)
        guard images.pixelScaleArcsec > 0, images.pixelScaleArcsec.isFinite, (1...20).contains(patchOrder) else {
            throw CatalogQueryError("`\(dataset.prefix(200))` has no tiling (its images lie on their own grids): a HiPS is made from the patches of a tiled coadd (`tessera generate coadd`)")
        }
        let native = t.nativeOrder(pixelScaleArcsec: images.pixelScaleArcsec)
        order = spec.order == 0 ? native : Int(spec.order)
        let deepest = HEALPix.maxOrder - t.widthShift
        guard order >= patchOrder, order >= HiPSTiling.minimumOrder, order <= deepest else {
            throw CatalogQueryError("a HiPS of order \(order) with \(width)-pixel tiles: the deepest order must be at least the patch order \(patchOrder) (each deepest tile comes from one patch) and at most \(deepest)\(spec.order == 0 ? "; at \(images.pixelScaleArcsec)″ pixels the native order is \(native): use smaller tiles" : "")")
        }
        // Tiles per patch: 1 + 4 + … + 4^(order − patchOrder).
        let depth = order - patchOrder
        let pixels = (depth < 15 ? ((1 << (2 * (depth + 1))) - 1) / 3 : Int.max / 4) &* (width * width)
        guard depth < 15, pixels <= Self.maxPixelsPerPatch else {
            throw CatalogQueryError("a HiPS of order \(order) with \(width)-pixel tiles makes \(depth < 15 ? "\(pixels)" : "over 2^58") pixels per patch (order \(patchOrder)), over the limit of \(Self.maxPixelsPerPatch): ask a lower order (the native one is \(native)) or smaller tiles")
        }
        guard spec.cutLow.isFinite, spec.cutHigh.isFinite, spec.cutLow < spec.cutHigh else {
            throw CatalogQueryError("a HiPS needs its PNG cut (cut_low < cut_high, nJy), got \(spec.cutLow)…\(spec.cutHigh)")
        }
        stretch = PNGImage.AsinhStretch(low: spec.cutLow, high: spec.cutHigh)
    }

    /// The tile of `pixels` (FITS order), with its PNG; nil when no pixel is finite (no file).
    func tile(order: Int, npix: Int64, pixels: [Float], png: Bool) throws(ImageFileError) -> HiPSTile? {
        guard pixels.contains(where: \.isFinite) else { return nil }
        var t = HiPSTile()
        t.order = UInt32(order)
        t.npix = npix
        t.width = UInt32(tiling.width)
        t.pixels = pixels.withUnsafeBytes { Data($0) }
        if png {
            let grey = pixels.withUnsafeBufferPointer { PNGImage.greyAlpha($0, width: tiling.width, height: tiling.width, stretch: stretch) }
            t.png = Data(try PNGImage.encode(width: tiling.width, height: tiling.width, kind: .greyAlpha, pixels: grey, level: 1))
        }
        return t
    }

    /// The tiles of one patch: every tile of the deepest order inside the patch's own HEALPix
    /// pixel, each pixel the coadd pixel nearest its centre, then each coarser order up to the
    /// patch order by 2×2 means.
    func tiles(of file: ImagePatchFile, isCancelled: () -> Bool) throws(CatalogQueryError) -> [HiPSTile] {
        let h = file.header
        guard h.tract >= 0, h.patchOrder == patchOrder, h.band == band else {
            throw CatalogQueryError("the patch is band \(h.band) of tract \(h.tract) at patch order \(h.patchOrder), not a band-\(band) patch of order \(patchOrder)")
        }
        let w = tiling.width
        let projector = TanWCS.Projector(h.wcs)
        var level: [(npix: Int64, pixels: [Float])] = []
        var xs = [Int](repeating: 0, count: w * w), ys = xs
        for npix in HEALPix.children(h.patch, order: patchOrder, to: order) {
            if isCancelled() { throw CatalogQueryError("cancelled", retryable: true) }
            // Where each tile pixel's centre falls in the patch, and the box of those pixels.
            var box = (x0: Int.max, y0: Int.max, x1: Int.min, y1: Int.min)
            let o = tiling.origin(order: order, npix: npix)
            for row in 0..<w {
                for column in 0..<w {
                    let c = tiling.centreVector(order: order, face: o.face, ix: o.ix, iy: o.iy, row: row, column: column)
                    let i = row * w + column
                    guard let p = projector.pixel(c), abs(p.x) < 1e9, abs(p.y) < 1e9 else {
                        xs[i] = Int.min
                        continue
                    }
                    let x = Int((p.x + 0.5).rounded(.down)), y = Int((p.y + 0.5).rounded(.down))
                    xs[i] = x
                    ys[i] = y
                    box = (min(box.x0, x), min(box.y0, y), max(box.x1, x), max(box.y1, y))
                }
            }
            var pixels = [Float](repeating: .nan, count: w * w)
            if box.x0 <= box.x1 {
                let own = PixelBox(x0: box.x0, y0: box.y0, width: box.x1 - box.x0 + 1, height: box.y1 - box.y0 + 1)
                    .intersection(PixelBox(x0: 0, y0: 0, width: h.width, height: h.height))
                if !own.isEmpty {
                    let values = file.floats(.image, box: own)
                    for i in 0..<(w * w) {
                        let x = xs[i] - own.x0, y = ys[i] - own.y0
                        if xs[i] != Int.min, x >= 0, y >= 0, x < own.width, y < own.height { pixels[i] = values[y * own.width + x] }
                    }
                }
            }
            level.append((npix, pixels))
        }
        var out: [HiPSTile] = []
        var o = order
        while true {
            do throws(ImageFileError) {
                for t in level {
                    guard var tile = try tile(order: o, npix: t.npix, pixels: t.pixels, png: true) else { continue }
                    tile.coaddPixelScaleArcsec = h.wcs.pixelScaleArcsec
                    out.append(tile)
                }
            } catch {
                throw CatalogQueryError("\(error)")
            }
            guard o > patchOrder else { break }
            level = binned(level)
            o -= 1
        }
        return out
    }

    /// The parents of tiles of one order, each from the children present (NaN elsewhere).
    func binned(_ children: [(npix: Int64, pixels: [Float])]) -> [(npix: Int64, pixels: [Float])] {
        let w = tiling.width
        var parents: [Int64: [Float]] = [:]
        var order: [Int64] = []
        for c in children {
            let p = c.npix >> 2
            if parents[p] == nil {
                parents[p] = [Float](repeating: .nan, count: w * w)
                order.append(p)
            }
            c.pixels.withUnsafeBufferPointer { src in
                parents[p]!.withUnsafeMutableBufferPointer { tiling.bin(child: c.npix, pixels: src, into: $0) }
            }
        }
        return order.map { ($0, parents[$0]!) }
    }
}

/// Operators that make a HiPS: `hips_patch` on the worker holding each patch, `hips_top` taking
/// the patch-order tile out of its answer, and `hips_tile` for each coarser tile.
public enum HiPSOperators {
    public static let all: [TaskOperator] = [hipsPatch, hipsTop, hipsTile]

    static func question(_ ctx: OperatorContext, _ name: String) throws(OperatorError) -> HiPSQuestion {
        let plan = try CatalogOperators.taskPlan(ctx, name)
        guard plan.hasHips, let blob = ctx.params.blobs["images"], let images = try? Tessera_V1_ImageDatasetInfo(serializedBytes: blob) else {
            throw OperatorError(name, "the task carries no HiPS question or image dataset", retryable: false)
        }
        do throws(CatalogQueryError) { return try HiPSQuestion(plan.hips, images: images, dataset: plan.dataset) } catch {
            throw OperatorError(name, error.message, retryable: false)
        }
    }

    /// Parameters of a HiPS's tasks: the question's, and blob `images` (the dataset's bands and tiling).
    public static func params(plan: CatalogQueryPlan, images: Tessera_V1_ImageDatasetInfo) -> Tessera_V1_OperatorParams {
        var p = CatalogOperators.params(plan: plan, raColumn: "", decColumn: "")
        p.blobs["images"] = (try? images.serializedData()) ?? Data()
        return p
    }

    /// One patch's tiles, from the deepest order up to the patch order.
    public static let hipsPatch = TaskOperator("hips_patch", "make a patch's HiPS tiles, deepest order up to the patch order") { ctx throws(OperatorError) in
        let name = "hips_patch"
        let q = try question(ctx, name)
        let file = try ImageOperators.openPatch(ctx, name)
        var out = CatalogPartial()
        out.shards = 1
        defer { file.releasePages() }
        do throws(CatalogQueryError) { out.hipsTiles = try q.tiles(of: file, isCancelled: ctx.isCancelled) } catch {
            throw OperatorError(name, error.message, retryable: error.retryable)
        }
        return .bytes(try CatalogOperators.serialized(out, name))
    }

    /// The patch-order tile of a `hips_patch` answer (input 0), pixels only: what the tile above
    /// it needs, without moving the deeper tiles.
    public static let hipsTop = TaskOperator("hips_top", "take a patch's top HiPS tile for the tiles above") { ctx throws(OperatorError) in
        let name = "hips_top"
        let q = try question(ctx, name)
        guard ctx.inputs.count == 1 else { throw OperatorError(name, "needs one input (a patch's tiles), got \(ctx.inputs.count)", retryable: false) }
        var out = CatalogPartial()
        out.shards = 0
        if var top = try CatalogOperators.partial(ctx.inputs[0], input: 0, name).hipsTiles.first(where: { Int($0.order) == q.patchOrder }) {
            top.png = Data()
            out.hipsTiles = [top]
        }
        return .bytes(try CatalogOperators.serialized(out, name))
    }

    /// A tile above the patch order, from its children (the inputs' tiles, one order deeper, all
    /// with one parent); no tile when no child has one.
    public static let hipsTile = TaskOperator("hips_tile", "make a HiPS tile from its four children") { ctx throws(OperatorError) in
        let name = "hips_tile"
        let q = try question(ctx, name)
        let w = q.tiling.width
        var children: [(npix: Int64, pixels: [Float])] = []
        var childOrder: Int?
        for (k, v) in ctx.inputs.enumerated() {
            for t in try CatalogOperators.partial(v, input: k, name).hipsTiles {
                guard t.width == UInt32(w), t.pixels.count == 4 * w * w, t.order >= 1, childOrder == nil || childOrder == Int(t.order),
                      children.first.map({ $0.npix >> 2 == t.npix >> 2 }) ?? true else {
                    throw OperatorError(name, "input \(k) holds a tile (order \(t.order), \(t.npix), width \(t.width)) that is not a child of the others' parent", retryable: false)
                }
                childOrder = Int(t.order)
                children.append((t.npix, ImageDataset.values(t.pixels)))
            }
        }
        var out = CatalogPartial()
        if let o = childOrder, let parent = q.binned(children).first {
            do throws(ImageFileError) {
                if let tile = try q.tile(order: o - 1, npix: parent.npix, pixels: parent.pixels, png: true) { out.hipsTiles = [tile] }
            } catch {
                throw OperatorError(name, "\(error)")
            }
        }
        return .bytes(try CatalogOperators.serialized(out, name))
    }
}
