import CZeroMQ

#if canImport(Glibc)
import Glibc
#endif

/// A ZeroMQ socket. Not thread-safe: exactly one thread owns and uses it (libzmq's rule), which
/// is why it is not `Sendable`.
public final class Socket {
    let handle: UnsafeMutableRawPointer
    /// Keeps the context alive while the socket exists.
    private let context: ZMQContext
    public let type: SocketType
    private var closed = false

    init(context: ZMQContext, type: SocketType) throws(ZeroMQError) {
        guard let s = zmq_socket(context.handle, type.raw) else {
            throw ZeroMQError(code: zmq_errno(), operation: "create \(type) socket")
        }
        self.handle = s
        self.context = context
        self.type = type
        // Never let an unsent message keep a process from exiting; callers raise it where needed.
        try setOption(ZMQ_LINGER, Int32(0), "linger")
    }

    deinit { close() }

    /// Closes the socket; pending messages are kept for at most the linger period.
    public func close() {
        if closed { return }
        closed = true
        zmq_close(handle)
    }

    // MARK: Endpoints

    /// Binds to an endpoint such as `tcp://127.0.0.1:7700`, `tcp://127.0.0.1:*` (a free port) or
    /// `inproc://name`. Returns the endpoint actually bound (with the port filled in).
    @discardableResult
    public func bind(_ endpoint: String) throws(ZeroMQError) -> String {
        try zmqCheck("bind \(endpoint)") { zmq_bind(handle, endpoint) }
        return (try? lastEndpoint) ?? endpoint
    }

    public func connect(_ endpoint: String) throws(ZeroMQError) {
        try zmqCheck("connect \(endpoint)") { zmq_connect(handle, endpoint) }
    }

    public func disconnect(_ endpoint: String) throws(ZeroMQError) {
        try zmqCheck("disconnect \(endpoint)") { zmq_disconnect(handle, endpoint) }
    }

    // MARK: Sending

    /// Sends one frame; `more` marks that further frames of the same message follow.
    /// The frame's content is handed to libzmq (the frame is empty afterwards).
    /// - Returns: false when `dontWait` is set and the message could not be queued (`EAGAIN`).
    @discardableResult
    public func send(_ frame: Frame, more: Bool = false, dontWait: Bool = false) throws(ZeroMQError) -> Bool {
        var flags: Int32 = 0
        if more { flags |= ZMQ_SNDMORE }
        if dontWait { flags |= ZMQ_DONTWAIT }
        do {
            try zmqCheck("send on \(type) socket") { zmq_msg_send(frame.msg, handle, flags) }
            return true
        } catch where error.isWouldBlock && dontWait {
            return false
        }
    }

    /// Sends a multipart message.
    /// - Returns: false when `dontWait` is set and the first frame could not be queued.
    @discardableResult
    public func send(_ frames: [Frame], dontWait: Bool = false) throws(ZeroMQError) -> Bool {
        for (i, f) in frames.enumerated() {
            // Once the first part is queued, the rest of the message always is (libzmq is atomic per message).
            let ok = try send(f, more: i + 1 < frames.count, dontWait: dontWait && i == 0)
            if !ok { return false }
        }
        return true
    }

    /// Sends a multipart message of byte arrays (small ones copied, large ones shared until sent).
    @discardableResult
    public func send(parts: [[UInt8]], dontWait: Bool = false) throws(ZeroMQError) -> Bool {
        // Large parts are handed to libzmq in place; small ones are cheaper to copy.
        try send(parts.map { $0.count >= Frame.sharingThreshold ? Frame(sharing: $0) : Frame($0) }, dontWait: dontWait)
    }

    // MARK: Receiving

    /// Receives one whole multipart message. Returns nil when `dontWait` is set and none is waiting.
    public func receive(dontWait: Bool = false) throws(ZeroMQError) -> [Frame]? {
        var frames: [Frame] = []
        while true {
            let f = Frame()
            let flags: Int32 = (dontWait && frames.isEmpty) ? ZMQ_DONTWAIT : 0
            do {
                try zmqCheck("receive on \(type) socket") { zmq_msg_recv(f.msg, handle, flags) }
            } catch where error.isWouldBlock && dontWait && frames.isEmpty {
                return nil
            }
            frames.append(f)
            if zmq_msg_more(f.msg) == 0 { return frames }
        }
    }

    /// Receives one multipart message as byte arrays (copied).
    public func receiveParts(dontWait: Bool = false) throws(ZeroMQError) -> [[UInt8]]? {
        try receive(dontWait: dontWait)?.map(\.array)
    }

    // MARK: Options

    func setOption(_ option: Int32, _ value: Int32, _ name: String) throws(ZeroMQError) {
        var v = value
        try zmqCheck("set \(name)") { zmq_setsockopt(handle, option, &v, MemoryLayout<Int32>.size) }
    }

    func setOption(_ option: Int32, bytes: [UInt8], _ name: String) throws(ZeroMQError) {
        try zmqCheck("set \(name)") {
            bytes.withUnsafeBytes { zmq_setsockopt(handle, option, $0.baseAddress, bytes.count) }
        }
    }

    func getInt(_ option: Int32, _ name: String) throws(ZeroMQError) -> Int32 {
        var v: Int32 = 0
        var size = MemoryLayout<Int32>.size
        try zmqCheck("get \(name)") { zmq_getsockopt(handle, option, &v, &size) }
        return v
    }

    /// How long unsent messages are kept after close, in milliseconds (-1 forever). Default here: 0.
    public func setLinger(milliseconds: Int32) throws(ZeroMQError) { try setOption(ZMQ_LINGER, milliseconds, "linger") }

    /// High-water marks: messages queued per peer before sends block or drop (0 = unlimited).
    public func setSendHighWaterMark(_ n: Int32) throws(ZeroMQError) { try setOption(ZMQ_SNDHWM, n, "send high-water mark") }
    public func setReceiveHighWaterMark(_ n: Int32) throws(ZeroMQError) { try setOption(ZMQ_RCVHWM, n, "receive high-water mark") }

    /// The identity a ROUTER peer sees for this socket (set before connecting).
    public func setRoutingID(_ id: [UInt8]) throws(ZeroMQError) { try setOption(ZMQ_ROUTING_ID, bytes: id, "routing id") }

    /// A ROUTER reports unroutable messages as `EHOSTUNREACH` instead of dropping them silently.
    public func setRouterMandatory(_ on: Bool) throws(ZeroMQError) {
        try setOption(ZMQ_ROUTER_MANDATORY, on ? 1 : 0, "router mandatory")
    }

    /// Queue messages only to completed connections (a DEALER then blocks or fails rather than
    /// queueing for a peer that never answers).
    public func setImmediate(_ on: Bool) throws(ZeroMQError) { try setOption(ZMQ_IMMEDIATE, on ? 1 : 0, "immediate") }

    /// ZMTP heartbeats: ping every `interval`, drop the connection without a reply in `timeout`;
    /// `ttl` asks the remote side to drop us after that long without traffic.
    public func setHeartbeat(intervalMs: Int32, timeoutMs: Int32, ttlMs: Int32 = 0) throws(ZeroMQError) {
        try setOption(ZMQ_HEARTBEAT_IVL, intervalMs, "heartbeat interval")
        try setOption(ZMQ_HEARTBEAT_TIMEOUT, timeoutMs, "heartbeat timeout")
        if ttlMs > 0 { try setOption(ZMQ_HEARTBEAT_TTL, ttlMs, "heartbeat ttl") }
    }

    /// Largest message accepted from a peer, in bytes (-1 = unlimited); larger ones drop the peer.
    public func setMaxMessageSize(_ bytes: Int64) throws(ZeroMQError) {
        var v = bytes
        try zmqCheck("set max message size") { zmq_setsockopt(handle, ZMQ_MAXMSGSIZE, &v, 8) }
    }

    /// Milliseconds a blocking receive or send waits before failing with `EAGAIN` (-1 forever).
    public func setReceiveTimeout(milliseconds: Int32) throws(ZeroMQError) { try setOption(ZMQ_RCVTIMEO, milliseconds, "receive timeout") }
    public func setSendTimeout(milliseconds: Int32) throws(ZeroMQError) { try setOption(ZMQ_SNDTIMEO, milliseconds, "send timeout") }

    /// SUB: receive messages whose first frame starts with `prefix` (empty = everything).
    public func subscribe(_ prefix: [UInt8] = []) throws(ZeroMQError) { try setOption(ZMQ_SUBSCRIBE, bytes: prefix, "subscribe") }

    /// CURVE server side: this socket authenticates clients with its secret key.
    public func makeCurveServer(secretKey: String) throws(ZeroMQError) {
        try setOption(ZMQ_CURVE_SERVER, 1, "curve server")
        try setOption(ZMQ_CURVE_SECRETKEY, bytes: Array(secretKey.utf8), "curve secret key")
    }

    /// CURVE client side: this socket's own key pair and the server's public key.
    public func makeCurveClient(serverPublicKey: String, keys: CurveKeyPair) throws(ZeroMQError) {
        try setOption(ZMQ_CURVE_SERVERKEY, bytes: Array(serverPublicKey.utf8), "curve server key")
        try setOption(ZMQ_CURVE_PUBLICKEY, bytes: Array(keys.publicKey.utf8), "curve public key")
        try setOption(ZMQ_CURVE_SECRETKEY, bytes: Array(keys.secretKey.utf8), "curve secret key")
    }

    /// The ZAP domain a server socket names in its authentication requests (so one handler can
    /// apply a different policy to each socket).
    public func setZAPDomain(_ domain: String) throws(ZeroMQError) {
        try setOption(ZMQ_ZAP_DOMAIN, bytes: Array(domain.utf8), "ZAP domain")
    }

    /// The endpoint last bound, with a wildcard port resolved (`tcp://127.0.0.1:41234`).
    public var lastEndpoint: String {
        get throws(ZeroMQError) {
            var buf = [CChar](repeating: 0, count: 512)
            var size = buf.count
            try zmqCheck("get last endpoint") { zmq_getsockopt(handle, ZMQ_LAST_ENDPOINT, &buf, &size) }
            return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
    }
}

@available(*, unavailable)
extension Socket: Sendable {}
