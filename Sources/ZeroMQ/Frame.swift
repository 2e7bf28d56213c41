import CZeroMQ

#if canImport(Glibc)
import Glibc
#endif

/// One part of a multipart message, owning a libzmq message buffer.
///
/// A received frame exposes libzmq's own buffer (no copy); a frame made with
/// ``init(takingOwnershipOf:count:)`` hands a `malloc`ed buffer to libzmq, which frees it after
/// sending (no copy either). Small frames are simply copied.
public final class Frame {
    let msg: UnsafeMutablePointer<zmq_msg_t>

    /// Parts of at least this many bytes are sent from the caller's array in place (``init(sharing:)``).
    public static let sharingThreshold = 64 * 1024

    /// An empty frame, ready to receive into.
    init() {
        msg = .allocate(capacity: 1)
        zmq_msg_init(msg)
    }

    /// A frame holding a copy of `bytes`.
    public convenience init(copying bytes: UnsafeRawBufferPointer) {
        self.init(count: bytes.count)
        if bytes.count > 0, let base = bytes.baseAddress {
            zmq_msg_data(msg).copyMemory(from: base, byteCount: bytes.count)
        }
    }

    /// A frame holding a copy of `bytes`.
    public convenience init(_ bytes: [UInt8]) {
        self.init(count: bytes.count)
        if bytes.count > 0 {
            bytes.withUnsafeBytes { zmq_msg_data(msg).copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
        }
    }

    /// A frame of `count` uninitialised bytes, to be filled through ``mutableBytes``.
    public init(count: Int) {
        msg = .allocate(capacity: 1)
        if zmq_msg_init_size(msg, count) != 0 {
            // Only ENOMEM is possible here.
            fatalError("zmq_msg_init_size(\(count)) failed: out of memory")
        }
    }

    /// A frame over `bytes` themselves, not a copy: the array is kept alive (and so unchanged:
    /// it is a value no one else can mutate in place) until libzmq has sent it and calls back,
    /// possibly on its I/O thread. For large frames, where the copy costs more than the callback.
    public init(sharing bytes: [UInt8]) {
        msg = .allocate(capacity: 1)
        let owner = Unmanaged.passRetained(SharedBytes(bytes))
        // A native array's elements stay where they are while its storage lives and is not
        // mutated; `owner` holds that storage, immutable, until the callback releases it.
        let base = owner.takeUnretainedValue().bytes.withUnsafeBytes { UnsafeMutableRawPointer(mutating: $0.baseAddress) }
        guard let base, !bytes.isEmpty else {
            owner.release()
            zmq_msg_init(msg)
            return
        }
        zmq_msg_init_data(msg, base, bytes.count, { _, hint in
            if let hint { Unmanaged<SharedBytes>.fromOpaque(hint).release() }
        }, owner.toOpaque())
    }

    /// Takes ownership of a buffer from `malloc`: libzmq frees it with `free` once it is sent.
    public init(takingOwnershipOf buffer: UnsafeMutableRawPointer, count: Int) {
        msg = .allocate(capacity: 1)
        zmq_msg_init_data(msg, buffer, count, { data, _ in free(data) }, nil)
    }

    deinit {
        zmq_msg_close(msg)
        msg.deallocate()
    }

    /// Number of bytes in the frame.
    public var count: Int { zmq_msg_size(msg) }

    /// The frame's bytes, valid while the frame lives.
    public var bytes: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: zmq_msg_data(msg), count: zmq_msg_size(msg))
    }

    /// The frame's bytes for filling in, valid while the frame lives and before it is sent.
    public var mutableBytes: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: zmq_msg_data(msg), count: zmq_msg_size(msg))
    }

    /// A copy of the bytes as an array.
    public var array: [UInt8] { Array(bytes) }

    /// A property of the connection this frame arrived on, such as `User-Id` (what the ZAP
    /// handler said of the peer) or `Peer-Address`; nil when there is none.
    public func property(_ name: String) -> String? {
        guard let p = zmq_msg_gets(msg, name) else { return nil }
        return String(cString: p)
    }
}

@available(*, unavailable)
extension Frame: Sendable {}

/// The array a shared frame points into, kept alive until libzmq is done with it.
private final class SharedBytes: @unchecked Sendable {
    let bytes: [UInt8]
    init(_ bytes: [UInt8]) { self.bytes = bytes }
}
