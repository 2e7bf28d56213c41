import Foundation
import SwiftProtobuf
import TesseraCompute
import TesseraProtocol
import TesseraStorage

/// Valid inputs of every target, from which the fuzzer mutates: committed under
/// `Fuzz/corpus/TARGET/` (`tessera-fuzz seeds Fuzz/corpus` writes them again).
public enum FuzzSeeds {
    public static func seeds(_ target: FuzzTarget, scratch: String) throws -> [(name: String, bytes: [UInt8])] {
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        switch target {
        case .envelope: return messages().map { ($0.name, FuzzHarness.joined(WireProtocol.encode($0.envelope, frames: $0.frames))) }
        case .scheduler:
            return messages().enumerated().map { k, m in
                // Even first byte: from a client; odd: from a worker.
                (m.name, [UInt8(m.fromWorker ? 2 * k + 1 : 2 * k) & 0x7F] + FuzzHarness.joined(WireProtocol.encode(m.envelope, frames: m.frames)))
            }
        case .worker: return messages().filter(\.toWorker).map { ($0.name, FuzzHarness.joined(WireProtocol.encode($0.envelope, frames: $0.frames))) }
        case .expression:
            return ["refExtendedness == 0 and mag(r_psfFlux) < 24", "distance(coord_ra, coord_dec, 60, -35) < 0.5 or not detect_isPrimary",
                    "-(-abs(g_psfFlux - r_psfFlux)) / 2 >= pow(10, -0.4 * 3)", "objectId == 609780990190346456", "isnan(mag(g_psfFlux)) != (cell > 1e3)"]
                .enumerated().map { ("e\($0.offset)", Array($0.element.utf8)) }
        case .adql:
            return ["SELECT TOP 10 objectId, mag(r_psfFlux) AS r FROM object WHERE CONTAINS(POINT('ICRS', coord_ra, coord_dec), CIRCLE('ICRS', 60, -35, 0.5)) = 1 ORDER BY r DESC",
                    "SELECT cell, COUNT(*) AS n, AVG(g_psfFlux) FROM tessera.object WHERE refExtendedness BETWEEN 0 AND 0.5 AND cell IN (1, 2, 3) GROUP BY cell ORDER BY n",
                    "SELECT * FROM object AS a JOIN object AS b ON DISTANCE(POINT(a.coord_ra, a.coord_dec), POINT(b.coord_ra, b.coord_dec)) < 1.0/3600 WHERE a.detect_isPrimary = 1",
                    "SELECT table_name FROM TAP_SCHEMA.tables WHERE table_name LIKE 'tess%' OR table_name IS NULL ORDER BY table_index DESC",
                    "SELECT objectId FROM object WHERE NOT (r_psfFlux IS NULL) AND CONTAINS(POINT(coord_ra, coord_dec), POLYGON(10, 10, 12, 10, 11, 12)) = 1 -- comment"]
                .enumerated().map { ("q\($0.offset)", Array($0.element.utf8)) }
        case .plan:
            return try plans().enumerated().map { ("p\($0.offset)", Array(try $0.element.jsonUTF8Data())) }
        case .images:
            // Cutouts (a cone, a box pole to pole, a polygon), pixel statistics, a HiPS, forced
            // photometry and a median stack, with numbers near their limits.
            // (The fixture's first row, which the patches hold, is at 52.1269, -37.8783; the
            // image on its own grid a degree east of it.)
            return ["{\"cutout\":{\"bands\":[\"g\",\"r\"],\"width\":256,\"height\":256},\"cone\":{\"ra\":52.1269,\"dec\":-37.8783,\"radius\":0.01}}",
                    "{\"cutout\":{\"bands\":[\"g\"]},\"cone\":{\"ra\":53.1269,\"dec\":-37.8783,\"radius\":0.02}}",
                    "{\"cutout\":{},\"box\":{\"raMin\":10,\"raMax\":12,\"decMin\":-90,\"decMax\":90}}",
                    "{\"cutout\":{\"width\":4096},\"polygon\":{\"ra\":[52.1,52.2,52.15],\"dec\":[-37.9,-37.9,-37.8]}}",
                    "{\"imageStatistics\":{\"bands\":[\"g\"],\"mapOrder\":16}}",
                    "{\"hips\":{\"band\":\"r\",\"order\":9,\"tileWidth\":512,\"cutLow\":0,\"cutHigh\":1000}}",
                    "{\"forcedPhotometry\":{\"bands\":[\"g\"],\"apertureArcsec\":1,\"annulusOuterArcsec\":1e300},\"filter\":\"r_psfFlux > 0\"}",
                    "{\"stack\":{\"band\":\"g\",\"size\":31,\"kind\":\"STACK_MEDIAN\",\"medianMin\":0,\"medianMax\":1e-322}}"]
                .enumerated().map { ("i\($0.offset)", Array($0.element.utf8)) }
        case .shard:
            // A small shard: two row groups of 64 rows of every column kind.
            let (columns, data) = try FuzzHarness.fixtureShard()
            let small = data.map { $0.slice(0..<128) }
            let smallPath = scratch + "/seed.shard"
            try ShardWriter.write(to: smallPath, columns: columns, data: small, indexColumn: "_healpix_29", order: 0, pixel: 4, rowGroupRows: 64)
            return [("small", Array(try Data(contentsOf: URL(fileURLWithPath: smallPath))))]
        case .csv:
            return [("table", Array("objectId,ra,dec,flux,flag\n1,10.5,-3.25,1e3,true\n2,11,-3,,false\n3,\"12\",-2.5,NaN,1\n".utf8))]
        case .votable:
            // The tests' astropy-written tables, one per serialization.
            let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Tests/TesseraGatewayTests/Fixtures").standardized
            return try ["tabledata", "binary", "binary2"].map { ($0, Array(try Data(contentsOf: fixtures.appendingPathComponent("upload_\($0).xml")))) }
        case .fits:
            let (columns, data) = try FuzzHarness.fixtureShard()
            let path = scratch + "/seed.fits"
            try? FileManager.default.removeItem(atPath: path)
            try FITSTableWriter.write(to: path, columns: Array(columns.prefix(6)), data: Array(data.prefix(6)).map { $0.slice(0..<20) })
            return [("table", Array(try Data(contentsOf: URL(fileURLWithPath: path))))]
        }
    }

    struct Message {
        var name: String
        var envelope: Envelope
        var frames: [[UInt8]] = []
        var fromWorker = false
        var toWorker = false
    }

    static func plans() -> [CatalogQueryPlan] {
        var out: [CatalogQueryPlan] = []
        var p = CatalogQueryPlan()
        p.dataset = "object"
        p.filter = "refExtendedness == 0 and mag(r_psfFlux) < 24"
        var a = Tessera_V1_AggregateSpec()
        a.function = .aggMean
        a.expression = "mag(g_psfFlux)"
        p.aggregates = [a]
        out.append(p)
        var g = p
        g.groupBy = "cell"
        var q = Tessera_V1_AggregateSpec()
        q.function = .aggQuantile
        q.expression = "r_psfFlux"
        q.quantile = 0.5
        g.aggregates.append(q)
        out.append(g)
        var h = CatalogQueryPlan()
        h.dataset = "object"
        h.histogram.x = "mag(g_psfFlux) - mag(r_psfFlux)"
        h.histogram.xBins = 30
        h.histogram.xMin = -1
        h.histogram.xMax = 2
        h.histogram.y = "mag(r_psfFlux)"
        h.histogram.yBins = 20
        h.histogram.yMin = 16
        h.histogram.yMax = 24
        var cone = Tessera_V1_ConeSpec()
        (cone.ra, cone.dec, cone.radius) = (60, -35, 3)
        h.cone = cone
        out.append(h)
        var m = CatalogQueryPlan()
        m.dataset = "object"
        m.skyMap.order = 5
        m.skyMap.expression = "mag(r_psfFlux)"
        var poly = Tessera_V1_PolygonSpec()
        (poly.ra, poly.dec) = ([50, 70, 70, 50], [-40, -40, -30, -30])
        m.polygon = poly
        m.progressive = true
        m.progressInterval = 0.5
        out.append(m)
        var r = CatalogQueryPlan()
        r.dataset = "object"
        r.rows.select = ["objectId", "r_mag = mag(r_psfFlux)", "detect_isPrimary"]
        r.rows.sortBy = "mag(r_psfFlux)"
        r.rows.limit = 10
        var box = Tessera_V1_BoxSpec()
        (box.raMin, box.raMax, box.decMin, box.decMax) = (350, 20, -60, 10)
        r.box = box
        out.append(r)
        var s = CatalogQueryPlan()
        s.dataset = "object"
        s.rows.sampleFraction = 0.1
        s.rows.sampleSeed = 7
        out.append(s)
        return out
    }

    static func messages() -> [Message] {
        var out: [Message] = []
        func add(_ name: String, fromWorker: Bool = false, toWorker: Bool = false, frames: [[UInt8]] = [], _ fill: (inout Envelope) -> Void) {
            var e = Envelope()
            fill(&e)
            out.append(Message(name: name, envelope: e, frames: frames, fromWorker: fromWorker, toWorker: toWorker))
        }
        for (k, p) in plans().enumerated() {
            add("submit-plan-\(k)") { e in
                var s = Tessera_V1_SubmitJob()
                s.clientTag = UInt64(k)
                s.plan.catalog = p
                e.submitJob = s
            }
        }
        add("submit-tree") { e in
            var s = Tessera_V1_SubmitJob()
            s.plan.treeReduce.leaves = 20
            s.plan.treeReduce.fanIn = 3
            s.plan.treeReduce.leafOperator = "inc"
            s.plan.treeReduce.reduceOperator = "sum"
            e.submitJob = s
        }
        var g = TaskGraph(operators: ["inc", "sum"])
        let a = g.add(operatorIndex: 0, arg: 1), b = g.add(operatorIndex: 0, arg: 2)
        g.add(operatorIndex: 1, inputs: [a, b])
        let (spec, graphFrames) = g.encoded()
        add("submit-graph", frames: graphFrames) { e in
            var s = Tessera_V1_SubmitJob()
            s.graph = spec
            e.submitJob = s
        }
        add("cancel") { e in e.cancelJob.jobID = 1 }
        add("status") { e in e.statusRequest = .init() }
        add("ping") { e in e.ping.nonce = 3 }
        add("ingest-begin") { e in
            var b = Tessera_V1_IngestBegin()
            b.dataset = "more"
            b.replicas = 2
            for p in 0..<4 {
                var s = Tessera_V1_ShardSpec()
                s.order = 1
                s.pixel = Int64(p)
                s.rows = 100
                s.bytes = 1_000
                b.shards.append(s)
            }
            e.ingestBegin = b
        }
        add("ingest-commit") { e in
            var c = Tessera_V1_IngestCommit()
            c.ingestID = "i1"
            c.dataset = "more"
            c.raColumn = "ra"
            c.decColumn = "dec"
            var col = Tessera_V1_ColumnSchema()
            col.name = "ra"
            c.columns = [col]
            e.ingestCommit = c
        }
        add("ingest-abort") { e in
            var a = Tessera_V1_IngestAbort()
            a.ingestID = "i1"
            a.dataset = "more"
            e.ingestAbort = a
        }
        add("register", fromWorker: true) { e in
            var r = Tessera_V1_RegisterWorker()
            r.name = "w9"
            r.threads = 4
            r.peerEndpoint = "tcp://127.0.0.1:7809"
            r.operators = ["inc", "sum", "catalog_scan", "catalog_merge"]
            r.holdings = ["object/i1/order0-pix4"]
            e.registerWorker = r
        }
        add("heartbeat", fromWorker: true) { e in e.heartbeat.rssBytes = 1 << 20 }
        var value: [UInt8] = []
        let info = Value.int64(42).append(to: &value, key: TaskKey.make(job: 1, task: 0), frameIndex: 0)
        add("task-report", fromWorker: true, frames: [value]) { e in
            var r = Tessera_V1_TaskReport()
            r.doneKeys = [TaskKey.make(job: 1, task: 0)]
            r.resultBytes = [8]
            r.computeUs = [10]
            r.outputs = [info]
            var f = Tessera_V1_TaskFailure()
            f.key = TaskKey.make(job: 1, task: 1)
            f.kind = .failureMissingInput
            f.missingInputs = [TaskKey.make(job: 1, task: 0)]
            f.missingHolders = [2]
            r.failures = [f]
            e.taskReport = r
        }
        add("shard-stored", fromWorker: true) { e in
            var s = Tessera_V1_ShardStored()
            s.ingestID = "i1"
            s.dataset = "more"
            s.order = 1
            s.rows = 100
            e.shardStored = s
        }
        add("deregister", fromWorker: true) { e in e.deregister.handedBack = [TaskKey.make(job: 1, task: 2)] }
        add("assign", toWorker: true) { e in
            var a = Tessera_V1_AssignTasks()
            var setup = Tessera_V1_JobSetup()
            setup.jobID = 1
            setup.operators = ["inc", "sum", "catalog_scan"]
            setup.dataKeys = ["object/i1/order0-pix4"]
            a.jobs = [setup]
            a.keys = [TaskKey.make(job: 1, task: 0), TaskKey.make(job: 1, task: 1), TaskKey.make(job: 1, task: 2)]
            a.ops = [0, 0, 1]
            a.args = [1, 2, 0]
            a.paramIndex = [0, 0, 0]
            a.flags = [2, 2, 1]
            a.inputCounts = [0, 0, 2]
            a.inputKeys = [TaskKey.make(job: 1, task: 0), TaskKey.make(job: 7, task: 1)]
            a.inputHolders = [1, 2]
            var peer = Tessera_V1_Peer()
            peer.workerID = 2
            peer.endpoint = "tcp://127.0.0.1:7802"
            a.peers = [peer]
            a.dataKey = [0, 0, 1]
            e.assignTasks = a
        }
        add("release", toWorker: true) { e in e.releaseResults.keys = [TaskKey.make(job: 1, task: 0)] }
        add("cancel-tasks", toWorker: true) { e in
            e.cancelTasks.jobIds = [1]
            e.cancelTasks.lostWorkers = [2]
        }
        add("fetch-request", toWorker: true) { e in e.fetchRequest.keys = [TaskKey.make(job: 1, task: 0)] }
        add("fetch-reply", toWorker: true, frames: [value]) { e in
            var r = Tessera_V1_FetchReply()
            r.requestID = 1
            r.values = [info]
            e.fetchReply = r
        }
        add("expect", toWorker: true) { e in
            var x = Tessera_V1_ExpectShards()
            x.ingestID = "i2"
            x.dataset = "more"
            x.orders = [1, 1]
            x.pixels = [0, 1]
            e.expectShards = x
        }
        add("store", toWorker: true) { e in
            var s = Tessera_V1_StoreShard()
            s.ingestID = "i2"
            s.dataset = "more"
            s.order = 1
            s.rows = 1
            e.storeShard = s
        }
        return out
    }
}
