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

extension Tessera_V1_RowBatch {
    /// Rows in the batch (its first column's length).
    public var rowCount: Int { columns.first.map { RowValues($0).count } ?? 0 }
}

/// Rows gathered from shards: columns plus each row's spatial index and sort key, so that heads
/// and top-k lists merge into the same rows however the catalog was split.
struct RowBatchBuilder {
    var names: [String] = []
    var columns: [RowValues] = []
    var index: [Int64] = []
    var sortKeys: [Double] = []

    /// A collect's mode: each append's columns are kept as they came (`chunks`), to be written
    /// into the answer once, and no spatial index is kept (a collect's answer has none).
    var keepsChunks = false
    /// Per column, the appended columns in order (when `keepsChunks`).
    private var chunks: [[RowValues]] = []
    private var chunkRows = 0

    /// Rows held (a collect's batches carry no spatial index: only heads and top-k lists need it).
    var count: Int { keepsChunks ? chunkRows : columns.first?.count ?? index.count }

    mutating func append(names n: [String], values: [RowValues], index ix: [Int64], sortKeys keys: [Double]?) {
        // Columns with no row yet (a shard's, named before any row group) are replaced, not
        // appended to: a collect's one chunk is then its answer's column as it is.
        if keepsChunks {
            if chunkRows == 0 {
                names = n
                chunks = values.map { [$0] }
            } else {
                for k in chunks.indices { chunks[k].append(values[k]) }
            }
            chunkRows += values.first?.count ?? 0
            return   // (a collect has no sort key: sorting needs a limit)
        }
        if count == 0 {
            names = n
            columns = values
        } else {
            for k in columns.indices { _ = columns[k].append(values[k]) }
        }
        index += ix
        if let keys { sortKeys += keys }
    }

    /// Appends another batch's rows (a row group's, after this one's).
    mutating func absorb(_ o: RowBatchBuilder) {
        if o.count == 0 { return }
        if keepsChunks {
            if chunkRows == 0 {
                names = o.names
                chunks = o.chunks
            } else {
                for k in chunks.indices { chunks[k].append(contentsOf: o.chunks[k]) }
            }
            chunkRows += o.chunkRows
            return
        }
        append(names: o.names, values: o.columns, index: o.index, sortKeys: o.sortKeys.isEmpty ? nil : o.sortKeys)
    }

    /// Keeps the first `limit` rows by sort key (descending or ascending), ties and unsorted rows
    /// by spatial index.
    mutating func trim(to limit: Int, descending: Bool) {
        let n = count
        let hasKeys = sortKeys.count == n && n > 0
        // Without an index for every row (a batch that came without one), ties keep their order.
        let hasIndex = index.count == n
        var order = Array(0..<n)
        let (keys, ix) = (sortKeys, index)
        order.sort { a, b in
            if hasKeys && keys[a] != keys[b] { return descending ? keys[a] > keys[b] : keys[a] < keys[b] }
            return hasIndex && ix[a] != ix[b] ? ix[a] < ix[b] : a < b
        }
        if order.count > limit { order.removeLast(order.count - limit) }
        if order == Array(0..<order.count) && order.count == n { return }
        columns = columns.map { $0.gathered(order) }
        index = hasIndex ? order.map { ix[$0] } : []
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
        p.columns = keepsChunks ? chunks.map { RowValues.joined($0).proto } : columns.map(\.proto)
        if withIndex { p.index = index }
        p.sortKey = sortKeys
        return p
    }
}

// MARK: - A collect's rows written straight into the wire

extension RowBatchBuilder {
    /// Appends field `field` of a message, holding this batch as a `RowBatch` (names and
    /// columns: a collect has neither index nor sort keys), exactly as SwiftProtobuf would encode it, writing each column's
    /// chunks into place once. The packed fields are little-endian arrays, so chunks are copied
    /// whole.
    func appendWireField(_ field: Int, to out: inout [UInt8]) {
        let columnKinds: [RowValues] = keepsChunks ? chunks.map { $0.first ?? .doubles([]) } : columns
        let rowCount = count
        func listSize(_ kind: RowValues) -> Int {
            let payload = rowCount * kind.wireWidth
            return payload == 0 ? 0 : WireBytes.fieldSize(payload)
        }
        var batchSize = names.reduce(0) { $0 + WireBytes.fieldSize($1.utf8.count) }
        for kind in columnKinds { batchSize += WireBytes.fieldSize(WireBytes.fieldSize(listSize(kind))) }
        out.reserveCapacity(out.count + WireBytes.fieldSize(batchSize))

        WireBytes.appendHeader(field: field, length: batchSize, to: &out)
        for n in names {
            WireBytes.appendHeader(field: 1, length: n.utf8.count, to: &out)
            out.append(contentsOf: n.utf8)
        }
        for (k, kind) in columnKinds.enumerated() {
            let list = listSize(kind)
            WireBytes.appendHeader(field: 2, length: WireBytes.fieldSize(list), to: &out)
            WireBytes.appendHeader(field: kind.wireField, length: list, to: &out)
            guard list > 0 else { continue }
            WireBytes.appendHeader(field: 1, length: rowCount * kind.wireWidth, to: &out)
            for chunk in keepsChunks ? chunks[k] : [columns[k]] { chunk.appendLittleEndian(to: &out) }
        }
    }
}

/// Protobuf's length-delimited fields, for the one message written by hand.
enum WireBytes {
    static func varintSize(_ v: Int) -> Int {
        var n = 1, x = UInt64(v)
        while x >= 0x80 { x >>= 7; n += 1 }
        return n
    }

    /// Bytes of a length-delimited field (tag, length, payload) with a field number below 16.
    static func fieldSize(_ payload: Int) -> Int { 1 + varintSize(payload) + payload }

    static func appendHeader(field: Int, length: Int, to out: inout [UInt8]) {
        out.append(UInt8(field << 3 | 2))
        var x = UInt64(length)
        while x >= 0x80 { out.append(UInt8(x & 0x7F) | 0x80); x >>= 7 }
        out.append(UInt8(x))
    }
}

extension RowValues {
    /// Chunks of one kind as one column.
    static func joined(_ chunks: [RowValues]) -> RowValues {
        guard let first = chunks.first else { return .doubles([]) }
        if chunks.count == 1 { return first }
        let total = chunks.reduce(0) { $0 + $1.count }
        func join<T>(_ values: (RowValues) -> [T]?) -> [T] {
            var out: [T] = []
            out.reserveCapacity(total)
            for c in chunks { if let v = values(c) { out.append(contentsOf: v) } }
            return out
        }
        switch first {
        case .doubles: return .doubles(join { if case .doubles(let a) = $0 { a } else { nil } })
        case .int64s: return .int64s(join { if case .int64s(let a) = $0 { a } else { nil } })
        case .bools: return .bools(join { if case .bools(let a) = $0 { a } else { nil } })
        case .floats: return .floats(join { if case .floats(let a) = $0 { a } else { nil } })
        }
    }

    /// The `RowColumn` oneof field this kind is.
    var wireField: Int {
        switch self {
        case .doubles: 1
        case .int64s: 2
        case .bools: 3
        case .floats: 4
        }
    }

    /// Bytes per value in a packed field (sfixed64, double, float; bools are one-byte varints).
    var wireWidth: Int {
        switch self {
        case .doubles, .int64s: 8
        case .floats: 4
        case .bools: 1
        }
    }

    /// The values as a packed field's payload.
    func appendLittleEndian(to out: inout [UInt8]) {
        #if _endian(little)
        switch self {
        case .doubles(let a): a.withUnsafeBytes { out.append(contentsOf: $0) }
        case .int64s(let a): a.withUnsafeBytes { out.append(contentsOf: $0) }
        case .floats(let a): a.withUnsafeBytes { out.append(contentsOf: $0) }
        case .bools(let a): for b in a { out.append(b ? 1 : 0) }
        }
        #else
        switch self {
        case .doubles(let a): for v in a { withUnsafeBytes(of: v.bitPattern.littleEndian) { out.append(contentsOf: $0) } }
        case .int64s(let a): for v in a { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        case .floats(let a): for v in a { withUnsafeBytes(of: v.bitPattern.littleEndian) { out.append(contentsOf: $0) } }
        case .bools(let a): for b in a { out.append(b ? 1 : 0) }
        }
        #endif
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

extension Tessera_V1_CatalogPartial {
    /// The rows a serialized partial carries (its batch's first column's length, as `rows.rowCount`
    /// of the decoded message), read from the wire form without decoding it: a worker reports
    /// the rows of each answer it returns, so the scheduler can hold a whole collect to its row
    /// cap. Nil when the bytes are not a well-formed message.
    public static func rowCount(serialized b: [UInt8]) -> Int? {
        b.withUnsafeBufferPointer { whole -> Int? in
            // CatalogPartial.rows (10) → RowBatch.columns (2), the first → its one list (1…4)
            // → the list's values (1).
            var partial = ProtobufWire(whole[...])
            guard let batch = partial.firstField(10) else { return partial.failed ? nil : 0 }
            var columns = ProtobufWire(batch)
            guard let column = columns.firstField(2) else { return columns.failed ? nil : 0 }
            var lists = ProtobufWire(column)
            guard let (kind, list) = lists.nextLengthDelimited() else { return lists.failed ? nil : 0 }
            guard (1...4).contains(kind) else { return nil }
            // Every occurrence of the values field counts, packed or not, as a parser's would.
            var values = ProtobufWire(list)
            var count = 0
            while let (field, packed) = values.next() {
                guard field == 1 else { continue }
                guard let packed else { count += 1; continue }
                switch kind {
                case 1, 2: count += packed.count / 8               // doubles, sfixed64
                case 4: count += packed.count / 4                  // floats
                default: count += packed.lazy.filter { $0 & 0x80 == 0 }.count  // bools: varints
                }
            }
            return values.failed ? nil : count
        }
    }
}

/// A reader of protocol buffers' wire form over a buffer: fields in order, length-delimited
/// ones as slices of the buffer; anything malformed stops it, with `failed` set.
struct ProtobufWire {
    let bytes: UnsafeBufferPointer<UInt8>
    var at: Int
    let end: Int
    private(set) var failed = false

    init(_ s: Slice<UnsafeBufferPointer<UInt8>>) {
        bytes = s.base
        at = s.startIndex
        end = s.endIndex
    }

    mutating func varint() -> UInt64? {
        var v: UInt64 = 0
        var shift: UInt64 = 0
        while at < end, shift < 64 {
            let byte = bytes[at]
            at += 1
            v |= UInt64(byte & 0x7F) << shift
            if byte & 0x80 == 0 { return v }
            shift += 7
        }
        failed = true
        return nil
    }

    /// The next field of any wire type: its number, and its bytes if length-delimited (nil
    /// for the other types, skipped). Nil at the end or on malformed input.
    mutating func next() -> (field: UInt64, value: Slice<UnsafeBufferPointer<UInt8>>?)? {
        guard at < end, let tag = varint() else { return nil }
        let field = tag >> 3
        switch tag & 7 {
        case 0: guard varint() != nil else { return nil }; return (field, nil)
        case 1: guard end - at >= 8 else { failed = true; return nil }; at += 8; return (field, nil)
        case 5: guard end - at >= 4 else { failed = true; return nil }; at += 4; return (field, nil)
        case 2:
            guard let n = varint(), n <= UInt64(end - at) else { failed = true; return nil }
            let s = bytes[at..<(at + Int(n))]
            at += Int(n)
            return (field, s)
        default: failed = true; return nil
        }
    }

    /// The first length-delimited occurrence of `field`.
    mutating func firstField(_ field: UInt64) -> Slice<UnsafeBufferPointer<UInt8>>? {
        while let (f, v) = next() { if f == field, let v { return v } }
        return nil
    }

    /// The next length-delimited field, whatever its number.
    mutating func nextLengthDelimited() -> (UInt64, Slice<UnsafeBufferPointer<UInt8>>)? {
        while let (f, v) = next() { if let v { return (f, v) } }
        return nil
    }
}

extension ResultTable {
    /// A rows question's columns with no row, for an answer no shard gave (a region off the
    /// footprint): named as shards name them (`name = expression` names its column; nothing
    /// selected, every stored column), each stored column of its stored type, an expression's
    /// doubles.
    public static func noRows(selecting select: [String], schema: [(name: String, type: ColumnType)]) -> ResultTable {
        let selections = select.isEmpty ? schema.map { ($0.name, $0.name) } : select.map { CheckedCatalogQuery.namedSelection(trimmed($0)) }
        return ResultTable(names: selections.map(\.0), columns: selections.map { _, expression in
            schema.first { $0.name == expression }.map { RowValues(ColumnData.empty($0.type)) } ?? .doubles([])
        })
    }
}
