import Foundation
import Testing
import TesseraClient
import TesseraCluster
import TesseraCompute
import TesseraProtocol
import TesseraSecurity
import TesseraSky
import TesseraStorage
import TesseraSurvey
import TesseraTestKit

/// Catalog questions run where the shards are, over real scheduler and worker processes, checked
/// against brute force over the same rows — with 1, 2 and 3 workers and three shard sizes.
@Suite(.serialized)
struct CatalogQueryEndToEndTests {
    static let rows = 40_000

    /// The generated rows, for brute force.
    struct Rows {
        let columns: [String: [Double]]
        let objectId: [Int64]
        init(_ catalog: SyntheticCatalog) {
            let data = catalog.rows(0, count: CatalogQueryEndToEndTests.rows)
            var c: [String: [Double]] = [:]
            for (spec, d) in zip(SyntheticCatalog.schema, data) { c[spec.name] = d.doubles }
            columns = c
            if case .int64(let ids) = data[0] { objectId = ids } else { objectId = [] }
        }
        subscript(_ n: String) -> [Double] { columns[n]! }
    }

    static func mag(_ f: Double) -> Double { f > 0 ? -2.5 * log10(f) + 31.4 : .nan }

    /// Starts a cluster, ingests the catalog with the given shard size, and returns a connection.
    func cluster(workers: Int, maxRowsPerShard: Int, files: [String]) throws -> (LocalCluster, SchedulerConnection, Int) {
        let cluster = try TestCluster.start(workers: workers, dataDirectory: temporaryFolder("query-data"))
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        var o = IngestOptions(dataset: "object", files: files)
        o.maxRowsPerShard = maxRowsPerShard
        o.replicas = min(2, workers)
        let done = try CatalogIngest.run(o, connection: conn)
        return (cluster, conn, Int(done.shards))
    }

    @Test func answersAreTheSameOnOneTwoOrThreeWorkersAndAnyShardSize() throws {
        let catalog = SyntheticCatalog(seed: 11)
        let files = try catalog.writeFITS(rows: Self.rows, rowsPerFile: 20_000, to: temporaryFolder("query-input"))
        let rows = Rows(catalog)
        let n = Self.rows
        let ra = rows["coord_ra"], dec = rows["coord_dec"], r = rows["r_psfFlux"], g = rows["g_psfFlux"]
        let ext = rows["refExtendedness"], primary = rows["detect_isPrimary"], cell = rows["cell"]

        // Brute force.
        let points = (0..<n).filter { primary[$0] == 1 && ext[$0] == 0 && Self.mag(r[$0]) < 24 }.count
        let cone = ConeRegion(ra: 60, dec: -35, radius: 2)
        let inCone = (0..<n).filter { cone.contains(ra: ra[$0], dec: dec[$0]) }.count
        var cellCounts: [Double: Int] = [:]
        for i in 0..<n where ext[i] == 1 && !Self.mag(r[i]).isNaN { cellCounts[cell[i], default: 0] += 1 }
        let brightest = (0..<n).filter { cone.contains(ra: ra[$0], dec: dec[$0]) && !Self.mag(r[$0]).isNaN }
            .sorted { Self.mag(r[$0]) < Self.mag(r[$1]) }.prefix(10).map { rows.objectId[$0] }

        let object = CatalogQuery(dataset: "object")
        let questions: [(String, CatalogQuery)] = [
            ("count", object.filter("detect_isPrimary and refExtendedness == 0 and mag(r_psfFlux) < 24")),
            ("cone", object.region(.cone(ra: 60, dec: -35, radius: 2))),
            ("cells", object.filter("refExtendedness == 1").groupBy("cell").aggregate(.count("mag(r_psfFlux)"), .mean("mag(r_psfFlux)"), .std("mag(r_psfFlux)"), .median("mag(r_psfFlux)"))),
            ("cmd", object.filter("refExtendedness == 0 and r_psfFlux > 0 and g_psfFlux > 0")
                .histogram2D(x: "mag(g_psfFlux) - mag(r_psfFlux)", bins: 60, range: -1...2, y: "mag(r_psfFlux)", bins: 80, range: 16...24)),
            ("map", object.skyMap(order: 6, mean: "mag(g_psfFlux)")),
            ("brightest", object.region(.cone(ra: 60, dec: -35, radius: 2)).select(["objectId", "mag(r_psfFlux)"]).sorted(by: "mag(r_psfFlux)").limit(10)),
            ("collect", object.region(.cone(ra: 60, dec: -35, radius: 0.3)).select(["objectId", "coord_ra"])),
        ]
        var reference: [String: ResultTable] = [:]
        for (workers, shardRows) in [(1, 40_000), (2, 3_000), (3, 1_200)] {
            let (cluster, conn, shards) = try cluster(workers: workers, maxRowsPerShard: shardRows, files: files)
            defer { cluster.stop() }
            var answers: [String: ResultTable] = [:]
            for (name, q) in questions {
                let u = try conn.run(q, name: name)
                #expect(u.isFinal)
                answers[name] = u.result.table
                if name == "count" || name == "map" { #expect(u.result.shards == shards, "\(name): every shard covered") }
            }
            #expect(answers["count"]?.numbers("count") == [Double(points)])
            #expect(answers["cone"]?.numbers("count") == [Double(inCone)])
            #expect(answers["cells"]?.numbers("cell") == cellCounts.keys.sorted())
            #expect(answers["cells"]?.numbers("count(mag(r_psfFlux))") == cellCounts.keys.sorted().map { Double(cellCounts[$0]!) })
            #expect(answers["brightest"]?.columns.first == .int64s(Array(brightest)))
            #expect(answers["collect"]?.rowCount == (0..<n).filter { ConeRegion(ra: 60, dec: -35, radius: 0.3).contains(ra: ra[$0], dec: dec[$0]) }.count)
            let total = answers["cmd"]?.numbers("count")?.reduce(0, +) ?? 0
            #expect(total > 1_000 && total <= Double((0..<n).filter { ext[$0] == 0 && r[$0] > 0 && g[$0] > 0 }.count))
            #expect(answers["map"]?.numbers("count")?.reduce(0, +) == Double(n))
            if reference.isEmpty {
                reference = answers
                continue
            }
            // The same answers: exactly for counts, histograms, maps, keys, rows and sketches;
            // means and spreads to 1e-9 relative (merge order changes rounding).
            for (name, t) in answers {
                let ref = reference[name]!
                #expect(t.names == ref.names, "\(name)")
                for (k, column) in t.names.enumerated() where !column.hasPrefix("mean") && !column.hasPrefix("std") {
                    if name == "collect" {
                        #expect(t.numbers(column)?.sorted() == ref.numbers(column)?.sorted(), "\(name).\(column)")
                    } else {
                        #expect(t.columns[k] == ref.columns[k], "\(name).\(column) on \(workers) workers, shards of \(shardRows)")
                    }
                }
                for column in t.names where column.hasPrefix("mean") || column.hasPrefix("std") {
                    for (a, b) in zip(t.numbers(column)!, ref.numbers(column)!) where !(a.isNaN && b.isNaN) {
                        #expect(abs(a - b) <= 1e-9 * abs(b), "\(name).\(column)")
                    }
                }
            }
        }
    }

    @Test func progressiveAnswersGrowToTheFinalOne() async throws {
        let files = try SyntheticCatalog(seed: 3).writeFITS(rows: Self.rows, rowsPerFile: 20_000, to: temporaryFolder("progress-input"))
        // Many small shards on one worker thread: the job outlives several 0.1 s intervals.
        let (cluster, conn, shards) = try cluster(workers: 1, maxRowsPerShard: 150, files: files)
        defer { cluster.stop() }
        let exact = try conn.run(CatalogQuery(dataset: "object").groupBy("cell").aggregate(.count()))
        // Through the async client: partial answers (if the job outlives the 0.1 s interval),
        // then the final one, which equals the non-progressive answer.
        let client = TesseraClient(endpoint: cluster.clientEndpoint)
        var partialShards: [Int] = []
        var final: CatalogResult?
        var seconds = 0.0
        let q = client.catalog("object").filter("distance(coord_ra, coord_dec, 60, -35) < 30").groupBy("cell")
            .aggregate(.count(), .mean("distance(coord_ra, coord_dec, 60, -35)"), .std("pow(r_psfFlux, 0.5)")).progressive(every: 0.1)
        for try await u in q.updates() {
            if u.isFinal { (final, seconds) = (u.result, u.seconds) } else { partialShards.append(u.result.shards) }
        }
        #expect(final?.shards == shards)
        #expect(final?.table.numbers("count") == exact.result.table.numbers("count"))
        // Snapshots are at least 0.1 s apart and start 0.1 s after submission: a job that ran for
        // well over that must have sent some (here it runs for about a second; a much faster
        // machine may finish before the first is due).
        if seconds > 0.4 { #expect(!partialShards.isEmpty, "partial answers arrive while a \(seconds) s job runs") }
        #expect(partialShards == partialShards.sorted())
        #expect(partialShards.allSatisfy { $0 > 0 && $0 <= shards })
        // The connection still serves after the async client's job.
        #expect(try conn.run(CatalogQuery(dataset: "object")).result.table.numbers("count") == [Double(Self.rows)])
    }

    @Test func badQuestionsAreRefusedClearlyAndTheClusterKeepsServing() throws {
        let files = try SyntheticCatalog(seed: 2).writeFITS(rows: 4_000, to: temporaryFolder("query-bad-input"))
        let (cluster, conn, _) = try cluster(workers: 2, maxRowsPerShard: 1_000, files: files)
        defer { cluster.stop() }
        func refusal(_ q: CatalogQuery) -> String {
            do { _ = try conn.run(q); return "accepted" } catch { return "\(error)" }
        }
        let object = CatalogQuery(dataset: "object")
        #expect(refusal(object.filter("mag(r_psfFlx) < 24")).contains("unknown column `r_psfFlx` — did you mean `r_psfFlux`?"))
        #expect(refusal(object.filter("r_psfFlux + 1")).contains("a boolean is needed"))
        #expect(refusal(object.filter("frobnicate(r_psfFlux) > 1")).contains("unknown function `frobnicate`"))
        #expect(refusal(object.aggregate(.mean("detect_isPrimary and r_psfFlux > 0"))).contains("a number is needed"))
        #expect(refusal(CatalogQuery(dataset: "nope")).contains("no dataset named `nope`"))
        // Limits hit on a worker fail the job at the first run (they would on any copy), not
        // after retries. (A collect's cap is also enforced by the client as batches arrive; which
        // of the two reports it first depends on timing, so only the text is checked there.)
        let groups = refusal(object.groupBy("objectId", maxGroups: 100))
        #expect(groups.contains("more than 100 groups") && groups.contains("refused") && !groups.contains("times"), "\(groups)")
        let rows = refusal(object.select(["objectId"]).maxRows(500))
        #expect(rows.contains("more than 500 rows") && !rows.contains("times"), "\(rows)")
        #expect(refusal(object.region(.cone(ra: 10, dec: 95, radius: 1))).contains("not on the sky"))
        // An empty region answers: zero rows, no shard read.
        let empty = try conn.run(object.region(.cone(ra: 200, dec: 40, radius: 0.5)))
        #expect(empty.result.table.numbers("count") == [0])
        #expect(try conn.run(object.region(.cone(ra: 200, dec: 40, radius: 0.5)).select(["objectId"])).result.table.rowCount == 0)
        // The cluster keeps serving.
        #expect(try conn.run(object).result.table.numbers("count") == [4_000])
    }
}

/// A `tessera` command started in the background, to be interrupted as a user's Ctrl-C would.
struct Interrupted {
    let process = Process()
    private let err = Pipe()

    init(_ args: [String]) throws {
        process.executableURL = URL(fileURLWithPath: QueryCommandLineTests.executable)
        process.arguments = args
        process.standardError = err
        process.standardOutput = FileHandle.nullDevice
        try process.run()
    }

    /// Sends SIGINT; the command's standard error once it exited with 130 within 10 s, or nil
    /// (an issue recorded, the process killed).
    func interrupt() -> String? {
        process.interrupt()
        let deadline = Date().addingTimeInterval(10)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        guard !process.isRunning else {
            Issue.record("the command still runs 10 s after Ctrl-C")
            kill()
            return nil
        }
        let message = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        guard process.terminationReason == .exit && process.terminationStatus == 130 else {
            Issue.record("ended by \(process.terminationReason.rawValue) with \(process.terminationStatus): \(message)")
            return nil
        }
        return message
    }

    /// Ends the command if it still runs (SIGKILL: it handles SIGTERM as it does Ctrl-C).
    func kill() {
        guard process.isRunning else { return }
        Foundation.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}

/// The `tessera` command line against a real cluster: CSV, JSON and FITS output, and plans from
/// JSON files, agreeing with the library's answer.
@Suite(.serialized)
struct QueryCommandLineTests {
    /// The `tessera` binary: in `$TESSERA_BIN_DIR`, else built next to the test runner.
    static var executable: String {
        (ProcessInfo.processInfo.environment["TESSERA_BIN_DIR"] ?? LocalCluster.defaultBinDirectory()) + "/tessera"
    }

    /// Runs the `tessera` binary built next to the test runner; returns its exit code and output.
    func tessera(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.executable)
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    @Test func csvJSONAndFITSOutputAndPlanFiles() throws {
        let files = try SyntheticCatalog(seed: 8).writeFITS(rows: 6_000, to: temporaryFolder("cli-input"))
        let cluster = try TestCluster.start(dataDirectory: temporaryFolder("cli-data"))
        defer { cluster.stop() }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        var o = IngestOptions(dataset: "object", files: files)
        o.maxRowsPerShard = 1_000
        try CatalogIngest.run(o, connection: conn)
        let expected = try conn.run(CatalogQuery(dataset: "object").filter("refExtendedness == 1").groupBy("cell").aggregate(.count())).result.table
        let ep = ["--scheduler", cluster.clientEndpoint, "--key", try #require(cluster.keys).userKeyPath(LocalKeys.userName)]
        let dir = temporaryFolder("cli-out")

        // CSV: a header, then one line per cell.
        let csv = try tessera(["query", "--dataset", "object", "--where", "refExtendedness == 1", "--group-by", "cell", "--agg", "count",
                               "--format", "csv", "-o", dir + "/cells.csv"] + ep)
        #expect(csv.status == 0, "\(csv.err)")
        let lines = try String(contentsOfFile: dir + "/cells.csv", encoding: .utf8).split(separator: "\n")
        #expect(lines.first == "cell,count")
        #expect(lines.dropFirst().map { Double($0.split(separator: ",")[1])! } == expected.numbers("count"))

        // Rows with computed columns: a name for one, and a function whose arguments hold commas.
        let cone = CatalogQuery(dataset: "object").region(.cone(ra: 60, dec: -35, radius: 1)).limit(5)
        let reference = try conn.run(cone.select(["objectId", "distance(coord_ra, coord_dec, 60, -35)"])).result.table
        let rows = try tessera(["query", "--dataset", "object", "--cone", "60,-35,1", "--limit", "5", "--format", "csv",
                                "--select", "objectId, dist = distance(coord_ra, coord_dec, 60, -35)"] + ep)
        #expect(rows.status == 0, "\(rows.err)")
        let rowLines = rows.out.split(separator: "\n")
        #expect(rowLines.first == "objectId,dist")
        #expect(rowLines.dropFirst().map { Double($0.split(separator: ",")[1])! } == reference.numbers("distance(coord_ra, coord_dec, 60, -35)"))
        #expect(rowLines.count == 6)

        // A collect as CSV or JSON is written a batch at a time as its shards answer, none kept:
        // the whole answer's rows; one with no row is the header alone (each shard names its
        // columns, rows or none).
        let collect = CatalogQuery(dataset: "object").region(.cone(ra: 60, dec: -35, radius: 5)).select(["objectId", "coord_ra"])
        let whole = try conn.run(collect).result.table
        #expect(whole.rowCount > 0)
        let streamed = try tessera(["query", "--dataset", "object", "--cone", "60,-35,5", "--select", "objectId,coord_ra", "--format", "csv"] + ep)
        #expect(streamed.status == 0, "\(streamed.err)")
        let csvLines = streamed.out.split(separator: "\n")
        #expect(csvLines.first == "objectId,coord_ra")
        #expect(csvLines.dropFirst().map { Double($0.split(separator: ",")[0])! }.sorted() == whole.numbers("objectId")?.sorted())
        let json = try tessera(["query", "--dataset", "object", "--cone", "60,-35,5", "--select", "objectId,coord_ra", "--format", "json"] + ep)
        #expect(json.status == 0 && json.out.split(separator: "\n").count == whole.rowCount, "\(json.err)")
        let none = try tessera(["query", "--dataset", "object", "--cone", "60,-35,5", "--where", "coord_ra < -1", "--select", "objectId,coord_ra", "--format", "csv"] + ep)
        #expect(none.status == 0 && none.out.split(separator: "\n") == ["objectId,coord_ra"], "\(none.out) \(none.err)")
        // As FITS too: the same rows in a binary table (objectId with its coord_ra); none, a table of none.
        let collected = try tessera(["query", "--dataset", "object", "--cone", "60,-35,5", "--select", "objectId,coord_ra", "--format", "fits",
                                     "-o", dir + "/collect.fits"] + ep)
        #expect(collected.status == 0, "\(collected.err)")
        let fitsRows = try FITSTableReader(path: dir + "/collect.fits")
        #expect(fitsRows.rowCount == whole.rowCount)
        if case .int64(let ids) = try fitsRows.read(column: "objectId"), case .float64(let ras) = try fitsRows.read(column: "coord_ra"),
           let wholeIDs = whole.numbers("objectId"), let wholeRAs = whole.numbers("coord_ra") {
            let got: [[Double]] = zip(ids, ras).map { [Double($0), $1] }.sorted { $0[0] < $1[0] }
            let want: [[Double]] = zip(wholeIDs, wholeRAs).map { [$0, $1] }.sorted { $0[0] < $1[0] }
            #expect(got == want)
        } else {
            Issue.record("objectId and coord_ra are not int64 and float64 in \(dir)/collect.fits")
        }
        let noneFITS = try tessera(["query", "--dataset", "object", "--cone", "60,-35,5", "--where", "coord_ra < -1", "--select", "objectId,coord_ra",
                                    "--format", "fits", "-o", dir + "/none.fits"] + ep)
        #expect(noneFITS.status == 0, "\(noneFITS.err)")
        let empty = try FITSTableReader(path: dir + "/none.fits")
        #expect(empty.rowCount == 0 && empty.columns.map(\.name) == ["objectId", "coord_ra"], "\(empty.columns.map(\.name)) \(none.out)")
        #expect(fitsRows.columns.map(\.typeCode) == empty.columns.map(\.typeCode))
        // A region no shard covers: no worker answers, and the command line names the columns
        // as shards do (the same names and types as the shards' own empty answer above).
        let off = try tessera(["query", "--dataset", "object", "--cone", "200,60,0.1", "--select", "objectId, ra = coord_ra", "--format", "csv"] + ep)
        #expect(off.status == 0 && off.out.split(separator: "\n") == ["objectId,ra"], "\(off.out) \(off.err)")
        let offFITS = try tessera(["query", "--dataset", "object", "--cone", "200,60,0.1", "--select", "objectId,coord_ra",
                                   "--format", "fits", "-o", dir + "/off.fits"] + ep)
        #expect(offFITS.status == 0, "\(offFITS.err)")
        let offTable = try FITSTableReader(path: dir + "/off.fits")
        #expect(offTable.rowCount == 0 && offTable.columns.map(\.name) == ["objectId", "coord_ra"])
        #expect(offTable.columns.map(\.typeCode) == empty.columns.map(\.typeCode))

        // FITS: a binary table cfitsio reads back.
        let fits = try tessera(["query", "--dataset", "object", "--where", "refExtendedness == 1", "--group-by", "cell", "--agg", "count",
                                "--format", "fits", "-o", dir + "/cells.fits"] + ep)
        #expect(fits.status == 0, "\(fits.err)")
        let table = try FITSTableReader(path: dir + "/cells.fits")
        #expect(table.rowCount == expected.rowCount)
        #expect(try table.read(column: "count").doubles == expected.numbers("count"))

        // A plan file in protobuf's JSON form, answered as JSON lines.
        let plan = dir + "/plan.json"
        try #"{"dataset": "object", "filter": "refExtendedness == 1", "groupBy": "cell", "aggregates": [{"function": "AGG_COUNT"}]}"#
            .write(toFile: plan, atomically: true, encoding: .utf8)
        let submitted = try tessera(["submit", plan, "--format", "json"] + ep)
        #expect(submitted.status == 0, "\(submitted.err)")
        let counts = submitted.out.split(separator: "\n").compactMap { line -> Double? in
            guard let r = line.range(of: "\"count\":") else { return nil }
            return Double(line[r.upperBound...].prefix { $0.isNumber || $0 == "." })
        }
        #expect(counts == expected.numbers("count"))

        // Bad input: a malformed plan file and an unknown column, each named, with a failing status.
        try "{\"dataset\": 3".write(toFile: plan, atomically: true, encoding: .utf8)
        let bad = try tessera(["submit", plan] + ep)
        #expect(bad.status != 0 && bad.err.contains("is not a catalog plan"))
        let typo = try tessera(["query", "--dataset", "object", "--group-by", "cel"] + ep)
        #expect(typo.status != 0 && typo.err.contains("did you mean `cell`"))
    }

    /// Ctrl-C on a command waiting for its job cancels the job on the cluster at once (not a
    /// client timeout later), removes the file it was writing, and exits with 130. Before, the
    /// process died by the signal and its job ran on until the scheduler gave up on its client.
    @Test func ctrlCCancelsTheJobOnTheCluster() throws {
        let files = try SyntheticCatalog(seed: 9).writeFITS(rows: 3_000, to: temporaryFolder("cli-ctrl-c-input"))
        // A client timeout far past the test's wait: only a cancellation ends the job in time.
        let cluster = try TestCluster.start(workers: 1, threads: 1, dataDirectory: temporaryFolder("cli-ctrl-c-data"), clientTimeoutSeconds: 120)
        defer { cluster.stop() }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        var o = IngestOptions(dataset: "object", files: files)
        (o.maxRowsPerShard, o.replicas) = (1_000, 1)
        try CatalogIngest.run(o, connection: conn)
        // The one worker thread is kept busy, so the command's batch job waits while it is interrupted.
        let busy = try conn.submit(.plan(TestCluster.independent(4_000, sleepMicros: 5_000)))
        defer { try? conn.cancel(job: busy.jobID) }

        let dir = temporaryFolder("cli-ctrl-c-out")
        let command = try Interrupted(["query", "--dataset", "object", "--select", "objectId", "--format", "csv", "-o", dir + "/rows.csv", "--priority", "batch",
                                       "--scheduler", cluster.clientEndpoint, "--key", try #require(cluster.keys).userKeyPath(LocalKeys.userName)])
        defer { command.kill() }
        func commandJob() throws -> Tessera_V1_JobStatus? { try conn.status().jobs.first { $0.name == "catalog object" && $0.state == .jobRunning } }
        let deadline = Date().addingTimeInterval(20)
        while try commandJob() == nil && Date() < deadline { usleep(50_000) }
        let job = try #require(try commandJob(), "the command's job never showed in the status")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).count == 1, "the command writes beside its output")

        let interrupted = Date()
        let message = try #require(command.interrupt())
        #expect(message.contains("interrupted: job \(job.jobID) cancelled on the cluster"), "\(message)")
        // The job is gone from the cluster within seconds, cancelled (not abandoned as silent).
        while try commandJob() != nil && Date().timeIntervalSince(interrupted) < 10 { usleep(50_000) }
        #expect(try commandJob() == nil, "the interrupted command's job still runs")
        #expect(Date().timeIntervalSince(interrupted) < 10)
        #expect(try conn.status().jobs.first { $0.jobID == job.jobID }?.state == .jobCancelled)
        #expect(try conn.status().jobsAbandoned == 0)
        // Nothing is left where it was writing.
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == [])
        // The job that kept the worker busy is untouched.
        #expect(try conn.status().jobs.contains { $0.jobID == busy.jobID && $0.state == .jobRunning })
    }

    /// Ctrl-C during an ingest, while its rows are being spilled to local disk: the spill
    /// (about the input's size) is removed, nothing is committed, and the command exits with 130.
    @Test func ctrlCStopsAnIngestAndRemovesItsSpill() throws {
        let file = try SyntheticCatalog(seed: 10).writeFITS(rows: 20_000, to: temporaryFolder("cli-ctrl-c-ingest-input"))[0]
        let cluster = try TestCluster.start(workers: 1, threads: 1, dataDirectory: temporaryFolder("cli-ctrl-c-ingest-data"))
        defer { cluster.stop() }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        let spill = temporaryFolder("cli-ctrl-c-spill")
        // The same file 100 times (2M rows): long enough to be caught spilling.
        let command = try Interrupted(["ingest", "object"] + Array(repeating: file, count: 100) + ["--spill-dir", spill, "--replicas", "1",
                                       "--scheduler", cluster.clientEndpoint, "--key", try #require(cluster.keys).userKeyPath(LocalKeys.userName)])
        defer { command.kill() }
        let deadline = Date().addingTimeInterval(60)
        while try FileManager.default.contentsOfDirectory(atPath: spill).isEmpty && command.process.isRunning && Date() < deadline { usleep(20_000) }
        let spilling = try FileManager.default.contentsOfDirectory(atPath: spill)
        try #require(spilling.count == 1 && spilling[0].hasPrefix("tessera-ingest-"), "no spill folder: \(spilling)")
        let message = try #require(command.interrupt())
        #expect(message.contains("interrupted before the commit: nothing was committed"), "\(message)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: spill) == [])
        #expect(try !conn.status().datasets.contains { $0.name == "object" })
    }

    /// Ctrl-C while an ingest sends its shards: the command tells the scheduler it stopped the
    /// ingest, and the copies already stored leave their worker within seconds (they stayed for
    /// the scheduler's idle limit and the orphans' grace, an hour and a quarter).
    @Test func ctrlCWhileSendingRemovesTheShardsAlreadyStored() throws {
        let file = try SyntheticCatalog(seed: 11).writeFITS(rows: 20_000, to: temporaryFolder("cli-ctrl-c-send-input"))[0]
        let data = temporaryFolder("cli-ctrl-c-send-data")
        let cluster = try TestCluster.start(workers: 1, threads: 1, dataDirectory: data)
        defer { cluster.stop() }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        func stored() -> [String] { HostileInputEndToEndTests.shardFiles(data).filter { $0.contains("/catalogs/object/") } }
        // The same file 40 times (800,000 rows) in shards of 5,000: 160 shards, sent two at a time.
        let command = try Interrupted(["ingest", "object"] + Array(repeating: file, count: 40) + ["--max-rows-per-shard", "5000", "--replicas", "1",
                                       "--scheduler", cluster.clientEndpoint, "--key", try #require(cluster.keys).userKeyPath(LocalKeys.userName)])
        defer { command.kill() }
        let deadline = Date().addingTimeInterval(120)
        while stored().count < 3 && command.process.isRunning && Date() < deadline { usleep(10_000) }
        try #require(stored().count >= 3, "no shard was stored before the command ended")
        let message = try #require(command.interrupt())
        #expect(message.contains("interrupted before the commit: nothing was committed, the shards already sent are removed"), "\(message)")
        let interrupted = Date()
        while !stored().isEmpty && Date().timeIntervalSince(interrupted) < 15 { usleep(50_000) }
        #expect(stored() == [], "the stopped ingest's copies are still on the worker")
        print("the stopped ingest's copies were removed \(Date().timeIntervalSince(interrupted)) s after the command exited")
        #expect(try !conn.status().datasets.contains { $0.name == "object" })
    }
}
