import TesseraProtocol

/// Combines partial answers of one catalog question. Merging is associative and commutative
/// (counts, histograms and sketches exactly; moments to rounding), so any reduction tree and any
/// set of progressive snapshots give the same answer.
public enum CatalogMerge {
    /// Merges partials that came over the wire, checking their shapes first.
    public static func merge(_ parts: [CatalogPartial], plan: CatalogQueryPlan) throws(CatalogQueryError) -> CatalogPartial {
        if plan.hasRows && plan.rows.limit == 0 && parts.count > 2 { return try collect(parts, plan: plan) }
        guard var out = parts.first else { return CatalogPartial() }
        try check(out, plan)
        for p in parts.dropFirst() {
            try check(p, plan)
            out = try merge(out, p, plan: plan)
        }
        return out
    }

    /// A collect's batches as one: each column written once (merging them two by two would copy
    /// the rows gathered so far at every batch, quadratic in the batches).
    static func collect(_ parts: [CatalogPartial], plan: CatalogQueryPlan) throws(CatalogQueryError) -> CatalogPartial {
        var out = CatalogPartial()
        var batches: [RowBatchBuilder] = []
        for p in parts {
            // Counts from other processes add with wrapping: a crafted partial may not trap a merge.
            out.shards &+= p.shards
            out.rowsScanned &+= p.rowsScanned
            out.rowsMatched &+= p.rowsMatched
            let b = try RowBatchBuilder(p.rows)
            if !b.columns.isEmpty { batches.append(b) }
        }
        guard let first = batches.first else { return out }
        let total = batches.reduce(0) { $0 + $1.count }
        let cap = CheckedCatalogQuery.rowCap(plan)
        if total > cap {
            throw CatalogQueryError.overRowCap(cap)
        }
        guard batches.allSatisfy({ $0.names == first.names }) else { throw CatalogQueryError("partial row batches with different columns (corrupt partial)") }
        var rows = RowBatchBuilder()
        rows.names = first.names
        for k in first.columns.indices {
            let joined = RowValues.joined(batches.map { $0.columns[k] })
            guard joined.count == total else { throw CatalogQueryError("partial row batches with different column types (corrupt partial)") }
            rows.columns.append(joined)
        }
        out.rows = rows.proto(withIndex: false)
        return out
    }

    static func check(_ p: CatalogPartial, _ plan: CatalogQueryPlan) throws(CatalogQueryError) {
        let groups = p.groupRows.count
        let keyCount = p.groupKeys.count + p.intGroupKeys.count
        guard plan.groupBy.isEmpty || keyCount == groups,
              p.moments.allSatisfy({ $0.count.count == groups }),
              p.sketches.allSatisfy({ $0.groups.count == groups }) else {
            throw CatalogQueryError("a partial aggregate has \(keyCount) keys for \(groups) groups (corrupt partial)")
        }
        guard zip(p.groupKeys, p.groupKeys.dropFirst()).allSatisfy({ $0 < $1 }),
              zip(p.intGroupKeys, p.intGroupKeys.dropFirst()).allSatisfy({ $0 < $1 }) else {
            throw CatalogQueryError("a partial aggregate's group keys are not ascending (corrupt partial)")
        }
        guard isWellFormed(p.skyMap) else {
            throw CatalogQueryError("a partial sky map has mismatched or unordered pixels (corrupt partial)")
        }
        for s in p.sketches {
            for g in s.groups where !QuantileSketch(g).isWellFormed {
                throw CatalogQueryError("a partial quantile sketch has buckets out of range (corrupt partial)")
            }
        }
        // An image question's statistics: a sketch of pixel values and a map of depth per band.
        for s in p.imageStatistics where !QuantileSketch(s.values).isWellFormed || !isWellFormed(s.depth) {
            throw CatalogQueryError("a partial's image statistics of band `\(s.band.prefix(40))` have a sketch out of range or a depth map with mismatched or unordered pixels (corrupt partial)")
        }
    }

    /// A map's columns are as long as its pixels, which ascend (what ``mergeMaps(_:_:)`` reads).
    static func isWellFormed(_ m: Tessera_V1_SkyMapPartial) -> Bool {
        m.counts.count == m.pixels.count && (m.sums.isEmpty || m.sums.count == m.pixels.count)
            && m.valueCounts.count == m.sums.count && zip(m.pixels, m.pixels.dropFirst()).allSatisfy { $0 < $1 }
    }

    static func merge(_ a: CatalogPartial, _ b: CatalogPartial, plan: CatalogQueryPlan) throws(CatalogQueryError) -> CatalogPartial {
        var out = CatalogPartial()
        out.shards = a.shards &+ b.shards
        out.rowsScanned = a.rowsScanned &+ b.rowsScanned
        out.rowsMatched = a.rowsMatched &+ b.rowsMatched
        if !a.imageStatistics.isEmpty || !b.imageStatistics.isEmpty {
            out.imageStatistics = ImageStatistics.merge(a.imageStatistics, b.imageStatistics)
        }
        if a.hasStack || b.hasStack {
            var stack = a.stack
            try ImageStack.merge(&stack, b.stack)
            out.stack = stack
        }
        if plan.hasHistogram {
            if a.histogram.isEmpty { out.histogram = b.histogram } else if b.histogram.isEmpty { out.histogram = a.histogram } else {
                guard a.histogram.count == b.histogram.count else { throw CatalogQueryError("partial histograms of \(a.histogram.count) and \(b.histogram.count) bins (corrupt partial)") }
                var h = a.histogram
                for i in h.indices { h[i] &+= b.histogram[i] }
                out.histogram = h
            }
        } else if plan.hasSkyMap {
            out.skyMap = mergeMaps(a.skyMap, b.skyMap)
        } else if plan.hasRows {
            var rows = try RowBatchBuilder(a.rows)
            let other = try RowBatchBuilder(b.rows)
            if rows.columns.isEmpty { rows = other } else if !other.columns.isEmpty {
                guard rows.names == other.names else { throw CatalogQueryError("partial row batches with different columns (corrupt partial)") }
                for k in rows.columns.indices {
                    guard rows.columns[k].append(other.columns[k]) else { throw CatalogQueryError("partial row batches with different column types (corrupt partial)") }
                }
                rows.index += other.index
                rows.sortKeys += other.sortKeys
                // Both with a spatial index (and sort keys) or both without: a mix would pair
                // rows with another row's index.
                guard rows.index.isEmpty || rows.index.count == rows.count, rows.sortKeys.isEmpty || rows.sortKeys.count == rows.count else {
                    throw CatalogQueryError("partial row batches, one with a spatial index or sort keys and one without (corrupt partial)")
                }
            }
            if plan.rows.limit > 0 {
                rows.trim(to: Int(clamping: plan.rows.limit), descending: plan.rows.descending)
            } else {
                let cap = CheckedCatalogQuery.rowCap(plan)
                if rows.count > cap {
                    throw CatalogQueryError.overRowCap(cap)
                }
            }
            out.rows = rows.proto(withIndex: plan.rows.limit > 0)
        } else {
            try mergeGroups(a, b, into: &out, plan: plan)
        }
        return out
    }

    static func mergeGroups(_ a: CatalogPartial, _ b: CatalogPartial, into out: inout CatalogPartial, plan: CatalogQueryPlan) throws(CatalogQueryError) {
        let am = try a.moments.map { (c) throws(CatalogQueryError) in try MomentsColumns(c).values }
        let bm = try b.moments.map { (c) throws(CatalogQueryError) in try MomentsColumns(c).values }
        let asq = a.sketches.map { $0.groups.map(QuantileSketch.init) }
        let bsq = b.sketches.map { $0.groups.map(QuantileSketch.init) }
        func copy(_ p: CatalogPartial) {
            (out.groupKeys, out.intGroupKeys, out.groupRows, out.moments, out.sketches) = (p.groupKeys, p.intGroupKeys, p.groupRows, p.moments, p.sketches)
        }
        if a.groupRows.isEmpty && a.moments.isEmpty && a.sketches.isEmpty { copy(b); return }
        if b.groupRows.isEmpty && b.moments.isEmpty && b.sketches.isEmpty { copy(a); return }
        guard am.count == bm.count, asq.count == bsq.count else {
            throw CatalogQueryError("partial aggregates with different numbers of expressions (corrupt partial)")
        }
        // (index in a or -1, index in b or -1) per output group, keys ascending.
        var pairs: [(Int, Int)] = []
        if plan.groupBy.isEmpty {
            guard a.groupRows.count == b.groupRows.count else { throw CatalogQueryError("ungrouped partials with different group counts (corrupt partial)") }
            pairs = a.groupRows.indices.map { ($0, $0) }
        } else {
            let intKeys = !a.intGroupKeys.isEmpty || !b.intGroupKeys.isEmpty
            guard a.groupKeys.isEmpty || b.groupKeys.isEmpty || !intKeys else {
                throw CatalogQueryError("partials with integer and floating-point group keys (corrupt partial)")
            }
            if intKeys {
                (pairs, out.intGroupKeys) = mergedKeys(a.intGroupKeys, b.intGroupKeys)
            } else {
                (pairs, out.groupKeys) = mergedKeys(a.groupKeys, b.groupKeys)
            }
            let limit = plan.maxGroups == 0 ? CheckedCatalogQuery.defaultMaxGroups : Int(clamping: plan.maxGroups)
            guard pairs.count <= limit else {
                throw CatalogQueryError("the group-by key `\(plan.groupBy)` gives more than \(limit) groups (the limit); group by a coarser key or raise max_groups")
            }
        }
        out.groupRows = pairs.map { (i, j) in (i >= 0 ? a.groupRows[i] : 0) &+ (j >= 0 ? b.groupRows[j] : 0) }
        out.moments = am.indices.map { e in
            MomentsColumns(pairs.map { (i, j) in
                var m = i >= 0 ? am[e][i] : Moments()
                if j >= 0 { m.merge(bm[e][j]) }
                return m
            }).proto
        }
        let merged = asq.indices.map { e in
            pairs.map { (i, j) in
                var s = i >= 0 ? asq[e][i] : QuantileSketch()
                if j >= 0 { s.merge(bsq[e][j]) }
                return s
            }
        }
        try QuantileSketch.checkBudget(merged)
        out.sketches = merged.map { column in
            var c = Tessera_V1_SketchColumn()
            c.groups = column.map(\.proto)
            return c
        }
    }

    /// Two ascending key lists merged: per output key, its index in `a` and in `b` (or -1).
    static func mergedKeys<K: Comparable>(_ ka: [K], _ kb: [K]) -> (pairs: [(Int, Int)], keys: [K]) {
        var pairs: [(Int, Int)] = [], keys: [K] = []
        var i = 0, j = 0
        while i < ka.count || j < kb.count {
            if j == kb.count || (i < ka.count && ka[i] < kb[j]) {
                pairs.append((i, -1)); keys.append(ka[i]); i += 1
            } else if i == ka.count || kb[j] < ka[i] {
                pairs.append((-1, j)); keys.append(kb[j]); j += 1
            } else {
                pairs.append((i, j)); keys.append(ka[i]); i += 1; j += 1
            }
        }
        return (pairs, keys)
    }

    static func mergeMaps(_ a: Tessera_V1_SkyMapPartial, _ b: Tessera_V1_SkyMapPartial) -> Tessera_V1_SkyMapPartial {
        if a.pixels.isEmpty { var m = b; m.order = max(a.order, b.order); return m }
        if b.pixels.isEmpty { return a }
        var m = Tessera_V1_SkyMapPartial()
        m.order = a.order
        let withValues = !a.sums.isEmpty || !b.sums.isEmpty
        var i = 0, j = 0
        func sum(_ p: Tessera_V1_SkyMapPartial, _ k: Int) -> (Double, UInt64) { p.sums.isEmpty ? (0, 0) : (p.sums[k], p.valueCounts[k]) }
        m.pixels.reserveCapacity(a.pixels.count + b.pixels.count)
        while i < a.pixels.count || j < b.pixels.count {
            var p: UInt64, c: UInt64 = 0, s = 0.0, v: UInt64 = 0
            if j == b.pixels.count || (i < a.pixels.count && a.pixels[i] < b.pixels[j]) {
                p = a.pixels[i]; c = a.counts[i]; (s, v) = sum(a, i); i += 1
            } else if i == a.pixels.count || b.pixels[j] < a.pixels[i] {
                p = b.pixels[j]; c = b.counts[j]; (s, v) = sum(b, j); j += 1
            } else {
                p = a.pixels[i]; c = a.counts[i] &+ b.counts[j]
                let (s1, v1) = sum(a, i), (s2, v2) = sum(b, j)
                s = s1 + s2; v = v1 &+ v2; i += 1; j += 1
            }
            m.pixels.append(p)
            m.counts.append(c)
            if withValues { m.sums.append(s); m.valueCounts.append(v) }
        }
        return m
    }

    /// A map whose pixels are not strictly ascending, sorted and with repeats combined.
    static func normalized(_ m: Tessera_V1_SkyMapPartial) -> Tessera_V1_SkyMapPartial {
        var out = Tessera_V1_SkyMapPartial()
        out.order = m.order
        for k in m.pixels.indices.sorted(by: { m.pixels[$0] < m.pixels[$1] }) {
            if out.pixels.last == m.pixels[k] {
                out.counts[out.counts.count - 1] &+= m.counts[k]
                if !m.sums.isEmpty { out.sums[out.sums.count - 1] += m.sums[k]; out.valueCounts[out.valueCounts.count - 1] &+= m.valueCounts[k] }
            } else {
                out.pixels.append(m.pixels[k])
                out.counts.append(m.counts[k])
                if !m.sums.isEmpty { out.sums.append(m.sums[k]); out.valueCounts.append(m.valueCounts[k]) }
            }
        }
        return out
    }
}
