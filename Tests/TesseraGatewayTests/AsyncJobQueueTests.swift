import Foundation
import Testing
@testable import TesseraGateway

/// One user's async jobs run two at a time, the rest QUEUED and started in turn as the others'
/// tasks end: each builds its whole answer in the gateway's memory, and thirty-two at once did. Against a scheduler that
/// never answers (a port nobody listens on), so that a started job stays EXECUTING.
struct AsyncJobQueueTests {
    @Test func oneUsersJobsRunTwoAtATime() async throws {
        let jobs = AsyncJobs(service: TAPService(endpoint: "tcp://127.0.0.1:9"))
        let query = ["LANG": "ADQL", "QUERY": "SELECT COUNT(*) FROM tessera.object"]
        var carol: [String] = []
        for _ in 0..<4 { carol.append(try await jobs.create(owner: "carol", parameters: query).id) }
        let dan = try await jobs.create(owner: "dan", parameters: query).id
        for id in carol { try await jobs.run(id, owner: "carol") }
        try await jobs.run(dan, owner: "dan")
        func phases() async throws -> [AsyncJobs.Phase] {
            var out: [AsyncJobs.Phase] = []
            for id in carol { out.append(try await jobs.job(id, owner: "carol").phase) }
            return out
        }
        try await Task.sleep(nanoseconds: 300_000_000)
        #expect(try await phases() == [.executing, .executing, .queued, .queued])
        // Another user's job is not held behind hers.
        #expect(try await jobs.job(dan, owner: "dan").phase == .executing)
        // One of hers aborted: its slot is free once its task has ended (cancellation is
        // cooperative: its answer could still be being built), and the oldest queued job starts.
        try await jobs.abort(carol[0], owner: "carol")
        try await Task.sleep(nanoseconds: 300_000_000)
        #expect(try await phases() == [.aborted, .executing, .queued, .queued])
        func waitFor(_ id: String, _ phase: AsyncJobs.Phase) async throws -> Bool {
            for _ in 0..<150 {
                if try await jobs.job(id, owner: "carol").phase == phase { return true }
                try await Task.sleep(nanoseconds: 100_000_000)
            }
            return false
        }
        #expect(try await waitFor(carol[2], .executing))
        // (Her second job's task ends about now too: the scheduler never answers in 5 s.)
        #expect(try await phases().filter { $0 == .executing }.count <= 2)
        try await jobs.delete(carol[1], owner: "carol")
        #expect(try await waitFor(carol[3], .executing))
        for id in carol.dropFirst(2) { try await jobs.abort(id, owner: "carol") }
        try await jobs.abort(dan, owner: "dan")
    }
}
