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
            r.peerEndpoint = "tcp://127.0.0.1:\(7800 + k)"
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
        let hostile = hostileMessages(&core, median: median)
        print(jsonLine([("engine", "tessera"), ("workload", "plan_expansion"), ("shards", shards), ("registry_write_seconds", writeSeconds),
                        ("cold_seconds", coldSeconds), ("cold_tasks", cold.taskCount),
                        ("whole_sky_seconds", warm), ("whole_sky_leaves", leaves),
                        ("cone_1deg_seconds", warmCone), ("cone_1deg_leaves", coneLeaves),
                        ("submit_to_accepted_seconds", submit)]))
        for (name, seconds, refused) in hostile {
            print(jsonLine([("engine", "tessera"), ("workload", "hostile_message"), ("message", name), ("shards", shards),
                            ("seconds", seconds), ("refused", refused)]))
        }
    }

    /// How long the scheduler's one thread spends on the costliest messages its limits allow (and
    /// on the first ones past them): each is handled and flushed as the daemon would.
    func hostileMessages(_ core: inout SchedulerCore, median: (() throws -> Void) throws -> Double) -> [(String, Double, Bool)] {
        func plan(_ change: (inout CatalogQueryPlan) -> Void) -> Envelope {
            var q = CatalogQuery(dataset: "object").count().plan
            change(&q)
            var s = Tessera_V1_SubmitJob()
            s.plan.catalog = q
            var e = Envelope()
            e.submitJob = s
            return e
        }
        let depth = Limits.expressionDepth
        let deepChain = Array(repeating: "r_psfFlux", count: depth - 1).joined(separator: "+") + " > 0"
        let longText = "(" + Array(repeating: "r_psfFlux > 0", count: Limits.expressionCharacters / 20).joined(separator: " or ") + ")"
        let polygon: (Int) -> Envelope = { n in
            plan { q in
                var p = Tessera_V1_PolygonSpec()
                for k in 0..<n {
                    let a = Double(k) / Double(n) * 2 * .pi
                    p.ra.append(180 + 60 * cos(a))
                    p.dec.append(50 * sin(a))
                }
                q.polygon = p
            }
        }
        var begin = Tessera_V1_IngestBegin()
        begin.dataset = "big"
        begin.replicas = 2
        for p in 0..<min(Limits.ingestShards, 12 << 18) {
            var s = Tessera_V1_ShardSpec()
            s.order = 9
            s.pixel = Int64(p)
            s.rows = 1_000
            s.bytes = .max
            begin.shards.append(s)
        }
        var ingest = Envelope()
        ingest.ingestBegin = begin
        let cases: [(String, Envelope)] = [
            ("filter_at_depth_limit", plan { $0.filter = deepChain }),
            ("filter_past_depth_limit", plan { $0.filter = deepChain + " and " + deepChain }),
            ("filter_at_length_limit", plan { $0.filter = longText }),
            ("unknown_column_at_name_limit", plan { $0.filter = String(repeating: "x", count: Limits.identifierCharacters) + " > 0" }),
            ("name_of_4MB", plan { $0.filter = String(repeating: "x", count: 4_000_000) + " > 0" }),
            ("polygon_at_vertex_limit_60deg", polygon(Limits.polygonVertices)),
            ("polygon_of_20000_vertices", polygon(20_000)),
            ("ingest_begin_at_shard_limit", ingest),
        ]
        var out: [(String, Double, Bool)] = []
        for (name, e) in cases {
            var refused = false
            let seconds = (try? median {
                core.handleClient(2000, e, frames: [], now: now())
                let replies = core.flush(now: now())
                refused = replies.contains { if case .error = $0.envelope.body { true } else { false } }
                // Cancel what was accepted, so each run starts from the same state.
                for m in replies { if case .jobAccepted(let a) = m.envelope.body {
                    var c = Envelope()
                    c.cancelJob.jobID = a.jobID
                    core.handleClient(2000, c, frames: [], now: now())
                    _ = core.flush(now: now())
                } }
            }) ?? .nan
            out.append((name, seconds, refused))
        }
        return out
    }
}
