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

/// `tessera bench soak`: mixed jobs for a long while against a local cluster of real processes,
/// sampling every daemon's resident memory every 10 s (one JSON line each), and the latency of
/// a small question when the cluster is idle and during the soak (p50/p99).
struct SoakBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "soak", abstract: "Mixed jobs for MINUTES; memory every 10 s; a small question's latency idle and under load.")

    @Option(help: "Minutes of load.")
    var minutes = 30.0

    @Option(help: "Workers of the local cluster.")
    var workers = 2

    @Option(help: "Client threads submitting jobs.")
    var clients = 3

    @Option(help: "Rows of the catalog the questions read.")
    var rows = 200_000

    @Option(help: "Each worker's memory limit for kept values, in MiB.")
    var memoryLimitMb = 256

    func run() throws {
        let data = FileManager.default.temporaryDirectory.appendingPathComponent("tessera-soak-\(getpid())").path
        var o = LocalCluster.Options()
        o.workers = workers
        o.threadsPerWorker = 1
        o.dataDirectory = data
        o.memoryLimitMb = memoryLimitMb
        o.logFile = data + ".log"
        let cluster = try LocalCluster(o)
        defer {
            cluster.stop()
            try? FileManager.default.removeItem(atPath: data)
        }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        let files = try SyntheticCatalog(seed: 3).writeFITS(rows: rows, rowsPerFile: 50_000, to: data + "-input")
        var ingest = IngestOptions(dataset: "object", files: files)
        ingest.maxRowsPerShard = 10_000
        ingest.replicas = min(2, workers)
        _ = try CatalogIngest.run(ingest, connection: conn)
        try? FileManager.default.removeItem(atPath: data + "-input")

        // The small question: a 1° cone count.
        let small = CatalogQuery(dataset: "object").region(.cone(ra: 60, dec: -30, radius: 1)).count()
        func latencies(_ n: Int, pause: Double) throws -> [Double] {
            var out: [Double] = []
            for _ in 0..<n {
                let t = Date()
                _ = try conn.run(small)
                out.append(Date().timeIntervalSince(t) * 1000)
                if pause > 0 { usleep(UInt32(pause * 1e6)) }
            }
            return out.sorted()
        }
        let idle = try latencies(200, pause: 0)
        print(jsonLine([("bench", "soak_small_query"), ("phase", "idle"), ("runs", idle.count), ("p50_ms", pct(idle, 0.5)), ("p99_ms", pct(idle, 0.99))]))

        let stop = Atomic<Bool>(false)
        let counts = Mutex<[String: Int]>([:])
        let endpoint = cluster.clientEndpoint
        let rowCount = rows
        var threads: [Thread] = []
        for c in 0..<clients {
            let t = Thread {
                var rng = SplitMix64(seed: UInt64(c + 1))
                guard let conn = try? SchedulerConnection(endpoint: endpoint) else { return }
                while !stop.load(ordering: .relaxed) {
                    let kind = rng.next() % 5
                    var name = ""
                    var ok = false
                    do {
                        switch kind {
                        case 0:
                            name = "tree_reduce"
                            let n = Int(rng.next() % 20_000) + 1
                            let out = try conn.run(.plan(ChaosBench.treeReduce(n)))
                            ok = out.values.values.first == .int64(Int64(n * (n + 1) / 2))
                        case 1:
                            name = "catalog_count"
                            ok = try conn.run(CatalogQuery(dataset: "object").filter("coord_ra >= 0").count()).result.rowsMatched == rowCount
                        case 2:
                            name = "catalog_aggregate"
                            _ = try conn.run(CatalogQuery(dataset: "object").filter("mag(r_psfFlux) < 22").count())
                            ok = true
                        case 3:
                            // Wide intermediate values (columns kept for a final sum): memory and spills.
                            name = "wide_values"
                            var g = TaskGraph(operators: ["arange", "sum"])
                            let leaves = (0..<64).map { _ in g.add(operatorIndex: 0, arg: 200_000) }
                            g.add(operatorIndex: 1, inputs: leaves)
                            let out = try conn.run(.graph(g))
                            ok = out.values[64] == .float64(64 * 200_000.0 * 199_999 / 2)
                        default:
                            // A job given up half-way: cancelled by its client.
                            name = "cancelled"
                            let acc = try conn.submit(.plan(ChaosBench.treeReduce(50_000)))
                            usleep(UInt32(rng.next() % 300_000))
                            try conn.cancel(job: acc.jobID)
                            ok = true
                        }
                    } catch {
                        ok = false
                    }
                    counts.withLock { $0[name + (ok ? "" : "_failed"), default: 0] += 1 }
                }
            }
            t.start()
            threads.append(t)
        }

        let began = Date()
        let end = began.addingTimeInterval(minutes * 60)
        var nextSample = began
        var loaded: [Double] = []
        while Date() < end {
            if Date() >= nextSample {
                var fields: [(String, Any)] = [("bench", "soak_memory"), ("t_s", Int(Date().timeIntervalSince(began))),
                                               ("scheduler_rss_mib", rssMiB(cluster.scheduler.processIdentifier))]
                for (i, w) in cluster.workers.enumerated() { fields.append(("worker\(i)_rss_mib", rssMiB(w.processIdentifier))) }
                let s = try conn.status()
                fields.append(("spilled_mib", Double(s.workers.reduce(0) { $0 + $1.spilledBytes }) / 1_048_576))
                fields.append(("jobs_completed", s.jobsCompleted))
                print(jsonLine(fields))
                fflush(nil)
                nextSample = nextSample.addingTimeInterval(10)
            }
            let t = Date()
            _ = try conn.run(small)
            loaded.append(Date().timeIntervalSince(t) * 1000)
            usleep(500_000)
        }
        stop.store(true, ordering: .relaxed)
        loaded.sort()
        print(jsonLine([("bench", "soak_small_query"), ("phase", "during_soak"), ("runs", loaded.count), ("p50_ms", pct(loaded, 0.5)), ("p99_ms", pct(loaded, 0.99))]))
        let c = counts.withLock { $0 }
        print(jsonLine([("bench", "soak"), ("minutes", minutes)] + c.sorted { $0.key < $1.key }.map { ($0.key, $0.value) as (String, Any) }))
        for t in threads { _ = t }
        // Let the submitting threads see the flag before the cluster goes.
        sleep(3)
    }

    func pct(_ sorted: [Double], _ q: Double) -> Double {
        guard !sorted.isEmpty else { return 0 }
        return (sorted[min(sorted.count - 1, Int(q * Double(sorted.count)))] * 100).rounded() / 100
    }

    func rssMiB(_ pid: Int32) -> Double {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kb = Double(line.split(separator: " ").dropFirst().first ?? "") else { return -1 }
        return (kb / 1024 * 10).rounded() / 10
    }
}
