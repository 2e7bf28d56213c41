import TesseraProtocol

/// A task's result: a scalar, a column, a mergeable aggregate state or opaque bytes.
///
/// Values are immutable and cheap to share (arrays are copy-on-write), so a stored result can be
/// handed to several reading tasks on other threads without copying.
public enum Value: Sendable, Hashable {
    case empty
    case int64(Int64)
    case float64(Double)
    case int64Column([Int64])
    case float64Column([Double])
    case moments(Moments)
    case bytes([UInt8])

    /// Bytes this value occupies in memory and on the wire.
    public var byteCount: Int {
        switch self {
        case .empty: 0
        case .int64, .float64: 8
        case .int64Column(let c): c.count * 8
        case .float64Column(let c): c.count * 8
        case .moments: Moments.wireSize
        case .bytes(let b): b.count
        }
    }

    /// Number of elements (1 for scalars and aggregate states, 0 for empty).
    public var elementCount: Int {
        switch self {
        case .empty: 0
        case .int64, .float64, .moments: 1
        case .int64Column(let c): c.count
        case .float64Column(let c): c.count
        case .bytes(let b): b.count
        }
    }

    var kind: Tessera_V1_ValueKind {
        switch self {
        case .empty: .valueEmpty
        case .int64: .valueInt64
        case .float64: .valueFloat64
        case .int64Column: .valueInt64Column
        case .float64Column: .valueFloat64Column
        case .moments: .valueMoments
        case .bytes: .valueBytes
        }
    }
}

extension Value: CustomStringConvertible {
    public var description: String {
        switch self {
        case .empty: "empty"
        case .int64(let v): "\(v)"
        case .float64(let v): "\(v)"
        case .int64Column(let c): "int64[\(c.count)]"
        case .float64Column(let c): "float64[\(c.count)]"
        case .moments(let m): "moments(count: \(m.count), mean: \(m.mean), std: \(m.standardDeviation))"
        case .bytes(let b): "bytes[\(b.count)]"
        }
    }
}

// MARK: Wire form

extension Value {
    /// Appends the value's little-endian bytes to `frame` and describes where they are.
    public func append(to frame: inout [UInt8], key: UInt64, frameIndex: UInt32) -> Tessera_V1_ValueInfo {
        var info = Tessera_V1_ValueInfo()
        info.key = key
        info.kind = kind
        info.count = UInt64(elementCount)
        info.frame = frameIndex
        info.offset = UInt64(frame.count)
        switch self {
        case .empty: break
        case .int64(let v): Swift.withUnsafeBytes(of: v.littleEndian) { frame.append(contentsOf: $0) }
        case .float64(let v): Swift.withUnsafeBytes(of: v.bitPattern.littleEndian) { frame.append(contentsOf: $0) }
        case .int64Column(let c): frame.append(contentsOf: c.littleEndianBytes)
        case .float64Column(let c): c.withUnsafeBytes { frame.append(contentsOf: $0) }
        case .moments(let m): m.asArray.withUnsafeBytes { frame.append(contentsOf: $0) }
        case .bytes(let b):
            // Alone in its frame (a shard's rows, typically), the bytes are shared, not copied.
            if frame.isEmpty { frame = b } else { frame.append(contentsOf: b) }
        }
        info.length = UInt64(frame.count) - info.offset
        return info
    }

    /// Reads a value described by `info` out of the message's bulk frames, checking every bound.
    public init(info: Tessera_V1_ValueInfo, frames: [[UInt8]]) throws(ProtocolError) {
        guard Int(info.frame) < frames.count else {
            throw .invalidContent("value \(info.key) points at bulk frame \(info.frame) of \(frames.count)")
        }
        let frame = frames[Int(info.frame)]
        guard info.offset <= UInt64(frame.count), info.length <= UInt64(frame.count) - info.offset else {
            throw .invalidContent("value \(info.key) spans bytes \(info.offset)+\(info.length) of a \(frame.count)-byte frame")
        }
        let lo = Int(info.offset), hi = lo + Int(info.length)
        let bytes = Array(frame[lo..<hi])
        // Element counts come from outside: bound them by the bytes present before any arithmetic.
        guard info.count <= UInt64(bytes.count) else {
            throw .invalidContent("value \(info.key) claims \(info.count) elements in \(bytes.count) bytes")
        }
        func expect(_ n: Int) throws(ProtocolError) {
            guard bytes.count == n else {
                throw .invalidContent("value \(info.key) of kind \(info.kind) has \(bytes.count) bytes, expected \(n)")
            }
        }
        switch info.kind {
        case .valueEmpty: self = .empty
        case .valueInt64:
            try expect(8)
            self = .int64([Int64](littleEndianBytes: bytes)[0])
        case .valueFloat64:
            try expect(8)
            self = .float64(Double(bitPattern: [UInt64](littleEndianBytes: bytes)[0]))
        case .valueInt64Column:
            try expect(Int(info.count) * 8)
            self = .int64Column([Int64](littleEndianBytes: bytes))
        case .valueFloat64Column:
            try expect(Int(info.count) * 8)
            self = .float64Column([UInt64](littleEndianBytes: bytes).map { Double(bitPattern: $0) })
        case .valueMoments:
            try expect(Moments.wireSize)
            self = .moments(Moments(array: [UInt64](littleEndianBytes: bytes).map { Double(bitPattern: $0) }))
        case .valueBytes: self = .bytes(bytes)
        case .UNRECOGNIZED(let k): throw .invalidContent("value \(info.key) has unknown kind \(k)")
        }
    }
}
