import Foundation
import Synchronization
import TesseraClient

/// The signal that interrupted this command (0: none yet). Set by the signal handler, which may
/// touch nothing but lock-free state.
private let caughtSignal = Atomic<Int32>(0)

/// Ctrl-C (SIGINT) or SIGTERM while a command runs a job: the first one marks the process
/// interrupted, and the command's scheduler connection cancels its jobs on the cluster (at its
/// next wait, within 100 ms), removes what it was writing and exits with 128 + the signal. Before
/// this, the process died at once and its job ran on until the scheduler's client timeout (30 s),
/// holding the user's places and the workers. A second Ctrl-C, or the command still running
/// ``graceSeconds`` after the first, ends the process at once, as the signal would have.
enum Interrupts {
    /// How long an interrupted command may take to stop its jobs before it is ended anyway.
    static let graceSeconds = 10.0
    private static let installed = Mutex(false)

    /// The signal that interrupted the command, or 0.
    static var signal: Int32 { caughtSignal.load(ordering: .relaxed) }

    /// Installs the handlers once (later calls do nothing).
    static func install() {
        let first = installed.withLock { done in
            defer { done = true }
            return !done
        }
        guard first else { return }
        _ = caughtSignal.load(ordering: .relaxed)  // initialised here, not in the handler
        // A parent may have started this process with them blocked (a test runner did): they
        // would then wait unseen.
        var mask = sigset_t()
        sigemptyset(&mask)
        for sig in [SIGINT, SIGTERM] {
            sigaddset(&mask, sig)
        }
        pthread_sigmask(SIG_UNBLOCK, &mask, nil)
        for sig in [SIGINT, SIGTERM] {
            Foundation.signal(sig) { sig in
                caughtSignal.store(sig, ordering: .relaxed)
                // The next one takes the default action: a second Ctrl-C quits at once.
                Foundation.signal(sig, SIG_DFL)
            }
        }
        let watchdog = Thread {
            while caughtSignal.load(ordering: .relaxed) == 0 { usleep(20_000) }
            let sig = caughtSignal.load(ordering: .relaxed)
            FileHandle.standardError.write(Data("\n\(sig == SIGINT ? "Ctrl-C" : "SIGTERM"): stopping the job on the cluster (Ctrl-C again to quit at once)\n".utf8))
            usleep(UInt32(graceSeconds * 1e6))
            raise(sig)
        }
        watchdog.start()
    }

    /// A check for ``SchedulerConnection/isInterrupted``.
    static func isInterrupted() -> Bool { signal != 0 }
}
