import Testing
import TesseraCompute
import TesseraProtocol
import TesseraWorker

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
