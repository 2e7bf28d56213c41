import Foundation
import Synchronization
import TesseraClient

/// The signal that interrupted this command (0: none yet). Set by the signal handler, which may
/// touch nothing but lock-free state.
private let caughtSignal = Atomic<Int32>(0)
/// True while the command is in a step that must not be cut (an ingest's commit once sent).
private let holding = Atomic<Bool>(false)

/// Ctrl-C (SIGINT) or SIGTERM while a command runs a job: the first one marks the process
/// interrupted, and the command's scheduler connection cancels its jobs on the cluster (at its
/// next wait, within 100 ms), removes what it was writing and exits with 128 + the signal. Before
/// this, the process died at once and its job ran on until the scheduler's client timeout (30 s),
/// holding the user's places and the workers. A second signal, or the command still running
/// ``graceSeconds`` after the first (and not in a step that must finish, such as a commit), ends
/// the process at once, as the signal would have.
enum Interrupts {
    /// How long an interrupted command may take to stop before it is ended anyway.
    static let graceSeconds = 10.0
    private static let installed = Mutex(false)
    private static let signals = [SIGINT, SIGTERM]

    /// The signal that interrupted the command, or 0.
    static var signal: Int32 { caughtSignal.load(ordering: .relaxed) }

    /// Installs the handlers once (later calls do nothing). A signal this process was started
    /// with ignored (`nohup`, a background job of a script) stays ignored.
    static func install() {
        let first = installed.withLock { done in
            defer { done = true }
            return !done
        }
        guard first else { return }
        _ = caughtSignal.load(ordering: .relaxed)  // initialised here, not in the handler
        _ = holding.load(ordering: .relaxed)
        var mask = sigset_t()
        sigemptyset(&mask)
        for sig in signals {
            var current = sigaction()
            guard sigaction(sig, nil, &current) == 0 else { continue }
            let handler = current.__sigaction_handler.sa_handler.map { unsafeBitCast($0, to: Int.self) }
            if handler == unsafeBitCast(SIG_IGN, to: Int.self) { continue }
            Foundation.signal(sig) { sig in
                caughtSignal.store(sig, ordering: .relaxed)
                // The next one, of either kind, takes the default action: it quits at once.
                Foundation.signal(SIGINT, SIG_DFL)
                Foundation.signal(SIGTERM, SIG_DFL)
            }
            // A parent may have started this process with it blocked (a test runner did): it
            // would then wait unseen.
            sigaddset(&mask, sig)
        }
        pthread_sigmask(SIG_UNBLOCK, &mask, nil)
        let watchdog = Thread {
            while caughtSignal.load(ordering: .relaxed) == 0 { usleep(20_000) }
            let sig = caughtSignal.load(ordering: .relaxed)
            FileHandle.standardError.write(Data("\n\(sig == SIGINT ? "Ctrl-C" : "SIGTERM"): stopping (Ctrl-C again to quit at once)\n".utf8))
            usleep(UInt32(graceSeconds * 1e6))
            while holding.load(ordering: .relaxed) { usleep(20_000) }
            raise(sig)
        }
        watchdog.start()
    }

    /// Arms a connection: it cancels its jobs once interrupted, and holds the watchdog off
    /// while it is in a step that must finish.
    static func arm(_ conn: SchedulerConnection) {
        install()
        conn.isInterrupted = { caughtSignal.load(ordering: .relaxed) != 0 }
        conn.onUninterruptible = { holding.store($0, ordering: .relaxed) }
    }
}
