import SwiftProtobuf
import Dispatch
import Foundation
import Synchronization
import TesseraCompute
import TesseraProtocol

/// A client of one scheduler, for use from async code: each question runs on a connection of
/// its own, on a thread of its own, so any number can be in flight.
public final class TesseraClient: Sendable {
    public let endpoint: String

    public init(endpoint: String = "tcp://127.0.0.1:5555") {
        self.endpoint = endpoint
    }

    /// Starts a question of the dataset `name`; nothing is sent until its results are asked for.
    public func catalog(_ name: String) -> CatalogQuery { CatalogQuery(dataset: name, endpoint: endpoint) }
}

extension CatalogQuery {
    /// Partial answers as they are merged (with ``progressive(every:)``; row batches of a
    /// collect), then the final answer. Ending the iteration early cancels the job.
    public func updates(name: String = "") -> AsyncThrowingStream<CatalogUpdate, any Error> {
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: CatalogUpdate.self)
        guard let endpoint else {
            continuation.finish(throwing: ClientError.invalidQuery("this query has no scheduler: make it with TesseraClient.catalog(_:)"))
            return stream
        }
        let stop = StopFlag()
        continuation.onTermination = { _ in stop.set() }
        let query = self
        let thread = Thread {
            do {
                let conn = try SchedulerConnection(endpoint: endpoint)
                let final = try conn.run(query, name: name, onUpdate: { continuation.yield($0) }, isStopped: stop.isSet)
                continuation.yield(final)
                continuation.finish()
            } catch {
                continuation.finish(throwing: error)
            }
        }
        thread.start()
        return stream
    }

    /// The final answer.
    public func result(name: String = "") async throws -> CatalogResult {
        var last: CatalogResult?
        for try await u in updates(name: name) where u.isFinal { last = u.result }
        guard let last else { throw ClientError.timedOut("the job ended without an answer") }
        return last
    }
}

/// Set once, read from any thread.
final class StopFlag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .relaxed) }
    func isSet() -> Bool { value.load(ordering: .relaxed) }
}

extension SchedulerConnection {
    /// Runs a catalog question to its end on this connection.
    ///
    /// - Parameters:
    ///   - isStopped: polled while waiting; when it turns true the job is cancelled and this throws.
    ///   - onUpdate: each progressive partial answer, each row batch of a collect, and each
    ///     output's tiles of a HiPS.
    /// - Returns: the final answer.
    ///
    /// A question lost to a scheduler restart before any of its rows came is asked again (its
    /// progressive snapshots restart from nothing); a collect that had already streamed rows
    /// fails with ``ClientError/schedulerRestarted(job:message:)``, since the caller has them.
    ///
    /// - Parameter keepsRows: false for a collect whose caller takes each batch from `onUpdate`
    ///   as it comes: the batches are then not kept, and the final answer has the counts
    ///   (shards, rows read and matched) without the rows.
    public func run(_ query: CatalogQuery, name: String = "", idleTimeout: Double = 120, keepsRows: Bool = true,
                    onUpdate: (CatalogUpdate) -> Void = { _ in }, isStopped: () -> Bool = { false }) throws -> CatalogUpdate {
        let plan = query.plan
        let start = DispatchTime.now().uptimeNanoseconds
        func seconds() -> Double { Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }
        let jobName = name.isEmpty ? "catalog \(plan.dataset)" : name
        // Cutouts and HiPS tiles are large values: taken straight from their workers.
        let direct = plan.hasCutout || plan.hasHips
        var job = try submit(.plan(query.wirePlan), name: jobName, priority: query.priority, directResults: direct).jobID
        var final: CatalogPartial?
        // A collect's batches, joined once at the end; their rows, against the cap as they come.
        var collected: [CatalogPartial] = []
        var collectedRows = 0
        // Batches handed on and not kept: their counts only.
        var handedOn: CatalogPartial?
        var lastHeard = DispatchTime.now().uptimeNanoseconds
        var resubmitted = 0
        while true {
            if isStopped() {
                try? cancel(job: job)
                throw CancellationError()
            }
            let event: JobEvent?
            do {
                event = try nextEvent(job: job, timeout: 0.1)
            } catch ClientError.schedulerRestarted where resubmitted < Self.resubmissions && collected.isEmpty && handedOn == nil && final == nil {
                resubmitted += 1
                job = try resubmit(.plan(query.wirePlan), name: jobName, priority: query.priority, directResults: direct).jobID
                lastHeard = DispatchTime.now().uptimeNanoseconds
                continue
            }
            guard let ev = event else {
                if Double(DispatchTime.now().uptimeNanoseconds - lastHeard) / 1e9 > idleTimeout {
                    try? cancel(job: job)
                    throw ClientError.timedOut("no news of job \(job) for \(idleTimeout) s")
                }
                continue
            }
            lastHeard = DispatchTime.now().uptimeNanoseconds
            switch ev {
            case .results(let values, let done, let total):
                for (_, value, partial) in values {
                    guard case .bytes(let b) = value, let p = try? CatalogPartial(serializedBytes: b) else {
                        try? cancel(job: job)
                        throw ClientError.invalidQuery("job \(job) sent a value that is not a catalog answer (\(value))")
                    }
                    if partial || plan.hasHips {
                        // Progressive snapshots, and a HiPS's tiles (each output a few tiles, for
                        // the caller to write as they come; none is kept here).
                        onUpdate(CatalogUpdate(result: CatalogResult(plan: plan, partial: p), isFinal: false, seconds: seconds(),
                                               tasksDone: Int(done), taskCount: Int(total)))
                    } else if plan.hasRows && plan.rows.limit == 0 {
                        // A collect: each shard's rows arrive as a batch of their own.
                        if keepsRows {
                            collected.append(p)
                        } else {
                            var counts = handedOn ?? CatalogPartial()
                            counts.shards &+= p.shards
                            counts.rowsScanned &+= p.rowsScanned
                            counts.rowsMatched &+= p.rowsMatched
                            // A batch of no rows still names the columns: kept for the final
                            // answer, whose table then has them when no batch had a row.
                            if counts.rows.names.isEmpty && p.rows.rowCount == 0 { counts.rows = p.rows }
                            handedOn = counts
                        }
                        collectedRows += p.rows.rowCount
                        let cap = CheckedCatalogQuery.rowCap(plan)
                        if collectedRows > cap {
                            try? cancel(job: job)
                            throw ClientError.invalidQuery(CatalogQueryError.overRowCap(cap).message)
                        }
                        onUpdate(CatalogUpdate(result: CatalogResult(plan: plan, partial: p), isFinal: false, seconds: seconds(),
                                               tasksDone: Int(done), taskCount: Int(total)))
                    } else {
                        final = p
                    }
                }
            case .finished(let f):
                guard f.state == .jobDone else {
                    throw ClientError.jobEnded(state: f.state, message: f.error)
                }
                var answer = final ?? handedOn ?? CatalogPartial()
                if final == nil && !collected.isEmpty {
                    do throws(CatalogQueryError) {
                        answer = try CatalogMerge.merge(collected, plan: plan)
                    } catch {
                        throw ClientError.invalidQuery(error.message)
                    }
                }
                return CatalogUpdate(result: CatalogResult(plan: plan, partial: answer), isFinal: true, seconds: seconds(),
                                     tasksDone: Int(f.tasksDone), taskCount: Int(f.taskCount))
            }
        }
    }
}
