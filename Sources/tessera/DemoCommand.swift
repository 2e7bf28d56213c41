import ArgumentParser
import Foundation
import TesseraClient
import TesseraCluster
import TesseraCompute
import TesseraProtocol
import TesseraSurvey

struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run a small job on a local cluster and show its results arriving.")

    @Option(help: "Workers of the local cluster.")
    var workers = 2

    @Option(help: "Partitions of generated data.")
    var partitions = 64

    @Option(help: "Values per partition.")
    var rows = 200_000

    @Option(help: "Rows of the generated demo catalog.")
    var catalogRows = 500_000

    @Option(help: "Folder for the cluster's registry, shards and the generated input.")
    var data = "tessera-data"

    func run() throws {
        var o = LocalCluster.Options()
        o.workers = workers
        o.dataDirectory = data
        o.logFile = FileManager.default.temporaryDirectory.appendingPathComponent("tessera-demo.log").path
        print("starting a local cluster of \(workers) workers (data in \(data)/) ...")
        let cluster = try LocalCluster(o)
        defer { cluster.stop() }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        print("scheduler at \(cluster.clientEndpoint)")
        try ingestDemoCatalog(conn)
        try askTheCatalog(conn)

        // Mean and spread of normal deviates generated on the workers, partition by partition,
        // merged in a tree: each partition's moments stream back as they are computed.
        var g = TaskGraph(operators: ["random_normal", "moments", "merge_moments"])
        var leaves: [UInt32] = []
        for i in 0..<partitions {
            var params = Tessera_V1_OperatorParams()
            params.numbers = ["seed": Double(i + 1), "mean": 20, "sigma": 2]
            g.params.append(params)
            let gen = g.add(operatorIndex: 0, arg: Int64(rows), paramIndex: UInt32(g.params.count))
            leaves.append(g.add(operatorIndex: 1, inputs: [gen]))
        }
        let root = g.addReduction(of: leaves, operatorIndex: 2, fanIn: 8)
        g.outputs = leaves + [root]
        let total = Double(partitions * rows)
        print("job: \(g.taskCount) tasks over \(partitions) partitions of \(rows) values")
        var running = Moments()
        let outcome = try conn.run(.graph(g), name: "demo") { ev in
            guard case .results(let vs, let done, let count) = ev else { return }
            for (t, v) in vs where t != root {
                if case .moments(let m) = v { running.merge(m) }
            }
            print(String(format: "  partial: %4.0f%% of values  mean %.5f  std %.5f   (%d/%d tasks)",
                         100 * running.count / total, running.mean, running.standardDeviation, done, count))
        }
        guard outcome.finished.state == .jobDone, case .moments(let m)? = outcome.values[root] else {
            throw ClientError.jobEnded(state: outcome.finished.state, message: outcome.finished.error)
        }
        print(String(format: "final: %.0f values, mean %.6f, std %.6f, min %.3f, max %.3f (expected mean 20, std 2)",
                     m.count, m.mean, m.standardDeviation, m.min, m.max))
        print(String(format: "%.3f s, first partial after %.3f s, %d result messages", outcome.seconds, outcome.firstResultSeconds ?? 0, outcome.resultMessages))
        print(StatusReport.render(try conn.status(), endpoint: cluster.clientEndpoint))
    }

    /// Two questions of the demo catalog, answered where its shards live.
    func askTheCatalog(_ conn: SchedulerConnection) throws {
        func ask(_ what: String, filter: String, cone: (Double, Double, Double)? = nil, moments: String? = nil) throws {
            let q = CatalogQuery(dataset: "demo_object", filter: filter, cone: cone, moments: moments)
            let out = try conn.run(.plan(q.plan), name: what)
            switch out.values.values.first {
            case .int64(let n)?: print(String(format: "%@: %d  (%.3f s, %d tasks)", what, n, out.seconds, out.finished.taskCount))
            case .moments(let m)?: print(String(format: "%@: %.0f objects, mean %.3f, std %.3f  (%.3f s)", what, m.count, m.mean, m.standardDeviation, out.seconds))
            default: print("\(what): \(out.finished.error)")
            }
        }
        try ask("point sources brighter than r = 24", filter: "detect_isPrimary and refExtendedness == 0 and mag(r_psfFlux) < 24")
        try ask("objects within 0.5° of (60, -35)", filter: "", cone: (60, -35, 0.5))
        try ask("g - r colour of galaxies", filter: "refExtendedness == 1 and mag(r_psfFlux) < 25", moments: "mag(g_psfFlux) - mag(r_psfFlux)")
    }

    /// Generates the demo catalog (once) and ingests it (unless a restarted cluster has it already).
    func ingestDemoCatalog(_ conn: SchedulerConnection) throws {
        if try conn.status().datasets.contains(where: { $0.name == "demo_object" }) {
            print("catalog `demo_object` is already ingested (registry in \(data)/)")
            return
        }
        let input = data + "/demo-input-\(catalogRows)"
        print("generating a \(catalogRows)-row synthetic catalog in \(input)/ ...")
        let files = try SyntheticCatalog(seed: 42).writeFITS(rows: catalogRows, rowsPerFile: 250_000, to: input)
        var o = IngestOptions(dataset: "demo_object", files: files)
        o.maxRowsPerShard = 50_000
        o.replicas = min(2, workers)
        let start = Date()
        let done = try CatalogIngest.run(o, connection: conn) { print("  " + $0) }
        print(String(format: "ingested `demo_object`: %d rows in %d shards (%.1f s)", done.rows, done.shards, Date().timeIntervalSince(start)))
    }
}
