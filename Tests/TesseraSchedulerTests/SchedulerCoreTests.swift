import Foundation
import Testing
import TesseraCompute
import TesseraProtocol
@testable import TesseraScheduler

/// Checks that every kept value was released and nothing broke an invariant.
func expectClean(_ c: FakeCluster, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(c.violations.isEmpty, "\(c.violations.prefix(10))", sourceLocation: sourceLocation)
    #expect(c.droppedByCancel.isEmpty, "kept values never released: \(c.droppedByCancel.prefix(10))", sourceLocation: sourceLocation)
    #expect(c.storedValues == 0, sourceLocation: sourceLocation)
}

func int(_ v: Value?) -> Int64? {
    if case .int64(let x) = v { return x }
    return nil
}

@Suite("SchedulerCore: results against brute force")
struct SchedulerResultTests {
    @Test("tree reduce of inc over N leaves is N(N+1)/2", arguments: [
        (1, 2), (2, 2), (3, 2), (7, 2), (10, 3), (64, 4), (100, 4), (257, 16), (1000, 10), (513, 8),
    ] as [(UInt64, UInt32)])
    func treeReduce(leaves: UInt64, fanIn: UInt32) throws {
        let c = FakeCluster()
        _ = c.addWorkers(4, threads: [1, 2, 3, 4])
        let id = try #require(c.submit(Workloads.treeReduce(leaves: leaves, fanIn: fanIn)))
        let accepted = try #require(c.jobs[id]?.accepted)
        #expect(accepted.outputCount == 1)
        #expect(c.run(until: [id]))
        let job = try #require(c.jobs[id])
        let f = try #require(job.finished)
        #expect(f.state == .jobDone)
        #expect(f.tasksDone == accepted.taskCount)
        #expect(f.reruns == 0)
        #expect(job.results.count == 1)
        #expect(int(job.results[UInt32(accepted.taskCount - 1)]) == Int64(leaves * (leaves + 1) / 2))
        if leaves >= 64 { #expect(c.transfers > 0) }
        expectClean(c)
    }

    @Test("tree reduce under random partial progress", arguments: [1, 2, 3, 4, 5] as [UInt64])
    func treeReduceRandomProgress(seed: UInt64) throws {
        let c = FakeCluster(seed: seed)
        _ = c.addWorkers(5, threads: [1, 2])
        let n = 100 + seed * 37
        let id = try #require(c.submit(Workloads.treeReduce(leaves: n, fanIn: UInt32(2 + seed % 4))))
        #expect(c.run(until: [id], random: true))
        let job = try #require(c.jobs[id])
        #expect(job.finished?.state == .jobDone)
        #expect(int(job.results.values.first) == Int64(n * (n + 1) / 2))
        expectClean(c)
    }

    @Test("independent plan delivers every output exactly once")
    func independent() throws {
        let c = FakeCluster()
        _ = c.addWorkers(3, threads: [2, 1, 4])
        let n: UInt64 = 500
        let id = try #require(c.submit(Workloads.independent(tasks: n)))
        #expect(c.jobs[id]?.accepted.outputCount == n)
        #expect(c.run(until: [id], random: true))
        let job = try #require(c.jobs[id])
        #expect(job.finished?.state == .jobDone)
        #expect(job.results.count == Int(n))
        for i in 0..<UInt32(n) { #expect(int(job.results[i]) == Int64(i) + 1) }
        #expect(c.transfers == 0)
        expectClean(c)
    }

    @Test("chain plan", arguments: [1, 2, 50] as [UInt64])
    func chain(length: UInt64) throws {
        let c = FakeCluster()
        _ = c.addWorkers(3)
        let id = try #require(c.submit(Workloads.chain(length: length)))
        #expect(c.run(until: [id]))
        let job = try #require(c.jobs[id])
        #expect(job.finished?.state == .jobDone)
        #expect(job.results.count == 1)
        #expect(int(job.results[UInt32(length - 1)]) == Int64(length))
        expectClean(c)
    }

    @Test("random DAGs match brute force", arguments: Array(1...10) as [UInt64])
    func randomDAG(seed: UInt64) throws {
        let g = Workloads.randomGraph(tasks: 20 + Int(seed * 29 % 300), seed: seed, explicitOutputs: seed % 2 == 0)
        let expected = Workloads.bruteForce(g)
        let c = FakeCluster(seed: seed)
        _ = c.addWorkers(Int(1 + seed % 5), threads: [1, 3, 2])
        let id = try #require(c.submit(g))
        #expect(c.run(until: [id], random: seed % 3 != 0))
        let job = try #require(c.jobs[id])
        #expect(job.finished?.state == .jobDone)
        #expect(job.finished?.reruns == 0)
        let outs = Workloads.outputTasks(g)
        #expect(job.results.count == outs.count)
        for o in outs { #expect(int(job.results[o]) == expected[Int(o)], "task \(o)") }
        #expect(c.missingInputReports == 0)
        expectClean(c)
    }

    @Test("graph with several operators and parameters")
    func mixedOperators() throws {
        var params = Tessera_V1_OperatorParams()
        params.numbers["sleep_us"] = 0
        var g = TaskGraph(operators: ["inc", "sum", "noop"], params: [params])
        let a = g.add(operatorIndex: 0, arg: 10, paramIndex: 1)  // 11
        let b = g.add(operatorIndex: 1, arg: 5)  // 5
        let n = g.add(operatorIndex: 2)  // empty
        let s = g.add(operatorIndex: 1, inputs: [a, b, n])  // 16
        let t = g.add(operatorIndex: 0, inputs: [s, a])  // 28
        g.outputs = [s, t]
        let c = FakeCluster()
        _ = c.addWorkers(2)
        let id = try #require(c.submit(g))
        #expect(c.run(until: [id]))
        let job = try #require(c.jobs[id])
        #expect(int(job.results[s]) == 16)
        #expect(int(job.results[t]) == 28)
        #expect(job.results.count == 2)
        expectClean(c)
    }

    @Test("1000 workers run a 100k-task plan")
    func thousandWorkers() throws {
        let c = FakeCluster()
        _ = c.addWorkers(1000, threads: [1, 2])
        #expect(c.core.workerCount == 1000)
        let n: UInt64 = 100_000
        let id = try #require(c.submit(Workloads.independent(tasks: n)))
        #expect(c.run(until: [id]))
        let job = try #require(c.jobs[id])
        #expect(job.finished?.state == .jobDone)
        #expect(job.results.count == Int(n))
        let total = job.results.values.reduce(Int64(0)) { $0 + (int($1) ?? 0) }
        #expect(total == Int64(n * (n + 1) / 2))
        #expect(c.workers.allSatisfy { $0.assignMessages > 0 })
        expectClean(c)
    }

    @Test("1000 workers run a 100k-leaf tree reduce")
    func thousandWorkersTree() throws {
        let c = FakeCluster()
        _ = c.addWorkers(1000)
        let n: UInt64 = 100_000
        let id = try #require(c.submit(Workloads.treeReduce(leaves: n, fanIn: 8)))
        #expect(c.run(until: [id]))
        let job = try #require(c.jobs[id])
        #expect(job.finished?.state == .jobDone)
        #expect(int(job.results.values.first) == Int64(n * (n + 1) / 2))
        expectClean(c)
    }
}

@Suite("SchedulerCore: flow control and routing")
struct SchedulerFlowTests {
    @Test("in-flight never exceeds each worker's limit; the excess waits at the scheduler")
    func inFlightLimit() throws {
        let c = FakeCluster()
        let ws = c.addWorkers(3, threads: [1, 2, 3])
        let n: UInt64 = 200
        let id = try #require(c.submit(Workloads.independent(tasks: n)))
        // Default config: 2 tasks per thread.
        #expect(ws.map(\.queue.count) == [2, 4, 6])
        #expect(ws.map { c.expectedLimit($0) } == [2, 4, 6])
        let s = try #require(c.requestStatus())
        #expect(s.workers.map(\.inFlight) == [2, 4, 6])
        #expect(s.workers.map(\.inFlightLimit) == [2, 4, 6])
        let js = try #require(s.jobs.first { $0.jobID == id })
        #expect(js.running == 12)
        #expect(js.ready == n - 12)
        #expect(js.state == .jobRunning)
        // One task per worker per turn: the queue is topped up to the limit, never past it.
        for _ in 0..<5 {
            c.step(perWorker: 1)
            #expect(ws.map(\.queue.count) == [2, 4, 6])
        }
        #expect(c.run(until: [id], perWorker: 1))
        #expect(c.jobs[id]?.results.count == Int(n))
        expectClean(c)
    }

    @Test("in-flight limit follows the measured task time within the configured bounds")
    func inFlightLimitConfig() throws {
        var cfg = SchedulerConfig()
        cfg.minInFlightPerThread = 3
        let c = FakeCluster(config: cfg)
        let ws = c.addWorkers(2, threads: [1, 2])
        let id = try #require(c.submit(Workloads.independent(tasks: 100)))
        #expect(ws.map(\.queue.count) == [3, 6])
        #expect(c.run(until: [id], random: true))
        expectClean(c)
    }

    @Test("assignments are batched: one AssignTasks per worker per flush")
    func batching() throws {
        let c = FakeCluster()
        let ws = c.addWorkers(4, threads: [4])
        _ = try #require(c.submit(Workloads.independent(tasks: 1000)))
        let assigns = c.lastFlush.filter { if case .assignTasks = $0.envelope.body { true } else { false } }
        #expect(assigns.count == 4)
        let conns = assigns.compactMap { if case .worker(let c) = $0.destination { c } else { nil } }
        #expect(conns.sorted() == ws.map(\.connection))
        for m in assigns {
            #expect(m.envelope.assignTasks.keys.count == 8)
            #expect(m.envelope.assignTasks.jobs.count == 1)
        }
        // The job's operator table goes to each worker once.
        c.step()
        for m in c.lastFlush {
            if case .assignTasks(let a) = m.envelope.body { #expect(a.jobs.isEmpty) }
        }
        #expect(c.violations.isEmpty)
    }

    @Test("a job's results go only to the client that submitted it")
    func twoClients() throws {
        let c = FakeCluster()
        _ = c.addWorkers(3, threads: [2])
        let a = try #require(c.submit(Workloads.independent(tasks: 60), client: 501, name: "a"))
        let b = try #require(c.submit(Workloads.treeReduce(leaves: 40, fanIn: 3), client: 502, name: "b"))
        #expect(c.jobs[a]?.owner == 501)
        #expect(c.jobs[b]?.owner == 502)
        #expect(c.run(until: [a, b], random: true))
        #expect(c.jobsSeenByClient[501] == [a])
        #expect(c.jobsSeenByClient[502] == [b])
        #expect(c.jobs[a]?.results.count == 60)
        #expect(int(c.jobs[b]?.results.values.first) == Int64(820))
        #expect(c.jobs[a]?.finished?.state == .jobDone)
        #expect(c.jobs[b]?.finished?.state == .jobDone)
        expectClean(c)
    }

    @Test("StatusReply lists workers and jobs")
    func status() throws {
        let c = FakeCluster()
        c.addWorker(name: "alpha", threads: 2)
        c.addWorker(name: "beta", threads: 5)
        let id = try #require(c.submit(Workloads.independent(tasks: 30), name: "my-job"))
        let s = try #require(c.requestStatus())
        #expect(s.workers.map(\.name) == ["alpha", "beta"])
        #expect(s.workers.map(\.threads) == [2, 5])
        #expect(s.workers.allSatisfy { $0.id > 0 && $0.peerEndpoint.hasPrefix("tcp://") })
        #expect(s.jobs.count == 1)
        #expect(s.jobs.first?.name == "my-job")
        #expect(s.jobs.first?.taskCount == 30)
        #expect(s.jobs.first?.state == .jobRunning)
        #expect(c.run(until: [id]))
        let after = try #require(c.requestStatus())
        #expect(after.jobs.count == 1)
        #expect(after.jobs.first?.state == .jobDone)
        #expect(after.jobs.first?.tasksDone == 30)
        #expect(after.jobsCompleted == 1)
        #expect(after.tasksCompleted == 30)
        #expect(after.workers.map(\.tasksDone).reduce(0, +) == 30)
        #expect(c.core.activeJobCount == 0)
    }

    @Test("ping gets a pong with the same nonce")
    func ping() {
        var core = SchedulerCore(now: 0)
        var p = Tessera_V1_Ping()
        p.nonce = 77
        var e = Envelope()
        e.ping = p
        core.handleClient(9, e, frames: [], now: 1)
        let out = core.flush(now: 1)
        #expect(out.count == 1)
        #expect(out.first?.destination == .client(9))
        #expect(out.first?.envelope.pong.nonce == 77)
    }
}

@Suite("SchedulerCore: refusals and errors")
struct SchedulerErrorTests {
    @Test("a client's task graph may not name an operator only plans place")
    func planOnlyOperators() throws {
        let c = FakeCluster()
        c.addWorker(name: "all", operators: standardOperators + OperatorRegistry.planOnly.sorted())
        // Even when a worker offers it: its parameters would be a plan nobody checked.
        for op in ["catalog_scan", "catalog_merge", "python_map", "python_combine", "image_cutout", "forced_phot", "hips_tile"] {
            #expect(c.submit(Workloads.independent(tasks: 1, op: op), client: 8) == nil)
            let err = try #require(c.clientErrors[8]?.last)
            #expect(err.message.contains("operator `\(op)` is placed only from a plan"), "\(err.message)")
        }
        #expect(c.core.activeJobCount == 0)
        #expect(c.submit(Workloads.independent(tasks: 2, op: "moments")) != nil)
    }

    @Test("an ingest's commit with max_rows_per_shard past the limit is refused (its conversion trapped)")
    func commitRowsPerShard() {
        var c = Tessera_V1_IngestCommit()
        c.dataset = "t"
        var col = Tessera_V1_ColumnSchema()
        col.name = "ra"
        var dec = col
        dec.name = "dec"
        c.columns = [col, dec]
        (c.raColumn, c.decColumn) = ("ra", "dec")
        c.maxRowsPerShard = 1_000
        #expect(SchedulerCore.commitProblem(c) == nil)
        c.maxRowsPerShard = .max
        #expect(SchedulerCore.commitProblem(c)?.contains("max_rows_per_shard \(UInt64.max) is over the limit") == true)
    }

    @Test("unknown operator at submit is rejected")
    func unknownOperator() throws {
        let c = FakeCluster()
        _ = c.addWorkers(2)
        #expect(c.submit(Workloads.independent(tasks: 3, op: "frobnicate"), client: 7) == nil)
        let err = try #require(c.clientErrors[7]?.last)
        #expect(err.code == .errorUnknownOperator)
        #expect(err.message.contains("frobnicate"))
        #expect(err.clientTag == c.nextClientTag - 1)
        #expect(c.core.activeJobCount == 0)
        // Operators only some worker offers are fine.
        c.addWorker(name: "special", operators: ["inc", "moments"])
        #expect(c.submit(Workloads.independent(tasks: 3, op: "moments")) != nil)
    }

    @Test("a Python question needs an authenticated user and a worker that allows Python")
    func pythonNeedsKeysAndWorkers() throws {
        let c = FakeCluster()
        _ = c.addWorkers(1)
        var q = CatalogQueryPlan()
        q.dataset = "object"
        q.rows.select = ["coord_ra"]
        q.python.function = Data([1, 2, 3])
        var plan = Tessera_V1_Plan()
        plan.catalog = q
        let alice = ClientIdentity(user: "alice", isAdmin: false, publicKey: "a")
        // Without a key (an insecure cluster's one local user): refused, however many workers.
        #expect(c.submit(plan, client: 7) == nil)
        #expect(try #require(c.clientErrors[7]?.last).code == .errorNotAllowed)
        #expect(try #require(c.clientErrors[7]?.last).message.contains("only for authenticated users"))
        // With a key, but no worker offers Python.
        #expect(c.submit(plan, client: 8, identity: alice) == nil)
        #expect(try #require(c.clientErrors[8]?.last).message.contains("no worker of this cluster allows Python"))
        // A worker that does: the question goes on to planning (this scheduler has no registry).
        c.addWorker(name: "py", operators: standardOperators + [PythonOperatorNames.map, PythonOperatorNames.combine])
        #expect(c.submit(plan, client: 9, identity: alice) == nil)
        let err = try #require(c.clientErrors[9]?.last)
        #expect(err.code == .errorInvalidGraph && err.message.contains("no registry"))
    }

    @Test("invalid graphs and plans are rejected with errorInvalidGraph")
    func invalidGraph() throws {
        let c = FakeCluster()
        _ = c.addWorkers(1)
        var forward = TaskGraph(operators: ["inc"])
        forward.add(operatorIndex: 0, inputs: [1])
        forward.add(operatorIndex: 0)
        var badOp = TaskGraph(operators: ["inc"])
        badOp.add(operatorIndex: 3)
        var badOutput = TaskGraph(operators: ["inc"])
        badOutput.add(operatorIndex: 0)
        badOutput.outputs = [5]
        let empty = TaskGraph(operators: ["inc"])
        var client: ConnectionID = 300
        for g in [forward, badOp, badOutput, empty] {
            #expect(c.submit(g, client: client) == nil)
            #expect(c.clientErrors[client]?.first?.code == .errorInvalidGraph)
            client += 1
        }
        // Frames missing.
        var ok = TaskGraph(operators: ["inc"])
        ok.add(operatorIndex: 0)
        var (spec, frames) = ok.encoded()
        frames.removeLast()
        var s = Tessera_V1_SubmitJob()
        s.graph = spec
        #expect(c.submit(s, frames: frames, client: client, name: "x") == nil)
        #expect(c.clientErrors[client]?.first?.code == .errorInvalidGraph)
        client += 1
        // Plans that make no sense.
        var noKind = Tessera_V1_SubmitJob()
        noKind.plan = Tessera_V1_Plan()
        #expect(c.submit(noKind, frames: [], client: client, name: "x") == nil)
        #expect(c.clientErrors[client]?.first?.code == .errorInvalidGraph)
        client += 1
        for plan in [Workloads.treeReduce(leaves: 10, fanIn: 1), Workloads.independent(tasks: 0), Workloads.chain(length: 0)] {
            #expect(c.submit(plan, client: client) == nil)
            #expect(c.clientErrors[client]?.first?.code == .errorInvalidGraph)
            client += 1
        }
        var neither = Tessera_V1_SubmitJob()
        neither.name = "nothing"
        #expect(c.submit(neither, frames: [], client: client, name: "x") == nil)
        #expect(c.clientErrors[client]?.first?.code == .errorInvalidGraph)
        #expect(c.core.activeJobCount == 0)
    }

    @Test("too many tasks is refused")
    func tooManyTasks() {
        var cfg = SchedulerConfig()
        cfg.maxTasksPerJob = 100
        let c = FakeCluster(config: cfg)
        _ = c.addWorkers(1)
        #expect(c.submit(Workloads.independent(tasks: 101), client: 5) == nil)
        #expect(c.submit(Workloads.treeReduce(leaves: 90, fanIn: 2), client: 5) == nil)
        #expect(c.clientErrors[5]?.map(\.code) == [.errorInvalidGraph, .errorInvalidGraph])
        #expect(c.submit(Workloads.independent(tasks: 100), client: 5) != nil)
    }

    /// A plan of a few bytes may ask for fifty million tasks, about 100 bytes of the scheduler's
    /// memory each: a user's unfinished jobs hold at most `maxTasksPerUser` of them, and all
    /// users' `maxLiveTasks`; a finished job gives its tasks back.
    @Test("tasks held by a user's and by all unfinished jobs are bounded")
    func liveTaskBudgets() throws {
        var cfg = SchedulerConfig()
        cfg.maxTasksPerUser = 100
        cfg.maxLiveTasks = 150
        let c = FakeCluster(config: cfg)
        _ = c.addWorkers(1)
        let alice = ClientIdentity(user: "alice", isAdmin: false, publicKey: "a")
        let bob = ClientIdentity(user: "bob", isAdmin: false, publicKey: "b")
        let first = try #require(c.submit(Workloads.independent(tasks: 60), client: 5, identity: alice))
        #expect(c.submit(Workloads.independent(tasks: 41), client: 5, identity: alice) == nil)
        let refusal = try #require(c.clientErrors[5]?.last)
        #expect(refusal.code == .errorOverBudget && refusal.message.contains("has 60 tasks in unfinished jobs and this job adds 41, over the 100 one user may hold"), "\(refusal.message)")
        #expect(c.submit(Workloads.independent(tasks: 40), client: 5, identity: alice) != nil)
        // Bob is within his own budget but not the cluster's (100 held of 150).
        #expect(c.submit(Workloads.independent(tasks: 51), client: 6, identity: bob) == nil)
        #expect(try #require(c.clientErrors[6]?.last).message.contains("the cluster holds 100 tasks in unfinished jobs and this job adds 51, over its limit of 150"))
        let bobs = try #require(c.submit(Workloads.independent(tasks: 50), client: 6, identity: bob))
        // A cancelled job gives its tasks back at once; a job over a budget by itself is told so.
        c.cancel(bobs, client: 6, identity: bob)
        #expect(c.core.liveTasks == 100 && c.core.tasksPerUser["bob"] == nil)
        #expect(c.submit(Workloads.independent(tasks: 101), client: 5, identity: alice) == nil)
        #expect(try #require(c.clientErrors[5]?.last).message.contains("the job alone is over it: split it"))
        // Done jobs give their tasks back.
        #expect(c.run(until: [first]))
        #expect(c.core.tasksPerUser["alice"] ?? 0 <= 40)
        #expect(c.run(until: Array(c.jobs.keys.filter { $0 != bobs })))
        #expect(c.core.liveTasks == 0 && c.core.tasksPerUser.isEmpty)
        #expect(c.submit(Workloads.independent(tasks: 100), client: 5, identity: alice) != nil)
    }

    @Test("a message from an unregistered worker connection gets errorUnknownWorker")
    func unknownWorker() {
        var core = SchedulerCore(now: 0)
        var h = Tessera_V1_Heartbeat()
        h.workerID = 3
        var e = Envelope()
        e.heartbeat = h
        core.handleWorker(999, e, frames: [], now: 1)
        var r = Envelope()
        r.taskReport = Tessera_V1_TaskReport()
        core.handleWorker(998, r, frames: [], now: 1)
        let out = core.flush(now: 1)
        #expect(out.count == 2)
        #expect(out.map(\.destination) == [.worker(999), .worker(998)])
        #expect(out.allSatisfy { $0.envelope.error.code == .errorUnknownWorker })
        #expect(core.workerCount == 0)
    }

    @Test("a worker declared dead that speaks again is told to register")
    func deadWorkerSpeaks() throws {
        let c = FakeCluster()
        let ws = c.addWorkers(2)
        c.kill(ws[0])
        c.detectDeaths()
        #expect(c.core.workerCount == 1)
        c.heartbeat(ws[0])
        let out = c.core.flush(now: c.now)
        #expect(out.contains { $0.destination == .worker(ws[0].connection) && $0.envelope.error.code == .errorUnknownWorker })
    }

    @Test("client messages a scheduler does not expect are refused")
    func unexpectedClientMessage() {
        var core = SchedulerCore(now: 0)
        var e = Envelope()
        e.heartbeat = Tessera_V1_Heartbeat()
        core.handleClient(4, e, frames: [], now: 1)
        var cancel = Envelope()
        cancel.cancelJob = Tessera_V1_CancelJob()
        cancel.cancelJob.jobID = 42
        core.handleClient(4, cancel, frames: [], now: 1)
        let out = core.flush(now: 1)
        #expect(out.map(\.envelope.error.code) == [.errorMalformedMessage, .errorUnknownJob])
    }
}

@Suite("SchedulerCore: cancellation and failures")
struct SchedulerCancelTests {
    @Test("CancelJob: the client hears cancelled, workers get CancelTasks, nothing more is assigned")
    func cancel() throws {
        let c = FakeCluster()
        let ws = c.addWorkers(3, threads: [2])
        let id = try #require(c.submit(Workloads.independent(tasks: 1000), client: 11))
        let other = try #require(c.submit(Workloads.independent(tasks: 300), client: 12))
        for _ in 0..<3 { c.step(perWorker: 1) }
        let assignedBefore = c.workers.map { $0.assignedKeys.count }
        c.cancel(id, client: 11)
        let f = try #require(c.jobs[id]?.finished)
        #expect(f.state == .jobCancelled)
        #expect(f.taskCount == 1000)
        #expect(f.tasksDone < 1000)
        for w in ws {
            #expect(w.cancelMessages.contains { $0.jobIds.contains(id) }, "\(w.name)")
            #expect(w.queue.allSatisfy { TaskKey.job($0.key) != id })
        }
        let cancelledAt = c.workers.map { $0.assignedKeys.count }
        #expect(c.run(until: [other]))
        for (i, w) in c.workers.enumerated() {
            #expect(w.assignedKeys[cancelledAt[i]...].allSatisfy { TaskKey.job($0) != id })
            #expect(w.assignedKeys.count >= assignedBefore[i])
        }
        #expect(c.jobs[other]?.results.count == 300)
        #expect(c.core.activeJobCount == 0)
        // Cancelling again: the job is gone.
        c.cancel(id, client: 11)
        #expect(c.clientErrors[11]?.last?.code == .errorUnknownJob)
        #expect(c.violations.isEmpty)
    }

    @Test("late reports for a cancelled job are ignored")
    func lateReportsAfterCancel() throws {
        let c = FakeCluster()
        let ws = c.addWorkers(2, threads: [2])
        let id = try #require(c.submit(Workloads.treeReduce(leaves: 50, fanIn: 2)))
        c.step(perWorker: 1)
        let stale = ws.map(\.queue)
        c.cancel(id)
        // The workers had already finished those tasks when the cancel arrived.
        for (w, q) in zip(ws, stale) where !q.isEmpty { c.report(q, from: w) }
        c.flushAndProcess()
        #expect(c.core.activeJobCount == 0)
        let s = try #require(c.requestStatus())
        #expect(s.workers.allSatisfy { $0.inFlight == 0 })
        // And the workers still work.
        let next = try #require(c.submit(Workloads.treeReduce(leaves: 20, fanIn: 2)))
        #expect(c.run(until: [next]))
        #expect(int(c.jobs[next]?.results.values.first) == Int64(210))
        #expect(c.violations.isEmpty)
    }

    @Test("a user sees and cancels only their own jobs; an admin, anyone's")
    func cancelNotAllowed() throws {
        let c = FakeCluster()
        _ = c.addWorkers(2)
        let alice = ClientIdentity(user: "alice", isAdmin: false, publicKey: "a")
        let bob = ClientIdentity(user: "bob", isAdmin: false, publicKey: "b")
        let id = try #require(c.submit(Workloads.independent(tasks: 50), client: 21, identity: alice))
        c.cancel(id, client: 22, identity: bob)
        let err = try #require(c.clientErrors[22]?.last)
        #expect(err.code == .errorUnknownJob)
        #expect(err.jobID == id)
        #expect(c.jobs[id]?.finished == nil)
        #expect(try #require(c.requestStatus(client: 22, identity: bob)).jobs.isEmpty)
        #expect(try #require(c.requestStatus(client: 21, identity: alice)).jobs.map(\.user) == ["alice"])
        #expect(try #require(c.requestStatus(client: 23)).jobs.map(\.jobID) == [id])
        let other = try #require(c.submit(Workloads.independent(tasks: 50), client: 21, identity: alice))
        c.cancel(other, client: 23, identity: ClientIdentity(user: "root", isAdmin: true, publicKey: "r"))
        #expect(c.jobs[other]?.finished?.state == .jobCancelled)
        #expect(c.run(until: [id]))
        #expect(c.jobs[id]?.finished?.state == .jobDone)
        #expect(c.jobs[id]?.results.count == 50)
        #expect(c.jobsSeenByClient[22] == nil)
        expectClean(c)
    }

    /// A job whose middle task always fails (the built-in `fail`), with 3 operator failures allowed;
    /// returns the cluster, the job and the failing task once the job has finished.
    func runJobWithFailingTask(message: String, refuse: Bool, extraLeaf: Bool) throws -> (FakeCluster, UInt32, UInt32) {
        var cfg = SchedulerConfig()
        cfg.maxOperatorFailures = 3
        let c = FakeCluster(config: cfg)
        _ = c.addWorkers(2)
        var params = Tessera_V1_OperatorParams()
        params.strings["message"] = message
        if refuse { params.strings["refuse"] = "yes" }
        var g = TaskGraph(operators: ["inc", "fail"], params: [params])
        let a = g.add(operatorIndex: 0, arg: 1)
        let b = g.add(operatorIndex: 1, inputs: [a], paramIndex: 1)
        g.add(operatorIndex: 0, inputs: [b])
        if extraLeaf { g.add(operatorIndex: 0, arg: 5) }
        let id = try #require(c.submit(g))
        #expect(c.run(until: [id]))
        return (c, id, b)
    }

    @Test("a task failing maxOperatorFailures times fails the job with the operator's message")
    func operatorFailure() throws {
        let (c, id, b) = try runJobWithFailingTask(message: "kaboom-42", refuse: false, extraLeaf: true)
        let f = try #require(c.jobs[id]?.finished)
        #expect(f.state == .jobFailed)
        #expect(f.error.contains("kaboom-42"))
        #expect(f.error.contains("3 times"))
        // The fail task ran exactly 3 times.
        let runs = c.workers.flatMap(\.assignedKeys).filter { $0 == TaskKey.make(job: id, task: b) }.count
        #expect(runs == 3)
        // Workers are told to drop the job's values.
        #expect(c.workers.allSatisfy { $0.cancelMessages.contains { $0.jobIds.contains(id) } || $0.setups[id] == nil })
        #expect(c.storedValues == 0)
        #expect(c.violations.isEmpty)
    }

    @Test("a task refused as asked fails the job at its first run, with the operator's message")
    func refusedTaskIsNotRetried() throws {
        let (c, id, b) = try runJobWithFailingTask(message: "too many groups-7", refuse: true, extraLeaf: false)
        let f = try #require(c.jobs[id]?.finished)
        #expect(f.state == .jobFailed)
        #expect(f.error.contains("too many groups-7") && f.error.contains("refused"))
        #expect(c.workers.flatMap(\.assignedKeys).filter { $0 == TaskKey.make(job: id, task: b) }.count == 1)
        #expect(c.storedValues == 0)
        #expect(c.violations.isEmpty)
    }

    /// `JobFinished.reruns` is documented as "task runs beyond the first for the same task", but is
    /// computed as `runs - taskCount`, which undercounts whenever some tasks never ran.
    @Test("reruns counts runs beyond the first, also in a failed job")
    func rerunsOfFailedJob() throws {
        let c = FakeCluster()
        c.addWorker()
        var g = TaskGraph(operators: ["fail", "inc"])
        let a = g.add(operatorIndex: 0)
        g.add(operatorIndex: 1, inputs: [a])
        let id = try #require(c.submit(g))
        #expect(c.run(until: [id]))
        let f = try #require(c.jobs[id]?.finished)
        #expect(f.state == .jobFailed)
        // Task 0 ran 3 times: 2 re-runs. Task 1 never ran.
        #expect(f.reruns == 2)
    }

    @Test("a worker that lacks an operator fails the job with its message")
    func workerLacksOperator() throws {
        let c = FakeCluster()
        c.addWorker(name: "good", operators: ["inc", "sum"])
        let bad = c.addWorker(name: "bad", operators: ["sum"])
        let id = try #require(c.submit(Workloads.independent(tasks: 10)))
        #expect(bad.queue.count == 2)
        #expect(c.run(until: [id]))
        let f = try #require(c.jobs[id]?.finished)
        #expect(f.state == .jobFailed)
        #expect(f.error.contains("bad"))
        #expect(c.core.workers.values.allSatisfy { $0.inFlight == 0 }, "\(c.core.workers.values.map(\.inFlight))")
    }

    @Test("a plan of `fail` tasks fails with the default message")
    func failPlan() throws {
        let c = FakeCluster()
        _ = c.addWorkers(3)
        let id = try #require(c.submit(Workloads.independent(tasks: 5, op: "fail")))
        #expect(c.run(until: [id]))
        let f = try #require(c.jobs[id]?.finished)
        #expect(f.state == .jobFailed)
        #expect(f.error.contains("failed as asked"))
        #expect(c.core.workers.values.allSatisfy { $0.inFlight == 0 }, "\(c.core.workers.values.map(\.inFlight))")
    }

    /// BUG: `taskReport` decrements `w.inFlight` for a failed task and then calls `finish`, which
    /// decrements it again because the task is still `.running`.
    @Test("a job failed by an operator leaves the worker's in-flight count at zero")
    func inFlightAfterOperatorFailure() throws {
        var cfg = SchedulerConfig()
        cfg.maxOperatorFailures = 1
        let c = FakeCluster(config: cfg)
        let w = c.addWorker(threads: 1)
        let bad = try #require(c.submit(Workloads.independent(tasks: 1, op: "fail")))
        #expect(c.run(until: [bad]))
        #expect(c.jobs[bad]?.finished?.state == .jobFailed)
        #expect(c.core.workers.values.first?.inFlight == 0)
        // The next job must still see a limit of 2 tasks in flight on this 1-thread worker.
        let next = try #require(c.submit(Workloads.independent(tasks: 10)))
        #expect(w.queue.count == 2)
        #expect(c.violations.isEmpty, "\(c.violations)")
        #expect(c.run(until: [next]))
    }

    @Test("a job failed by an unknown operator leaves the worker's in-flight count at zero")
    func inFlightAfterUnknownOperator() throws {
        let c = FakeCluster()
        c.addWorker(name: "good", operators: ["sum"])
        c.addWorker(name: "bad", operators: ["inc"])
        let id = try #require(c.submit(Workloads.independent(tasks: 1, op: "inc")))
        #expect(c.run(until: [id]))
        #expect(c.jobs[id]?.finished?.state == .jobFailed)
        #expect(c.core.workers.values.allSatisfy { $0.inFlight == 0 }, "\(c.core.workers.values.map(\.inFlight))")
    }

    @Test("status after a failed job")
    func statusAfterFailure() throws {
        var cfg = SchedulerConfig()
        cfg.maxOperatorFailures = 1
        let c = FakeCluster(config: cfg)
        c.addWorker()
        let id = try #require(c.submit(Workloads.independent(tasks: 1, op: "fail")))
        #expect(c.run(until: [id]))
        let s = try #require(c.requestStatus())  // crashes: SchedulerCore.swift:299 UInt32(-1)
        #expect(s.workers.first?.inFlight == 0)
    }
}

@Suite("SchedulerCore: releases")
struct SchedulerReleaseTests {
    @Test("every kept value is released once its dependents are done", arguments: [1, 2, 3] as [UInt64])
    func releases(seed: UInt64) throws {
        let g = Workloads.randomGraph(tasks: 150, seed: seed * 11)
        let c = FakeCluster(seed: seed)
        _ = c.addWorkers(4, threads: [1, 2])
        let id = try #require(c.submit(g))
        #expect(c.run(until: [id], random: true))
        var hasDependents = Set<UInt32>()
        for i in g.inputs { hasDependents.insert(i) }
        let released = c.workers.flatMap(\.releasedKeys)
        #expect(released.count == hasDependents.count)
        #expect(Set(released) == Set(hasDependents.map { TaskKey.make(job: id, task: $0) }))
        // Keep flags were set exactly on the tasks that others read.
        expectClean(c)
    }

    @Test("tree reduce releases every non-root value")
    func treeReleases() throws {
        let c = FakeCluster()
        _ = c.addWorkers(3)
        let id = try #require(c.submit(Workloads.treeReduce(leaves: 81, fanIn: 3)))
        let tasks = try #require(c.jobs[id]?.accepted.taskCount)
        #expect(tasks == 81 + 27 + 9 + 3 + 1)
        #expect(c.run(until: [id], perWorker: 1))
        #expect(c.workers.flatMap(\.releasedKeys).count == Int(tasks) - 1)
        expectClean(c)
    }
}

@Suite("SchedulerCore: pipelining")
struct SchedulerPipelineTests {
    /// A chain's next links go to the worker running the current one, up to its in-flight limit,
    /// each naming that worker as its input's holder, so the worker runs them back to back.
    @Test func chainLinksArePipelinedOntoTheWorkerRunningTheirInput() throws {
        let c = FakeCluster()
        let w = c.addWorker(threads: 2)
        let id = try #require(c.submit(Workloads.chain(length: 50)))
        let limit = c.expectedLimit(w)
        #expect(limit > 1)
        #expect(w.queue.count == limit)
        for (prev, next) in zip(w.queue, w.queue.dropFirst()) {
            #expect(next.inputKeys == [prev.key])
            #expect(next.inputHolders == [w.id])
        }
        #expect(c.run(until: [id]))
        #expect(int(c.jobs[id]?.results[49]) == 50)
        #expect(c.missingInputReports == 0)
        #expect(c.jobs[id]?.finished?.reruns == 0)
        #expect(c.violations.isEmpty, "\(c.violations.prefix(3))")
    }
}

@Suite("SchedulerCore: its own stalls")
struct SchedulerStallTests {
    @Test("silence while the scheduler's loop was stalled is not held against workers; real silence still is")
    func stallIsNotTheWorkersFault() throws {
        let c = FakeCluster()
        let ws = c.addWorkers(2)
        let timeout = c.core.config.workerTimeoutNs
        // The loop was stuck for two timeouts; no heartbeat was read meanwhile.
        c.now += 2 * timeout
        c.core.tick(now: c.now, loopStallNs: 2 * timeout)
        c.flushAndProcess()
        #expect(c.core.workerCount == 2)
        #expect(c.departed.isEmpty)
        // Then a worker is really silent past the timeout, with the loop running: it is dead.
        c.now += timeout / 2
        c.heartbeat(ws[0])
        c.now += timeout / 2 + 1
        c.core.tick(now: c.now)
        c.flushAndProcess()
        #expect(c.core.workerCount == 1)
        let id = try #require(c.submit(Workloads.treeReduce(leaves: 30, fanIn: 3)))
        #expect(c.run(until: [id]))
        #expect(int(c.jobs[id]?.results.values.first) == Int64(30 * 31 / 2))
    }
}
