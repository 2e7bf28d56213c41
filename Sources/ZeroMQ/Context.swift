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
        let v = versionNumbers
        return "\(v.major).\(v.minor).\(v.patch)"
    }

    /// The libzmq version linked at run time, as numbers.
    public static var versionNumbers: (major: Int, minor: Int, patch: Int) {
        var major: Int32 = 0, minor: Int32 = 0, patch: Int32 = 0
        zmq_version(&major, &minor, &patch)
        return (Int(major), Int(minor), Int(patch))
    }
}

/// The socket patterns Tessera uses.
public enum SocketType: Sendable {
    case router, dealer, pair, pub, sub, push, pull, rep

    var raw: Int32 {
        switch self {
        case .router: ZMQ_ROUTER
        case .dealer: ZMQ_DEALER
        case .pair: ZMQ_PAIR
        case .pub: ZMQ_PUB
        case .sub: ZMQ_SUB
        case .push: ZMQ_PUSH
        case .pull: ZMQ_PULL
        case .rep: ZMQ_REP
        }
    }
}

/// A CURVE key pair in Z85 text (40 characters each), for authenticated, encrypted links between hosts.
public struct CurveKeyPair: Sendable, Equatable {
    public let publicKey: String
    public let secretKey: String

    public init(publicKey: String, secretKey: String) {
        self.publicKey = publicKey
        self.secretKey = secretKey
    }

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

    /// The key pair whose secret key is `secretKey` (Z85); nil when it is not a valid key.
    public init?(secretKey: String) {
        guard secretKey.utf8.count == 40 else { return nil }
        var pub = [CChar](repeating: 0, count: 41)
        guard zmq_curve_public(&pub, secretKey) == 0 else { return nil }
        self.init(publicKey: String(decoding: pub.prefix(40).map { UInt8(bitPattern: $0) }, as: UTF8.self), secretKey: secretKey)
    }

    /// A 32-byte binary key (as ZAP hands it over) in Z85 text.
    public static func z85(_ key: [UInt8]) -> String? {
        guard key.count == 32 else { return nil }
        var out = [CChar](repeating: 0, count: 41)
        guard key.withUnsafeBufferPointer({ zmq_z85_encode(&out, $0.baseAddress, 32) }) != nil else { return nil }
        return String(decoding: out.prefix(40).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Whether `key` is 40 characters of Z85 text that decode to 32 bytes.
    public static func isValidKey(_ key: String) -> Bool {
        guard key.utf8.count == 40 else { return false }
        var out = [UInt8](repeating: 0, count: 32)
        return zmq_z85_decode(&out, key) != nil
    }
}
