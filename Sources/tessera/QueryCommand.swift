import ArgumentParser
import Foundation
import TesseraClient
import TesseraCompute
import TesseraProtocol

struct QueryCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "query",
        abstract: "Ask a question of a catalog, computed where its shards are.",
        discussion: """
            Examples:
              tessera query --dataset object --where "refExtendedness == 0 and mag(r_psfFlux) < 24"
              tessera query --dataset object --cone 60,-35,0.5 --agg "mean:mag(g_psfFlux) - mag(r_psfFlux)"
            """)

    @Option(help: "The dataset.")
    var dataset: String

    @Option(help: "A cone: RA,DEC,RADIUS in degrees.")
    var cone: String?

    @Option(name: .customLong("where"), help: "A condition rows must meet, e.g. \"mag(r_psfFlux) < 24 and refExtendedness == 0\".")
    var filter: String = ""

    @Option(help: "count (default), or mean:EXPR for count, mean, std, min, max and sum of an expression.")
    var agg: String = "count"

    @Option(help: "Output: table or json.")
    var format: String = "table"

    @Option(help: "The scheduler's client endpoint.")
    var scheduler = defaultSchedulerEndpoint

    func validate() throws {
        guard agg == "count" || agg.hasPrefix("mean:") else { throw ValidationError("--agg must be `count` or `mean:EXPR`") }
        guard format == "table" || format == "json" else { throw ValidationError("--format must be table or json") }
        if let cone { _ = try parseCone(cone) }
    }

    func parseCone(_ s: String) throws -> (Double, Double, Double) {
        let p = s.split(separator: ",").map { Double($0.trimmingCharacters(in: .whitespaces)) }
        guard p.count == 3, let ra = p[0], let dec = p[1], let r = p[2], r > 0 else {
            throw ValidationError("--cone needs RA,DEC,RADIUS in degrees with a positive radius, got `\(s)`")
        }
        return (ra, dec, r)
    }

    func run() throws {
        let q = CatalogQuery(dataset: dataset, filter: filter, cone: try cone.map(parseCone),
                             moments: agg.hasPrefix("mean:") ? String(agg.dropFirst(5)) : nil)
        let conn = try SchedulerConnection(endpoint: scheduler)
        let out = try conn.run(.plan(q.plan), name: "query \(dataset)")
        guard out.finished.state == .jobDone else {
            throw ClientError.jobEnded(state: out.finished.state, message: out.finished.error)
        }
        let shards = out.finished.taskCount
        switch out.values.values.first {
        case .int64(let n)?:
            print(format == "json" ? jsonLine([("count", Int(n)), ("seconds", out.seconds), ("tasks", Int(shards))])
                                   : "count: \(n)   (\(String(format: "%.3f", out.seconds)) s, \(shards) tasks)")
        case .moments(let m)?:
            let fields: [(String, Any)] = [("count", Int(m.count)), ("mean", m.mean), ("std", m.standardDeviation),
                                           ("min", m.min), ("max", m.max), ("sum", m.sum), ("seconds", out.seconds)]
            print(format == "json" ? jsonLine(fields) : fields.map { "\($0.0): \($0.1)" }.joined(separator: "   "))
        default:
            print("no result")
        }
    }
}
