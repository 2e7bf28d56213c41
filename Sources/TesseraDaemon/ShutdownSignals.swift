import Dispatch
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Turns SIGTERM and SIGINT into a flag and a wake-up of the event loop, and optionally watches
/// for the parent process going away (so a crashed test or CLI leaves no daemons behind).
/// `@unchecked`: the signal sources are only touched in `init`; the rest is atomic.
final class ShutdownSignals: @unchecked Sendable {
    private let requested = Atomic<Bool>(false)
    private let sources: [any DispatchSourceSignal]
    let wake: WakePipe
    private let parentPID: Int32?

    init(wake: WakePipe, parentPID: Int32?) {
        self.wake = wake
        self.parentPID = parentPID
        var srcs: [any DispatchSourceSignal] = []
        for sig in [SIGTERM, SIGINT] {
            signal(sig, SIG_IGN)
            let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            srcs.append(s)
        }
        sources = srcs
        for s in sources {
            s.setEventHandler { [self] in
                requested.store(true, ordering: .releasing)
                wake.signal()
            }
            s.resume()
        }
    }

    /// True once a stop signal arrived (or ``checkParent()`` found the parent gone).
    var isRequested: Bool { requested.load(ordering: .acquiring) }

    /// Requests a stop when the parent process we were told to follow has exited. Called on the
    /// loop's slow tick, not every turn (it is a system call).
    func checkParent() {
        if let p = parentPID, getppid() != p { request() }
    }

    func request() {
        requested.store(true, ordering: .releasing)
        wake.signal()
    }
}
