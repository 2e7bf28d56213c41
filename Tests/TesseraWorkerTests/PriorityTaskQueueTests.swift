import Testing
import TesseraCompute
import TesseraProtocol
import TesseraWorker
import Foundation
import Synchronization

struct PriorityTaskQueueTests {
    @Test("a worker's queue starts the most urgent class first, each class in arrival order")
    func workerQueueOrder() {
        var q = PriorityTaskQueue()
        let op = TaskOperator("noop", "does nothing") { _ in .empty }
        func task(_ key: UInt64, _ p: PriorityClass) -> ExecutableTask {
            var t = ExecutableTask(key: key, op: op, context: OperatorContext(arg: 0, params: .init(), inputs: []), flags: 0, profile: 0)
            t.priority = p.rawValue
            return t
        }
        for k in 0..<4 { q.append(task(UInt64(k), .batch)) }
        q.append(task(10, .normal))
        q.append(task(20, .interactive))
        q.append(task(21, .interactive))
        #expect(q.count == 7)
        let taken = q.take { $0.key == 2 }
        #expect(taken.map(\.key) == [2])
        var order: [UInt64] = []
        while let t = q.popFirst() { order.append(t.key) }
        #expect(order == [20, 21, 10, 0, 1, 3])
    }
}

/// Set once from any thread.
final class Started: Sendable {
    private let flag = Mutex(false)
    func set() { flag.withLock { $0 = true } }
    var isSet: Bool { flag.withLock { $0 } }
}

/// The daemon's pool: batch tasks on threads of lower OS priority, sharing the run slots.
struct ExecutorPoolPriorityTests {
    static func task(_ key: UInt64, _ p: PriorityClass, sleepMicros: UInt32, started: Started? = nil) -> ExecutableTask {
        let op = TaskOperator("sleep", "sleeps") { _ in
            started?.set()
            usleep(sleepMicros)
            return .empty
        }
        return ExecutableTask(key: key, op: op, context: OperatorContext(arg: 0, params: .init(), inputs: []), flags: 0, profile: 1,
                              priority: p.rawValue)
    }

    @Test("interactive and normal tasks start at once beside a running batch task, before queued ones, and batch tasks run at nice +10")
    func interactiveOvertakesQueuedBatch() throws {
        let pool = ExecutorPool(threads: 1, wake: {})
        defer { pool.stop() }
        let first = Started()
        pool.submit([Self.task(1, .batch, sleepMicros: 100_000, started: first)] + (2...4).map { Self.task(UInt64($0), .batch, sleepMicros: 20_000) })
        // Until the first batch task runs, and both threads have named themselves (a loaded machine may take a while).
        var nices: [String: Int32] = [:]
        for _ in 0..<5000 {
            nices = Self.threadNices()
            if first.isSet && nices["tessera-batch-0"] != nil && nices["tessera-exec-0"] != nil { break }
            usleep(1000)
        }
        #expect(first.isSet)
        #expect(nices["tessera-batch-0"] == ExecutorPool.backgroundNice, "\(nices)")
        #expect(nices["tessera-exec-0"] == 0, "\(nices)")
        pool.submit([Self.task(10, .interactive, sleepMicros: 1_000), Self.task(11, .normal, sleepMicros: 1_000)])
        var done: [UInt64] = []
        for _ in 0..<5000 where done.count < 6 {
            done += pool.drainCompletions().map(\.key)
            usleep(1000)
        }
        // The foreground tasks ran on their own slot while batch task 1 slept; queued batch
        // tasks after it.
        #expect(done == [10, 11, 1, 2, 3, 4])
    }

    @Test("the pool reports an interactive task begun when it begins, not when it is queued, and no other class's")
    func interactiveStartsAreReported() throws {
        let pool = ExecutorPool(threads: 1, wake: {})
        defer { pool.stop() }
        let first = Started(), second = Started()
        pool.submit([Self.task(1, .interactive, sleepMicros: 200_000, started: first), Self.task(2, .interactive, sleepMicros: 1_000, started: second),
                     Self.task(3, .normal, sleepMicros: 1_000), Self.task(4, .batch, sleepMicros: 1_000)])
        for _ in 0..<5000 where !first.isSet { usleep(1000) }
        // Task 1 runs on the one foreground slot; task 2 waits behind it.
        #expect(pool.drainStarted() == [1])
        #expect(!second.isSet)
        var started: [UInt64] = []
        var done: [UInt64] = []
        for _ in 0..<5000 where done.count < 4 {
            started += pool.drainStarted()
            done += pool.drainCompletions().map(\.key)
            usleep(1000)
        }
        started += pool.drainStarted()
        #expect(started == [2])
        #expect(Set(done) == [1, 2, 3, 4])
    }

    /// Nice values of this process's threads by name (Linux: /proc/self/task/TID/{comm,stat}).
    static func threadNices() -> [String: Int32] {
        var out: [String: Int32] = [:]
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
        for tid in tasks {
            guard let comm = try? String(contentsOfFile: "/proc/self/task/\(tid)/comm", encoding: .utf8),
                  let stat = try? String(contentsOfFile: "/proc/self/task/\(tid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { continue }
            // Fields after the command: state is the first, nice the 17th.
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 16, let nice = Int32(fields[16]) else { continue }
            out[comm.trimmingCharacters(in: .whitespacesAndNewlines)] = nice
        }
        return out
    }
}
