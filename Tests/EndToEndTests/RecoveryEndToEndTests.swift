import Foundation
import Synchronization
import Testing
import TesseraClient
import TesseraCluster
import TesseraCompute
import TesseraProtocol
import TesseraSecurity
import TesseraSurvey
import TesseraTestKit
import ZeroMQ

#if canImport(Glibc)
import Glibc
#endif

/// The cluster's own failures, on real processes: a scheduler SIGKILLed mid-job and started
/// again on its registry, daemons restarted by supervision, a client that vanishes.
@Suite(.serialized)
struct RecoveryEndToEndTests {
    static let rows = 6_000

    /// A supervised cluster with a small catalog ingested as `object`.
    static func catalogCluster(workers: Int = 2, clientTimeoutSeconds: Double? = nil) throws -> (LocalCluster, SchedulerConnection) {
        let cluster = try TestCluster.start(workers: workers, threads: 2, dataDirectory: temporaryFolder("recovery-data"), supervise: true,
                                            clientTimeoutSeconds: clientTimeoutSeconds)
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        let files = try SyntheticCatalog(seed: 5).writeFITS(rows: rows, rowsPerFile: rows, to: temporaryFolder("recovery-input"))
        var o = IngestOptions(dataset: "object", files: files)
        o.maxRowsPerShard = 1_000
        o.replicas = min(2, workers)
        _ = try CatalogIngest.run(o, connection: conn)
        return (cluster, conn)
    }

    static func countAll(_ conn: SchedulerConnection) throws -> Int {
        Int(try conn.run(CatalogQuery(dataset: "object").filter("coord_ra >= 0").count()).result.rowsMatched)
    }

    /// Waits until a new connection sees the scheduler of `epoch` with `workers` registered.
    static func waitForScheduler(_ cluster: LocalCluster, epoch: UInt64, workers: Int, timeout: Double = 30) throws -> Tessera_V1_StatusReply {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let conn = try? SchedulerConnection(endpoint: cluster.clientEndpoint, timeout: 1),
               let s = try? conn.status(timeout: 1), s.epoch == epoch, s.workers.count == workers {
                return s
            }
            usleep(100_000)
        }
        throw ClientError.timedOut("no scheduler of epoch \(epoch) with \(workers) workers within \(timeout) s")
    }

    /// The regression of issue 10: a scheduler SIGKILLed mid-job and started again on the same
    /// registry left the workers at their in-flight limit with nothing running, and the next
    /// question never answered (job ids restarted at 1, and a worker kept its old epoch's
    /// running tasks and cancellations, which then matched the new jobs' ids).
    @Test func aSchedulerKilledMidJobAndStartedAgainOnItsRegistryServesAgain() throws {
        let (cluster, conn) = try Self.catalogCluster()
        defer { cluster.stop() }
        let before = try conn.status()
        #expect(before.epoch == 1)
        #expect(try Self.countAll(conn) == Self.rows)

        // A long job whose caller uses `run` (it is resubmitted, and answers once) and one whose
        // caller waits by hand (it hears that the job was lost).
        let leaves = 20_000
        let answer = Mutex<(sum: Int64?, state: Tessera_V1_JobState?, error: String?)>((nil, nil, nil))
        let lost = Mutex<(message: String?, seconds: Double?)>((nil, nil))
        let killedAt = Mutex<Date?>(nil)
        let endpoint = cluster.clientEndpoint
        let runner = Thread {
            do {
                let c = try SchedulerConnection(endpoint: endpoint)
                let out = try c.run(.plan(TestCluster.treeReduce(leaves, sleepMicros: 500)), idleTimeout: 60)
                guard case .int64(let s)? = out.values.values.first else { throw ClientError.timedOut("no value") }
                answer.withLock { $0 = (s, out.finished.state, nil) }
            } catch {
                answer.withLock { $0.error = "\(error)" }
            }
        }
        let waiter = Thread {
            do {
                let c = try SchedulerConnection(endpoint: endpoint)
                let job = try c.submit(.plan(TestCluster.treeReduce(leaves, sleepMicros: 500)), name: "waits by hand").jobID
                while true { _ = try c.nextEvent(job: job, timeout: 60) }
            } catch {
                let since = killedAt.withLock { $0 }.map { Date().timeIntervalSince($0) }
                lost.withLock { $0 = ("\(error)", since) }
            }
        }
        runner.start()
        waiter.start()
        // Mid-job: both running, some tasks done.
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            let s = try conn.status()
            let running = s.jobs.filter { $0.state == .jobRunning && $0.taskCount > 20_000 }
            if running.count == 2 && running.reduce(0, { $0 + $1.tasksDone }) > 1_000 { break }
            usleep(20_000)
        }
        let oldJobs = try conn.status().jobs.map(\.jobID)
        #expect(try conn.status().jobs.filter { $0.state == .jobRunning }.count == 2, "the scheduler is killed mid-job")
        killedAt.withLock { $0 = Date() }
        cluster.killScheduler()

        // Supervision starts it again on the same ports and registry; the workers register again.
        let after = try Self.waitForScheduler(cluster, epoch: 2, workers: 2)
        #expect(cluster.restarts["scheduler"] == 1)
        let log = try String(contentsOfFile: cluster.options.logFile!, encoding: .utf8)
        #expect(log.contains("scheduler (pid") && log.contains("killed by signal 9 (SIGKILL"), "the log says why it died")
        _ = after

        // The caller waiting by hand hears, within a few heartbeats, that its job was lost.
        let lostDeadline = Date().addingTimeInterval(30)
        while lost.withLock({ $0.message }) == nil && Date() < lostDeadline { usleep(50_000) }
        let (message, seconds) = lost.withLock { $0 }
        #expect(message?.contains("the scheduler restarted") == true && message?.contains("was lost") == true, "\(message ?? "no error")")
        #expect((seconds ?? 99) < 15, "heard of the loss after \(seconds ?? -1) s")

        // The `run` caller gets one, correct answer.
        runner.cancel()
        let runDeadline = Date().addingTimeInterval(90)
        while answer.withLock({ $0.state == nil && $0.error == nil }) && Date() < runDeadline { usleep(50_000) }
        let a = answer.withLock { $0 }
        #expect(a.error == nil, "\(a.error ?? "")")
        #expect(a.state == .jobDone)
        #expect(a.sum == Int64(leaves * (leaves + 1) / 2))

        // The next question answers, and right.
        let fresh = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        #expect(try Self.countAll(fresh) == Self.rows)
        // Nothing of the old start is left running anywhere, and job ids went on, not back to 1.
        let s = try fresh.status()
        #expect(s.jobs.allSatisfy { $0.state != .jobRunning }, "\(s.jobs.map { ($0.jobID, $0.state) })")
        #expect(s.workers.allSatisfy { $0.inFlight == 0 }, "\(s.workers.map(\.inFlight))")
        #expect(s.jobs.map(\.jobID).min()! > oldJobs.max()!, "job ids reused: old \(oldJobs), new \(s.jobs.map(\.jobID))")
    }

    @Test func aKilledWorkerIsStartedAgainAndStatusCountsIt() throws {
        let (cluster, conn) = try Self.catalogCluster()
        defer { cluster.stop() }
        let pid = cluster.workers[1].processIdentifier
        cluster.killWorker(1)
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            if cluster.workers[1].processIdentifier != pid, let s = try? conn.status(), s.workers.count == 2,
               s.workers.first(where: { $0.name == "local-1" })?.restarts == 1 { break }
            usleep(100_000)
        }
        #expect(cluster.restarts["local-1"] == 1)
        let s = try conn.status()
        #expect(s.workers.first { $0.name == "local-1" }?.restarts == 1)
        #expect(s.workers.first { $0.name == "local-0" }?.restarts == 0)
        #expect(try Self.countAll(conn) == Self.rows)
        let log = try String(contentsOfFile: cluster.options.logFile!, encoding: .utf8)
        #expect(log.contains("local-1 (pid \(pid)) died"))
        #expect(log.contains("local-1 started again"))
    }

    @Test func aClientThatVanishesHasItsJobsCancelled() throws {
        let cluster = try TestCluster.start(workers: 2, threads: 1, clientTimeoutSeconds: 2)
        defer { cluster.stop() }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        // A hand-made client submits a long job and then says nothing more (as a killed one would).
        let context = try ZMQContext()
        let raw = try rawDealer(context, cluster.clientEndpoint, cluster.credentials)
        var submit = Envelope()
        submit.submitJob.plan = TestCluster.independent(100_000, sleepMicros: 1_000)
        submit.submitJob.name = "abandoned"
        _ = try raw.send(parts: WireProtocol.encode(submit))
        // Meanwhile a client that waits (and so heartbeats) for longer than the timeout is served.
        let kept = try conn.run(.plan(TestCluster.treeReduce(3_000, sleepMicros: 2_000)))
        #expect(kept.finished.state == .jobDone)
        #expect(kept.seconds > 2, "the kept job must outlast the client timeout to show anything (took \(kept.seconds) s)")
        let deadline = Date().addingTimeInterval(10)
        var s = try conn.status()
        while Date() < deadline && s.jobs.contains(where: { $0.name == "abandoned" && $0.state == .jobRunning }) {
            usleep(100_000)
            s = try conn.status()
        }
        let abandoned = try #require(s.jobs.first { $0.name == "abandoned" })
        #expect(abandoned.state == .jobCancelled)
        #expect(abandoned.tasksDone < 100_000)
        #expect(s.jobsAbandoned == 1)
        usleep(300_000)
        #expect(try conn.status().workers.allSatisfy { $0.inFlight == 0 })
        raw.close()
    }

    /// A client over its backlog bound (it asks and never reads) has its further requests
    /// dropped unread, but it is still heard: its job runs on past the client timeout (a silent
    /// client's is cancelled, above), and once it reads it learns the job's end.
    @Test func aClientOverItsBacklogIsStillHeard() throws {
        let cluster = try TestCluster.start(workers: 1, threads: 1, clientTimeoutSeconds: 2)
        defer { cluster.stop() }
        let context = try ZMQContext()
        let raw = try rawDealer(context, cluster.clientEndpoint, cluster.credentials, receiveTimeoutMs: 2_000)
        defer { raw.close() }
        var submit = Envelope()
        submit.submitJob.plan = TestCluster.independent(6, sleepMicros: 1_000_000)
        submit.submitJob.name = "asks and never reads"
        _ = try raw.send(parts: WireProtocol.encode(submit))
        var e = Envelope()
        var request = Tessera_V1_StatusRequest()
        request.withCoverage = true
        e.statusRequest = request
        let asking = try WireProtocol.encode(e)
        // Far past the backlog at once (libzmq's queues and the sockets' buffers take some
        // 20,000 of these replies first), then a request every 50 ms, reading nothing, for
        // four client timeouts; the job's six 1 s tasks run meanwhile on the worker's one thread.
        var sent = 60_000
        for _ in 0..<sent { _ = try raw.send(parts: asking) }
        let until = Date().addingTimeInterval(8)
        while Date() < until {
            _ = try raw.send(parts: asking)
            sent += 1
            usleep(50_000)
        }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        let job = try conn.status().jobs.first { $0.name == "asks and never reads" }
        #expect(job?.state == .jobDone, "\(String(describing: job))")
        var replies = 0
        var finished: Tessera_V1_JobFinished?
        while let parts = try HostileInputEndToEndTests.nextMessage(raw) {
            replies += 1
            if case .jobFinished(let f) = try WireProtocol.decode(parts).0.body { finished = f }
        }
        #expect(replies < sent / 2, "\(replies) replies to \(sent) requests: the backlog bound was never reached")
        #expect(finished?.state == .jobDone, "\(String(describing: finished))")
    }
}

/// The worker's memory limit, on real processes: kept values past it spill to disk and come
/// back when read; a value larger than it fails its task with the limit named.
@Suite(.serialized)
struct MemoryLimitEndToEndTests {
    /// 200 columns of 50,000 doubles (80 MB) all read by one final sum: with 8 MiB per worker,
    /// most of them wait on disk.
    @Test func keptValuesPastTheLimitSpillAndTheAnswerIsExact() throws {
        let cluster = try TestCluster.start(workers: 2, threads: 2, memoryLimitMb: 8)
        defer { cluster.stop() }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        var g = TaskGraph(operators: ["arange", "sum"])
        let leaves = (0..<200).map { _ in g.add(operatorIndex: 0, arg: 50_000) }
        g.add(operatorIndex: 1, inputs: leaves)
        let maxSpilled = Mutex<UInt64>(0)
        let done = Atomic<Bool>(false)
        let endpoint = cluster.clientEndpoint
        let watcher = Thread {
            guard let c = try? SchedulerConnection(endpoint: endpoint) else { return }
            while !done.load(ordering: .relaxed) {
                if let s = try? c.status(timeout: 1) {
                    let spilled = s.workers.reduce(0) { $0 + $1.spilledBytes }
                    maxSpilled.withLock { $0 = max($0, spilled) }
                }
                usleep(10_000)
            }
        }
        watcher.start()
        let out = try conn.run(.graph(g))
        done.store(true, ordering: .relaxed)
        #expect(out.finished.state == .jobDone, "\(out.finished.error)")
        // Σ over 200 leaves of 0 + 1 + … + 49,999, exact in doubles.
        #expect(out.values[200] == .float64(200 * 50_000 * 49_999 / 2))
        usleep(200_000)
        #expect(maxSpilled.withLock { $0 } > 8 << 20, "values spilled past the 8 MiB limits (most seen at once: \(maxSpilled.withLock { $0 }) bytes)")
        let after = try conn.status()
        #expect(after.workers.allSatisfy { $0.storedResults == 0 && $0.spilledBytes == 0 }, "everything released afterwards")
    }

    @Test func aValueLargerThanTheLimitFailsItsTaskAndTheWorkerLives() throws {
        let cluster = try TestCluster.start(workers: 1, threads: 1, memoryLimitMb: 1)
        defer { cluster.stop() }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        var g = TaskGraph(operators: ["arange", "sum"])
        let big = g.add(operatorIndex: 0, arg: 1_000_000)
        g.add(operatorIndex: 1, inputs: [big])
        let out = try conn.run(.graph(g))
        #expect(out.finished.state == .jobFailed)
        #expect(out.finished.error.contains("7 MiB, larger than this worker's memory limit of 1 MiB"), "\(out.finished.error)")
        let status = try conn.status()
        #expect(status.workers.count == 1 && status.workers[0].restarts == 0, "the worker is still the one that started")
        #expect(try conn.run(.plan(TestCluster.treeReduce(100))).finished.state == .jobDone)
    }
}

/// A client that stops reading: its job's results wait at the workers' pace, not in the
/// scheduler's memory, and everyone else is served meanwhile.
@Suite(.serialized)
struct SlowClientEndToEndTests {
    @Test func aClientThatDoesNotReadSlowsOnlyItsOwnJob() throws {
        let cluster = try TestCluster.start(workers: 2, threads: 2)
        defer { cluster.stop() }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        let pid = cluster.scheduler.processIdentifier
        let rssBefore = HostileInputEndToEndTests.residentKilobytes(pid)
        // 8,000 outputs of 0…7,999 doubles: 256 MB of results for a client that reads nothing
        // after its job is accepted (it still heartbeats, so the job is not abandoned).
        let n = 8_000
        let context = try ZMQContext()
        let slow = try rawDealer(context, cluster.clientEndpoint, cluster.credentials, receiveTimeoutMs: 10_000)
        try slow.setReceiveHighWaterMark(1)
        var submit = Envelope()
        submit.submitJob.plan = Workloads.independent(tasks: UInt64(n), op: "arange")
        submit.submitJob.name = "unread"
        _ = try slow.send(parts: WireProtocol.encode(submit))
        let (accepted, _) = try WireProtocol.decode(try #require(try slow.receiveParts()))
        let job = accepted.jobAccepted.jobID
        func heartbeat() throws {
            var h = Envelope()
            h.clientHeartbeat.jobIds = [job]
            h.epoch = accepted.epoch
            _ = try slow.send(parts: WireProtocol.encode(h), dontWait: true)
        }
        var peakKB = rssBefore
        var heldAt = 0
        for _ in 0..<40 {
            try heartbeat()
            usleep(100_000)
            peakKB = max(peakKB, HostileInputEndToEndTests.residentKilobytes(pid))
        }
        let status = try conn.status()
        heldAt = Int(status.jobs.first { $0.jobID == job }?.tasksDone ?? 0)
        #expect(heldAt < n, "the unread job was held back (done \(heldAt) of \(n))")
        // Everyone else is served meanwhile.
        let other = try conn.run(.plan(TestCluster.treeReduce(2_000)))
        #expect(other.finished.state == .jobDone)
        peakKB = max(peakKB, HostileInputEndToEndTests.residentKilobytes(pid))
        #expect(peakKB - rssBefore < 128 << 10, "scheduler grew by \((peakKB - rssBefore) >> 10) MiB for a client holding 256 MB unread")

        // Now it reads: every output arrives, right.
        var outputs: [UInt32: Int] = [:]
        var finished: Tessera_V1_JobFinished?
        while finished == nil {
            try heartbeat()
            let (env, frames) = try WireProtocol.decode(try #require(try slow.receiveParts()))
            switch env.body {
            case .jobResults(let r):
                for info in r.values {
                    guard case .float64Column(let c) = try Value(info: info, frames: frames) else { Issue.record("not a column"); continue }
                    outputs[TaskKey.task(info.key)] = c.count
                    if c.count > 0 && c.last != Double(c.count - 1) { Issue.record("output \(TaskKey.task(info.key)) wrong") }
                }
            case .jobFinished(let f): finished = f
            default: break
            }
        }
        #expect(finished?.state == .jobDone)
        #expect(outputs.count == n)
        #expect(outputs.allSatisfy { $0.value == Int($0.key) })
        slow.close()
        print("slow client: held at \(heldAt) of \(n) tasks; scheduler rss \(rssBefore >> 10) → peak \(peakKB >> 10) MiB")
    }
}
