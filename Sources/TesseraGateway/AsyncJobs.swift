import Foundation
import TesseraClient
import TesseraProtocol
import TesseraStorage

/// TAP's asynchronous jobs (UWS 1.1): each is created PENDING, runs when asked, keeps its
/// answer or error until deleted or its destruction time passes.
///
/// A job is its owner's alone: another user's job is reported as not found, as the scheduler
/// reports another user's job as unknown (its identifiers are random, so nothing is learned
/// from a 404 that a 403 would tell).
public actor AsyncJobs {
    public enum Phase: String, Sendable {
        case pending = "PENDING", queued = "QUEUED", executing = "EXECUTING", completed = "COMPLETED"
        case error = "ERROR", aborted = "ABORTED"

        var isActive: Bool { self == .queued || self == .executing }
    }

    public struct Job: Sendable {
        public var id: String
        public var owner: String
        public var phase: Phase
        /// Its parameters, names upper-cased.
        public var parameters: [String: String]
        public var created: Date
        public var started: Date?
        public var ended: Date?
        public var destruction: Date
        public var executionDuration: Int
        public var result: TAPTable?
        public var error: String?
        /// Its UPLOAD's tables, kept until it runs.
        public var uploads: [TAPUpload] = []
    }

    let service: TAPService
    var jobs: [String: Job] = [:]
    /// Started jobs' tasks and owners, until each task has ended: a cancelled one still holds
    /// its slot (cancellation is cooperative, and its answer may still be being built).
    var running: [String: (owner: String, task: Task<Void, Never>)] = [:]
    /// Jobs asked to run while their owner had `maxRunningPerUser` running: QUEUED, started in
    /// turn as those end.
    var waiting: [String] = []

    /// An owner's jobs that run at once: each builds its whole answer in the gateway's memory
    /// before the cap on what one user's jobs hold is checked, so thirty-two at once would hold
    /// sixteen times what that cap means.
    public static let maxRunningPerUser = 2

    public init(service: TAPService) {
        self.service = service
    }

    /// The longest a job may run before it is aborted, in seconds.
    public static let maxExecutionDuration = 3600

    /// The parameters a job keeps (others are dropped: a form may carry anything).
    public static let keptParameters: Set<String> = ["LANG", "QUERY", "MAXREC", "RESPONSEFORMAT", "FORMAT", "REQUEST", "RUNID", "UPLOAD"]
    /// Result values (rows × columns) one user's jobs may hold at once: about 160 MB of numbers.
    public static let maxResultCellsPerUser = 20_000_000

    /// `parameters` without what a job does not keep; a kept value over `limit` characters is
    /// refused, naming it (dropped without a word, the job failed later for want of it).
    static func kept(_ parameters: [String: String], limit: Int) throws(TAPError) -> [String: String] {
        for (name, value) in parameters where keptParameters.contains(name) && value.count > limit {
            throw TAPError(400, "\(name) is \(value.count) characters long, over this service's limit of \(limit)")
        }
        return parameters.filter { keptParameters.contains($0.key) }
    }

    public func create(owner: String, parameters: [String: String], uploads: [TAPUpload] = []) throws(TAPError) -> Job {
        sweep()
        let parameters = try Self.kept(parameters, limit: service.limits.queryCharacters)
        let mine = jobs.values.filter { $0.owner == owner }
        guard mine.count < service.limits.asyncJobsPerUser else {
            throw TAPError(429, "user \(owner) holds \(mine.count) async jobs, the most one user may (\(service.limits.asyncJobsPerUser)): delete finished ones")
        }
        // Uploads wait in memory until their jobs run: one user's, at most twice one table's limit of cells.
        func cells(_ u: [TAPUpload]) -> Int { u.reduce(0) { $0 + $1.table.rows * $1.table.columns.count } }
        let held = mine.reduce(0) { $0 + cells($1.uploads) }, asked = cells(uploads), most = 2 * service.limits.upload.cells
        guard held + asked <= most else {
            throw TAPError(429, "your async jobs not yet run hold \(held) uploaded cells (rows × columns); with these \(asked) that is over \(most): run or delete them first")
        }
        // And by bytes: eight tables of one 32 MB text cell each are eight cells.
        func bytes(_ u: [TAPUpload]) -> Int { u.reduce(0) { $0 + $1.table.heldBytes } }
        let heldBytes = mine.reduce(0) { $0 + bytes($1.uploads) }, askedBytes = bytes(uploads), mostBytes = 2 * service.limits.upload.bytes
        guard heldBytes + askedBytes <= mostBytes else {
            throw TAPError(429, "your async jobs not yet run hold \(heldBytes >> 20) MiB of uploads; with these \(askedBytes >> 20) MiB that is over \(mostBytes >> 20) MiB: run or delete them first")
        }
        var rng = SystemRandomNumberGenerator()
        let id = (0..<16).map { _ in String(format: "%x", Int.random(in: 0..<16, using: &rng)) }.joined()
        let now = Date()
        let job = Job(id: id, owner: owner, phase: .pending, parameters: parameters, created: now, started: nil, ended: nil,
                      destruction: now.addingTimeInterval(service.limits.asyncRetentionSeconds), executionDuration: 600, result: nil, error: nil,
                      uploads: uploads)
        jobs[id] = job
        return job
    }

    /// The job `id` if `owner` may see it.
    public func job(_ id: String, owner: String) throws(TAPError) -> Job {
        sweep()
        guard let j = jobs[id], j.owner == owner else { throw TAPError(404, "no async job \(id.prefix(40)) of yours (finished and destroyed, never created, or another user's)") }
        return j
    }

    public func list(owner: String) -> [Job] {
        sweep()
        return jobs.values.filter { $0.owner == owner }.sorted { $0.created < $1.created }
    }

    public func run(_ id: String, owner: String) throws(TAPError) {
        let j = try job(id, owner: owner)
        guard j.phase == .pending else { return }  // running, finished or aborted: nothing to do
        jobs[id]?.phase = .queued
        waiting.append(id)
        startWaiting(of: owner)
    }

    /// Starts `owner`'s queued jobs, oldest first, while fewer than `maxRunningPerUser` run.
    func startWaiting(of owner: String) {
        waiting.removeAll { jobs[$0]?.phase != .queued || running[$0] != nil }
        while running.values.filter({ $0.owner == owner }).count < Self.maxRunningPerUser,
              let k = waiting.firstIndex(where: { jobs[$0]?.owner == owner }) {
            start(waiting.remove(at: k))
        }
    }

    private func start(_ id: String) {
        guard let j = jobs[id] else { return }
        let owner = j.owner
        let service = self.service
        let params = j.parameters
        let uploads = j.uploads
        jobs[id]?.uploads = []
        let limit = Double(j.executionDuration)
        // Not the request's own task: its client leaving (a WAIT that started it) must not stop it.
        running[id] = (owner, ClientDeparture.unwatched { Task {
            self.started(id)
            let outcome: Result<TAPTable, TAPError>
            do {
                try Gateway.checkParameters(params, limits: service.limits)
                let maxrec = try service.maxrec(params["MAXREC"])
                guard let q = params["QUERY"], !q.isEmpty else { throw TAPError(400, "no QUERY parameter: give QUERY=an ADQL query") }
                outcome = .success(try await Self.withDeadline(limit) { () async throws(TAPError) -> TAPTable in
                    try await service.run(adql: q, maxrec: maxrec, user: owner, priority: .batch, uploads: uploads,
                                          uploadLifetime: max(TAPService.uploadLifetimeSeconds, limit + 300))
                })
            } catch let e as TAPError {
                outcome = .failure(e)
            } catch {
                outcome = .failure(TAPError(500, "\(error)"))
            }
            self.finished(id, outcome)
        } })
    }

    static func withDeadline(_ seconds: Double, _ body: @escaping @Sendable () async throws(TAPError) -> TAPTable) async throws(TAPError) -> TAPTable {
        do {
            return try await withThrowingTaskGroup(of: TAPTable?.self) { group in
                group.addTask { try await body() }
                group.addTask {
                    try await Task.sleep(nanoseconds: UInt64(seconds * 1e9))
                    return nil
                }
                defer { group.cancelAll() }
                guard let first = try await group.next(), let table = first else {
                    throw TAPError(408, "the job ran past its execution duration of \(Int(seconds)) s and was aborted")
                }
                return table
            }
        } catch let e as TAPError {
            throw e
        } catch {
            throw TAPError(500, "\(error)")
        }
    }

    func started(_ id: String) {
        guard jobs[id]?.phase == .queued else { return }
        jobs[id]?.phase = .executing
        jobs[id]?.started = Date()
    }

    func finished(_ id: String, _ outcome: Result<TAPTable, TAPError>) {
        let slot = running.removeValue(forKey: id)
        defer { if let owner = slot?.owner ?? jobs[id]?.owner { startWaiting(of: owner) } }
        guard let j = jobs[id], j.phase.isActive else { return }
        jobs[id]?.ended = Date()
        switch outcome {
        case .success(let t):
            let owner = jobs[id]?.owner ?? ""
            let held = jobs.values.filter { $0.owner == owner }.reduce(0) { $0 + ($1.result.map { $0.rowCount * max(1, $0.fields.count) } ?? 0) }
            let cells = t.rowCount * max(1, t.fields.count)
            if held + cells > Self.maxResultCellsPerUser {
                jobs[id]?.error = "the result (\(t.rowCount) rows × \(t.fields.count) columns) would make your jobs hold more than \(Self.maxResultCellsPerUser) values: delete finished jobs, or lower MAXREC"
                jobs[id]?.phase = .error
                return
            }
            jobs[id]?.result = t
            jobs[id]?.phase = .completed
        case .failure(let e):
            jobs[id]?.error = e.message
            jobs[id]?.phase = .error
        }
    }

    public func abort(_ id: String, owner: String) throws(TAPError) {
        let j = try job(id, owner: owner)
        guard j.phase == .pending || j.phase.isActive else { return }
        running[id]?.task.cancel()
        jobs[id]?.phase = .aborted
        jobs[id]?.ended = Date()
        startWaiting(of: owner)
    }

    public func delete(_ id: String, owner: String) throws(TAPError) {
        _ = try job(id, owner: owner)
        running[id]?.task.cancel()
        jobs[id] = nil
        startWaiting(of: owner)
    }

    /// Changes a parameter, the execution duration or the destruction time (PENDING only for
    /// parameters, as UWS says).
    public func update(_ id: String, owner: String, _ change: (inout Job) throws(TAPError) -> Void) throws(TAPError) -> Job {
        var j = try job(id, owner: owner)
        try change(&j)
        jobs[id] = j
        return j
    }

    /// Waits while the job is in `phase` (or active), at most `seconds` (UWS 1.1's blocking GET).
    /// A `phase` the job can leave only by a request (COMPLETED, ERROR, ABORTED) returns at once,
    /// as UWS 1.1 says: waiting on one held a request slot for the whole minute.
    public func wait(_ id: String, owner: String, seconds: Double, whilePhase: Phase?) async throws(TAPError) -> Job {
        let deadline = Date().addingTimeInterval(min(max(seconds, 0), 60))
        var j = try job(id, owner: owner)
        // A client that leaves ends its wait: its place is not held for the rest of the minute.
        let departure = ClientDeparture.ofRequest
        while Date() < deadline, departure?.hasLeft != true, whilePhase.map({ $0 == j.phase && ($0 == .pending || $0.isActive) }) ?? j.phase.isActive {
            try? await Task.sleep(nanoseconds: 20_000_000)
            j = try job(id, owner: owner)
        }
        return j
    }

    /// Drops jobs past their destruction time.
    func sweep() {
        let now = Date()
        var owners = Set<String>()
        for (id, j) in jobs where j.destruction < now {
            running[id]?.task.cancel()
            jobs[id] = nil
            owners.insert(j.owner)
        }
        for o in owners { startWaiting(of: o) }
    }
}
