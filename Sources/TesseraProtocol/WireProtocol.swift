import SwiftProtobuf

public typealias Envelope = Tessera_V1_Envelope

/// Encoding and decoding of whole multipart messages: `[header, bulk frame, ...]`.
public enum WireProtocol {
    /// The protocol version this build speaks (`Envelope.version`).
    public static let version: UInt32 = 1
    /// Largest bulk frame a receiver accepts once decoded (guards against allocation bombs).
    public static let maximumFrameBytes = 1 << 31

    /// Encodes a message. Bulk frames are LZ4-compressed where that saves at least ~10%.
    /// - Returns: the parts to send, header first.
    public static func encode(_ envelope: Envelope, frames: [[UInt8]] = [], compress: Bool = true) -> [[UInt8]] {
        var env = envelope
        env.version = version
        var parts: [[UInt8]] = []
        parts.reserveCapacity(frames.count + 1)
        parts.append([])
        env.frames.removeAll(keepingCapacity: true)
        for f in frames {
            var info = Tessera_V1_FrameInfo()
            info.rawLength = UInt64(f.count)
            if compress, let packed = f.withUnsafeBytes({ LZ4.compressIfWorthwhile($0) }) {
                info.codec = .lz4
                parts.append(packed)
            } else {
                parts.append(f)
            }
            env.frames.append(info)
        }
        // Serialising a plain message with no required fields cannot fail.
        parts[0] = (try? env.serializedBytes()) ?? []
        return parts
    }

    /// Decodes the header alone (cheap when the bulk frames are not needed).
    public static func decodeHeader(_ header: UnsafeRawBufferPointer) throws(ProtocolError) -> Envelope {
        let env: Envelope
        do {
            env = try Envelope(serializedBytes: Array(header))
        } catch {
            throw .malformedHeader("\(error)")
        }
        guard env.version == version else { throw .unsupportedVersion(env.version) }
        guard env.body != nil else { throw .malformedHeader("no message body") }
        return env
    }

    /// Decodes a whole message: the header, then every bulk frame (decompressed as its
    /// `FrameInfo` says).
    ///
    /// - Parameter budget: the most bytes the whole message may decode to (header and every bulk
    ///   frame decompressed). It is checked against the declared lengths before anything is
    ///   decompressed, so a small message cannot make the receiver allocate much.
    public static func decode<Part: RawBytesProviding>(_ parts: [Part], budget: Int = Limits.workerMessageBytes) throws(ProtocolError) -> (Envelope, [[UInt8]]) {
        guard let first = parts.first else { throw .emptyMessage }
        guard parts.count - 1 <= Limits.framesPerMessage else {
            throw .overBudget("a message of \(parts.count - 1) bulk frames is over the limit of \(Limits.framesPerMessage)")
        }
        let headerBytes = first.withRawBytes { $0.count }
        guard headerBytes <= Limits.headerBytes else {
            throw .overBudget("a message header of \(headerBytes) bytes is over the limit of \(Limits.headerBytes)")
        }
        let env = try first.withRawBytes { (b) throws(ProtocolError) in try decodeHeader(b) }
        let bulk = parts.count - 1
        guard env.frames.count == bulk else { throw .frameCountMismatch(declared: env.frames.count, received: bulk) }
        var total = UInt64(headerBytes)
        for f in env.frames {
            // Each term is at most 2^64 - 1; stop adding once past the budget, so the sum cannot overflow.
            total = total &+ min(f.rawLength, UInt64(Int.max >> 1))
            guard total <= UInt64(budget) else {
                throw .overBudget("a message decoding to more than \(budget) bytes is over this socket's limit of \(budget)")
            }
        }
        var frames: [[UInt8]] = []
        frames.reserveCapacity(bulk)
        for i in 0..<bulk {
            let info = env.frames[i]
            let frame = try parts[i + 1].withRawBytes { (p) throws(ProtocolError) -> [UInt8] in
                try decodeFrame(p, info: info, index: i)
            }
            frames.append(frame)
        }
        return (env, frames)
    }

    static func decodeFrame(_ p: UnsafeRawBufferPointer, info: Tessera_V1_FrameInfo, index i: Int) throws(ProtocolError) -> [UInt8] {
        guard info.rawLength <= UInt64(maximumFrameBytes) else {
            throw .corruptFrame(index: i, reason: "declared length \(info.rawLength) exceeds the \(maximumFrameBytes)-byte limit")
        }
        switch info.codec {
        case .raw:
            guard UInt64(p.count) == info.rawLength else {
                throw .corruptFrame(index: i, reason: "raw frame has \(p.count) bytes, header says \(info.rawLength)")
            }
            return Array(p)
        case .lz4:
            do {
                return try LZ4.decompress(p, rawLength: Int(info.rawLength))
            } catch {
                if case .corruptFrame(_, let why) = error { throw .corruptFrame(index: i, reason: why) }
                throw error
            }
        case .UNRECOGNIZED(let c):
            throw .corruptFrame(index: i, reason: "unknown codec \(c)")
        }
    }

    /// An error reply, ready to send.
    public static func errorReply(_ code: Tessera_V1_ErrorCode, _ message: String, clientTag: UInt64 = 0, jobID: UInt32 = 0) -> [[UInt8]] {
        var e = Envelope()
        var err = Tessera_V1_ErrorReply()
        err.code = code
        err.message = message
        err.clientTag = clientTag
        err.jobID = jobID
        e.error = err
        return encode(e)
    }
}

/// Anything that can lend its bytes for the duration of a call: byte arrays here, ZeroMQ frames in
/// the daemons (so received frames are decoded without an extra copy).
public protocol RawBytesProviding {
    func withRawBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R
}

extension Array: RawBytesProviding where Element == UInt8 {
    public func withRawBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        // withUnsafeBytes rethrows untyped; route the typed error through a Result.
        let r: Result<R, E> = withUnsafeBytes { p in
            do throws(E) { return .success(try body(p)) } catch { return .failure(error) }
        }
        return try r.get()
    }
}
