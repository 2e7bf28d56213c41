#if canImport(Glibc)
import Glibc
#endif

/// A self-pipe: other threads (executors, signal handlers) wake the event loop by writing a byte,
/// and the loop's poller watches the read end beside the ZeroMQ sockets.
final class WakePipe: @unchecked Sendable {
    // The descriptors are written from any thread; the kernel makes that safe.
    let fd: Int32
    private let writeFD: Int32

    init() throws(DaemonError) {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw DaemonError.system("pipe", errno) }
        for f in fds {
            _ = fcntl(f, F_SETFL, fcntl(f, F_GETFL) | O_NONBLOCK)
            _ = fcntl(f, F_SETFD, FD_CLOEXEC)
        }
        fd = fds[0]
        writeFD = fds[1]
    }

    deinit {
        close(fd)
        close(writeFD)
    }

    /// Wakes the loop (a full pipe already means "wake up", so a failed write is fine).
    func signal() {
        var one: UInt8 = 1
        _ = write(writeFD, &one, 1)
    }

    /// Clears pending wake-ups.
    func drain() {
        var buf = [UInt8](repeating: 0, count: 256)
        while read(fd, &buf, 256) == 256 {}
    }
}

/// Errors of the daemons' shells.
public enum DaemonError: Error, CustomStringConvertible {
    case system(String, Int32)

    public var description: String {
        switch self {
        case .system(let what, let e): "\(what) failed: \(String(cString: strerror(e)))"
        }
    }
}

/// Monotonic nanoseconds.
@inline(__always) func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
