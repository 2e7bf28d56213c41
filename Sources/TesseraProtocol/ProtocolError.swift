/// What can be wrong with a message that arrived on the wire.
public enum ProtocolError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The message had no frames at all.
    case emptyMessage
    /// The header frame is not a valid `Envelope`.
    case malformedHeader(String)
    /// The sender speaks a protocol version this build does not.
    case unsupportedVersion(UInt32)
    /// The header describes a different number of bulk frames than arrived.
    case frameCountMismatch(declared: Int, received: Int)
    /// A bulk frame cannot be decoded (bad LZ4 data, wrong length).
    case corruptFrame(index: Int, reason: String)
    /// The message is well formed but its content is inconsistent (e.g. a graph with a cycle).
    case invalidContent(String)
    /// The message is larger than the receiver accepts (frames, header, or decoded bytes).
    case overBudget(String)

    public var description: String {
        switch self {
        case .emptyMessage: "empty message (no header frame)"
        case .malformedHeader(let why): "malformed message header: \(why)"
        case .unsupportedVersion(let v):
            "unsupported protocol version \(v): this build speaks version \(WireProtocol.version); upgrade the older side"
        case .frameCountMismatch(let d, let r): "header describes \(d) bulk frames but \(r) arrived"
        case .corruptFrame(let i, let why): "bulk frame \(i) is corrupt: \(why)"
        case .invalidContent(let why): why
        case .overBudget(let why): why
        }
    }
}
