import Foundation
import Synchronization
import TesseraClient
import ZeroMQ

/// Connections to the scheduler kept between requests. Opening one costs a ZeroMQ context (an
/// I/O thread), a CURVE handshake and a round trip: at 50 concurrent cones that setup was most
/// of a TAP request's time. Each connection serves one request at a time, on a thread of that
/// request's own (the client blocks), and goes back to the pool only if the request ended
/// without an error, so a connection in an unknown state is never reused.
final class SchedulerPool: Sendable {
    let endpoint: String
    /// Idle connections kept at most.
    let maxIdle: Int
    private let idle = Mutex<[Pooled]>([])

    /// One connection, owned by whoever took it from the pool (never two at once).
    private final class Pooled: @unchecked Sendable {
        let connection: SchedulerConnection
        init(_ c: SchedulerConnection) { connection = c }
    }

    /// One ZeroMQ context for every pooled connection: one I/O thread, not one per connection
    /// (50 opened at once under load were 100 threads starting while requests waited).
    let context: ZMQContext?
    /// The threads requests block on, kept between requests.
    let threads = BlockingThreads()

    init(endpoint: String, maxIdle: Int = 64) {
        self.endpoint = endpoint
        self.maxIdle = maxIdle
        context = try? ZMQContext(ioThreads: 1)
    }

    /// Runs `body` with a connection acting for `user`. `body` is handed a flag that a running
    /// question polls (and then cancels its job): it turns true when the task is cancelled, or
    /// when the client of the request being served leaves (``ClientDeparture/ofRequest``).
    func run<T: Sendable>(as user: String, _ body: @escaping @Sendable (SchedulerConnection, _ isStopped: @escaping @Sendable () -> Bool) throws -> T) async throws -> T {
        let flag = StopSignal()
        let departure = ClientDeparture.ofRequest
        let isStopped: @Sendable () -> Bool = { flag.isSet() || departure?.hasLeft == true }
        return try await withTaskCancellationHandler {
            try await threads.perform {
                let pooled = try self.idle.withLock { $0.popLast() } ?? Pooled(SchedulerConnection(endpoint: self.endpoint, timeout: 5, sharedContext: self.context))
                pooled.connection.onBehalfOf = user
                let value = try body(pooled.connection, isStopped)
                self.idle.withLock { if $0.count < self.maxIdle { $0.append(pooled) } }
                return value
            }
        } onCancel: {
            flag.set()
        }
    }
}

/// Set once from any thread (a cancelled request), read by the thread running its question.
final class StopSignal: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .relaxed) }
    @Sendable func isSet() -> Bool { value.load(ordering: .relaxed) }
}

/// Threads for blocking work (a request waiting on its scheduler connection), kept for a minute
/// after their last piece of work: a request reuses an idle one instead of starting a thread,
/// and a new one starts only when every thread is busy, so no work waits behind another.
final class BlockingThreads: @unchecked Sendable {
    private let condition = NSCondition()
    private var queue: [@Sendable () -> Void] = []
    private var idle = 0
    static let idleSeconds = 60.0

    /// Runs `body` on one of these threads and returns what it returns: work that blocks or
    /// computes for long (a scheduler connection's wait, a query over an upload held here, an
    /// upload's parsing) must not hold one of the few threads every request's async code shares.
    func perform<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, any Error>) in
            run { c.resume(with: Result { try body() }) }
        }
    }

    func run(_ work: @escaping @Sendable () -> Void) {
        condition.lock()
        queue.append(work)
        let enough = queue.count <= idle
        if enough { condition.signal() }
        condition.unlock()
        if !enough { Thread { self.loop() }.start() }
    }

    private func loop() {
        condition.lock()
        while true {
            while queue.isEmpty {
                idle += 1
                let signalled = condition.wait(until: Date().addingTimeInterval(Self.idleSeconds))
                idle -= 1
                if !signalled && queue.isEmpty {
                    condition.unlock()
                    return
                }
            }
            let work = queue.removeFirst()
            condition.unlock()
            work()
            condition.lock()
        }
    }
}
