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
        partition(SkyHistogram(sortedIndex: sortedIndex), maxRows: maxRows, minOrder: minOrder, maxOrder: maxOrder)
    }

    /// The same cut from row counts per pixel: shards are then no finer than the histogram's order.
    /// Row ranges are positions in the index-sorted order of all rows.
    public static func partition(_ h: SkyHistogram, maxRows: Int, minOrder: Int = 0, maxOrder: Int = 20) -> [ShardPlan] {
        let maxOrder = min(maxOrder, h.order)
        precondition(maxRows > 0 && minOrder <= maxOrder && maxOrder <= HEALPix.maxOrder)
        var out: [ShardPlan] = []
        // A pixel's entries are a contiguous run of the sorted pixels: find it by binary search.
        func lowerBound(_ v: Int64, _ lo: Int, _ hi: Int) -> Int {
            var lo = lo, hi = hi
            while lo < hi {
                let mid = (lo + hi) / 2
                if h.pixels[mid] < v { lo = mid + 1 } else { hi = mid }
            }
            return lo
        }
        /// The first histogram pixel past pixel `p` of `order`.
        func end(_ p: Int64, _ order: Int, _ lo: Int, _ hi: Int) -> Int {
            lowerBound((p + 1) << Int64(2 * (h.order - order)), lo, hi)
        }
        func visit(_ order: Int, _ pixel: Int64, _ lo: Int, _ hi: Int) {
            if lo == hi { return }
            let rows = h.cumulative[lo]..<h.cumulative[hi]
            if rows.count <= maxRows || order == maxOrder {
                out.append(ShardPlan(order: order, pixel: pixel, rows: rows))
                return
            }
            var start = lo
            for child in (pixel * 4)..<(pixel * 4 + 4) {
                let stop = end(child, order + 1, start, hi)
                visit(order + 1, child, start, stop)
                start = stop
            }
        }
        var start = 0
        for p in 0..<HEALPix.pixelCount(minOrder) {
            let stop = end(p, minOrder, start, h.pixels.count)
            visit(minOrder, p, start, stop)
            start = stop
        }
        return out
    }

    /// Fills each shard's margin: rows of other shards within `radius` (radians) of the shard's
    /// pixel (see `MarginFinder`), for rows given in index order.
    public static func addMargins(_ shards: inout [ShardPlan], ra: [Double], dec: [Double], radius: Double) {
        guard !shards.isEmpty, radius > 0 else { return }
        var finder = MarginFinder(shards: shards.map(\.indexRange), radius: radius)
        for home in shards.indices {
            for row in shards[home].rows {
                let index = HEALPix.spatialIndex(ra: ra[row], dec: dec[row])
                for s in finder.shards(takingRowAt: index, ra: ra[row], dec: dec[row], home: home) { shards[s].margin.append(row) }
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

/// Rows per HEALPix pixel at one order, for partitioning a catalog without holding a value per
/// row: a first pass over the inputs adds each file's spatial indexes.
public struct SkyHistogram: Sendable, Equatable {
    public let order: Int
    /// Occupied pixels, ascending.
    public private(set) var pixels: [Int64] = []
    /// Rows in pixels before each position: `cumulative[i + 1] - cumulative[i]` rows in `pixels[i]`.
    public private(set) var cumulative: [Int] = [0]

    public init(order: Int) {
        precondition(order >= 0 && order <= HEALPix.maxOrder)
        self.order = order
    }

    /// Every row's order-29 index, ascending, as a histogram at order 29.
    public init(sortedIndex: [Int64]) {
        order = HEALPix.maxOrder
        (pixels, cumulative) = Self.runs(sortedIndex)
    }

    public var rows: Int { cumulative[cumulative.count - 1] }

    /// Adds rows by their order-29 spatial indexes (any order).
    public mutating func add(indexes: [Int64]) {
        let shift = Int64(2 * (HEALPix.maxOrder - order))
        let (newPixels, newCumulative) = Self.runs(indexes.map { $0 >> shift }.sorted())
        // Merge two sorted lists of (pixel, rows).
        var p: [Int64] = [], c: [Int] = [0]
        p.reserveCapacity(pixels.count + newPixels.count)
        c.reserveCapacity(pixels.count + newPixels.count + 1)
        var i = 0, j = 0
        while i < pixels.count || j < newPixels.count {
            let a = i < pixels.count ? pixels[i] : .max, b = j < newPixels.count ? newPixels[j] : .max
            let px = min(a, b)
            var n = 0
            if a == px { n += cumulative[i + 1] - cumulative[i]; i += 1 }
            if b == px { n += newCumulative[j + 1] - newCumulative[j]; j += 1 }
            p.append(px)
            c.append(c[c.count - 1] + n)
        }
        (pixels, cumulative) = (p, c)
    }

    /// Distinct values of a sorted list, with cumulative counts.
    static func runs(_ sorted: [Int64]) -> ([Int64], [Int]) {
        var p: [Int64] = [], c: [Int] = [0]
        for (i, v) in sorted.enumerated() where i == 0 || v != sorted[i - 1] {
            if i > 0 { c.append(i) }
            p.append(v)
        }
        if !sorted.isEmpty { c.append(sorted.count) }
        return (p, c)
    }
}

/// Which shards' margins a row belongs to: the other shards within `radius` (radians) of it.
///
/// Rows far from every shard boundary are ruled out by a cheap test (the shards that meet their
/// pixel's neighbourhood at an order whose pixels are wider than the radius); for the rest, the
/// cone of the radius around the row is covered at an order whose pixels are at most 1/16 of it,
/// and the row joins the margin of every other shard that cover touches. So a margin holds every
/// row within the radius, and perhaps some up to 1/8 of the radius further (readers filter by
/// exact distance). Rows may come in any order; each neighbourhood's candidates are worked out once.
public struct MarginFinder {
    let ranges: [Range<Int64>]
    let starts: [Int64]
    let radius: Double
    let coarse: Int
    let fine: Int
    var candidates: [Int64: [Int]] = [:]

    /// - Parameter shards: the shards' order-29 index ranges, ascending and disjoint.
    public init(shards: [Range<Int64>], radius: Double) {
        ranges = shards
        starts = shards.map(\.lowerBound)
        self.radius = radius
        // (A quarter of the largest pixel radius is a safe lower bound on any pixel's width.)
        var c = 0
        while c < HEALPix.maxOrder && HEALPix.maxPixelRadius(order: c + 1) * 0.25 > radius { c += 1 }
        var f = c
        while f < HEALPix.maxOrder && HEALPix.maxPixelRadius(order: f) > radius / 16 { f += 1 }
        coarse = c
        fine = f
    }

    /// Shards other than `home` whose margin takes the row at (`ra`, `dec`) in degrees, whose
    /// order-29 spatial index is `index`.
    public mutating func shards(takingRowAt index: Int64, ra: Double, dec: Double, home: Int) -> [Int] {
        guard radius > 0, !ranges.isEmpty else { return [] }
        // The coarse pixel from the index (nested: a parent is its child's index shifted), with
        // no trigonometry: most rows stop at the next test.
        let p = index >> Int64(2 * (HEALPix.maxOrder - coarse))
        let candidates = neighbourhoodShards(p)
        if candidates.count == 1 && candidates[0] == home { return [] }
        let near = candidates.filter { $0 != home }
        if near.isEmpty { return [] }
        // The cone lies within the pixel's neighbourhood: search only there, and only the part
        // of it in each candidate shard.
        let cone = ConeRegion(center: Vec3(ra: ra, dec: dec), radius: radius)
        // Worked out again rather than cached beside the candidates: a cache of it per pixel
        // cost 240 MiB of client memory on 20M rows and no time (measured).
        let neighbourhood = (HEALPix.neighbours(order: coarse, pixel: p) + [p]).filter { $0 >= 0 }
        return near.filter { HEALPix.region(cone, meets: ranges[$0], resolution: fine, within: neighbourhood, rootOrder: coarse) }
    }

    /// Every shard that overlaps pixel `p`'s neighbourhood at the coarse order (shards may be
    /// coarser or finer than it).
    mutating func neighbourhoodShards(_ p: Int64) -> [Int] {
        if let known = candidates[p] { return known }
        var found: [Int] = []
        for n in HEALPix.neighbours(order: coarse, pixel: p) + [p] where n >= 0 {
            let range = HEALPix.children(n, order: coarse, to: HEALPix.maxOrder)
            var idx = range.lowerBound
            while idx < range.upperBound, let s = shard(containing: idx) ?? SkyPartitioner.nextShard(after: idx, starts) {
                if ranges[s].lowerBound >= range.upperBound { break }
                if !found.contains(s) { found.append(s) }
                idx = ranges[s].upperBound
            }
        }
        candidates[p] = found
        return found
    }

    /// The shard whose range holds `index`, if any.
    public func shard(containing index: Int64) -> Int? {
        var lo = 0, hi = starts.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if starts[mid] <= index { lo = mid + 1 } else { hi = mid }
        }
        let s = lo - 1
        return s >= 0 && ranges[s].contains(index) ? s : nil
    }
}
