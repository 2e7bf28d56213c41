import Foundation
import SwiftProtobuf
import TesseraCompute
import TesseraProtocol
import TesseraSky
import TesseraStorage

extension PlannedDataset {
    /// The shards of an image dataset whose patch `keep` takes and whose own sky (a tract
    /// patch's HEALPix pixel, else the shard's) meets the plan's region; all of them without one.
    func imageShards(meeting plan: CatalogQueryPlan, _ keep: (ImagePatchHeader) -> Bool) throws(ProtocolError) -> [Int] {
        guard let images else { return [] }
        let region: (any SkyRegion)?
        do { region = try CheckedCatalogQuery.checkedRegion(plan) } catch { throw .invalidContent("\(error)") }
        let wanted = region.map { HEALPix.indexRanges(of: $0, resolution: 10) }
        return images.patches.indices.filter { s in
            guard let h = images.patches[s], keep(h) else { return false }
            guard let wanted else { return true }
            let own = h.tract >= 0 ? HEALPix.children(h.patch, order: h.patchOrder, to: HEALPix.maxOrder) : range(s)
            return wanted.contains { $0.lowerBound < own.upperBound && own.lowerBound < $0.upperBound }
        }
    }
}

/// An image dataset's bands, tiling and each shard's patch, held for planning.
struct PlannedImages {
    let info: Tessera_V1_ImageDatasetInfo
    /// Per shard (as `PlannedDataset.keys`): its patch, nil where the registry's record is unusable.
    let patches: [ImagePatchHeader?]

    var tiling: SkyTiling {
        SkyTiling(tractOrder: Int(info.tractOrder), patchOrder: Int(info.patchOrder), pixelScaleArcsec: info.pixelScaleArcsec, borderPixels: Int(info.borderPixels))
    }
}

extension SchedulerCore {
    /// A cutout's tasks: one `image_cutout` per patch of the asked bands whose box meets the
    /// cutout's box in the grid of the tract holding the region's centre (or, off every tract,
    /// the image on its own grid that holds the centre), and a tree of `image_merge`.
    mutating func planCutout(_ plan: CatalogQueryPlan, images d: PlannedDataset) throws(ProtocolError) -> (graph: TaskGraph, estimate: Tessera_V1_CostEstimate) {
        guard let images = d.images else {
            throw .invalidContent("`\(plan.dataset.prefix(200))` is a catalog, not an image dataset: cutouts are made from images")
        }
        guard plan.hasCutout else {
            throw .invalidContent("`\(plan.dataset.prefix(200))` is an image dataset (bands \(images.info.bands.joined(separator: ", "))): ask it for cutouts or pixel statistics, not rows or aggregates")
        }
        let spec = plan.cutout
        let bands: [String]
        do { bands = try ImageDataset.bands(spec.bands, of: images.info, dataset: plan.dataset) } catch { throw .invalidContent("\(error)") }
        do { _ = try CheckedCatalogQuery.checkedRegion(plan) } catch { throw .invalidContent("\(error)") }
        guard let centre = CutoutGeometry.centre(plan.region) else {
            throw .invalidContent("a cutout needs a region (a cone, box or polygon) to say where it is")
        }
        let tiling = images.tiling
        let tract = tiling.tract(ra: centre.ra, dec: centre.dec)
        let tractWCS = tiling.tractWCS(tract)
        // Patches of the centre's tract, by band; else images on their own grids holding the centre.
        var grid: (tract: Int64, wcs: TanWCS, box: PixelBox)?
        var chosen: [Int] = []
        do {
            let box = try CutoutGeometry.box(region: plan.region, width: Int(spec.width), height: Int(spec.height), wcs: tractWCS)
            let meeting = images.patches.indices.filter { s in
                guard let h = images.patches[s] else { return false }
                return h.tract == tract && bands.contains(h.band) && !h.box.intersection(box).isEmpty
            }
            // Per band, one patch holding the whole box when there is one (a cutout within the
            // border always has its centre's patch); else every patch meeting it.
            for b in bands {
                let ofBand = meeting.filter { images.patches[$0]?.band == b }
                if let whole = ofBand.first(where: { images.patches[$0]?.box.contains(box) == true }) {
                    chosen.append(whole)
                } else {
                    chosen += ofBand
                }
            }
            if !chosen.isEmpty { grid = (tract, tractWCS, box) }
        } catch {
            throw .invalidContent("\(error)")
        }
        var params: [Tessera_V1_OperatorParams] = []
        var leaves: [(shard: Int, param: Int)] = []
        if let grid {
            guard grid.box.pixelCount * bands.count <= CutoutGeometry.maxPixels else {
                throw .invalidContent("a cutout of \(bands.count) bands × \(grid.box.width) × \(grid.box.height) pixels is over the limit of \(CutoutGeometry.maxPixels) pixels: ask for fewer bands or a smaller region")
            }
            // Each patch's task makes a piece the size of the whole box: a tiling of small patches
            // would make thousands of them for one large cutout.
            guard grid.box.pixelCount * chosen.count <= CutoutGeometry.maxLeafPixels else {
                throw .invalidContent("a cutout of \(grid.box.width) × \(grid.box.height) pixels spans \(chosen.count) patches of \(bands.count) band(s), whose pieces would hold \(grid.box.pixelCount * chosen.count) pixels, over the limit of \(CutoutGeometry.maxLeafPixels): ask for a smaller region or fewer bands")
            }
            params = [ImageOperators.cutoutParams(box: grid.box, tract: grid.tract, gridWCS: grid.wcs, tiling: (tiling.tractOrder, tiling.patchOrder))]
            leaves = chosen.map { ($0, 0) }
        } else {
            // Images on their own grids: per band, the first that holds the centre.
            var pixels = 0
            for b in bands {
                for s in images.patches.indices {
                    guard let h = images.patches[s], h.tract < 0, h.band == b,
                          let p = h.wcs.pixel(ra: centre.ra, dec: centre.dec), p.x >= -0.5, p.y >= -0.5,
                          p.x < Double(h.width) - 0.5, p.y < Double(h.height) - 0.5 else { continue }
                    let box: PixelBox
                    do { box = try CutoutGeometry.box(region: plan.region, width: Int(spec.width), height: Int(spec.height), wcs: h.wcs) } catch { throw .invalidContent("\(error)") }
                    params.append(ImageOperators.cutoutParams(box: box, tract: -1, gridWCS: h.wcs, tiling: (-1, -1)))
                    leaves.append((s, params.count - 1))
                    pixels += box.pixelCount
                    break
                }
            }
            // All bands' boxes, as on a tract's grid.
            guard pixels <= CutoutGeometry.maxPixels else {
                throw .invalidContent("a cutout of \(bands.count) bands holding \(pixels) pixels is over the limit of \(CutoutGeometry.maxPixels) pixels: ask for fewer bands or a smaller region")
            }
        }
        guard !leaves.isEmpty else {
            throw .invalidContent("no coverage here: `\(plan.dataset.prefix(200))` has no image of band \(bands.joined(separator: ", ")) at (\(centre.ra), \(centre.dec))")
        }
        var g = TaskGraph(operators: ["image_cutout", "image_merge"], params: params, dataKeys: leaves.map { d.keys[$0.shard] })
        var estimate = Tessera_V1_CostEstimate()
        var tasks: [UInt32] = []
        for (i, leaf) in leaves.enumerated() {
            tasks.append(g.add(operatorIndex: 0, paramIndex: UInt32(leaf.param + 1)))
            g.dataKey.append(UInt32(i + 1))
            estimate.shards &+= 1
            let n = params[leaf.param].blobs["box"].flatMap { try? Tessera_V1_ImageCutoutPiece(serializedBytes: $0) }.map { UInt64($0.width) * UInt64($0.height) } ?? 0
            estimate.bytes &+= 12 &* n
        }
        // One patch per band answers alone: its piece is the whole cutout, no merge needed.
        if tasks.count > 1 {
            g.addReduction(of: tasks, operatorIndex: 1, fanIn: 8, paramIndex: 1)
        }
        while g.dataKey.count < g.taskCount { g.dataKey.append(0) }
        return (g, estimate)
    }
}

extension SchedulerCore {
    /// A catalog question with forced photometry: per shard the region may touch, one
    /// `forced_phot` reading the shard and the patches of its pixels. Patches not held by every
    /// holder of the shard (so possibly elsewhere when the task runs) are measured where they
    /// are: a `forced_phot_rows` lists the shard's rows on them and a `forced_phot_measure` per
    /// such patch measures them, as inputs of the shard's task. Then the usual merge tree.
    mutating func planForcedPhotometry(_ plan: CatalogQueryPlan, catalog d: PlannedDataset, datasets all: [String: PlannedDataset], user: String) throws(ProtocolError) -> (graph: TaskGraph, estimate: Tessera_V1_CostEstimate) {
        let isStack = plan.hasStack
        guard !plan.hasCrossmatch, !plan.hasPython, !plan.hasCutout, !(isStack && plan.hasForcedPhotometry) else {
            throw .invalidContent("forced photometry and stacks are asked one at a time, and not with a cross-match, a Python function or a cutout")
        }
        let what = isStack ? "stacks are made around" : "forced photometry measures"
        guard d.images == nil else { throw .invalidContent("`\(plan.dataset.prefix(200))` is an image dataset: \(what) a catalog's rows on images") }
        let imagesName = isStack ? plan.stack.images : plan.forcedPhotometry.images
        guard let imageSet = resolve(imagesName, user: user, in: all) else { throw unknownDataset(imagesName, user: user, in: all, " of images") }
        guard let images = imageSet.images else { throw .invalidContent("`\(imagesName.prefix(200))` is a catalog, not an image dataset") }
        let bands: [String]
        do {
            if isStack {
                try ImageStack.check(plan.stack, images: images.info)
                bands = [plan.stack.band]
                _ = try CheckedCatalogQuery(plan, columns: d.columns, raColumn: d.record.raColumn, decColumn: d.record.decColumn)
            } else {
                bands = try ForcedPhotometryQuestion.check(plan.forcedPhotometry, images: images.info).bands
                _ = try CheckedCatalogQuery(plan, columns: ForcedPhotometryQuestion.schema(catalog: d.columns, bands: bands),
                                            raColumn: d.record.raColumn, decColumn: d.record.decColumn)
            }
        } catch {
            throw .invalidContent("\(error)")
        }
        let region: (any SkyRegion)?
        do { region = try CheckedCatalogQuery.checkedRegion(plan) } catch { throw .invalidContent("\(error)") }
        let hits = region.map { d.shards(meeting: HEALPix.indexRanges(of: $0, resolution: 10)) } ?? d.keys.indices.map { ($0, 1.0) }
        // Tract patches of the bands, with the order-29 range of each one's patch pixel.
        let patchOrder = Int(images.info.patchOrder)
        let candidates: [(shard: Int, range: Range<Int64>, header: ImagePatchHeader)] = images.patches.indices.compactMap { p in
            guard let h = images.patches[p], h.tract >= 0, bands.contains(h.band) else { return nil }
            return (p, HEALPix.children(h.patch, order: patchOrder, to: HEALPix.maxOrder), h)
        }
        let operators = isStack ? ["image_stack", "catalog_merge", "forced_phot_rows", "image_stack_measure"]
            : ["forced_phot", "catalog_merge", "forced_phot_rows", "forced_phot_measure"]
        var g = TaskGraph(operators: operators,
                          params: [CatalogOperators.params(plan: plan, raColumn: d.record.raColumn, decColumn: d.record.decColumn)],
                          dataKeys: d.keys + imageSet.keys)
        var estimate = Tessera_V1_CostEstimate()
        var leaves: [UInt32] = []
        for (s, covered) in hits {
            let own = d.range(s)
            let holders = Set(d.workers[s])
            var refs = Tessera_V1_ForcedPhotometryPatches()
            refs.images = images.info
            var remote: [(ref: Int, shard: Int)] = []
            for c in candidates where c.range.lowerBound < own.upperBound && own.lowerBound < c.range.upperBound {
                let key = imageSet.keys[c.shard]
                if !Set(imageSet.workers[c.shard]).isSuperset(of: holders) {
                    refs.remote.append(UInt32(refs.keys.count))
                    remote.append((refs.keys.count, c.shard))
                }
                refs.keys.append(key)
                refs.checksums.append(registeredShards[key]?.checksum ?? 0)
                refs.patches.append(ImageDataset.info(c.header))
            }
            g.params.append(ImageOperators.forcedPhotometryParams(plan: plan, raColumn: d.record.raColumn, decColumn: d.record.decColumn, patches: refs))
            let param = UInt32(g.params.count)
            var inputs: [UInt32] = []
            if !remote.isEmpty {
                let listing = g.add(operatorIndex: 2, paramIndex: param)
                g.dataKey.append(UInt32(s + 1))
                for r in remote {
                    inputs.append(g.add(operatorIndex: 3, arg: Int64(r.ref), inputs: [listing], paramIndex: param))
                    g.dataKey.append(UInt32(d.keys.count + r.shard + 1))
                }
            }
            leaves.append(g.add(operatorIndex: 0, inputs: inputs, paramIndex: param))
            g.dataKey.append(UInt32(s + 1))
            d.add(shard: s, fraction: covered, to: &estimate)
        }
        Self.finish(&g, leaves: leaves, mergeOperator: 1, plan: plan)
        return (g, estimate)
    }
}

extension SchedulerCore {
    /// An image dataset's pixel statistics: one `image_stats` per patch of the asked bands (those
    /// whose pixel meets the region, if one is given), and a tree of `catalog_merge`.
    mutating func planImageStatistics(_ plan: CatalogQueryPlan, images d: PlannedDataset) throws(ProtocolError) -> (graph: TaskGraph, estimate: Tessera_V1_CostEstimate) {
        guard let images = d.images else {
            throw .invalidContent("`\(plan.dataset.prefix(200))` is a catalog, not an image dataset: pixel statistics are of images")
        }
        let spec = plan.imageStatistics
        let bands: [String]
        do { bands = try ImageDataset.bands(spec.bands, of: images.info, dataset: plan.dataset) } catch { throw .invalidContent("\(error)") }
        guard spec.mapOrder <= 16 else { throw .invalidContent("a depth map of order \(spec.mapOrder): at most 16") }
        let chosen = try d.imageShards(meeting: plan) { bands.contains($0.band) }
        // The map's pixels grow with the area asked for and four times an order: bound them
        // (each patch covers at most its own pixels' worth of map pixels, and at least one).
        let order = spec.mapOrder == 0 ? ImageStatistics.defaultMapOrder : Int(spec.mapOrder)
        let mapPixelArcsec2 = 4 * Double.pi / Double(HEALPix.pixelCount(order)) * pow(180 / Double.pi * 3600, 2)
        var mapPixels = 0.0
        for s in chosen {
            guard let h = images.patches[s] else { continue }
            let area = Double(h.width) * Double(h.height)
            mapPixels += min(area, area * pow(h.wcs.pixelScaleArcsec, 2) / mapPixelArcsec2 + 4)
        }
        guard mapPixels <= Double(ImageStatistics.maxMapPixels) else {
            throw .invalidContent("a depth map of order \(order) over \(chosen.count) patches would hold about \(mapPixels.wholeText) pixels, over the limit of \(ImageStatistics.maxMapPixels): ask for a lower order or a smaller region")
        }
        var g = TaskGraph(operators: ["image_stats", "catalog_merge"], params: [CatalogOperators.params(plan: plan, raColumn: "", decColumn: "")],
                          dataKeys: chosen.map { d.keys[$0] })
        var estimate = Tessera_V1_CostEstimate()
        var leaves: [UInt32] = []
        for (i, s) in chosen.enumerated() {
            leaves.append(g.add(operatorIndex: 0, paramIndex: 1))
            g.dataKey.append(UInt32(i + 1))
            d.add(shard: s, fraction: 1, to: &estimate)
        }
        Self.finish(&g, leaves: leaves, mergeOperator: 1, plan: plan)
        return (g, estimate)
    }
}

extension SchedulerCore {
    /// A HiPS of one band: per patch of the band, a `hips_patch` (its tiles from the deepest
    /// order up to the patch order; an output) and a `hips_top` beside it (the patch-order tile
    /// alone, so the deeper tiles never move); then one `hips_tile` per tile above, from its
    /// children's tasks, up to order 3 (each an output).
    mutating func planHiPS(_ plan: CatalogQueryPlan, images d: PlannedDataset) throws(ProtocolError) -> (graph: TaskGraph, estimate: Tessera_V1_CostEstimate) {
        guard let images = d.images else {
            throw .invalidContent("`\(plan.dataset.prefix(200))` is a catalog, not an image dataset: a HiPS is made of images")
        }
        guard !plan.hasCutout, !plan.hasImageStatistics, !plan.hasCrossmatch, !plan.hasPython, plan.filter.isEmpty else {
            throw .invalidContent("a HiPS is asked alone: no filter, cutout, statistics, cross-match or Python function beside it")
        }
        let q: HiPSQuestion
        do { q = try HiPSQuestion(plan.hips, images: images.info, dataset: plan.dataset) } catch { throw .invalidContent(error.message) }
        let patches = try d.imageShards(meeting: plan) { $0.tract >= 0 && $0.band == q.band && $0.patchOrder == q.patchOrder }
        guard !patches.isEmpty else {
            throw .invalidContent("`\(plan.dataset.prefix(200))` has no tiled patch of band \(q.band)\(plan.region == nil ? "" : " in the region"): a HiPS is made from the patches of a tiled coadd")
        }
        var g = TaskGraph(operators: ["hips_patch", "hips_top", "hips_tile"], params: [HiPSOperators.params(plan: plan, images: images.info)], dataKeys: d.keys)
        var estimate = Tessera_V1_CostEstimate()
        var outputs: [UInt32] = []
        // The tasks holding each tile of the current order (for the tiles above).
        var level: [Int64: UInt32] = [:]
        for s in patches {
            guard let h = images.patches[s] else { continue }
            let leaf = g.add(operatorIndex: 0, paramIndex: 1)
            g.dataKey.append(UInt32(s + 1))
            outputs.append(leaf)
            level[h.patch] = g.add(operatorIndex: 1, inputs: [leaf], paramIndex: 1)
            g.dataKey.append(0)
            d.add(shard: s, fraction: 1, to: &estimate)
        }
        var order = q.patchOrder
        while order > HiPSTiling.minimumOrder {
            var parents: [Int64: [UInt32]] = [:]
            for (npix, task) in level { parents[npix >> 2, default: []].append(task) }
            level = [:]
            for parent in parents.keys.sorted() {
                let t = g.add(operatorIndex: 2, inputs: parents[parent]!.sorted(), paramIndex: 1)
                g.dataKey.append(0)
                outputs.append(t)
                level[parent] = t
            }
            order -= 1
        }
        g.outputs = outputs
        return (g, estimate)
    }
}
