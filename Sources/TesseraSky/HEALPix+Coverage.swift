extension HEALPix {
    /// Pixels at `order` covering a region, as sorted, merged ranges of pixel indices.
    ///
    /// - Parameter inclusive: true gives every pixel that may overlap the region (a superset,
    ///   for pruning shards and row groups); false gives the pixels whose centres are in it
    ///   (healpy's `inclusive=False`).
    public static func coverage(of region: some SkyRegion, order: Int, inclusive: Bool) -> [Range<Int64>] {
        coverage(of: region, order: order, inclusive: inclusive, within: (0..<12).map { Int64($0) }, rootOrder: 0)
    }

    /// Like `coverage(of:order:inclusive:)`, searching only inside the given pixels of
    /// `rootOrder` (ascending, for sorted output): much less work for a small region whose
    /// neighbourhood is known.
    public static func coverage(of region: some SkyRegion, order: Int, inclusive: Bool, within roots: [Int64], rootOrder: Int) -> [Range<Int64>] {
        precondition(order >= 0 && order <= maxOrder && rootOrder <= order)
        let radii = (0...order).map { $0 < rootOrder ? 0 : boundingRadius(order: $0) }
        var out: [Range<Int64>] = []
        func emit(_ r: Range<Int64>) {
            if let last = out.last, last.upperBound == r.lowerBound {
                out[out.count - 1] = last.lowerBound..<r.upperBound
            } else {
                out.append(r)
            }
        }
        // Depth first in nested order, so ranges come out sorted.
        var stack: [(level: Int, pix: Int64)] = roots.reversed().map { (rootOrder, $0) }
        while let (level, pix) = stack.popLast() {
            let c = centerVector(order: level, pixel: pix)
            switch region.classify(center: c, radius: radii[level]) {
            case .outside:
                continue
            case .inside:
                emit(children(pix, order: level, to: order))
            case .partial:
                if level == order {
                    if inclusive || region.contains(c) { emit(pix..<(pix + 1)) }
                } else {
                    for k in (0..<Int64(4)).reversed() { stack.append((level + 1, pix * 4 + k)) }
                }
            }
        }
        return out
    }

    /// The radius of a cap around a pixel's centre that surely holds the pixel: the bound, with a
    /// little slack so that rounding never drops an overlapping pixel.
    @inline(__always) static func boundingRadius(order: Int) -> Double { maxPixelRadius(order: order) * (1 + 1e-9) + 1e-15 }

    /// Whether `region` meets the order-29 index range `range` (a shard's pixel), searching from
    /// the given pixels of `rootOrder`: the same walk as `coverage(…inclusive: true…)` at
    /// `resolution`, but only through pixels that overlap the range, and stopping at the first
    /// pixel found. A cone near a shard's edge mostly lies in its own shard, which this never visits.
    public static func region(_ region: some SkyRegion, meets range: Range<Int64>, resolution: Int, within roots: [Int64], rootOrder: Int) -> Bool {
        precondition(resolution >= rootOrder && resolution <= maxOrder)
        var stack: [(level: Int, pix: Int64)] = roots.map { (rootOrder, $0) }
        while let (level, pix) = stack.popLast() {
            let span = children(pix, order: level, to: maxOrder)
            guard span.lowerBound < range.upperBound && range.lowerBound < span.upperBound else { continue }
            switch region.classify(center: centerVector(order: level, pixel: pix), radius: boundingRadius(order: level)) {
            case .outside:
                continue
            case .inside:
                return true
            case .partial:
                if level == resolution { return true }
                for k in 0..<Int64(4) { stack.append((level + 1, pix * 4 + k)) }
            }
        }
        return false
    }

    /// Order-29 spatial-index ranges that contain every point of a region, for pruning shards and
    /// row groups. The walk stops at `resolution` (finer orders cost time along the boundary and
    /// prune little more); its pixels are then widened to the index ranges they span.
    public static func indexRanges(of region: some SkyRegion, resolution: Int = 14) -> [Range<Int64>] {
        let r = min(max(resolution, 0), maxOrder)
        let shift = 2 * Int64(maxOrder - r)
        return coverage(of: region, order: r, inclusive: true).map { ($0.lowerBound << shift)..<($0.upperBound << shift) }
    }

    /// `indexRanges(of:resolution:)` searching only inside the given pixels of `rootOrder`.
    public static func indexRanges(of region: some SkyRegion, resolution: Int, within roots: [Int64], rootOrder: Int) -> [Range<Int64>] {
        let r = min(max(resolution, rootOrder), maxOrder)
        let shift = 2 * Int64(maxOrder - r)
        return coverage(of: region, order: r, inclusive: true, within: roots, rootOrder: rootOrder)
            .map { ($0.lowerBound << shift)..<($0.upperBound << shift) }
    }

    /// The pixels of `coverage(of:order:inclusive:)`, one by one.
    public static func pixels(of region: some SkyRegion, order: Int, inclusive: Bool) -> [Int64] {
        coverage(of: region, order: order, inclusive: inclusive).flatMap { Array($0) }
    }

    /// Pixels within `radius` radians of `center`: centres inside (exact), or any overlap (inclusive).
    public static func queryDisc(order: Int, center: Vec3, radius: Double, inclusive: Bool) -> [Int64] {
        pixels(of: ConeRegion(center: center, radius: radius), order: order, inclusive: inclusive)
    }

    /// Pixels of a convex polygon: centres inside (exact), or any overlap (inclusive).
    public static func queryPolygon(order: Int, vertices: [Vec3], inclusive: Bool) throws(SkyError) -> [Int64] {
        pixels(of: try PolygonRegion(vertices: vertices), order: order, inclusive: inclusive)
    }
}
