import ArgumentParser
import Foundation
import Logging
import TesseraBuildTarget
import TesseraDaemon
import TesseraSecurity

/// `tessera-worker`: connects to a scheduler and runs the tasks it is given.
struct WorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tessera-worker",
        abstract: "A Tessera worker: runs tasks next to its data and serves results to its peers.")

    @Option(help: "The scheduler's worker endpoint.")
    var scheduler = "tcp://127.0.0.1:7701"

    @Option(help: "Where peers fetch results from this worker (a * port picks a free one).")
    var peerBind = "tcp://127.0.0.1:*"

    @Option(help: "The peer endpoint other hosts should dial, if not the bound one (e.g. tcp://host-b:7800).")
    var peerAdvertise: String?

    @Option(help: "Executor threads (default: the number of cores).")
    var threads: Int = ProcessInfo.processInfo.activeProcessorCount

    @Option(help: "Memory limit in MiB for stored results.")
    var memoryLimitMb: UInt64 = 4096

    @Option(help: "MiB of decoded column chunks kept for later questions (default: a quarter of --memory-limit-mb; 0: none).")
    var columnCacheMb: UInt64?

    @Option(help: "A name shown in status (default: the name in --key, else host-pid).")
    var name: String?

    @Option(help: "This worker's key file (from `tessera keys add-worker`; also $TESSERA_WORKER_KEY). Required unless --insecure.")
    var key: String?

    @Flag(help: "Run without keys: anyone who reaches the ports gets in. Allowed on loopback addresses only.")
    var insecure = false

    @Option(help: "Folder for this worker's catalog shards (created if missing).")
    var data: String?

    @Option(help: "The Python interpreter users' functions run in (it needs the tessera client package: pip install Clients/python).")
    var python = "python3"

    @Flag(help: "Do not run users' Python functions on this worker.")
    var noPython = false

    @Option(help: "Resident memory, in MiB, one Python executor may reach during a call before it is killed.")
    var pythonMemoryMb: UInt64 = 2048

    @Option(help: "How users' Python functions are confined: landlock (they read only the interpreter's, the system's and --python-read folders, write only their scratch folder and --python-write folders, open no TCP connection and signal no process outside; executors refuse to start where the kernel lacks Landlock, or cannot scope signals: before Linux 6.12), landlock-unscoped-signals (the same, but on a kernel before 6.12 a function may signal any process of this worker's user: the worker, other users' executors) or none (they run with all of this worker's access).")
    var pythonSandbox: PythonSandboxOption = .landlock

    @Option(help: "A folder users' Python functions may read (repeatable; never within --data or the key).")
    var pythonRead: [String] = []

    @Option(help: "A folder users' Python functions may write in, each user in a folder of their own in it, FOLDER/USER (repeatable; never within --data or the key).")
    var pythonWrite: [String] = []

    @Option(help: "Exit when the process with this pid is no longer the parent.")
    var exitWithParent: Int32?

    @Flag(help: "Log debug messages.")
    var verbose = false

    func validate() throws {
        guard threads >= 1 && threads <= 1024 else { throw ValidationError("--threads must be between 1 and 1024, got \(threads)") }
        guard insecure || key != nil || ProcessInfo.processInfo.environment["TESSERA_WORKER_KEY"] != nil else {
            throw ValidationError("give this worker its key (--key FILE, made by `tessera keys add-worker NAME`), or run it with --insecure on loopback")
        }
    }

    func run() throws {
        LoggingSystem.bootstrap(StreamLogHandler.standardError)
        var logger = Logger(label: "tessera.worker")
        logger.logLevel = verbose ? .debug : .info
        var credentials = Credentials.insecure
        if !insecure, let path = key ?? ProcessInfo.processInfo.environment["TESSERA_WORKER_KEY"] {
            let file = try KeyFile.read(path)
            guard file.role == .worker else { throw ValidationError("\(path) is a \(file.role.rawValue) key, not a worker's") }
            credentials = .curve(file)
        }
        var keyName: String?
        if case .curve(let file) = credentials { keyName = file.name }
        var s = WorkerSettings(
            schedulerEndpoint: scheduler,
            name: name ?? keyName ?? "\(ProcessInfo.processInfo.hostName)-\(getpid())",
            threads: threads, memoryLimit: memoryLimitMb << 20)
        s.credentials = credentials
        s.peerBind = peerBind
        s.peerAdvertise = peerAdvertise
        s.parentPID = exitWithParent
        s.dataDirectory = data
        s.columnCacheBytes = (columnCacheMb ?? memoryLimitMb / 4) << 20
        if !noPython {
            var py = PythonSettings(executable: python, memoryLimitBytes: pythonMemoryMb << 20)
            py.sandboxed = pythonSandbox != .none
            py.allowsUnscopedSignals = pythonSandbox == .landlockUnscopedSignals
            (py.readPaths, py.writePaths) = (pythonRead, pythonWrite)
            py.privatePaths = PythonSettings.privatePaths(data: data, key: key ?? ProcessInfo.processInfo.environment["TESSERA_WORKER_KEY"])
            if let problem = py.problem() { throw ValidationError(problem) }
            s.python = py
        }
        let daemon = try WorkerDaemon(s, logger: logger)
        print("tessera-worker peer=\(daemon.peerEndpoint) scheduler=\(scheduler)")
        fflush(nil)
        try daemon.run()
    }
}

/// `--python-sandbox`.
enum PythonSandboxOption: String, ExpressibleByArgument, CaseIterable {
    case landlock, landlockUnscopedSignals = "landlock-unscoped-signals", none
}

BuildTarget.requireProcessor(program: "tessera-worker")
WorkerCommand.main()
