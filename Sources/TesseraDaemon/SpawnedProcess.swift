import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A child process started with `posix_spawnp`, leading a process group of its own, with only
/// standard input (from /dev/null), output and error (both to `output`) open, and reaped with
/// `waitpid` by whoever asks whether it runs.
///
/// Not Foundation's `Process`: that leaves one end of a socket pair open in the child and
/// watches the other for the child's exit; a user's function in the child could write a byte
/// to it, and Foundation's one process-watching thread would then block in `waitpid` until
/// that child exits, noticing no other child's end meanwhile.
final class SpawnedProcess: @unchecked Sendable {
    let pid: pid_t
    private let lock = NSLock()
    /// The `waitpid` status once reaped.
    private var status: Int32?

    struct SpawnError: Error, CustomStringConvertible {
        let description: String
    }

    init(_ program: String, arguments: [String], environment: [String: String], output: Int32) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, output, 1)
        posix_spawn_file_actions_adddup2(&actions, output, 2)
        // Every other descriptor of the worker closed in the child (glibc 2.34; the executor
        // closes them again itself where this is missing).
        if let closeFrom = Self.addCloseFrom { _ = closeFrom(&actions, 3) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // Its own process group (so a kill of the group takes what it forks), default signal
        // handling and an empty mask, whatever the worker set for itself.
        var all = sigset_t(), none = sigset_t()
        sigfillset(&all)
        sigemptyset(&none)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))
        let argv = ([program] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for p in argv + envp { free(p) } }
        var child: pid_t = 0
        let rc = posix_spawnp(&child, program, &actions, &attributes, argv, envp)
        guard rc == 0 else { throw SpawnError(description: "cannot start \(program): \(String(cString: strerror(rc)))") }
        pid = child
    }

    /// glibc's `posix_spawn_file_actions_addclosefrom_np`, which Swift's Glibc module does not
    /// declare (it is a GNU extension).
    private static let addCloseFrom: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32)? = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32).self)
    }()

    private func reap(blocking: Bool) {
        lock.lock()
        defer { lock.unlock() }
        guard status == nil else { return }
        var s: Int32 = 0
        while true {
            let r = waitpid(pid, &s, blocking ? 0 : WNOHANG)
            if r == pid { status = s; return }
            if r == -1 && errno == EINTR { continue }
            if r == -1 { status = -1 }   // not our child any more: nothing to wait for
            return
        }
    }

    var isRunning: Bool {
        reap(blocking: false)
        return lock.withLock { status == nil }
    }

    func waitUntilExit() { reap(blocking: true) }

    /// How it ended ("exit status 3", "killed by signal 9"), once it has.
    var ending: String {
        guard let s = lock.withLock({ status }) else { return "running" }
        let signal = s & 0x7F
        return signal == 0 ? "exit status \((s >> 8) & 0xFF)" : "killed by signal \(signal)"
    }

    /// The exit status (nil while running or when killed by a signal).
    var exitStatus: Int32? {
        guard let s = lock.withLock({ status }), s & 0x7F == 0 else { return nil }
        return (s >> 8) & 0xFF
    }
}
