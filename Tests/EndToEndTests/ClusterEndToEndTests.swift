import Foundation
import SwiftProtobuf
import Testing
import TesseraClient
import TesseraCluster
import TesseraCompute
import TesseraProtocol
import TesseraTestKit
import ZeroMQ

#if canImport(Glibc)
import Glibc
#endif

/// These start real `tessera-scheduler` and `tessera-worker` processes and talk to them over
/// ZeroMQ on loopback. They run one at a time: the machine has two cores.
@Suite(.serialized)
struct ClusterEndToEndTests {
    @Test func treeReduceGivesTheExactSum() throws {
        let cluster = try TestCluster.start()
        defer { cluster.stop() }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        for (leaves, fanIn) in [(1, 8), (1000, 8), (777, 3)] as [(Int, UInt32)] {
            let out = try conn.run(.plan(TestCluster.treeReduce(leaves, fanIn: fanIn)))
            #expect(out.finished.state == .jobDone)
            #expect(out.values.count == 1)
            #expect(out.values.values.first == .int64(Int64(leaves * (leaves + 1) / 2)))
        }
    }

    @Test func randomGraphMatchesBruteForce() throws {
        let cluster = try TestCluster.start(workers: 3)
        defer { cluster.stop() }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        var rng = SplitMix64(seed: 7)
        var g = TaskGraph(operators: ["inc", "sum"])
        var expected: [Int64] = []
        for i in 0..<2000 {
            if i < 50 || rng.next() % 4 == 0 {
                g.add(operatorIndex: 0, arg: Int64(i))
                expected.append(Int64(i) + 1)
            } else {
                let k = Int(rng.next() % 4) + 1
                let inputs = (0..<k).map { _ in UInt32(rng.next() % UInt64(i)) }
                g.add(operatorIndex: 1, inputs: inputs)
                expected.append(inputs.reduce(0) { $0 + expected[Int($1)] })
            }
        }
        g.outputs = Array(stride(from: 0, to: 2000, by: 7).map(UInt32.init))
        let out = try conn.run(.graph(g))
        #expect(out.finished.state == .jobDone)
        #expect(out.values.count == g.outputs.count)
        for o in g.outputs { #expect(out.values[o] == .int64(expected[Int(o)]), "task \(o)") }
    }

    @Test func resultsStreamBeforeTheJobEnds() throws {
        let cluster = try TestCluster.start()
        defer { cluster.stop() }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        var progress: [UInt64] = []
        let out = try conn.run(.plan(TestCluster.independent(200, sleepMicros: 3000))) { ev in
            if case .results(_, let done, _) = ev { progress.append(done) }
        }
        #expect(out.finished.state == .jobDone)
        #expect(out.values.count == 200)
        #expect(Set(out.values.values) == Set((1...200).map { Value.int64(Int64($0)) }))
        // Results came in many messages, the first long before the end, with growing progress.
        #expect(out.resultMessages > 5)
        let first = try #require(out.firstResultSeconds)
        #expect(first < out.seconds / 2)
        #expect(progress == progress.sorted())
    }

    @Test func twoClientsEachGetTheirOwnResults() throws {
        let cluster = try TestCluster.start()
        defer { cluster.stop() }
        let endpoint = cluster.clientEndpoint
        let results = ResultBox()
        let group = DispatchGroup()
        for c in 0..<2 {
            DispatchQueue.global().async(group: group) {
                do {
                    let conn = try SchedulerConnection(endpoint: endpoint)
                    let n = c == 0 ? 300 : 500
                    let out = try conn.run(.plan(c == 0 ? TestCluster.independent(n, sleepMicros: 500) : TestCluster.treeReduce(n, sleepMicros: 500)))
                    results.set(c, out.values)
                } catch {
                    results.set(c, [:])
                }
            }
        }
        #expect(group.wait(timeout: .now() + 60) == .success)
        let a = results.get(0), b = results.get(1)
        #expect(a.count == 300)
        #expect(Set(a.values) == Set((1...300).map { Value.int64(Int64($0)) }))
        #expect(b.count == 1)
        #expect(b.values.first == .int64(500 * 501 / 2))
    }

    @Test func cancellationStopsWork() throws {
        let cluster = try TestCluster.start()
        defer { cluster.stop() }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        let acc = try conn.submit(.plan(TestCluster.independent(5000, sleepMicros: 5000)))
        // Wait for the first results, then cancel.
        _ = try #require(try conn.nextEvent(job: acc.jobID, timeout: 10))
        try conn.cancel(job: acc.jobID)
        var finished: Tessera_V1_JobFinished?
        while finished == nil {
            let ev = try #require(try conn.nextEvent(job: acc.jobID, timeout: 5))
            if case .finished(let f) = ev { finished = f }
        }
        #expect(finished?.state == .jobCancelled)
        #expect((finished?.tasksDone ?? 0) < 5000)
        // Within a second nothing of it is in flight, and no more tasks complete.
        usleep(1_000_000)
        let s1 = try conn.status()
        #expect(s1.workers.allSatisfy { $0.inFlight == 0 })
        usleep(300_000)
        let s2 = try conn.status()
        #expect(s2.tasksCompleted == s1.tasksCompleted)
        // The cluster keeps serving.
        let after = try conn.run(.plan(TestCluster.treeReduce(100)))
        #expect(after.values.values.first == .int64(5050))
    }

    @Test func killedWorkerMidJobStillGivesTheRightAnswer() throws {
        let cluster = try TestCluster.start(workers: 3)
        defer { cluster.stop() }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        let leaves = 600
        let acc = try conn.submit(.plan(TestCluster.treeReduce(leaves, sleepMicros: 3000)))
        var killed = false
        var finished: Tessera_V1_JobFinished?
        var values: [Value] = []
        let deadline = Date().addingTimeInterval(60)
        while finished == nil && Date() < deadline {
            if let ev = try conn.nextEvent(job: acc.jobID, timeout: 0.02) {
                switch ev {
                case .results(let vs, _, _): values += vs.map(\.value)
                case .finished(let f): finished = f
                }
            }
            if !killed {
                // Kill once some reductions have run, so results held by the victim are lost too.
                let progress = try conn.status().jobs.first { $0.jobID == acc.jobID }?.tasksDone ?? 0
                if progress > 250 {
                    cluster.killWorker(0)
                    killed = true
                }
            }
        }
        #expect(killed)
        #expect(finished?.state == .jobDone)
        #expect(values == [.int64(Int64(leaves * (leaves + 1) / 2))])
        #expect((finished?.reruns ?? 0) > 0)
        #expect(try conn.status().workers.count == 2)
    }

    @Test func gracefulWorkerStopHandsBackItsTasks() throws {
        let cluster = try TestCluster.start(workers: 2)
        defer { cluster.stop() }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        let acc = try conn.submit(.plan(TestCluster.treeReduce(300, sleepMicros: 3000)))
        var stopped = false
        var finished: Tessera_V1_JobFinished?
        var values: [Value] = []
        let deadline = Date().addingTimeInterval(60)
        while finished == nil && Date() < deadline {
            if let ev = try conn.nextEvent(job: acc.jobID, timeout: 0.02) {
                switch ev {
                case .results(let vs, _, _): values += vs.map(\.value)
                case .finished(let f): finished = f
                }
            }
            if !stopped, (try conn.status().jobs.first { $0.jobID == acc.jobID }?.tasksDone ?? 0) > 100 {
                kill(cluster.workers[1].processIdentifier, SIGTERM)
                stopped = true
            }
        }
        #expect(stopped)
        #expect(finished?.state == .jobDone)
        #expect(values == [.int64(300 * 301 / 2)])
        cluster.workers[1].waitUntilExit()
        #expect(try conn.status().workers.count == 1)
    }

    @Test func noSchedulerIsAClearErrorNotAHang() throws {
        // A port nobody listens on: bind one, note it, close it.
        let ctx = try ZMQContext()
        let s = try ctx.socket(.router)
        let endpoint = try s.bind("tcp://127.0.0.1:*")
        s.close()
        let start = Date()
        #expect {
            _ = try SchedulerConnection(endpoint: endpoint, timeout: 0.5)
        } throws: { error in
            guard case ClientError.noScheduler = error else { return false }
            return "\(error)".contains(endpoint)
        }
        #expect(Date().timeIntervalSince(start) < 5)
    }

    @Test func schedulerDyingMidJobIsAnErrorNotAHang() throws {
        let cluster = try TestCluster.start()
        defer { cluster.stop() }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        let acc = try conn.submit(.plan(TestCluster.independent(2000, sleepMicros: 5000)))
        kill(cluster.scheduler.processIdentifier, SIGKILL)
        cluster.scheduler.waitUntilExit()
        var sawEnd = false
        while let ev = try conn.nextEvent(job: acc.jobID, timeout: 1) {
            if case .finished = ev { sawEnd = true }
        }
        #expect(!sawEnd)
        #expect(throws: ClientError.self) { try conn.ping(timeout: 0.5) }
    }

    @Test func garbageOnEitherEndpointDoesNotTakeTheSchedulerDown() throws {
        let cluster = try TestCluster.start()
        defer { cluster.stop() }
        let ctx = try ZMQContext()
        var rng = SplitMix64(seed: 99)
        // From members: the cluster's user, and a worker whose key is listed.
        for (endpoint, credentials) in [(cluster.clientEndpoint, cluster.credentials), (cluster.workerEndpoint, try cluster.workerCredentials("garbage"))] {
            let d = try rawDealer(ctx, endpoint, credentials, receiveTimeoutMs: 3000)
            for i in 0..<200 {
                let parts = (0..<(1 + i % 3)).map { _ in (0..<Int(rng.next() % 64)).map { _ in UInt8(truncatingIfNeeded: rng.next()) } }
                try d.send(parts: parts)
            }
            // A well-formed envelope of an unknown version gets a typed error reply.
            var e = Envelope()
            e.ping = Tessera_V1_Ping()
            var parts = WireProtocol.encode(e)
            var bad = try Envelope(serializedBytes: parts[0])
            bad.version = 99
            parts[0] = try bad.serializedBytes()
            try d.send(parts: parts)
            var sawVersionError = false
            while let reply = try? d.receiveParts(), !reply.isEmpty {
                let env = try Envelope(serializedBytes: reply[0])
                if case .error(let err) = env.body, err.code == .errorUnsupportedVersion { sawVersionError = true; break }
            }
            #expect(sawVersionError)
            d.close()
        }
        // Raw bytes that are not even ZMTP.
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        let port = UInt16(cluster.clientEndpoint.split(separator: ":").last!)!
        addr.sin_port = port.bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        #expect(rc == 0)
        let junk = (0..<4096).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        _ = junk.withUnsafeBytes { write(fd, $0.baseAddress, junk.count) }
        close(fd)
        // Still serving, with both workers.
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        let out = try conn.run(.plan(TestCluster.treeReduce(200)))
        #expect(out.values.values.first == .int64(200 * 201 / 2))
        #expect(try conn.status().workers.count == 2)
        #expect(cluster.scheduler.isRunning)
    }

    @Test func badJobsAreRefusedClearlyAndTheClusterKeepsServing() throws {
        let cluster = try TestCluster.start()
        defer { cluster.stop() }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        var p = TestCluster.independent(10)
        p.independent.operator = "no_such_op"
        #expect {
            try conn.submit(.plan(p))
        } throws: { error in
            guard case ClientError.rejected(let code, let msg) = error else { return false }
            return code == .errorUnknownOperator && msg.contains("no_such_op")
        }
        var g = TaskGraph(operators: ["inc"])
        g.add(operatorIndex: 0)
        g.inputs = [5]
        g.inputOffsets = [0, 1]
        #expect(throws: ClientError.self) { try conn.submit(.graph(g)) }

        var f = TestCluster.independent(4)
        f.independent.operator = "fail"
        var params = Tessera_V1_OperatorParams()
        params.strings["message"] = "flux column is all NaN"
        f.independent.params = params
        let out = try conn.run(.plan(f))
        #expect(out.finished.state == .jobFailed)
        #expect(out.finished.error.contains("flux column is all NaN"))

        let ok = try conn.run(.plan(TestCluster.treeReduce(64)))
        #expect(ok.values.values.first == .int64(64 * 65 / 2))
    }
}

/// Results handed from test threads.
final class ResultBox: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [Int: [UInt32: Value]] = [:]
    func set(_ k: Int, _ v: [UInt32: Value]) { lock.lock(); values[k] = v; lock.unlock() }
    func get(_ k: Int) -> [UInt32: Value] { lock.lock(); defer { lock.unlock() }; return values[k] ?? [:] }
}
