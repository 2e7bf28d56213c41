import Testing
import TesseraCompute
import TesseraProtocol
@testable import TesseraScheduler

@Suite("SchedulerCore: recovery from lineage")
struct SchedulerRecoveryTests {
    /// Steps one task per worker per turn until some worker holds a kept value of a non-leaf task
    /// (an intermediate result only it has) and still has tasks running.
    func victimHoldingIntermediate(_ c: FakeCluster, job: JobID, firstIntermediate: UInt32) -> FakeWorker? {
        for _ in 0..<10_000 {
            if c.jobs[job]?.finished != nil { return nil }
            if let w = c.liveWorkers.first(where: { w in
                !w.queue.isEmpty && w.store.keys.contains { TaskKey.job($0) == job && TaskKey.task($0) >= firstIntermediate }
            }) { return w }
            c.step(perWorker: 1)
        }
        return nil
    }

    @Test("worker death with running tasks and intermediate results only it held", arguments: [
        (256, 4), (100, 2), (500, 8), (81, 3),
    ] as [(UInt64, UInt32)])
    func workerDeathTreeReduce(leaves: UInt64, fanIn: UInt32) throws {
        let c = FakeCluster()
        let ws = c.addWorkers(4)
        let id = try #require(c.submit(Workloads.treeReduce(leaves: leaves, fanIn: fanIn)))
        let victim = try #require(victimHoldingIntermediate(c, job: id, firstIntermediate: UInt32(leaves)))
        let held = victim.store.keys.filter { TaskKey.job($0) == id }
        #expect(!held.isEmpty)
        #expect(!victim.queue.isEmpty)
        c.kill(victim)
        c.detectDeaths()
        #expect(c.core.workerCount == 3)
        for w in ws where w !== victim {
            #expect(w.cancelMessages.contains { $0.lostWorkers == [victim.id] }, "\(w.name) not told of the loss")
        }
        #expect(c.run(until: [id]))
        let f = try #require(c.jobs[id]?.finished)
        #expect(f.state == .jobDone)
        #expect(f.reruns > 0)
        #expect(int(c.jobs[id]?.results.values.first) == Int64(leaves * (leaves + 1) / 2))
        #expect(c.jobs[id]?.results.count == 1)
        expectClean(c)
        let s = try #require(c.requestStatus())
        #expect(s.workers.count == 3)
        #expect(!s.workers.contains { $0.id == victim.id })
    }

    @Test("worker death in a chain recomputes the lost prefix")
    func workerDeathChain() throws {
        let c = FakeCluster()
        _ = c.addWorkers(3)
        let id = try #require(c.submit(Workloads.chain(length: 60)))
        // Pipelining sends up to the in-flight limit of links at once: stop well before the end.
        for _ in 0..<10 { c.step() }
        let holder = try #require(c.liveWorkers.first { !$0.store.isEmpty })
        c.kill(holder)
        c.detectDeaths()
        #expect(c.run(until: [id]))
        #expect(c.jobs[id]?.finished?.state == .jobDone)
        #expect(int(c.jobs[id]?.results[59]) == 60)
        expectClean(c)
    }

    /// Losing the last value of a long chain whose earlier links were all released recomputes
    /// the whole chain from its first link: the scheduler walks back over 60,000 ancestors.
    /// Walked by recursion, one level per ancestor, that overflowed the stack and killed the
    /// process.
    @Test("losing the end of a long chain recomputes it all without deep recursion")
    func longChainLost() throws {
        let n = 60_000
        let c = FakeCluster()
        _ = c.addWorkers(2)
        let id = try #require(c.submit(Workloads.chain(length: UInt64(n))))
        func frontier() -> (FakeWorker, Int)? {
            c.liveWorkers.compactMap { w in
                w.store.keys.filter { TaskKey.job($0) == id }.map { Int(TaskKey.task($0)) }.max().map { (w, $0) }
            }.max { $0.1 < $1.1 }
        }
        var steps = 0
        while (frontier()?.1 ?? 0) < n - 300 && steps < 10 * n {
            c.step()
            steps += 1
        }
        let (holder, t) = try #require(frontier())
        #expect(t >= n - 300 && t < n - 1, "stopped at link \(t)")
        // Every link before the last few was released: the loss reaches back to link 0.
        #expect(c.liveWorkers.allSatisfy { w in w.store.keys.allSatisfy { TaskKey.job($0) != id || Int(TaskKey.task($0)) > 1_000 } })
        c.kill(holder)
        c.detectDeaths()
        #expect(c.run(until: [id], maxSteps: 20 * n))
        #expect(c.jobs[id]?.finished?.state == .jobDone)
        #expect(int(c.jobs[id]?.results[UInt32(n - 1)]) == Int64(n))
        expectClean(c)
    }

    /// A value no fetch can bring (a holder the others cannot reach) would be recomputed and
    /// fetched forever; the job fails after the limit of rounds, naming the holder.
    @Test("an input no fetch can bring fails the job after the limit of rounds")
    func unreachableHolder() throws {
        let c = FakeCluster()
        let ws = c.addWorkers(3)
        let id = try #require(c.submit(Workloads.treeReduce(leaves: 64, fanIn: 4)))
        // No read of a leaf's value succeeds, on any worker (as for a value over every
        // fetcher's budget), while its holders stay registered.
        for w in ws { w.neverFetch = Set((0..<64).map { TaskKey.make(job: id, task: UInt32($0)) }) }
        #expect(c.run(until: [id]))
        let f = try #require(c.jobs[id]?.finished)
        #expect(f.state == .jobFailed)
        #expect(f.error.contains("could not fetch its input from worker") && f.error.contains("the limit is \(c.core.config.maxMissingInputRounds)"), "\(f.error)")
        #expect(c.missingInputReports >= c.core.config.maxMissingInputRounds)
        #expect(c.violations.isEmpty, "\(c.violations.prefix(5))")
    }

    @Test("two workers die in the same tick")
    func twoDeaths() throws {
        let c = FakeCluster()
        _ = c.addWorkers(5, threads: [1, 2])
        let g = Workloads.randomGraph(tasks: 300, seed: 99)
        let expected = Workloads.bruteForce(g)
        let id = try #require(c.submit(g))
        for _ in 0..<6 { c.step(perWorker: 1) }
        let victims = c.liveWorkers.sorted { $0.store.count > $1.store.count }.prefix(2)
        for v in victims { c.kill(v) }
        c.detectDeaths()
        #expect(c.core.workerCount == 3)
        #expect(c.run(until: [id], random: true))
        let job = try #require(c.jobs[id])
        #expect(job.finished?.state == .jobDone)
        for o in Workloads.outputTasks(g) { #expect(int(job.results[o]) == expected[Int(o)], "task \(o)") }
        expectClean(c)
    }

    @Test("a dead worker's tasks fail fetches before the scheduler notices; all recovers")
    func deathNoticedLate() throws {
        let c = FakeCluster()
        _ = c.addWorkers(4)
        let id = try #require(c.submit(Workloads.treeReduce(leaves: 200, fanIn: 4)))
        let victim = try #require(victimHoldingIntermediate(c, job: id, firstIntermediate: 200))
        c.kill(victim)
        // Others keep working (and failing to fetch from the victim) for a while.
        for _ in 0..<20 { c.step(perWorker: 1) }
        c.detectDeaths()
        #expect(c.run(until: [id]))
        #expect(c.jobs[id]?.finished?.state == .jobDone)
        #expect(int(c.jobs[id]?.results.values.first) == Int64(200 * 201 / 2))
        #expect(c.violations.isEmpty, "\(c.violations.prefix(5))")
    }

    @Test("outputs that others read are delivered once even when recomputed")
    func outputsRecomputed() throws {
        let g = Workloads.randomGraph(tasks: 200, seed: 5, explicitOutputs: true)
        let expected = Workloads.bruteForce(g)
        let c = FakeCluster(seed: 5)
        _ = c.addWorkers(4)
        let id = try #require(c.submit(g))
        for _ in 0..<15 { c.step(perWorker: 1) }
        let victim = try #require(c.liveWorkers.max { $0.store.count < $1.store.count })
        c.kill(victim)
        c.detectDeaths()
        #expect(c.run(until: [id]))
        let job = try #require(c.jobs[id])
        #expect(job.finished?.state == .jobDone)
        let outs = Workloads.outputTasks(g)
        #expect(job.results.count == outs.count)
        for o in outs { #expect(int(job.results[o]) == expected[Int(o)], "task \(o)") }
        expectClean(c)
    }

    @Test("a deregistering worker hands back its tasks without counting lost runs")
    func deregister() throws {
        var cfg = SchedulerConfig()
        cfg.maxLostRuns = 1
        let c = FakeCluster(config: cfg)
        let ws = c.addWorkers(3, threads: [2])
        let id = try #require(c.submit(Workloads.treeReduce(leaves: 120, fanIn: 3)))
        for _ in 0..<10 { c.step(perWorker: 1) }
        #expect(!ws[1].queue.isEmpty)
        c.deregister(ws[1])
        #expect(c.core.workerCount == 2)
        #expect(c.run(until: [id]))
        #expect(c.jobs[id]?.finished?.state == .jobDone)
        #expect(int(c.jobs[id]?.results.values.first) == Int64(120 * 121 / 2))
        expectClean(c)
    }

    @Test("a task running on maxLostRuns workers that died fails its job")
    func poisonTask() throws {
        var cfg = SchedulerConfig()
        cfg.maxLostRuns = 3
        let c = FakeCluster(config: cfg)
        _ = c.addWorkers(5)
        let id = try #require(c.submit(Workloads.independent(tasks: 1)))
        for round in 0..<3 {
            let runner = try #require(c.liveWorkers.first { !$0.queue.isEmpty }, "round \(round)")
            c.kill(runner)
            c.detectDeaths()
        }
        let f = try #require(c.jobs[id]?.finished)
        #expect(f.state == .jobFailed)
        #expect(f.error.contains("giving up"))
        #expect(c.core.workerCount == 2)
    }

    @Test("a worker restarting on the same connection loses what it held")
    func reRegister() throws {
        let c = FakeCluster()
        let ws = c.addWorkers(3)
        let id = try #require(c.submit(Workloads.treeReduce(leaves: 90, fanIn: 3)))
        for _ in 0..<8 { c.step(perWorker: 1) }
        let w = ws[0]
        let oldID = w.id
        // The process restarts: it forgets everything and registers again from the same routing id.
        w.store = [:]
        for t in w.queue { c.outstanding.removeValue(forKey: t.key) }
        w.queue = []
        w.setups = [:]
        c.departed.insert(oldID)
        var r = Tessera_V1_RegisterWorker()
        r.name = w.name
        r.threads = 1
        r.peerEndpoint = "tcp://fake-restarted:7000"
        r.operators = standardOperators
        var e = Envelope()
        e.registerWorker = r
        c.core.handleWorker(w.connection, e, frames: [], now: c.now)
        c.flushAndProcess()
        #expect(w.id != oldID)
        #expect(c.core.workerCount == 3)
        #expect(c.run(until: [id]))
        #expect(c.jobs[id]?.finished?.state == .jobDone)
        #expect(int(c.jobs[id]?.results.values.first) == Int64(90 * 91 / 2))
        #expect(c.violations.isEmpty, "\(c.violations.prefix(5))")
    }

    @Test("chaos: random deaths, departures and arrivals on random DAGs", arguments: Array(1...16) as [UInt64])
    func chaos(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed &* 7919)
        let g = Workloads.randomGraph(tasks: 150 + Int(rng.next() % 250), seed: seed, explicitOutputs: seed % 3 == 0)
        let expected = Workloads.bruteForce(g)
        let c = FakeCluster(seed: seed)
        _ = c.addWorkers(5, threads: [1, 2, 1, 3])
        let id = try #require(c.submit(g))
        var deaths = 0
        var steps = 0
        while c.jobs[id]?.finished == nil && steps < 20_000 {
            steps += 1
            let roll = rng.next() % 100
            let live = c.liveWorkers
            if roll < 4 && deaths < 3 && live.count > 1 {
                let v = live[Int(rng.next() % UInt64(live.count))]
                c.kill(v)
                deaths += 1
            } else if roll < 5 && live.count > 2 {
                c.deregister(live[Int(rng.next() % UInt64(live.count))])
            } else if roll < 7 && !c.undetectedDeaths.isEmpty {
                c.detectDeaths()
            } else if roll < 9 && live.count < 6 {
                c.addWorker(threads: 1 + Int(rng.next() % 3))
            }
            if !c.workers.contains(where: { $0.alive && !$0.queue.isEmpty }) {
                if !c.undetectedDeaths.isEmpty { c.detectDeaths() }
                if c.liveWorkers.isEmpty { c.addWorker() }
            }
            c.step(random: true)
            if c.workers.allSatisfy({ !$0.alive || $0.queue.isEmpty }) && c.undetectedDeaths.isEmpty {
                c.step()
                if c.workers.allSatisfy({ !$0.alive || $0.queue.isEmpty }) && c.jobs[id]?.finished == nil {
                    Issue.record("stalled after \(steps) steps")
                    break
                }
            }
        }
        let job = try #require(c.jobs[id])
        let f = try #require(job.finished)
        #expect(f.state == .jobDone, "\(f.error)")
        let outs = Workloads.outputTasks(g)
        #expect(job.results.count == outs.count)
        for o in outs { #expect(int(job.results[o]) == expected[Int(o)], "task \(o)") }
        #expect(c.violations.isEmpty, "\(c.violations.prefix(5))")
    }

    @Test("chaos: kept values are all released even across worker losses", arguments: Array(1...16) as [UInt64])
    func chaosReleases(seed: UInt64) throws {
        // Same as above, but only looks at the store: no value may outlive its dependents.
        var rng = SplitMix64(seed: seed &* 104_729)
        let g = Workloads.randomGraph(tasks: 200, seed: seed + 1000)
        let c = FakeCluster(seed: seed)
        _ = c.addWorkers(4, threads: [1, 2])
        let id = try #require(c.submit(g))
        var deaths = 0
        for _ in 0..<20_000 where c.jobs[id]?.finished == nil {
            if rng.next() % 100 < 4 && deaths < 2 && c.liveWorkers.count > 2 {
                let live = c.liveWorkers
                c.kill(live[Int(rng.next() % UInt64(live.count))])
                deaths += 1
                // The scheduler finds out a couple of turns later.
                c.step(random: true)
                c.step(random: true)
                c.detectDeaths()
            }
            if !c.workers.contains(where: { $0.alive && !$0.queue.isEmpty }) { c.step() }
            c.step(random: true)
        }
        #expect(c.jobs[id]?.finished?.state == .jobDone)
        expectClean(c)
    }
}

@Suite("SchedulerCore: missing inputs from live holders")
struct SchedulerMissingInputTests {
    /// A fetch that times out (the holder is alive and still has the value) makes the scheduler
    /// recompute the input. The holder's copy must then still be released at some point.
    @Test("a value recomputed after a fetch timeout is not leaked on its old holder")
    func fetchTimeoutLeak() throws {
        let c = FakeCluster()
        let ws = c.addWorkers(3)
        let id = try #require(c.submit(Workloads.treeReduce(leaves: 60, fanIn: 3)))
        // Find a queued task reading an input another live worker holds.
        var found: (reader: FakeWorker, key: UInt64, holder: FakeWorker)?
        for _ in 0..<200 where found == nil {
            c.step(perWorker: 1)
            for w in ws {
                for t in w.queue {
                    for (k, h) in zip(t.inputKeys, t.inputHolders) where h != w.id {
                        if let hw = c.workerByID[h], hw.store[k] != nil { found = (w, k, hw) }
                    }
                }
            }
        }
        let (reader, key, holder) = try #require(found)
        reader.failFetchOf = [key]
        // Keep the old holder from recomputing the value itself (which would overwrite its copy).
        holder.paused = true
        for _ in 0..<3 { c.step() }
        holder.paused = false
        #expect(c.run(until: [id]))
        #expect(int(c.jobs[id]?.results.values.first) == Int64(60 * 61 / 2))
        #expect(c.missingInputReports == 1)
        #expect(c.droppedByCancel.isEmpty, "values kept until job end, never released: \(c.droppedByCancel)")
        #expect(c.violations.isEmpty, "\(c.violations.prefix(5))")
    }

    /// A reader that was assigned an input on worker A learns A is gone only after the input was
    /// already recomputed on another worker; its missing-input report must not undo the new copy.
    @Test("a late missing-input report does not undo a value already recomputed elsewhere")
    func lateMissingReport() throws {
        let c = FakeCluster()
        let ws = c.addWorkers(4)
        let id = try #require(c.submit(Workloads.treeReduce(leaves: 64, fanIn: 4)))
        var found: (reader: FakeWorker, key: UInt64, holder: FakeWorker)?
        for _ in 0..<200 where found == nil {
            c.step(perWorker: 1)
            for w in ws {
                for t in w.queue {
                    for (k, h) in zip(t.inputKeys, t.inputHolders) where h != w.id {
                        if let hw = c.workerByID[h], hw.store[k] != nil, hw !== w { found = (w, k, hw) }
                    }
                }
            }
        }
        let (reader, key, holder) = try #require(found)
        reader.paused = true
        c.kill(holder)
        c.detectDeaths()
        let job = try #require(c.core.jobs[id])
        let t = Int(TaskKey.task(key))
        // Run the others until the lost input is done again.
        for _ in 0..<500 where job.state[t] != .done { c.step() }
        try #require(job.state[t] == .done)
        let newHolder = job.worker[t]
        let runsBefore = job.runs
        reader.paused = false
        c.step()
        // The reader's task failed (its fetch from the dead worker failed) but the recomputed
        // input is still done where it is.
        #expect(job.state[t] == .done && job.worker[t] == newHolder, "the recomputed value was thrown away")
        #expect(c.run(until: [id]))
        #expect(int(c.jobs[id]?.results.values.first) == Int64(64 * 65 / 2))
        _ = runsBefore
        expectClean(c)
    }
}
