// A first Tessera program: sum of squares of 0..<N, computed in parallel on a local cluster.
//
//   swift run SumOfSquares                        # starts its own local cluster
//   swift run SumOfSquares tcp://127.0.0.1:7700   # or uses a running one (`tessera local`)
//
// Each partition becomes a task that generates its slice of numbers on a worker; the partial
// moments (count, mean, M2, min, max, sum) are merged in a tree. Σx² = M2 + n·mean².
import Foundation
import TesseraClient
import TesseraCluster
import TesseraCompute
import TesseraProtocol

let n = 10_000_000
let partitions = 40
let per = n / partitions

var cluster: LocalCluster?
let endpoint: String
if CommandLine.arguments.count > 1 {
    endpoint = CommandLine.arguments[1]
} else {
    cluster = try LocalCluster()
    endpoint = cluster!.clientEndpoint
}
defer { cluster?.stop() }

let conn = try SchedulerConnection(endpoint: endpoint)
var graph = TaskGraph(operators: ["arange", "moments", "merge_moments"])
var partials: [UInt32] = []
for p in 0..<partitions {
    var params = Tessera_V1_OperatorParams()
    params.numbers = ["start": Double(p * per), "step": 1]
    graph.params.append(params)
    let slice = graph.add(operatorIndex: 0, arg: Int64(per), paramIndex: UInt32(graph.params.count))
    partials.append(graph.add(operatorIndex: 1, inputs: [slice]))
}
let root = graph.addReduction(of: partials, operatorIndex: 2, fanIn: 8)

let outcome = try conn.run(.graph(graph), name: "sum-of-squares")
guard case .moments(let m)? = outcome.values[root] else {
    fatalError("job ended: \(outcome.finished.state) \(outcome.finished.error)")
}
let sumOfSquares = m.m2 + m.count * m.mean * m.mean
let exact = Double(n - 1) * Double(n) * Double(2 * n - 1) / 6
print("Σx² for x in 0..<\(n) = \(sumOfSquares) (exact \(exact), relative error \(abs(sumOfSquares - exact) / exact))")
print(String(format: "%d tasks in %.3f s", graph.taskCount, outcome.seconds))
