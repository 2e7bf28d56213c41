import struct Foundation.Data
import DequeModule
import TesseraCompute
import TesseraProtocol
import TesseraStorage

/// Assignment flags on the wire (`AssignTasks.flags`).
public enum AssignFlags {
    /// Send the value to the scheduler, which streams it to the client.
    public static let output: UInt32 = 1
    /// Keep the value: other tasks will read it.
    public static let keep: UInt32 = 2
    /// Keep the value for the client to take from this worker (a job with direct results).
    public static let clientTakes: UInt32 = 4
}

extension SchedulerCore {
    // MARK: - Ready tasks and placement

    /// Queues a task whose inputs are all available, where it should run.
    mutating func makeReady(_ job: JobRecord, _ t: Int) {
        job.state[t] = .ready
        let key = TaskKey.make(job: job.id, task: UInt32(t))
        if job.isSnapshot(t) {
            // A progressive snapshot goes ahead of queued shard scans: it is small, and waiting
            // behind the scans it reports on would defeat its purpose.
            snapshotsReady.append(key)
            return
        }
        if let dk = job.dataKeyName(t) {
            // Data lives on local disks: the task must run on a worker that holds it — after a
            // failure, preferably another one (its copy may be damaged where the other is not).
            let live = (holders[dk] ?? []).compactMap { workers[$0] }
            let untried = job.failedOn[t].map { failed in live.filter { !failed.contains($0.id) } } ?? live
            var candidates = untried.isEmpty ? live : untried
            let inputs = job.inputRange(t)
            if !inputs.isEmpty {
                // A data task that also reads other tasks' values (a cross-match reads right
                // shards' rows) goes to a holder that has some of them, if any does.
                let near = candidates.filter { w in inputs.contains { job.worker[Int(job.inputs[$0])] == w.id } }
                if !near.isEmpty { candidates = near }
            }
            guard let least = candidates.min(by: { placedBefore($0, $1, job.priority) }) else {
                finish(job, .jobFailed, error: "no live worker holds data `\(dk)` (needed by task \(t))", now: lastNow)
                return
            }
            // The key's home unless it is busier than the least busy holder by more than the slack.
            var best = least
            if let home = Self.home(of: dk, among: candidates), withinSlack(home, of: least, job.priority) {
                best = home
            }
            best.pinned.append(key, job.lane)
            return
        }
        if let failed = job.failedOn[t] {
            // A retry after a failure or a deadline goes to a worker it has not failed on, if any.
            let others = workerOrder.compactMap { workers[$0] }.filter { !failed.contains($0.id) }
            if let best = others.min(by: { ($0.inFlight + $0.queuedCount) < ($1.inFlight + $1.queuedCount) }) {
                best.preferred.append(key, job.lane)
                return
            }
        }
        let range = job.inputRange(t)
        if !range.isEmpty {
            // Go where most input bytes already are; ties go to the first input's holder.
            var bestWorker: WorkerID = 0
            var bestBytes: UInt64 = 0
            if range.count == 1 {
                bestWorker = job.worker[Int(job.inputs[range.lowerBound])]
            } else {
                var bytes: [WorkerID: UInt64] = [:]
                for j in range {
                    let i = Int(job.inputs[j])
                    let b = bytes[job.worker[i], default: 0] + UInt64(job.resultBytes[i]) + 1
                    bytes[job.worker[i]] = b
                    if b > bestBytes { bestBytes = b; bestWorker = job.worker[i] }
                }
            }
            if let w = workers[bestWorker] {
                w.preferred.append(key, job.lane)
                return
            }
        }
        readyAnywhere.append(key, job.lane)
    }

    /// The holder a data key's tasks go to while it is not much busier than the others: the same
    /// one every time for the same holders (rendezvous hashing of the key and the workers'
    /// names), so that each worker's cache of decoded columns holds its share of replicated data
    /// instead of all of it (measured: with every shard on both workers and tasks placed by
    /// queue length alone, each worker decoded every shard and the caches thrashed), and a
    /// shard's concurrent scans meet in one shared pass. Idle workers still take tasks from
    /// busy ones (``stealTask(for:)``).
    static func home(of dataKey: String, among holders: [WorkerRecord]) -> WorkerRecord? {
        let key = Array(dataKey.utf8) + [0]
        return holders.map { (XXHash64.hash(key + Array($0.name.utf8)), $0) }.max { $0.0 < $1.0 }?.1
    }

    /// Whether `home` has at most `slack` tasks per thread more than `least`, counting work as
    /// ``placedBefore(_:_:_:)`` weighs it (an interactive task counts interactive work only).
    /// The slack is one task per thread, and eight for interactive tasks: those are cone
    /// searches of a millisecond, and one sent past its home reads its row group cold on the
    /// other worker, which costs several of them (measured: bursts of fifty cones with a slack
    /// of one had p95 72-135 ms a round in `bench mixed`).
    func withinSlack(_ home: WorkerRecord, of least: WorkerRecord, _ priority: PriorityClass) -> Bool {
        func work(_ w: WorkerRecord) -> Int {
            priority == .interactive ? w.interactive.count + w.pinned.count(of: .interactive) : w.inFlight + w.queuedCount
        }
        let slack = priority == .interactive ? 8 : 1
        let th = max(1, home.threads), tl = max(1, least.threads)
        // work(home)/th ≤ work(least)/tl + slack, without rounding.
        return work(home) * tl <= work(least) * th + slack * th * tl
    }

    /// Whether a data task of class `priority` goes to holder `a` rather than `b`: the one with
    /// less queued and in flight. An interactive task counts interactive work first (per
    /// thread): a worker runs it ahead of its batch tasks, on threads of their own, so the batch
    /// work a worker has is no reason to send every cone to the other one.
    func placedBefore(_ a: WorkerRecord, _ b: WorkerRecord, _ priority: PriorityClass) -> Bool {
        if priority == .interactive {
            let ia = (a.interactive.count + a.pinned.count(of: .interactive)) * b.threads
            let ib = (b.interactive.count + b.pinned.count(of: .interactive)) * a.threads
            if ia != ib { return ia < ib }
        }
        return a.inFlight + a.queuedCount < b.inFlight + b.queuedCount
    }

    /// Whether lane `a` is served before lane `b`: the more urgent class, then the user with
    /// less recent worker time for their weight (fair share), then the user seen first; a
    /// user's own jobs oldest first.
    func serves(_ a: Lane, before b: Lane) -> Bool {
        if a.priority != b.priority { return a.priority.rawValue < b.priority.rawValue }
        if a.user == b.user { return a.job < b.job }
        let ra = fairShare.rank(a.user), rb = fairShare.rank(b.user)
        return ra != rb ? ra < rb : a.user < b.user
    }

    /// The lane served first among those with queued keys in `q`, down to class `lowest`.
    @inline(__always) func bestLane(_ q: ReadyLanes, lowest: PriorityClass, better than: Lane?) -> Lane? {
        var best = than
        for e in q.entries where !e.keys.isEmpty && e.lane.priority.rawValue <= lowest.rawValue {
            if let b = best, !serves(e.lane, before: b) { continue }
            best = e.lane
        }
        return best
    }

    /// The lane served first among a worker's own queues and the shared one.
    func bestLane(for w: WorkerRecord, lowest: PriorityClass) -> Lane? {
        bestLane(readyAnywhere, lowest: lowest, better: bestLane(w.preferred, lowest: lowest, better: bestLane(w.pinned, lowest: lowest, better: nil)))
    }

    /// The job and task of a queued key, if it is still ready (queues keep stale keys of cancelled
    /// jobs and re-queued tasks; they are skipped here rather than searched for and removed).
    func readyTask(_ key: UInt64) -> (JobRecord, Int)? {
        guard let job = jobs[TaskKey.job(key)] else { return nil }
        let t = Int(TaskKey.task(key))
        guard t < job.taskCount, job.state[t] == .ready else { return nil }
        return (job, t)
    }

    /// A queued key's task if it may run now: ready, and its job not held back for a client
    /// that is not reading (then it is parked with its job until the client reads).
    mutating func runnable(_ key: UInt64) -> (JobRecord, Int)? {
        guard let (job, t) = readyTask(key) else { return nil }
        if isHeldBack(job) {
            job.parked.append(key)
            return nil
        }
        return (job, t)
    }

    /// The next task for `w` from its own queues and the shared one: the best lane first
    /// (class, then fair share); within a lane, tasks that must run here, then those that
    /// prefer it, then those that may run anywhere. Only while the worker has room for that
    /// lane's job (``WorkerRecord/inFlightLimit(_:for:)``, and interactive tasks' room of their
    /// own); progressive snapshots first, while it is below its own limit.
    mutating func nextOwnTask(_ w: WorkerRecord, limit: Int) -> (JobRecord, Int)? {
        if w.inFlight < limit {
            while let k = snapshotsReady.popFirst() { if let r = runnable(k) { return r } }
        }
        // Each turn pops one key, so this ends; stale keys are dropped as they come.
        while let lane = bestLane(for: w, lowest: .batch) {
            // The worker is full for this job's tasks, by their own duration: it waits (the order
            // of lanes is kept, classes first; the next turn tries again).
            if let job = jobs[lane.job], !w.hasRoom(for: job, config) { return nil }
            let key = w.pinned.popFirst(lane) ?? w.preferred.popFirst(lane) ?? readyAnywhere.popFirst(lane)
            if let key, let r = runnable(key) { return r }
        }
        return nil
    }

    /// Lanes of `q` with queued keys, the one served first first.
    func lanesInOrder(_ q: ReadyLanes) -> [Lane] {
        q.lanes.sorted { serves($0, before: $1) }
    }

    /// An idle worker takes work queued for a busy one: first tasks that merely prefer it, then
    /// data tasks whose data the idle worker holds too (replicas are for this as much as for
    /// failures: shards differ in size, and placing by queue length alone leaves one worker with
    /// the long tail).
    mutating func stealTask(for w: WorkerRecord) -> (JobRecord, Int)? {
        for id in workerOrder where id != w.id {
            guard let other = workers[id], other.isBusy(config) else { continue }
            for lane in lanesInOrder(other.preferred) {
                var skipped: [UInt64] = []
                defer { other.preferred.append(contentsOf: skipped.reversed(), lane) }
                while let k = other.preferred.popLast(lane) {
                    guard let (job, t) = runnable(k) else { continue }
                    // Not back to a worker this task already failed on.
                    if job.failedOn[t]?.contains(w.id) == true { skipped.append(k); continue }
                    return (job, t)
                }
            }
        }
        for id in workerOrder where id != w.id {
            guard let other = workers[id], other.isBusy(config), !other.pinned.isEmpty else { continue }
            for lane in lanesInOrder(other.pinned) {
                // From the back (the work it would reach last), looking a bounded way in.
                let taken = other.pinned.scanBack(lane, limit: 64) { key in
                    guard let (job, t) = readyTask(key) else { return .drop }
                    // Never back to a worker where this task already failed: its copy may be the bad one.
                    if let dk = job.dataKeyName(t), holders[dk]?.contains(w.id) == true, job.failedOn[t]?.contains(w.id) != true {
                        return .take
                    }
                    return .keep
                }
                if let taken, let r = runnable(taken) { return r }
            }
        }
        return nil
    }

    /// Hands ready tasks to workers with room: each takes its own queue and the shared one in
    /// turn (round robin keeps load even); then idle workers take tasks that merely prefer a busy one.
    mutating func place() {
        if workers.isEmpty { return }
        var limits: [WorkerID: Int] = [:]
        for w in workers.values { limits[w.id] = w.inFlightLimit(config) }
        for stealing in [false, true] {
            var progress = true
            while progress {
                progress = false
                for id in workerOrder {
                    guard let w = workers[id] else { continue }
                    // What it takes of its own is limited job by job; it takes work queued for a
                    // busy worker only while its own threads are not all busy (``WorkerRecord/isBusy``).
                    let limit = limits[id]!
                    if stealing && (w.inFlight >= limit || w.isBusy(config)) { continue }
                    let next = stealing ? stealTask(for: w) : nextOwnTask(w, limit: limit)
                    guard let (job, t) = next else { continue }
                    assign(job, t, to: w)
                    progress = true
                }
            }
        }
    }

    /// Sends a task to a worker, and with it the pipeline that follows: while the task's only
    /// dependent reads nothing else, that dependent goes to the same worker at once, to run there
    /// as soon as its input is done — a chain of per-partition steps then needs no round trip
    /// per step (within the worker's in-flight limit).
    mutating func assign(_ job: JobRecord, _ t: Int, to w: WorkerRecord) {
        assignOne(job, t, to: w)
        if config.maxPassRiders > 0, let dk = job.dataKeyName(t), config.sharedPassOperators.contains(job.operatorName(t)) {
            addRiders(dataKey: dk, operatorName: job.operatorName(t), with: job, to: w)
        }
        var cur = t
        while w.hasRoom(for: job, config) {
            let deps = job.dependentRange(cur)
            guard deps.count == 1 else { break }
            let d = Int(job.dependents[deps.lowerBound])
            guard job.state[d] == .waiting, job.inputRange(d).count == 1, job.dataKeyName(d) == nil else { break }
            assignOne(job, d, to: w)
            cur = d
        }
    }

    /// Shared scans (convoy scheduling): other jobs' ready scans of the same shard, in the same
    /// class, go to the worker with this one (from its own queue, then from those of the
    /// shard's other holders), so that it answers them all in one pass over the shard. One per
    /// job, at most `maxPassRiders`, never to a worker a task already failed on.
    ///
    /// Each lane is searched only near its front (`riderWindow` keys), and the whole search is
    /// bounded (`riderSearchBudget` keys), so an assignment costs the same with a thousand jobs
    /// queued: jobs that scan one dataset take its shards in the same order, and a job whose
    /// scan of this shard rode along before stays level with the others.
    mutating func addRiders(dataKey dk: String, operatorName op: String, with job: JobRecord, to w: WorkerRecord) {
        var room = config.maxPassRiders
        var budget = Self.riderSearchBudget
        let queues = [w] + (holders[dk] ?? []).filter { $0 != w.id }.compactMap { workers[$0] }
        for q in queues {
            for lane in Array(q.pinned.lanes) where lane.priority == job.priority && lane.job != job.id {
                if room == 0 || budget <= 0 { return }
                budget -= Self.riderWindow
                let taken = q.pinned.scanFront(lane, limit: Self.riderWindow) { key in
                    guard let (other, i) = readyTask(key) else { return .drop }
                    guard other.dataKeyName(i) == dk, other.operatorName(i) == op, other.failedOn[i]?.contains(w.id) != true else { return .keep }
                    return .take
                }
                guard let taken, let (other, i) = runnable(taken) else { continue }
                assignOne(other, i, to: w)
                w.riders.insert(taken)
                room -= 1
            }
        }
    }

    /// Keys looked at per lane, and in all, when searching for riders.
    static let riderWindow = 16
    static let riderSearchBudget = 1_024

    mutating func assignOne(_ job: JobRecord, _ t: Int, to w: WorkerRecord) {
        job.state[t] = .running
        job.worker[t] = w.id
        job.runs += 1
        job.runCount[t] &+= 1
        // Fair share counts worker time from the moment a task is handed out (an estimate,
        // corrected when it reports), so that users alternate while their tasks are in flight.
        // At least a microsecond, so that users never tie at zero.
        job.charged[t] = max(1, w.meanTaskMicros)
        job.chargedAt[t] = lastNow
        fairShare.charge(job.lane.user, micros: job.charged[t], now: lastNow)
        let key = TaskKey.make(job: job.id, task: UInt32(t))
        // Filled in below, once the input bytes are known.
        var deadline = job.taskTimeoutNs ?? config.taskDeadlineNs
        var inputBytes: UInt64 = 0
        if !job.setUpOn.contains(w.id) {
            job.setUpOn.insert(w.id)
            var setup = Tessera_V1_JobSetup()
            setup.jobID = job.id
            setup.operators = job.operators
            setup.params = job.params
            setup.dataKeys = job.dataKeys
            if !registeredShards.isEmpty && !job.dataKeys.isEmpty {
                setup.dataChecksums = job.dataKeys.map { registeredShards[$0]?.checksum ?? 0 }
            }
            if job.directResults {
                setup.clientKey = job.clientKey
                setup.takeToken = Data(job.takeToken)
            }
            setup.priority = job.priority.wire
            w.assignment.jobs.append(setup)
        }
        var flags: UInt32 = 0
        if job.isOutput[t] && !job.delivered[t] { flags |= job.directResults ? AssignFlags.clientTakes : AssignFlags.output }
        if job.hasDependents(t) { flags |= AssignFlags.keep }
        let range = job.inputRange(t)
        w.assignment.keys.append(key)
        w.assignment.ops.append(UInt32(job.op[t]))
        w.assignment.args.append(job.arg[t])
        w.assignment.paramIndex.append(job.paramIndex[t])
        w.assignment.flags.append(flags)
        w.assignment.inputCounts.append(UInt32(range.count))
        w.assignment.dataKey.append(job.dataKey.isEmpty ? 0 : job.dataKey[t])
        for j in range {
            let i = Int(job.inputs[j])
            let holder = job.worker[i]
            inputBytes &+= UInt64(job.resultBytes[i])
            w.assignment.inputKeys.append(TaskKey.make(job: job.id, task: UInt32(i)))
            w.assignment.inputHolders.append(holder)
            if holder != w.id, !w.peersInAssignment.contains(holder), let h = workers[holder] {
                w.peersInAssignment.insert(holder)
                var p = Tessera_V1_Peer()
                p.workerID = holder
                p.endpoint = h.peerEndpoint
                p.publicKey = h.publicKey
                w.assignment.peers.append(p)
            }
        }
        w.assignedCount += 1
        if job.taskTimeoutNs == nil {
            // The allowance grows with what the task reads: its shard, and its inputs' values.
            if let dk = job.dataKeyName(t), let shard = registeredShards[dk] { inputBytes &+= shard.bytes }
            deadline &+= config.taskDeadlineNsPerMiB &* (inputBytes >> 20)
        }
        // An interactive task's cap runs from when its worker reports it begun (its wait behind
        // others there is not its own doing). Until then it may wait four caps: a task queued
        // behind stuck ones is then run elsewhere, not after the usual deadline.
        if job.priority == .interactive, config.interactiveTaskDeadlineNs > 0 {
            let cap = config.interactiveTaskDeadlineNs
            if w.reportsStarts {
                w.awaitingStart[key] = lastNow &+ deadline
                deadline = min(deadline, cap &* SchedulerConfig.interactiveWaitCaps)
            } else {
                deadline = min(deadline, cap)
            }
        }
        w.deadlines[key] = lastNow &+ deadline
        if job.priority == .interactive { w.interactive.insert(key) }
    }

    // MARK: - Reports

    mutating func taskReport(_ w: WorkerRecord, _ r: Tessera_V1_TaskReport, frames: [[UInt8]], now: UInt64) {
        let hasCompute = r.computeUs.count == r.doneKeys.count
        let hasBytes = r.resultBytes.count == r.doneKeys.count
        let hasRows = r.resultRows.count == r.doneKeys.count
        for (n, key) in r.doneKeys.enumerated() {
            guard let job = jobs[TaskKey.job(key)] else { continue }
            let t = Int(TaskKey.task(key))
            guard t < job.taskCount, job.state[t] == .running, job.worker[t] == w.id else {
                // A duplicate or stale report (e.g. for a task re-run elsewhere): drop its value.
                w.releases.append(key)
                continue
            }
            w.taskLeft(key)
            w.tasksDone += 1
            tasksCompleted += 1
            if hasCompute {
                w.meanTaskMicros = 0.9 * w.meanTaskMicros + 0.1 * Double(r.computeUs[n])
                // From the long estimate down: a job's few first cheap tasks (shards its zone
                // maps ruled out, merges) do not open the worker to 64 per thread of its scans.
                job.meanTaskMicros = 0.8 * (job.meanTaskMicros ?? config.unknownTaskMicros) + 0.2 * Double(r.computeUs[n])
                refundCharge(job, t)
                fairShare.charge(job.lane.user, micros: max(1, Double(r.computeUs[n])), now: now)
            }
            job.resultBytes[t] = hasBytes ? UInt32(clamping: r.resultBytes[n]) : 0
            if let cap = job.rowCap, job.isOutput[t], !job.delivered[t], !job.isSnapshot(t) {
                let (sum, overflow) = job.rowsReturned.addingReportingOverflow(hasRows ? r.resultRows[n] : 0)
                job.rowsReturned = overflow ? .max : sum
                if job.rowsReturned > cap {
                    // Not delivered, and no longer running (the job's end releases its values).
                    job.state[t] = .recovering
                    job.worker[t] = 0
                    finish(job, .jobFailed, error: CatalogQueryError.overRowCap(Int(clamping: cap)).message, now: now)
                    continue
                }
            }
            if job.directResults && job.isOutput[t] && !job.delivered[t] && !job.isSnapshot(t) {
                // The value waits on this worker for the client to take it.
                var loc = Tessera_V1_ValueLocation()
                loc.key = key
                loc.bytes = hasBytes ? r.resultBytes[n] : 0
                loc.worker.workerID = w.id
                loc.worker.endpoint = w.peerEndpoint
                loc.worker.publicKey = w.publicKey
                loc.worker.localEndpoint = w.localEndpoint
                loc.takeToken = Data(job.takeToken)
                job.pendingLocations.append(loc)
                job.delivered[t] = true
                jobsWithResults.insert(job.id)
            }
            complete(job, t, on: w, now: now)
        }
        for v in r.outputs {
            guard let job = jobs[TaskKey.job(v.key)] else { continue }
            let t = Int(TaskKey.task(v.key))
            guard t < job.taskCount, job.isOutput[t], !job.delivered[t],
                  job.state[t] == .done || job.state[t] == .released,
                  Int(v.frame) < frames.count, v.offset <= UInt64(frames[Int(v.frame)].count),
                  v.length <= UInt64(frames[Int(v.frame)].count) - v.offset
            else { continue }
            let f = frames[Int(v.frame)]
            var info = v
            info.frame = 0
            info.partial = job.isSnapshot(t)
            info.offset = UInt64(job.pendingBytes.count)
            job.pendingBytes.append(contentsOf: f[Int(v.offset)..<Int(v.offset + v.length)])
            job.pendingValues.append(info)
            job.delivered[t] = true
            jobsWithResults.insert(job.id)
        }
        for f in r.failures {
            guard let job = jobs[TaskKey.job(f.key)] else { continue }
            let t = Int(TaskKey.task(f.key))
            guard t < job.taskCount, job.state[t] == .running, job.worker[t] == w.id else { continue }
            w.taskLeft(f.key)
            if job.isSnapshot(t) {
                // A snapshot is never worth recomputing lost inputs for: the next one will do.
                abandonSnapshot(job, t)
                continue
            }
            // No longer running anywhere: finishing the job must not count it in flight again.
            job.state[t] = .recovering
            job.worker[t] = 0
            switch f.kind {
            case .failureMissingInput:
                // The task did not execute: this run does not count, nor does its charge.
                if job.runCount[t] > 0 { job.runCount[t] -= 1 }
                refundCharge(job, t)
                let hasHolders = f.missingHolders.count == f.missingInputs.count
                // A holder still registered: its loss does not explain the failure.
                var liveHolder: String?
                for (n, m) in f.missingInputs.enumerated() where liveHolder == nil && TaskKey.job(m) == job.id && Int(TaskKey.task(m)) < job.taskCount {
                    liveHolder = workers[hasHolders ? f.missingHolders[n] : job.worker[Int(TaskKey.task(m))]]?.name
                }
                if let liveHolder {
                    let rounds = job.missingInputRounds[t, default: 0] + 1
                    job.missingInputRounds[t] = rounds
                    if rounds >= config.maxMissingInputRounds {
                        finish(job, .jobFailed, error: "task \(t) could not fetch its input from worker \(liveHolder) in \(rounds) attempts "
                               + "(the limit is \(config.maxMissingInputRounds)); last: \(f.message)", now: now)
                        continue
                    }
                }
                for (n, m) in f.missingInputs.enumerated() where TaskKey.job(m) == job.id {
                    let i = Int(TaskKey.task(m))
                    guard i < job.taskCount, job.state[i] == .done else { continue }
                    // A report about a copy that has since been replaced changes nothing.
                    if hasHolders && f.missingHolders[n] != job.worker[i] { continue }
                    // The holder may still have it (a fetch timed out): it goes, so it is not leaked.
                    workers[job.worker[i]]?.releases.append(m)
                    undo(job, i)
                }
                reschedule(job, t)
            case .failureUnknownOperator:
                finish(job, .jobFailed, error: "worker \(w.name) cannot run task \(t): \(f.message)", now: now)
            case .failureRefused:
                // Another run would fail the same way: no retries. (The message names the operator.)
                finish(job, .jobFailed, error: f.message, now: now)
            default:
                job.operatorFailures[t] &+= 1
                job.failedOn[t, default: []].insert(w.id)
                if Int(job.operatorFailures[t]) >= config.maxOperatorFailures {
                    let opName = job.operators[Int(job.op[t])]
                    finish(job, .jobFailed, error: "task \(t) (`\(opName)`) failed \(job.operatorFailures[t]) times; last error: \(f.message)", now: now)
                } else {
                    reschedule(job, t)
                }
            }
        }
        // Finishing is checked last so that outputs that came with the final report are delivered.
        for id in Set(r.doneKeys.map(TaskKey.job)).sorted() {
            if let job = jobs[id], job.isComplete { finish(job, .jobDone, error: "", now: now) }
        }
    }

    mutating func complete(_ job: JobRecord, _ t: Int, on w: WorkerRecord, now: UInt64) {
        if job.isSnapshot(t) {
            if let p = job.progress {
                let took = now &- p.lastSnapshotAt
                job.progress?.nextAllowedAt = max(p.lastSnapshotAt &+ p.intervalNs, now &+ 4 * took)
            }
            job.progress?.running = nil
        } else {
            job.doneCount += 1
            job.progress?.newWork = true
        }
        if job.pendingDependents[t] > 0 {
            job.state[t] = .done
            job.worker[t] = w.id
        } else {
            job.state[t] = .released
            job.worker[t] = 0
            if job.hasDependents(t) { w.releases.append(TaskKey.make(job: job.id, task: UInt32(t))) }
        }
        for j in job.inputRange(t) {
            let i = Int(job.inputs[j])
            job.pendingDependents[i] -= 1
            if job.pendingDependents[i] == 0 && job.state[i] == .done { release(job, i) }
        }
        for j in job.dependentRange(t) {
            let d = Int(job.dependents[j])
            if job.state[d] == .waiting {
                job.waitCount[d] -= 1
                if job.waitCount[d] == 0 { makeReady(job, d) }
            }
        }
    }

    /// Takes back the fair-share estimate charged when task `t` was handed out.
    mutating func refundCharge(_ job: JobRecord, _ t: Int) {
        fairShare.refund(job.lane.user, micros: job.charged[t], chargedAt: job.chargedAt[t])
        job.charged[t] = 0
    }

    /// Drops a snapshot that failed or whose worker left, unpinning the values it would have read.
    mutating func abandonSnapshot(_ job: JobRecord, _ t: Int) {
        job.state[t] = .released
        job.worker[t] = 0
        job.progress?.running = nil
        job.progress?.newWork = true
        for j in job.inputRange(t) {
            let i = Int(job.inputs[j])
            job.pendingDependents[i] -= 1
            if job.pendingDependents[i] == 0 && job.state[i] == .done { release(job, i) }
        }
    }

    /// For progressive jobs due one: a snapshot task that merges every partial answer finished
    /// so far (the values still held are exactly the frontier of the reduction tree: a held value
    /// is one whose reader has not finished), so the client sees all the work done, each shard
    /// once. One snapshot per job is in flight at a time, at most one per interval.
    mutating func takeSnapshots(now: UInt64) {
        for id in progressiveJobs.sorted() {
            guard let job = jobs[id], let p = job.progress else {
                progressiveJobs.remove(id)
                continue
            }
            guard p.running == nil, p.newWork, now &- p.lastSnapshotAt >= p.intervalNs, now >= p.nextAllowedAt else { continue }
            var sources: [Int] = []
            for t in 0..<job.graphTaskCount where job.state[t] == .done { sources.append(t) }
            guard !sources.isEmpty else { continue }
            let t = job.appendSnapshot(of: sources, operatorIndex: p.operatorIndex, paramIndex: p.paramIndex)
            job.progress?.running = t
            job.progress?.newWork = false
            job.progress?.lastSnapshotAt = now
            makeReady(job, t)
        }
    }

    mutating func release(_ job: JobRecord, _ i: Int) {
        workers[job.worker[i]]?.releases.append(TaskKey.make(job: job.id, task: UInt32(i)))
        job.state[i] = .released
        job.worker[i] = 0
    }

    // MARK: - Recovery from lineage

    /// True when task `i`'s value can be read now.
    func isAvailable(_ job: JobRecord, _ i: Int) -> Bool {
        job.state[i] == .done && workers[job.worker[i]] != nil
    }

    /// Puts a task back to wait for its inputs, recomputing any that are no longer held.
    mutating func reschedule(_ job: JobRecord, _ t: Int) {
        job.state[t] = .recovering
        job.worker[t] = 0
        for j in job.inputRange(t) {
            let i = Int(job.inputs[j])
            if !isAvailable(job, i) { ensureComputing(job, i) }
        }
        guard jobs[job.id] != nil else { return }
        waitForInputs(job, t)
    }

    /// Counts a task's unavailable inputs afresh and queues it when there are none.
    mutating func waitForInputs(_ job: JobRecord, _ t: Int) {
        var missing: UInt32 = 0
        for j in job.inputRange(t) where !isAvailable(job, Int(job.inputs[j])) { missing += 1 }
        job.state[t] = .waiting
        job.waitCount[t] = missing
        if missing == 0 { makeReady(job, t) }
    }

    /// Makes sure a needed value will be produced: nothing to do if it is on its way; a finished
    /// task whose value was lost or released runs again.
    mutating func ensureComputing(_ job: JobRecord, _ i: Int) {
        if Self.mustRecompute(job.state[i]) { undo(job, i) }
    }

    /// Whether a task whose value is not available must run again to produce it (a waiting,
    /// ready, running or recovering one is already on its way).
    static func mustRecompute(_ state: TaskState) -> Bool {
        switch state {
        case .done, .released: true
        case .waiting, .ready, .running, .recovering: false
        }
    }

    /// Turns a finished task back into one to run (its value is gone but still needed), and
    /// with it every ancestor whose value is gone too, depth first.
    ///
    /// The walk keeps its own stack: in a chain whose earlier links were released, the ancestors
    /// to recompute are as many as the links before, and a recursion per ancestor overflowed the
    /// thread's stack (and the scheduler with it) at some tens of thousands. Each task is undone
    /// in the order the recursion had: first its own state and its dependents' counts, then its
    /// missing inputs one by one, each undone whole before the next is looked at, and only then
    /// its own wait count and its dependents' (so that undoing an input never counts a task that
    /// is itself being undone as waiting).
    mutating func undo(_ job: JobRecord, _ root: Int) {
        var stack: [(task: Int, next: Int)] = []
        var entering: Int? = root
        while true {
            if let i = entering {
                entering = nil
                job.doneCount -= 1
                job.state[i] = .recovering
                job.worker[i] = 0
                for j in job.inputRange(i) { job.pendingDependents[Int(job.inputs[j])] += 1 }
                for j in job.dependentRange(i) {
                    let d = Int(job.dependents[j])
                    switch job.state[d] {
                    case .waiting: job.waitCount[d] += 1
                    case .ready: job.state[d] = .waiting; job.waitCount[d] = 1  // recounted below if needed
                    default: break  // running ones fail to fetch it and are rescheduled
                    }
                }
                stack.append((i, job.inputRange(i).lowerBound))
            }
            guard let top = stack.last else { return }
            // The next input of the task on top that must be recomputed, if any.
            var j = top.next
            let end = job.inputRange(top.task).upperBound
            while j < end {
                let k = Int(job.inputs[j])
                j += 1
                if !isAvailable(job, k) && Self.mustRecompute(job.state[k]) {
                    entering = k
                    break
                }
            }
            stack[stack.count - 1].next = j
            if entering != nil { continue }
            // Every input of the task on top is available or on its way.
            stack.removeLast()
            let i = top.task
            waitForInputs(job, i)
            // Dependents pulled back from the ready queue recount what they miss.
            for j in job.dependentRange(i) {
                let d = Int(job.dependents[j])
                if job.state[d] == .waiting {
                    var missing: UInt32 = 0
                    for q in job.inputRange(d) where !isAvailable(job, Int(job.inputs[q])) { missing += 1 }
                    job.waitCount[d] = missing
                    if missing == 0 { makeReady(job, d) }
                }
            }
        }
    }

    /// A worker died or left: its running tasks run elsewhere, values only it held are recomputed
    /// if still needed, and every other worker learns not to wait for it.
    mutating func removeWorker(_ id: WorkerID, now: UInt64, handedBack: Set<UInt64>, reason: String) {
        guard let w = workers.removeValue(forKey: id) else { return }
        workerByConnection.removeValue(forKey: w.connection)
        workerOrder.removeAll { $0 == id }
        for key in w.holdings { holders[key]?.removeAll { $0 == id } }
        for other in workers.values { other.lostWorkers.append(id) }
        notices.append("worker \(w.name) (id \(id)) left: \(reason)")

        for jobID in jobs.keys.sorted() {
            guard let job = jobs[jobID] else { continue }
            var restart: [Int] = []
            var lost: [Int] = []
            for t in 0..<job.taskCount where job.worker[t] == id {
                if job.state[t] == .running { restart.append(t) } else if job.state[t] == .done { lost.append(t) }
            }
            for t in lost where job.state[t] == .done {
                if job.pendingDependents[t] > 0 { undo(job, t) } else { job.state[t] = .released; job.worker[t] = 0 }
                if jobs[jobID] == nil { break }
            }
            for t in restart where jobs[jobID] != nil && job.state[t] == .running {
                if job.isSnapshot(t) {
                    abandonSnapshot(job, t)
                    continue
                }
                if !handedBack.contains(TaskKey.make(job: jobID, task: UInt32(t))) {
                    job.lostRuns[t] &+= 1
                    if Int(job.lostRuns[t]) >= config.maxLostRuns {
                        finish(job, .jobFailed, error: "task \(t) was running on \(job.lostRuns[t]) workers that died; giving up (last: \(w.name), \(reason))", now: now)
                        break
                    }
                }
                reschedule(job, t)
            }
            job.setUpOn.remove(id)
        }
        // Tasks queued for the departed worker go elsewhere.
        for key in w.pinned.allKeys + w.preferred.allKeys {
            if let (job, t) = readyTask(key) { makeReady(job, t) }
        }
    }

    // MARK: - Deadlines

    /// Tasks running past their deadline are forgotten by their worker (a result that still
    /// comes is dropped) and run elsewhere; a task that times out `maxTaskTimeouts` times fails
    /// its job. This frees a worker that heartbeats but never reports, and a task stuck on one.
    mutating func timeOutOverdueTasks(now: UInt64) {
        for id in workerOrder {
            guard let w = workers[id] else { continue }
            let overdue = w.deadlines.filter { now > $0.value }.keys.sorted()
            for key in overdue {
                w.taskLeft(key)
                guard let job = jobs[TaskKey.job(key)] else { continue }
                let t = Int(TaskKey.task(key))
                guard t < job.taskCount, job.state[t] == .running, job.worker[t] == w.id else { continue }
                w.timedOut.append(key)
                tasksTimedOut += 1
                job.state[t] = .recovering
                job.worker[t] = 0
                if job.isSnapshot(t) {
                    abandonSnapshot(job, t)
                    continue
                }
                job.timeouts[t, default: 0] += 1
                job.failedOn[t, default: []].insert(w.id)
                let opName = job.operators[Int(job.op[t])]
                notices.append("job \(job.id) task \(t) (`\(opName)`) passed its deadline on worker \(w.name); running it elsewhere")
                if job.timeouts[t]! >= config.maxTaskTimeouts {
                    let cap = config.interactiveTaskDeadlineNs
                    let hint = job.priority == .interactive && cap > 0
                        ? "an interactive task may run \((Double(cap) / 1e9).shortText) s at most "
                            + "(scheduler --interactive-task-deadline-s): submit it as normal or batch, or ask for less"
                        : "it is stuck, or needs longer than the deadline (set the job's task timeout)"
                    finish(job, .jobFailed, error: "task \(t) (`\(opName)`) ran past its deadline \(job.timeouts[t]!) times (last on worker \(w.name)); \(hint)", now: now)
                } else {
                    reschedule(job, t)
                }
            }
        }
    }

    // MARK: - Finishing

    mutating func finish(_ job: JobRecord, _ state: Tessera_V1_JobState, error: String, now: UInt64) {
        guard jobs[job.id] != nil else { return }
        sendResults(job, now: now)
        var f = Tessera_V1_JobFinished()
        f.jobID = job.id
        f.state = state
        f.error = error
        f.tasksDone = UInt64(job.doneCount)
        f.taskCount = UInt64(job.graphTaskCount)
        f.reruns = UInt64(job.reruns)
        f.seconds = Double(now &- job.submittedAt) / 1e9
        var e = Envelope()
        e.jobFinished = f
        send(.client(job.client), e)
        for t in 0..<job.taskCount where job.state[t] == .running {
            workers[job.worker[t]]?.taskLeft(TaskKey.make(job: job.id, task: UInt32(t)))
            // What it took is never reported: its estimate is taken back.
            refundCharge(job, t)
        }
        for id in job.setUpOn {
            // A job done with direct results leaves them on the workers until the client takes them.
            if state == .jobDone && job.directResults { workers[id]?.finishedJobs.append(job.id) } else { workers[id]?.cancelledJobs.append(job.id) }
        }
        jobs.removeValue(forKey: job.id)
        if let n = jobsPerUser[job.user] { jobsPerUser[job.user] = n > 1 ? n - 1 : nil }
        if let n = tasksPerUser[job.user] { tasksPerUser[job.user] = n > job.admittedTasks ? n - job.admittedTasks : nil }
        liveTasks = max(0, liveTasks - job.admittedTasks)
        jobsWithResults.remove(job.id)
        progressiveJobs.remove(job.id)
        if state == .jobDone { jobsCompleted += 1 }
        var js = Tessera_V1_JobStatus()
        js.jobID = job.id
        js.name = job.name
        js.user = job.user
        js.priority = job.priority.wire
        js.state = state
        js.taskCount = UInt64(job.graphTaskCount)
        js.tasksDone = UInt64(job.doneCount)
        js.seconds = f.seconds
        finishedJobs.append(js)
        if finishedJobs.count > 100 { finishedJobs.removeFirst(finishedJobs.count - 100) }
    }
}

extension SchedulerCore {
    /// What is inconsistent in the scheduler's state (empty when all is well): checked after
    /// every step of the simulation. A running task is in flight on exactly the live worker it
    /// names; every task a worker has in flight is running there; a finished task whose value
    /// is still needed is held by a live worker; counts match the states they count.
    public func invariantViolations() -> [String] {
        var out: [String] = []
        for w in workers.values {
            for key in w.riders where w.deadlines[key] == nil { out.append("worker \(w.id) has rider \(key) that is not in flight") }
            for key in w.interactive where w.deadlines[key] == nil { out.append("worker \(w.id) counts interactive task \(key) that is not in flight") }
            for key in w.deadlines.keys {
                guard let job = jobs[TaskKey.job(key)] else {
                    out.append("worker \(w.id) has task \(key) in flight for a job that is gone")
                    continue
                }
                let t = Int(TaskKey.task(key))
                if t >= job.taskCount || job.state[t] != .running || job.worker[t] != w.id {
                    out.append("worker \(w.id) has task \(key) in flight, but it is \(t < job.taskCount ? "\(job.state[t]) on \(job.worker[t])" : "out of range")")
                }
            }
        }
        for job in jobs.values {
            var done = 0
            for t in 0..<job.taskCount {
                let key = TaskKey.make(job: job.id, task: UInt32(t))
                switch job.state[t] {
                case .running:
                    if workers[job.worker[t]]?.deadlines[key] == nil { out.append("task \(key) running on \(job.worker[t]), which does not have it in flight") }
                case .done:
                    if !job.isSnapshot(t) { done += 1 }
                    if workers[job.worker[t]] == nil { out.append("task \(key) done, held by \(job.worker[t]), which is not live") }
                    if job.pendingDependents[t] == 0 { out.append("task \(key) done and held though nothing needs it") }
                case .released:
                    if !job.isSnapshot(t) { done += 1 }
                case .waiting:
                    var missing: UInt32 = 0
                    for j in job.inputRange(t) where !isAvailable(job, Int(job.inputs[j])) { missing += 1 }
                    if missing != job.waitCount[t] { out.append("task \(key) waits for \(job.waitCount[t]) inputs, lacks \(missing)") }
                    if missing == 0 { out.append("task \(key) waits with every input available") }
                case .ready, .recovering:
                    break
                }
            }
            if done != job.doneCount { out.append("job \(job.id) counts \(job.doneCount) tasks done, states say \(done)") }
        }
        return out
    }

    /// Whether the value of `key` is one the scheduler still counts on `worker` holding (or
    /// about to report): its task is done there and needed, or running there.
    public func expectsValue(_ key: UInt64, on worker: WorkerID) -> Bool {
        guard let job = jobs[TaskKey.job(key)] else { return false }
        let t = Int(TaskKey.task(key))
        guard t < job.taskCount, job.worker[t] == worker else { return false }
        return job.state[t] == .done || job.state[t] == .running
    }

    /// Whether the scheduler knows `worker` as a live worker now.
    public func isLive(_ worker: WorkerID) -> Bool { workers[worker] != nil }
}
