import TesseraProtocol

public typealias ColumnType = Tessera_V1_ColumnType

/// One column's values: a contiguous typed array (NaN is the missing float).
public enum ColumnData: Sendable, Equatable {
    case float64([Double])
    case float32([Float])
    case int64([Int64])
    case int32([Int32])
    case int16([Int16])
    case uint8([UInt8])
    case bool([Bool])

    public var type: ColumnType {
        switch self {
        case .float64: .columnFloat64
        case .float32: .columnFloat32
        case .int64: .columnInt64
        case .int32: .columnInt32
        case .int16: .columnInt16
        case .uint8: .columnUint8
        case .bool: .columnBool
        }
    }

    public var count: Int {
        switch self {
        case .float64(let a): a.count
        case .float32(let a): a.count
        case .int64(let a): a.count
        case .int32(let a): a.count
        case .int16(let a): a.count
        case .uint8(let a): a.count
        case .bool(let a): a.count
        }
    }

    /// An empty column of a type.
    public static func empty(_ type: ColumnType) -> ColumnData {
        switch type {
        case .columnFloat32: .float32([])
        case .columnInt64: .int64([])
        case .columnInt32: .int32([])
        case .columnInt16: .int16([])
        case .columnUint8: .uint8([])
        case .columnBool: .bool([])
        default: .float64([])
        }
    }

    /// Bytes per value on disk.
    public static func width(_ type: ColumnType) -> Int {
        switch type {
        case .columnFloat64, .columnInt64: 8
        case .columnFloat32, .columnInt32: 4
        case .columnInt16: 2
        default: 1
        }
    }

    /// The values as Float64 (integers converted, Bool as 0/1): the form expressions compute on.
    public var doubles: [Double] {
        switch self {
        case .float64(let a): a
        case .float32(let a): Self.converted(a) { Double($0) }
        case .int64(let a): Self.converted(a) { Double($0) }
        case .int32(let a): Self.converted(a) { Double($0) }
        case .int16(let a): Self.converted(a) { Double($0) }
        case .uint8(let a): Self.converted(a) { Double($0) }
        case .bool(let a): Self.converted(a) { $0 ? 1 : 0 }
        }
    }

    /// One conversion loop into uninitialised storage (no per-element checks, so it vectorises).
    @inline(__always) static func converted<T>(_ a: [T], _ f: (T) -> Double) -> [Double] {
        a.withUnsafeBufferPointer { src in
            [Double](unsafeUninitializedCapacity: src.count) { out, count in
                for i in 0..<src.count { out[i] = f(src[i]) }
                count = src.count
            }
        }
    }

    /// Values at the given row positions, in that order.
    public func gathered(_ rows: [Int]) -> ColumnData {
        switch self {
        case .float64(let a): .float64(rows.map { a[$0] })
        case .float32(let a): .float32(rows.map { a[$0] })
        case .int64(let a): .int64(rows.map { a[$0] })
        case .int32(let a): .int32(rows.map { a[$0] })
        case .int16(let a): .int16(rows.map { a[$0] })
        case .uint8(let a): .uint8(rows.map { a[$0] })
        case .bool(let a): .bool(rows.map { a[$0] })
        }
    }

    /// Rows `range`, copied.
    public func slice(_ r: Range<Int>) -> ColumnData {
        switch self {
        case .float64(let a): .float64(Array(a[r]))
        case .float32(let a): .float32(Array(a[r]))
        case .int64(let a): .int64(Array(a[r]))
        case .int32(let a): .int32(Array(a[r]))
        case .int16(let a): .int16(Array(a[r]))
        case .uint8(let a): .uint8(Array(a[r]))
        case .bool(let a): .bool(Array(a[r]))
        }
    }

    /// Appends another column of the same type, in place (the enum's array is released first so
    /// that it is uniquely referenced and grows without a copy).
    public mutating func append(_ o: ColumnData) {
        let taken = self
        self = .uint8([])
        switch (taken, o) {
        case (.float64(var a), .float64(let b)): a.append(contentsOf: b); self = .float64(a)
        case (.float32(var a), .float32(let b)): a.append(contentsOf: b); self = .float32(a)
        case (.int64(var a), .int64(let b)): a.append(contentsOf: b); self = .int64(a)
        case (.int32(var a), .int32(let b)): a.append(contentsOf: b); self = .int32(a)
        case (.int16(var a), .int16(let b)): a.append(contentsOf: b); self = .int16(a)
        case (.uint8(var a), .uint8(let b)): a.append(contentsOf: b); self = .uint8(a)
        case (.bool(var a), .bool(let b)): a.append(contentsOf: b); self = .bool(a)
        default: preconditionFailure("appending a \(o.type) column to a \(taken.type) column")
        }
    }

    /// The values' bytes as stored (little-endian; Bool as 0/1 bytes), copied.
    public var storedBytes: [UInt8] { withStoredBytes { Array($0) } }

    /// The values' bytes as stored (little-endian; Bool as 0/1 bytes).
    func withStoredBytes<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        switch self {
        case .float64(let a): a.withUnsafeBytes(body)
        case .float32(let a): a.withUnsafeBytes(body)
        case .int64(let a): a.withUnsafeBytes(body)
        case .int32(let a): a.withUnsafeBytes(body)
        case .int16(let a): a.withUnsafeBytes(body)
        case .uint8(let a): a.withUnsafeBytes(body)
        case .bool(let a): a.map { $0 ? UInt8(1) : 0 }.withUnsafeBytes(body)
        }
    }

    /// Values of `type` from their stored bytes (little-endian; Bool as one byte each), which must
    /// hold exactly `rows` values.
    public init(type: ColumnType, rows: Int, storedBytes: UnsafeRawBufferPointer) throws(ShardError) {
        let (need, overflow) = rows.multipliedReportingOverflow(by: Self.width(type))
        guard rows >= 0, !overflow, storedBytes.count == need else {
            throw .invalidInput("a \(type) column of \(rows) rows needs \(need) bytes, got \(storedBytes.count)")
        }
        self = Self.fromStored(type, storedBytes)
    }

    /// Decodes stored bytes (their length already checked against the type's width).
    static func fromStored(_ type: ColumnType, _ bytes: UnsafeRawBufferPointer) -> ColumnData {
        func arr<T>(_: T.Type) -> [T] {
            let n = bytes.count / MemoryLayout<T>.stride
            return [T](unsafeUninitializedCapacity: n) { buf, k in
                if n > 0 { UnsafeMutableRawBufferPointer(buf).copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[0..<(n * MemoryLayout<T>.stride)])) }
                k = n
            }
        }
        switch type {
        case .columnFloat32: return .float32(arr(Float.self))
        case .columnInt64: return .int64(arr(Int64.self))
        case .columnInt32: return .int32(arr(Int32.self))
        case .columnInt16: return .int16(arr(Int16.self))
        case .columnUint8: return .uint8(arr(UInt8.self))
        case .columnBool: return .bool(arr(UInt8.self).map { $0 != 0 })
        default: return .float64(arr(Double.self))
        }
    }

    /// A column of `rows` values of `type` whose stored bytes `fill` writes (when it throws, the
    /// half-made array is dropped).
    static func decoded(_ type: ColumnType, rows: Int,
                        _ fill: (UnsafeMutableRawBufferPointer) throws(ChunkEncodingError) -> Void) throws(ChunkEncodingError) -> ColumnData {
        func arr<T>(_: T.Type) throws(ChunkEncodingError) -> [T] {
            var failure: ChunkEncodingError?
            let a = [T](unsafeUninitializedCapacity: rows) { buf, k in
                // Plain bit patterns: `fill` writes every byte before any is used.
                let raw = UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer(buf.baseAddress), count: rows * MemoryLayout<T>.stride)
                do throws(ChunkEncodingError) { try fill(raw) } catch { failure = error }
                k = rows
            }
            if let failure { throw failure }
            return a
        }
        switch type {
        case .columnFloat32: return .float32(try arr(Float.self))
        case .columnInt64: return .int64(try arr(Int64.self))
        case .columnInt32: return .int32(try arr(Int32.self))
        case .columnInt16: return .int16(try arr(Int16.self))
        case .columnUint8: return .uint8(try arr(UInt8.self))
        case .columnBool: return .bool(try arr(UInt8.self).map { $0 != 0 })
        default: return .float64(try arr(Double.self))
        }
    }

    /// Min and max of non-NaN values (as doubles) and the number of NaNs.
    var statistics: (min: Double, max: Double, nans: UInt64) {
        var lo = Double.infinity, hi = -Double.infinity
        var nans: UInt64 = 0
        func scan<C: Collection>(_ c: C, _ f: (C.Element) -> Double) {
            for x in c {
                let v = f(x)
                if v.isNaN { nans += 1; continue }
                if v < lo { lo = v }
                if v > hi { hi = v }
            }
        }
        switch self {
        case .float64(let a): scan(a) { $0 }
        case .float32(let a): scan(a) { Double($0) }
        case .int64(let a): scan(a) { Double($0) }
        case .int32(let a): scan(a) { Double($0) }
        case .int16(let a): scan(a) { Double($0) }
        case .uint8(let a): scan(a) { Double($0) }
        case .bool(let a): scan(a) { $0 ? 1 : 0 }
        }
        return (lo, hi, nans)
    }
}

/// A column's name, type and documentation.
public struct ColumnSpec: Sendable, Equatable {
    public var name: String
    public var type: ColumnType
    public var unit: String
    public var description: String

    public init(_ name: String, _ type: ColumnType, unit: String = "", description: String = "") {
        self.name = name
        self.type = type
        self.unit = unit
        self.description = description
    }
}
