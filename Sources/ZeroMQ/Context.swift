import CZeroMQ

/// A libzmq context: owns the I/O threads, and is safe to share between threads (libzmq's own
/// guarantee), unlike the sockets made from it.
public final class ZMQContext: @unchecked Sendable {
    let handle: UnsafeMutableRawPointer

    /// - Parameter ioThreads: libzmq background I/O threads; one is plenty below a few GB/s.
    public init(ioThreads: Int32 = 1) throws(ZeroMQError) {
        guard let ctx = zmq_ctx_new() else {
            throw ZeroMQError(code: zmq_errno(), operation: "create context")
        }
        handle = ctx
        try zmqCheck("set context io threads") { zmq_ctx_set(ctx, ZMQ_IO_THREADS, ioThreads) }
    }

    deinit {
        // Every socket must be closed first (sockets hold a strong reference to their context).
        while zmq_ctx_term(handle) != 0 && zmq_errno() == EINTR {}
    }

    /// Creates a socket of the given type; it belongs to the thread that uses it.
    public func socket(_ type: SocketType) throws(ZeroMQError) -> Socket {
        try Socket(context: self, type: type)
    }

    /// The libzmq version linked at run time, e.g. "4.3.4".
    public static var version: String {
        var major: Int32 = 0, minor: Int32 = 0, patch: Int32 = 0
        zmq_version(&major, &minor, &patch)
        return "\(major).\(minor).\(patch)"
    }
}

/// The socket patterns Tessera uses.
public enum SocketType: Sendable {
    case router, dealer, pair, pub, sub, push, pull

    var raw: Int32 {
        switch self {
        case .router: ZMQ_ROUTER
        case .dealer: ZMQ_DEALER
        case .pair: ZMQ_PAIR
        case .pub: ZMQ_PUB
        case .sub: ZMQ_SUB
        case .push: ZMQ_PUSH
        case .pull: ZMQ_PULL
        }
    }
}

/// A CURVE key pair in Z85 text (40 characters each), for authenticated, encrypted links between hosts.
public struct CurveKeyPair: Sendable, Equatable {
    public let publicKey: String
    public let secretKey: String

    /// Generates a fresh key pair with libzmq (which must be built with libsodium or tweetnacl).
    public static func generate() throws(ZeroMQError) -> CurveKeyPair {
        var pub = [CChar](repeating: 0, count: 41)
        var sec = [CChar](repeating: 0, count: 41)
        try zmqCheck("generate CURVE key pair") { zmq_curve_keypair(&pub, &sec) }
        return CurveKeyPair(
            publicKey: String(decoding: pub.prefix(40).map { UInt8(bitPattern: $0) }, as: UTF8.self),
            secretKey: String(decoding: sec.prefix(40).map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }

    /// True when this libzmq supports CURVE.
    public static var isSupported: Bool { zmq_has("curve") != 0 }
}
