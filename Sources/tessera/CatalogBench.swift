import ArgumentParser
import Dispatch
import Foundation
import TesseraClient
import TesseraCluster
import TesseraCompute
import TesseraProtocol

/// The anchor catalog (`../shared/bench/anchor_catalog.py --rows N --out DIR`) on a local
/// cluster: started on a folder inside DIR, ingested once from DIR/fits/*.fits (not timed).
struct AnchorCatalog: ParsableArguments {
    @Option(help: "The folder anchor_catalog.py wrote (its fits/ subfolder is ingested).")
    var data: String

    @Option(help: "Workers of the local cluster.")
    var workers = 2

    @Option(help: "Most rows per shard at ingest.")
    var maxRowsPerShard = 1_000_000

    @Flag(help: "Run the local cluster without CURVE keys (to measure what encryption costs).")
    var insecure = false

    @Option(help: "Each worker's cache of decoded column chunks, MiB (default: the worker's, a quarter of its memory limit; 0: none).")
    var columnCacheMb: Int?

    @Option(help: "Shared scans: the scheduler's --max-pass-riders (default its own, 31; 0: every scan reads its shard alone).")
    var maxPassRiders: Int?

    static let dataset = "object"

    /// The local cluster's folder inside `data`.
    var clusterDirectory: String { data + "/tessera-\(workers)w-\(maxRowsPerShard)" }

    /// Starts the cluster, ingesting the catalog if this cluster folder does not have it yet.
    func start() throws -> (LocalCluster, SchedulerConnection, rows: Int) {
        var o = LocalCluster.Options()
        o.workers = workers
        o.threadsPerWorker = 1
        o.insecure = insecure
        if let columnCacheMb { o.workerArguments = ["--column-cache-mb", "\(columnCacheMb)"] }
        if let maxPassRiders { o.schedulerArguments = ["--max-pass-riders", "\(maxPassRiders)"] }
        o.dataDirectory = clusterDirectory
        o.logFile = data + "/tessera-bench.log"
        let cluster = try LocalCluster(o)
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        if let ds = try conn.status().datasets.first(where: { $0.name == Self.dataset }) {
            return (cluster, conn, Int(ds.rows))
        }
        let fits = data + "/fits"
        let files = ((try? FileManager.default.contentsOfDirectory(atPath: fits)) ?? []).filter { $0.hasSuffix(".fits") }.sorted().map { fits + "/" + $0 }
        guard !files.isEmpty else {
            cluster.stop()
            throw ValidationError("no FITS files in \(fits): run `anchor_catalog.py --rows 20000000 --out \(data) --only-data` first")
        }
        FileHandle.standardError.write("ingesting \(files.count) files into \(o.dataDirectory!) (once; not timed) ...\n".data(using: .utf8)!)
        var opts = IngestOptions(dataset: Self.dataset, files: files)
        opts.replicas = min(2, workers)
        opts.maxRowsPerShard = maxRowsPerShard
        let done = try CatalogIngest.run(opts, connection: conn)
        return (cluster, conn, Int(done.rows))
    }
}

/// Peak resident memory of the cluster's workers, in MiB, from the scheduler's status.
func workerPeakRSS(_ conn: SchedulerConnection) throws -> [(String, Any)] {
    try conn.status().workers.map { ($0.name, Double($0.peakRssBytes) / 1_048_576) }
}

func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

/// User and system CPU time of a process so far, in the kernel's clock ticks, from /proc.
func processCPUTicks(_ pid: Int32) -> Int {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = stat.lastIndex(of: ")") else { return 0 }
    let fields = stat[stat.index(after: close)...].split(separator: " ")
    // Fields after the command: state is 0, utime 11, stime 12.
    return fields.count > 12 ? (Int(fields[11]) ?? 0) + (Int(fields[12]) ?? 0) : 0
}

/// `tessera bench catalog`: the anchor's four workloads, with the same expressions, bins and cone.
struct CatalogBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "catalog",
        abstract: "The anchor's catalog workloads (count_filter, groupby_cell, cmd_hist, cone) on the catalog anchor_catalog.py wrote.")

    @OptionGroup var anchor: AnchorCatalog

    @Option(help: "Timed runs of each workload, after one warm-up question; the median is reported, with the fastest and slowest.")
    var repeats = 5

    @Option(help: "Only these workloads, comma-separated (for profiling one; default: all, then the progressive and cancel runs).")
    var only: String?

    func run() throws {
        let (cluster, conn, rows) = try anchor.start()
        defer { cluster.stop() }
        let object = CatalogQuery(dataset: AnchorCatalog.dataset)
        _ = try conn.run(object)  // warm-up: workers up, shards mapped
        let q = Self.anchorQuestions(object)
        let workloads: [(String, CatalogQuery, (CatalogResult) -> [(String, Any)])] = [
            ("count_filter", q["count_filter"]!, { r in
                [("count", Int(r.table.numbers("count")?.first ?? -1))]
            }),
            ("groupby_cell", q["groupby_cell"]!, { r in
                let t = r.table
                let means = (t.numbers("mean(mag(r_psfFlux))") ?? []).filter { !$0.isNaN }
                return [("groups", t.rowCount), ("count_sum", Int((t.numbers("count(mag(r_psfFlux))") ?? []).reduce(0, +))),
                        ("mean_of_means", (means.reduce(0, +) / Double(means.count) * 1e6).rounded() / 1e6)]
            }),
            ("cmd_hist", q["cmd_hist"]!, { r in
                let h = r.histogram
                let arg = h.indices.max { h[$0] < h[$1] || (h[$0] == h[$1] && $0 > $1) } ?? 0
                return [("total", Int(h.reduce(0, +))), ("max_bin", Int(h[arg])), ("argmax", arg)]
            }),
            ("cone", object.region(.cone(ra: 60, dec: -35, radius: 0.5)), { r in
                [("count", Int(r.table.numbers("count")?.first ?? -1))]
            }),
            // The floor under every full scan: a task per shard, the merge and the answer, with
            // every row group ruled out by its zone map (no anchor counterpart).
            ("floor_no_rows", object.filter("coord_dec > 90"), { r in
                [("count", Int(r.table.numbers("count")?.first ?? -1))]
            }),
        ]
        let chosen = only.map { Set($0.split(separator: ",").map(String.init)) }
        if let unknown = chosen?.subtracting(workloads.map(\.0)).sorted(), !unknown.isEmpty {
            throw ValidationError("no workload \(unknown.joined(separator: ", ")); choose from \(workloads.map(\.0).joined(separator: ", "))")
        }
        for (name, q, fields) in workloads where chosen?.contains(name) ?? true {
            var times: [Double] = []
            var result: CatalogResult?
            // The workers' CPU over the timed runs: less noisy than the wall clock here, and it
            // shows what idle waits (not work) cost.
            let pids = cluster.workers.map(\.processIdentifier)
            let ticksBefore = pids.map(processCPUTicks).reduce(0, +)
            for _ in 0..<max(1, repeats) {
                let u = try conn.run(q, name: name)
                times.append(u.seconds)
                result = u.result
            }
            guard let result else { continue }
            let workerCPU = Double(pids.map(processCPUTicks).reduce(0, +) - ticksBefore) / Double(sysconf(Int32(_SC_CLK_TCK))) / Double(times.count)
            times.sort()
            let median = times[times.count / 2]
            print(jsonLine([("engine", "tessera"), ("workload", name), ("rows", rows), ("seconds", median),
                            ("mrows_per_s", Double(rows) / median / 1e6), ("seconds_min", times[0]), ("seconds_max", times[times.count - 1]),
                            ("result", fields(result)), ("worker_cpu_seconds_per_run", workerCPU),
                            ("shards_read", result.shards), ("rows_read", result.rowsScanned),
                            ("worker_peak_rss_mib", try workerPeakRSS(conn))]))
        }
        if chosen == nil { try progressiveAndCancel(conn, cluster: cluster, object: object, rows: rows) }
    }

    /// The anchor's three scans, with its expressions and bins (`anchor_catalog.py`).
    static func anchorQuestions(_ object: CatalogQuery) -> [String: CatalogQuery] {
        [
            "count_filter": object.filter("detect_isPrimary and refExtendedness == 0 and mag(r_psfFlux) < 24"),
            "groupby_cell": object.filter("refExtendedness == 1").groupBy("cell")
                .aggregate(.count("mag(r_psfFlux)"), .mean("mag(r_psfFlux)"), .std("mag(r_psfFlux)")),
            "cmd_hist": object.filter("refExtendedness == 0 and r_psfFlux > 0 and g_psfFlux > 0")
                .histogram2D(x: "mag(g_psfFlux) - mag(r_psfFlux)", bins: 60, range: -1...2, y: "mag(r_psfFlux)", bins: 80, range: 16...24),
        ]
    }

    /// A full-catalog aggregate with progressive answers: when the first partial arrives; then a
    /// job cancelled mid-way: how long until no worker runs any of its tasks.
    func progressiveAndCancel(_ conn: SchedulerConnection, cluster: LocalCluster, object: CatalogQuery, rows: Int) throws {
        // A heavier question (every row through a distance and medians), long enough to show progress.
        let heavy = object.filter("distance(coord_ra, coord_dec, 60, -35) < 90").groupBy("cell")
            .aggregate(.median("mag(g_psfFlux) - mag(r_psfFlux)"), .median("distance(coord_ra, coord_dec, 60, -35)"), .std("pow(r_psfFlux, 0.5)"))
        let q = heavy.progressive(every: 0.1)
        var first: Double?
        var firstShards = 0
        var partials = 0
        let u = try conn.run(q, name: "progressive") { p in
            partials += 1
            if first == nil { (first, firstShards) = (p.seconds, p.result.shards) }
        }
        print(jsonLine([("engine", "tessera"), ("workload", "progressive_groupby"), ("rows", rows), ("seconds", u.seconds),
                        ("first_partial_seconds", first ?? -1), ("first_partial_shards", firstShards), ("partials", partials),
                        ("final_shards", u.result.shards)]))

        // Cancel: the heavy job again, cancelled after 0.3 s. When did the workers stop? Their
        // CPU time (from /proc) stops growing: the time of the last growth after the cancel,
        // sampled every 5 ms at the kernel's 10 ms tick.
        let pids = cluster.workers.map(\.processIdentifier)
        func cpuTicks() -> [Int] { pids.map(processCPUTicks) }
        let accepted = try conn.submit(.plan(heavy.wirePlan), name: "to cancel")
        Thread.sleep(forTimeInterval: 0.3)
        let running = try conn.status().jobs.contains { $0.jobID == accepted.jobID && $0.state == .jobRunning }
        let t0 = now()
        try conn.cancel(job: accepted.jobID)
        var last = cpuTicks(), lastGrowth = t0
        while Double(now() - lastGrowth) / 1e9 < 0.5 && Double(now() - t0) / 1e9 < 10 {
            Thread.sleep(forTimeInterval: 0.005)
            let c = cpuTicks()
            if zip(c, last).contains(where: { $0 > $1 }) { lastGrowth = now() }
            last = c
        }
        print(jsonLine([("engine", "tessera"), ("workload", "cancel"), ("running_when_cancelled", running),
                        ("seconds_until_workers_idle", Double(lastGrowth - t0) / 1e9), ("resolution_seconds", 0.01)]))
    }
}

/// `tessera bench cone`: warm latency of small cone searches through the client.
struct ConeBench: ParsableCommand {
    /// A portal's cone search: rows back from a cone at a random place inside the anchor's footprint.
    static func randomCone(radiusArcmin: Double, using rng: inout some RandomNumberGenerator) -> CatalogQuery {
        let ra = Double.random(in: 51...69, using: &rng), dec = Double.random(in: -44...(-26), using: &rng)
        return CatalogQuery(dataset: AnchorCatalog.dataset).region(.cone(ra: ra, dec: dec, radius: radiusArcmin / 60))
            .select(["objectId", "coord_ra", "coord_dec", "r_psfFlux"])
    }

    static let configuration = CommandConfiguration(
        commandName: "cone",
        abstract: "Latency of random 1-arcminute cone searches (rows back) on the anchor catalog: p50 and p99.")

    @OptionGroup var anchor: AnchorCatalog

    @Option(help: "Cones to search.")
    var cones = 200

    @Option(help: "Cone radius in arcminutes.")
    var radiusArcmin = 1.0

    @Option(help: "Then rounds of this many cones at once, each on a connection of its own, as interactive questions (0: none).")
    var concurrent = 0

    @Option(help: "Rounds of concurrent cones (a JSON line with the rounds' p50/p95/p99 over all their cones, and each round's p95).")
    var rounds = 20

    func validate() throws {
        guard cones >= 0, concurrent >= 0, rounds >= 1 else { throw ValidationError("--cones and --concurrent must be at least 0, --rounds at least 1") }
        guard concurrent <= 1000 else { throw ValidationError("--concurrent is at most 1000 (a thread and a connection each)") }
    }

    func run() throws {
        let (cluster, conn, rows) = try anchor.start()
        defer { cluster.stop() }
        if cones > 0 { try sequential(rows: rows, conn) }
        if concurrent > 0 { try concurrentRounds(cluster.clientEndpoint, rows: rows, conn) }
    }

    /// `cones` cones one after the other (after 20 not counted).
    func sequential(rows: Int, _ conn: SchedulerConnection) throws {
        var rng = SystemRandomNumberGenerator()
        var times: [Double] = []
        var found = 0
        // Warm-up cones (not counted): shards mapped, connections up.
        for k in 0..<(cones + 20) {
            let u = try conn.run(Self.randomCone(radiusArcmin: radiusArcmin, using: &rng), name: "cone")
            if k >= 20 {
                times.append(u.seconds)
                found += u.result.table.rowCount
            }
        }
        times.sort()
        func pct(_ p: Double) -> Double { times[min(times.count - 1, Int((p * Double(times.count - 1)).rounded()))] }
        print(jsonLine([("engine", "tessera"), ("workload", "cone_\(radiusArcmin)arcmin"), ("rows", rows), ("cones", times.count),
                        ("p50_ms", pct(0.5) * 1e3), ("p90_ms", pct(0.9) * 1e3), ("p99_ms", pct(0.99) * 1e3), ("max_ms", (times.last ?? 0) * 1e3),
                        ("mean_rows_per_cone", Double(found) / Double(times.count)),
                        ("worker_peak_rss_mib", try workerPeakRSS(conn))]))
    }

    /// `rounds` rounds of `concurrent` cones asked at the same moment (a portal's burst).
    func concurrentRounds(_ endpoint: String, rows: Int, _ conn: SchedulerConnection) throws {
        var rng = SystemRandomNumberGenerator()
        var all = MixedBench.Timings(seconds: [], wall: 0)
        var roundP95: [Double] = []
        let askers = try ConcurrentAskers(endpoint, count: concurrent)
        defer { askers.close() }
        // A first round not counted.
        for round in 0...rounds {
            let questions = (0..<concurrent).map { _ in Self.randomCone(radiusArcmin: radiusArcmin, using: &rng).priority(.interactive) }
            let t = try askers.ask(questions)
            if round == 0 { continue }
            all.seconds += t.seconds
            all.wall += t.wall
            all.rowsBack += t.rowsBack
            roundP95.append(t.percentile(0.95) * 1e3)
        }
        print(jsonLine([("engine", "tessera"), ("workload", "cones_concurrent"), ("rows", rows), ("concurrent", concurrent), ("rounds", rounds)]
                       + all.fields + [("round_p95_ms", roundP95), ("worker_peak_rss_mib", try workerPeakRSS(conn))]))
    }
}
