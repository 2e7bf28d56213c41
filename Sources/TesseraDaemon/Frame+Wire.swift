import TesseraProtocol
import ZeroMQ

extension Frame: RawBytesProviding {
    public func withRawBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try body(bytes)
    }
}

extension Socket {
    /// Sends an encoded message, prefixed by a routing id when sending on a ROUTER.
    /// Sends encoded parts without waiting. - Returns: false when the peer's queue is full.
    func trySend(parts: [[UInt8]]) throws(ZeroMQError) -> Bool {
        try send(parts: parts, dontWait: true)
    }

    /// - Parameter compress: LZ4 bulk frames where that saves space. Off on links that stay on
    ///   this machine (loopback, ipc), where copying is faster than compressing: a 64 MB answer
    ///   went from 0.47 s to (see the commit) without it, measured with `tessera bench python`.
    func sendMessage(to identity: [UInt8]? = nil, _ envelope: Envelope, frames: [[UInt8]] = [], compress: Bool = true) throws(ZeroMQError) {
        var parts = WireProtocol.encode(envelope, frames: frames, compress: compress)
        if let identity { parts.insert(identity, at: 0) }
        try send(parts: parts)
    }
}
