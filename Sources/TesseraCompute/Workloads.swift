import TesseraProtocol

/// Jobs with answers known without the cluster: plans, random graphs, and a brute-force
/// evaluation of a graph. Shared by the benchmarks, the tests and the simulation.
public enum Workloads {
    /// `leaves` leaf tasks (argument i) reduced in a tree of fan-in `fanIn`; with `inc` and
    /// `sum` the answer is leaves·(leaves+1)/2.
    public static func treeReduce(leaves: UInt64, fanIn: UInt32, leaf: String = "inc", reduce: String = "sum",
                                  leafParams: Tessera_V1_OperatorParams? = nil) -> Tessera_V1_Plan {
        var p = Tessera_V1_TreeReducePlan()
        p.leaves = leaves
        p.fanIn = fanIn
        p.leafOperator = leaf
        p.reduceOperator = reduce
        if let leafParams { p.leafParams = leafParams }
        var plan = Tessera_V1_Plan()
        plan.treeReduce = p
        return plan
    }

    public static func independent(tasks: UInt64, op: String = "inc", params: Tessera_V1_OperatorParams? = nil) -> Tessera_V1_Plan {
        var p = Tessera_V1_IndependentPlan()
        p.tasks = tasks
        p.operator = op
        if let params { p.params = params }
        var plan = Tessera_V1_Plan()
        plan.independent = p
        return plan
    }

    /// Parameters that make `inc` sleep this long per task (a stand-in for real work).
    public static func sleeping(microseconds: Double) -> Tessera_V1_OperatorParams? {
        guard microseconds > 0 else { return nil }
        var params = Tessera_V1_OperatorParams()
        params.numbers["sleep_us"] = microseconds
        return params
    }

    public static func chain(length: UInt64, op: String = "inc") -> Tessera_V1_Plan {
        var p = Tessera_V1_ChainPlan()
        p.length = length
        p.operator = op
        var plan = Tessera_V1_Plan()
        plan.chain = p
        return plan
    }

    /// A random DAG: every task is `inc` (the sum of its inputs plus one; arg + 1 with none),
    /// reading up to `maxInputs` earlier tasks, mostly recent ones so that the graph is deep.
    public static func randomGraph(tasks n: Int, seed: UInt64, maxInputs: Int = 4, explicitOutputs: Bool = false) -> TaskGraph {
        var rng = SplitMix64(seed: seed)
        var g = TaskGraph(operators: ["inc"])
        for t in 0..<n {
            var ins: [UInt32] = []
            if t > 0 {
                let k = Int(rng.next() % UInt64(min(t, maxInputs) + 1))
                var chosen = Set<UInt32>()
                while chosen.count < k {
                    let window = min(t, 12)
                    let i = rng.next() % 4 == 0 ? Int(rng.next() % UInt64(t)) : t - 1 - Int(rng.next() % UInt64(window))
                    chosen.insert(UInt32(i))
                }
                ins = chosen.sorted()
            }
            g.add(operatorIndex: 0, arg: Int64(rng.next() % 100), inputs: ins)
        }
        if explicitOutputs {
            // Every sink plus some tasks that others also read.
            var hasDependents = [Bool](repeating: false, count: n)
            for i in g.inputs { hasDependents[Int(i)] = true }
            g.outputs = (0..<n).filter { !hasDependents[$0] || rng.next() % 5 == 0 }.map(UInt32.init)
        }
        return g
    }

    /// Every task's value, evaluated in index order with plain integer arithmetic (the graph's
    /// tasks are all `inc`).
    public static func bruteForce(_ g: TaskGraph) -> [Int64] {
        var v = [Int64](repeating: 0, count: g.taskCount)
        for t in 0..<g.taskCount {
            let r = Int(g.inputOffsets[t])..<Int(g.inputOffsets[t + 1])
            if r.isEmpty { v[t] = g.arg[t] &+ 1 } else { v[t] = r.reduce(Int64(1)) { $0 &+ v[Int(g.inputs[$1])] } }
        }
        return v
    }

    /// The graph's output tasks (its explicit outputs, else every task nothing reads).
    public static func outputTasks(_ g: TaskGraph) -> [UInt32] {
        if !g.outputs.isEmpty { return g.outputs }
        var has = [Bool](repeating: false, count: g.taskCount)
        for i in g.inputs { has[Int(i)] = true }
        return (0..<g.taskCount).filter { !has[$0] }.map(UInt32.init)
    }
}
