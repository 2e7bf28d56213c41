import ArgumentParser
import Dispatch
import Foundation
import SwiftProtobuf
import TesseraClient
import TesseraCompute
import TesseraProtocol
import TesseraScheduler
import TesseraStorage
import TesseraSurvey

/// `tessera bench plan`: how long the scheduler takes to turn a catalog question into tasks
/// when the dataset has hundreds of thousands of shards (a synthetic registry in a real SQLite
/// file; the state machine is driven in-process, with no sockets, so only planning is timed).
struct PlanBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "Plan expansion against a synthetic registry of many shards: cold (read from SQLite) and warm, whole sky and a cone; and submission to acceptance.")

    @Option(help: "Shards in the synthetic dataset (order-8 HEALPix pixels).")
    var shards = 300_000

    @Option(help: "Warm repetitions (the median is reported).")
    var repeats = 7

    func run() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tessera-bench-plan-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let registry = try Registry(path: dir + "/registry.sqlite")
        var footer = Tessera_V1_ShardFooter()
        footer.columns = SyntheticCatalog.schema.map { c in
            var s = Tessera_V1_ColumnSchema()
            s.name = c.name
            s.type = c.type
            return s
        }
        let order = 8
        guard shards > 0, shards <= 12 << (2 * order) else { throw ValidationError("--shards must be within 1…\(12 << (2 * order))") }
        let dataset = DatasetRecord(name: "object", schema: try footer.serializedData(), raColumn: "coord_ra", decColumn: "coord_dec",
                                    maxRowsPerShard: 10_000, marginArcsec: 10, rows: Int64(shards) * 10_000, ingestId: "bench")
        let records = (0..<shards).map { ShardRecord(order: order, pixel: Int64($0), rows: 10_000, marginRows: 0, bytes: 400_000, checksum: 0) }
        let workers = ["w0", "w1", "w2"]
        let replicas = (0..<shards).map { [workers[$0 % 3], workers[($0 + 1) % 3]] }
        var t = now()
        try registry.commitIngest(dataset, shards: records, replicas: replicas, replace: false)
        let writeSeconds = Double(now() - t) / 1e9

        var core = SchedulerCore(now: now())
        core.catalog = registry
        // Workers that hold the shards, so a submission passes its holder check.
        let keys = (0..<shards).map { ShardKey(dataset: "object", ingestId: "bench", order: order, pixel: Int64($0)).description }
        for (k, name) in workers.enumerated() {
            var r = Tessera_V1_RegisterWorker()
            r.name = name
            r.threads = 1
            r.holdings = keys.indices.filter { replicas[$0].contains(name) }.map { keys[$0] }
            r.operators = OperatorRegistry.standard.names
            var e = Envelope()
            e.registerWorker = r
            core.handleWorker(ConnectionID(k + 1), e, frames: [], now: now())
        }
        _ = core.flush(now: now())

        let wholeSky = CatalogQuery(dataset: "object").filter("refExtendedness == 1").groupBy("cell").aggregate(.mean("mag(r_psfFlux)")).plan
        let cone = CatalogQuery(dataset: "object").region(.cone(ra: 45, dec: 10, radius: 1)).plan
        t = now()
        let cold = try core.expandCatalogQuery(wholeSky)
        let coldSeconds = Double(now() - t) / 1e9
        func median(_ body: () throws -> Void) rethrows -> Double {
            var times: [Double] = []
            for _ in 0..<max(1, repeats) {
                let t0 = now()
                try body()
                times.append(Double(now() - t0) / 1e9)
            }
            return times.sorted()[times.count / 2]
        }
        var leaves = 0
        let warm = try median { leaves = try core.expandCatalogQuery(wholeSky).dataKeys.count }
        var coneLeaves = 0
        let warmCone = try median { coneLeaves = try core.expandCatalogQuery(cone).dataKeys.count }
        // Submission to acceptance: expansion, the job's task table, and queueing every leaf.
        var accepted = 0.0
        var tag: UInt64 = 1
        let submit = median {
            var s = Tessera_V1_SubmitJob()
            s.clientTag = tag
            tag += 1
            var p = Tessera_V1_Plan()
            p.catalog = wholeSky
            s.plan = p
            var e = Envelope()
            e.submitJob = s
            let t0 = now()
            core.handleClient(1000, e, frames: [], now: now())
            let out = core.flush(now: now())
            accepted = Double(now() - t0) / 1e9
            let job = out.lazy.compactMap { m -> JobID? in if case .jobAccepted(let a) = m.envelope.body { a.jobID } else { nil } }.first
            guard let job else {
                FileHandle.standardError.write("submission was not accepted: \(out.map(\.envelope.body))\n".data(using: .utf8)!)
                return
            }
            // Cancel it so the next submission starts from the same state.
            var c = Tessera_V1_CancelJob()
            c.jobID = job
            var ce = Envelope()
            ce.cancelJob = c
            core.handleClient(1000, ce, frames: [], now: now())
            _ = core.flush(now: now())
        }
        _ = accepted
        print(jsonLine([("engine", "tessera"), ("workload", "plan_expansion"), ("shards", shards), ("registry_write_seconds", writeSeconds),
                        ("cold_seconds", coldSeconds), ("cold_tasks", cold.taskCount),
                        ("whole_sky_seconds", warm), ("whole_sky_leaves", leaves),
                        ("cone_1deg_seconds", warmCone), ("cone_1deg_leaves", coneLeaves),
                        ("submit_to_accepted_seconds", submit)]))
    }
}
