import Foundation
import Synchronization
import TesseraClient
import TesseraProtocol
import TesseraSecurity

#if canImport(Glibc)
import Glibc
#endif

/// Why a local cluster could not start.
public enum ClusterError: Error, CustomStringConvertible {
    case executableMissing(String)
    case startFailed(String)

    public var description: String {
        switch self {
        case .executableMissing(let p): "cannot find \(p): build the package first (swift build), or set TESSERA_BIN_DIR"
        case .startFailed(let m): "local cluster did not start: \(m)"
        }
    }
}

/// A scheduler and N workers as real processes on loopback: the "local cluster" a new user meets
/// first, and what end-to-end tests and benchmarks run against. Stopping it (or dropping it)
/// stops every process it started; the daemons also exit by themselves if this process dies.
///
/// Supervised (the default), a daemon that dies is started again after a back-off that doubles
/// while it keeps dying soon after starting (half a second up to 5 s; back to half a second once
/// it has run for 10 s), and why it died goes to the log. A restarted scheduler binds the same endpoints and
/// reads the same registry; the workers register with it again.
public final class LocalCluster: Sendable {
    public struct Options: Sendable {
        public var workers = 2
        /// Executor threads per worker (nil: the daemon's default, one per core).
        public var threadsPerWorker: Int?
        /// The client port; nil picks a free one (and the worker port too).
        public var port: Int?
        public var heartbeatMs = 500
        public var workerTimeoutMs = 5000
        /// Where the daemons' logs go; nil inherits this process's standard error.
        public var logFile: String?
        /// The folder holding tessera-scheduler and tessera-worker; nil: next to this executable.
        public var binDirectory: String?
        /// Where the registry (`registry.sqlite`) and each worker's shards (`worker-N/`) live; nil:
        /// no registry and no storage (compute only). A cluster restarted on the same folder finds
        /// its datasets again.
        public var dataDirectory: String?
        /// The cluster's key folder; nil: `DATA/keys`, or a private temporary folder when there is
        /// no data folder. Keys are made there on first start.
        public var keysDirectory: String?
        /// Run without keys (loopback only): for measuring what CURVE costs.
        public var insecure = false
        /// Seconds before orphaned shard files are removed (nil: the scheduler's default, an hour).
        public var orphanGraceSeconds: Double?
        /// Start a daemon that died again (with a back-off), and log why it died.
        public var supervise = true
        /// Seconds a client may be silent before its jobs are cancelled (nil: the scheduler's default).
        public var clientTimeoutSeconds: Double?
        /// Each worker's memory limit for kept values, in MiB (nil: the worker's default).
        public var memoryLimitMb: Int?
        /// The Python interpreter workers run users' functions in (nil: the worker's default, `python3`).
        public var python: String?
        /// Whether workers run users' Python functions at all.
        public var allowPython = true
        /// Resident memory, in MiB, one Python executor may reach (nil: the worker's default).
        public var pythonMemoryMb: Int?
        /// More arguments for every tessera-worker (e.g. `--column-cache-mb 0`).
        public var workerArguments: [String] = []
        /// More arguments for tessera-scheduler (e.g. `--interactive-max-rows N`, `--user-weight alice=2`).
        public var schedulerArguments: [String] = []
        /// Called with each supervision event (a daemon died, was started again), besides the log.
        public var onEvent: (@Sendable (String) -> Void)?
        /// The daemons' temporary folder (`TMPDIR`; nil: this process's): where a worker without
        /// a data folder spills, and its Python executors' sockets and logs go.
        public var temporaryDirectory: String?

        public init() {}
    }

    /// One daemon of the cluster: how it is started, and its current process.
    struct Daemon {
        let name: String
        let executable: String
        var arguments: [String]
        var process: Process
        var startedAt: Date
        var restarts = 0
        /// Seconds to wait before the next start after a death.
        var backoff = Supervision.firstBackoff
        /// Set once its death is noticed: when it is to be started again.
        var restartAt: Date?
    }

    struct State {
        var scheduler: Daemon
        var workers: [Daemon] = []
        var stopping = false
    }

    enum Supervision {
        static let firstBackoff = 0.5
        /// On one machine a daemon that keeps crashing costs little to retry: the cluster should
        /// not stay down for long after whatever killed it is gone.
        static let maxBackoff = 5.0
        /// A daemon that ran this long before it died did not crash at start-up: its back-off
        /// starts over.
        static let stableSeconds = 10.0
    }

    public let options: Options
    public let clientEndpoint: String
    public let workerEndpoint: String
    private let state: Mutex<State>
    private let binDirectory: String
    private let logHandle: FileHandle?
    /// The cluster's key folder (nil when insecure).
    public let keys: KeyDirectory?
    /// The key of the local admin user, which this process's connections use.
    public let credentials: Credentials
    /// Whether the key folder is a temporary one this cluster made (removed by `stop()`).
    private let ownsKeysDirectory: Bool

    public init(_ options: Options = .init()) throws {
        self.options = options
        binDirectory = options.binDirectory ?? ProcessInfo.processInfo.environment["TESSERA_BIN_DIR"] ?? Self.defaultBinDirectory()
        if let path = options.logFile {
            _ = FileManager.default.createFile(atPath: path, contents: nil)
            logHandle = FileHandle(forWritingAtPath: path)
            logHandle?.seekToEndOfFile()
        } else {
            logHandle = nil
        }
        let chosenKeys = options.keysDirectory ?? options.dataDirectory.map { $0 + "/keys" }
        ownsKeysDirectory = !options.insecure && chosenKeys == nil
        if options.insecure {
            keys = nil
            credentials = .insecure
        } else {
            let dir = chosenKeys
                ?? FileManager.default.temporaryDirectory.appendingPathComponent("tessera-keys-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
            let k = KeyDirectory(dir)
            try k.initialize()
            keys = k
            credentials = .curve(try k.add(.user, name: LocalKeys.userName, admin: true))
            // Every worker's key is listed before the scheduler reads the lists.
            for i in 0..<options.workers { try k.add(.worker, name: "local-\(i)") }
        }
        let port = options.port
        let clients = port.map { "tcp://127.0.0.1:\($0)" } ?? "tcp://127.0.0.1:*"
        let workerBind = port.map { "tcp://127.0.0.1:\($0 + 1)" } ?? "tcp://127.0.0.1:*"
        let out = Pipe()
        var schedulerArgs = ["--clients", clients, "--workers", workerBind, "--heartbeat-ms", "\(options.heartbeatMs)",
                             "--worker-timeout-ms", "\(options.workerTimeoutMs)", "--exit-with-parent", "\(getpid())"]
        schedulerArgs += keys.map { ["--keys", $0.path] } ?? ["--insecure"]
        if let g = options.orphanGraceSeconds { schedulerArgs += ["--orphan-grace-s", "\(g)"] }
        if let dir = options.dataDirectory {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            schedulerArgs += ["--registry", dir + "/registry.sqlite"]
        }
        if let t = options.clientTimeoutSeconds { schedulerArgs += ["--client-timeout-s", "\(t)"] }
        schedulerArgs += options.schedulerArguments
        let scheduler = try Self.launch(binDirectory + "/tessera-scheduler", schedulerArgs, stdout: out, stderr: logHandle,
                                        temporaryDirectory: options.temporaryDirectory)
        guard let line = Self.readLine(out.fileHandleForReading, timeoutMs: 10_000) else {
            scheduler.terminate()
            throw ClusterError.startFailed("tessera-scheduler printed no endpoints (is the port \(port.map(String.init) ?? "?") in use? see its log)")
        }
        func field(_ name: String) -> String? {
            line.split(separator: " ").first { $0.hasPrefix(name + "=") }.map { String($0.dropFirst(name.count + 1)) }
        }
        guard let c = field("clients"), let w = field("workers") else {
            scheduler.terminate()
            throw ClusterError.startFailed("unexpected first line from tessera-scheduler: \(line)")
        }
        clientEndpoint = c
        workerEndpoint = w
        // A restart binds the endpoints the first start picked.
        var fixed = schedulerArgs
        for (flag, endpoint) in [("--clients", c), ("--workers", w)] {
            if let i = fixed.firstIndex(of: flag), i + 1 < fixed.count { fixed[i + 1] = endpoint }
        }
        state = Mutex(State(scheduler: Daemon(name: "scheduler", executable: binDirectory + "/tessera-scheduler", arguments: fixed,
                                              process: scheduler, startedAt: Date())))
        // Connections this process opens to the cluster find its key without being told.
        CredentialStore.register(credentials, for: c)
        for _ in 0..<options.workers { try startWorker() }
        try waitForWorkers(options.workers, timeout: 30)
        if options.supervise {
            let t = Thread { [self] in superviseUntilStopped() }
            t.name = "tessera-local-supervisor"
            t.start()
        }
    }

    deinit { stop() }

    /// The scheduler's current process.
    public var scheduler: Process { state.withLock { $0.scheduler.process } }
    /// The workers' current processes, in order (`local-0`, `local-1`, …).
    public var workers: [Process] { state.withLock { $0.workers.map(\.process) } }
    /// Times each daemon was started again after it died, by name (`scheduler`, `local-N`).
    public var restarts: [String: Int] {
        state.withLock { s in Dictionary(uniqueKeysWithValues: ([s.scheduler] + s.workers).map { ($0.name, $0.restarts) }) }
    }

    /// Starts one more worker process.
    public func startWorker() throws {
        let index = state.withLock { $0.workers.count }
        let name = "local-\(index)"
        var args = ["--scheduler", workerEndpoint, "--exit-with-parent", "\(getpid())", "--name", name]
        if let keys {
            try keys.add(.worker, name: name)
            args += ["--key", keys.workerKeyPath(name)]
        } else {
            args += ["--insecure"]
        }
        if let t = options.threadsPerWorker { args += ["--threads", "\(t)"] }
        if let m = options.memoryLimitMb { args += ["--memory-limit-mb", "\(m)"] }
        if let dir = options.dataDirectory { args += ["--data", dir + "/worker-\(index)"] }
        if !options.allowPython { args += ["--no-python"] } else if let py = options.python { args += ["--python", py] }
        if let m = options.pythonMemoryMb { args += ["--python-memory-mb", "\(m)"] }
        args += options.workerArguments
        let executable = binDirectory + "/tessera-worker"
        let p = try Self.launch(executable, args, stdout: nil, stderr: logHandle, temporaryDirectory: options.temporaryDirectory)
        state.withLock { $0.workers.append(Daemon(name: name, executable: executable, arguments: args, process: p, startedAt: Date())) }
    }

    /// Waits until `n` workers are registered.
    public func waitForWorkers(_ n: Int, timeout: Double) throws {
        let conn = try SchedulerConnection(endpoint: clientEndpoint, timeout: 10, credentials: credentials)
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if try conn.status().workers.count >= n { return }
            usleep(20_000)
        }
        throw ClusterError.startFailed("only \(try conn.status().workers.count) of \(n) workers registered within \(timeout) s")
    }

    /// Kills worker `i` with SIGKILL: no goodbye, no cleanup (a crash).
    public func killWorker(_ i: Int) {
        let p = workers[i]
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
    }

    /// Kills the scheduler with SIGKILL, mid-whatever (supervised, it is started again).
    public func killScheduler() {
        let p = scheduler
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
    }

    /// Stops every process: SIGTERM, then SIGKILL for any still running after 5 s; then removes
    /// the temporary key folder, if this cluster made one.
    public func stop() {
        let all: [Process]? = state.withLock { s in
            if s.stopping { return nil }
            s.stopping = true
            return s.workers.map(\.process) + [s.scheduler.process]
        }
        guard let all else { return }
        for p in all where p.isRunning { kill(p.processIdentifier, SIGTERM) }
        let deadline = Date().addingTimeInterval(5)
        for p in all {
            while p.isRunning && Date() < deadline { usleep(10_000) }
            if p.isRunning { kill(p.processIdentifier, SIGKILL) }
            p.waitUntilExit()
        }
        if ownsKeysDirectory, let keys { try? FileManager.default.removeItem(atPath: keys.path) }
    }

    // MARK: Supervision

    /// Every 100 ms: notes daemons that died (why, and when to start them again) and starts those
    /// whose back-off has passed. Runs on its own thread until `stop()`.
    private func superviseUntilStopped() {
        while true {
            usleep(100_000)
            let now = Date()
            var due: [(isScheduler: Bool, index: Int, daemon: Daemon)] = []
            var events: [String] = []
            let stopping = state.withLock { s -> Bool in
                if s.stopping { return true }
                func check(_ d: inout Daemon, isScheduler: Bool, index: Int) {
                    guard !d.process.isRunning else { return }
                    if d.restartAt == nil {
                        let ran = now.timeIntervalSince(d.startedAt)
                        d.backoff = ran >= Supervision.stableSeconds ? Supervision.firstBackoff : d.backoff
                        d.restartAt = now.addingTimeInterval(d.backoff)
                        events.append("\(d.name) (pid \(d.process.processIdentifier)) died after \(String(format: "%.1f", ran)) s: "
                            + Self.death(d.process) + "; starting it again in \(d.backoff) s")
                        d.backoff = min(d.backoff * 2, Supervision.maxBackoff)
                    } else if let at = d.restartAt, now >= at {
                        due.append((isScheduler, index, d))
                    }
                }
                check(&s.scheduler, isScheduler: true, index: 0)
                for i in s.workers.indices { check(&s.workers[i], isScheduler: false, index: i) }
                return false
            }
            if stopping { return }
            for e in events { report(e) }
            for (isScheduler, index, d) in due {
                // Launched outside the lock: a scheduler takes a moment to print its endpoints.
                let out = isScheduler ? Pipe() : nil
                guard let p = try? Self.launch(d.executable, d.arguments, stdout: out, stderr: logHandle,
                                               temporaryDirectory: options.temporaryDirectory) else {
                    report("\(d.name) could not be started again; trying later")
                    state.withLock { s in
                        if isScheduler { s.scheduler.restartAt = Date().addingTimeInterval(d.backoff) } else { s.workers[index].restartAt = Date().addingTimeInterval(d.backoff) }
                    }
                    continue
                }
                if let out { _ = Self.readLine(out.fileHandleForReading, timeoutMs: 10_000) }
                let restarts = state.withLock { s -> Int? in
                    if s.stopping { return nil }
                    func started(_ x: inout Daemon) -> Int {
                        x.process = p
                        x.startedAt = Date()
                        x.restartAt = nil
                        x.restarts += 1
                        return x.restarts
                    }
                    return isScheduler ? started(&s.scheduler) : started(&s.workers[index])
                }
                guard let restarts else {
                    // `stop()` came while it was starting: it is not on the list `stop()` stops.
                    kill(p.processIdentifier, SIGTERM)
                    p.waitUntilExit()
                    return
                }
                report("\(d.name) started again (pid \(p.processIdentifier), restart \(restarts))")
            }
        }
    }

    /// How a process ended, in words.
    static func death(_ p: Process) -> String {
        let status = p.terminationStatus
        guard p.terminationReason == .uncaughtSignal else { return "exited with status \(status)" }
        let names: [Int32: String] = [SIGKILL: "SIGKILL", SIGTERM: "SIGTERM", SIGSEGV: "SIGSEGV", SIGABRT: "SIGABRT", SIGILL: "SIGILL",
                                      SIGBUS: "SIGBUS", SIGINT: "SIGINT", SIGTRAP: "SIGTRAP"]
        let name = names[status].map { " (\($0)\(status == SIGKILL ? ": killed, or out of memory" : status == SIGTRAP || status == SIGILL ? ": a Swift runtime trap" : ""))" } ?? ""
        return "killed by signal \(status)\(name)"
    }

    private func report(_ line: String) {
        let stamped = "tessera local: \(line)\n"
        logHandle?.write(Data(stamped.utf8))
        options.onEvent?(line)
    }

    // MARK: Helpers

    /// The folder of this executable (where `swift build` puts the daemons too).
    public static func defaultBinDirectory() -> String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: exe).deletingLastPathComponent().path
    }

    static func launch(_ path: String, _ args: [String], stdout: Pipe?, stderr: FileHandle?, temporaryDirectory: String?) throws -> Process {
        guard FileManager.default.isExecutableFile(atPath: path) else { throw ClusterError.executableMissing(path) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
        if let temporaryDirectory {
            var environment = ProcessInfo.processInfo.environment
            environment["TMPDIR"] = temporaryDirectory
            p.environment = environment
        }
        p.standardInput = FileHandle.nullDevice
        p.standardOutput = stdout ?? FileHandle.nullDevice
        if let stderr { p.standardError = stderr }
        try p.run()
        return p
    }

    /// Reads one line from a pipe, giving up after `timeoutMs`.
    static func readLine(_ h: FileHandle, timeoutMs: Int32) -> String? {
        var data = [UInt8]()
        let deadline = Date().addingTimeInterval(Double(timeoutMs) / 1000)
        while Date() < deadline {
            var pfd = pollfd(fd: h.fileDescriptor, events: Int16(POLLIN), revents: 0)
            if poll(&pfd, 1, 100) <= 0 { continue }
            var byte: UInt8 = 0
            let n = read(h.fileDescriptor, &byte, 1)
            if n <= 0 { return nil }
            if byte == UInt8(ascii: "\n") { return String(decoding: data, as: UTF8.self) }
            data.append(byte)
        }
        return nil
    }
}
