import ArgumentParser
import Foundation
import Logging
import TesseraBuildTarget
import TesseraDaemon
import TesseraScheduler
import TesseraSecurity

/// `tessera-scheduler`: binds the client and worker endpoints and runs the scheduler's loop.
struct SchedulerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tessera-scheduler",
        abstract: "The Tessera scheduler: accepts jobs from clients and places their tasks on workers.")

    @Option(help: "Endpoint clients connect to (a * port picks a free one).")
    var clients = "tcp://127.0.0.1:7700"

    @Option(help: "Endpoint workers connect to.")
    var workers = "tcp://127.0.0.1:7701"

    @Option(help: "Milliseconds between worker heartbeats.")
    var heartbeatMs: UInt32 = 500

    @Option(help: "Milliseconds of silence after which a worker is declared dead.")
    var workerTimeoutMs: UInt64 = 5000

    @Option(help: "Seconds before a shard file no dataset references (a failed or replaced ingest, a planted file) is removed from its worker.")
    var orphanGraceS: Double = 3600

    @Option(help: "Seconds a client may send nothing (it heartbeats every second while it waits) before its jobs are cancelled.")
    var clientTimeoutS: Double = 30

    @Option(help: "Seconds a task may run before it is cancelled and run elsewhere, plus one second per MiB it reads (a job may set its own).")
    var taskDeadlineS: Double = 300

    @Option(help: "Admission control: an interactive catalog question expected to read more rows than this is refused with the estimate (0: no budget).")
    var interactiveMaxRows: UInt64 = 5_000_000

    @Option(help: "Most tasks of an interactive job that is not a catalog question (0: no limit).")
    var interactiveMaxTasks = 1_000

    @Option(help: "Seconds an interactive job's task may run from when its worker begins it (its wait there aside), whatever the job asks; one that takes longer runs elsewhere, and its job fails after three tries (0: only the usual task deadline).")
    var interactiveTaskDeadlineS: Double = 30

    @Option(help: "Shared scans: other jobs' scans of a shard (same class) sent along with one, to ride one pass over it on the worker (0: every scan reads alone).")
    var maxPassRiders = 31

    @Option(help: "Jobs one user may have running at once (0: no limit).")
    var maxJobsPerUser = 256

    @Option(help: "Tasks one user's unfinished jobs may hold, all told (0: no limit; about 100 bytes of the scheduler's memory each).")
    var maxTasksPerUser = 50_000_000

    @Option(help: "Tasks all unfinished jobs may hold (0: no limit).")
    var maxLiveTasks = 100_000_000

    @Option(help: "Rows one question may return (a plan's max_rows may ask up to this).")
    var maxRowsPerJob: UInt64 = 100_000_000

    @Option(help: "MiB of tables (uploads) one user's workspace may hold.")
    var workspaceQuotaMb: UInt64 = 1_024

    @Option(help: "Half-life, in seconds, of the worker time fair share counts per user.")
    var fairShareHalfLifeS: Double = 300

    @Option(help: "A user's fair-share weight, NAME=WEIGHT (default 1; repeatable).")
    var userWeight: [String] = []

    @Option(help: "The registry of datasets (an SQLite file, created if missing).")
    var registry: String?

    @Option(help: "The cluster's key folder (scheduler.key, workers.list, users.list: `tessera keys`). Required unless --insecure.")
    var keys: String?

    @Flag(help: "Run without keys: anyone who reaches the ports gets in. Allowed on loopback addresses only.")
    var insecure = false

    @Option(help: "Exit when the process with this pid is no longer the parent.")
    var exitWithParent: Int32?

    @Flag(help: "Log debug messages.")
    var verbose = false

    func validate() throws {
        guard orphanGraceS.isFinite, orphanGraceS >= 0, orphanGraceS <= 1e7 else { throw ValidationError("--orphan-grace-s must be within 0…10,000,000") }
        guard clientTimeoutS.isFinite, clientTimeoutS >= 1, clientTimeoutS <= 86_400 else { throw ValidationError("--client-timeout-s must be within 1…86,400") }
        guard taskDeadlineS.isFinite, taskDeadlineS >= 0.1, taskDeadlineS <= 604_800 else { throw ValidationError("--task-deadline-s must be within 0.1…604,800") }
        guard interactiveTaskDeadlineS.isFinite, interactiveTaskDeadlineS >= 0, interactiveTaskDeadlineS <= 604_800 else {
            throw ValidationError("--interactive-task-deadline-s must be within 0…604,800")
        }
        guard fairShareHalfLifeS.isFinite, fairShareHalfLifeS >= 1, fairShareHalfLifeS <= 1e7 else { throw ValidationError("--fair-share-half-life-s must be within 1…10,000,000") }
        guard maxJobsPerUser >= 0 else { throw ValidationError("--max-jobs-per-user must be 0 (no limit) or more") }
        guard maxTasksPerUser >= 0, maxLiveTasks >= 0 else { throw ValidationError("--max-tasks-per-user and --max-live-tasks must be 0 (no limit) or more") }
        _ = try weights()
        guard workerTimeoutMs > UInt64(heartbeatMs) else {
            throw ValidationError("--worker-timeout-ms (\(workerTimeoutMs)) must exceed --heartbeat-ms (\(heartbeatMs))")
        }
        guard insecure != (keys != nil) else {
            throw ValidationError("give the cluster's key folder (--keys DIR, made by `tessera keys init`), or run with --insecure on loopback — one of the two")
        }
    }

    func run() throws {
        LoggingSystem.bootstrap(StreamLogHandler.standardError)
        var logger = Logger(label: "tessera.scheduler")
        logger.logLevel = verbose ? .debug : .info
        var config = SchedulerConfig()
        config.heartbeatIntervalMs = heartbeatMs
        config.workerTimeoutNs = workerTimeoutMs * 1_000_000
        config.orphanGraceNs = UInt64(orphanGraceS * 1e9)
        config.clientTimeoutNs = UInt64(clientTimeoutS * 1e9)
        config.taskDeadlineNs = UInt64(taskDeadlineS * 1e9)
        config.interactiveMaxRows = interactiveMaxRows
        config.maxJobsPerUser = maxJobsPerUser
        config.maxTasksPerUser = maxTasksPerUser
        config.maxLiveTasks = maxLiveTasks
        config.maxPassRiders = max(0, maxPassRiders)
        config.interactiveMaxTasks = max(0, interactiveMaxTasks)
        config.interactiveTaskDeadlineNs = UInt64(interactiveTaskDeadlineS * 1e9)
        config.maxRowsPerJob = maxRowsPerJob
        config.workspaceQuotaBytes = workspaceQuotaMb.multipliedReportingOverflow(by: 1 << 20).overflow ? .max : workspaceQuotaMb << 20
        config.fairShareHalfLifeNs = UInt64(fairShareHalfLifeS * 1e9)
        config.userWeights = try weights()
        let daemon = try SchedulerDaemon(clientBind: clients, workerBind: workers, config: config, registryPath: registry,
                                         security: keys.map { .curve(KeyDirectory($0)) } ?? .insecure, parentPID: exitWithParent, logger: logger)
        // The first line of stdout names the bound endpoints: launchers read it.
        print("tessera-scheduler clients=\(daemon.clientEndpoint) workers=\(daemon.workerEndpoint)")
        fflush(nil)
        try daemon.run()
    }

    /// `--user-weight NAME=WEIGHT` options as a table.
    func weights() throws -> [String: Double] {
        var out: [String: Double] = [:]
        for w in userWeight {
            let parts = w.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, !parts[0].isEmpty, let v = Double(parts[1]), v.isFinite, v > 0, v <= 1e6 else {
                throw ValidationError("--user-weight takes NAME=WEIGHT with a weight within (0, 1,000,000], not `\(w)`")
            }
            out[parts[0]] = v
        }
        return out
    }
}

BuildTarget.requireProcessor(program: "tessera-scheduler")
SchedulerCommand.main()
