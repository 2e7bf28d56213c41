import Testing
import TesseraCompute
import TesseraProtocol
@testable import TesseraScheduler

/// One client's heartbeat naming `jobs`, stamped with `epoch`.
func sendClientHeartbeat(_ c: FakeCluster, client: ConnectionID, jobs: [JobID], epoch: UInt64) {
    var h = Tessera_V1_ClientHeartbeat()
    h.jobIds = jobs
    var e = Envelope()
    e.clientHeartbeat = h
    e.epoch = epoch
    c.core.handleClient(client, e, frames: [], now: c.now)
}

/// Advances the clock by `seconds` in quarter seconds: live workers heartbeat and run what they
/// hold every turn, and `beating` clients name their unfinished jobs once a second.
func pass(_ c: FakeCluster, seconds: Double, beating: Set<ConnectionID>) {
    for i in 0..<Int(seconds * 4) {
        c.now += 250_000_000
        for w in c.liveWorkers where w.id != 0 { c.heartbeat(w) }
        if i % 4 == 3 {
            for client in beating.sorted() {
                let ids = c.jobs.filter { $0.value.owner == client && $0.value.finished == nil }.map(\.key).sorted()
                if !ids.isEmpty { sendClientHeartbeat(c, client: client, jobs: ids, epoch: c.core.config.epoch) }
            }
        }
        c.core.tick(now: c.now)
        // Unpaused workers run what they hold (and the scheduler flushes).
        c.step()
    }
}

@Suite("SchedulerCore: epochs, silent clients and task deadlines")
struct SchedulerLivenessTests {
    @Test("a job whose client falls silent is cancelled on every worker; a heartbeating client's runs on")
    func silentClientsJobsAreCancelled() throws {
        var config = SchedulerConfig()
        config.clientTimeoutNs = 10_000_000_000
        let c = FakeCluster(config: config)
        let ws = c.addWorkers(2)
        for w in ws { w.paused = true }
        let kept = try #require(c.submit(Workloads.independent(tasks: 20), client: 1000))
        let dropped = try #require(c.submit(Workloads.independent(tasks: 20), client: 2000))
        pass(c, seconds: 12, beating: [1000])
        let f = try #require(c.jobs[dropped]?.finished)
        #expect(f.state == .jobCancelled)
        #expect(f.error.contains("sent nothing for 10 s"), "\(f.error)")
        #expect(c.jobs[kept]?.finished == nil)
        for w in ws where w.setups[dropped] != nil {
            #expect(w.cancelMessages.contains { $0.jobIds.contains(dropped) }, "\(w.name) was not told to drop the job")
            #expect(!w.queue.contains { TaskKey.job($0.key) == dropped })
        }
        #expect(c.requestStatus()?.jobsAbandoned == 1)
        for w in ws { w.paused = false }
        #expect(c.run(until: [kept]))
        #expect(c.jobs[kept]?.finished?.state == .jobDone)
        #expect(c.jobs[kept]?.results.count == 20)
        expectClean(c)
    }

    @Test("a heartbeat or cancel naming jobs of an earlier epoch is answered: the scheduler restarted, the job was lost")
    func jobsOfAnEarlierEpochAreReportedLost() throws {
        var config = SchedulerConfig()
        config.epoch = 7
        config.firstJobID = 40_001
        let c = FakeCluster(config: config)
        _ = c.addWorkers(1)
        let current = try #require(c.submit(Workloads.independent(tasks: 3)))
        #expect(current == 40_001, "job ids start where the registry said")
        #expect(c.core.nextJobIDToIssue == 40_002)
        // Jobs 3 and 4 were accepted by the start of epoch 6.
        sendClientHeartbeat(c, client: 1000, jobs: [3, 4], epoch: 6)
        var cancel = Envelope()
        cancel.cancelJob.jobID = 5
        cancel.epoch = 6
        c.core.handleClient(1000, cancel, frames: [], now: c.now)
        c.flushAndProcess()
        let errors = c.clientErrors[1000] ?? []
        #expect(errors.map(\.jobID) == [3, 4, 5])
        for e in errors {
            #expect(e.code == .errorSchedulerRestarted)
            #expect(e.message.contains("the scheduler restarted (epoch 6 → 7)") && e.message.contains("was lost"), "\(e.message)")
        }
        // Everything the scheduler sends carries its epoch.
        #expect(c.lastFlush.allSatisfy { $0.envelope.epoch == 7 })
        // The current job is untouched.
        #expect(c.run(until: [current]))
        #expect(c.jobs[current]?.finished?.state == .jobDone)
    }

    @Test("a worker's reports from before its registration with this start are void")
    func workerMessagesOfAnotherEpochAreDropped() throws {
        var config = SchedulerConfig()
        config.epoch = 3
        let c = FakeCluster(config: config)
        let w = c.addWorker()
        w.paused = true
        let id = try #require(c.submit(Workloads.independent(tasks: 1)))
        let key = try #require(w.queue.first?.key)
        func report(epoch: UInt64) {
            var r = Tessera_V1_TaskReport()
            r.workerID = w.id
            r.doneKeys = [key]
            r.resultBytes = [8]
            r.computeUs = [1]
            var e = Envelope()
            e.taskReport = r
            e.epoch = epoch
            c.core.handleWorker(w.connection, e, frames: [], now: c.now)
            c.flushAndProcess()
        }
        // A completion the worker sent under epoch 2 (job ids of that start meant other jobs).
        report(epoch: 2)
        #expect(c.requestStatus()?.jobs.first { $0.jobID == id }?.tasksDone == 0)
        #expect(c.requestStatus()?.workers.first?.inFlight == 1)
        w.paused = false
        #expect(c.run(until: [id]))
        #expect(int(c.jobs[id]?.results[0]) == 1)
        // A connection the scheduler does not know is told to register (whatever its epoch).
        var h = Envelope()
        h.heartbeat = Tessera_V1_Heartbeat()
        h.epoch = 2
        c.core.handleWorker(999, h, frames: [], now: c.now)
        let out = c.core.flush(now: c.now)
        #expect(out.contains { $0.destination == .worker(999) && $0.envelope.error.code == .errorUnknownWorker })
    }

    @Test("a worker that heartbeats but never reports loses its tasks at their deadline; they finish elsewhere")
    func overdueTasksRunElsewhere() throws {
        var config = SchedulerConfig()
        config.taskDeadlineNs = 2_000_000_000
        let c = FakeCluster(config: config)
        let stuck = c.addWorker(name: "stuck")
        let healthy = c.addWorker(name: "healthy")
        stuck.paused = true
        healthy.paused = true
        let id = try #require(c.submit(Workloads.treeReduce(leaves: 40, fanIn: 4)))
        let heldByStuck = Set(stuck.queue.map(\.key))
        #expect(!heldByStuck.isEmpty)
        pass(c, seconds: 1, beating: [1000])
        #expect(c.requestStatus()?.tasksTimedOut == 0, "nothing is overdue before its deadline")
        healthy.paused = false
        pass(c, seconds: 2, beating: [1000])
        let cancelled = Set(stuck.cancelMessages.flatMap(\.taskKeys))
        #expect(cancelled == heldByStuck, "the stuck worker was told to forget exactly its overdue tasks")
        // It comes back to life: what it is given now, it runs.
        stuck.paused = false
        #expect(c.run(until: [id]))
        let f = try #require(c.jobs[id]?.finished)
        #expect(f.state == .jobDone)
        #expect(int(c.jobs[id]?.results.values.first) == Int64(40 * 41 / 2))
        #expect(c.requestStatus()?.tasksTimedOut == UInt64(heldByStuck.count))
        // None of them went back to the stuck worker.
        #expect(stuck.assignedKeys.filter { heldByStuck.contains($0) }.count == heldByStuck.count)
        expectClean(c)
    }

    @Test("a task past its deadline on every try fails its job with a clear error")
    func aTaskThatAlwaysOverrunsFailsTheJob() throws {
        var config = SchedulerConfig()
        config.taskDeadlineNs = 1_000_000_000
        let c = FakeCluster(config: config)
        let ws = c.addWorkers(2)
        for w in ws { w.paused = true }
        let id = try #require(c.submit(Workloads.independent(tasks: 1)))
        pass(c, seconds: 5, beating: [1000])
        let f = try #require(c.jobs[id]?.finished)
        #expect(f.state == .jobFailed)
        #expect(f.error.contains("task 0 (`inc`) ran past its deadline 3 times"), "\(f.error)")
        #expect(c.requestStatus()?.workers.allSatisfy { $0.inFlight == 0 } == true)
    }

    @Test("a job's own task deadline applies, and one out of bounds is refused naming the limit")
    func jobTaskTimeouts() throws {
        let c = FakeCluster()
        let w = c.addWorker()
        w.paused = true
        var s = Tessera_V1_SubmitJob()
        s.plan = Workloads.independent(tasks: 2)
        s.taskTimeoutS = 0.5
        let id = try #require(c.submit(s, frames: [], client: 1000, name: "short deadline"))
        // Past its half second, not yet past the default five minutes: both tasks were taken back.
        pass(c, seconds: 0.75, beating: [1000])
        #expect(c.requestStatus()?.tasksTimedOut == 2)
        #expect(c.jobs[id]?.finished == nil)
        for bad in [-1.0, 0.01, 1e9, .nan, .infinity] {
            s.taskTimeoutS = bad
            #expect(c.submit(s, frames: [], client: 1001, name: "bad") == nil)
            let err = try #require(c.clientErrors[1001]?.last)
            #expect(err.code == .errorOverLimit)
            #expect(err.message.contains("0.1…604800 s"), "\(err.message)")
        }
    }

    @Test("an interactive task's deadline is capped, whatever the job asked; past it on every try, its job fails naming the cap; a normal job's runs on")
    func interactiveTasksHaveAShortDeadline() throws {
        var config = SchedulerConfig()
        config.interactiveTaskDeadlineNs = 2_000_000_000
        let c = FakeCluster(config: config)
        let ws = c.addWorkers(2, threads: [2])
        for w in ws { w.paused = true }
        var s = Tessera_V1_SubmitJob()
        s.plan = Workloads.independent(tasks: 2)
        s.taskTimeoutS = 600
        s.priority = .priorityInteractive
        let quick = try #require(c.submit(s, frames: [], client: 1000, name: "interactive"))
        s.priority = .priorityNormal
        let normal = try #require(c.submit(s, frames: [], client: 1000, name: "normal"))
        pass(c, seconds: 1.5, beating: [1000])
        #expect(c.requestStatus()?.tasksTimedOut == 0, "overdue before its deadline")
        pass(c, seconds: 1, beating: [1000])
        #expect(c.requestStatus()?.tasksTimedOut == 2, "the interactive tasks were not taken back at the cap")
        #expect(c.jobs[quick]?.finished == nil, "failed at its first deadline: it is tried again elsewhere first")
        pass(c, seconds: 5, beating: [1000])
        let f = try #require(c.jobs[quick]?.finished)
        #expect(f.state == .jobFailed)
        #expect(f.error.contains("ran past its deadline 3 times") && f.error.contains("an interactive task may run 2 s at most"), "\(f.error)")
        // The normal job's own deadline (600 s) still holds.
        #expect(c.jobs[normal]?.finished == nil)
        for w in ws { w.paused = false }
        #expect(c.run(until: [normal]))
        #expect(c.jobs[normal]?.finished?.state == .jobDone)
    }

    @Test("an interactive task's cap runs from when its worker reports it begun; it may wait four caps to begin")
    func interactiveDeadlineRunsFromTheStart() throws {
        var config = SchedulerConfig()
        config.interactiveTaskDeadlineNs = 2_000_000_000
        let c = FakeCluster(config: config)
        let w = c.addWorker(threads: 2, reportsStarts: true)
        w.paused = true
        var s = Tessera_V1_SubmitJob()
        s.plan = Workloads.independent(tasks: 2)
        s.taskTimeoutS = 600
        s.priority = .priorityInteractive
        let quick = try #require(c.submit(s, frames: [], client: 1000, name: "interactive"))
        let keys = w.queue.map(\.key)
        #expect(keys.count == 2)
        // Queued on the worker behind others' tasks for a cap and a half: not overdue.
        pass(c, seconds: 3, beating: [1000])
        #expect(c.requestStatus()?.tasksTimedOut == 0, "timed out while it waited to begin")
        // The worker begins one (a start reported for a task the scheduler does not know is ignored).
        w.startsToReport = [keys[0], 0xDEAD_BEEF]
        pass(c, seconds: 1.5, beating: [1000])
        #expect(c.requestStatus()?.tasksTimedOut == 0, "overdue before the cap from its start")
        pass(c, seconds: 1, beating: [1000])
        #expect(c.requestStatus()?.tasksTimedOut == 1, "the task begun was not taken back at the cap from its start")
        // The other never begins: it is taken back after four caps (8 s) of waiting, not after
        // the job's 600 s.
        pass(c, seconds: 2, beating: [1000])
        #expect(c.requestStatus()?.tasksTimedOut == 1, "taken back before four caps of waiting")
        pass(c, seconds: 1, beating: [1000])
        #expect(c.requestStatus()?.tasksTimedOut == 2, "a task that never began waited past four caps")
        #expect(c.jobs[quick]?.finished == nil, "failed at its first deadline: it is tried again elsewhere first")
    }

    @Test("status counts a worker's registrations under one name as restarts")
    func restartsAreCounted() throws {
        let c = FakeCluster()
        _ = c.addWorker(name: "w-a")
        let again = c.addWorker(name: "w-a")
        _ = c.addWorker(name: "w-b")
        let s = try #require(c.requestStatus())
        #expect(s.workers.filter { $0.name == "w-a" }.map(\.restarts) == [1, 1])
        #expect(s.workers.first { $0.name == "w-b" }?.restarts == 0)
        _ = again
    }
}
