import ArgumentParser
import Dispatch
import Foundation
import Synchronization
import TesseraClient
import TesseraCluster
import TesseraCompute
import TesseraProtocol
import TesseraSurvey

#if canImport(Glibc)
import Glibc
#endif

/// `tessera bench chaos`: trials against a supervised local cluster of real processes. Each
/// trial runs a job with a known answer — a tree reduction, or a count over a catalog stored
/// with two replicas — and SIGKILLs a random daemon (a worker or the scheduler) at a random
/// moment. A trial ends with the right answer, or a clear error, within 30 s; anything else
/// (a wrong answer, no end) is a failure. One JSON line per trial, then the tally.
struct ChaosBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chaos", abstract: "Kill a random daemon mid-job, trial after trial; tally the endings.")

    @Option(help: "Trials.")
    var trials = 100

    @Option(help: "Workers of the local cluster.")
    var workers = 3

    @Option(help: "Seed for the choices of victim and moment.")
    var seed: UInt64 = 1

    @Option(help: "Seconds a trial may take before it counts as a hang.")
    var deadline = 30.0

    func run() throws {
        var rng = SplitMix64(seed: seed)
        let data = FileManager.default.temporaryDirectory.appendingPathComponent("tessera-chaos-\(getpid())").path
        var o = LocalCluster.Options()
        o.workers = workers
        o.threadsPerWorker = 2
        o.heartbeatMs = 200
        o.workerTimeoutMs = 1_500
        o.dataDirectory = data
        o.clientTimeoutSeconds = 10
        o.logFile = data + ".log"
        let cluster = try LocalCluster(o)
        defer {
            cluster.stop()
            try? FileManager.default.removeItem(atPath: data)
        }
        // A catalog with every shard on two workers: one worker's death loses no data.
        let rows = 200_000
        let setup = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        let files = try SyntheticCatalog(seed: 9).writeFITS(rows: rows, rowsPerFile: 50_000, to: data + "-input")
        var ingest = IngestOptions(dataset: "object", files: files)
        ingest.maxRowsPerShard = 5_000
        ingest.replicas = 2
        _ = try CatalogIngest.run(ingest, connection: setup)
        try? FileManager.default.removeItem(atPath: data + "-input")

        var tally: [String: Int] = [:]
        var seconds: [Double] = []
        for trial in 0..<trials {
            // Healthy again (every daemon back) before the next trial starts.
            try waitForHealthy(cluster, workers: workers)
            let catalog = trial % 2 == 1
            let leaves = 4_000
            let victim = Int(rng.next() % UInt64(workers + 1))  // == workers: the scheduler
            // Within the job's run: a count takes a fraction of a second, the reduction about 1.5 s.
            let delay = Double(rng.next() % (catalog ? 250 : 1_500)) / 1000
            let result = Mutex<(ending: String, detail: String)?>(nil)
            let endpoint = cluster.clientEndpoint
            let start = Date()
            let runner = Thread {
                let ending: (String, String)
                do {
                    let c = try SchedulerConnection(endpoint: endpoint)
                    if catalog {
                        let n = try c.run(CatalogQuery(dataset: "object").filter("coord_ra >= 0").count()).result.rowsMatched
                        ending = n == rows ? ("correct", "") : ("wrong", "counted \(n) of \(rows)")
                    } else {
                        let out = try c.run(.plan(Self.treeReduce(leaves)), idleTimeout: 60)
                        if out.finished.state != .jobDone {
                            ending = ("clear_error", out.finished.error)
                        } else if case .int64(let s)? = out.values.values.first, s == Int64(leaves * (leaves + 1) / 2) {
                            ending = ("correct", "")
                        } else {
                            ending = ("wrong", "\(out.values.values.first.map { "\($0)" } ?? "no value")")
                        }
                    }
                } catch {
                    let text = "\(error)"
                    ending = text.isEmpty ? ("unclear_error", "") : ("clear_error", text)
                }
                result.withLock { $0 = ending }
            }
            runner.start()
            usleep(UInt32(delay * 1e6))
            let who = victim == workers ? "scheduler" : "local-\(victim)"
            if victim == workers { kill(cluster.scheduler.processIdentifier, SIGKILL) } else { kill(cluster.workers[victim].processIdentifier, SIGKILL) }
            let limit = start.addingTimeInterval(deadline)
            while result.withLock({ $0 }) == nil && Date() < limit { usleep(20_000) }
            let took = Date().timeIntervalSince(start)
            let (ending, detail) = result.withLock { $0 } ?? ("hang", "no ending within \(deadline) s")
            tally[ending, default: 0] += 1
            seconds.append(took)
            print(jsonLine([("bench", "chaos_trial"), ("trial", trial), ("job", catalog ? "catalog_count" : "tree_reduce"), ("killed", who),
                            ("after_s", delay), ("ending", ending), ("seconds", (took * 100).rounded() / 100), ("detail", String(detail.prefix(160)))]))
            fflush(nil)
        }
        seconds.sort()
        let p = { (q: Double) in seconds.isEmpty ? 0 : seconds[min(seconds.count - 1, Int(q * Double(seconds.count)))] }
        print(jsonLine([("bench", "chaos"), ("trials", trials), ("correct", tally["correct", default: 0]), ("clear_error", tally["clear_error", default: 0]),
                        ("wrong", tally["wrong", default: 0]), ("hang", tally["hang", default: 0]), ("unclear_error", tally["unclear_error", default: 0]),
                        ("p50_s", p(0.5)), ("max_s", seconds.last ?? 0), ("restarts", cluster.restarts.values.reduce(0, +))]))
        if tally["wrong", default: 0] + tally["hang", default: 0] + tally["unclear_error", default: 0] > 0 { throw ExitCode(1) }
    }

    /// A reduction whose leaves each take half a millisecond: long enough to be killed mid-run.
    static func treeReduce(_ leaves: Int) -> Tessera_V1_Plan {
        Workloads.treeReduce(leaves: UInt64(leaves), fanIn: 8, leafParams: Workloads.sleeping(microseconds: 500))
    }

    func waitForHealthy(_ cluster: LocalCluster, workers: Int) throws {
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            if cluster.scheduler.isRunning, cluster.workers.allSatisfy(\.isRunning),
               let c = try? SchedulerConnection(endpoint: cluster.clientEndpoint, timeout: 1),
               let s = try? c.status(timeout: 1), s.workers.count == workers, s.jobs.allSatisfy({ $0.state != .jobRunning }) {
                return
            }
            usleep(100_000)
        }
        throw ValidationError("the cluster did not come back within 60 s")
    }
}
