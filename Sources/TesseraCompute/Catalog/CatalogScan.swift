import SwiftProtobuf
import TesseraProtocol
import TesseraSky
import TesseraStorage

/// The leaf of every catalog question: one shard read on the worker that holds it, reduced to a
/// `CatalogPartial`.
///
/// Row groups are skipped when the region misses their spatial-index range or when the filter's
/// simple conjuncts (`column op number`, a bare boolean column) cannot hold given the chunk's
/// min/max; the filter's columns are decoded first and the others only for row groups with
/// rows passing; every step is a loop over the row group's contiguous columns.
///
/// Each row group is reduced on its own and the shard's answer folds them in ascending order
/// (``ScanAccumulator/absorb(_:)``): a question that joins a shared pass mid-shard
/// (``SharedShardPass``) folds the same pieces in the same order, so its answer is the solo
/// answer to the last bit.
public enum CatalogScan {
    /// - Parameters:
    ///   - raColumn, decColumn: position columns, read when the plan has a region.
    public static func scan(_ q: CheckedCatalogQuery, reader: ShardReader, raColumn: String, decColumn: String,
                            isCancelled: () -> Bool = { false }) throws(CatalogQueryError) -> CatalogPartial {
        var acc = try accumulate(q, reader: reader, raColumn: raColumn, decColumn: decColumn, isCancelled: isCancelled)
        return try acc.finish()
    }

    /// The same answer as ``scan(_:reader:raColumn:decColumn:isCancelled:)``, as the partial's
    /// wire bytes: a collect's rows go from the decoded row groups into the message with no copy
    /// in between (identical bytes to serialising the partial).
    public static func scanSerialized(_ q: CheckedCatalogQuery, reader: ShardReader, raColumn: String, decColumn: String,
                                      isCancelled: () -> Bool = { false }) throws(CatalogQueryError) -> [UInt8] {
        var acc = try accumulate(q, reader: reader, raColumn: raColumn, decColumn: decColumn, isCancelled: isCancelled)
        return try acc.serializedPartial()
    }

    /// The scan's accumulated answer, before it becomes a partial (``ScanAccumulator/finish()``)
    /// or the partial's wire bytes (``ScanAccumulator/serializedPartial()``).
    static func accumulate(_ q: CheckedCatalogQuery, reader: ShardReader, raColumn: String, decColumn: String,
                           isCancelled: () -> Bool) throws(CatalogQueryError) -> ScanAccumulator {
        let plan = try ShardScanPlan(q, reader: reader, raColumn: raColumn, decColumn: decColumn)
        var acc = plan.accumulator()
        for g in plan.groups {
            if isCancelled() { throw CatalogQueryError("cancelled", retryable: true) }
            let piece = try plan.scan(rowGroup: g) { (c) throws(ShardError) in try reader.read(column: c, rowGroup: g) }
            if try acc.absorb(piece) { break }
        }
        return acc
    }

    /// A stored column as expression values: Float32 and Int64 as stored, smaller integers as Float64 (exact).
    static func vector(_ c: ColumnData) -> ExpressionVector {
        switch c {
        case .bool(let a): .booleans(a)
        case .float32(let a): .floats(a)
        // Kept exact for comparisons (ids beyond 2^53); other uses widen it.
        case .int64(let a): .integers(a)
        default: .numbers(c.doubles)
        }
    }
}

/// One question's part of a shard scan: the columns it reads, its region's index ranges inside
/// the shard, the row groups it must visit (after pruning), and its filter cheapest part first.
struct ShardScanPlan {
    let q: CheckedCatalogQuery
    let raColumn: String, decColumn: String
    /// The shard's row groups this question reads, ascending.
    let groups: [Int]
    /// Rows of each of the shard's row groups.
    let groupRows: [Int]
    /// Every column the question reads, with its number in the shard.
    let columnNumbers: [(name: String, number: Int)]
    /// The columns the filter and the region read: decoded first, the others only for row
    /// groups with rows passing.
    let filterColumns: Set<String>
    let indexColumnNumber: Int?
    let regionRanges: [Range<Int64>]
    let conjuncts: [CheckedExpression]
    /// The canonical texts of every subexpression that calls a function, in the filter and the
    /// output: what a shared pass may compute once for several questions.
    let functionSubexpressions: Set<String>
    /// The columns the output's expressions read (not those only the filter reads), and
    /// whether the output reads the rows' index: what a selective filter's survivors are
    /// gathered from. Neither, for a count: the mask alone answers it.
    let outputColumns: Set<String>
    let outputReadsIndex: Bool
    /// For a rows question, its columns with none of its rows: each stored column's type from
    /// the shard's footer, an expression's doubles. A shard with no row passing still names
    /// them (a CSV's header, a FITS table's columns).
    let noRows: (names: [String], columns: [RowValues])?

    init(_ q: CheckedCatalogQuery, reader: ShardReader, raColumn: String, decColumn: String) throws(CatalogQueryError) {
        self.q = q
        self.raColumn = raColumn
        self.decColumn = decColumn
        let footer = reader.footer
        var names = q.columns
        if q.region != nil { for c in [raColumn, decColumn] where !names.contains(c) { names.append(c) } }
        var numbers: [(String, Int)] = []
        var columnIndex: [String: Int] = [:]
        do {
            for n in names {
                let i = try reader.columnIndex(n)
                numbers.append((n, i))
                columnIndex[n] = i
            }
        } catch {
            throw CatalogQueryError("\(error)")   // a column this shard lacks: the same on every copy
        }
        columnNumbers = numbers
        if case .rows(let select, _) = q.output {
            noRows = (select.map(\.name), select.map { s in
                guard let c = s.column, let i = columnIndex[c], i < footer.columns.count else { return .doubles([]) }
                return RowValues(ColumnData.empty(footer.columns[i].type))
            })
        } else {
            noRows = nil
        }
        let indexColumn = footer.indexColumn
        var needsIndex = q.region != nil
        switch q.output {
        case .skyMap: needsIndex = true
        // Heads and top-k lists merge by index, samples draw by it; a plain collect needs none
        // (reading it would decode and checksum a fifth more bytes per row than it returns).
        case .rows: needsIndex = needsIndex || q.plan.rows.limit > 0 || q.plan.rows.sampleFraction > 0
        default: break
        }
        indexColumnNumber = needsIndex ? footer.columns.firstIndex { $0.name == indexColumn } : nil
        if needsIndex && indexColumnNumber == nil {
            throw CatalogQueryError("shard \(reader.path) has no spatial index column `\(indexColumn)`")
        }

        regionRanges = q.region.map { Self.indexRanges(of: $0, in: footer) } ?? []
        var groups = q.region == nil ? Array(reader.ownRowGroups) : reader.rowGroups(overlapping: regionRanges)
        let bounds = q.filter.map { ColumnBound.conjuncts(of: $0.expression) } ?? []
        if !bounds.isEmpty {
            groups = groups.filter { g in
                bounds.allSatisfy { b in
                    guard let c = columnIndex[b.column] else { return true }
                    let rg = footer.rowGroups[g]
                    return b.mayHold(in: rg.chunks[c], rows: rg.rows)
                }
            }
        }
        self.groups = groups
        groupRows = footer.rowGroups.map { Int($0.rows) }
        conjuncts = q.filter.map(FilterPlan.conjuncts) ?? []
        var filterColumns = Set(conjuncts.flatMap(\.columns))
        if q.region != nil { filterColumns.formUnion([raColumn, decColumn]) }
        self.filterColumns = filterColumns
        var outputs: [CheckedExpression] = []
        switch q.output {
        case .aggregates(let g, let m, let s): outputs = (g.map { [$0] } ?? []) + m + s
        case .histogram(let x, let y): outputs = [x] + (y.map { [$0] } ?? [])
        case .skyMap(_, let e): outputs = e.map { [$0] } ?? []
        case .rows(let select, let sortBy): outputs = select.filter { $0.column == nil }.map(\.expression) + (sortBy.map { [$0] } ?? [])
        }
        functionSubexpressions = (conjuncts + outputs).reduce(into: Set<String>()) { $0.formUnion($1.expression.subexpressionsCallingFunctions) }
        outputColumns = Set(outputs.flatMap(\.columns))
        switch q.output {
        case .skyMap, .rows: outputReadsIndex = true
        case .aggregates, .histogram: outputReadsIndex = false
        }
    }

    /// A region's index ranges inside a shard's own pixel only: a wide region or a many-sided
    /// polygon then costs each shard its own share of the boundary, not all of it.
    static func indexRanges(of region: any SkyRegion, in footer: Tessera_V1_ShardFooter) -> [Range<Int64>] {
        let ownPixel = ShardKey.pixelProblem(order: Int(footer.order), pixel: footer.pixel) == nil && footer.order <= 14
        return ownPixel ? HEALPix.indexRanges(of: region, resolution: 14, within: [footer.pixel], rootOrder: Int(footer.order)) : HEALPix.indexRanges(of: region)
    }

    /// The rows of a group whose (ascending) index lies in `range`.
    static func rows(of range: Range<Int64>, in index: [Int64]) -> Range<Int> {
        func firstAtLeast(_ v: Int64) -> Int {
            var lo = 0, hi = index.count
            while lo < hi {
                let mid = (lo + hi) / 2
                if index[mid] < v { lo = mid + 1 } else { hi = mid }
            }
            return lo
        }
        let start = firstAtLeast(range.lowerBound)
        return start..<max(start, firstAtLeast(range.upperBound))
    }

    /// The shard's answer before any row group: what each row group's piece folds into.
    func accumulator() -> ScanAccumulator {
        var acc = ScanAccumulator(q)
        acc.partial.shards = 1
        if case .rows = q.output, q.plan.rows.limit == 0 {
            // A collect keeps each row group's columns as they are, and writes them into the
            // answer once (growing one array per column would copy them about three times).
            acc.rows.keepsChunks = true
        }
        if let noRows { acc.rows.append(names: noRows.names, values: noRows.columns, index: [], sortKeys: nil) }
        return acc
    }

    /// Row group `g` reduced on its own (columns come from `read`, by their number in the shard;
    /// `shared`: subexpressions other questions of a shared pass also compute over it).
    func scan(rowGroup g: Int, shared: SharedValues? = nil, read: (Int) throws(ShardError) -> ColumnData) throws(CatalogQueryError) -> ScanAccumulator {
        var acc = ScanAccumulator(q)
        if case .rows = q.output, q.plan.rows.limit == 0 { acc.rows.keepsChunks = true }
        let rows = groupRows[g]
        var cols: [String: ExpressionVector] = [:]
        // As stored, for row results (integers keep their exact values).
        var stored: [String: ColumnData] = [:]
        var index: [Int64] = []
        func load(_ filterPart: Bool) throws(CatalogQueryError) {
            do {
                for (n, c) in columnNumbers where filterColumns.contains(n) == filterPart {
                    let data = try read(c)
                    if q.returnsRows { stored[n] = data }
                    cols[n] = CatalogScan.vector(data)
                }
            } catch {
                // A corrupt chunk: another replica may be whole.
                throw CatalogQueryError("\(error)", retryable: true)
            }
        }
        try load(true)
        do {
            if let ic = indexColumnNumber, case .int64(let a) = try read(ic) { index = a }
        } catch {
            throw CatalogQueryError("\(error)", retryable: true)
        }
        var keep: [Bool]
        if let region = q.region, let raValues = cols[raColumn], let decValues = cols[decColumn] {
            let ra = raValues.numbers(rows), dec = decValues.numbers(rows)
            // Rows ascend by index: each of the region's ranges is one span of rows, found by
            // binary search. A region that spans few of the group's rows (a cone search) gets the
            // exact test on those rows alone, and the filter runs on the rows inside it.
            let spans = index.isEmpty ? [] : regionRanges.map { Self.rows(of: $0, in: index) }
            if !index.isEmpty && spans.reduce(0, { $0 + $1.count }) * 10 < rows * 6 {
                var inside: [Int] = []
                for span in spans {
                    for i in span where region.contains(ra: ra[i], dec: dec[i]) { inside.append(i) }
                }
                keep = FilterPlan.evaluate(conjuncts, columns: cols, rows: rows, shared: shared, among: inside)
            } else if !index.isEmpty {
                keep = FilterPlan.evaluate(conjuncts, columns: cols, rows: rows, shared: shared)
                // Rows ascend by index: a sweep over the region's ranges rules most rows out
                // with one comparison, and only rows inside a range get the exact test.
                var k = 0
                for i in 0..<rows where keep[i] {
                    let x = index[i]
                    while k < regionRanges.count && regionRanges[k].upperBound <= x { k += 1 }
                    keep[i] = k < regionRanges.count && regionRanges[k].lowerBound <= x && region.contains(ra: ra[i], dec: dec[i])
                }
            } else {
                keep = FilterPlan.evaluate(conjuncts, columns: cols, rows: rows, shared: shared)
                for i in 0..<rows where keep[i] { keep[i] = region.contains(ra: ra[i], dec: dec[i]) }
            }
        } else {
            keep = FilterPlan.evaluate(conjuncts, columns: cols, rows: rows, shared: shared)
        }
        acc.partial.rowsScanned = UInt64(rows)
        let matched = GroupLoops.count(keep)
        // Late evaluation: a row group with no row passing never decodes the other columns.
        if matched == 0 { return acc }
        try load(false)
        var n = rows
        var rowMap: [Int]?
        if matched < rows * 6 / 10 && (!outputColumns.isEmpty || outputReadsIndex) {
            // A selective filter: the output's expressions run on the surviving rows only (a
            // count needs no rows: its mask is counted as it is).
            let picked = GroupLoops.indices(where: keep)
            cols = cols.filter { outputColumns.contains($0.key) }.mapValues { $0.gathered(picked) }
            if outputReadsIndex && !index.isEmpty { index = Kernels.gather(index, picked) } else { index = [] }
            keep = [Bool](repeating: true, count: matched)
            n = matched
            rowMap = picked
        }
        _ = try acc.add(rows: n, keep: keep, matched: matched, columns: cols, stored: { (name) throws(CatalogQueryError) in
            guard let c = stored[name] else { throw CatalogQueryError("column `\(name)` was not read") }
            return rowMap.map { c.gathered($0) } ?? c
        }, index: index, shared: shared, rowMap: rowMap)
        return acc
    }
}

/// A filter conjunct a row group's min/max can rule out.
struct ColumnBound: Equatable {
    enum Test: Equatable {
        case less, lessEqual, greater, greaterEqual, equal, isTrue

        /// The test that still holds once both sides are rounded to Doubles (rounding keeps order
        /// but can make unequal integers equal): for integer literals beyond 2^53 against
        /// statistics that are Doubles.
        var inclusive: Test {
            switch self {
            case .less: .lessEqual
            case .greater: .greaterEqual
            default: self
            }
        }
    }
    let column: String
    let test: Test
    let value: Double

    /// The conjuncts of a top-level `and` chain that compare a column with a number.
    static func conjuncts(of e: ExpressionTree) -> [ColumnBound] {
        e.conjuncts.compactMap { part in
            switch part {
            case .column(let c, _):
                ColumnBound(column: c, test: .isTrue, value: 1)
            case .binary(let op, .column(let c, _), .number(let v, _), _):
                test(op).map { ColumnBound(column: c, test: $0, value: v) }
            case .binary(let op, .number(let v, _), .column(let c, _), _):
                // `v < c` is `c > v`.
                test(op.mirrored).map { ColumnBound(column: c, test: $0, value: v) }
            case .binary(let op, .column(let c, _), .integer(let k, _), _):
                test(op).map { ColumnBound(column: c, test: $0.inclusive, value: Double(k)) }
            case .binary(let op, .integer(let k, _), .column(let c, _), _):
                test(op.mirrored).map { ColumnBound(column: c, test: $0.inclusive, value: Double(k)) }
            case .binary(let op, let a, let b, _):
                // `mag(column) op number`: a bound on the column (the magnitude decreases with it).
                if let m = MagnitudeBound(op, a, b), case .column(let c, _) = m.flux {
                    ColumnBound(column: c, test: m.columnTest.test, value: m.columnTest.value)
                } else {
                    nil
                }
            default:
                nil
            }
        }
    }

    static func test(_ op: BinaryOperator) -> Test? {
        switch op {
        case .less: .less
        case .lessEqual: .lessEqual
        case .greater: .greater
        case .greaterEqual: .greaterEqual
        case .equal: .equal
        default: nil
        }
    }

    /// False only when no row of the chunk can pass (statistics cover non-NaN values, and NaN
    /// fails every test here).
    func mayHold(in chunk: Tessera_V1_ColumnChunk, rows: UInt64) -> Bool {
        if chunk.nanCount >= rows { return false }
        let lo = chunk.min, hi = chunk.max
        guard !lo.isNaN, !hi.isNaN else { return true }
        switch test {
        case .less: return lo < value
        case .lessEqual: return lo <= value
        case .greater: return hi > value
        case .greaterEqual: return hi >= value
        case .equal: return lo <= value && value <= hi
        case .isTrue: return hi != 0
        }
    }
}

/// Numpy's bins: equal bins over [lo, hi] with edges from `linspace`, each half-open except the
/// last, which is closed; a value's bin is found from its position and corrected against the
/// edges, as `np.histogram` does, so values on an edge fall where numpy puts them.
struct Bins: Sendable {
    let lo: Double, hi: Double, count: Int
    let norm: Double, step: Double
    /// `linspace(lo, hi, count + 1)`: edge k is k·step + lo, the last one `hi` itself. Made when
    /// an answer is written, not with the bins: each row group's piece of a scan makes its own
    /// `Bins`, and ten million bins' edges are 80 MB.
    var edges: [Double] {
        var e = (0...count).map { Double($0) * step + lo }
        e[count] = hi
        return e
    }
    /// The largest scaled value that converts to the last bin.
    let lastScaled: Double

    init(count: Int, lo: Double, hi: Double) {
        self.lo = lo
        self.hi = hi
        self.count = count
        norm = Double(count) / (hi - lo)
        step = (hi - lo) / Double(count)
        lastScaled = Double(count) - 0.5
    }

    /// The bin of `v` clamped into [lo, hi], and whether `v` is inside (1) or NaN or outside
    /// (0). No branch depends on the value: values outside the range are a random fraction of
    /// the rows (faint magnitudes), and branches on them mispredicted (measured: half of twenty
    /// shared-pass questions' time). Hence only min, max and comparisons turned into integers:
    /// the clamp is a max and a min (NaN goes to `lo`), the value is inside exactly when the
    /// clamp left it as it was, the scaled value is capped below `count` by a min, and the
    /// rounding fix-up (a value that scaling moved next to the edges `linspace` gives) adds
    /// the two comparisons with the bin's edges, computed as `edges` has them (edge j is
    /// j·step + lo; the last bin is closed, so nothing moves up out of it). The conversion
    /// never sees NaN or ±∞. `slots(_:)` is the same, four values at a time.
    @inline(__always) func slot(_ v: Double) -> (bin: Int, inside: UInt8) {
        let above = v > lo ? v : lo
        let c = above < hi ? above : hi
        let inside: UInt8 = c == v ? 1 : 0
        // The plan's check keeps `norm` finite; x is then within [0, count] (a hair over `count`
        // at `hi` after rounding).
        let x = (c - lo) * norm
        let j = Int(x < lastScaled ? x : lastScaled)
        let below = Double(j) * step + lo, next = Double(j &+ 1) * step + lo
        // c ≥ lo = edge 0, so the first never moves bin 0 below 0.
        return (j &- (c < below ? 1 : 0) &+ ((c >= next ? 1 : 0) & (j &+ 1 < count ? 1 : 0)), inside)
    }

    /// `slot(_:)` of four values: their bins, and −1 where a value is inside (0 where it is NaN
    /// or outside). The scaled value's integer part comes from rounding it to an integer by
    /// adding 1.5·2⁵² (its low bits are then the integer), less one where that rounded up: the
    /// library's conversion of a vector goes lane by lane through generic code.
    @inline(__always) func slots(_ v: SIMD4<Double>) -> (bins: SIMD4<Int64>, inside: SIMD4<Int64>) {
        let vlo = SIMD4<Double>(repeating: lo), vhi = SIMD4<Double>(repeating: hi), vstep = SIMD4<Double>(repeating: step)
        let above = vlo.replacing(with: v, where: v .> vlo)
        let c = vhi.replacing(with: above, where: above .< vhi)
        let inside = unsafeBitCast(c .== v, to: SIMD4<Int64>.self)
        let scaled = (c - vlo) * SIMD4<Double>(repeating: norm)
        let x = SIMD4<Double>(repeating: lastScaled).replacing(with: scaled, where: scaled .< SIMD4<Double>(repeating: lastScaled))
        let magic = SIMD4<Double>(repeating: 6_755_399_441_055_744)   // 1.5·2⁵²
        let rounded = x + magic
        var whole = rounded - magic
        let roundedUp = whole .> x
        whole = whole.replacing(with: whole - 1, where: roundedUp)
        // Mask lanes are −1 where true.
        let j = (unsafeBitCast(rounded, to: SIMD4<Int64>.self) &- unsafeBitCast(magic, to: SIMD4<Int64>.self))
            &+ unsafeBitCast(roundedUp, to: SIMD4<Int64>.self)
        let below = whole * vstep + vlo, next = (whole + 1) * vstep + vlo
        let up = (c .>= next) .& (whole .< SIMD4<Double>(repeating: Double(count - 1)))
        return (j &+ unsafeBitCast(c .< below, to: SIMD4<Int64>.self) &- unsafeBitCast(up, to: SIMD4<Int64>.self), inside)
    }
}

/// Rows' histogram bins, as `ScanAccumulator.count(into:rows:keep:bins:)` reads them: a type
/// of its own rather than closures, which stayed a call per four rows.
protocol HistogramRows {
    /// Rows i..<i + 4: their bins, and −1 where each is inside the range (0 outside or NaN).
    func four(_ i: Int) -> (bins: SIMD4<Int64>, inside: SIMD4<Int64>)
    /// Row i: its bin, and 1 when it is inside.
    func one(_ i: Int) -> (bin: Int, inside: UInt8)
}

/// A 1-D histogram's values (valid while the rows are counted).
struct OneAxisRows: HistogramRows {
    let xs: UnsafePointer<Double>
    let x: Bins
    @inline(__always) func four(_ i: Int) -> (bins: SIMD4<Int64>, inside: SIMD4<Int64>) {
        x.slots(UnsafeRawPointer(xs + i).loadUnaligned(as: SIMD4<Double>.self))
    }
    @inline(__always) func one(_ i: Int) -> (bin: Int, inside: UInt8) { x.slot(xs[i]) }
}

/// A 2-D histogram's two axes, x major.
struct TwoAxesRows: HistogramRows {
    let x: OneAxisRows, y: OneAxisRows
    @inline(__always) func four(_ i: Int) -> (bins: SIMD4<Int64>, inside: SIMD4<Int64>) {
        let (bx, ix) = x.four(i), (by, iy) = y.four(i)
        return (bx &* SIMD4<Int64>(repeating: Int64(y.x.count)) &+ by, ix & iy)
    }
    @inline(__always) func one(_ i: Int) -> (bin: Int, inside: UInt8) {
        let (bx, ix) = x.one(i), (by, iy) = y.one(i)
        return (bx &* y.x.count &+ by, ix & iy)
    }
}

/// What one shard scan builds up, in flat arrays; turned into a `CatalogPartial` once.
struct ScanAccumulator {
    let q: CheckedCatalogQuery
    var partial = CatalogPartial()

    // Aggregates.
    var slotOfKey: [UInt64: Int32] = [:]
    var keys: [Double] = []
    var groupRows: [UInt64] = []
    var moments: [[Moments]] = []
    var sketches: [[QuantileSketch]] = []
    var lastKeyBits: UInt64 = 0x7FF8_0000_0000_0001   // a NaN: no key has these bits
    var lastSlot: Int32 = 0
    // Keys of an Int64 column, kept exact (ids beyond 2^53 would share a Double).
    var intSlotOfKey: [Int64: Int32] = [:]
    var intKeys: [Int64] = []
    var lastIntKey: Int64?

    // Histogram.
    var xBins: Bins?
    var yBins: Bins?
    /// The counts, made when the first row is counted (empty until then): a row group's piece
    /// with no row in it holds none of a large histogram's bins, in a shared pass's waiting
    /// pieces too.
    var histogram: [UInt64] = []
    var histogramBins = 0
    /// A histogram of more bins than `sparseHistogramBins` is counted by its pieces as the bins
    /// of the rows they counted, folded into the counts when a piece is absorbed: a count per
    /// bin was made, zeroed and summed for every row group (80 MB for ten million bins, so a
    /// question joining a shared pass mid-way held 80 MB for each of its waiting pieces, and
    /// the zeroing and summing cost far more than the row group's rows).
    var histogramHits: [UInt32] = []
    /// A row group has at most 65,536 rows: a piece's rows' bins are then never more than this
    /// many counts would be (a cross-match's piece, up to `Limits.crossmatchPairsPerRowGroup`
    /// pairs, 16 MB of them).
    static let sparseHistogramBins = 65_536

    // Sky map.
    var pixels: [UInt64] = []
    var pixelCounts: [UInt64] = []
    var pixelSums: [Double] = []
    var pixelValueCounts: [UInt64] = []

    // Rows.
    var rows = RowBatchBuilder()

    init(_ q: CheckedCatalogQuery) {
        self.q = q
        switch q.output {
        case .aggregates(let g, let m, let s):
            moments = m.map { _ in [] }
            sketches = s.map { _ in [] }
            if g == nil { _ = newSlot(for: 0) }
        case .histogram(_, let y):
            let h = q.plan.histogram
            xBins = Bins(count: Int(h.xBins), lo: h.xMin, hi: h.xMax)
            if y != nil { yBins = Bins(count: Int(h.yBins), lo: h.yMin, hi: h.yMax) }
            histogramBins = Int(h.xBins) * Int(y == nil ? 1 : h.yBins)
        case .skyMap, .rows:
            break
        }
    }

    mutating func newGroup() -> Int32 {
        let s = Int32(groupRows.count)
        groupRows.append(0)
        for e in moments.indices { moments[e].append(Moments()) }
        for e in sketches.indices { sketches[e].append(QuantileSketch()) }
        return s
    }

    mutating func newSlot(for key: Double) -> Int32 {
        let s = newGroup()
        keys.append(key)
        slotOfKey[key.bitPattern] = s
        return s
    }

    /// The group of a Float64 key (−0 already made 0), made if new, within the group limit.
    mutating func slot(for key: Double) throws(CatalogQueryError) -> Int32 {
        if let found = slotOfKey[key.bitPattern] { return found }
        guard groupRows.count < q.maxGroups else { throw tooManyGroups() }
        return newSlot(for: key)
    }

    /// The group of an Int64 key, made if new, within the group limit.
    mutating func slot(for key: Int64) throws(CatalogQueryError) -> Int32 {
        if let found = intSlotOfKey[key] { return found }
        guard groupRows.count < q.maxGroups else { throw tooManyGroups() }
        let s = newGroup()
        intKeys.append(key)
        intSlotOfKey[key] = s
        return s
    }

    /// Each counted row's group for a Float64 key (NaN keys do not count; -0 and 0 are one
    /// group); rows that do not count keep the slot before them.
    mutating func assignSlots(_ keyValues: [Double], _ slots: inout [Int32], _ valid: inout [Bool]) throws(CatalogQueryError) {
        let n = keyValues.count
        var lastBits = lastKeyBits, last = lastSlot
        var i = 0
        // Row by row up to here: a block of sixteen had a row leave its run (short runs then do
        // not pay for a block at every key).
        var rowByRowUntil = 0
        while i < n {
            // Spatially sorted rows come in runs of one key: the table is consulted per run.
            let run = keyValues.withUnsafeBufferPointer { kv in
                valid.withUnsafeMutableBufferPointer { vb in
                    vb.withMemoryRebound(to: UInt8.self) { vp in
                        slots.withUnsafeMutableBufferPointer { sp in
                            // Bools as the bytes they are, combined with & (ternaries on
                            // Bool were compiled to branches elsewhere, measured).
                            var j = i
                            while j < n {
                                // Sixteen rows at a time while they all stay in the run (most
                                // rows): one loop with no exit, which vectorises, writing as if they
                                // do; when one leaves, the row-at-a-time loop below redoes them
                                // (the writes are idempotent: NaN keys clear the same bytes again),
                                // up to the row that leaves or the block's end.
                                if j >= rowByRowUntil && j + 16 <= n {
                                    var leaves: UInt8 = 0
                                    for t in j..<(j + 16) {
                                        let bits = kv[t].bitPattern
                                        let nan = (0x7FF0_0000_0000_0000 &- (bits & 0x7FFF_FFFF_FFFF_FFFF)) >> 63
                                        let counts = vp[t] & UInt8(truncatingIfNeeded: 1 &- nan)
                                        // Its key (-0 as 0) is the run's, or it does not count.
                                        let same = bits == lastBits || (bits << 1 == 0 && lastBits == 0)
                                        leaves |= counts & (same ? 0 : 1)
                                        vp[t] = counts
                                        sp[t] = last
                                    }
                                    if leaves == 0 {
                                        j += 16
                                        continue
                                    }
                                    rowByRowUntil = j + 16
                                }
                                let k = kv[j]
                                // NaN is an exponent of all ones with a non-zero fraction.
                                let nan = (0x7FF0_0000_0000_0000 &- (k.bitPattern & 0x7FFF_FFFF_FFFF_FFFF)) >> 63
                                let counts = vp[j] & UInt8(truncatingIfNeeded: 1 &- nan)
                                // -0 and 0 are one group.
                                let other = (k == 0 ? 0 : k).bitPattern != lastBits
                                if counts & UInt8(other ? 1 : 0) != 0 { break }
                                sp[j] = last
                                vp[j] = counts
                                j += 1
                            }
                            return j
                        }
                    }
                }
            }
            i = run
            if i == n { break }
            let k = keyValues[i] == 0 ? 0 : keyValues[i]
            lastBits = k.bitPattern
            last = try slot(for: k)
        }
        lastKeyBits = lastBits
        lastSlot = last
    }

    /// Each counted row's group for an Int64 key; rows that do not count keep the slot before them.
    mutating func assignIntegerSlots(_ ints: [Int64], _ slots: inout [Int32], _ valid: [Bool]) throws(CatalogQueryError) {
        var last = lastSlot, lastKey = lastIntKey
        for i in 0..<ints.count {
            if valid[i] && ints[i] != lastKey {
                let k = ints[i]
                last = try slot(for: k)
                lastKey = k
            }
            slots[i] = last
        }
        (lastSlot, lastIntKey) = (last, lastKey)
    }

    /// Adds one row group's rows where `keep` is set; true when the scan can stop (a head is full).
    ///   - shared, rowMap: values other questions of a shared pass computed over the whole row
    ///     group, and which of its rows `columns` hold (nil: all).
    mutating func add(rows n: Int, keep: [Bool], matched: Int, columns: [String: ExpressionVector],
                      stored: (String) throws(CatalogQueryError) -> ColumnData, index: [Int64],
                      shared: SharedValues? = nil, rowMap: [Int]? = nil) throws(CatalogQueryError) -> Bool {
        partial.rowsMatched += UInt64(matched)
        if matched == 0 { return false }
        func evaluate(_ e: CheckedExpression) -> ExpressionVector {
            ExpressionEvaluator.evaluate(e, columns: columns, rows: n, known: shared?.lookup(rows: rowMap, count: n))
        }
        switch q.output {
        case .aggregates(nil, let mExprs, let sExprs) where mExprs.isEmpty && sExprs.isEmpty:
            // A count: the rows kept, already counted.
            groupRows[0] += UInt64(matched)
        case .aggregates(let group, let mExprs, let sExprs):
            // First each row's group slot and whether it counts, then one loop per expression.
            // Rows that do not count keep the slot of the row before them: the loops below then
            // weigh them by zero instead of branching on them (a filter that keeps a random 80%
            // of rows would mispredict every fifth branch).
            var slots = [Int32](repeating: 0, count: n)
            var valid = keep
            if let group {
                let keyVector = evaluate(group)
                if case .integers(let ints) = keyVector {
                    try assignIntegerSlots(ints, &slots, valid)
                } else {
                    try assignSlots(keyVector.numbers(n), &slots, &valid)
                }
            }
            // No group yet means no row counted (slot 0 would not exist).
            if groupRows.isEmpty { return false }
            if mExprs.isEmpty { GroupLoops.countRows(slots: slots, valid: valid, into: &groupRows) }
            for (e, expr) in mExprs.enumerated() {
                let v = evaluate(expr).numbers(n)
                let rows = BatchMoments.add(values: v, slots: slots, valid: valid, extremes: q.momentExtremes[e], into: &moments[e])
                // The first expression's pass counts the group's rows too (one loop fewer).
                if e == 0 { for s in 0..<rows.count { groupRows[s] += rows[s] } }
            }
            for (e, expr) in sExprs.enumerated() {
                let v = evaluate(expr).numbers(n)
                for i in 0..<n where valid[i] { sketches[e][Int(slots[i])].add(v[i]) }
            }
            if !sExprs.isEmpty { try QuantileSketch.checkBudget(sketches) }
        case .histogram(let x, let y):
            let xb = xBins!
            if histogram.isEmpty && histogramBins <= Self.sparseHistogramBins { histogram = [UInt64](repeating: 0, count: histogramBins) }
            if let y, let yb = yBins {
                let yValues = evaluate(y)
                let ys = yValues.numbers(n)
                // A colour against a magnitude: x holds y (mag(g) − mag(r) against mag(r)), so
                // y's values are handed to x's evaluation rather than computed again.
                let yText = y.expression.canonical
                let sharedValues = shared?.lookup(rows: rowMap, count: n)
                let xs = ExpressionEvaluator.evaluate(x, columns: columns, rows: n, known: { e in
                    e.canonical == yText ? yValues : sharedValues?(e)
                }).numbers(n)
                Self.count(into: &histogram, hits: &histogramHits, rows: n, keep: keep, xs: xs, xBins: xb, ys: ys, yBins: yb)
            } else {
                Self.count(into: &histogram, hits: &histogramHits, rows: n, keep: keep, xs: evaluate(x).numbers(n), xBins: xb)
            }
        case .skyMap(let order, let expr):
            let shift = Int64(2 * (HEALPix.maxOrder - order))
            let values = expr.map { evaluate($0).numbers(n) }
            for i in 0..<n where keep[i] {
                let p = UInt64(index[i] >> shift)
                if pixels.last != p {
                    // Rows ascend by index within a shard; a shard that breaks that is sorted at the end.
                    pixels.append(p)
                    pixelCounts.append(0)
                    if values != nil { pixelSums.append(0); pixelValueCounts.append(0) }
                }
                pixelCounts[pixelCounts.count - 1] += 1
                if let values, !values[i].isNaN {
                    pixelSums[pixelSums.count - 1] += values[i]
                    pixelValueCounts[pixelValueCounts.count - 1] += 1
                }
            }
        case .rows(let select, let sortBy):
            let spec = q.plan.rows
            var keepRows = keep
            if spec.sampleFraction > 0 {
                for i in 0..<n where keepRows[i] { keepRows[i] = RowBatchBuilder.sampled(index[i], fraction: spec.sampleFraction, seed: spec.sampleSeed) }
            }
            let sortKeys = sortBy.map { evaluate($0).numbers(n) }
            if let sortKeys {
                // NaN has no place in a ranking: such rows are left out of a top-k.
                for i in 0..<n where keepRows[i] && sortKeys[i].isNaN { keepRows[i] = false }
            }
            let picked = GroupLoops.indices(where: keepRows)
            if picked.isEmpty { return false }
            // Every row kept (a collect without a filter): the columns as they are, not a copy.
            let all = picked.count == n
            var values: [RowValues] = []
            for s in select {
                if let c = s.column {
                    values.append(RowValues(all ? try stored(c) : try stored(c).gathered(picked)))
                } else {
                    let v = evaluate(s.expression).numbers(n)
                    values.append(.doubles(all ? v : picked.map { v[$0] }))
                }
            }
            rows.append(names: select.map(\.name), values: values, index: index.isEmpty ? [] : picked.map { index[$0] },
                        sortKeys: sortKeys.map { k in all ? k : picked.map { k[$0] } })
            return try boundRows(sorted: sortBy != nil)
        }
        return false
    }

    /// Adds one to `histogram[bin]` for each kept row inside the range, where `rows.four(i)`
    /// gives rows i..<i + 4's bins (clamped into the range) and −1 where each is inside,
    /// `rows.one(i)` row i's bin and 1 when it is inside (for the last rows). Nothing depends on whether a row
    /// counts: every row adds its 0 or 1 to its bin. A branch on it mispredicted on the random
    /// rows outside (faint magnitudes), and a select of the bin was turned back into branches
    /// by the compiler. The rows of a histogram of up to 1,024 bins go to eight interleaved
    /// copies of it in turn, summed at the end: the rows outside all land in an edge bin, and
    /// with one copy every increment there would wait on the one before. A larger histogram is
    /// counted in place (eight copies of up to ten million bins, cleared and summed per row
    /// group, would cost more than the waits). The bins are found four rows at a time: one at
    /// a time, with the edges read from a table, they were a third of twenty shared-pass
    /// questions' time.
    ///
    /// With no counts (`histogram` empty: a piece of a histogram over `sparseHistogramBins`),
    /// the counted rows' bins are appended to `hits` instead.
    @inline(__always) static func count<Rows: HistogramRows>(into histogram: inout [UInt64], hits: inout [UInt32], rows n: Int, keep: [Bool], bins rows: Rows) {
        if histogram.isEmpty { return collect(into: &hits, rows: n, keep: keep, bins: rows) }
        let bins = histogram.count
        let shift = bins <= 1024 ? 3 : 0, lanes = (1 << shift) - 1
        var copies = shift == 0 ? [] : [UInt64](repeating: 0, count: bins << shift)
        keep.withUnsafeBufferPointer { kp in
            kp.withMemoryRebound(to: UInt8.self) { kb in
                func add(_ h: UnsafeMutableBufferPointer<UInt64>) {
                    var i = 0
                    while i + 4 <= n {
                        let (b, inside) = rows.four(i)
                        for l in 0..<4 {
                            h[(Int(truncatingIfNeeded: b[l]) &<< shift) | ((i | l) & lanes)] &+= UInt64(kb[i | l] & UInt8(truncatingIfNeeded: inside[l]) & 1)
                        }
                        i += 4
                    }
                    while i < n {
                        let (b, inside) = rows.one(i)
                        h[(b &<< shift) | (i & lanes)] &+= UInt64(kb[i] & inside)
                        i += 1
                    }
                }
                if shift == 0 { histogram.withUnsafeMutableBufferPointer { add($0) } } else { copies.withUnsafeMutableBufferPointer { add($0) } }
            }
        }
        guard shift > 0 else { return }
        copies.withUnsafeBufferPointer { h in
            for b in 0..<bins {
                var sum: UInt64 = 0
                for c in 0...lanes { sum &+= h[(b &<< shift) | c] }
                histogram[b] &+= sum
            }
        }
    }

    /// Appends the bin of each kept row inside the range to `hits`, with no branch on whether
    /// it counts: every row's bin is written at the next place, which moves on by its 0 or 1.
    @inline(__always) static func collect<Rows: HistogramRows>(into hits: inout [UInt32], rows n: Int, keep: [Bool], bins rows: Rows) {
        let start = hits.count
        hits.append(contentsOf: repeatElement(0, count: n))
        var end = start
        keep.withUnsafeBufferPointer { kp in
            kp.withMemoryRebound(to: UInt8.self) { kb in
                hits.withUnsafeMutableBufferPointer { h in
                    // The place written is at most `start + i` for row i: inside the room made.
                    var k = start, i = 0
                    while i + 4 <= n {
                        let (b, inside) = rows.four(i)
                        for l in 0..<4 {
                            h[k] = UInt32(truncatingIfNeeded: b[l])
                            k &+= Int(kb[i | l] & UInt8(truncatingIfNeeded: inside[l]) & 1)
                        }
                        i += 4
                    }
                    while i < n {
                        let (b, inside) = rows.one(i)
                        h[k] = UInt32(truncatingIfNeeded: b)
                        k &+= Int(kb[i] & inside)
                        i += 1
                    }
                    end = k
                }
            }
        }
        hits.removeLast(hits.count - end)
    }

    /// A 1-D histogram's rows. Its own small function, so that the bins are inlined into the
    /// loop (inside `add`, too large for the inliner, they stayed a call per row).
    @inline(never) static func count(into histogram: inout [UInt64], hits: inout [UInt32], rows n: Int, keep: [Bool], xs: [Double], xBins xb: Bins) {
        precondition(xs.count >= n)
        xs.withUnsafeBufferPointer { xp in
            guard let base = xp.baseAddress else { return }
            count(into: &histogram, hits: &hits, rows: n, keep: keep, bins: OneAxisRows(xs: base, x: xb))
        }
    }

    /// A 2-D histogram's rows (x major), for the same reason its own function.
    @inline(never) static func count(into histogram: inout [UInt64], hits: inout [UInt32], rows n: Int, keep: [Bool],
                                     xs: [Double], xBins xb: Bins, ys: [Double], yBins yb: Bins) {
        precondition(xs.count >= n && ys.count >= n)
        xs.withUnsafeBufferPointer { xp in
            ys.withUnsafeBufferPointer { yp in
                guard let bx = xp.baseAddress, let by = yp.baseAddress else { return }
                count(into: &histogram, hits: &hits, rows: n, keep: keep, bins: TwoAxesRows(x: OneAxisRows(xs: bx, x: xb), y: OneAxisRows(xs: by, x: yb)))
            }
        }
    }

    /// Adds one to the counts for each bin in `hits` (rows counted as their bins).
    mutating func fold(hits: [UInt32]) {
        guard !hits.isEmpty else { return }
        if histogram.isEmpty { histogram = [UInt64](repeating: 0, count: histogramBins) }
        let bins = histogram.count
        histogram.withUnsafeMutableBufferPointer { h in
            // A bin from the plan's own Bins is below `bins`; the check keeps a bad one from
            // writing out of place.
            for b in hits where Int(b) < bins { h[Int(b)] &+= 1 }
        }
    }

    /// After rows were added: a head keeps its first `limit` rows (true: full, the scan can
    /// stop), a top-k list is trimmed when it has grown well past its limit, a collect must stay
    /// under the row cap.
    mutating func boundRows(sorted: Bool) throws(CatalogQueryError) -> Bool {
        let spec = q.plan.rows
        if spec.limit > 0 {
            let limit = Int(clamping: spec.limit)
            if !sorted {
                // Head: rows come in index order, so the first `limit` are final.
                if rows.count >= limit { rows.trim(to: limit, descending: false); return true }
            } else if rows.count > max(2 * limit, 65_536) {
                rows.trim(to: limit, descending: spec.descending)
            }
        } else if rows.count > q.maxRows {
            throw CatalogQueryError.overRowCap(q.maxRows)
        }
        return false
    }

    /// Folds in one row group's piece (that row group reduced on its own by
    /// ``ShardScanPlan/scan(rowGroup:read:)``); a shard's pieces come in ascending row-group
    /// order, whoever read them. True when the scan can stop (a head is full).
    mutating func absorb(_ piece: ScanAccumulator) throws(CatalogQueryError) -> Bool {
        partial.rowsScanned += piece.partial.rowsScanned
        partial.rowsMatched += piece.partial.rowsMatched
        if piece.partial.rowsMatched == 0 { return false }
        switch q.output {
        case .aggregates(let group, _, _):
            let integerKeys = !piece.intKeys.isEmpty
            for s in piece.groupRows.indices {
                let slot: Int32
                if group == nil {
                    slot = 0
                } else if integerKeys {
                    slot = try self.slot(for: piece.intKeys[s])
                } else {
                    slot = try self.slot(for: piece.keys[s])
                }
                let t = Int(slot)
                groupRows[t] += piece.groupRows[s]
                for e in moments.indices { moments[e][t].merge(piece.moments[e][s]) }
                for e in sketches.indices { sketches[e][t].merge(piece.sketches[e][s]) }
            }
            if !sketches.isEmpty { try QuantileSketch.checkBudget(sketches) }
        case .histogram:
            if histogram.isEmpty {
                histogram = piece.histogram
            } else if !piece.histogram.isEmpty {
                for i in histogram.indices { histogram[i] += piece.histogram[i] }
            }
            fold(hits: piece.histogramHits)
        case .skyMap(_, let expr):
            for j in piece.pixels.indices {
                if j == 0, let last = pixels.last, last == piece.pixels[0] {
                    // A pixel that runs on from the row group before.
                    pixelCounts[pixelCounts.count - 1] += piece.pixelCounts[0]
                    if expr != nil {
                        pixelSums[pixelSums.count - 1] += piece.pixelSums[0]
                        pixelValueCounts[pixelValueCounts.count - 1] += piece.pixelValueCounts[0]
                    }
                    continue
                }
                pixels.append(piece.pixels[j])
                pixelCounts.append(piece.pixelCounts[j])
                if expr != nil {
                    pixelSums.append(piece.pixelSums[j])
                    pixelValueCounts.append(piece.pixelValueCounts[j])
                }
            }
        case .rows(_, let sortBy):
            rows.absorb(piece.rows)
            return try boundRows(sorted: sortBy != nil)
        }
        return false
    }

    func tooManyGroups() -> CatalogQueryError {
        CatalogQueryError("the group-by key `\(q.plan.groupBy)` gives more than \(q.maxGroups) groups (the limit); group by a coarser key or raise max_groups")
    }

    /// The partial's wire bytes. A collect's rows are written from the row groups' columns into
    /// the message directly; anything else is ``finish()`` serialised.
    mutating func serializedPartial() throws(CatalogQueryError) -> [UInt8] {
        guard case .rows = q.output, rows.keepsChunks else { return try Self.bytes(finish()) }
        // Every field but the rows by SwiftProtobuf; the rows field after them (a parser takes
        // fields in any order).
        var out = try Self.bytes(partial)
        rows.appendWireField(Self.rowsField, to: &out)
        return out
    }

    /// `CatalogPartial.rows`'s field number (catalog.proto).
    static let rowsField = 10

    static func bytes(_ p: CatalogPartial) throws(CatalogQueryError) -> [UInt8] {
        do { return try p.serializedBytes() } catch { throw CatalogQueryError("\(error)") }
    }

    /// The partial, with groups in ascending key order and map pixels ascending.
    mutating func finish() throws(CatalogQueryError) -> CatalogPartial {
        switch q.output {
        case .aggregates(let group, _, _):
            let order: [Int]
            if group == nil {
                order = Array(groupRows.indices)
            } else if !intKeys.isEmpty {
                order = intKeys.indices.sorted { intKeys[$0] < intKeys[$1] }
                partial.intGroupKeys = order.map { intKeys[$0] }
            } else {
                order = keys.indices.sorted { keys[$0] < keys[$1] }
                partial.groupKeys = order.map { keys[$0] }
            }
            partial.groupRows = order.map { groupRows[$0] }
            partial.moments = moments.map { col in MomentsColumns(order.map { col[$0] }).proto }
            partial.sketches = sketches.map { col in
                var c = Tessera_V1_SketchColumn()
                c.groups = order.map { col[$0].proto }
                return c
            }
        case .histogram:
            fold(hits: histogramHits)
            histogramHits = []
            partial.histogram = histogram.isEmpty ? [UInt64](repeating: 0, count: histogramBins) : histogram
        case .skyMap(let order, let expr):
            var m = Tessera_V1_SkyMapPartial()
            m.order = UInt32(order)
            m.pixels = pixels
            m.counts = pixelCounts
            if expr != nil { m.sums = pixelSums; m.valueCounts = pixelValueCounts }
            if zip(pixels, pixels.dropFirst()).contains(where: { $0 >= $1 }) {
                m = CatalogMerge.normalized(m)
            }
            partial.skyMap = m
        case .rows:
            if q.plan.rows.limit > 0 { rows.trim(to: Int(clamping: q.plan.rows.limit), descending: q.plan.rows.descending) }
            partial.rows = rows.proto(withIndex: q.plan.rows.limit > 0)
        }
        return partial
    }
}

/// Moments of many groups as the wire's column arrays.
struct MomentsColumns {
    var values: [Moments]
    init(_ values: [Moments]) { self.values = values }

    init(_ p: Tessera_V1_MomentsColumn) throws(CatalogQueryError) {
        let n = p.count.count
        guard [p.mean.count, p.m2.count, p.min.count, p.max.count, p.sum.count].allSatisfy({ $0 == n }) else {
            throw CatalogQueryError("a partial aggregate's moment arrays differ in length")
        }
        values = (0..<n).map { i in
            var m = Moments()
            (m.count, m.mean, m.m2, m.min, m.max, m.sum) = (p.count[i], p.mean[i], p.m2[i], p.min[i], p.max[i], p.sum[i])
            return m
        }
    }

    var proto: Tessera_V1_MomentsColumn {
        var p = Tessera_V1_MomentsColumn()
        p.count = values.map(\.count)
        p.mean = values.map(\.mean)
        p.m2 = values.map(\.m2)
        p.min = values.map(\.min)
        p.max = values.map(\.max)
        p.sum = values.map(\.sum)
        return p
    }
}

/// Adds one batch's values to per-group moments, a run of one group at a time (rows are
/// spatially sorted, so a group's rows come in runs; rows that do not count carry the slot of the
/// row before them and weigh zero).
///
/// A run of a group that already has a mean is summed in one pass as deviations from that mean
/// (the shifted-data algorithm, stable because the shift is the group's mean so far); a group's
/// first run takes two passes, sums and then squared deviations from the run's own mean. Runs
/// merge into the group with Chan's update. No division per value, nothing branches on which
/// rows count, and the sums run in SIMD lanes.
enum BatchMoments {
    /// - Parameter extremes: whether min and max are tracked (they stay ±∞ otherwise).
    /// - Returns: rows that count per group (NaN values included), for the group row counts.
    static func add(values v: [Double], slots: [Int32], valid: [Bool], extremes: Bool, into moments: inout [Moments]) -> [UInt64] {
        // Two copies of the loop, each with `extremes` a constant, so neither tests it per value.
        extremes ? runs(v, slots, valid, true, &moments) : runs(v, slots, valid, false, &moments)
    }

    @inline(__always) static func runs(_ v: [Double], _ slots: [Int32], _ valid: [Bool], _ extremes: Bool, _ moments: inout [Moments]) -> [UInt64] {
        var rows = [UInt64](repeating: 0, count: moments.count)
        v.withUnsafeBufferPointer { v in
            slots.withUnsafeBufferPointer { slots in
                valid.withUnsafeBufferPointer { valid in
                    let n = v.count
                    var i = 0
                    while i < n {
                        let s = slots[i]
                        var j = i + 1
                        // Runs are long (rows sorted by sky position, grouped by a coarse cell):
                        // sixteen slots at a time, as eight pairs compared with the slot twice.
                        let pair = UInt64(UInt32(bitPattern: s)) &* 0x1_0000_0001
                        let raw = UnsafeRawPointer(slots.baseAddress!)
                        while j + 16 <= n {
                            var differs: UInt64 = 0
                            for t in 0..<8 { differs |= raw.loadUnaligned(fromByteOffset: (j + 2 * t) * 4, as: UInt64.self) ^ pair }
                            if differs != 0 { break }
                            j += 16
                        }
                        while j < n && slots[j] == s { j += 1 }
                        let g = Int(s)
                        var run = Moments()
                        if moments[g].count > 0 {
                            let k = moments[g].mean
                            let r = shiftedSums(v.baseAddress!, valid.baseAddress!, i, j, k, extremes)
                            rows[g] += r.rows
                            if r.count > 0 {
                                run.count = r.count
                                run.sum = r.sum
                                run.mean = k + r.shifted / r.count
                                run.m2 = Swift.max(0, r.squares - r.shifted * r.shifted / r.count)
                                run.min = r.min
                                run.max = r.max
                            }
                        } else {
                            // Sums about zero; the squares then come about the run's mean.
                            let r = shiftedSums(v.baseAddress!, valid.baseAddress!, i, j, 0, extremes)
                            rows[g] += r.rows
                            if r.count > 0 {
                                run.count = r.count
                                run.sum = r.sum
                                run.mean = r.sum / r.count
                                run.m2 = squares(v.baseAddress!, valid.baseAddress!, i, j, run.mean)
                                run.min = r.min
                                run.max = r.max
                            }
                        }
                        moments[g].merge(run)
                        i = j
                    }
                }
            }
        }
        return rows
    }

    /// One pass: rows counted, non-NaN values, their sum, Σ(x − k), Σ(x − k)², min and max.
    @inline(__always) static func shiftedSums(_ v: UnsafePointer<Double>, _ valid: UnsafePointer<Bool>, _ a: Int, _ b: Int, _ k: Double, _ extremes: Bool)
        -> (rows: UInt64, count: Double, sum: Double, shifted: Double, squares: Double, min: Double, max: Double) {
        let bytes = UnsafeRawPointer(valid)
        var r: UInt64 = 0
        var c = SIMD4<Double>(), t = SIMD4<Double>(), s1 = SIMD4<Double>(), s2 = SIMD4<Double>()
        var l = SIMD4<Double>(repeating: .infinity), h = SIMD4<Double>(repeating: -.infinity)
        let shift = SIMD4<Double>(repeating: k)
        var i = a
        while i + 4 <= b {
            let x = UnsafeRawPointer(v + i).loadUnaligned(as: SIMD4<Double>.self)
            let flags = SIMD4<UInt64>(truncatingIfNeeded: bytes.loadUnaligned(fromByteOffset: i, as: SIMD4<UInt8>.self))
            r &+= flags.wrappedSum()
            let skip = .!((flags .!= 0) .& (x .== x))
            let xz = x.replacing(with: 0, where: skip)
            let d = (x - shift).replacing(with: 0, where: skip)
            c += SIMD4<Double>(repeating: 1).replacing(with: 0, where: skip)
            t += xz
            s1 += d
            s2 += d * d
            if extremes {
                l.replace(with: x, where: .!skip .& (x .< l))
                h.replace(with: x, where: .!skip .& (x .> h))
            }
            i += 4
        }
        var cs = c.sum(), ts = t.sum(), d1 = s1.sum(), d2 = s2.sum(), ls = l.min(), hs = h.max()
        while i < b {
            let x = v[i]
            if valid[i] {
                r &+= 1
                if !x.isNaN {
                    cs += 1
                    ts += x
                    d1 += x - k
                    d2 += (x - k) * (x - k)
                    if extremes {
                        ls = Swift.min(ls, x)
                        hs = Swift.max(hs, x)
                    }
                }
            }
            i += 1
        }
        return (r, cs, ts, d1, d2, ls, hs)
    }

    /// Σ (x − mean)² over the values of `a..<b` that count, in SIMD lanes.
    @inline(__always) static func squares(_ v: UnsafePointer<Double>, _ valid: UnsafePointer<Bool>, _ a: Int, _ b: Int, _ mean: Double) -> Double {
        let bytes = UnsafeRawPointer(valid)
        var q = SIMD4<Double>()
        let mu = SIMD4<Double>(repeating: mean)
        var i = a
        while i + 4 <= b {
            let x = UnsafeRawPointer(v + i).loadUnaligned(as: SIMD4<Double>.self)
            let flags = SIMD4<UInt64>(truncatingIfNeeded: bytes.loadUnaligned(fromByteOffset: i, as: SIMD4<UInt8>.self))
            let d = (x - mu).replacing(with: 0, where: .!((flags .!= 0) .& (x .== x)))
            q += d * d
            i += 4
        }
        var qs = q.sum()
        while i < b {
            let x = v[i]
            if valid[i] && !x.isNaN { qs += (x - mean) * (x - mean) }
            i += 1
        }
        return qs
    }
}

/// A filter as its `and`-ed parts, cheapest first, each evaluated only on the rows that passed
/// the ones before once those are few: an expensive test (a magnitude, a distance) then runs on
/// the survivors of the cheap ones instead of on every row.
enum FilterPlan {
    static func conjuncts(of e: CheckedExpression) -> [CheckedExpression] {
        func cost(_ t: ExpressionTree) -> Int {
            switch t {
            case .number, .integer: 0
            case .column: 1
            case .unary(_, let x, _): 1 + cost(x)
            case .binary(_, let a, let b, _): 1 + cost(a) + cost(b)
            case .call(_, let args, _): 10 + args.map(cost).reduce(0, +)
            }
        }
        let parts = e.expression.conjuncts
        return parts.indices.sorted { (cost(parts[$0]), $0) < (cost(parts[$1]), $1) }.map {
            CheckedExpression(text: e.text, expression: parts[$0], type: .boolean)
        }
    }

    /// Rows passing every conjunct (all rows when there are none).
    /// - Parameters:
    ///   - shared: values other questions of a shared pass computed over these rows.
    ///   - among: the only rows that may pass (ascending), when something else (a region) has
    ///     already ruled out the rest: the conjuncts then run on those rows alone.
    static func evaluate(_ conjuncts: [CheckedExpression], columns: [String: ExpressionVector], rows n: Int,
                         shared: SharedValues? = nil, among: [Int]? = nil) -> [Bool] {
        var keep: [Bool]
        var live: [Int]?
        var rest = conjuncts[...]
        if let among {
            keep = [Bool](repeating: false, count: n)
            for i in among { keep[i] = true }
            live = among
        } else {
            guard let first = conjuncts.first else { return [Bool](repeating: true, count: n) }
            keep = [Bool](repeating: true, count: n)
            if ColumnTest(first.expression)?.apply(to: &keep, columns: columns, rows: nil) != true {
                keep = ExpressionEvaluator.evaluate(first, columns: columns, rows: n, known: shared?.lookup(rows: nil, count: n)).booleans(n)
            }
            rest = conjuncts.dropFirst()
        }
        for c in rest {
            // A column against a number: one pass over the column into the mask, cheaper than
            // counting the rows left, let alone gathering them.
            if let test = ColumnTest(c.expression), test.apply(to: &keep, columns: columns, rows: live) { continue }
            let alive = live?.count ?? n
            let passing = live.map { GroupLoops.count(keep, at: $0) } ?? GroupLoops.count(keep)
            if passing == 0 { return keep }
            if passing * 10 < alive * 6 {
                live = live.map { GroupLoops.indices(where: keep, among: $0) } ?? GroupLoops.indices(where: keep)
            }
            if let live {
                var sub: [String: ExpressionVector] = [:]
                for name in c.columns { sub[name] = columns[name]?.gathered(live) }
                let r = ExpressionEvaluator.evaluate(c, columns: sub, rows: live.count, known: shared?.lookup(rows: live, count: live.count)).booleans(live.count)
                keep.withUnsafeMutableBufferPointer { kp in
                    live.withUnsafeBufferPointer { lp in
                        r.withUnsafeBufferPointer { rp in
                            for j in 0..<lp.count {
                                let i = lp[j]
                                kp[i] = ((kp[i] ? 1 : 0) & (rp[j] ? 1 : 0)) != 0
                            }
                        }
                    }
                }
            } else {
                let r = ExpressionEvaluator.evaluate(c, columns: columns, rows: n, known: shared?.lookup(rows: nil, count: n)).booleans(n)
                keep = Kernels.logical(keep, r, and: true)
            }
        }
        return keep
    }
}

/// Branch-free counting loops over masks and group slots.
enum GroupLoops {
    /// Set entries of a mask at the given positions.
    static func count(_ mask: [Bool], at rows: [Int]) -> Int {
        mask.withUnsafeBufferPointer { m in
            m.withMemoryRebound(to: UInt8.self) { b in
                rows.withUnsafeBufferPointer { r in
                    var n = 0
                    for j in 0..<r.count { n &+= Int(b[r[j]]) }
                    return n
                }
            }
        }
    }

    /// Positions of the set entries: every position is written and the end advances only past
    /// set ones, so there is no branch to mispredict.
    static func indices(where mask: [Bool]) -> [Int] {
        mask.withUnsafeBufferPointer { m in
            m.withMemoryRebound(to: UInt8.self) { b in
                [Int](unsafeUninitializedCapacity: b.count) { out, count in
                    var k = 0
                    for i in 0..<b.count {
                        out[k] = i
                        k &+= Int(b[i])
                    }
                    count = k
                }
            }
        }
    }

    /// The positions among `rows` whose mask entry is set.
    static func indices(where mask: [Bool], among rows: [Int]) -> [Int] {
        mask.withUnsafeBufferPointer { m in
            m.withMemoryRebound(to: UInt8.self) { b in
                rows.withUnsafeBufferPointer { r in
                    [Int](unsafeUninitializedCapacity: r.count) { out, count in
                        var k = 0
                        for j in 0..<r.count {
                            out[k] = r[j]
                            k &+= Int(b[r[j]])
                        }
                        count = k
                    }
                }
            }
        }
    }

    /// Set entries of a mask. (Read as the bytes 0 and 1 they are: `b ? 1 : 0` was compiled to
    /// a branch here, measured at half of a filter's time.)
    static func count(_ mask: [Bool]) -> Int {
        mask.withUnsafeBufferPointer { m in
            m.withMemoryRebound(to: UInt8.self) { b in
                var n = 0
                for i in 0..<b.count { n &+= Int(b[i]) }
                return n
            }
        }
    }

    /// Adds each counting row to its group's row count (register-cached per run of one group).
    static func countRows(slots: [Int32], valid: [Bool], into rows: inout [UInt64]) {
        slots.withUnsafeBufferPointer { slots in
            valid.withUnsafeBufferPointer { valid in
                rows.withUnsafeMutableBufferPointer { out in
                    var cur = -1
                    var c: UInt64 = 0
                    for i in 0..<slots.count {
                        let s = Int(slots[i])
                        if s != cur {
                            if cur >= 0 { out[cur] = c }
                            cur = s
                            c = out[s]
                        }
                        c &+= valid[i] ? 1 : 0
                    }
                    if cur >= 0 { out[cur] = c }
                }
            }
        }
    }
}
