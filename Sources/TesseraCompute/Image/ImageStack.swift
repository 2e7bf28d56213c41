import Foundation
import TesseraProtocol
import TesseraSky
import TesseraStorage

public typealias StackSpec = Tessera_V1_StackSpec
public typealias StackPartial = Tessera_V1_StackPartial
public typealias StackKind = Tessera_V1_StackKind

/// Stacks of cutouts centred on catalog rows, as sums that merge in any order: a mean, a
/// weighted mean (1 / variance), or a median from a per-pixel histogram.
///
/// Each row's cutout is the `size` × `size` pixels around the pixel its position falls in (an
/// exact copy; no resampling), so the stack is the true stack convolved with the positions'
/// sub-pixel offsets, a 1-pixel box. The median is interpolated linearly within its histogram
/// bin: its error is at most the bin width, (max − min) / `medianBins`; a pixel whose median
/// falls outside the range is NaN with the BAD mask bit.
public enum ImageStack {
    public static let maxSize = 255
    public static let medianBins = 128
    public static let maxMedianSize = 101

    /// Why a stack cannot be made as asked, or nil.
    public static func check(_ s: StackSpec, images: Tessera_V1_ImageDatasetInfo) throws(CatalogQueryError) {
        _ = try ImageDataset.bands([s.band], of: images, dataset: s.images)
        guard s.size >= 1, s.size <= UInt32(maxSize), s.size % 2 == 1 else {
            throw CatalogQueryError("a stack of \(s.size) pixels per side: it must be odd (the row's pixel in the middle) and at most \(maxSize)")
        }
        guard Int(s.size / 2) <= Int(images.borderPixels) else {
            throw CatalogQueryError("a stack of \(s.size) pixels reaches \(s.size / 2) pixels from each row but patches overlap by only \(images.borderPixels) pixels: each row's cutout comes from the patch of its own pixel; ask for at most \(2 * images.borderPixels + 1) pixels")
        }
        if s.kind == .stackMedian {
            // Its histograms are size² × 128 counts per partial (5 MB at 101 pixels).
            guard s.size <= UInt32(maxMedianSize) else {
                throw CatalogQueryError("a median stack of \(s.size) pixels per side: at most \(maxMedianSize) (its per-pixel histograms travel through the reduction tree)")
            }
            guard s.medianMin.isFinite, s.medianMax.isFinite, s.medianMin < s.medianMax else {
                throw CatalogQueryError("a median stack needs its histogram's range (median_min < median_max, nJy), got \(s.medianMin)…\(s.medianMax)")
            }
            // Bins of ordinary width: 0…1e-322 has bins of width 0 (every pixel's bin NaN),
            // -1e308…1e308 of infinite width (every median infinite).
            try CheckedCatalogQuery.checkBins(UInt32(medianBins), s.medianMin, s.medianMax, "median stack's")
        }
    }

    /// An empty stack.
    public static func empty(_ s: StackSpec) -> StackPartial {
        let n = Int(s.size) * Int(s.size)
        var p = StackPartial()
        p.size = s.size
        p.kind = s.kind
        p.sum = [Double](repeating: 0, count: n)
        p.weight = p.sum
        p.variance = p.sum
        if s.kind == .stackMedian {
            p.bins = UInt32(medianBins)
            p.medianMin = s.medianMin
            p.medianMax = s.medianMax
            p.histogram = [UInt32](repeating: 0, count: n * medianBins)
            p.below = [UInt32](repeating: 0, count: n)
            p.above = p.below
        }
        return p
    }

    /// Adds the cutout around (ra, dec) from a patch file. Pixels with no data, masked bad or
    /// saturated, or NaN are left out. Returns whether any pixel was added.
    @discardableResult
    public static func add(_ file: ImagePatchFile, ra: Double, dec: Double, into p: inout StackPartial) -> Bool {
        guard let c = file.header.wcs.pixel(ra: ra, dec: dec), c.x.isFinite, c.y.isFinite, abs(c.x) < 1e9, abs(c.y) < 1e9 else { return false }
        let n = Int(p.size), h = n / 2
        let box = PixelBox(x0: Int(c.x.rounded()) - h, y0: Int(c.y.rounded()) - h, width: n, height: n)
        let img = file.floats(.image, box: box), vari = file.floats(.variance, box: box), msk = file.mask(box: box)
        let bad = ImageMask.noData | ImageMask.bad | ImageMask.saturated
        var any = false
        let bins = Int(p.bins), lo = p.medianMin, width = (p.medianMax - p.medianMin) / Double(max(1, bins))
        for k in 0..<(n * n) {
            let v = Double(img[k]), s2 = Double(vari[k])
            guard msk[k] & bad == 0, v.isFinite else { continue }
            switch p.kind {
            case .stackWeightedMean:
                guard s2.isFinite, s2 > 0 else { continue }
                p.sum[k] += v / s2
                p.weight[k] += 1 / s2
            case .stackMedian:
                p.weight[k] += 1
                if s2.isFinite { p.variance[k] += s2 }
                let b = ((v - lo) / width).rounded(.down)
                if !(b >= 0) { p.below[k] += 1 } else if b >= Double(bins) { p.above[k] += 1 } else { p.histogram[k * bins + Int(b)] += 1 }
            default:
                p.sum[k] += v
                p.weight[k] += 1
                if s2.isFinite { p.variance[k] += s2 }
            }
            any = true
        }
        if any { p.sources += 1 }
        return any
    }

    /// `b` added into `a` (an empty `a`, of size 0, becomes `b`).
    public static func merge(_ a: inout StackPartial, _ b: StackPartial) throws(CatalogQueryError) {
        if b.size == 0 { return }
        if a.size == 0 { a = b; return }
        guard a.size == b.size, a.kind == b.kind, a.sum.count == b.sum.count, a.weight.count == b.weight.count,
              a.variance.count == b.variance.count, a.histogram.count == b.histogram.count, a.below.count == b.below.count,
              a.above.count == b.above.count, a.bins == b.bins, a.medianMin == b.medianMin, a.medianMax == b.medianMax else {
            throw CatalogQueryError("partial stacks of different shapes (corrupt partial)")
        }
        a.sources += b.sources
        for k in a.sum.indices { a.sum[k] += b.sum[k] }
        for k in a.weight.indices { a.weight[k] += b.weight[k] }
        for k in a.variance.indices { a.variance[k] += b.variance[k] }
        for k in a.histogram.indices { a.histogram[k] &+= b.histogram[k] }
        for k in a.below.indices { a.below[k] &+= b.below[k] }
        for k in a.above.indices { a.above[k] &+= b.above[k] }
    }

    /// The stack's planes: the image, its variance, and the mask (NO_DATA where no row covered a
    /// pixel; BAD where a median fell outside its range).
    public static func planes(_ p: StackPartial) -> (image: [Float], variance: [Float], mask: [Int32]) {
        // A partial from elsewhere: a side past the limit is no stack (its square could overflow).
        let n = p.size <= UInt32(maxSize) ? Int(p.size) * Int(p.size) : 0
        guard p.sum.count == n, p.weight.count == n, p.variance.count == n else {
            return ([Float](repeating: .nan, count: n), [Float](repeating: .nan, count: n), [Int32](repeating: ImageMask.noData, count: n))
        }
        var img = [Float](repeating: .nan, count: n), vari = img, msk = [Int32](repeating: 0, count: n)
        let bins = Int(p.bins), width = (p.medianMax - p.medianMin) / Double(max(1, bins))
        for k in 0..<n {
            guard p.weight[k] > 0 else { msk[k] = ImageMask.noData; continue }
            switch p.kind {
            case .stackWeightedMean:
                img[k] = Float(p.sum[k] / p.weight[k])
                vari[k] = Float(1 / p.weight[k])
            case .stackMedian:
                let count = p.weight[k]
                // The median's variance for Gaussian noise: (π/2) σ² / n.
                vari[k] = Float(Double.pi / 2 * p.variance[k] / count / count)
                let half = count / 2
                var seen = Double(p.below[k])
                if seen >= half { msk[k] |= ImageMask.bad; continue }
                var found = false
                for b in 0..<bins {
                    let c = Double(p.histogram[k * bins + b])
                    if seen + c >= half, c > 0 {
                        img[k] = Float(p.medianMin + (Double(b) + (half - seen) / c) * width)
                        found = true
                        break
                    }
                    seen += c
                }
                if !found { msk[k] |= ImageMask.bad }
            default:
                img[k] = Float(p.sum[k] / p.weight[k])
                vari[k] = Float(p.variance[k] / (p.weight[k] * p.weight[k]))
            }
        }
        return (img, vari, msk)
    }
}

extension ForcedPhotometryTask {
    /// The stack of this shard's rows whose patches are here; `others`, stacked where their
    /// patches are, added.
    func stack(_ spec: StackSpec, others: [StackPartial], isCancelled: () -> Bool) throws(CatalogQueryError) -> CatalogPartial {
        var out = CatalogPartial()
        out.shards = 1
        var s = ImageStack.empty(spec)
        var files: [Int: ImagePatchFile?] = [:]
        let conjuncts = q.filter.map(FilterPlan.conjuncts) ?? []
        try candidates(isCancelled: isCancelled, catalogOnly: conjuncts, names: conjuncts.flatMap(\.columns)) { (_, stored, index, chosen) throws(CatalogQueryError) -> Bool in
            out.rowsScanned += UInt64(index.count)
            out.rowsMatched += UInt64(chosen.count)
            let ra = stored[raColumn]!.doubles, dec = stored[decColumn]!.doubles
            for i in chosen {
                // Rows on patches stacked elsewhere are left to that task, even when the patch is
                // here too (else they would count twice).
                guard let ref = patches.ref(ra: ra[i], dec: dec[i], band: spec.band), !patches.remote.contains(ref) else { continue }
                if files[ref] == nil { files[ref] = .some(try open(ref)) }
                if let file = files[ref]! {
                    ImageStack.add(file, ra: ra[i], dec: dec[i], into: &s)
                } else {
                    throw CatalogQueryError("patch \(patches.refs.keys[ref]) is not on this worker and no other task stacks its rows", retryable: true)
                }
            }
            return false
        }
        for o in others { try ImageStack.merge(&s, o) }
        out.stack = s
        return out
    }
}
