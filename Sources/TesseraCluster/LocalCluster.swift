import Foundation
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
public final class LocalCluster {
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

        public init() {}
    }

    public let options: Options
    public let clientEndpoint: String
    public let workerEndpoint: String
    public let scheduler: Process
    public private(set) var workers: [Process] = []
    private let binDirectory: String
    private let logHandle: FileHandle?
    private var stopped = false
    /// The cluster's key folder (nil when insecure).
    public let keys: KeyDirectory?
    /// The key of the local admin user, which this process's connections use.
    public let credentials: Credentials

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
        if options.insecure {
            keys = nil
            credentials = .insecure
        } else {
            let dir = options.keysDirectory ?? options.dataDirectory.map { $0 + "/keys" }
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
        scheduler = try Self.launch(binDirectory + "/tessera-scheduler", schedulerArgs, stdout: out, stderr: logHandle)
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
        // Connections this process opens to the cluster find its key without being told.
        CredentialStore.register(credentials, for: c)
        for _ in 0..<options.workers { try startWorker() }
        try waitForWorkers(options.workers, timeout: 30)
    }

    deinit { stop() }

    /// Starts one more worker process.
    public func startWorker() throws {
        let name = "local-\(workers.count)"
        var args = ["--scheduler", workerEndpoint, "--exit-with-parent", "\(getpid())", "--name", name]
        if let keys {
            try keys.add(.worker, name: name)
            args += ["--key", keys.workerKeyPath(name)]
        } else {
            args += ["--insecure"]
        }
        if let t = options.threadsPerWorker { args += ["--threads", "\(t)"] }
        if let dir = options.dataDirectory { args += ["--data", dir + "/worker-\(workers.count)"] }
        workers.append(try Self.launch(binDirectory + "/tessera-worker", args, stdout: nil, stderr: logHandle))
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
        kill(workers[i].processIdentifier, SIGKILL)
        workers[i].waitUntilExit()
    }

    /// Stops every process: SIGTERM, then SIGKILL for any still running after 5 s.
    public func stop() {
        if stopped { return }
        stopped = true
        let all = workers + [scheduler]
        for p in all where p.isRunning { kill(p.processIdentifier, SIGTERM) }
        let deadline = Date().addingTimeInterval(5)
        for p in all {
            while p.isRunning && Date() < deadline { usleep(10_000) }
            if p.isRunning { kill(p.processIdentifier, SIGKILL) }
            p.waitUntilExit()
        }
    }

    // MARK: Helpers

    static func defaultBinDirectory() -> String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: exe).deletingLastPathComponent().path
    }

    static func launch(_ path: String, _ args: [String], stdout: Pipe?, stderr: FileHandle?) throws -> Process {
        guard FileManager.default.isExecutableFile(atPath: path) else { throw ClusterError.executableMissing(path) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
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
