import TesseraSky

/// One shard of a partitioned catalog: a HEALPix pixel and the rows that fall in it.
public struct ShardPlan: Sendable, Equatable {
    public var order: Int
    public var pixel: Int64
    /// Positions, in the index-sorted row order, of the shard's rows.
    public var rows: Range<Int>
    /// Positions (in the index-sorted row order) of rows of other shards within the margin radius.
    public var margin: [Int] = []

    /// The order-29 index range the pixel covers.
    public var indexRange: Range<Int64> { HEALPix.children(pixel, order: order, to: HEALPix.maxOrder) }
    /// A stable name: `Norder=5/Npix=1234`-like, as HATS names its partitions.
    public var name: String { "order\(order)-pix\(pixel)" }
}

/// Cuts a catalog into HEALPix pixels of adaptive order: a pixel holding more than `maxRows`
/// splits into its four children, so dense regions get small shards and sparse ones large.
public enum SkyPartitioner {
    /// - Parameters:
    ///   - sortedIndex: every row's order-29 spatial index, ascending.
    ///   - maxRows: most rows in a shard (a pixel at `maxOrder` keeps whatever it has).
    ///   - minOrder: the coarsest shard order.
    /// - Returns: non-empty shards in index order; their row ranges tile `0..<sortedIndex.count`.
    public static func partition(sortedIndex: [Int64], maxRows: Int, minOrder: Int = 0, maxOrder: Int = 20) -> [ShardPlan] {
        precondition(maxRows > 0 && minOrder <= maxOrder && maxOrder <= HEALPix.maxOrder)
        var out: [ShardPlan] = []
        // Rows of pixel p at order k are a contiguous run of the sorted index: find it by binary search.
        func lowerBound(_ v: Int64, _ lo: Int, _ hi: Int) -> Int {
            var lo = lo, hi = hi
            while lo < hi {
                let mid = (lo + hi) / 2
                if sortedIndex[mid] < v { lo = mid + 1 } else { hi = mid }
            }
            return lo
        }
        func visit(_ order: Int, _ pixel: Int64, _ lo: Int, _ hi: Int) {
            if lo == hi { return }
            if hi - lo <= maxRows || order == maxOrder {
                out.append(ShardPlan(order: order, pixel: pixel, rows: lo..<hi))
                return
            }
            var start = lo
            for child in (pixel * 4)..<(pixel * 4 + 4) {
                let end = lowerBound(HEALPix.children(child, order: order + 1, to: HEALPix.maxOrder).upperBound, start, hi)
                visit(order + 1, child, start, end)
                start = end
            }
        }
        var start = 0
        for p in 0..<HEALPix.pixelCount(minOrder) {
            let end = lowerBound(HEALPix.children(p, order: minOrder, to: HEALPix.maxOrder).upperBound, start, sortedIndex.count)
            visit(minOrder, p, start, end)
            start = end
        }
        return out
    }

    /// Fills each shard's margin: rows of other shards within `radius` (radians) of the shard's
    /// pixel. Rows far from every shard boundary are skipped by a cheap test (the shards that meet
    /// their pixel's neighbourhood at an order whose pixels are wider than the radius); for the
    /// rest, the cone of the radius around the row is covered at an order whose pixels are at
    /// most 1/16 of it, and the row joins the margin of every other shard that cover touches. So
    /// the margin holds every row within the radius, and perhaps some up to 1/8 of the radius
    /// further (readers filter by exact distance).
    public static func addMargins(_ shards: inout [ShardPlan], ra: [Double], dec: [Double], radius: Double) {
        guard !shards.isEmpty, radius > 0 else { return }
        // (A quarter of the largest pixel radius is a safe lower bound on any pixel's width.)
        var mOrder = 0
        while mOrder < HEALPix.maxOrder && HEALPix.maxPixelRadius(order: mOrder + 1) * 0.25 > radius { mOrder += 1 }
        var fine = mOrder
        while fine < HEALPix.maxOrder && HEALPix.maxPixelRadius(order: fine) > radius / 16 { fine += 1 }
        let starts = shards.map { $0.indexRange.lowerBound }
        func shardOf(_ index: Int64) -> Int? {
            var lo = 0, hi = starts.count
            while lo < hi {
                let mid = (lo + hi) / 2
                if starts[mid] <= index { lo = mid + 1 } else { hi = mid }
            }
            let s = lo - 1
            return s >= 0 && shards[s].indexRange.contains(index) ? s : nil
        }
        for (home, shard) in shards.enumerated() {
            // Rows come sorted by index, so neighbours share their pixel: work out each pixel's
            // candidate shards once.
            var lastPixel: Int64 = -1
            var candidates: [Int] = []
            var neighbourhood: [Int64] = []
            for row in shard.rows {
                let v = Vec3(ra: ra[row], dec: dec[row])
                let p = HEALPix.pixel(order: mOrder, vector: v)
                if p != lastPixel {
                    lastPixel = p
                    candidates = candidateShards(p)
                    neighbourhood = (HEALPix.neighbours(order: mOrder, pixel: p) + [p]).filter { $0 >= 0 }.sorted()
                }
                if candidates.isEmpty { continue }
                // The cone lies within the pixel's neighbourhood: search only there.
                let cone = HEALPix.indexRanges(of: ConeRegion(center: v, radius: radius), resolution: fine, within: neighbourhood, rootOrder: mOrder)
                for s in candidates {
                    let r = shards[s].indexRange
                    if cone.contains(where: { $0.lowerBound < r.upperBound && r.lowerBound < $0.upperBound }) {
                        shards[s].margin.append(row)
                    }
                }
            }
            /// Shards other than `home` meeting pixel `p`'s neighbourhood at the margin order.
            func candidateShards(_ p: Int64) -> [Int] {
                var candidates: [Int] = []
                for n in HEALPix.neighbours(order: mOrder, pixel: p) + [p] where n >= 0 {
                    // Every shard that overlaps the neighbour pixel: it may be coarser or finer.
                    let range = HEALPix.children(n, order: mOrder, to: HEALPix.maxOrder)
                    var idx = range.lowerBound
                    while idx < range.upperBound, let s = shardOf(idx) ?? nextShard(after: idx, starts) {
                        if shards[s].indexRange.lowerBound >= range.upperBound { break }
                        if s != home && !candidates.contains(s) { candidates.append(s) }
                        idx = shards[s].indexRange.upperBound
                    }
                }
                return candidates
            }
        }
    }

    static func nextShard(after index: Int64, _ starts: [Int64]) -> Int? {
        var lo = 0, hi = starts.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if starts[mid] <= index { lo = mid + 1 } else { hi = mid }
        }
        return lo < starts.count ? lo : nil
    }
}
