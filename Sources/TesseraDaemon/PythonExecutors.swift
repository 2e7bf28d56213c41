import Foundation
import Synchronization
import TesseraCompute
import TesseraProtocol
import ZeroMQ

#if canImport(Glibc)
import Glibc
#endif

/// How a worker runs users' Python functions.
public struct PythonSettings: Sendable {
    /// The interpreter (a path, or a name looked up on PATH); it must have the `tessera` client
    /// package (with pandas and cloudpickle) installed.
    public var executable: String
    /// Resident memory one executor may reach during a call before it is killed.
    public var memoryLimitBytes: UInt64
    /// Whether executors confine themselves with Landlock before running any function (they
    /// refuse to start where the kernel cannot): see `tessera/_sandbox.py`.
    public var sandboxed = true
    /// Whether a sandboxed executor may run on a kernel whose Landlock cannot scope signals
    /// (before Linux 6.12): there a function could signal the worker and other users' executors.
    public var allowsUnscopedSignals = false
    /// Folders functions may read (besides the interpreter's and the system's) and write in
    /// (besides their executor's scratch folder), when sandboxed: each user's functions write
    /// in a folder of their own in each, named after the user (`userFolder`), and see no other
    /// user's there.
    public var readPaths: [String] = []
    public var writePaths: [String] = []
    /// What functions may never read, whatever folder holds it: the worker's data folder and
    /// its key file.
    public var privatePaths: [String] = []

    public init(executable: String = "python3", memoryLimitBytes: UInt64 = 2 << 30) {
        self.executable = executable
        self.memoryLimitBytes = memoryLimitBytes
    }

    /// Why these settings cannot be used, or nil: a folder given to read or write that lies
    /// within a private one (the data folder, the key), or that does not exist.
    public func problem() -> String? {
        for (option, paths) in [("--python-read", readPaths), ("--python-write", writePaths)] {
            for p in paths {
                guard FileManager.default.fileExists(atPath: p) else { return "\(option) \(p): no such file or folder" }
                let real = Self.realPath(p)
                for q in privatePaths where !q.isEmpty {
                    let r = Self.realPath(q)
                    if real == r || real.hasPrefix(r.hasSuffix("/") ? r : r + "/") {
                        return "\(option) \(p) lies within \(q), which users' functions may not see (the worker's data folder or key)"
                    }
                }
            }
        }
        return nil
    }

    /// What functions may never read on a worker with this data folder and key file: both, and
    /// the key's folder too (other keys are kept beside it, `/etc/tessera/keys` say) unless that
    /// is a system folder the interpreter needs.
    public static func privatePaths(data: String?, key: String?) -> [String] {
        // Absolute: the executor resolves paths in its own working folder.
        var out = [data, key].compactMap { $0 }.map(absolutePath)
        if let key {
            let folder = realPath((key as NSString).deletingLastPathComponent.isEmpty ? "." : (key as NSString).deletingLastPathComponent)
            let shared: Set<String> = ["/", "/etc", "/usr", "/opt", "/var", "/tmp", "/home", "/root", realPath(NSHomeDirectory())]
            if !shared.contains(folder) { out.append(folder) }
        }
        return out
    }

    /// `p` resolved (links too) when it exists, else made absolute from the working folder.
    static func absolutePath(_ p: String) -> String {
        if FileManager.default.fileExists(atPath: p) { return realPath(p) }
        return p.hasPrefix("/") ? p : FileManager.default.currentDirectoryPath + "/" + p
    }

    /// A user's folder's name in a `--python-write` folder: the user's name with anything but
    /// letters, digits, `-`, `_` and `.` as `_` (and never `.` or `..`). A valid user name
    /// (`Validate.name`, up to `Limits.workerNameCharacters`) is its own folder's name, so no
    /// two users share one; before, names were cut at 64 characters, and two users whose names
    /// began alike shared a folder.
    public static func userFolder(_ user: String) -> String {
        let safe = String(user.prefix(Limits.workerNameCharacters).map { $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) ? $0 : "_" })
        return safe.isEmpty || safe.first == "." ? "u" + safe : safe
    }

    static func realPath(_ p: String) -> String {
        guard let r = realpath(p, nil) else { return p }
        defer { free(r) }
        return String(cString: r)
    }

    /// What the executor reads from `TESSERA_EXECUTOR_SANDBOX` (JSON), for an executor whose
    /// scratch folder is `scratch` and which writes in `writes`; nil when not sandboxed.
    func sandboxConfiguration(scratch: String, writes: [String]) -> String? {
        guard sandboxed else { return nil }
        let config: [String: Any] = ["read": readPaths, "write": writes, "private": privatePaths, "scratch": scratch,
                                     "unscoped_signals": allowsUnscopedSignals]
        guard let data = try? JSONSerialization.data(withJSONObject: config, options: [.sortedKeys]) else { return nil }
        return String(decoding: data, as: UTF8.self)
    }
}

/// Users' Python functions next to the data: a few `python -m tessera.executor` processes on
/// this worker's host, started on demand and kept for the next call (at most one per executor
/// thread is ever busy). A call hands an executor its columns over a ZeroMQ `ipc://` socket,
/// one frame per column, which the executor wraps as numpy arrays without copying.
///
/// The worker enforces the limits, not the executor: while a call runs, its thread checks every
/// 100 ms whether the task was cancelled, passed its deadline, or its executor grew past the
/// memory limit, and kills the executor if so (the next call starts another).
public final class PythonExecutors: Sendable {
    public let settings: PythonSettings
    let workerName: String
    private let context: ZMQContext
    /// Where the executors' sockets and logs live (private to this worker, removed at exit).
    let folder: String
    /// Executors waiting for their next call, each with the user whose functions it ran: a
    /// function can change its process (replace `cloudpickle.dumps`, leave a module behind),
    /// and the next user's function, or their client unpickling its value, would run with
    /// that. So an executor serves one user only; the oldest idle ones past `maxIdle` stop.
    private let idle = Mutex<[(user: String, executor: PythonExecutor)]>([])
    /// Idle executors kept: eight, or two per thread on a larger worker.
    let maxIdle: Int
    /// The environment variable (= the worker's pid) each executor carries, by which the
    /// worker knows its processes (and what they start) on its same-host socket.
    static let workerMarker = "TESSERA_EXECUTOR_OF"
    /// What an executor may print (its log file) before it is killed.
    static let maxLogBytes: UInt64 = 64 << 20
    private let started = Atomic<Int>(0)
    /// Who may connect to a starting executor's socket: only the process started for it.
    let admission: ExecutorAdmission

    public init(_ settings: PythonSettings, workerName: String, threads: Int = 1) throws {
        self.settings = settings
        self.workerName = workerName
        maxIdle = max(8, 2 * threads)
        // Before libzmq 4.3.3 a connection was attached to a socket before ZAP had admitted it,
        // so a PAIR socket was still the first connecting process's.
        let v = ZMQContext.versionNumbers
        guard (v.major, v.minor, v.patch) >= (4, 3, 3) else {
            throw PythonStartError(message: "libzmq \(ZMQContext.version) gives a new Python executor's socket to whichever process connects first, before it is authenticated (fixed in libzmq 4.3.3): upgrade libzmq, or start the worker with --no-python")
        }
        context = try ZMQContext()
        // Bound before any executor's socket, whose connections it then answers.
        admission = try ExecutorAdmission(context: context)
        folder = try PrivateFolder.make("tessera-python")
    }

    deinit { stop() }

    /// Stops the idle executors and removes this worker's folder of their sockets and logs.
    public func stop() {
        for e in idle.withLock({ all in defer { all.removeAll() }; return all }) { e.executor.stop() }
        try? FileManager.default.removeItem(atPath: folder)
    }

    /// The two operators, bound to this worker's executors.
    public var operators: [TaskOperator] {
        [
            TaskOperator(PythonOperatorNames.map, "a user's Python function over one shard's rows") { ctx throws(OperatorError) in
                try self.map(ctx)
            },
            TaskOperator(PythonOperatorNames.combine, "a user's Python combine over partial values") { ctx throws(OperatorError) in
                try self.combine(ctx)
            },
        ]
    }

    // MARK: Operators

    func map(_ ctx: OperatorContext) throws(OperatorError) -> Value {
        let name = PythonOperatorNames.map
        let plan = try CatalogOperators.taskPlan(ctx, name)
        var partial = try CatalogOperators.scan(ctx, plan: plan, operatorName: name)
        let rows = partial.rows
        var names: [String] = [], dtypes: [String] = [], frames: [Frame] = []
        for (label, column) in zip(rows.names, rows.columns) {
            names.append(label)
            switch column.values {
            case .doubles(let d):
                dtypes.append("<f8")
                frames.append(d.values.withUnsafeBytes { Frame(copying: $0) })
            case .int64S(let d):
                dtypes.append("<i8")
                frames.append(d.values.withUnsafeBytes { Frame(copying: $0) })
            case .bools(let d):
                dtypes.append("|b1")
                frames.append(d.values.withUnsafeBytes { Frame(copying: $0) })
            case .floats(let d):
                dtypes.append("<f4")
                frames.append(d.values.withUnsafeBytes { Frame(copying: $0) })
            case nil:
                dtypes.append("<f8")
                frames.append(Frame(count: 0))
            }
        }
        let shard = ctx.dataKey ?? "?"
        let header: [String: Any] = ["op": "map", "names": names, "dtypes": dtypes, "rows": rows.index.count, "shard": shard]
        let value = try call(header, function: plan.python.function, frames: frames, plan: plan, what: "on shard \(shard)", user: Self.user(ctx),
                             isCancelled: ctx.isCancelled)
        partial.rows = Tessera_V1_RowBatch()
        partial.python = value
        return .bytes(try CatalogOperators.serialized(partial, name))
    }

    func combine(_ ctx: OperatorContext) throws(OperatorError) -> Value {
        let name = PythonOperatorNames.combine
        let plan = try CatalogOperators.taskPlan(ctx, name)
        var out = CatalogPartial()
        var values: [Data] = []
        for (k, v) in ctx.inputs.enumerated() {
            let p = try CatalogOperators.partial(v, input: k, name)
            out.shards &+= p.shards
            out.rowsScanned &+= p.rowsScanned
            out.rowsMatched &+= p.rowsMatched
            values.append(p.python)
        }
        if values.count <= 1 {
            // One partial is its own fold; none (no shard met the region) is None. Neither
            // needs an executor.
            out.python = values.first ?? Data(Self.pickledNone)
        } else {
            let frames = values.map { v in v.withUnsafeBytes { Frame(copying: $0) } }
            out.python = try call(["op": "combine"], function: plan.python.combine, frames: frames, plan: plan,
                                  what: "combining \(values.count) partials", user: Self.user(ctx), isCancelled: ctx.isCancelled)
        }
        return .bytes(try CatalogOperators.serialized(out, name))
    }

    /// The address space an executor may map beyond what it maps once its imports are done
    /// (`RLIMIT_AS`, set by the executor then): twice the resident limit and 256 MiB. (The
    /// interpreter with numpy, pandas and pyarrow's allocator maps about 1.5 GB, most of it
    /// never touched: a fixed limit of twice the resident one and 1 GiB left a function 90 MB
    /// of room under a 300 MiB limit.)
    static func addressRoom(_ s: PythonSettings) -> UInt64 {
        s.memoryLimitBytes >= 1 << 61 ? UInt64(Int64.max) : 2 * s.memoryLimitBytes + (256 << 20)
    }

    /// The user whose function a task runs (the scheduler's parameter; "" when absent).
    static func user(_ ctx: OperatorContext) -> String { ctx.params.strings[PythonOperatorNames.userParameter] ?? "" }

    /// `pickle.dumps(None, protocol=5)`.
    static let pickledNone: [UInt8] = [0x80, 0x05, 0x4E, 0x2E]

    // MARK: Calls

    /// Runs one call on an executor and returns the pickled value, or throws what went wrong in
    /// words that name the shard, the worker and the limit.
    func call(_ header: [String: Any], function: Data, frames: [Frame], plan: CatalogQueryPlan, what: String, user: String,
              isCancelled: @Sendable () -> Bool) throws(OperatorError) -> Data {
        let name = header["op"] as? String == "map" ? PythonOperatorNames.map : PythonOperatorNames.combine
        let timeout = plan.python.timeoutS > 0 ? plan.python.timeoutS : 300
        let executor = try checkout(name, user: user)
        // The executor measures the pickled value against this before sending it: one over it
        // would be cut off by libzmq's size limit and the call would end only at its deadline.
        var header = header
        header["max_value_bytes"] = Limits.pythonValueBytes
        guard let head = try? JSONSerialization.data(withJSONObject: header) else {
            throw OperatorError(name, "cannot encode the request header")
        }
        let sent: Bool
        do {
            sent = try executor.socket.send([Frame([UInt8](head)), Frame([UInt8](function))] + frames)
        } catch {
            executor.stop()
            throw OperatorError(name, "cannot hand the call to the Python executor on worker \(workerName): \(error)")
        }
        guard sent else {
            executor.stop()
            throw OperatorError(name, "cannot hand the call to the Python executor on worker \(workerName)")
        }
        let start = Date()
        while true {
            let reply: [Frame]?
            do { reply = try executor.socket.receive() } catch where error.isWouldBlock { reply = nil } catch {
                executor.stop()
                throw OperatorError(name, "lost the Python executor on worker \(workerName): \(error)")
            }
            if let reply {
                return try finish(reply, executor: executor, user: user, name: name, what: what, plan: plan)
            }
            if isCancelled() {
                executor.stop()
                throw OperatorError(name, "cancelled")
            }
            let elapsed = Date().timeIntervalSince(start)
            if elapsed > timeout {
                executor.stop()
                throw OperatorError(name, "Python function \(what) on worker \(workerName) ran past its deadline of \(timeout.shortText) s: killed", retryable: false)
            }
            if !executor.isRunning {
                let tail = executor.logTail()
                let status = executor.stop(justDied: true)
                throw OperatorError(name, "the Python executor \(what) on worker \(workerName) died (\(status)); its log ends:\n\(tail)", retryable: false)
            }
            if executor.logBytes() > Self.maxLogBytes {
                executor.stop()
                throw OperatorError(name, "Python function \(what) on worker \(workerName) printed over \(Self.maxLogBytes >> 20) MiB: killed (return values rather than print them)", retryable: false)
            }
            let held = executor.heldBytes()
            guard let files = held.files else {
                executor.stop()
                throw OperatorError(name, "Python function \(what) on worker \(workerName) made more than \(PythonExecutor.scratchEntryLimit) files and folders in its scratch folder (its TMPDIR): killed", retryable: false)
            }
            if held.resident &+ files > settings.memoryLimitBytes {
                executor.stop()
                let inFiles = files >= 1 << 20 ? ", \(files >> 20) MiB of it in files of its scratch folder or held open (its TMPDIR is often memory)" : ""
                throw OperatorError(name, "Python function \(what) on worker \(workerName) grew to \((held.resident &+ files) >> 20) MiB (with what it forked\(inFiles)), over its memory limit of \(settings.memoryLimitBytes >> 20) MiB: killed", retryable: false)
            }
        }
    }

    private func finish(_ reply: [Frame], executor: PythonExecutor, user: String, name: String, what: String, plan: CatalogQueryPlan) throws(OperatorError) -> Data {
        guard reply.count == 2, let header = try? JSONSerialization.jsonObject(with: Data(reply[0].bytes)) as? [String: Any] else {
            executor.stop()
            throw OperatorError(name, "the Python executor on worker \(workerName) sent a malformed reply")
        }
        if header["ok"] as? Bool == true {
            checkin(executor, user: user)
            guard reply[1].count <= Limits.pythonValueBytes else {
                throw OperatorError(name, "the Python function's value \(what) is \(reply[1].count) bytes pickled, over the limit of \(Limits.pythonValueBytes)", retryable: false)
            }
            return Data(reply[1].bytes)
        }
        checkin(executor, user: user)
        let kind = header["kind"] as? String ?? "exception"
        let message = header["message"] as? String ?? "(no message)"
        let traceback = header["traceback"] as? String ?? ""
        var version = ""
        if !plan.python.clientPython.isEmpty && plan.python.clientPython != executor.pythonVersion {
            version = "\n(the function was pickled by Python \(plan.python.clientPython); this worker runs Python \(executor.pythonVersion))"
        }
        switch kind {
        case "module":
            let module = header["module"] as? String ?? "?"
            throw OperatorError(name, "Python function \(what): module `\(module)` is not installed on worker \(workerName) (\(settings.executable)): install it there, or avoid it\(version)", retryable: false)
        case "memory":
            throw OperatorError(name, "Python function \(what) on worker \(workerName) asked for more memory than it may map (\(executor.addressSpace >> 20) MiB of address space; \(settings.memoryLimitBytes >> 20) MiB resident): \(message)", retryable: false)
        case "unpicklable", "too_large":
            throw OperatorError(name, "Python function \(what) on worker \(workerName): \(message)", retryable: false)
        default:
            throw OperatorError(name, "Python function failed \(what) on worker \(workerName): \(message)\n\(traceback)\(version)", retryable: false)
        }
    }

    // MARK: The pool

    private func checkout(_ name: String, user: String) throws(OperatorError) -> PythonExecutor {
        let mine = idle.withLock { list -> PythonExecutor? in
            guard let k = list.lastIndex(where: { $0.user == user }) else { return nil }
            return list.remove(at: k).executor
        }
        if let e = mine {
            if e.isRunning { return e }
            e.stop()
        }
        let n = started.add(1, ordering: .relaxed).newValue
        do {
            return try PythonExecutor(settings: settings, context: context, folder: folder, index: n, user: user, admission: admission)
        } catch let e as PythonStartError {
            throw OperatorError(name, "cannot start a Python executor (`\(settings.executable) -m tessera.executor`) on worker \(workerName): \(e.message)", retryable: false)
        } catch {
            throw OperatorError(name, "cannot start a Python executor on worker \(workerName): \(error)", retryable: false)
        }
    }

    private func checkin(_ e: PythonExecutor, user: String) {
        let over = idle.withLock { list -> [PythonExecutor] in
            list.append((user, e))
            let extra = max(0, list.count - maxIdle)
            defer { list.removeFirst(extra) }
            return list.prefix(extra).map(\.executor)
        }
        for old in over { old.stop() }
    }
}

struct PythonStartError: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}

/// One executor process and the socket to it; used by one call at a time (the pool hands it
/// from thread to thread under a lock, which orders the socket's uses).
final class PythonExecutor: @unchecked Sendable {
    let process: SpawnedProcess
    let admission: ExecutorAdmission
    /// The ZAP domain of its socket: its own, so refusals are told apart per executor.
    let admissionDomain: String
    let socket: Socket
    let logPath: String
    let socketPath: String
    /// The folder the executor may write in (its working folder and TMPDIR), removed with it.
    let scratchPath: String
    private(set) var pythonVersion = ""
    /// The address space it may map (`RLIMIT_AS`), as it set it.
    private(set) var addressSpace: UInt64 = 0

    init(settings: PythonSettings, context: ZMQContext, folder: String, index: Int, user: String, admission: ExecutorAdmission) throws {
        socketPath = folder + "/executor-\(index).sock"
        logPath = folder + "/executor-\(index).log"
        scratchPath = folder + "/executor-\(index).scratch"
        try FileManager.default.createDirectory(atPath: scratchPath, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        socket = try context.socket(.pair)
        try socket.setReceiveTimeout(milliseconds: 100)
        try socket.setSendHighWaterMark(0)
        // A reply larger than any value may be is refused by libzmq before it is buffered (the
        // executor is then disconnected, and the call ends at its deadline; the executor refuses
        // such a value itself first, by name).
        try socket.setMaxMessageSize(Int64(Limits.pythonValueBytes + (1 << 20)))
        // Each connection is put to `admission` (ZAP) before it is attached: one from another
        // process is refused, and leaves the socket free for the executor's own.
        admissionDomain = ExecutorAdmission.domain(index)
        self.admission = admission
        try socket.setZAPDomain(admissionDomain)
        _ = try socket.bind("ipc://" + socketPath)
        // Nothing of the worker's own configuration (its key's path, say) reaches users' code.
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("TESSERA_") }
        // In each --python-write folder, the user's own.
        var writes: [String] = []
        if settings.sandboxed {
            for w in settings.writePaths {
                let mine = w + "/" + PythonSettings.userFolder(user)
                do {
                    try FileManager.default.createDirectory(atPath: mine, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
                } catch {
                    throw PythonStartError(message: "cannot make the folder \(mine) for the user's functions to write in: \(error)")
                }
                writes.append(mine)
            }
        }
        if let sandbox = settings.sandboxConfiguration(scratch: scratchPath, writes: writes) { env["TESSERA_EXECUTOR_SANDBOX"] = sandbox }
        // Its working folder: `python -m` put the worker's own first on sys.path (it may hold
        // the data folder), which the executor takes off and moves here.
        env["TESSERA_EXECUTOR_SCRATCH"] = scratchPath
        // One thread per executor: the worker runs as many calls at once as it has threads.
        for k in ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"] { env[k] = "1" }
        env["PYTHONUNBUFFERED"] = "1"
        env["TESSERA_EXECUTOR_ADDRESS_ROOM"] = "\(PythonExecutors.addressRoom(settings))"
        env[PythonExecutors.workerMarker] = "\(getpid())"
        let log = open(logPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard log >= 0 else { throw PythonStartError(message: "cannot open its log \(logPath): \(String(cString: strerror(errno)))") }
        defer { close(log) }
        do {
            // Its pid is admitted before any connection can be answered.
            let (executable, arguments) = (settings.executable, ["-m", "tessera.executor", "ipc://" + socketPath])
            process = try admission.start(domain: admissionDomain) {
                try SpawnedProcess(executable, arguments: arguments, environment: env, output: log)
            }
        } catch {
            throw PythonStartError(message: "\(error)")
        }
        // The first message says it is ready (importing numpy and pandas takes about a second).
        let deadline = Date().addingTimeInterval(60)
        defer { admission.forget(domain: admissionDomain) }
        while true {
            admission.answer()
            let refused = admission.refusals(domain: admissionDomain)
            if refused.contains(0) {
                stop()
                throw PythonStartError(message: "a connection to its socket came without a process id (the socket admits its process by the pid the kernel gives for the other end, which this libzmq does not pass on)")
            }
            if let child = refused.first(where: { ExecutorAdmission.ancestors(of: $0).contains(process.pid) }) {
                stop()
                throw PythonStartError(message: "a process other than the executor started (\(process.pid)) connected to its socket (process \(child), started by it): refused (the executor must be the process the worker starts: a wrapper must exec Python)")
            }
            if let hello = try? socket.receive(), let first = hello.first,
               let h = try? JSONSerialization.jsonObject(with: Data(first.bytes)) as? [String: Any], h["ready"] as? Bool == true {
                // Admission let only the executor's process in (a function of another executor
                // could connect first: /proc/net/unix lists the path); checked again here.
                let peer = first.property("Peer-Address") ?? ""
                guard ExecutorAdmission.pid(ofPeer: peer) == process.pid else {
                    stop()
                    throw PythonStartError(message: "a process other than the executor started (\(process.pid)) answered on its socket (\(peer)): refused")
                }
                // No one else may connect by the path from now on (the connection stays).
                unlink(socketPath)
                if settings.sandboxed && h["confined"] as? Bool != true {
                    stop()
                    throw PythonStartError(message: "it did not confine itself (the sandbox is on; --python-sandbox none turns it off)")
                }
                pythonVersion = h["python"] as? String ?? ""
                addressSpace = (h["address_space"] as? NSNumber)?.uint64Value ?? 0
                return
            }
            if !process.isRunning {
                let tail = logTail()
                stop()
                // Exit status 3: it could not confine itself, and says why.
                let hint = process.exitStatus == 3 ? "" : "\nInstall the client (pip install Clients/python) into the interpreter the worker runs (--python)"
                throw PythonStartError(message: "it exited at start (\(process.ending)): \(tail.isEmpty ? "no output" : tail)\(hint)")
            }
            if Date() > deadline {
                stop()
                throw PythonStartError(message: "it did not say it was ready within 60 s")
            }
        }
    }

    var isRunning: Bool { process.isRunning }

    /// Kills the process (if running) and the processes it forked into its process group
    /// (the executor makes itself a group's leader at start), closes the socket and removes
    /// the log; says how it ended. `justDied`: the process was found dead this moment, so its
    /// group, if any is left, is still its own (later its pid may lead another group).
    @discardableResult
    func stop(justDied: Bool = false) -> String {
        let pid = process.pid
        if process.isRunning {
            if kill(-pid, SIGKILL) != 0 { kill(pid, SIGKILL) }
            process.waitUntilExit()
        } else if justDied, pid > 0 {
            kill(-pid, SIGKILL)   // children left behind by an executor that exited
        }
        socket.close()
        unlink(socketPath)
        unlink(logPath)
        try? FileManager.default.removeItem(atPath: scratchPath)
        return process.ending
    }

    /// Checks since the process group was last summed.
    private var checksSinceGroupScan = 0
    /// What the rest of the group held at the last scan.
    private var groupExtraBytes: UInt64 = 0

    /// Resident memory of the executor and what it forked (its process group), from /proc (0
    /// when it cannot be read). A function's children count toward its limit: each may map
    /// up to the address-space limit, and ten of them would hold ten times it. The executor is
    /// read at every check, the rest of its group every tenth (scanning /proc costs about a
    /// millisecond per thousand processes).
    ///
    /// With it, what its files take: those in its scratch folder, its TMPDIR, often a tmpfs
    /// where a file is memory no process's resident size shows, and those the group holds open
    /// that no folder lists (deleted, made with O_TMPFILE as Python's `TemporaryFile` does, or
    /// memory files). Summed at the same scans; nil when the folder holds more than
    /// `scratchEntryLimit` entries.
    func heldBytes() -> (resident: UInt64, files: UInt64?) {
        if checksSinceGroupScan % 10 == 0 {
            let group = Self.groupResidentBytes(group: process.pid, except: process.pid)
            groupExtraBytes = group.bytes
            fileBytes = Self.folderBytes(scratchPath, entryLimit: Self.scratchEntryLimit)
                .map { $0 &+ Self.unlistedFileBytes(of: [process.pid] + group.members, scratch: scratchPath) }
        }
        checksSinceGroupScan += 1
        return (Self.residentBytes(of: process.pid) + groupExtraBytes, fileBytes)
    }

    /// What its files took at the last scan (nil: too many to count).
    private var fileBytes: UInt64? = 0
    /// Entries of a scratch folder counted at most (a scan costs about a microsecond each).
    static let scratchEntryLimit = 100_000

    /// The blocks allocated to the files under `path` (symbolic links not followed), in bytes;
    /// nil past `entryLimit` entries.
    static func folderBytes(_ path: String, entryLimit: Int) -> UInt64? {
        var total: UInt64 = 0
        var entries = 0
        var folders = [path]
        while let folder = folders.popLast() {
            let complete = forEachEntry(of: folder) { name in
                entries += 1
                if entries > entryLimit { return false }
                let child = folder + "/" + name
                var st = stat()
                guard lstat(child, &st) == 0 else { return true }
                total &+= UInt64(max(0, st.st_blocks)) &* 512
                if st.st_mode & S_IFMT == S_IFDIR { folders.append(child) }
                return true
            }
            if !complete { return nil }
        }
        return total
    }

    /// Calls `body` with the name of each entry of the folder at `path` (not `.` or `..`) until
    /// it returns false; false then (true at the end, or when the folder cannot be read).
    static func forEachEntry(of path: String, _ body: (String) -> Bool) -> Bool {
        guard let dir = opendir(path) else { return true }
        defer { closedir(dir) }
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name == "." || name == ".." { continue }
            if !body(name) { return false }
        }
        return true
    }

    /// The fields of /proc/PID/stat after the command's closing parenthesis (the command may
    /// hold spaces and parentheses): state, parent, process group, …; nil if it cannot be read.
    static func statFields(of pid: pid_t) -> [Substring]? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = text.lastIndex(of: ")") else { return nil }
        return text[text.index(after: close)...].split(separator: " ")
    }

    /// The bytes of the files processes `pids` hold that no folder lists, each file once: the
    /// blocks of those open with no name left, and the largest extent mapped of those deleted
    /// and mapped (a file written, mapped and closed holds its memory with no descriptor and,
    /// untouched, no resident page) that were in the scratch folder or are on a memory file
    /// system (device major 0: a tmpfs, or shared anonymous memory, `/dev/zero (deleted)`).
    static func unlistedFileBytes(of pids: [pid_t], scratch: String) -> UInt64 {
        struct FileID: Hashable { let device: UInt64, inode: UInt64 }
        var seen: Set<FileID> = []
        var total: UInt64 = 0
        for pid in pids {
            _ = forEachEntry(of: "/proc/\(pid)/fd") { name in
                var st = stat()
                // (stat follows the descriptor's link to the file itself, named or not.)
                if stat("/proc/\(pid)/fd/\(name)", &st) == 0, st.st_mode & S_IFMT == S_IFREG, st.st_nlink == 0,
                   seen.insert(FileID(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))).inserted {
                    total &+= UInt64(max(0, st.st_blocks)) &* 512
                }
                return true
            }
        }
        var mapped: [FileID: UInt64] = [:]
        for pid in pids {
            guard let maps = try? String(contentsOfFile: "/proc/\(pid)/maps", encoding: .utf8) else { continue }
            for line in maps.split(separator: "\n") where line.hasSuffix(" (deleted)") {
                // start-end perms offset major:minor inode path (deleted)
                let f = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
                guard f.count == 6, let dash = f[0].firstIndex(of: "-"),
                      let start = UInt64(f[0][..<dash], radix: 16), let end = UInt64(f[0][f[0].index(after: dash)...], radix: 16),
                      let offset = UInt64(f[2], radix: 16), let colon = f[3].firstIndex(of: ":"),
                      let major = UInt64(f[3][..<colon], radix: 16), let minor = UInt64(f[3][f[3].index(after: colon)...], radix: 16),
                      let inode = UInt64(f[4]), end > start else { continue }
                let path = f[5].trimmingCharacters(in: .whitespaces)
                guard major == 0 || path.hasPrefix(scratch + "/") else { continue }
                // The device as stat gives it (glibc's makedev), to meet the descriptors' files.
                let device = (major & 0xFFFF_F000) << 32 | (major & 0xFFF) << 8 | (minor & 0xFFFF_FF00) << 12 | (minor & 0xFF)
                let id = FileID(device: device, inode: inode)
                if seen.contains(id) { continue }
                mapped[id] = max(mapped[id] ?? 0, offset &+ (end - start))
            }
        }
        return mapped.values.reduce(total) { $0 &+ $1 }
    }

    static let pageSize = UInt64(sysconf(Int32(_SC_PAGESIZE)))

    static func residentBytes(of pid: pid_t) -> UInt64 {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/statm", encoding: .utf8) else { return 0 }
        let fields = text.split(separator: " ")
        guard fields.count > 1, let pages = UInt64(fields[1]) else { return 0 }
        return pages * pageSize
    }

    /// Memory of the processes in process group `group` but `except`: each one's proportional
    /// share of what it has resident (PSS, from /proc/PID/smaps_rollup: a forked child shares
    /// its parent's pages until it writes them, and its resident size counts them whole). A
    /// process is in the group when the third field after its command's closing parenthesis in
    /// /proc/PID/stat says so. With the pids of those processes.
    static func groupResidentBytes(group: pid_t, except: pid_t) -> (bytes: UInt64, members: [pid_t]) {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return (0, []) }
        var total: UInt64 = 0
        var members: [pid_t] = []
        for name in entries {
            guard let pid = Int32(name), pid != except, let fields = statFields(of: pid),
                  fields.count > 21, Int32(fields[2]) == group else { continue }
            members.append(pid)
            if let rollup = try? String(contentsOfFile: "/proc/\(name)/smaps_rollup", encoding: .utf8),
               let line = rollup.split(separator: "\n").first(where: { $0.hasPrefix("Pss:") }),
               let kb = line.split(separator: " ").dropFirst().first.flatMap({ UInt64($0) }) {
                total += kb << 10
            } else if let pages = UInt64(fields[21]) {
                total += pages * pageSize
            }
        }
        return (total, members)
    }

    /// Bytes the process has written to its log.
    func logBytes() -> UInt64 {
        var st = stat()
        return stat(logPath, &st) == 0 ? UInt64(max(0, st.st_size)) : 0
    }

    /// The last lines the process wrote (only they are read: the log may be large).
    func logTail(_ bytes: Int = 2000) -> String {
        guard let h = FileHandle(forReadingAtPath: logPath) else { return "" }
        defer { try? h.close() }
        let size = logBytes()
        try? h.seek(toOffset: size > UInt64(bytes) ? size - UInt64(bytes) : 0)
        let data = (try? h.read(upToCount: bytes)) ?? Data()
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}

/// Admits to a starting executor's socket only the process the worker started for it. A PAIR
/// socket is answered by whoever connects first, and a function of another executor could
/// connect first (same Unix user; /proc/net/unix lists the path): that executor could not start
/// while the function ran, or, unchecked, would be handed the next user's function and data.
/// The ZAP handler of the executors' context sees each connecting process (SO_PEERCRED, as
/// libzmq's address of an IPC peer: `…:uid:gid:pid`); the starting executors' threads answer it.
/// Each executor's socket has a ZAP domain of its own, naming it here.
final class ExecutorAdmission: @unchecked Sendable {
    private let lock = NSLock()
    private let zap: ZAPHandler
    /// The process each starting executor's socket admits, by domain.
    private var expected: [String: pid_t] = [:]
    /// Processes each refused (at most 64 per socket).
    private var refused: [String: [pid_t]] = [:]

    init(context: ZMQContext) throws {
        zap = try ZAPHandler(context: context)
    }

    static func domain(_ index: Int) -> String { "tessera-executor-\(index)" }

    /// Starts the executor's process (`spawn`) and admits it, under the lock, so no connection
    /// is answered in between.
    func start(domain: String, _ spawn: () throws -> SpawnedProcess) throws -> SpawnedProcess {
        try lock.withLock {
            let p = try spawn()
            expected[domain] = p.pid
            return p
        }
    }

    /// The socket is no longer starting: later connections to it are refused.
    func forget(domain: String) {
        lock.withLock {
            expected[domain] = nil
            refused[domain] = nil
        }
    }

    /// Answers the connections waiting (the ZAP socket is used under the lock, by whichever
    /// starting executor's thread comes first).
    func answer() {
        lock.withLock {
            _ = try? zap.answerPending { request in
                let pid = Self.pid(ofPeer: request.address) ?? 0
                if let want = expected[request.domain], want == pid { return "executor" }
                if expected[request.domain] != nil {
                    refused[request.domain, default: []].append(pid)
                    if refused[request.domain]!.count > 64 { refused[request.domain]!.removeFirst() }
                }
                return nil
            }
        }
    }

    /// The processes the socket of `domain` refused while it started.
    func refusals(domain: String) -> [pid_t] { lock.withLock { refused[domain] ?? [] } }

    /// The pid at the end of an IPC peer's address (`…:uid:gid:pid`).
    static func pid(ofPeer address: String) -> pid_t? {
        address.split(separator: ":").last.flatMap { Int32($0) }
    }

    /// Parents of `pid`, nearest first (from /proc/PID/stat; at most 64).
    static func ancestors(of pid: pid_t) -> [pid_t] {
        var out: [pid_t] = []
        var p = pid
        while out.count < 64, let fields = PythonExecutor.statFields(of: p) {
            guard fields.count > 1, let parent = Int32(fields[1]), parent > 1 else { break }
            out.append(parent)
            p = parent
        }
        return out
    }
}
