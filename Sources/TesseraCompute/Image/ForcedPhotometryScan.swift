import Foundation
import SwiftProtobuf
import TesseraProtocol
import TesseraSky
import TesseraStorage

public typealias ForcedPhotometrySpec = Tessera_V1_ForcedPhotometrySpec

/// Forced photometry as a catalog question: each row of a shard (in the region, passing the part
/// of the filter on stored columns) is measured on the patch of its own HEALPix pixel, in each
/// band, and the measurements become columns the rest of the question reads.
public enum ForcedPhotometryQuestion {
    /// The farthest a measurement reads from its row's position, pixels.
    public static let maxReachPixels = 512

    /// The columns a band adds.
    public static func columnNames(band b: String) -> [String] { ["\(b)_apFlux", "\(b)_apFluxErr", "\(b)_apBackground", "\(b)_apFlag"] }

    /// The catalog's schema with the bands' measurement columns after it.
    public static func schema(catalog: [ColumnSchema], bands: [String]) -> [ColumnSchema] {
        var out = catalog
        for b in bands {
            for (k, n) in columnNames(band: b).enumerated() {
                var c = ColumnSchema()
                c.name = n
                c.type = k == 3 ? .columnInt64 : .columnFloat64
                c.unit = k == 3 ? "" : (k == 2 ? "nJy/pixel" : "nJy")
                c.description_p = ["aperture flux, local background subtracted", "its error (aperture and background)",
                                   "sigma-clipped median of the annulus", "ForcedPhotometry flags (1 no coverage, 2 aperture incomplete, 4 background unreliable, 8 outside the images)"][k]
                out.append(c)
            }
        }
        return out
    }

    /// The spec checked against the image dataset: its bands, and the aperture and annulus in
    /// pixels (the annulus must stay within a patch's border, so each row is measured whole on
    /// the patch of its own pixel).
    public static func check(_ spec: ForcedPhotometrySpec, images: Tessera_V1_ImageDatasetInfo) throws(CatalogQueryError) -> (bands: [String], photometry: ForcedPhotometry) {
        let bands = try ImageDataset.bands(spec.bands, of: images, dataset: spec.images)
        let r = spec.apertureArcsec
        guard r.isFinite, r > 0, r <= 60 else { throw CatalogQueryError("an aperture radius of \(r)″ is outside (0, 60]″") }
        let inner = spec.annulusInnerArcsec == 0 ? 2 * r : spec.annulusInnerArcsec
        let outer = spec.annulusOuterArcsec == 0 ? 3.5 * r : spec.annulusOuterArcsec
        guard inner.isFinite, outer.isFinite, inner >= r, outer > inner else {
            throw CatalogQueryError("the background annulus \(inner)″…\(outer)″ must lie outside the aperture (\(r)″) and be wider than nothing")
        }
        let scale = images.pixelScaleArcsec
        let reach = outer / scale + 2
        // Each row reads a stamp of about (2 × reach)² pixels.
        guard reach <= Double(maxReachPixels) else {
            throw CatalogQueryError("the annulus reaches \(reach.rounded(.up).wholeText) pixels (\(outer)″ at \(scale)″), over the limit of \(maxReachPixels) pixels a row's measurement may read: ask for a smaller aperture or annulus")
        }
        guard reach <= Double(images.borderPixels) else {
            throw CatalogQueryError("the annulus reaches \(reach.rounded(.up).wholeText) pixels (\(outer)″ at \(scale)″) but patches overlap by only \(images.borderPixels) pixels: each row is measured on the patch of its own pixel, so the annulus must fit in that border; ask for a smaller aperture or annulus")
        }
        return (bands, ForcedPhotometry(apertureRadius: r / scale, annulusInner: inner / scale, annulusOuter: outer / scale))
    }

    /// One measurement of a position on a patch file; `scratch` is the annulus sort's working
    /// space, kept by the caller from one row to the next.
    public static func measure(_ file: ImagePatchFile, ra: Double, dec: Double, with fp: ForcedPhotometry,
                               scratch: inout SigmaClippedMedian.Scratch) -> (flux: Double, error: Double, background: Double, flags: Int64) {
        let h = file.header
        // A position far off the patch (or 90° from its tangent point) has no pixels here.
        guard let p = h.wcs.pixel(ra: ra, dec: dec), abs(p.x) < 1e9, abs(p.y) < 1e9 else {
            return (.nan, .nan, .nan, Int64(ForcedPhotometry.Flag.noCoverage))
        }
        let gx = p.x + Double(h.x0), gy = p.y + Double(h.y0)
        let reads = fp.stampBox(x: gx, y: gy)
        let m: ApertureMeasurement
        if h.box.contains(reads) {
            // Every pixel it reads is in this file (nearly always: patches overlap by the
            // annulus's reach): measured on the mapped planes, with no stamp copied. Within the
            // stamp's box the pixels are the same, so the answer is the stamp's to the bit.
            m = file.withPlanes { image, variance, mask in
                fp.measure(x: gx, y: gy, in: PixelPlanes<BigEndianByteOrder>(image: image, variance: variance, mask: mask, box: h.box),
                           scratch: &scratch)
            }
        } else {
            var stamp = ImageCutout(band: h.band, box: reads, gridWCS: ImageDataset.gridWCS(h), tract: h.tract)
            stamp.paste(file)
            m = fp.measure(x: gx, y: gy, on: stamp, scratch: &scratch)
        }
        if m.flags & ForcedPhotometry.Flag.noCoverage != 0 { return (.nan, .nan, .nan, Int64(m.flags)) }
        return (m.flux, m.fluxError, m.background, Int64(m.flags))
    }
}

/// A forced-photometry task's patches, as the scheduler chose them, with lookups.
struct ForcedPhotometryPatchIndex {
    let refs: Tessera_V1_ForcedPhotometryPatches
    let tiling: SkyTiling
    /// (patch pixel, band) → index into `refs.keys`.
    let byPatch: [PatchBand: Int]
    let remote: Set<Int>

    struct PatchBand: Hashable { var patch: Int64, band: String }

    init(_ refs: Tessera_V1_ForcedPhotometryPatches) {
        self.refs = refs
        let i = refs.images
        tiling = SkyTiling(tractOrder: Int(i.tractOrder), patchOrder: Int(i.patchOrder), pixelScaleArcsec: i.pixelScaleArcsec, borderPixels: Int(i.borderPixels))
        var m: [PatchBand: Int] = [:]
        for (k, p) in refs.patches.enumerated() where p.tract >= 0 { m[PatchBand(patch: p.patch, band: p.band)] = k }
        byPatch = m
        remote = Set(refs.remote.map(Int.init))
    }

    func ref(ra: Double, dec: Double, band: String) -> Int? { ref(patch: tiling.patch(ra: ra, dec: dec), band: band) }
    func ref(patch: Int64, band: String) -> Int? { byPatch[PatchBand(patch: patch, band: band)] }
}

/// Runs a forced-photometry question over one shard (`forced_phot`), or lists the rows other
/// workers' patches must measure (`forced_phot_rows`).
struct ForcedPhotometryTask {
    let q: CheckedCatalogQuery
    let reader: ShardReader
    let raColumn: String, decColumn: String
    let bands: [String]
    let photometry: ForcedPhotometry
    let patches: ForcedPhotometryPatchIndex
    let root: String
    /// Measurements made elsewhere: (row, patch ref) → values.
    let measured: [RowPatch: (Double, Double, Double, Int64)]

    struct RowPatch: Hashable { var row: UInt64, ref: Int }

    /// The rows of each own row group the question reads: in the region, passing the filter's
    /// conjuncts on stored columns. Calls `body` with the group's first row's number, the
    /// columns read, the group's spatial index and the candidate rows; true stops.
    func candidates(isCancelled: () -> Bool, catalogOnly: [CheckedExpression], names: [String],
                    _ body: (UInt64, [String: ColumnData], [Int64], [Int]) throws(CatalogQueryError) -> Bool) throws(CatalogQueryError) {
        let footer = reader.footer
        var first = [UInt64](repeating: 0, count: footer.rowGroups.count + 1)
        for (g, rg) in footer.rowGroups.enumerated() { first[g + 1] = first[g] + rg.rows }
        let wanted = q.region.map { ShardScanPlan.indexRanges(of: $0, in: footer) }
        let groups = wanted.map { reader.rowGroups(overlapping: $0) } ?? Array(reader.ownRowGroups)
        var numbers: [(String, Int)] = []
        do {
            for n in Set(names + [raColumn, decColumn]) { numbers.append((n, try reader.columnIndex(n))) }
        } catch {
            throw CatalogQueryError("\(error)")
        }
        guard let indexNumber = footer.columns.firstIndex(where: { $0.name == footer.indexColumn }) else {
            throw CatalogQueryError("shard \(reader.path) has no spatial index column `\(footer.indexColumn)`")
        }
        for g in groups {
            if isCancelled() { throw CatalogQueryError("cancelled", retryable: true) }
            var stored: [String: ColumnData] = [:]
            let index: [Int64]
            do {
                for (n, c) in numbers { stored[n] = try reader.read(column: c, rowGroup: g) }
                guard case .int64(let ix) = try reader.read(column: indexNumber, rowGroup: g) else {
                    throw CatalogQueryError("shard \(reader.path)'s spatial index is not Int64")
                }
                index = ix
            } catch let e as CatalogQueryError {
                throw e
            } catch {
                throw CatalogQueryError("\(error)", retryable: true)
            }
            guard let raData = stored[raColumn], let decData = stored[decColumn] else { continue }
            let ra = raData.doubles, dec = decData.doubles
            var inside: [Int] = []
            if let wanted {
                for r in wanted {
                    for i in ShardScanPlan.rows(of: r, in: index) where q.region?.contains(ra: ra[i], dec: dec[i]) ?? true { inside.append(i) }
                }
            } else {
                inside = Array(0..<index.count)
            }
            var chosen = inside
            if !catalogOnly.isEmpty, !inside.isEmpty {
                var cols: [String: ExpressionVector] = [:]
                for (n, d) in stored { cols[n] = CatalogScan.vector(d) }
                chosen = GroupLoops.indices(where: FilterPlan.evaluate(catalogOnly, columns: cols, rows: index.count, among: inside))
            }
            if try body(first[g], stored, index, chosen) { return }
        }
    }

    /// The filter's conjuncts on stored columns only, and the rest.
    func splitFilter() -> (catalogOnly: [CheckedExpression], rest: [CheckedExpression]) {
        let measuredNames = Set(bands.flatMap(ForcedPhotometryQuestion.columnNames))
        var a: [CheckedExpression] = [], b: [CheckedExpression] = []
        for c in q.filter.map(FilterPlan.conjuncts) ?? [] {
            if c.columns.contains(where: measuredNames.contains) { b.append(c) } else { a.append(c) }
        }
        return (a, b)
    }

    /// Stored columns the question reads.
    var storedNames: [String] {
        let measuredNames = Set(bands.flatMap(ForcedPhotometryQuestion.columnNames))
        let all = q.returnsRows && q.plan.rows.select.isEmpty ? reader.footer.columns.map(\.name).filter { $0 != reader.footer.indexColumn } : q.columns
        return all.filter { !measuredNames.contains($0) }
    }

    func open(_ ref: Int) throws(CatalogQueryError) -> ImagePatchFile? {
        guard let key = ShardKey(patches.refs.keys[ref]) else { throw CatalogQueryError("patch key `\(patches.refs.keys[ref].prefix(200))` is malformed") }
        let path = root + "/" + key.relativePath
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        let sum = ref < patches.refs.checksums.count ? patches.refs.checksums[ref] : 0
        do {
            return try ImagePatchPool.shared.file(path: path, checksum: sum)
        } catch {
            throw CatalogQueryError("\(error)", retryable: true)
        }
    }

    /// The answer over the shard.
    func run(isCancelled: () -> Bool) throws(CatalogQueryError) -> ScanAccumulator {
        var acc = ScanAccumulator(q)
        acc.partial.shards = 1
        if case .rows = q.output, q.plan.rows.limit == 0 { acc.rows.keepsChunks = true }
        let (catalogOnly, rest) = splitFilter()
        var files: [Int: ImagePatchFile?] = [:]
        var scratch = SigmaClippedMedian.Scratch()
        try candidates(isCancelled: isCancelled, catalogOnly: catalogOnly, names: storedNames) { (firstRow, stored, index, chosen) throws(CatalogQueryError) -> Bool in
            var piece = ScanAccumulator(q)
            if acc.rows.keepsChunks { piece.rows.keepsChunks = true }
            let n = index.count
            piece.partial.rowsScanned = UInt64(n)
            let ra = stored[raColumn]!.doubles, dec = stored[decColumn]!.doubles
            var cols: [String: ExpressionVector] = [:]
            var all = stored
            for b in bands {
                var flux = [Double](repeating: .nan, count: n), err = flux, bg = flux
                var flag = [Int64](repeating: Int64(ForcedPhotometry.Flag.outsideImages), count: n)
                // Rows in a shard's order mostly fall on the patch of the row before: its lookups
                // (a band name hashed, two tables) are kept rather than repeated.
                var last: (patch: Int64, ref: Int?, file: ImagePatchFile?) = (-1, nil, nil)
                for i in chosen {
                    let pixel = patches.tiling.patch(ra: ra[i], dec: dec[i])
                    if pixel != last.patch {
                        let ref = patches.ref(patch: pixel, band: b)
                        if let ref, files[ref] == nil { files[ref] = .some(try open(ref)) }
                        last = (pixel, ref, ref.flatMap { files[$0] ?? nil })
                    }
                    guard let ref = last.ref else { continue }
                    let m: (Double, Double, Double, Int64)
                    if let file = last.file {
                        m = ForcedPhotometryQuestion.measure(file, ra: ra[i], dec: dec[i], with: photometry, scratch: &scratch)
                    } else if let r = measured[RowPatch(row: firstRow + UInt64(i), ref: ref)] {
                        m = r
                    } else {
                        throw CatalogQueryError("patch \(patches.refs.keys[ref]) is not on this worker and no other task measured row \(firstRow + UInt64(i)) on it", retryable: true)
                    }
                    (flux[i], err[i], bg[i], flag[i]) = m
                }
                let names = ForcedPhotometryQuestion.columnNames(band: b)
                all[names[0]] = .float64(flux)
                all[names[1]] = .float64(err)
                all[names[2]] = .float64(bg)
                all[names[3]] = .int64(flag)
            }
            for (name, d) in all { cols[name] = CatalogScan.vector(d) }
            let keep: [Bool]
            if rest.isEmpty {
                var k = [Bool](repeating: false, count: n)
                for i in chosen { k[i] = true }
                keep = k
            } else {
                keep = FilterPlan.evaluate(rest, columns: cols, rows: n, among: chosen)
            }
            let matched = GroupLoops.count(keep)
            _ = try piece.add(rows: n, keep: keep, matched: matched, columns: cols, stored: { (name) throws(CatalogQueryError) in
                guard let c = all[name] else { throw CatalogQueryError("column `\(name)` was not read") }
                return c
            }, index: index)
            return try acc.absorb(piece)
        }
        return acc
    }

    /// The candidate rows whose patches are measured elsewhere, by patch.
    func remoteRows(isCancelled: () -> Bool) throws(CatalogQueryError) -> Tessera_V1_ForcedPhotometryRows {
        var out = Tessera_V1_ForcedPhotometryRows()
        let (catalogOnly, _) = splitFilter()
        try candidates(isCancelled: isCancelled, catalogOnly: catalogOnly, names: catalogOnly.flatMap(\.columns)) { (firstRow, stored, _, chosen) throws(CatalogQueryError) -> Bool in
            let ra = stored[raColumn]!.doubles, dec = stored[decColumn]!.doubles
            for i in chosen {
                for b in bands {
                    guard let ref = patches.ref(ra: ra[i], dec: dec[i], band: b), patches.remote.contains(ref) else { continue }
                    out.rows.append(firstRow + UInt64(i))
                    out.ra.append(ra[i])
                    out.dec.append(dec[i])
                    out.patch.append(UInt32(ref))
                }
            }
            return false
        }
        return out
    }
}
