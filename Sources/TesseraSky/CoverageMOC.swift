/// A sky coverage as an IVOA Multi-Order Coverage map (MOC 2.0, space only): HEALPix nested
/// cells of several orders, none inside another, every complete set of four siblings merged
/// into their parent (the normal form the standard asks for).
public struct CoverageMOC: Sendable, Equatable {
    /// The finest order it was made at (MOCORDER).
    public let maxOrder: Int
    /// Cells by order, each list ascending.
    public let cells: [Int: [Int64]]

    /// The coverage of `pixels` at `order` (duplicates and any order of them allowed).
    public init(order: Int, pixels: some Sequence<Int64>) {
        precondition((0...HEALPix.maxOrder).contains(order))
        maxOrder = order
        var out: [Int: [Int64]] = [:]
        var level = Array(Set(pixels.filter { $0 >= 0 && $0 < HEALPix.pixelCount(order) })).sorted()
        var o = order
        while o >= 0 {
            // Parents whose four children are all present move up; the rest stay at this order.
            var parents: [Int64] = []
            var keep: [Int64] = []
            var i = 0
            while i < level.count {
                let p = level[i]
                if o > 0, p & 3 == 0, i + 3 < level.count, level[i + 3] == p + 3 {
                    parents.append(p >> 2)
                    i += 4
                } else {
                    keep.append(p)
                    i += 1
                }
            }
            if !keep.isEmpty { out[o] = keep }
            level = parents
            o -= 1
        }
        cells = out
    }

    /// Each cell as NUNIQ (4 × 4^order + pixel), ascending by order then pixel.
    public var nuniq: [Int64] {
        cells.keys.sorted().flatMap { o in cells[o, default: []].map { (4 << (2 * Int64(o))) + $0 } }
    }

    /// MOC's JSON form: `{"ORDER": [pixels], ...}` (MOC 2.0 §4.3.2).
    public var json: String {
        "{" + cells.keys.sorted().map { o in "\"\(o)\":[" + cells[o, default: []].map(String.init).joined(separator: ",") + "]" }.joined(separator: ",") + "}"
    }

    /// Whether the order-`maxOrder` pixel `p` is covered.
    public func contains(pixel p: Int64) -> Bool {
        for (o, list) in cells {
            let parent = p >> (2 * Int64(maxOrder - o))
            if binarySearch(list, parent) { return true }
        }
        return false
    }

    private func binarySearch(_ a: [Int64], _ v: Int64) -> Bool {
        var lo = 0, hi = a.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if a[mid] < v { lo = mid + 1 } else { hi = mid }
        }
        return lo < a.count && a[lo] == v
    }
}
