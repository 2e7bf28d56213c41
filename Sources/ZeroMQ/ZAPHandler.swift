/// A ZeroMQ authentication handler (ZAP, RFC 27) for CURVE server sockets of one context.
///
/// libzmq asks it about every new connection to a CURVE server socket of the same context, over
/// `inproc://zeromq.zap.01`, and the handshake waits for the answer. It is an ordinary socket:
/// the owning thread polls it beside its other sockets and calls ``answerPending(_:)``, so the
/// policy runs on that thread with no locking. It must exist before any CURVE server socket of
/// the context binds, and live as long as they do (without a handler libzmq admits everyone).
public final class ZAPHandler {
    /// What a connecting peer presents.
    public struct Request: Sendable {
        /// The ZAP domain of the server socket (``Socket/setZAPDomain(_:)``).
        public let domain: String
        /// The peer's IP address.
        public let address: String
        /// "CURVE", "PLAIN" or "NULL".
        public let mechanism: String
        /// The peer's CURVE public key in Z85 (nil for other mechanisms).
        public let publicKey: String?
    }

    public let socket: Socket
    public static let endpoint = "inproc://zeromq.zap.01"

    public init(context: ZMQContext) throws(ZeroMQError) {
        socket = try context.socket(.rep)
        try socket.bind(Self.endpoint)
    }

    /// Answers every waiting request: `policy` returns the user id to attach to the connection
    /// (readable as the `User-Id` property of each message it sends), or nil to refuse it.
    /// - Returns: how many requests were answered.
    @discardableResult
    public func answerPending(_ policy: (Request) -> String?) throws(ZeroMQError) -> Int {
        var n = 0
        while let parts = try socket.receiveParts(dontWait: true) {
            n += 1
            // version, request id, domain, address, identity, mechanism, credentials...
            guard parts.count >= 6 else {
                _ = try socket.send(parts: [Array("1.0".utf8), parts.count > 1 ? parts[1] : [], Array("400".utf8), Array("malformed ZAP request".utf8), [], []])
                continue
            }
            let text = { (b: [UInt8]) in String(decoding: b, as: UTF8.self) }
            let mechanism = text(parts[5])
            let key = mechanism == "CURVE" && parts.count >= 7 ? CurveKeyPair.z85(parts[6]) : nil
            let request = Request(domain: text(parts[2]), address: text(parts[3]), mechanism: mechanism, publicKey: key)
            let user = text(parts[0]) == "1.0" ? policy(request) : nil
            let (code, why) = user != nil ? ("200", "OK") : ("400", "key not admitted")
            _ = try socket.send(parts: [Array("1.0".utf8), parts[1], Array(code.utf8), Array(why.utf8), Array((user ?? "").utf8), []])
        }
        return n
    }
}

@available(*, unavailable)
extension ZAPHandler: Sendable {}
