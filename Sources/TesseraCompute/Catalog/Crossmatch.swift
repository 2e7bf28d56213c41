import SwiftProtobuf
import TesseraProtocol
import TesseraSky
import TesseraStorage

public typealias CrossmatchSpec = Tessera_V1_CrossmatchSpec
public typealias ColumnSchema = Tessera_V1_ColumnSchema

/// A positional cross-match as a catalog question: its rows are pairs of left and right rows
/// within a radius, named `left_NAME`, `right_NAME` and `sep_arcsec`, and the question's
/// filter and result read them as a scan reads a shard's rows.
///
/// The work is cut by the two datasets' shards. Each left row is paired on exactly one task:
/// - where right shard `Q` overlaps left shard `P`, the task (P, Q) takes P's rows inside
///   P ∩ Q (the smaller of the two pixels) and all of Q's rows, own and margin: every right row
///   within the radius of a point of P ∩ Q is in Q or in Q's margin, since the radius is at most
///   the margin. Q's own and margin rows are distinct rows, so no pair is found twice;
/// - the part of P no right shard covers (the right catalog has no rows there) meets the own
///   rows of every right shard near P, in one more task.
public enum Crossmatch {
    public static let leftPrefix = "left_"
    public static let rightPrefix = "right_"
    public static let separationColumn = "sep_arcsec"

    /// `CrossmatchSide.rows`: columns 0 and 1 are the positions (degrees, Float64), then the
    /// right columns the question reads.
    static let positionColumns = 2

    /// The pairs' schema: the left columns, the right columns, then the separation.
    public static func pairColumns(left: [ColumnSchema], right: [ColumnSchema]) -> [ColumnSchema] {
        func prefixed(_ c: ColumnSchema, _ p: String) -> ColumnSchema {
            var o = c
            o.name = p + c.name
            return o
        }
        var sep = ColumnSchema()
        sep.name = separationColumn
        sep.type = .columnFloat64
        sep.unit = "arcsec"
        sep.description_p = "angular separation of the left and right positions"
        return left.map { prefixed($0, leftPrefix) } + right.map { prefixed($0, rightPrefix) } + [sep]
    }

    /// A cross-match question checked: its numbers, its region (which selects left rows) and its
    /// filter and result against the pairs' schema.
    public struct Checked: Sendable {
        /// The question as it reads the pairs (its region taken out: it applies to left rows).
        public let pairs: CheckedCatalogQuery
        public let region: (any SkyRegion)?
        public let spec: CrossmatchSpec
        /// Nearest `k` per left row, or nil for every pair.
        public var nearest: Int? { spec.kind == .crossmatchAll ? nil : max(1, Int(spec.k)) }

        /// Unprefixed names of a side's stored columns the question reads (all of them for rows
        /// with no selection).
        public func columns(of prefix: String, among schema: [ColumnSchema]) -> [String] {
            let selectsAll = pairs.returnsRows && pairs.plan.rows.select.isEmpty
            let wanted = Set(pairs.columns)
            return schema.map(\.name).filter { selectsAll || wanted.contains(prefix + $0) }
        }
    }

    /// - Parameters:
    ///   - rightMarginArcsec: the right dataset's margin, which bounds the radius (nil: not
    ///     checked, on a worker, where the scheduler has checked it).
    public static func check(_ plan: CatalogQueryPlan, left: [ColumnSchema], leftRa: String, leftDec: String,
                             right: [ColumnSchema], rightMarginArcsec: Double?) throws(CatalogQueryError) -> Checked {
        let spec = plan.crossmatch
        let r = spec.radiusArcsec
        guard r.isFinite, r > 0 else {
            throw CatalogQueryError("a cross-match radius must be a positive number of arcseconds, not \(r)")
        }
        guard r <= Limits.crossmatchRadiusArcsec else {
            throw CatalogQueryError("a cross-match radius of \(r)″ is over the limit of \(Limits.crossmatchRadiusArcsec)″")
        }
        if let margin = rightMarginArcsec, r > margin {
            throw CatalogQueryError("a cross-match radius of \(r)″ is over `\(spec.right)`'s margin of \(margin)″: each shard keeps copies of its neighbours' rows only that far outside its edge, so pairs farther apart could cross shards unseen. Use a radius of at most \(margin)″, or ingest `\(spec.right)` again with a wider --margin-arcsec")
        }
        guard spec.k <= Limits.crossmatchNeighbours else {
            throw CatalogQueryError("a cross-match asks for at most \(Limits.crossmatchNeighbours) nearest neighbours per row, not \(spec.k)")
        }
        if spec.kind == .crossmatchAll && spec.k > 1 {
            throw CatalogQueryError("`k` counts nearest neighbours: a cross-match of every pair within the radius takes none")
        }
        if case .UNRECOGNIZED(let k) = spec.kind { throw CatalogQueryError("unknown cross-match kind \(k)") }
        if plan.hasPython { throw CatalogQueryError("a Python function cannot yet run on a cross-match's pairs") }
        let names = Set(left.map(\.name))
        guard names.contains(leftRa), names.contains(leftDec) else {
            throw CatalogQueryError("a cross-match needs the left dataset's position columns `\(leftRa)` and `\(leftDec)`, which it lacks")
        }
        var pairPlan = plan
        pairPlan.region = nil
        let pairs = try CheckedCatalogQuery(pairPlan, columns: pairColumns(left: left, right: right), raColumn: leftPrefix + leftRa, decColumn: leftPrefix + leftDec)
        return Checked(pairs: pairs, region: try CheckedCatalogQuery.checkedRegion(plan), spec: spec)
    }

    // MARK: Covers: where a sparse left side's rows are

    /// The HEALPix order of a cover for `radiusArcsec`: pixels at least four radii wide, so a
    /// row's pixel and its eight neighbours hold every point within the radius of it.
    public static func coverOrder(radiusArcsec r: Double) -> Int {
        let widest = 58.6 * 3600 / (4 * max(r, 1e-6))   // 2^order ≤ this
        var order = 0
        while order < 20 && Double(1 << (order + 1)) <= widest { order += 1 }
        return order
    }

    /// Order-29 index ranges (ascending, disjoint) holding every point within the radius of the
    /// given rows' positions: each row's pixel at ``coverOrder(radiusArcsec:)`` and its neighbours.
    public static func cover(index: [Int64], radiusArcsec: Double) -> [Range<Int64>] {
        let order = coverOrder(radiusArcsec: radiusArcsec)
        let shift = Int64(2 * (HEALPix.maxOrder - order))
        var pixels: [Int64] = []
        pixels.reserveCapacity(min(index.count, 1 << 24) * 9)
        var last: Int64 = -1
        let pixels12 = HEALPix.pixelCount(order)
        for i in index {
            let p = i >> shift
            if p == last { continue }   // rows ascend by index: a pixel's rows come together
            guard p >= 0, p < pixels12 else { continue }   // not an index (a damaged file): no position
            last = p
            pixels.append(p)
            for n in HEALPix.neighbours(order: order, pixel: p) where n >= 0 { pixels.append(n) }
        }
        pixels.sort()
        return merged(pixels.map { ($0 << shift)..<(($0 + 1) << shift) })
    }

    /// The rows of an ascending index that lie in `ranges` (ascending, disjoint): one sweep
    /// over both, each range found by binary search from where the last row was.
    static func rows(of index: [Int64], within ranges: [Range<Int64>]) -> [Int] {
        var out: [Int] = []
        var k = 0
        var i = 0
        while i < index.count && k < ranges.count {
            let x = index[i]
            if ranges[k].upperBound <= x {
                // The first range ending past x.
                var a = k + 1, b = ranges.count
                while a < b {
                    let m = (a + b) >> 1
                    if ranges[m].upperBound <= x { a = m + 1 } else { b = m }
                }
                k = a
                continue
            }
            if ranges[k].lowerBound <= x {
                out.append(i)
                i += 1
            } else {
                // Skip the rows before this range: binary search for its start.
                var a = i + 1, b = index.count
                let lo = ranges[k].lowerBound
                while a < b {
                    let m = (a + b) >> 1
                    if index[m] < lo { a = m + 1 } else { b = m }
                }
                i = a
            }
        }
        return out
    }

    /// Whether any of `ranges` (ascending, disjoint) meets `lo ... hi`.
    static func meets(_ ranges: [Range<Int64>], _ lo: Int64, _ hi: Int64) -> Bool {
        var a = 0, b = ranges.count
        while a < b {
            let m = (a + b) >> 1
            if ranges[m].upperBound <= lo { a = m + 1 } else { b = m }
        }
        return a < ranges.count && ranges[a].lowerBound <= hi
    }

    /// Ranges as a value (`lower, upper` pairs) and back (nil for one malformed).
    public static func value(of ranges: [Range<Int64>]) -> [Int64] { ranges.flatMap { [$0.lowerBound, $0.upperBound] } }
    public static func ranges(of v: [Int64]) -> [Range<Int64>]? {
        guard v.count % 2 == 0 else { return nil }
        var out: [Range<Int64>] = []
        out.reserveCapacity(v.count / 2)
        for k in stride(from: 0, to: v.count, by: 2) {
            guard v[k] < v[k + 1], out.last.map({ $0.upperBound <= v[k] }) ?? true else { return nil }
            out.append(v[k]..<v[k + 1])
        }
        return out
    }

    /// The union of several ascending lists of disjoint ranges.
    public static func union(_ lists: [[Range<Int64>]]) -> [Range<Int64>] {
        lists.count == 1 ? lists[0] : merged(lists.joined().sorted { $0.lowerBound < $1.lowerBound })
    }

    /// Ranges sorted by their start, with those that touch or overlap joined.
    static func merged(_ sorted: [Range<Int64>]) -> [Range<Int64>] {
        var out: [Range<Int64>] = []
        for r in sorted {
            if let l = out.last, l.upperBound >= r.lowerBound {
                if r.upperBound > l.upperBound { out[out.count - 1] = l.lowerBound..<r.upperBound }
            } else {
                out.append(r)
            }
        }
        return out
    }

    // MARK: Index ranges

    /// The order-29 index range of a pixel (empty for one out of range).
    public static func range(order: Int, pixel: Int64) -> Range<Int64> {
        guard ShardKey.pixelProblem(order: order, pixel: pixel) == nil else { return 0..<0 }
        return HEALPix.children(pixel, order: order, to: HEALPix.maxOrder)
    }

    /// `whole` less every range of `cut` (ascending, disjoint pieces).
    public static func subtracting(_ cut: [Range<Int64>], from whole: Range<Int64>) -> [Range<Int64>] {
        var out: [Range<Int64>] = []
        var start = whole.lowerBound
        for c in cut.sorted(by: { $0.lowerBound < $1.lowerBound }) where c.upperBound > start && c.lowerBound < whole.upperBound {
            if c.lowerBound > start { out.append(start..<c.lowerBound) }
            start = max(start, c.upperBound)
        }
        if start < whole.upperBound { out.append(start..<whole.upperBound) }
        return out
    }

    /// The pieces two ascending lists of disjoint ranges share.
    public static func intersecting(_ a: [Range<Int64>], _ b: [Range<Int64>]) -> [Range<Int64>] {
        var out: [Range<Int64>] = []
        var i = 0, j = 0
        while i < a.count && j < b.count {
            let lo = max(a[i].lowerBound, b[j].lowerBound), hi = min(a[i].upperBound, b[j].upperBound)
            if lo < hi { out.append(lo..<hi) }
            if a[i].upperBound < b[j].upperBound { i += 1 } else { j += 1 }
        }
        return out
    }
}

// MARK: - One right shard's rows, as sent to the tasks that pair with them

/// A right shard's rows as a pairing task reads them (`CrossmatchSide`): positions, then the
/// right columns the question reads; own rows first.
public struct CrossmatchSide: Sendable {
    public var order: Int
    public var pixel: Int64
    public var ownRows: Int
    public var ra: [Double]
    public var dec: [Double]
    public var names: [String]
    public var columns: [RowValues]

    public var rows: Int { ra.count }

    /// Reads every row group (own and margin) of `reader`; with `within`, only the rows whose
    /// index lies in those ranges (where a sparse left side's rows are).
    public static func read(_ reader: ShardReader, raColumn: String, decColumn: String, columns names: [String],
                            within: [Range<Int64>]? = nil) throws(CatalogQueryError) -> CrossmatchSide {
        let footer = reader.footer
        guard let within else {
            let data: [ColumnData]
            do {
                data = try reader.read(columns: [raColumn, decColumn] + names, rowGroups: Array(0..<reader.rowGroupCount))
            } catch {
                throw CatalogQueryError("\(error)", retryable: true)
            }
            return CrossmatchSide(order: Int(footer.order), pixel: footer.pixel, ownRows: Int(clamping: footer.rows),
                                  ra: data[0].doubles, dec: data[1].doubles, names: names, columns: data.dropFirst(2).map(RowValues.init))
        }
        var out = CrossmatchSide(order: Int(footer.order), pixel: footer.pixel, ownRows: 0, ra: [], dec: [], names: names, columns: [])
        var chunks = [[RowValues]](repeating: [], count: names.count)
        do {
            let numbers = try ([raColumn, decColumn] + names).map { (n) throws(ShardError) in try reader.columnIndex(n) }
            guard let ic = footer.columns.firstIndex(where: { $0.name == footer.indexColumn }) else {
                throw CatalogQueryError("shard \(reader.path) has no spatial index column `\(footer.indexColumn)`")
            }
            for g in 0..<reader.rowGroupCount {
                let rg = footer.rowGroups[g]
                guard Crossmatch.meets(within, rg.indexMin, rg.indexMax) else { continue }
                guard case .int64(let index) = try reader.read(column: ic, rowGroup: g) else {
                    throw CatalogQueryError("shard \(reader.path)'s spatial index is not Int64")
                }
                let picked = Crossmatch.rows(of: index, within: within)
                if picked.isEmpty { continue }
                out.ra += try reader.read(column: numbers[0], rowGroup: g).gathered(picked).doubles
                out.dec += try reader.read(column: numbers[1], rowGroup: g).gathered(picked).doubles
                for k in names.indices { chunks[k].append(RowValues(try reader.read(column: numbers[k + 2], rowGroup: g).gathered(picked))) }
                if g < Int(footer.marginFirstGroup) { out.ownRows += picked.count }
            }
        } catch let e as CatalogQueryError {
            throw e
        } catch {
            throw CatalogQueryError("\(error)", retryable: true)
        }
        out.columns = names.indices.map { k in chunks[k].isEmpty ? RowValues(ColumnData.empty(reader.footer.columns.first { $0.name == names[k] }?.type ?? .columnFloat64)) : RowValues.joined(chunks[k]) }
        return out
    }

    /// The wire form (`CrossmatchSide` in catalog.proto); the columns are written in place.
    public func serialized() throws(CatalogQueryError) -> [UInt8] {
        var head = Tessera_V1_CrossmatchSide()
        head.order = UInt32(order)
        head.pixel = pixel
        head.ownRows = UInt64(ownRows)
        var out: [UInt8]
        do { out = try head.serializedBytes() } catch { throw CatalogQueryError("\(error)") }
        var batch = RowBatchBuilder()
        batch.append(names: ["ra", "dec"] + names, values: [.doubles(ra), .doubles(dec)] + columns, index: [], sortKeys: nil)
        batch.appendWireField(4, to: &out)
        return out
    }

    /// Parses and checks a side another worker sent.
    public init(serialized bytes: [UInt8]) throws(CatalogQueryError) {
        let m: Tessera_V1_CrossmatchSide
        do { m = try Tessera_V1_CrossmatchSide(serializedBytes: bytes) } catch {
            throw CatalogQueryError("a cross-match side could not be read: \(error)", retryable: true)
        }
        let cols = m.rows.columns.map(RowValues.init)
        guard cols.count >= Crossmatch.positionColumns, m.rows.names.count == cols.count,
              case .doubles(let ra) = cols[0], case .doubles(let dec) = cols[1],
              cols.allSatisfy({ $0.count == ra.count }), m.ownRows <= UInt64(ra.count),
              ra.count <= SkyPairIndex.maxRows else {
            throw CatalogQueryError("a cross-match side is malformed (its columns differ in length, or its positions are missing)", retryable: true)
        }
        self.init(order: Int(m.order), pixel: m.pixel, ownRows: Int(m.ownRows), ra: ra, dec: dec,
                  names: Array(m.rows.names.dropFirst(2)), columns: Array(cols.dropFirst(2)))
    }

    public init(order: Int, pixel: Int64, ownRows: Int, ra: [Double], dec: [Double], names: [String], columns: [RowValues]) {
        self.order = order; self.pixel = pixel; self.ownRows = ownRows
        self.ra = ra; self.dec = dec; self.names = names; self.columns = columns
    }

    /// The own rows of several sides, joined (their margins left out: each row once).
    static func ownRows(of sides: [CrossmatchSide]) throws(CatalogQueryError) -> CrossmatchSide {
        var out = CrossmatchSide(order: 0, pixel: 0, ownRows: 0, ra: [], dec: [], names: sides.first?.names ?? [], columns: [])
        out.columns = out.names.indices.map { k in RowValues.joined(sides.map { $0.columns[k].slice(0, $0.ownRows) }) }
        for s in sides {
            out.ra += s.ra[0..<s.ownRows]
            out.dec += s.dec[0..<s.ownRows]
        }
        out.ownRows = out.ra.count
        guard out.columns.allSatisfy({ $0.count == out.ra.count }), out.ra.count <= SkyPairIndex.maxRows else {
            throw CatalogQueryError("the right shards' columns differ in kind or are too many rows together")
        }
        return out
    }

    /// The schema its columns give the pairs (Float32 stays Float32; integers read as Int64).
    var schema: [ColumnSchema] {
        zip(names, columns).map { name, values in
            var c = ColumnSchema()
            c.name = name
            switch values {
            case .doubles: c.type = .columnFloat64
            case .floats: c.type = .columnFloat32
            case .int64s: c.type = .columnInt64
            case .bools: c.type = .columnBool
            }
            return c
        }
    }
}

extension RowValues {
    /// As a stored column.
    var columnData: ColumnData {
        switch self {
        case .doubles(let a): .float64(a)
        case .floats(let a): .float32(a)
        case .int64s(let a): .int64(a)
        case .bools(let a): .bool(a)
        }
    }

    /// As expression values (integers kept exact, as a scan keeps them).
    var vector: ExpressionVector { CatalogScan.vector(columnData) }

    /// Rows `lo ..< hi`.
    func slice(_ lo: Int, _ hi: Int) -> RowValues {
        switch self {
        case .doubles(let a): .doubles(Array(a[lo..<hi]))
        case .floats(let a): .floats(Array(a[lo..<hi]))
        case .int64s(let a): .int64s(Array(a[lo..<hi]))
        case .bools(let a): .bools(Array(a[lo..<hi]))
        }
    }
}

// MARK: - The pairing task

/// One pairing task: left rows of one shard (inside `ranges`, the region and the left-only
/// part of the filter) against the right rows of its sides, reduced to a `CatalogPartial`.
struct CrossmatchTask {
    let checked: Crossmatch.Checked
    let reader: ShardReader
    let raColumn: String, decColumn: String
    /// The left rows' index ranges this task pairs (ascending).
    let ranges: [Range<Int64>]
    /// Right rows: the sides' rows taken (all, or own rows only), joined.
    let right: CrossmatchSide

    /// Pairs left rows with the right rows and answers the question over the pairs.
    func run(isCancelled: () -> Bool) throws(CatalogQueryError) -> ScanAccumulator {
        let q = checked.pairs
        let conjuncts = q.filter.map(FilterPlan.conjuncts) ?? []
        func only(_ prefix: String) -> (CheckedExpression) -> Bool {
            { c in !c.columns.isEmpty && c.columns.allSatisfy { $0.hasPrefix(prefix) } }
        }
        // A conjunct of left columns only selects left rows before they are paired. One of right
        // columns only selects right rows, except for a nearest match (the nearest row is found
        // first, then the filter asked of the pair).
        var leftOnly: [CheckedExpression] = [], rightOnly: [CheckedExpression] = [], rest: [CheckedExpression] = []
        for c in conjuncts {
            if only(Crossmatch.leftPrefix)(c) {
                leftOnly.append(c)
            } else if checked.nearest == nil && only(Crossmatch.rightPrefix)(c) {
                rightOnly.append(c)
            } else {
                rest.append(c)
            }
        }

        // Right rows: those passing their part of the filter, indexed.
        var rightColumns: [String: ExpressionVector] = [:]
        for (n, v) in zip(right.names, right.columns) { rightColumns[Crossmatch.rightPrefix + n] = v.vector }
        var rightRows: [Int]?
        if !rightOnly.isEmpty {
            let keep = FilterPlan.evaluate(rightOnly, columns: rightColumns, rows: right.rows)
            rightRows = GroupLoops.indices(where: keep)
        }
        let index = SkyPairIndex(ra: rightRows.map { r in r.map { right.ra[$0] } } ?? right.ra,
                                 dec: rightRows.map { r in r.map { right.dec[$0] } } ?? right.dec,
                                 radiusArcsec: checked.spec.radiusArcsec)

        // Left columns the question reads, the positions and the spatial index.
        let footer = reader.footer
        let leftNames = checked.columns(of: Crossmatch.leftPrefix, among: footer.columns)
        var numbers: [(name: String, number: Int)] = []
        do {
            for n in Set(leftNames + [raColumn, decColumn]) { numbers.append((n, try reader.columnIndex(n))) }
        } catch {
            throw CatalogQueryError("\(error)")
        }
        guard let indexNumber = footer.columns.firstIndex(where: { $0.name == footer.indexColumn }) else {
            throw CatalogQueryError("shard \(reader.path) has no spatial index column `\(footer.indexColumn)`")
        }
        let regionRanges = checked.region.map { ShardScanPlan.indexRanges(of: $0, in: footer) }
        let wanted = regionRanges.map { Crossmatch.intersecting(ranges, $0) } ?? ranges
        var acc = ScanAccumulator(q)
        acc.partial.shards = 1
        if case .rows = q.output, q.plan.rows.limit == 0 { acc.rows.keepsChunks = true }
        if wanted.isEmpty || index.count == 0 { return acc }

        for g in reader.rowGroups(overlapping: wanted) {
            if isCancelled() { throw CatalogQueryError("cancelled", retryable: true) }
            var piece = ScanAccumulator(q)
            if acc.rows.keepsChunks { piece.rows.keepsChunks = true }
            let stored: [String: ColumnData]
            let leftIndex: [Int64]
            do {
                var s: [String: ColumnData] = [:]
                for (n, c) in numbers { s[n] = try reader.read(column: c, rowGroup: g) }
                stored = s
                guard case .int64(let ix) = try reader.read(column: indexNumber, rowGroup: g) else {
                    throw CatalogQueryError("shard \(reader.path)'s spatial index is not Int64")
                }
                leftIndex = ix
            } catch let e as CatalogQueryError {
                throw e
            } catch {
                throw CatalogQueryError("\(error)", retryable: true)
            }
            let rows = leftIndex.count
            piece.partial.rowsScanned = UInt64(rows)
            guard let raData = stored[raColumn], let decData = stored[decColumn] else { continue }
            let ra = raData.doubles, dec = decData.doubles
            // Rows ascend by index: each wanted range is one span, found by binary search.
            var inside: [Int] = []
            for r in wanted {
                for i in ShardScanPlan.rows(of: r, in: leftIndex) where checked.region?.contains(ra: ra[i], dec: dec[i]) ?? true {
                    inside.append(i)
                }
            }
            var leftColumns: [String: ExpressionVector] = [:]
            for n in leftNames { if let d = stored[n] { leftColumns[Crossmatch.leftPrefix + n] = CatalogScan.vector(d) } }
            let candidates: [Int]
            if leftOnly.isEmpty {
                candidates = inside
            } else {
                let keep = FilterPlan.evaluate(leftOnly, columns: leftColumns, rows: rows, among: inside)
                candidates = GroupLoops.indices(where: keep)
            }
            if candidates.isEmpty { _ = try acc.absorb(piece); continue }
            guard let found = index.pairs(ra: candidates.map { ra[$0] }, dec: candidates.map { dec[$0] }, nearest: checked.nearest,
                                          limit: Limits.crossmatchPairsPerRowGroup, examineLimit: Limits.crossmatchComparisonsPerRowGroup) else {
                throw CatalogQueryError("a cross-match found more than \(Limits.crossmatchPairsPerRowGroup) pairs, or compared more than \(Limits.crossmatchComparisonsPerRowGroup) positions, for \(candidates.count) rows of one row group (the limits): use a smaller radius, or a filter on the left rows")
            }
            let n = found.count
            if n == 0 { _ = try acc.absorb(piece); continue }
            // The pairs' columns.
            let leftRow = found.left.map { candidates[Int($0)] }
            let rightRow = rightRows.map { r in found.right.map { r[Int($0)] } } ?? found.right.map { Int($0) }
            var cols: [String: ExpressionVector] = [:]
            var pairStored: [String: ColumnData] = [:]
            for n in leftNames {
                guard let d = stored[n] else { continue }
                let g = d.gathered(leftRow)
                cols[Crossmatch.leftPrefix + n] = CatalogScan.vector(g)
                pairStored[Crossmatch.leftPrefix + n] = g
            }
            for (name, v) in zip(right.names, right.columns) {
                let g = v.gathered(rightRow)
                cols[Crossmatch.rightPrefix + name] = g.vector
                pairStored[Crossmatch.rightPrefix + name] = g.columnData
            }
            cols[Crossmatch.separationColumn] = .numbers(found.separationArcsec)
            pairStored[Crossmatch.separationColumn] = .float64(found.separationArcsec)
            let keep = FilterPlan.evaluate(rest, columns: cols, rows: n)
            let matched = GroupLoops.count(keep)
            _ = try piece.add(rows: n, keep: keep, matched: matched, columns: cols, stored: { (name) throws(CatalogQueryError) in
                guard let c = pairStored[name] else { throw CatalogQueryError("column `\(name)` was not read") }
                return c
            }, index: leftRow.map { leftIndex[$0] })
            if try acc.absorb(piece) { break }
        }
        return acc
    }
}
