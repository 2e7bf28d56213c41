import Foundation
import Testing
@testable import TesseraGateway

/// One user's async jobs run two at a time, the rest QUEUED and started in turn as the others'
/// tasks end: each builds its whole answer in the gateway's memory, and thirty-two at once did.
/// Against a scheduler that never answers (a port nobody listens on), so that a started job stays
/// EXECUTING until its connection times out. Sampled, not timed: the suite runs under load.
struct AsyncJobQueueTests {
    @Test func oneUsersJobsRunTwoAtATime() async throws {
        let jobs = AsyncJobs(service: TAPService(endpoint: "tcp://127.0.0.1:9"))
        let query = ["LANG": "ADQL", "QUERY": "SELECT COUNT(*) FROM tessera.object"]
        var carol: [String] = []
        for _ in 0..<4 { carol.append(try await jobs.create(owner: "carol", parameters: query).id) }
        let dan = try await jobs.create(owner: "dan", parameters: query).id
        for id in carol { try await jobs.run(id, owner: "carol") }
        try await jobs.run(dan, owner: "dan")
        var mostAtOnce = 0, sawQueuedBehindTwo = false, danRanWhileCarolWaited = false
        for _ in 0..<6_000 {
            var phases: [AsyncJobs.Phase] = []
            for id in carol { phases.append(try await jobs.job(id, owner: "carol").phase) }
            let executing = phases.filter { $0 == .executing }.count
            mostAtOnce = max(mostAtOnce, executing)
            if executing == 2 && phases.contains(.queued) { sawQueuedBehindTwo = true }
            if phases.contains(.queued), try await jobs.job(dan, owner: "dan").phase == .executing { danRanWhileCarolWaited = true }
            if !phases.contains(where: \.isActive) { break }
            try await Task.sleep(nanoseconds: 50_000_000)
        }
        #expect(mostAtOnce == 2)
        #expect(sawQueuedBehindTwo)
        // Another user's job is not held behind hers.
        #expect(danRanWhileCarolWaited)
        // Every one of hers ran in the end.
        for id in carol { #expect(try await jobs.job(id, owner: "carol").phase == .error) }
    }

    /// UWS 1.1's blocking GET waits only on a phase the job leaves by itself: PENDING, QUEUED or
    /// EXECUTING. Asked to wait on a final phase it answers at once.
    @Test func waitingOnAFinalPhaseReturnsAtOnce() async throws {
        let jobs = AsyncJobs(service: TAPService(endpoint: "tcp://127.0.0.1:9"))
        let id = try await jobs.create(owner: "erin", parameters: ["LANG": "ADQL", "QUERY": "SELECT COUNT(*) FROM tessera.object"]).id
        _ = try await jobs.update(id, owner: "erin") { $0.phase = .aborted }
        let start = Date()
        let j = try await jobs.wait(id, owner: "erin", seconds: 30, whilePhase: .aborted)
        #expect(j.phase == .aborted)
        #expect(Date().timeIntervalSince(start) < 10)
        // A PENDING job waited on as PENDING does block (until the time asked).
        let pending = try await jobs.create(owner: "erin", parameters: ["LANG": "ADQL", "QUERY": "SELECT COUNT(*) FROM tessera.object"]).id
        let before = Date()
        #expect(try await jobs.wait(pending, owner: "erin", seconds: 0.3, whilePhase: .pending).phase == .pending)
        #expect(Date().timeIntervalSince(before) >= 0.3)
    }

    /// A kept parameter over the limit is refused, naming it: dropped without a word, the job
    /// failed later for want of its QUERY.
    @Test func aParameterOverTheLimitIsRefusedByName() async throws {
        let jobs = AsyncJobs(service: TAPService(endpoint: "tcp://127.0.0.1:9"))
        let limit = GatewayLimits().queryCharacters
        let long = "SELECT COUNT(*) FROM tessera.object WHERE " + String(repeating: "cell > 1 AND ", count: limit / 10) + "cell > 1"
        do {
            _ = try await jobs.create(owner: "finn", parameters: ["LANG": "ADQL", "QUERY": long])
            Issue.record("a QUERY of \(long.count) characters was taken")
        } catch {
            #expect(error.status == 400 && error.message.contains("QUERY is \(long.count) characters long, over this service's limit of \(limit)"), "\(error.message)")
        }
        // Parameters a job does not keep are dropped as before.
        let j = try await jobs.create(owner: "finn", parameters: ["LANG": "ADQL", "QUERY": "SELECT COUNT(*) FROM tessera.object", "PHASE": "RUN", "X": String(repeating: "y", count: limit + 1)])
        #expect(j.parameters["X"] == nil && j.parameters["QUERY"] != nil)
    }
}
