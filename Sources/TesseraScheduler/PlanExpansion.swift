import TesseraProtocol

/// Expands a compact plan into the task graph it stands for, at the scheduler, so a client sends
/// a few bytes however many tasks the plan means.
public enum PlanExpansion {
    public static func expand(_ plan: Tessera_V1_Plan, maximumTasks: Int) throws(ProtocolError) -> TaskGraph {
        switch plan.kind {
        case .independent(let p):
            try check(p.tasks, "independent plan", maximumTasks)
            try checkName(p.operator, "operator")
            var g = TaskGraph(operators: [p.operator], params: p.hasParams ? [p.params] : [])
            let n = Int(p.tasks)
            g.reserve(tasks: n, inputs: 0)
            let pi: UInt32 = p.hasParams ? 1 : 0
            for i in 0..<n { g.add(operatorIndex: 0, arg: Int64(i), paramIndex: pi) }
            return g
        case .treeReduce(let p):
            try check(p.leaves, "tree-reduce plan", maximumTasks)
            try checkName(p.leafOperator, "leaf operator")
            try checkName(p.reduceOperator, "reduce operator")
            guard p.fanIn >= 2 else { throw .invalidContent("tree-reduce plan needs a fan-in of at least 2, got \(p.fanIn)") }
            var g = TaskGraph(operators: [p.leafOperator, p.reduceOperator], params: p.hasLeafParams ? [p.leafParams] : [])
            let leaves = Int(p.leaves), fanIn = Int(p.fanIn)
            g.reserve(tasks: leaves + leaves / (fanIn - 1) + 1, inputs: leaves * 2)
            let pi: UInt32 = p.hasLeafParams ? 1 : 0
            let layer = (0..<leaves).map { g.add(operatorIndex: 0, arg: Int64($0), paramIndex: pi) }
            g.addReduction(of: layer, operatorIndex: 1, fanIn: fanIn)
            guard g.taskCount <= maximumTasks else { throw .invalidContent("tree-reduce plan expands to \(g.taskCount) tasks, more than \(maximumTasks)") }
            return g
        case .chain(let p):
            try check(p.length, "chain plan", maximumTasks)
            try checkName(p.operator, "operator")
            var g = TaskGraph(operators: [p.operator])
            g.reserve(tasks: Int(p.length), inputs: Int(p.length))
            var prev = g.add(operatorIndex: 0, arg: 0)
            for _ in 1..<Int(p.length) { prev = g.add(operatorIndex: 0, inputs: [prev]) }
            return g
        case .catalog:
            throw .invalidContent("catalog queries are expanded against the registry (SchedulerCore.expandCatalogQuery)")
        case nil:
            throw .invalidContent("plan names no kind of work")
        }
    }

    static func check(_ n: UInt64, _ what: String, _ maximum: Int) throws(ProtocolError) {
        guard n > 0 else { throw .invalidContent("\(what) has no tasks") }
        guard n <= UInt64(maximum) else { throw .invalidContent("\(what) asks for \(n) tasks, more than the limit of \(maximum)") }
    }

    static func checkName(_ s: String, _ what: String) throws(ProtocolError) {
        guard !s.isEmpty else { throw .invalidContent("plan names no \(what)") }
    }
}
