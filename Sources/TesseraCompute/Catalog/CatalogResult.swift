import TesseraProtocol

/// A result as named columns, ready to print, write as CSV / JSON / FITS, or read in a notebook.
public struct ResultTable: Sendable, Equatable {
    public var names: [String]
    public var columns: [RowValues]

    public init(names: [String], columns: [RowValues]) {
        self.names = names
        self.columns = columns
    }

    public var rowCount: Int { columns.first?.count ?? 0 }

    /// `s` as a CSV field (RFC 4180): quoted, with its quotes doubled, when it holds a comma, a
    /// quote or a line break. Looks at the UTF-8 bytes: Foundation's `contains` of a string went
    /// through NSString's search, and took 20 times the rest of writing a cell.
    public static func csvField(_ s: String) -> String {
        guard s.utf8.contains(where: { $0 == UInt8(ascii: ",") || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\n") || $0 == UInt8(ascii: "\r") }) else { return s }
        return "\"" + replacing(s, where: { $0 == UInt8(ascii: "\"") }) { $0 == "\"" ? "\"\"" : nil } + "\""
    }

    /// `s` as a JSON string (RFC 8259): quotes, backslashes and control characters escaped.
    public static func jsonString(_ s: String) -> String {
        let inner = replacing(s, where: { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }) { ch in
            switch ch {
            case "\"": return "\\\""
            case "\\": return "\\\\"
            case "\n": return "\\n"
            case _ where ch.value < 0x20:
                let hex = String(ch.value, radix: 16)
                return "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: return nil
            }
        }
        return "\"" + inner + "\""
    }

    /// `s` with each character `replacement` gives text for replaced by it, the others kept;
    /// `s` itself when no UTF-8 byte of it is one `mayNeed` flags (most text, looked at fast).
    public static func replacing(_ s: String, where mayNeed: (UInt8) -> Bool, _ replacement: (Unicode.Scalar) -> String?) -> String {
        guard s.utf8.contains(where: mayNeed) else { return s }
        var out = ""
        for ch in s.unicodeScalars {
            if let r = replacement(ch) { out += r } else { out.unicodeScalars.append(ch) }
        }
        return out
    }

    /// A cell as text (integers exactly, floats to 17 significant digits, NaN as `nan`).
    public func text(row: Int, column: Int) -> String {
        switch columns[column] {
        case .doubles(let a): a[row].isNaN ? "nan" : "\(a[row])"
        case .int64s(let a): "\(a[row])"
        case .bools(let a): a[row] ? "true" : "false"
        case .floats(let a): a[row].isNaN ? "nan" : "\(a[row])"
        }
    }

    /// The column named `name` as numbers, if present.
    public func numbers(_ name: String) -> [Double]? {
        guard let k = names.firstIndex(of: name) else { return nil }
        switch columns[k] {
        case .doubles(let a): return a
        case .int64s(let a): return a.map(Double.init)
        case .bools(let a): return a.map { $0 ? 1 : 0 }
        case .floats(let a): return a.map(Double.init)
        }
    }
}

/// The answer to a catalog question, from a merged partial: what it covered and its table.
public struct CatalogResult: Sendable {
    public let plan: CatalogQueryPlan
    public let partial: CatalogPartial

    public init(plan: CatalogQueryPlan, partial: CatalogPartial) {
        self.plan = plan
        self.partial = partial
    }

    /// A cutout's planes, one per band (NaN and the NO_DATA mask bit where no image covers).
    public var cutouts: [ImageCutout] { partial.cutouts.compactMap(ImageDataset.cutout) }

    /// Shards this answer covers (all of them in a final result; fewer in a progressive one).
    public var shards: Int { Int(partial.shards) }
    public var rowsScanned: Int { Int(partial.rowsScanned) }
    /// Rows in the region that passed the filter.
    public var rowsMatched: Int { Int(partial.rowsMatched) }

    /// Histogram counts, x-major (`counts[ix * yBins + iy]`), as `np.histogram2d` lays them out.
    public var histogram: [UInt64] {
        if partial.histogram.isEmpty { return [UInt64](repeating: 0, count: Int(plan.histogram.xBins) * Int(max(1, plan.histogram.yBins))) }
        return partial.histogram
    }

    /// Header of one aggregate column: `count`, `mean(mag(r_psfFlux))`, `quantile(0.5, x)`.
    public static func header(_ a: AggregateSpec) -> String {
        let f = CheckedCatalogQuery.name(of: a.function)
        if a.expression.isEmpty { return f }
        return a.function == .aggQuantile ? "\(f)(\(a.quantile), \(a.expression))" : "\(f)(\(a.expression))"
    }

    public var table: ResultTable {
        if plan.hasHistogram { return histogramTable }
        if plan.hasSkyMap {
            let m = partial.skyMap
            var t = ResultTable(names: ["pixel", "count"], columns: [.int64s(m.pixels.map { Int64($0) }), .int64s(m.counts.map { Int64($0) })])
            if !plan.skyMap.expression.isEmpty {
                t.names.append("mean(\(plan.skyMap.expression))")
                let means = m.sums.isEmpty ? [Double](repeating: .nan, count: m.pixels.count) : zip(m.sums, m.valueCounts).map { $1 > 0 ? $0 / Double($1) : .nan }
                t.columns.append(.doubles(means))
            }
            return t
        }
        if plan.hasRows {
            let r = partial.rows
            return ResultTable(names: r.names, columns: r.columns.map(RowValues.init))
        }
        return aggregateTable
    }

    var histogramTable: ResultTable {
        let h = plan.histogram
        // The edges are made on each use: once per axis here.
        let xe = Bins(count: Int(h.xBins), lo: h.xMin, hi: h.xMax).edges
        let counts = histogram
        if h.y.isEmpty {
            return ResultTable(names: ["\(h.x) from", "to", "count"],
                               columns: [.doubles(Array(xe.dropLast())), .doubles(Array(xe.dropFirst())), .int64s(counts.map { Int64($0) })])
        }
        let ye = Bins(count: Int(h.yBins), lo: h.yMin, hi: h.yMax).edges
        var x0: [Double] = [], x1: [Double] = [], y0: [Double] = [], y1: [Double] = []
        for i in 0..<(xe.count - 1) {
            for j in 0..<(ye.count - 1) {
                x0.append(xe[i]); x1.append(xe[i + 1]); y0.append(ye[j]); y1.append(ye[j + 1])
            }
        }
        return ResultTable(names: ["\(h.x) from", "to", "\(h.y) from", "to", "count"],
                           columns: [.doubles(x0), .doubles(x1), .doubles(y0), .doubles(y1), .int64s(counts.map { Int64($0) })])
    }

    var aggregateTable: ResultTable {
        var t = ResultTable(names: [], columns: [])
        // Ungrouped, there is always one group, even when no shard was read (an empty region).
        let groups = plan.groupBy.isEmpty ? max(1, partial.groupRows.count) : partial.groupRows.count
        if !plan.groupBy.isEmpty {
            t.names.append(plan.groupBy)
            let keys = partial.groupKeys
            if !partial.intGroupKeys.isEmpty {
                t.columns.append(.int64s(partial.intGroupKeys))
            } else {
                t.columns.append(keys.allSatisfy { $0 == $0.rounded() && abs($0) < 9e15 } ? .int64s(keys.map { Int64($0) }) : .doubles(keys))
            }
        }
        let specs = plan.aggregates.isEmpty ? [AggregateSpec()] : plan.aggregates
        // The order the scan gave distinct expressions their moment and sketch columns.
        var momentExprs: [String] = [], sketchExprs: [String] = []
        for a in plan.aggregates where !(a.function == .aggCount && a.expression.isEmpty) {
            if a.function == .aggQuantile { if !sketchExprs.contains(a.expression) { sketchExprs.append(a.expression) } } else if !momentExprs.contains(a.expression) { momentExprs.append(a.expression) }
        }
        for a in specs {
            t.names.append(Self.header(a))
            if a.function == .aggCount && a.expression.isEmpty {
                t.columns.append(.int64s((0..<groups).map { $0 < partial.groupRows.count ? Int64(partial.groupRows[$0]) : 0 }))
                continue
            }
            if a.function == .aggQuantile {
                let k = sketchExprs.firstIndex(of: a.expression) ?? 0
                let col = k < partial.sketches.count ? partial.sketches[k].groups.map(QuantileSketch.init) : []
                t.columns.append(.doubles((0..<groups).map { $0 < col.count ? col[$0].quantile(a.quantile) : .nan }))
                continue
            }
            let k = momentExprs.firstIndex(of: a.expression) ?? 0
            let ms = k < partial.moments.count ? ((try? MomentsColumns(partial.moments[k]).values) ?? []) : []
            func m(_ g: Int) -> Moments { g < ms.count ? ms[g] : Moments() }
            switch a.function {
            case .aggCount: t.columns.append(.int64s((0..<groups).map { Int64(m($0).count) }))
            case .aggSum: t.columns.append(.doubles((0..<groups).map { m($0).sum }))
            case .aggMean: t.columns.append(.doubles((0..<groups).map { m($0).count > 0 ? m($0).mean : .nan }))
            case .aggMin: t.columns.append(.doubles((0..<groups).map { m($0).count > 0 ? m($0).min : .nan }))
            case .aggMax: t.columns.append(.doubles((0..<groups).map { m($0).count > 0 ? m($0).max : .nan }))
            case .aggVar: t.columns.append(.doubles((0..<groups).map { m($0).variance }))
            case .aggStd: t.columns.append(.doubles((0..<groups).map { m($0).standardDeviation }))
            default: t.columns.append(.doubles([Double](repeating: .nan, count: groups)))
            }
        }
        return t
    }
}

public typealias AggregateSpec = Tessera_V1_AggregateSpec
