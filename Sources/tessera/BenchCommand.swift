import ArgumentParser
import Dispatch
import Foundation
import TesseraClient
import TesseraCluster
import TesseraCompute
import TesseraProtocol

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench", abstract: "Benchmarks; each prints one JSON line per result.",
        subcommands: [SchedulerBench.self, ScanBench.self, IngestBench.self, CatalogBench.self, ConeBench.self, PlanBench.self, ChaosBench.self, SoakBench.self, PythonBench.self, MixedBench.self, CrossmatchBench.self, TAPBench.self, CutoutBench.self, ForcedPhotBench.self, HiPSBench.self, StackBench.self])
}

/// Where a benchmark runs: a given scheduler, or a local cluster it starts and stops itself.
struct ClusterTarget: ParsableArguments {
    @Option(help: "Use this scheduler instead of starting a local cluster.")
    var scheduler: String?

    @Option(help: "Workers of the local cluster.")
    var workers = 2

    @Option(help: "Executor threads per worker of the local cluster.")
    var threads = 1

    @Flag(help: "Run the local cluster without CURVE keys (to measure what encryption costs).")
    var insecure = false

    /// Runs `body` with a connection, starting (and afterwards stopping) a local cluster if needed.
    func with<R>(_ body: (SchedulerConnection) throws -> R) throws -> R {
        if let scheduler { return try body(SchedulerConnection(endpoint: scheduler)) }
        var o = LocalCluster.Options()
        o.workers = workers
        o.threadsPerWorker = threads
        o.insecure = insecure
        o.logFile = FileManager.default.temporaryDirectory.appendingPathComponent("tessera-bench-\(getpid()).log").path
        let cluster = try LocalCluster(o)
        defer { cluster.stop() }
        return try body(SchedulerConnection(endpoint: cluster.clientEndpoint))
    }
}

/// One JSON line, fields in the order given.
func jsonLine(_ fields: [(String, Any)]) -> String {
    func enc(_ v: Any) -> String {
        switch v {
        case let s as String: return ResultTable.jsonString(s)
        // The shortest text that reads back as the same double (results must survive the trip).
        case let d as Double: return d.isFinite ? "\(d)" : "null"
        case let b as Bool: return b ? "true" : "false"
        case let o as [(String, Any)]: return jsonLine(o)
        default: return "\(v)"
        }
    }
    return "{" + fields.map { ResultTable.jsonString($0.0) + ":" + enc($0.1) }.joined(separator: ",") + "}"
}

struct SchedulerBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scheduler",
        abstract: "Scheduler throughput and latency: independent tasks, a tree reduction, a dependency chain, a 1M-task graph.")

    @Option(help: "Tasks in the independent and tree-reduce workloads.")
    var tasks = 20_000

    @Option(help: "Length of the chain workload.")
    var chain = 1_000

    @Option(help: "Tasks in the large explicit graph (0 skips it).")
    var graphTasks = 1_000_000

    @OptionGroup var target: ClusterTarget

    func validate() throws {
        guard tasks >= 1 && tasks <= 50_000_000 else { throw ValidationError("--tasks must be between 1 and 50,000,000") }
        guard chain >= 2 else { throw ValidationError("--chain must be at least 2") }
    }

    func run() throws {
        try target.with { conn in
            // Warm-up: workers connected to each other and the code paths hot.
            _ = try conn.run(.plan(Workloads.treeReduce(leaves: 64, fanIn: 8)))

            // The floor under every latency: one client ↔ scheduler round trip over loopback.
            var rtts: [Double] = []
            for _ in 0..<1000 {
                let t = DispatchTime.now().uptimeNanoseconds
                try conn.ping()
                rtts.append(Double(DispatchTime.now().uptimeNanoseconds - t) / 1000)
            }
            rtts.sort()
            print(jsonLine([("engine", "tessera"), ("workload", "ping"), ("round_trips", rtts.count),
                            ("median_rtt_us", rtts[rtts.count / 2]), ("p99_rtt_us", rtts[rtts.count * 99 / 100])]))
            fflush(nil)

            let a = try conn.run(.plan(Workloads.independent(tasks: UInt64(tasks))))
            try check(a, "independent")
            print(jsonLine([("engine", "tessera"), ("workload", "independent"), ("tasks", tasks), ("seconds", a.seconds),
                            ("tasks_per_s", Double(tasks) / a.seconds), ("streamed_messages", a.resultMessages)]))
            fflush(nil)

            let tr = try conn.run(.plan(Workloads.treeReduce(leaves: UInt64(tasks), fanIn: 8)))
            try check(tr, "tree_reduce")
            let total = Int(tr.finished.taskCount)
            let sum: Int64 = if case .int64(let v) = tr.values.values.first { v } else { -1 }
            print(jsonLine([("engine", "tessera"), ("workload", "tree_reduce"), ("tasks", total), ("seconds", tr.seconds),
                            ("tasks_per_s", Double(total) / tr.seconds), ("result", sum)]))
            fflush(nil)

            // A chain: each link reads the one before. Single-input links are pipelined onto the
            // worker running their input, so they need no scheduler round trip.
            var plain = Tessera_V1_Plan()
            var ch = Tessera_V1_ChainPlan()
            ch.length = UInt64(chain)
            ch.operator = "inc"
            plain.chain = ch
            let pc = try conn.run(.plan(plain))
            try check(pc, "chain")
            let last: Int64 = if case .int64(let v) = pc.values[UInt32(chain - 1)] { v } else { -1 }
            let (med, p99) = try hopTimes(conn, twoInputs: false)
            print(jsonLine([("engine", "tessera"), ("workload", "chain"), ("tasks", chain), ("seconds", pc.seconds),
                            ("mean_hop_us", pc.seconds * 1e6 / Double(chain)), ("median_hop_us", med), ("p99_hop_us", p99),
                            ("result", last)]))
            fflush(nil)
            // The same with every link also reading a constant task, which defeats pipelining: each
            // hop is a full worker → scheduler → worker round trip.
            let (rtMed, rtP99) = try hopTimes(conn, twoInputs: true)
            print(jsonLine([("engine", "tessera"), ("workload", "chain_round_trip"), ("tasks", chain),
                            ("median_hop_us", rtMed), ("p99_hop_us", rtP99)]))
            fflush(nil)

            if graphTasks > 0 { try graphBench(conn) }

            let s = try conn.status()
            print(jsonLine([("engine", "tessera"), ("workload", "workers"), ("workers", s.workers.count),
                            ("peak_rss_mib", s.workers.map { Double($0.peakRssBytes) / 1_048_576 }.max() ?? 0),
                            ("max_heartbeat_gap_ms", Int(s.maxHeartbeatGapMs))]))
        }
    }

    /// Per-hop times of a chain, from when its outputs (every 10th link) reach the client: each
    /// results message stands for the hops since the previous one, each hop taking an equal share.
    func hopTimes(_ conn: SchedulerConnection, twoInputs: Bool) throws -> (median: Double, p99: Double) {
        var g = TaskGraph(operators: ["inc", "sum"])
        let constant = g.add(operatorIndex: 0, arg: 0)
        var prev = constant
        for _ in 0..<chain { prev = g.add(operatorIndex: 1, inputs: twoInputs ? [prev, constant] : [prev]) }
        g.outputs = stride(from: UInt32(10), through: UInt32(chain), by: 10).map { $0 }
        var arrivals: [(UInt64, Int)] = []
        let out = try conn.run(.graph(g)) { ev in
            if case .results(let vs, _, _) = ev { arrivals.append((DispatchTime.now().uptimeNanoseconds, vs.count * 10)) }
        }
        try check(out, "chain")
        var hops: [Double] = []
        for (a, b) in zip(arrivals, arrivals.dropFirst()) {
            hops += repeatElement(Double(b.0 - a.0) / 1000 / Double(b.1), count: b.1)
        }
        hops.sort()
        guard !hops.isEmpty else { return (0, 0) }
        return (hops[hops.count / 2], hops[min(hops.count - 1, hops.count * 99 / 100)])
    }

    /// A tree reduction written out as an explicit graph: submitted as arrays, accepted, run.
    func graphBench(_ conn: SchedulerConnection) throws {
        let leaves = graphTasks * 7 / 8
        let t0 = DispatchTime.now().uptimeNanoseconds
        var g = TaskGraph(operators: ["inc", "sum"])
        g.reserve(tasks: graphTasks + 16, inputs: graphTasks + 16)
        g.addReduction(of: (0..<leaves).map { g.add(operatorIndex: 0, arg: Int64($0)) }, operatorIndex: 1, fanIn: 8)
        let built = DispatchTime.now().uptimeNanoseconds
        // The wire size, as the submit will send it.
        let (spec, frames) = g.encoded()
        var env = Envelope()
        var s = Tessera_V1_SubmitJob()
        s.graph = spec
        env.submitJob = s
        let wireBytes = WireProtocol.encode(env, frames: frames).reduce(0) { $0 + $1.count }
        let r = try conn.run(.graph(g), idleTimeout: 120)
        try check(r, "graph_1m")
        let expect = Int64(leaves) * Int64(leaves + 1) / 2
        let got: Int64 = if case .int64(let v) = r.values.values.first { v } else { -1 }
        let status = try conn.status()
        print(jsonLine([("engine", "tessera"), ("workload", "graph_1m"), ("tasks", g.taskCount),
                        ("build_seconds", Double(built - t0) / 1e9), ("wire_bytes_per_task", Double(wireBytes) / Double(g.taskCount)),
                        ("accept_seconds", r.acceptSeconds), ("seconds", r.seconds), ("tasks_per_s", Double(g.taskCount) / r.seconds),
                        ("max_heartbeat_gap_ms", Int(status.maxHeartbeatGapMs)), ("result", got), ("expected", expect)]))
        fflush(nil)
    }

    func check(_ o: JobOutcome, _ what: String) throws {
        guard o.finished.state == .jobDone else {
            throw ClientError.jobEnded(state: o.finished.state, message: "\(what): \(o.finished.error)")
        }
    }
}
