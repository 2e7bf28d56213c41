import ArgumentParser
import Dispatch
import Foundation
import Synchronization
import TesseraClient
import TesseraCluster
import TesseraCompute
import TesseraProtocol
import TesseraSecurity

/// `tessera bench mixed`: many users at once on the anchor catalog. Small cone searches
/// (interactive) on an idle cluster and while full scans (batch) run; the full scans together
/// against one alone; two users' batch jobs side by side (fair share). One JSON line per figure.
struct MixedBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mixed",
        abstract: "Interactive cones beside full scans, concurrent full scans, and fair share between two users, on the anchor catalog.")

    @OptionGroup var anchor: AnchorCatalog

    @Option(help: "Concurrent cone searches per round.")
    var cones = 50

    @Option(help: "Cone radius in arcminutes (rows back, as a portal's cone search).")
    var radiusArcmin = 1.0

    @Option(help: "Concurrent full-catalog aggregates (each a different question).")
    var scans = 20

    @Option(help: "Rounds of each cones-under-scans figure, a JSON line each, and of idle cones, pooled into one line (timings here are noisy).")
    var rounds = 1

    @Option(help: "Rounds of the warm full-scans figure (a JSON line each; more make a profile of the shared passes).")
    var scanRounds = 1

    @Option(help: "Batch jobs each of the two users submits for the fair-share figure (0 skips it).")
    var fairJobs = 50

    @Option(help: "Rounds of the full scans from cold (one alone, then all at once, each on a cluster started anew after the shard files are dropped from the page cache; 0 skips them).")
    var coldRounds = 1

    func run() throws {
        let (cluster, conn, rows) = try anchor.start()
        defer { cluster.stop() }
        let endpoint = cluster.clientEndpoint
        let object = CatalogQuery(dataset: AnchorCatalog.dataset)
        // Warm-up, not timed: every column the questions read is read once (shards mapped, pages
        // in the page cache, chunks in the workers' column caches), the cones' spatial index
        // too, so the rounds compare the cluster's scheduling, not the disk.
        _ = try conn.run(object.filter("objectId > 0 and coord_ra > -1 and coord_dec > -91 and r_psfFlux > -1e30 and g_psfFlux > -1e30"
                                       + " and refExtendedness >= 0 and (detect_isPrimary or not detect_isPrimary) and _healpix_29 >= 0"))

        let scanQuestions = (0..<scans).map { Self.fullScan($0) }

        for q in scanQuestions { _ = try conn.run(q) }

        // 1. Cones on an idle cluster, from a portal's connections, kept for every round: three
        //    warm-up rounds (a cone sent past its shard's home finds the other worker's cache
        //    cold), then `rounds` measured ones, pooled (one round of fifty swung 2-4x from run
        //    to run).
        let coneAskers = try ConcurrentAskers(endpoint, count: cones)
        defer { coneAskers.close() }
        for _ in 0..<3 { _ = try coneRound(coneAskers, priority: .interactive) }
        var idle = Timings(seconds: [], wall: 0)
        var idleRounds: [Double] = []
        for _ in 0..<max(1, rounds) {
            let r = try coneRound(coneAskers, priority: .interactive)
            idle.seconds += r.seconds
            idle.wall += r.wall
            idle.rowsBack += r.rowsBack
            idleRounds.append(r.percentile(0.95) * 1e3)
        }
        print(jsonLine([("engine", "tessera"), ("workload", "cones_idle"), ("rows", rows), ("rounds", idleRounds.count)] + idle.fields
                       + [("round_p95_ms", idleRounds)]))

        // 2. One full scan alone, then all of them at once.
        var alone: [Double] = []
        for i in 0..<3 { alone.append(try conn.run(scanQuestions[i % scanQuestions.count].priority(.batch)).seconds) }
        alone.sort()
        let one = alone[alone.count / 2]
        for round in 1...max(1, scanRounds) {
            let passesBefore = try sharedPasses(conn)
            let together = try runConcurrently(endpoint, scanQuestions.map { $0.priority(.batch) })
            // The workers' counts arrive with their heartbeats.
            Thread.sleep(forTimeInterval: 1.2)
            let passesAfter = try sharedPasses(conn)
            print(jsonLine([("engine", "tessera"), ("workload", "full_scans"), ("round", round), ("rows", rows), ("scans", scans),
                            ("one_scan_s", one), ("all_scans_s", together.wall), ("ratio_to_one", together.wall / one),
                            ("scan_s_p50", together.percentile(0.5)), ("scan_s_max", together.percentile(1)),
                            ("shard_passes", passesAfter.passes - passesBefore.passes),
                            ("scan_tasks_in_passes", passesAfter.tasks - passesBefore.tasks), ("most_in_one_pass", passesAfter.most),
                            ("max_pass_riders", anchor.maxPassRiders ?? 31),
                            ("worker_peak_rss_mib", try workerPeakRSS(conn))]))
        }

        // 3. Cones while the scans run: as interactive questions, then as normal ones beside
        //    normal scans (what first come, first served gives).
        for (name, cone, scan) in [("cones_under_scans", PriorityClass.interactive, PriorityClass.batch),
                                   ("cones_under_scans_no_priority", .normal, .normal)] {
          for round in 1...max(1, rounds) {
            let load = DispatchGroup()
            let loadResult = Mutex<Timings?>(nil)
            DispatchQueue.global().async(group: load) {
                let r = try? runConcurrently(endpoint, scanQuestions.map { $0.priority(scan) })
                loadResult.withLock { $0 = r }
            }
            // Let the scans start and fill the workers' queues.
            Thread.sleep(forTimeInterval: 0.05)
            let busy = try conn.status().jobs.filter { $0.state == .jobRunning }.count
            let under = try coneRound(coneAskers, priority: cone)
            load.wait()
            let scansTook = loadResult.withLock { $0 }?.wall ?? .nan
            print(jsonLine([("engine", "tessera"), ("workload", name), ("round", round), ("rows", rows), ("cone_class", cone.description),
                            ("scan_class", scan.description), ("scans_running_at_start", busy)] + under.fields
                           + [("p95_vs_idle", under.percentile(0.95) / idle.percentile(0.95)), ("scans_s", scansTook)]))
          }
        }

        // 4. Fair share: two users, the same batch work each, submitted one after the other.
        if fairJobs > 0 { try fairShare(cluster, endpoint: endpoint, rows: rows) }

        // 5. The full scans again, from cold: this cluster stops first (its mappings and column
        //    caches go with it).
        if coldRounds > 0 {
            cluster.stop()
            try coldScans(scanQuestions, rows: rows)
        }
    }

    /// The full scans as a catalog far larger than memory is scanned: from the disk. Before each
    /// measurement the shard files are dropped from the page cache and a cluster is started anew
    /// on the same folder, so no worker has a chunk mapped, decoded or cached. One scan alone
    /// (the first three questions, each from cold; the median), then all of them at once.
    func coldScans(_ questions: [CatalogQuery], rows: Int) throws {
        for round in 1...coldRounds {
            var alone: [Double] = []
            var resident: [Double] = []
            for q in questions.prefix(3) {
                let (seconds, r) = try fromCold { conn, _ in try conn.run(q.priority(.batch)).seconds }
                alone.append(seconds)
                resident.append(r)
            }
            let one = alone.sorted()[alone.count / 2]
            let ((together, passes, rss), r) = try fromCold { conn, endpoint in
                let t = try runConcurrently(endpoint, questions.map { $0.priority(.batch) })
                // The workers' counts arrive with their heartbeats.
                Thread.sleep(forTimeInterval: 1.2)
                return (t, try sharedPasses(conn), try workerPeakRSS(conn))
            }
            resident.append(r)
            print(jsonLine([("engine", "tessera"), ("workload", "full_scans_cold"), ("round", round), ("rows", rows), ("scans", questions.count),
                            ("one_scan_s", one), ("one_scan_s_each", alone), ("all_scans_s", together.wall), ("ratio_to_one", together.wall / one),
                            ("scan_s_p50", together.percentile(0.5)), ("scan_s_max", together.percentile(1)),
                            ("shard_passes", passes.passes), ("scan_tasks_in_passes", passes.tasks), ("most_in_one_pass", passes.most),
                            ("max_pass_riders", anchor.maxPassRiders ?? 31),
                            ("shard_bytes_resident_at_start", resident.max() ?? 0), ("worker_peak_rss_mib", rss)]))
        }
    }

    /// Runs `body` on a cluster started anew after the shard files left the page cache; what it
    /// returned, and the fraction of the shard files' bytes still resident when it began.
    func fromCold<T>(_ body: (SchedulerConnection, String) throws -> T) throws -> (T, residentAtStart: Double) {
        let folder = anchor.clusterDirectory
        PageCache.evict(under: folder, suffix: ".shard")
        let (cluster, conn, _) = try anchor.start()
        defer { cluster.stop() }
        let resident = PageCache.residentFraction(under: folder, suffix: ".shard")
        return (try body(conn, cluster.clientEndpoint), resident)
    }

    /// The workers' shared-pass counts, summed.
    func sharedPasses(_ conn: SchedulerConnection) throws -> (passes: UInt64, tasks: UInt64, most: UInt32) {
        let ws = try conn.status().workers
        return (ws.reduce(0) { $0 + $1.scans.passes }, ws.reduce(0) { $0 + $1.scans.passTasks }, ws.map(\.scans.mostInOnePass).max() ?? 0)
    }

    /// A different full-catalog aggregate for each `i`.
    static func fullScan(_ i: Int) -> CatalogQuery {
        let object = CatalogQuery(dataset: AnchorCatalog.dataset)
        let cut = 20 + Double(i % 10) * 0.5
        switch i % 3 {
        case 0: return object.filter("refExtendedness == 0 and mag(r_psfFlux) < \(cut)")
        case 1: return object.filter("mag(g_psfFlux) < \(cut)").aggregate(.mean("mag(g_psfFlux) - mag(r_psfFlux)"))
        default: return object.filter("refExtendedness == 1").histogram("mag(r_psfFlux)", bins: 40 + i, range: 16...(24 + Double(i) * 0.1))
        }
    }

    /// Latencies of one question per connection, all asked at the same moment.
    struct Timings {
        var seconds: [Double]
        var wall: Double
        var rowsBack = 0

        func percentile(_ p: Double) -> Double {
            let s = seconds.sorted()
            return s.isEmpty ? .nan : s[min(s.count - 1, Int((p * Double(s.count - 1)).rounded()))]
        }

        var fields: [(String, Any)] {
            [("questions", seconds.count), ("p50_ms", percentile(0.5) * 1e3), ("p95_ms", percentile(0.95) * 1e3),
             ("p99_ms", percentile(0.99) * 1e3), ("max_ms", percentile(1) * 1e3), ("wall_s", wall), ("rows_back", rowsBack)]
        }
    }

    func coneRound(_ askers: ConcurrentAskers, priority: PriorityClass) throws -> Timings {
        var rng = SystemRandomNumberGenerator()
        let questions = (0..<cones).map { _ in ConeBench.randomCone(radiusArcmin: radiusArcmin, using: &rng).priority(priority) }
        return try askers.ask(questions)
    }

    func fairShare(_ cluster: LocalCluster, endpoint: String, rows: Int) throws {
        // Two users with keys of their own (made once in the cluster's key folder).
        var credentials: [Credentials] = []
        for name in ["alice", "bob"] {
            guard let keys = cluster.keys else {
                credentials.append(.insecure)
                continue
            }
            let path = keys.userKeyPath(name)
            let key = FileManager.default.fileExists(atPath: path) ? try KeyFile.read(path) : try keys.add(.user, name: name)
            credentials.append(.curve(key))
        }
        let users = ["alice", "bob"]
        let watcher = try SchedulerConnection(endpoint: endpoint)
        // A full-catalog group-by (the anchor's groupby_cell): work enough that the figure spans
        // seconds. A count answered from its mask took 10 ms a job, and the users' hundred
        // jobs were done before the second user had finished submitting hers.
        let question = CatalogBench.anchorQuestions(CatalogQuery(dataset: AnchorCatalog.dataset))["groupby_cell"]!.wirePlan
        let done = Mutex<[Int]>([0, 0])
        // A user's connection, submission or job that fails ends the figure with its error
        // (instead of waiting forever for jobs that will never finish).
        let failure = Mutex<String?>(nil)
        let group = DispatchGroup()
        let start = now()
        for (u, c) in credentials.enumerated() {
            let jobs = fairJobs
            // Alice submits all her jobs first; bob's follow at once.
            if u == 1 { Thread.sleep(forTimeInterval: 0.02) }
            DispatchQueue.global().async(group: group) {
                do {
                    let conn = try SchedulerConnection(endpoint: endpoint, credentials: c)
                    if c == .insecure { conn.onBehalfOf = users[u] }
                    conn.priority = .batch
                    var open = Set(try (0..<jobs).map { _ in try conn.submit(.plan(question), name: "fair \(users[u])").jobID })
                    while !open.isEmpty && failure.withLock({ $0 }) == nil {
                        for id in open.sorted() {
                            guard case .finished(let f)? = try conn.nextEvent(job: id, timeout: 0.005) else { continue }
                            guard f.state == .jobDone else { throw ClientError.jobEnded(state: f.state, message: f.error) }
                            open.remove(id)
                            done.withLock { $0[u] += 1 }
                        }
                    }
                } catch {
                    failure.withLock { $0 = $0 ?? "\(users[u]): \(error)" }
                }
            }
        }
        // The scheduler's view of each user's worker time, sampled until one user is done: what
        // each used between the first sample with both running and the last before one finished.
        var first: Tessera_V1_StatusReply?
        var last: Tessera_V1_StatusReply?
        var firstDoneAt = Double.nan
        while done.withLock({ $0 }).allSatisfy({ $0 < fairJobs }) && failure.withLock({ $0 }) == nil {
            let s = try watcher.status()
            if first == nil && users.allSatisfy({ u in s.users.contains { $0.user == u && $0.runningTasks > 0 } }) { first = s }
            last = s
            Thread.sleep(forTimeInterval: 0.05)
        }
        firstDoneAt = Double(now() - start) / 1e9
        let jobsDone = done.withLock { $0 }
        group.wait()
        if let why = failure.withLock({ $0 }) { throw ValidationError("the fair-share figure failed: \(why)") }
        let wall = Double(now() - start) / 1e9
        // Worker seconds each used while both were active (decay over these seconds is negligible
        // beside the half-life of minutes).
        let used = users.map { u in
            (last?.users.first { $0.user == u }?.usageSeconds ?? 0) - (first?.users.first { $0.user == u }?.usageSeconds ?? 0)
        }
        let total = used.reduce(0, +)
        print(jsonLine([("engine", "tessera"), ("workload", "fair_share"), ("rows", rows), ("users", 2), ("jobs_per_user", fairJobs),
                        ("share_alice", used[0] / total), ("share_bob", used[1] / total),
                        ("worker_s_alice", used[0]), ("worker_s_bob", used[1]),
                        ("jobs_done_when_first_finished", jobsDone), ("first_user_done_s", firstDoneAt), ("all_done_s", wall),
                        ("worker_peak_rss_mib", try workerPeakRSS(watcher))]))
    }
}

/// Runs every question at once, each on a connection and thread of its own (connected before
/// the start, so the times are the questions', not CURVE handshakes').
func runConcurrently(_ endpoint: String, _ questions: [CatalogQuery]) throws -> MixedBench.Timings {
    let askers = try ConcurrentAskers(endpoint, count: questions.count)
    defer { askers.close() }
    return try askers.ask(questions)
}

/// Connections that ask their questions at the same moment, each on a thread of its own, kept
/// from round to round as a portal keeps its connections: a round's times are the questions',
/// and no connection is set up or torn down while one runs.
final class ConcurrentAskers: @unchecked Sendable {
    private struct Round {
        var questions: [CatalogQuery] = []
        var results: [Result<(Double, Int), any Error>?] = []
        var closing = false
    }
    private let round = Mutex(Round())
    private let starts: [DispatchSemaphore]
    private let finished = DispatchGroup()
    private let exited = DispatchGroup()
    let count: Int

    /// `count` connections to `endpoint`, each with its thread, all connected (a ping answered)
    /// before this returns.
    init(_ endpoint: String, count: Int) throws {
        self.count = count
        starts = (0..<count).map { _ in DispatchSemaphore(value: 0) }
        let ready = DispatchGroup()
        let failure = Mutex<(any Error)?>(nil)
        for i in 0..<count {
            ready.enter()
            exited.enter()
            Thread { [self] in
                defer { exited.leave() }
                let conn: SchedulerConnection
                do {
                    conn = try SchedulerConnection(endpoint: endpoint)
                } catch {
                    failure.withLock { $0 = error }
                    ready.leave()
                    return
                }
                ready.leave()
                while true {
                    starts[i].wait()
                    guard let q = round.withLock({ $0.closing ? nil : $0.questions[i] }) else { return }
                    let r = Result { () throws -> (Double, Int) in
                        let u = try conn.run(q, name: "mixed")
                        return (u.seconds, u.result.table.rowCount)
                    }
                    round.withLock { $0.results[i] = r }
                    finished.leave()
                }
            }.start()
        }
        ready.wait()
        if let e = failure.withLock({ $0 }) {
            close()
            throw e
        }
    }

    /// Asks `questions` (at most `count`) at once; their times, and the wall time until the last answered.
    func ask(_ questions: [CatalogQuery]) throws -> MixedBench.Timings {
        precondition(questions.count <= count, "more questions than connections")
        // After `close()` no thread is left to answer: waiting would be forever.
        guard round.withLock({ r in
            if r.closing { return false }
            r.questions = questions
            r.results = Array(repeating: nil, count: questions.count)
            return true
        }) else { throw ValidationError("these connections are closed") }
        for _ in questions { finished.enter() }
        let start = now()
        for i in questions.indices { starts[i].signal() }
        finished.wait()
        let wall = Double(now() - start) / 1e9
        var out = MixedBench.Timings(seconds: [], wall: wall)
        for r in round.withLock({ $0.results }) {
            guard let r else { continue }
            let (s, rows) = try r.get()
            out.seconds.append(s)
            out.rowsBack += rows
        }
        return out
    }

    /// Ends the threads and their connections.
    func close() {
        round.withLock { $0.closing = true }
        for s in starts { s.signal() }
        exited.wait()
    }
}
