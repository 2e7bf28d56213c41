import TesseraProtocol
import TesseraStorage

/// One column of returned rows: stored integers keep their exact value, stored Float32 stays
/// Float32 (as pandas and pyarrow read it, in half the bytes), computed values are Float64.
public enum RowValues: Sendable, Equatable {
    case doubles([Double])
    case int64s([Int64])
    case bools([Bool])
    case floats([Float])

    init(_ c: ColumnData) {
        switch c {
        case .float64(let a): self = .doubles(a)
        case .float32(let a): self = .floats(a)
        case .int64(let a): self = .int64s(a)
        case .int32(let a): self = .int64s(a.map(Int64.init))
        case .int16(let a): self = .int64s(a.map(Int64.init))
        case .uint8(let a): self = .int64s(a.map(Int64.init))
        case .bool(let a): self = .bools(a)
        }
    }

    public var count: Int {
        switch self {
        case .doubles(let a): a.count
        case .int64s(let a): a.count
        case .bools(let a): a.count
        case .floats(let a): a.count
        }
    }

    /// Appends a column of the same kind (a mismatch means a corrupt partial, reported by the caller).
    ///
    /// In place: the payload is taken out of `self` before it grows, so it is uniquely referenced
    /// and the append is amortised O(new values). (Switching over the tuple `(self, o)` kept a
    /// second reference alive and copied the whole column at every row group: quadratic in the
    /// rows a shard returns, a third of a collect's time on 1M-row shards.)
    mutating func append(_ o: RowValues) -> Bool {
        switch o {
        case .doubles(let b):
            guard case .doubles(var a) = self else { return false }
            self = .doubles([])
            a.append(contentsOf: b)
            self = .doubles(a)
        case .int64s(let b):
            guard case .int64s(var a) = self else { return false }
            self = .int64s([])
            a.append(contentsOf: b)
            self = .int64s(a)
        case .bools(let b):
            guard case .bools(var a) = self else { return false }
            self = .bools([])
            a.append(contentsOf: b)
            self = .bools(a)
        case .floats(let b):
            guard case .floats(var a) = self else { return false }
            self = .floats([])
            a.append(contentsOf: b)
            self = .floats(a)
        }
        return true
    }

    /// The same values in an array with room for `capacity` in all.
    func reserved(_ capacity: Int) -> RowValues {
        func grown<T>(_ a: [T]) -> [T] {
            var b: [T] = []
            b.reserveCapacity(Swift.max(capacity, a.count))
            b.append(contentsOf: a)
            return b
        }
        switch self {
        case .doubles(let a): return .doubles(grown(a))
        case .int64s(let a): return .int64s(grown(a))
        case .bools(let a): return .bools(grown(a))
        case .floats(let a): return .floats(grown(a))
        }
    }

    func gathered(_ rows: [Int]) -> RowValues {
        switch self {
        case .doubles(let a): .doubles(rows.map { a[$0] })
        case .int64s(let a): .int64s(rows.map { a[$0] })
        case .bools(let a): .bools(rows.map { a[$0] })
        case .floats(let a): .floats(rows.map { a[$0] })
        }
    }

    init(_ p: Tessera_V1_RowColumn) {
        switch p.values {
        case .doubles(let d): self = .doubles(d.values)
        case .int64S(let d): self = .int64s(d.values)
        case .bools(let d): self = .bools(d.values)
        case .floats(let d): self = .floats(d.values)
        case nil: self = .doubles([])
        }
    }

    var proto: Tessera_V1_RowColumn {
        var p = Tessera_V1_RowColumn()
        switch self {
        case .doubles(let a): var l = Tessera_V1_DoubleList(); l.values = a; p.doubles = l
        case .int64s(let a): var l = Tessera_V1_Int64List(); l.values = a; p.int64S = l
        case .bools(let a): var l = Tessera_V1_BoolList(); l.values = a; p.bools = l
        case .floats(let a): var l = Tessera_V1_FloatList(); l.values = a; p.floats = l
        }
        return p
    }
}

/// Rows gathered from shards: columns plus each row's spatial index and sort key, so that heads
/// and top-k lists merge into the same rows however the catalog was split.
struct RowBatchBuilder {
    var names: [String] = []
    var columns: [RowValues] = []
    var index: [Int64] = []
    var sortKeys: [Double] = []

    /// Rows the columns get room for when the first rows arrive (0: as many as they bring).
    private var reservedRows = 0

    /// Rows held (a collect's batches carry no spatial index: only heads and top-k lists need it).
    var count: Int { columns.first?.count ?? index.count }

    /// Makes room for `rows` rows in all, once, before the first rows are appended.
    mutating func reserve(rows: Int) { reservedRows = rows }

    mutating func append(names n: [String], values: [RowValues], index ix: [Int64], sortKeys keys: [Double]?) {
        if columns.isEmpty {
            names = n
            columns = reservedRows > 0 ? values.map { $0.reserved(reservedRows) } : values
        } else {
            for k in columns.indices { _ = columns[k].append(values[k]) }
        }
        index += ix
        if let keys { sortKeys += keys }
    }

    /// Keeps the first `limit` rows by sort key (descending or ascending), ties and unsorted rows
    /// by spatial index.
    mutating func trim(to limit: Int, descending: Bool) {
        let n = count
        let hasKeys = sortKeys.count == n && n > 0
        var order = Array(0..<n)
        let (keys, ix) = (sortKeys, index)
        order.sort { a, b in
            if hasKeys && keys[a] != keys[b] { return descending ? keys[a] > keys[b] : keys[a] < keys[b] }
            return ix[a] != ix[b] ? ix[a] < ix[b] : a < b
        }
        if order.count > limit { order.removeLast(order.count - limit) }
        if order == Array(0..<order.count) && order.count == n { return }
        columns = columns.map { $0.gathered(order) }
        index = order.map { ix[$0] }
        if hasKeys { sortKeys = order.map { keys[$0] } }
    }

    /// A seeded Bernoulli draw keyed on the row's spatial index (splitmix64), so a sample has the
    /// same rows whatever the sharding.
    @inline(__always) static func sampled(_ index: Int64, fraction: Double, seed: UInt64) -> Bool {
        var g = SplitMix64(seed: UInt64(bitPattern: index) &+ seed &* 0x9E37_79B9_7F4A_7C15)
        return g.nextUnit() < fraction
    }

    init() {}

    init(_ p: Tessera_V1_RowBatch) throws(CatalogQueryError) {
        names = p.names
        columns = p.columns.map(RowValues.init)
        index = p.index
        sortKeys = p.sortKey
        let n = columns.first?.count ?? index.count
        guard names.count == columns.count, columns.allSatisfy({ $0.count == n }), index.isEmpty || index.count == n,
              sortKeys.isEmpty || sortKeys.count == n else {
            throw CatalogQueryError("a partial row batch has columns of different lengths")
        }
    }

    /// The wire form; `withIndex: false` leaves out each row's spatial index, which only a
    /// limited question (head, top-k) merges by: a collect's rows are ~20% smaller without it.
    func proto(withIndex: Bool) -> Tessera_V1_RowBatch {
        var p = Tessera_V1_RowBatch()
        p.names = names
        p.columns = columns.map(\.proto)
        if withIndex { p.index = index }
        p.sortKey = sortKeys
        return p
    }
}

extension RowValues {
    /// The first `n` values.
    public func prefix(_ n: Int) -> RowValues {
        switch self {
        case .doubles(let a): .doubles(Array(a.prefix(n)))
        case .int64s(let a): .int64s(Array(a.prefix(n)))
        case .bools(let a): .bools(Array(a.prefix(n)))
        case .floats(let a): .floats(Array(a.prefix(n)))
        }
    }
}
