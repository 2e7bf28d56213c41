import CZeroMQ

#if canImport(Glibc)
import Glibc
#endif

/// An error from libzmq, carrying its errno and what Tessera was doing at the time.
public struct ZeroMQError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The errno value libzmq reported (`EAGAIN`, `ETERM`, `EHOSTUNREACH`, ...).
    public let code: Int32
    /// What was being attempted, e.g. "bind tcp://127.0.0.1:7700".
    public let operation: String

    public init(code: Int32, operation: String) {
        self.code = code
        self.operation = operation
    }

    /// libzmq's own text for the error code.
    public var reason: String { String(cString: zmq_strerror(code)) }

    /// True when a non-blocking call found nothing to do (`EAGAIN`).
    public var isWouldBlock: Bool { code == EAGAIN }

    /// True when the context is shutting down (`ETERM`): the owner should close the socket.
    public var isTerminated: Bool { code == ETERM }

    public var description: String {
        var hint = ""
        if code == EADDRINUSE { hint = " (another process already listens there: choose another port)" }
        if code == EHOSTUNREACH { hint = " (no connected peer has that routing id)" }
        return "ZeroMQ: \(operation) failed: \(reason) [errno \(code)]\(hint)"
    }
}

/// The one place a libzmq return code becomes a Swift error; retries `EINTR`.
@inline(__always)
@discardableResult
func zmqCheck(_ operation: @autoclosure () -> String, _ call: () -> Int32) throws(ZeroMQError) -> Int32 {
    while true {
        let rc = call()
        if rc >= 0 { return rc }
        let err = zmq_errno()
        if err == EINTR { continue }
        throw ZeroMQError(code: err, operation: operation())
    }
}
