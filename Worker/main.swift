import ArgumentParser
import Foundation
import Logging
import TesseraDaemon

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

    @Option(help: "A name shown in status (default: host-pid).")
    var name: String?

    @Option(help: "Folder for this worker's catalog shards (created if missing).")
    var data: String?

    @Option(help: "Exit when the process with this pid is no longer the parent.")
    var exitWithParent: Int32?

    @Flag(help: "Log debug messages.")
    var verbose = false

    func validate() throws {
        guard threads >= 1 && threads <= 1024 else { throw ValidationError("--threads must be between 1 and 1024, got \(threads)") }
    }

    func run() throws {
        LoggingSystem.bootstrap(StreamLogHandler.standardError)
        var logger = Logger(label: "tessera.worker")
        logger.logLevel = verbose ? .debug : .info
        var s = WorkerSettings(
            schedulerEndpoint: scheduler,
            name: name ?? "\(ProcessInfo.processInfo.hostName)-\(getpid())",
            threads: threads, memoryLimit: memoryLimitMb << 20)
        s.peerBind = peerBind
        s.peerAdvertise = peerAdvertise
        s.parentPID = exitWithParent
        s.dataDirectory = data
        let daemon = try WorkerDaemon(s, logger: logger)
        print("tessera-worker peer=\(daemon.peerEndpoint) scheduler=\(scheduler)")
        fflush(nil)
        try daemon.run()
    }
}

WorkerCommand.main()
