import Dispatch
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif
import TesseraCompute
import TesseraProtocol
@testable import TesseraWorker
import TesseraTestKit

// MARK: Helpers

struct TaskSpec {
    var key: UInt64
    var op: UInt32 = 0
    var arg: Int64 = 0
    var paramIndex: UInt32 = 0
    var flags: UInt32 = 0
    var inputs: [(UInt64, WorkerID)] = []
}

func key(_ job: JobID, _ task: UInt32) -> UInt64 { TaskKey.make(job: job, task: task) }

func assignment(job: JobID? = nil, operators: [String] = ["inc", "sum", "noop", "fail"], params: [Tessera_V1_OperatorParams] = [],
                _ tasks: [TaskSpec], peers: [WorkerID: String] = [:]) -> Tessera_V1_AssignTasks {
    var a = Tessera_V1_AssignTasks()
    if let job {
        var s = Tessera_V1_JobSetup()
        s.jobID = job
        s.operators = operators
        s.params = params
        a.jobs = [s]
    }
    for t in tasks {
        a.keys.append(t.key)
        a.ops.append(t.op)
        a.args.append(t.arg)
        a.paramIndex.append(t.paramIndex)
        a.flags.append(t.flags)
        a.inputCounts.append(UInt32(t.inputs.count))
        for (k, h) in t.inputs {
            a.inputKeys.append(k)
            a.inputHolders.append(h)
        }
    }
    for (id, ep) in peers.sorted(by: { $0.key < $1.key }) {
        var p = Tessera_V1_Peer()
        p.workerID = id
        p.endpoint = ep
        a.peers.append(p)
    }
    return a
}

func engine(id: WorkerID) -> WorkerEngine {
    var e = WorkerEngine()
    e.registered(as: id)
    return e
}

func executed(_ actions: [WorkerAction]) -> [ExecutableTask] {
    var out: [ExecutableTask] = []
    for a in actions { if case .execute(let t) = a { out += t } }
    return out
}

func reports(_ actions: [WorkerAction]) -> [(Tessera_V1_TaskReport, [[UInt8]])] {
    var out: [(Tessera_V1_TaskReport, [[UInt8]])] = []
    for a in actions { if case .toScheduler(let e, let f) = a, case .taskReport(let r) = e.body { out.append((r, f)) } }
    return out
}

func fetchRequests(_ actions: [WorkerAction]) -> [(WorkerID, String, Tessera_V1_FetchRequest)] {
    var out: [(WorkerID, String, Tessera_V1_FetchRequest)] = []
    for a in actions { if case .toPeer(let id, let ep, let e) = a, case .fetchRequest(let r) = e.body { out.append((id, ep, r)) } }
    return out
}

/// Runs tasks right here with their real operators.
func run(_ tasks: [ExecutableTask]) -> [Completion] {
    tasks.map { t in
        let result: Result<Value, OperatorError>
        do throws(OperatorError) { result = .success(try t.op.run(t.context)) } catch { result = .failure(error) }
        return Completion(key: t.key, flags: t.flags, result: result, micros: 5, generation: t.generation)
    }
}

func outputValues(_ r: Tessera_V1_TaskReport, _ frames: [[UInt8]]) throws -> [UInt64: Value] {
    var out: [UInt64: Value] = [:]
    for info in r.outputs { out[info.key] = try Value(info: info, frames: frames) }
    return out
}

// MARK: Tests

@Suite("WorkerEngine")
struct WorkerEngineTests {
    @Test("registration lists the registry's operators")
    func registration() throws {
        let e = WorkerEngine()
        let env = e.registration(name: "w", threads: 3, memoryLimit: 10, peerEndpoint: "tcp://x:1", pid: 12, holdings: ["a"])
        #expect(env.registerWorker.name == "w")
        #expect(env.registerWorker.threads == 3)
        #expect(env.registerWorker.holdings == ["a"])
        #expect(env.registerWorker.operators == OperatorRegistry.standard.names)
        #expect(env.registerWorker.operators.contains("inc"))
    }

    @Test("tasks with local inputs execute at once and report their outputs")
    func executeLocal() throws {
        var e = engine(id: 1)
        let a = assignment(job: 3, [
            TaskSpec(key: key(3, 0), op: 0, arg: 41, flags: 1),
            TaskSpec(key: key(3, 1), op: 1, arg: 7, flags: 1),
            TaskSpec(key: key(3, 2), op: 2, flags: 0),
        ])
        let actions = e.assign(a, now: 0)
        #expect(actions.count == 1)
        let tasks = executed(actions)
        #expect(tasks.map(\.key) == [key(3, 0), key(3, 1), key(3, 2)])
        #expect(e.busy == 3)
        let out = e.completed(run(tasks))
        let (r, frames) = try #require(reports(out).first)
        #expect(r.workerID == 1)
        #expect(r.doneKeys == [key(3, 0), key(3, 1), key(3, 2)])
        #expect(r.resultBytes == [8, 8, 0])
        #expect(r.computeUs == [5, 5, 5])
        #expect(r.failures.isEmpty)
        let values = try outputValues(r, frames)
        #expect(values == [key(3, 0): .int64(42), key(3, 1): .int64(7)])
        #expect(e.busy == 0)
        #expect(e.tasksDone == 3)
        #expect(e.storedBytes == 0)
    }

    @Test("a direct result other tasks also read stays until both its take and its release, in either order")
    func directResultsThatFeedOtherTasks() throws {
        var e = engine(id: 1)
        var a = assignment(job: 2, [
            TaskSpec(key: key(2, 0), arg: 1, flags: 4 | 2),
            TaskSpec(key: key(2, 1), arg: 2, flags: 4 | 2),
        ])
        a.jobs[0].clientKey = "alice-key"
        a.jobs[0].takeToken = Self.token
        _ = e.completed(run(executed(e.assign(a, now: 0))))
        func take(_ k: UInt64) -> [UInt64] {
            var req = Tessera_V1_FetchRequest()
            req.requestID = 1
            req.keys = [k]
            req.take = true
            req.takeToken = Self.token
            guard case .replyToPeer(_, let env, _) = e.serveTake(req, clientKey: "alice-key", from: [1]), case .fetchReply(let rep) = env.body else { return [k] }
            return rep.missing
        }
        func release(_ k: UInt64) {
            var r = Tessera_V1_ReleaseResults()
            r.keys = [k]
            e.release(r)
        }
        // Taken first: still there for the task reading it, gone once released.
        #expect(take(key(2, 0)).isEmpty)
        #expect(e.storedResults == 2)
        release(key(2, 0))
        #expect(e.storedResults == 1)
        // Released first: still there for the client, gone once taken.
        release(key(2, 1))
        #expect(e.storedResults == 1)
        #expect(take(key(2, 1)).isEmpty)
        #expect(e.storedResults == 0)
        #expect(e.invariantViolations().isEmpty)
    }

    /// A job's take token, as the scheduler would make it.
    static let token = Data((0..<16).map { UInt8($0 * 13 + 5) })

    @Test("a take presents its job's token: a wrong, short or missing one takes nothing, on the same-host socket (no key) too")
    func directResultsNeedTheJobsToken() throws {
        var e = engine(id: 1)
        var a = assignment(job: 4, [TaskSpec(key: key(4, 0), arg: 1, flags: 4), TaskSpec(key: key(4, 1), arg: 2, flags: 4)])
        let token = (0..<16).map { UInt8($0 * 7 + 1) }
        a.jobs[0].takeToken = Data(token)
        _ = e.completed(run(executed(e.assign(a, now: 0))))
        func take(_ k: UInt64, _ given: [UInt8], as client: String? = nil) -> [UInt64] {
            var req = Tessera_V1_FetchRequest()
            req.requestID = 1
            req.keys = [k]
            req.take = true
            req.takeToken = Data(given)
            guard case .replyToPeer(_, let env, _) = e.serveTake(req, clientKey: client, from: [1]), case .fetchReply(let rep) = env.body else { return [k] }
            return rep.missing
        }
        var wrong = token
        wrong[15] ^= 1
        #expect(take(key(4, 0), []) == [key(4, 0)])
        #expect(take(key(4, 0), wrong) == [key(4, 0)])
        #expect(take(key(4, 0), Array(token.prefix(8))) == [key(4, 0)])
        #expect(e.storedResults == 2)
        #expect(take(key(4, 0), token).isEmpty)
        #expect(take(key(4, 1), token).isEmpty)
        #expect(e.storedResults == 0)
        #expect(e.invariantViolations().isEmpty)
    }

    @Test("direct results wait for their client, go once and only to its key, outlive a done job, not a cancelled one")
    func directResults() throws {
        var e = engine(id: 1)
        var a = assignment(job: 1, [
            TaskSpec(key: key(1, 0), arg: 1, flags: 4),
            TaskSpec(key: key(1, 1), arg: 2, flags: 4),
            TaskSpec(key: key(1, 2), arg: 3, flags: 4),
        ])
        a.jobs[0].clientKey = "alice-key"
        a.jobs[0].takeToken = Self.token
        let (r, frames) = try #require(reports(e.completed(run(executed(e.assign(a, now: 0))))).first)
        // Done, not sent: the values wait here.
        #expect(r.doneKeys.count == 3 && r.outputs.isEmpty && frames.isEmpty)
        #expect(e.storedResults == 3)
        #expect(e.peerRole(of: "alice-key") == WorkerEngine.clientRolePrefix + "alice-key")
        #expect(e.peerRole(of: "mallory-key") == nil)

        func take(_ keys: [UInt64], as client: String?) throws -> (values: [UInt64: Value], missing: [UInt64]) {
            var req = Tessera_V1_FetchRequest()
            req.requestID = 7
            req.keys = keys
            req.take = true
            req.takeToken = Self.token
            guard case .replyToPeer(_, let env, let f) = e.serveTake(req, clientKey: client, from: [1]), case .fetchReply(let rep) = env.body else {
                Issue.record("no fetch reply")
                return ([:], [])
            }
            var out: [UInt64: Value] = [:]
            for info in rep.values { out[info.key] = try Value(info: info, frames: f) }
            return (out, rep.missing)
        }
        // Another user's key takes nothing.
        #expect(try take([key(1, 0)], as: "mallory-key").missing == [key(1, 0)])
        let first = try take([key(1, 0), key(9, 9)], as: "alice-key")
        #expect(first.values == [key(1, 0): .int64(2)] && first.missing == [key(9, 9)])
        // Taken means gone.
        #expect(try take([key(1, 0)], as: "alice-key").missing == [key(1, 0)])
        #expect(e.storedResults == 2)

        // The job ends done: the rest wait for the client, then for two minutes at most.
        var done = Tessera_V1_CancelTasks()
        done.finishedJobIds = [1]
        _ = e.cancel(done, pool: nil, now: 1_000)
        #expect(e.invariantViolations().isEmpty)
        #expect(try take([key(1, 1)], as: "alice-key").values == [key(1, 1): .int64(3)])
        #expect(e.storedResults == 1)
        _ = e.timers(now: 1_000 + WorkerEngine.heldResultsNs + 2_000_000_000)
        #expect(e.storedResults == 0)
        #expect(try take([key(1, 2)], as: "alice-key").missing == [key(1, 2)])
        #expect(e.peerRole(of: "alice-key") == nil)

        // A cancelled job's direct results go at once.
        var b = assignment(job: 2, [TaskSpec(key: key(2, 0), arg: 1, flags: 4)])
        b.jobs[0].clientKey = "alice-key"
        b.jobs[0].takeToken = Self.token
        _ = e.completed(run(executed(e.assign(b, now: 0))))
        #expect(e.storedResults == 1)
        var cancel = Tessera_V1_CancelTasks()
        cancel.jobIds = [2]
        _ = e.cancel(cancel, pool: nil, now: 2_000)
        #expect(e.storedResults == 0)
        #expect(try take([key(2, 0)], as: "alice-key").missing == [key(2, 0)])
    }

    @Test("keep stores values; inputs held here are read; release frees them")
    func keepAndRelease() throws {
        var e = engine(id: 1)
        let first = executed(e.assign(assignment(job: 1, [
            TaskSpec(key: key(1, 0), arg: 1, flags: 2),
            TaskSpec(key: key(1, 1), arg: 2, flags: 3),
        ]), now: 0))
        let (r1, f1) = try #require(reports(e.completed(run(first))).first)
        #expect(r1.doneKeys.count == 2)
        #expect(try outputValues(r1, f1) == [key(1, 1): .int64(3)])
        #expect(e.storedBytes == 16)
        #expect(e.storedResults == 2)
        let hb = e.heartbeat(rssBytes: 1, peakRSSBytes: 2)
        #expect(hb.heartbeat.storedBytes == 16)
        #expect(hb.heartbeat.storedResults == 2)

        // A reader of both; holder 0 also means "here".
        let second = executed(e.assign(assignment([
            TaskSpec(key: key(1, 2), op: 0, flags: 1, inputs: [(key(1, 0), 1), (key(1, 1), 0)]),
        ]), now: 1))
        #expect(second.count == 1)
        #expect(second.first?.context.inputs == [.int64(2), .int64(3)])
        let (r2, f2) = try #require(reports(e.completed(run(second))).first)
        #expect(try outputValues(r2, f2) == [key(1, 2): .int64(6)])

        var rel = Tessera_V1_ReleaseResults()
        rel.keys = [key(1, 0)]
        e.release(rel)
        #expect(e.storedBytes == 8)
        rel.keys = [key(1, 1), key(1, 0), key(9, 9)]  // repeated and unknown keys are harmless
        e.release(rel)
        #expect(e.storedBytes == 0)
        #expect(e.storedResults == 0)
    }

    @Test("an input said to be here but not stored fails with missingInput")
    func localMissing() throws {
        var e = engine(id: 1)
        let actions = e.assign(assignment(job: 1, [
            TaskSpec(key: key(1, 5), inputs: [(key(1, 4), 1)]),
        ]), now: 0)
        #expect(executed(actions).isEmpty)
        let (r, _) = try #require(reports(actions).first)
        #expect(r.failures.count == 1)
        #expect(r.failures.first?.kind == .failureMissingInput)
        #expect(r.failures.first?.missingInputs == [key(1, 4)])
        #expect(e.busy == 0)
    }

    @Test("inputs on a peer are fetched, served by the peer, and the task then runs")
    func fetchFromPeer() throws {
        // Worker 2 computes and keeps two values.
        var b = engine(id: 2)
        let made = executed(b.assign(assignment(job: 4, [
            TaskSpec(key: key(4, 0), arg: 10, flags: 2),
            TaskSpec(key: key(4, 1), op: 1, arg: 5, flags: 2),
        ]), now: 0))
        _ = b.completed(run(made))
        #expect(b.storedResults == 2)

        // Worker 1 is asked to sum them, plus one of its own.
        var a = engine(id: 1)
        _ = a.completed(run(executed(a.assign(assignment(job: 4, [TaskSpec(key: key(4, 2), arg: 99, flags: 2)]), now: 0))))
        let actions = a.assign(assignment([
            TaskSpec(key: key(4, 3), op: 1, flags: 1, inputs: [(key(4, 0), 2), (key(4, 2), 1), (key(4, 1), 2)]),
            TaskSpec(key: key(4, 4), op: 0, flags: 1, inputs: [(key(4, 1), 2)]),
        ], peers: [2: "tcp://b:1"]), now: 10)
        #expect(executed(actions).isEmpty)
        let fetches = fetchRequests(actions)
        #expect(fetches.count == 1)
        let (peer, endpoint, req) = try #require(fetches.first)
        #expect(peer == 2)
        #expect(endpoint == "tcp://b:1")
        #expect(req.keys == [key(4, 0), key(4, 1)])  // each key once
        #expect(a.busy == 2)

        guard case .replyToPeer(let rid, let env, let frames) = b.serveFetch(req, from: [7, 7]) else {
            Issue.record("serveFetch did not reply")
            return
        }
        #expect(rid == [7, 7])
        #expect(env.fetchReply.requestID == req.requestID)
        #expect(env.fetchReply.missing.isEmpty)
        #expect(env.fetchReply.values.count == 2)

        let after = a.fetched(env.fetchReply, frames: frames)
        let tasks = executed(after)
        #expect(tasks.map(\.key).sorted() == [key(4, 3), key(4, 4)])
        let sum = try #require(tasks.first { $0.key == key(4, 3) })
        #expect(sum.context.inputs == [.int64(11), .int64(100), .int64(5)])
        let (r, f) = try #require(reports(a.completed(run(tasks))).first)
        #expect(try outputValues(r, f) == [key(4, 3): .int64(116), key(4, 4): .int64(6)])
        // A second reply to the same request is ignored.
        #expect(a.fetched(env.fetchReply, frames: frames).isEmpty)
    }

    @Test("a value missing in the peer's reply fails the task with the missing keys")
    func peerMissing() throws {
        var b = engine(id: 2)
        _ = b.completed(run(executed(b.assign(assignment(job: 1, [TaskSpec(key: key(1, 0), arg: 1, flags: 2)]), now: 0))))
        var a = engine(id: 1)
        let actions = a.assign(assignment(job: 1, [
            TaskSpec(key: key(1, 9), op: 1, inputs: [(key(1, 0), 2), (key(1, 1), 2)]),
        ], peers: [2: "b"]), now: 0)
        let (_, _, req) = try #require(fetchRequests(actions).first)
        guard case .replyToPeer(_, let env, let frames) = b.serveFetch(req, from: []) else {
            Issue.record("no reply")
            return
        }
        #expect(env.fetchReply.missing == [key(1, 1)])
        let after = a.fetched(env.fetchReply, frames: frames)
        #expect(executed(after).isEmpty)
        let (r, _) = try #require(reports(after).first)
        let f = try #require(r.failures.first)
        #expect(r.failures.count == 1)
        #expect(f.key == key(1, 9))
        #expect(f.kind == .failureMissingInput)
        #expect(Set(f.missingInputs) == [key(1, 1)])
        #expect(a.busy == 0)
    }

    /// BUG: `fetched` removes `waitingFor[info.key]` before decoding the value, so the
    /// `failWaiting` it calls on a decode error finds no task: the task stays pending forever
    /// (no report, and the fetch entry is gone so `tick` cannot time it out either).
    @Test("an unreadable value in a fetch reply fails the task")
    func corruptFetchReply() throws {
        var a = engine(id: 1)
        let actions = a.assign(assignment(job: 1, [TaskSpec(key: key(1, 3), inputs: [(key(1, 0), 2)])], peers: [2: "b"]), now: 0)
        let (_, _, req) = try #require(fetchRequests(actions).first)
        var reply = Tessera_V1_FetchReply()
        reply.requestID = req.requestID
        var info = Tessera_V1_ValueInfo()
        info.key = key(1, 0)
        info.kind = .valueInt64
        info.length = 8
        info.offset = 100
        reply.values = [info]
        let after = a.fetched(reply, frames: [[1, 2, 3]])
        let (r, _) = try #require(reports(after).first)
        #expect(r.failures.first?.kind == .failureMissingInput)
        #expect(a.busy == 0)
    }

    @Test("a holder without an endpoint, or already lost, fails the task at once")
    func holderGone() throws {
        var a = engine(id: 1)
        var c = Tessera_V1_CancelTasks()
        c.lostWorkers = [3]
        #expect(a.cancel(c, pool: nil).isEmpty)
        let actions = a.assign(assignment(job: 1, [
            TaskSpec(key: key(1, 5), inputs: [(key(1, 0), 2)]),  // no endpoint for 2
            TaskSpec(key: key(1, 6), inputs: [(key(1, 1), 3)]),  // 3 is lost
        ], peers: [3: "c"]), now: 0)
        #expect(fetchRequests(actions).isEmpty)
        let (r, _) = try #require(reports(actions).first)
        #expect(r.failures.map(\.key) == [key(1, 5), key(1, 6)])
        #expect(r.failures.allSatisfy { $0.kind == .failureMissingInput })
        #expect(r.failures.map(\.missingInputs) == [[key(1, 0)], [key(1, 1)]])
        #expect(a.busy == 0)
    }

    @Test("cancel with lostWorkers fails tasks waiting on that peer")
    func lostWorkerCancel() throws {
        var a = engine(id: 1)
        let actions = a.assign(assignment(job: 1, [
            TaskSpec(key: key(1, 10), op: 1, inputs: [(key(1, 0), 2), (key(1, 1), 3)]),
            TaskSpec(key: key(1, 11), op: 1, inputs: [(key(1, 2), 3)]),
        ], peers: [2: "b", 3: "c"]), now: 0)
        #expect(fetchRequests(actions).count == 2)
        var c = Tessera_V1_CancelTasks()
        c.lostWorkers = [2]
        let out = a.cancel(c, pool: nil)
        let (r, _) = try #require(reports(out).first)
        #expect(r.failures.count == 1)
        #expect(r.failures.first?.key == key(1, 10))
        #expect(r.failures.first?.kind == .failureMissingInput)
        #expect(Set(r.failures.first?.missingInputs ?? []) == [key(1, 0), key(1, 1)])
        #expect(a.busy == 1)
        // The other task still runs when its peer answers.
        let (_, _, req) = try #require(fetchRequests(actions).first { $0.0 == 3 })
        var reply = Tessera_V1_FetchReply()
        reply.requestID = req.requestID
        var frame: [UInt8] = []
        reply.values = [Value.int64(4).append(to: &frame, key: key(1, 1), frameIndex: 0),
                        Value.int64(5).append(to: &frame, key: key(1, 2), frameIndex: 0)]
        let after = a.fetched(reply, frames: [frame])
        let tasks = executed(after)
        #expect(tasks.map(\.key) == [key(1, 11)])
        #expect(tasks.first?.context.inputs == [.int64(5)])
    }

    @Test("cancel with a job id drops that job's stored values and pending tasks")
    func cancelJob() throws {
        var e = engine(id: 1)
        _ = e.completed(run(executed(e.assign(assignment(job: 1, [
            TaskSpec(key: key(1, 0), arg: 1, flags: 2),
            TaskSpec(key: key(1, 1), op: 3, arg: 1, flags: 2),  // fails: nothing stored
        ]), now: 0))))
        _ = e.completed(run(executed(e.assign(assignment(job: 2, [
            TaskSpec(key: key(2, 0), arg: 1, flags: 2),
        ]), now: 0))))
        #expect(e.storedBytes == 16)
        let waiting = e.assign(assignment([TaskSpec(key: key(1, 5), inputs: [(key(1, 3), 9)])], peers: [9: "z"]), now: 0)
        let (_, _, req) = try #require(fetchRequests(waiting).first)
        let running = executed(e.assign(assignment([TaskSpec(key: key(1, 6), arg: 3, flags: 1)]), now: 0))
        #expect(e.busy == 2)

        var c = Tessera_V1_CancelTasks()
        c.jobIds = [1]
        #expect(e.cancel(c, pool: nil).isEmpty)
        #expect(e.storedBytes == 8)
        #expect(e.storedResults == 1)
        // The task that was running finishes: nothing is reported for a cancelled job.
        #expect(e.completed(run(running)).isEmpty)
        // A late reply for the dropped task runs nothing.
        var reply = Tessera_V1_FetchReply()
        reply.requestID = req.requestID
        var frame: [UInt8] = []
        reply.values = [Value.int64(1).append(to: &frame, key: key(1, 3), frameIndex: 0)]
        #expect(executed(e.fetched(reply, frames: [frame])).isEmpty)
        #expect(e.busy == 0)
        // Job 2 is untouched.
        let reader = executed(e.assign(assignment([TaskSpec(key: key(2, 1), flags: 1, inputs: [(key(2, 0), 1)])]), now: 1))
        #expect(reader.first?.context.inputs == [.int64(2)])
    }

    @Test("a malformed assignment gets an error envelope, not a crash")
    func malformed() throws {
        var e = engine(id: 1)
        var a = assignment(job: 1, [TaskSpec(key: key(1, 0)), TaskSpec(key: key(1, 1))])
        a.args.removeLast()
        let actions = e.assign(a, now: 0)
        #expect(actions.count == 1)
        guard case .toScheduler(let env, _) = actions.first else {
            Issue.record("no error sent")
            return
        }
        #expect(env.error.code == .errorMalformedMessage)
        #expect(e.busy == 0)

        var b = assignment(job: 1, [TaskSpec(key: key(1, 0), inputs: [(key(1, 9), 1)])])
        b.inputHolders.removeAll()
        guard case .toScheduler(let env2, _) = e.assign(b, now: 0).first else {
            Issue.record("no error sent")
            return
        }
        #expect(env2.error.code == .errorMalformedMessage)

        var c = assignment(job: 1, [TaskSpec(key: key(1, 0), inputs: [(key(1, 9), 1)])])
        c.inputCounts = [5]
        guard case .toScheduler(let env3, _) = e.assign(c, now: 0).first else {
            Issue.record("no error sent")
            return
        }
        #expect(env3.error.code == .errorMalformedMessage)

        // Operator index out of the job's table, a job with no table, an operator this worker lacks.
        let actions4 = e.assign(assignment(job: 1, operators: ["inc", "no_such_op"], [
            TaskSpec(key: key(1, 0), op: 7),
            TaskSpec(key: key(1, 1), op: 1),
        ]), now: 0)
        let actions5 = e.assign(assignment([TaskSpec(key: key(77, 0))]), now: 0)
        let (r4, _) = try #require(reports(actions4).first)
        let (r5, _) = try #require(reports(actions5).first)
        #expect(r4.failures.map(\.kind) == [.failureOperator, .failureUnknownOperator])
        #expect(r4.failures.last?.message.contains("no_such_op") == true)
        #expect(r5.failures.map(\.kind) == [.failureOperator])
        #expect(e.busy == 0)
    }

    @Test("operator errors are reported as failures with the operator's message")
    func operatorFailure() throws {
        var e = engine(id: 1)
        var p = Tessera_V1_OperatorParams()
        p.strings["message"] = "nope-123"
        let tasks = executed(e.assign(assignment(job: 1, params: [p], [TaskSpec(key: key(1, 0), op: 3, paramIndex: 1, flags: 3)]), now: 0))
        let (r, frames) = try #require(reports(e.completed(run(tasks))).first)
        #expect(r.doneKeys.isEmpty)
        #expect(frames.isEmpty)
        #expect(r.failures.first?.kind == .failureOperator)
        #expect(r.failures.first?.message.contains("nope-123") == true)
        #expect(e.storedBytes == 0)
    }

    @Test("parameters reach the operator")
    func params() throws {
        var e = engine(id: 1)
        var p = Tessera_V1_OperatorParams()
        p.numbers["start"] = 10
        p.numbers["step"] = 2
        let tasks = executed(e.assign(assignment(job: 1, operators: ["arange"], params: [p], [
            TaskSpec(key: key(1, 0), arg: 3, paramIndex: 1, flags: 1),
        ]), now: 0))
        let (r, f) = try #require(reports(e.completed(run(tasks))).first)
        #expect(try outputValues(r, f) == [key(1, 0): .float64Column([10, 12, 14])])
    }

    @Test("fetches that take too long fail their tasks")
    func fetchTimeout() throws {
        var e = engine(id: 1)
        e.fetchTimeoutNs = 1000
        _ = e.assign(assignment(job: 1, [TaskSpec(key: key(1, 1), inputs: [(key(1, 0), 2)])], peers: [2: "b"]), now: 0)
        #expect(e.tick(now: 500).isEmpty)
        let (r, _) = try #require(reports(e.tick(now: 2000)).first)
        #expect(r.failures.first?.key == key(1, 1))
        #expect(r.failures.first?.kind == .failureMissingInput)
        #expect(r.failures.first?.missingInputs == [key(1, 0)])
        #expect(e.busy == 0)
        #expect(e.tick(now: 5000).isEmpty)
    }

    @Test("deregister hands back tasks waiting for inputs")
    func deregister() throws {
        var e = engine(id: 5)
        _ = e.assign(assignment(job: 1, [
            TaskSpec(key: key(1, 3), inputs: [(key(1, 0), 2)]),
            TaskSpec(key: key(1, 4), inputs: [(key(1, 1), 2)]),
        ], peers: [2: "b"]), now: 0)
        let env = e.deregister(reason: "bye", pool: nil)
        #expect(env.deregister.workerID == 5)
        #expect(env.deregister.reason == "bye")
        #expect(env.deregister.handedBack == [key(1, 3), key(1, 4)])
    }

    @Test("registering again forgets everything")
    func reRegister() throws {
        var e = engine(id: 1)
        _ = e.completed(run(executed(e.assign(assignment(job: 1, [TaskSpec(key: key(1, 0), flags: 2)]), now: 0))))
        #expect(e.storedResults == 1)
        e.registered(as: 8)
        #expect(e.workerID == 8)
        #expect(e.storedResults == 0)
        #expect(e.storedBytes == 0)
    }

    @Test("after a scheduler restart, results and cancellations of its earlier start never reach the new one")
    func reRegisterWithANewEpoch() throws {
        var e = WorkerEngine()
        e.registered(as: 1, epoch: 4)
        // Job 1 of epoch 4: one task running on a thread, job 2 cancelled.
        let running = executed(e.assign(assignment(job: 1, [TaskSpec(key: key(1, 0), flags: 1)]), now: 0))
        _ = e.cancel({ var c = Tessera_V1_CancelTasks(); c.jobIds = [2]; return c }(), pool: nil)
        #expect(e.cancelled.contains(2))
        // The scheduler restarts; its epoch 5 hands out job ids 1 and 2 again (a scheduler
        // without a registry cannot remember which it used).
        e.registered(as: 1, epoch: 5)
        #expect(e.epoch == 5)
        #expect(!e.cancelled.contains(2), "a cancellation of the earlier start would silence the new job 2")
        let fresh = executed(e.assign(assignment(job: 1, [TaskSpec(key: key(1, 0), arg: 10, flags: 1)]), now: 0))
        #expect(fresh.count == 1)
        // The old run finishes first: void. The new one is reported, stamped with the new epoch.
        #expect(reports(e.completed(run(running))).isEmpty)
        let acts = e.completed(run(fresh))
        let (r, f) = try #require(reports(acts).first)
        #expect(try outputValues(r, f)[key(1, 0)] == .int64(11))
        guard case .toScheduler(let env, _) = acts.first else { Issue.record("no report"); return }
        #expect(env.epoch == 5)
        // Job 2 of the new start runs and reports.
        let two = executed(e.assign(assignment(job: 2, [TaskSpec(key: key(2, 0), flags: 1)]), now: 0))
        #expect(reports(e.completed(run(two))).first?.0.doneKeys == [key(2, 0)])
    }

    @Test("a task taken back past its deadline is forgotten: queued, waiting or running")
    func overdueTasksAreForgotten() throws {
        var e = engine(id: 1)
        let acts = e.assign(assignment(job: 1, [
            TaskSpec(key: key(1, 0), flags: 3),
            TaskSpec(key: key(1, 1), inputs: [(key(1, 9), 2)]),
        ], peers: [2: "tcp://b:1"]), now: 0)
        let running = executed(acts)
        #expect(e.busy == 2)
        var c = Tessera_V1_CancelTasks()
        c.taskKeys = [key(1, 0), key(1, 1)]
        _ = e.cancel(c, pool: nil)
        #expect(e.busy == 0)
        // The run that was already going finishes: nothing is reported and nothing kept.
        #expect(reports(e.completed(run(running))).isEmpty)
        #expect(e.storedResults == 0)
    }

    @Test("the cancelled-jobs set stays bounded over many finished jobs")
    func cancelledJobsAreBounded() throws {
        var e = engine(id: 1)
        for j in 1...5_000 as ClosedRange<JobID> {
            let t = executed(e.assign(assignment(job: j, [TaskSpec(key: key(j, 0), flags: 1)]), now: 0))
            _ = e.completed(run(t))
            var c = Tessera_V1_CancelTasks()
            c.jobIds = [j]
            _ = e.cancel(c, pool: nil)
        }
        #expect(e.cancelled.count == e.cancelled.capacity)
        #expect(e.cancelled.contains(5_000) && !e.cancelled.contains(1))
        // A late result of a job long forgotten is still dropped, not stored.
        var late = executed(e.assign(assignment(job: 7_000, [TaskSpec(key: key(7_000, 0), flags: 2)]), now: 0))
        var c = Tessera_V1_CancelTasks()
        c.jobIds = [7_000]
        _ = e.cancel(c, pool: nil)
        late[0].generation = e.generation
        #expect(reports(e.completed(run(late))).isEmpty)
        #expect(e.storedResults == 0)
    }

    @Test("a fetch from a peer of another epoch finds nothing")
    func fetchAcrossEpochs() throws {
        var e = WorkerEngine()
        e.registered(as: 1, epoch: 3)
        _ = e.completed(run(executed(e.assign(assignment(job: 1, [TaskSpec(key: key(1, 0), flags: 2)]), now: 0))))
        var req = Tessera_V1_FetchRequest()
        req.keys = [key(1, 0)]
        for (epoch, found) in [(UInt64(3), true), (2, false)] {
            guard case .replyToPeer(_, let env, _) = e.serveFetch(req, epoch: epoch, from: []) else { Issue.record("no reply"); continue }
            #expect(env.fetchReply.values.isEmpty != found)
            #expect(env.fetchReply.missing.isEmpty == found)
        }
    }
}

@Suite("WorkerEngine with an ExecutorPool")
struct WorkerEnginePoolTests {
    func drain(_ pool: ExecutorPool, count: Int) -> [Completion] {
        var got: [Completion] = []
        for _ in 0..<5000 where got.count < count {
            got += pool.drainCompletions()
            if got.count < count { usleep(1000) }
        }
        return got
    }

    @Test("tasks run on the pool and their completions are reported")
    func pool() throws {
        let pool = ExecutorPool(threads: 1, wake: {})
        defer { pool.stop() }
        var e = engine(id: 1)
        let tasks = executed(e.assign(assignment(job: 1, (0..<20).map { TaskSpec(key: key(1, UInt32($0)), arg: Int64($0), flags: 1) }), now: 0))
        pool.submit(tasks)
        let done = drain(pool, count: 20)
        #expect(done.count == 20)
        let (r, f) = try #require(reports(e.completed(done)).first)
        let values = try outputValues(r, f)
        #expect(values.count == 20)
        for i in 0..<20 { #expect(values[key(1, UInt32(i))] == .int64(Int64(i) + 1)) }
    }

    @Test("deregister and cancel take back queued tasks from the pool")
    func poolTakeBack() throws {
        let pool = ExecutorPool(threads: 1, wake: {})
        defer { pool.stop() }
        var e = engine(id: 1)
        var slow = Tessera_V1_OperatorParams()
        slow.numbers["sleep_us"] = 200_000
        // One slow task occupies the single thread; the rest wait in the queue.
        let tasks = executed(e.assign(assignment(job: 1, params: [slow], [TaskSpec(key: key(1, 0), paramIndex: 1, flags: 1)]
            + (1..<6).map { TaskSpec(key: key(1, UInt32($0)), flags: 1) }), now: 0))
        let other = executed(e.assign(assignment(job: 2, (0..<3).map { TaskSpec(key: key(2, UInt32($0)), flags: 1) }), now: 0))
        pool.submit(tasks)
        pool.submit(other)
        // Cancel job 2: its queued tasks leave the pool.
        var c = Tessera_V1_CancelTasks()
        c.jobIds = [2]
        _ = e.cancel(c, pool: pool)
        #expect(e.busy <= 6)
        let env = e.deregister(reason: "stop", pool: pool)
        let back = Set(env.deregister.handedBack)
        #expect(!back.isEmpty)
        #expect(back.isSubset(of: Set((1..<6).map { key(1, UInt32($0)) }).union([key(1, 0)])))
        #expect(back.allSatisfy { TaskKey.job($0) == 1 })
        // Whatever was running finishes and is reported; nothing handed back is.
        for _ in 0..<5000 where pool.busyCount > 0 { usleep(1000) }
        let done = pool.drainCompletions()
        #expect(done.count >= tasks.count - back.count)
        let reported = reports(e.completed(done)).flatMap(\.0.doneKeys)
        #expect(Set(reported).isDisjoint(with: back))
        #expect(reported.allSatisfy { TaskKey.job($0) == 1 })
    }
}

@Suite("WorkerEngine: pipelined dependents")
struct WorkerEnginePipelineTests {
    /// A dependent whose input is being computed on this same worker waits for it locally and runs
    /// as soon as it is done: no missing-input report, no round trip to the scheduler.
    @Test func dependentRunsWhenItsLocalInputCompletes() throws {
        var e = engine(id: 3)
        let a = key(9, 0), b = key(9, 1), c = key(9, 2)
        let first = e.assign(assignment(job: 9, [
            TaskSpec(key: a, arg: 41, flags: 2),
            TaskSpec(key: b, flags: 2, inputs: [(a, 3)]),
            TaskSpec(key: c, flags: 1, inputs: [(b, 3)]),
        ]), now: 0)
        #expect(executed(first).map(\.key) == [a])
        #expect(reports(first).isEmpty)
        let second = e.completed(run(executed(first)))
        #expect(executed(second).map(\.key) == [b])
        #expect(reports(second).first?.0.doneKeys == [a])
        let third = e.completed(run(executed(second)))
        #expect(executed(third).map(\.key) == [c])
        let last = e.completed(run(executed(third)))
        let (r, frames) = try #require(reports(last).first)
        #expect(r.doneKeys == [c])
        #expect(try Value(info: #require(r.outputs.first), frames: frames) == .int64(44))
    }

    /// When the local input fails, the waiting dependent is reported as missing that input (named
    /// with this worker as its holder), so the scheduler re-runs both.
    @Test func dependentFailsWhenItsLocalInputFails() throws {
        var e = engine(id: 3)
        let a = key(4, 0), b = key(4, 1)
        let first = e.assign(assignment(job: 4, [
            TaskSpec(key: a, op: 3, flags: 2),
            TaskSpec(key: b, flags: 1, inputs: [(a, 3)]),
        ]), now: 0)
        #expect(executed(first).map(\.key) == [a])
        let after = e.completed(run(executed(first)))
        #expect(executed(after).isEmpty)
        let failures = reports(after).flatMap(\.0.failures)
        #expect(failures.first { $0.key == a }?.kind == .failureOperator)
        let missing = try #require(failures.first { $0.key == b })
        #expect(missing.kind == .failureMissingInput)
        #expect(missing.missingInputs == [a])
        #expect(missing.missingHolders == [3])
        #expect(e.busy == 0)
    }
}

@Suite("WorkerEngine memory limit: spilling and oversized values")
struct WorkerEngineSpillTests {
    func spillFolder() throws -> SpillFolder {
        try SpillFolder(path: temporaryFolder("spill-test"))
    }

    /// Performs the engine's spills as the daemon's writer would, synchronously.
    func writeSpills(_ actions: [WorkerAction], _ e: inout WorkerEngine, _ folder: SpillFolder) throws -> Int {
        var n = 0
        for case .spill(let kv) in actions {
            for (k, v) in kv { try folder.write(k, v) }
            e.spillWritten(kv.map(\.key), failed: [])
            n += kv.count
        }
        return n
    }

    @Test("values past the limit go to disk, oldest first, and are read back for tasks and fetches")
    func spillAndReadBack() throws {
        let folder = try spillFolder()
        var e = engine(id: 1)
        e.spillStore = folder
        e.memoryLimitBytes = 3 * 8 * 100  // three columns of 100 doubles
        var params = Tessera_V1_OperatorParams()
        params.numbers["start"] = 1
        let leaves = (0..<10).map { TaskSpec(key: key(1, UInt32($0)), arg: 100, paramIndex: 1, flags: 2) }
        let acts = e.completed(run(executed(e.assign(assignment(job: 1, operators: ["arange", "sum"], params: [params], leaves), now: 0))))
        let spilled = try writeSpills(acts, &e, folder)
        #expect(spilled == 7, "ten kept, three fit")
        #expect(e.storedBytes == 3 * 800)
        #expect(e.spilledBytes == 7 * 800)
        #expect(e.storedResults == 10)
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path).count == 7)
        #expect(e.invariantViolations().isEmpty, "\(e.invariantViolations())")
        // A peer fetches a spilled value: read back from disk.
        var req = Tessera_V1_FetchRequest()
        req.keys = [key(1, 0), key(1, 9)]
        guard case .replyToPeer(_, let env, let frames) = e.serveFetch(req, from: []) else { Issue.record("no reply"); return }
        let got = try env.fetchReply.values.map { try Value(info: $0, frames: frames) }
        let column = Value.float64Column((1...100).map { Double($0) })
        #expect(got == [column, column])
        // A task here reads all ten, spilled or not: 10 × (1 + … + 100).
        let root = executed(e.assign(assignment([TaskSpec(key: key(1, 10), op: 1, flags: 1, inputs: (0..<10).map { (key(1, UInt32($0)), 1) })]), now: 0))
        let (r, f) = try #require(reports(e.completed(run(root))).first)
        #expect(try outputValues(r, f)[key(1, 10)] == .float64(50_500))
        // Released: gone from memory and disk.
        var rel = Tessera_V1_ReleaseResults()
        rel.keys = (0..<10).map { key(1, UInt32($0)) }
        e.release(rel)
        #expect(e.storedResults == 0 && e.storedBytes == 0 && e.spilledBytes == 0)
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path).isEmpty)
    }

    @Test("a release that comes while a value is being written deletes it once written; a failed write keeps it in memory")
    func releaseDuringSpillAndFailedWrites() throws {
        let folder = try spillFolder()
        var e = engine(id: 1)
        e.spillStore = folder
        e.memoryLimitBytes = 8 * 100
        let acts = e.completed(run(executed(e.assign(assignment(job: 1, operators: ["arange"], (0..<3).map { TaskSpec(key: key(1, UInt32($0)), arg: 100, flags: 2) }), now: 0))))
        let batches = acts.compactMap { if case .spill(let kv) = $0 { kv } else { nil } }.flatMap { $0 }
        #expect(batches.map(\.key) == [key(1, 0), key(1, 1)])
        var rel = Tessera_V1_ReleaseResults()
        rel.keys = [key(1, 0)]
        e.release(rel)
        try folder.write(key(1, 0), batches[0].value)
        e.spillWritten([key(1, 0)], failed: [key(1, 1)])
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path).isEmpty, "the released value's file is deleted")
        #expect(e.storedResults == 2)
        #expect(e.spilledBytes == 0)
        #expect(e.invariantViolations().filter { !$0.contains("over the limit") }.isEmpty)
    }

    @Test("a task run again here replaces the value it left, counted once (found by the simulation)")
    func aRerunReplacesItsValue() throws {
        for limit in [Int.max, 8] {
            let folder = try spillFolder()
            var e = engine(id: 1)
            e.spillStore = folder
            e.memoryLimitBytes = limit
            for arg in [Int64(4), 9] {
                let acts = e.completed(run(executed(e.assign(assignment(job: 1, [TaskSpec(key: key(1, 0), arg: arg, flags: 2)]), now: 0))))
                _ = try writeSpills(acts, &e, folder)
            }
            #expect(e.storedResults == 1)
            #expect(e.storedBytes + e.spilledBytes == 8)
            #expect(e.invariantViolations().isEmpty, "\(e.invariantViolations())")
            var req = Tessera_V1_FetchRequest()
            req.keys = [key(1, 0)]
            guard case .replyToPeer(_, let env, let frames) = e.serveFetch(req, from: []) else { Issue.record("no reply"); return }
            #expect(try Value(info: env.fetchReply.values[0], frames: frames) == .int64(10), "the second run's value")
        }
    }

    @Test("a value larger than the memory limit fails its task, naming the limit")
    func oversizedValueFailsItsTask() throws {
        var e = engine(id: 1)
        e.memoryLimitBytes = 1 << 20
        let acts = e.completed(run(executed(e.assign(assignment(job: 1, operators: ["arange"], [TaskSpec(key: key(1, 0), arg: 200_000, flags: 3)]), now: 0))))
        let (r, _) = try #require(reports(acts).first)
        #expect(r.doneKeys.isEmpty)
        let f = try #require(r.failures.first)
        #expect(f.kind == .failureRefused)
        #expect(f.message.contains("1 MiB, larger than this worker's memory limit of 1 MiB") || f.message.contains("larger than this worker's memory limit of 1 MiB"), "\(f.message)")
        #expect(e.storedResults == 0)
    }

    @Test("spill files round-trip every kind of value; a damaged one reads as nothing")
    func spillFilesRoundTrip() throws {
        let folder = try spillFolder()
        let values: [Value] = [.int64(-5), .float64(2.5), .int64Column(Array(0..<10_000)), .float64Column((0..<5_000).map { Double($0) / 3 }),
                               .moments(Moments(of: [1.0, 2, 3])), .bytes(Array(repeating: 7, count: 50_000)), .empty]
        for (i, v) in values.enumerated() {
            try folder.write(UInt64(i), v)
            #expect(folder.read(UInt64(i)) == v, "\(v)")
        }
        // The long runs compress: the column of zeros-to-9999 does not, the repeated bytes do.
        let size = try FileManager.default.attributesOfItem(atPath: folder.path + "/5.spill")[.size] as? Int ?? 0
        #expect(size < 50_000 / 4)
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: folder.path + "/9.spill"))
        #expect(folder.read(9) == nil)
        #expect(folder.read(12345) == nil)
    }
}

@Suite struct SpillFileHostilityTests {
    @Test("a spill file claiming a huge decoded length reads as nothing instead of allocating it")
    func hugeClaimedLength() throws {
        let folder = try SpillFolder(path: temporaryFolder("spill-hostile"))
        try folder.write(1, .int64Column(Array(0..<2_000)))
        let path = folder.path + "/1.spill"
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let headerLength = Int(bytes[4]) | Int(bytes[5]) << 8
        let at = 8 + headerLength + 1
        for i in 0..<8 { bytes[at + i] = 0x7F }
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        #expect(folder.read(1) == nil)
    }
}

@Suite struct ShardStoreAdmissionTests {
    static func store(_ ingest: String, pixel: Int64) -> Tessera_V1_StoreShard {
        var r = Tessera_V1_StoreShard()
        (r.ingestID, r.dataset, r.order, r.pixel) = (ingest, "table", 5, pixel)
        return r
    }

    @Test("a worker stores a planned shard up to its stated size, one copy at a time, from the announced key only")
    func plannedSizesBound() {
        var e = engine(id: 1)
        var x = Tessera_V1_ExpectShards()
        (x.ingestID, x.dataset, x.clientKey) = ("i1", "table", "alice")
        (x.orders, x.pixels, x.bytes) = ([5, 5], [0, 1], [1_000, 64])
        e.expect(x)
        let first = Self.store("i1", pixel: 0)
        #expect(e.admitStore(first, frameBytes: 1_001, clientKey: "alice")?.contains("sent 1001 bytes, over the 1000 its ingest stated") == true)
        #expect(e.admitStore(first, frameBytes: 1_000, clientKey: "mallory")?.contains("planned no shard") == true)
        #expect(e.admitStore(first, frameBytes: 1_000, clientKey: "alice") == nil)
        // While that copy is written, another of the same shard would only queue in memory.
        #expect(e.admitStore(first, frameBytes: 10, clientKey: "alice")?.contains("being stored already") == true)
        #expect(e.admitStore(Self.store("i1", pixel: 1), frameBytes: 64, clientKey: "alice") == nil)
        e.stored(first)
        #expect(e.admitStore(first, frameBytes: 1_000, clientKey: "alice") == nil)
        // A shard the scheduler gave no size for may hold nothing; a finished ingest none.
        var old = Tessera_V1_ExpectShards()
        (old.ingestID, old.dataset, old.clientKey, old.orders, old.pixels) = ("i2", "table", "alice", [5], [2])
        e.expect(old)
        #expect(e.admitStore(Self.store("i2", pixel: 2), frameBytes: 1, clientKey: "alice")?.contains("no shard sizes") == true)
        #expect(e.admitStore(Self.store("i2", pixel: 2), frameBytes: 0, clientKey: "alice") == nil)
        x.finished = true
        e.expect(x)
        #expect(e.admitStore(Self.store("i1", pixel: 1), frameBytes: 1, clientKey: "alice")?.contains("planned no shard") == true)
    }
}
