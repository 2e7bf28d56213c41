import Testing
import TesseraCompute
import TesseraProtocol
@testable import TesseraScheduler

/// Sharing the cluster, on the real state machine with fake workers and an injected clock:
/// classes first, fair share among users within a class, per-user limits.
struct SchedulerSharingTests {
    static func user(_ name: String, admin: Bool = false) -> ClientIdentity {
        ClientIdentity(user: name, isAdmin: admin, publicKey: "key-of-\(name)")
    }

    /// The user of each assigned key on `workers`, in assignment order (worker by worker).
    static func users(of keys: [UInt64], _ owner: [JobID: String]) -> [String] {
        keys.compactMap { owner[TaskKey.job($0)] }
    }

    @Test("ready tasks run by class: interactive, then normal, then batch, whatever the order they came in")
    func classesFirst() throws {
        var cfg = SchedulerConfig()
        cfg.interactiveInFlightPerThread = 2
        let c = FakeCluster(config: cfg)
        let w = c.addWorker(threads: 1)
        let batch = try #require(c.submit(Workloads.independent(tasks: 30), priority: .batch, as: Self.user("ann")))
        // The worker is at its limit (2) with batch tasks.
        #expect(w.queue.count == 2)
        let normal = try #require(c.submit(Workloads.independent(tasks: 6), priority: .normal, as: Self.user("ann")))
        #expect(w.queue.count == 2)
        let interactive = try #require(c.submit(Workloads.independent(tasks: 5), priority: .interactive, as: Self.user("bob")))
        // Past its limit, the worker still takes interactive tasks: two per thread.
        #expect(w.queue.count == 4)
        #expect(w.queue.suffix(2).allSatisfy { TaskKey.job($0.key) == interactive })
        #expect(w.setups[interactive]?.priority == .priorityInteractive)
        #expect(w.setups[batch]?.priority == .priorityBatch)
        let before = w.assignedKeys.count
        #expect(c.run(until: [batch, normal, interactive], perWorker: 1))
        let rank: [JobID: Int] = [interactive: 0, normal: 1, batch: 2]
        let order = w.assignedKeys[before...].map { rank[TaskKey.job($0)]! }
        #expect(order == order.sorted(), "after the interactive job came, assignments went by class: \(order)")
        #expect(order.filter { $0 == 0 }.count == 5 - 2)
        #expect(order.filter { $0 == 1 }.count == 6)
        expectClean(c)
    }

    @Test("interactive tasks are sent at once even when the worker holds more batch tasks than its limit, after the limit fell")
    func interactiveRoomOfItsOwn() throws {
        var cfg = SchedulerConfig()
        cfg.interactiveInFlightPerThread = 2
        let c = FakeCluster(config: cfg)
        let w = c.addWorker(threads: 1)
        // The batch job's first tasks are tiny: once a few dozen have reported, the worker's limit
        // for it rises to its most (64 per thread).
        c.computeMicros = 10
        let batch = try #require(c.submit(Workloads.independent(tasks: 500), priority: .batch, as: Self.user("ann")))
        for _ in 0..<60 { c.step(perWorker: 1) }
        let sent = w.queue.count
        #expect(sent > 20, "with tiny tasks the worker takes many at once (\(sent))")
        // Then they report long times: the limit falls to two, far below what is in flight.
        c.computeMicros = 200_000
        for _ in 0..<5 { c.step(perWorker: 1) }
        let job = try #require(c.core.jobs[batch])
        let limit = c.core.workers[w.id]!.inFlightLimit(cfg, for: job)
        #expect(limit == 2)
        #expect(w.queue.count > 10)
        let interactive = try #require(c.submit(Workloads.independent(tasks: 5), priority: .interactive, as: Self.user("bob")))
        // They go at once, two per thread, past the batch tasks in flight (the worker runs them first).
        #expect(w.queue.filter { TaskKey.job($0.key) == interactive }.count == 2)
        #expect(c.run(until: [batch, interactive], perWorker: 1))
        expectClean(c)
    }

    @Test("interactive tasks in flight (none queued) do not keep a new job's tasks from starting: they run on threads of their own")
    func interactiveTrafficDoesNotBlockScans() throws {
        var cfg = SchedulerConfig()
        cfg.interactiveInFlightPerThread = 8
        let c = FakeCluster(config: cfg)
        let w = c.addWorker(threads: 1)
        let cones = try #require(c.submit(Workloads.independent(tasks: 8), priority: .interactive, as: Self.user("bob")))
        #expect(w.queue.count == 8)
        let scan = try #require(c.submit(Workloads.independent(tasks: 10), priority: .normal, as: Self.user("ann")))
        // Two per thread for the new job, beside the eight interactive ones.
        #expect(w.queue.filter { TaskKey.job($0.key) == scan }.count == 2)
        #expect(c.run(until: [cones, scan], perWorker: 1))
        expectClean(c)
    }

    @Test("a new job's tasks go a few at a time to a worker that just ran tiny tasks, until they report their own time")
    func newJobsStartSlow() throws {
        let c = FakeCluster(config: SchedulerConfig())
        let w = c.addWorker(threads: 2)
        c.computeMicros = 10
        let tiny = try #require(c.submit(Workloads.independent(tasks: 400), priority: .normal, as: Self.user("ann")))
        #expect(c.run(until: [tiny]))
        let workerLimit = c.core.workers[w.id]!.inFlightLimit(c.core.config)
        #expect(workerLimit == 128, "the worker's own limit is at its most")
        // A new job of long tasks: two per thread until one reports, not 64.
        c.computeMicros = 100_000
        let long = try #require(c.submit(Workloads.independent(tasks: 100), priority: .normal, as: Self.user("ann")))
        #expect(w.queue.count == 4)
        c.step(perWorker: 1)
        #expect(w.queue.count == 4, "one reported at 100 ms: still two per thread")
        #expect(c.run(until: [long], perWorker: 1))
        // A tiny job after it gets its own measure: once a few dozen have reported, many at once.
        c.computeMicros = 10
        let next = try #require(c.submit(Workloads.independent(tasks: 600), priority: .normal, as: Self.user("bob")))
        #expect(w.queue.count == 4)
        for _ in 0..<30 { c.step(perWorker: 2) }
        let nextSent = w.queue.filter { TaskKey.job($0.key) == next }.count
        #expect(nextSent > 20)
        #expect(c.run(until: [next]))
        expectClean(c)
    }

    @Test("interactive tasks on data two workers hold go to both, by interactive load, though one has far more batch work")
    func interactiveSpreadByInteractiveLoad() throws {
        let c = FakeCluster(config: SchedulerConfig())
        let onlyA = "survey/1/order3-pix1", both = "survey/1/order3-pix2"
        let a = c.addWorker(threads: 1, holdings: [onlyA, both])
        let b = c.addWorker(threads: 1, holdings: [both])
        /// `n` independent tasks, each reading shard `key`, in class `priority`.
        func scans(_ n: Int, of key: String, _ priority: PriorityClass, as user: String) -> JobID? {
            var g = TaskGraph(operators: ["noop"], dataKeys: [key])
            for _ in 0..<n { g.outputs.append(g.add(operatorIndex: 0)) }
            g.dataKey = Array(repeating: 1, count: n)
            let (spec, frames) = g.encoded()
            var s = Tessera_V1_SubmitJob()
            s.graph = spec
            s.priority = priority.wire
            return c.submit(s, frames: frames, client: 1000, name: "\(user)-scans", identity: Self.user(user))
        }
        // Batch work only A can do: A has far more queued and in flight than B.
        let batch = try #require(scans(300, of: onlyA, .batch, as: "ann"))
        #expect(c.core.workers[a.id]!.queuedCount > 100)
        let interactive = try #require(scans(30, of: both, .interactive, as: "bob"))
        /// The job's tasks on `w`: sent to it, or queued for it in the scheduler.
        func placed(on w: FakeWorker) -> Int {
            w.queue.filter { TaskKey.job($0.key) == interactive }.count
                + (c.core.workers[w.id]?.pinned.allKeys.filter { TaskKey.job($0) == interactive }.count ?? 0)
        }
        let onA = placed(on: a), onB = placed(on: b)
        // Each worker's foreground threads run interactive tasks ahead of its batch ones: they are
        // spread by that load (one thread each: half each, but for the shard's home keeping up
        // to eight more), not all sent to the worker without batch work.
        #expect(onA + onB == 30 && abs(onA - onB) <= 9, "interactive tasks on A \(onA), on B \(onB)")
        #expect(c.run(until: [batch, interactive], perWorker: 1))
        expectClean(c)
    }

    @Test("a shard both workers hold goes to the same one every time while loads are even, and to the other when its home is busy")
    func replicatedShardsKeepTheirHome() throws {
        let c = FakeCluster(config: SchedulerConfig())
        let keys = (0..<16).map { "survey/1/order3-pix\($0)" }
        let a = c.addWorker(name: "worker-a", threads: 2, holdings: keys)
        let onlyB = "survey/1/order3-pix99"
        let b = c.addWorker(name: "worker-b", threads: 1, holdings: keys + [onlyB])
        func scan(_ key: String, _ priority: PriorityClass) -> JobID? {
            var g = TaskGraph(operators: ["noop"], dataKeys: [key])
            g.outputs.append(g.add(operatorIndex: 0))
            g.dataKey = [1]
            let (spec, frames) = g.encoded()
            var s = Tessera_V1_SubmitJob()
            s.graph = spec
            s.priority = priority.wire
            return c.submit(s, frames: frames, client: 1000, name: "scan \(key)", identity: Self.user("ann"))
        }
        /// The worker each key's one-task job was sent to, one job at a time on an idle cluster.
        func placements(_ priority: PriorityClass = .interactive) throws -> [String: WorkerID] {
            var out: [String: WorkerID] = [:]
            for k in keys {
                let j = try #require(scan(k, priority))
                out[k] = a.queue.contains { TaskKey.job($0.key) == j } ? a.id : b.queue.contains { TaskKey.job($0.key) == j } ? b.id : nil
                #expect(c.run(until: [j]))
            }
            return out
        }
        let first = try placements()
        #expect(first.count == keys.count)
        // Both are some shards' home (16 keys: all on one would be a 2^-15 chance per name pair).
        #expect(Set(first.values) == [a.id, b.id])
        #expect(try placements() == first)
        #expect(try placements(.batch) == first)
        // A busy home: B has ten interactive tasks on a shard only it holds, more than the
        // interactive slack (eight per thread) beyond A, so one of B's shards goes to A.
        let busy = (0..<10).compactMap { _ in scan(onlyB, .interactive) }
        #expect(busy.count == 10)
        let bKey = try #require(keys.first { first[$0] == b.id })
        let moved = try #require(scan(bKey, .interactive))
        #expect(a.queue.contains { TaskKey.job($0.key) == moved })
        #expect(c.run(until: busy + [moved]))
        expectClean(c)
    }

    @Test("fair share: two users with the same work get half the worker time each while both wait")
    func twoUsersHalfEach() throws {
        let c = FakeCluster()
        let ws = c.addWorkers(2, threads: [1])
        var owner: [JobID: String] = [:]
        var ids: [JobID] = []
        // Ann submits all her jobs first; Bob's come after, to the same queues.
        for u in ["ann", "bob"] {
            for _ in 0..<10 {
                let id = try #require(c.submit(Workloads.independent(tasks: 20), priority: .batch, as: Self.user(u)))
                owner[id] = u
                ids.append(id)
            }
        }
        #expect(c.run(until: ids, perWorker: 1))
        // Every assignment in time order: a step assigns to each worker in turn.
        let all = ws.flatMap { w in w.assignedKeys.enumerated().map { (pos: $0.offset, worker: w.id, key: $0.element) } }
            .sorted { ($0.pos, $0.worker) < ($1.pos, $1.worker) }
        let firstHalf = Self.users(of: all.prefix(200).map(\.key), owner)
        let ann = firstHalf.filter { $0 == "ann" }.count
        #expect(abs(ann - 100) <= 10, "ann had \(ann) of the first 200 task runs")
        let s = try #require(c.requestStatus(identity: .local))
        let shares = Dictionary(uniqueKeysWithValues: s.users.map { ($0.user, $0.share) })
        #expect(abs((shares["ann"] ?? 0) - 0.5) < 0.05)
        #expect(abs((shares["bob"] ?? 0) - 0.5) < 0.05)
        expectClean(c)
    }

    @Test("fair share remembers recent use: a newcomer goes first until even, and old use decays with the half-life")
    func recentUseCounts() throws {
        for forgotten in [false, true] {
            var cfg = SchedulerConfig()
            cfg.fairShareHalfLifeNs = 1_000_000_000
            // No client is timed out while the clock jumps ahead.
            cfg.clientTimeoutNs = 1_000_000_000_000
            let c = FakeCluster(config: cfg)
            let w = c.addWorker(threads: 1)
            let early = try #require(c.submit(Workloads.independent(tasks: 100), priority: .normal, as: Self.user("ann")))
            #expect(c.run(until: [early], perWorker: 1))
            // 100 tasks of 1 ms: 0.1 s of ann's worker time, then 0 or 20 half-lives pass.
            if forgotten { c.now += 20_000_000_000 }
            let a = try #require(c.submit(Workloads.independent(tasks: 100), priority: .normal, as: Self.user("ann")))
            let b = try #require(c.submit(Workloads.independent(tasks: 100), priority: .normal, as: Self.user("bob")))
            let before = w.assignedKeys.count
            #expect(c.run(until: [a, b], perWorker: 1))
            let next = Self.users(of: Array(w.assignedKeys[before...].prefix(60)), [a: "ann", b: "bob"])
            let bob = next.filter { $0 == "bob" }.count
            if forgotten {
                #expect(abs(bob - 30) <= 4, "ann's old use is forgotten: bob had \(bob) of 60")
            } else {
                // Ann's two tasks already in flight were handed out before bob came.
                #expect(bob >= 55, "bob, who used nothing, goes first: \(bob) of 60")
            }
            expectClean(c)
        }
    }

    @Test("weights: a user of weight 3 gets three quarters beside one of weight 1")
    func weights() throws {
        var cfg = SchedulerConfig()
        cfg.userWeights = ["ann": 3]
        let c = FakeCluster(config: cfg)
        let w = c.addWorker(threads: 1)
        let a = try #require(c.submit(Workloads.independent(tasks: 300), priority: .batch, as: Self.user("ann")))
        let b = try #require(c.submit(Workloads.independent(tasks: 300), priority: .batch, as: Self.user("bob")))
        #expect(c.run(until: [a, b], perWorker: 1))
        let first = Self.users(of: Array(w.assignedKeys.prefix(200)), [a: "ann", b: "bob"])
        let ann = first.filter { $0 == "ann" }.count
        #expect(abs(ann - 150) <= 10, "ann had \(ann) of 200")
        expectClean(c)
    }

    @Test("a class comes before fair share: a heavy user's interactive task goes before a light user's batch")
    func classBeforeShare() throws {
        let c = FakeCluster()
        let w = c.addWorker(threads: 1)
        let heavy = try #require(c.submit(Workloads.independent(tasks: 50), priority: .normal, as: Self.user("ann")))
        #expect(c.run(until: [heavy], perWorker: 1))
        let batch = try #require(c.submit(Workloads.independent(tasks: 20), priority: .batch, as: Self.user("bob")))
        let inter = try #require(c.submit(Workloads.independent(tasks: 10), priority: .interactive, as: Self.user("ann")))
        let before = w.assignedKeys.count
        #expect(c.run(until: [batch, inter], perWorker: 1))
        let order = w.assignedKeys[before...].map { TaskKey.job($0) == inter ? 0 : 1 }
        #expect(order == order.sorted(), "\(order)")
        expectClean(c)
    }

    @Test("a user's jobs finish one after another, oldest first, not all at the end")
    func oldestJobFirst() throws {
        let c = FakeCluster()
        c.addWorkers(2, threads: [1]).forEach { _ in }
        let ids = try (0..<5).map { _ in try #require(c.submit(Workloads.treeReduce(leaves: 24, fanIn: 4), priority: .batch, as: Self.user("ann"))) }
        var finishedAt: [JobID: Int] = [:]
        for step in 0..<10_000 where finishedAt.count < ids.count {
            c.step(perWorker: 1)
            for id in ids where finishedAt[id] == nil && c.jobs[id]?.finished != nil { finishedAt[id] = step }
        }
        let order = ids.map { finishedAt[$0] ?? .max }
        #expect(order == order.sorted(), "finish steps \(order)")
        // Each job's 31 tasks take about 16 steps on two workers: the first is done near the
        // start, not when the last is.
        #expect(order[0] < order[4] / 3, "finish steps \(order)")
        for id in ids { #expect(int(c.jobs[id]?.results.values.first) == Int64(24 * 25 / 2)) }
        expectClean(c)
    }

    @Test("per-user limit on running jobs; submitting for another user needs an admin key")
    func userLimits() throws {
        var cfg = SchedulerConfig()
        cfg.maxJobsPerUser = 2
        let c = FakeCluster(config: cfg)
        c.addWorker(threads: 1)
        let ann = Self.user("ann")
        let j1 = try #require(c.submit(Workloads.independent(tasks: 5), priority: .normal, as: ann))
        _ = try #require(c.submit(Workloads.independent(tasks: 5), priority: .normal, as: ann))
        #expect(c.submit(Workloads.independent(tasks: 5), priority: .normal, as: ann) == nil)
        let refusal = try #require(c.clientErrors[1000]?.last)
        #expect(refusal.code == .errorOverBudget)
        #expect(refusal.message.contains("user `ann` has 2 jobs running"))
        // Interactive work that is not a catalog question is bounded by its size.
        #expect(c.submit(Workloads.independent(tasks: 1_001), priority: .interactive, as: Self.user("dan")) == nil)
        #expect(c.clientErrors[1000]?.last?.code == .errorOverBudget)
        #expect(c.clientErrors[1000]?.last?.message.contains("at most 1000 tasks") == true)
        // Bob is not held back by ann's limit.
        _ = try #require(c.submit(Workloads.independent(tasks: 5), priority: .normal, as: Self.user("bob")))
        #expect(c.run(until: [j1]))
        _ = try #require(c.submit(Workloads.independent(tasks: 5), priority: .normal, as: ann))

        // On behalf of another user: refused for a user's key, taken from an admin's (a gateway).
        #expect(c.submit(Workloads.independent(tasks: 1), priority: .interactive, as: ann, onBehalfOf: "carol") == nil)
        #expect(c.clientErrors[1000]?.last?.code == .errorNotAllowed)
        let gateway = Self.user("gateway", admin: true)
        let forCarol = try #require(c.submit(Workloads.independent(tasks: 1), priority: .interactive, as: gateway, onBehalfOf: "carol"))
        #expect(c.jobs[forCarol]?.accepted.user == "carol")
        #expect(c.jobs[forCarol]?.accepted.priority == .priorityInteractive)
        #expect(c.submit(Workloads.independent(tasks: 1), priority: .normal, as: gateway, onBehalfOf: "no spaces") == nil)
        #expect(c.clientErrors[1000]?.last?.code == .errorOverLimit)
    }

    @Test("status shows each job's class and user, and each user's share")
    func status() throws {
        let c = FakeCluster()
        c.addWorker(threads: 1)
        let a = try #require(c.submit(Workloads.independent(tasks: 40), priority: .batch, as: Self.user("ann")))
        c.step(perWorker: 1)
        let s = try #require(c.requestStatus(identity: Self.user("ann")))
        let job = try #require(s.jobs.first { $0.jobID == a })
        #expect(job.priority == .priorityBatch)
        #expect(job.user == "ann")
        let share = try #require(s.users.first { $0.user == "ann" })
        #expect(share.share == 1)
        #expect(share.jobs == 1)
        #expect(share.usageSeconds > 0)
        // Another user sees only their own line.
        let other = try #require(c.requestStatus(client: 1001, identity: Self.user("bob")))
        #expect(other.users.allSatisfy { $0.user == "bob" })

        // A gateway (an admin key) asks as the user it serves: that user's view, an admin's
        // when the access list makes them one.
        let gateway = Self.user("gateway", admin: true)
        let asAnn = try #require(c.requestStatus(client: 1002, identity: gateway, onBehalfOf: "ann"))
        #expect(asAnn.jobs.contains { $0.jobID == a })
        let asBob = try #require(c.requestStatus(client: 1003, identity: gateway, onBehalfOf: "bob"))
        #expect(!asBob.jobs.contains { $0.jobID == a })
        c.core.adminUsers = ["root"]
        #expect(try #require(c.requestStatus(client: 1004, identity: gateway, onBehalfOf: "root")).jobs.contains { $0.jobID == a })
        // Fails closed: a user's key asking for another, or a name that is no user's, sees no one's jobs (not its own).
        #expect(try #require(c.requestStatus(client: 1005, identity: Self.user("ann"), onBehalfOf: "bob")).jobs.isEmpty)
        #expect(try #require(c.requestStatus(client: 1006, identity: gateway, onBehalfOf: "no spaces")).jobs.isEmpty)
    }
}

extension FakeCluster {
    /// Submits a graph plan in class `priority` as `identity`'s user (or for `onBehalfOf`).
    func submit(_ plan: Tessera_V1_Plan, priority: PriorityClass, as identity: ClientIdentity, onBehalfOf: String = "",
                client: ConnectionID = 1000) -> JobID? {
        var s = Tessera_V1_SubmitJob()
        s.plan = plan
        s.priority = priority.wire
        s.onBehalfOf = onBehalfOf
        return submit(s, frames: [], client: client, name: "\(identity.user)-\(priority)", identity: identity)
    }
}
