import ArgumentParser
import Foundation
import TesseraClient
import TesseraCluster
import TesseraCompute
import TesseraProtocol
import TesseraStorage
import TesseraSurvey

/// `tessera bench crossmatch`: two generated catalogs of N rows each cross-matched on a local
/// cluster, beside LSDB on the same rows in the same run.
///
/// The left catalog is the synthetic survey's positions (clustered, as `generate` makes them);
/// the right one is the same objects moved by a Gaussian 0.2″ (90% of them) plus unrelated
/// positions (10%), as a second epoch or another survey would see them. Both are written once to
/// DIR/left.fits and DIR/right.fits and ingested once (not timed).
struct CrossmatchBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "crossmatch",
        abstract: "Cross-match two generated catalogs (nearest within a radius): Mrows/s and worker peak memory, beside LSDB on the same rows.")

    @Option(help: "A folder for the generated catalogs and the cluster's data (reused across runs).")
    var data: String

    @Option(help: "Rows in each catalog.")
    var rows = 2_500_000

    @Option(help: "The radius, arcseconds.")
    var radiusArcsec = 1.0

    @Option(help: "Workers of the local cluster (one executor thread each).")
    var workers = 2

    @Option(help: "Most rows per shard at ingest.")
    var maxRowsPerShard = 250_000

    @Option(help: "Timed runs of each question (after one warm-up).")
    var repeats = 3

    @Option(help: "The Python with LSDB installed, for the anchor (empty: no anchor).")
    var python = ".venv/bin/python"

    @Option(help: "The LSDB anchor script.")
    var anchorScript = "scripts/anchor_crossmatch_lsdb.py"

    @Option(help: "Instead: a user's upload against the survey. The folder anchor_catalog.py wrote (its 20M-row catalog is the survey, ingested once as for `bench catalog`).")
    var survey: String?

    @Option(help: "Rows of the uploaded table (with --survey): survey positions moved by 0.2″, 90% of them, and random ones.")
    var uploadRows = 100_000

    func run() throws {
        if let survey { return try uploadAgainst(survey) }
        guard rows > 0, radiusArcsec > 0, radiusArcsec <= 10, repeats > 0 else {
            throw ValidationError("--rows and --repeats must be positive, --radius-arcsec within (0, 10] (the ingest's margin)")
        }
        try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
        let left = data + "/left-\(rows).fits", right = data + "/right-\(rows).fits"
        if !FileManager.default.fileExists(atPath: right) {
            FileHandle.standardError.write("writing \(left) and \(right) (once) ...\n".data(using: .utf8)!)
            try Self.writeCatalogs(rows: rows, left: left, right: right)
        }
        var o = LocalCluster.Options()
        o.workers = workers
        o.threadsPerWorker = 1
        o.dataDirectory = data + "/tessera-\(workers)w-\(rows)-\(maxRowsPerShard)"
        o.logFile = data + "/tessera-bench.log"
        let cluster = try LocalCluster(o)
        defer { cluster.stop() }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        let held = Set(try conn.status().datasets.map(\.name))
        for (name, file) in [("left", left), ("right", right)] where !held.contains(name) {
            FileHandle.standardError.write("ingesting \(file) as `\(name)` (once; not timed) ...\n".data(using: .utf8)!)
            var opts = IngestOptions(dataset: name, files: [file])
            opts.replicas = 1
            opts.maxRowsPerShard = maxRowsPerShard
            _ = try CatalogIngest.run(opts, connection: conn)
        }
        let base = CatalogQuery(dataset: "left").crossmatch("right", radiusArcsec: radiusArcsec)
        let questions: [(String, CatalogQuery)] = [
            // The pairs counted, and a histogram of their separations, on the cluster.
            ("count", base.count()),
            ("sep_hist", base.histogram("sep_arcsec", bins: 50, range: 0...radiusArcsec)),
            // The pairs back to the client, as LSDB's compute() gives them.
            ("collect", base.select(["left_objectId", "right_objectId", "sep_arcsec"]).maxRows(2 * rows)),
        ]
        for (name, q) in questions {
            _ = try conn.run(q)   // warm-up: shard files mapped, pages in memory
            var times: [Double] = []
            var pairs = 0
            for _ in 0..<repeats {
                let t0 = now()
                let u = try conn.run(q)
                times.append(Double(now() - t0) / 1e9)
                pairs = Int(u.result.rowsMatched)
            }
            let best = times.min() ?? 0
            let line = jsonLine([("bench", "crossmatch"), ("engine", "tessera"), ("question", name), ("left_rows", rows), ("right_rows", rows),
                                 ("radius_arcsec", radiusArcsec), ("pairs", pairs), ("seconds", best), ("median_seconds", times.sorted()[times.count / 2]),
                                 ("mrows_per_s", Double(rows) / best / 1e6), ("workers", workers), ("worker_peak_rss_mb", try workerPeakRSS(conn))])
            // Unbuffered: in order with the anchor's lines, which share the terminal or pipe.
            FileHandle.standardOutput.write(Data((line + "\n").utf8))
        }
        guard !python.isEmpty else { return }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: python.contains("/") ? python : "/usr/bin/env")
        p.arguments = (python.contains("/") ? [] : [python]) + [anchorScript, "--left", left, "--right", right, "--radius-arcsec", "\(radiusArcsec)", "--repeats", "\(repeats)"]
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw ValidationError("the LSDB anchor failed (exit \(p.terminationStatus))") }
    }

    /// `--survey`: a table of `uploadRows` uploaded into the user's workspace, then cross-matched
    /// (nearest, counted) against the 20M-row survey, each timed; warm (after one round).
    func uploadAgainst(_ folder: String) throws {
        let anchor = try AnchorCatalog.parse(["--data", folder, "--workers", "\(workers)"])
        let (cluster, conn, surveyRows) = try anchor.start()
        defer { cluster.stop() }
        let file = folder + "/upload-\(uploadRows).fits"
        if !FileManager.default.fileExists(atPath: file) {
            let (outRa, outDec) = try Self.userPositions(uploadRows, survey: conn, surveyRows: surveyRows)
            let specs = [ColumnSpec("id", .columnInt64), ColumnSpec("ra", .columnFloat64, unit: "deg"), ColumnSpec("dec", .columnFloat64, unit: "deg")]
            try FITSTableWriter.write(to: file, columns: specs, data: [.int64((0..<Int64(uploadRows)).map { $0 }), .float64(outRa), .float64(outDec)])
        }
        var o = IngestOptions(dataset: "mine", files: [file])
        (o.raColumn, o.decColumn, o.workspace, o.replace, o.replicas) = ("ra", "dec", true, true, workers)
        let question = CatalogQuery(dataset: "mine").crossmatch(AnchorCatalog.dataset, radiusArcsec: radiusArcsec).count()
        for round in 0..<(repeats + 1) {
            let t0 = now()
            _ = try CatalogIngest.run(o, connection: conn)
            let t1 = now()
            let u = try conn.run(question)
            let t2 = now()
            if round == 0 { continue }   // warm-up
            let line = jsonLine([("bench", "crossmatch_upload"), ("upload_rows", uploadRows), ("survey_rows", surveyRows), ("radius_arcsec", radiusArcsec),
                                 ("pairs", Int(u.result.rowsMatched)), ("upload_seconds", Double(t1 - t0) / 1e9), ("crossmatch_seconds", Double(t2 - t1) / 1e9),
                                 ("total_seconds", Double(t2 - t0) / 1e9), ("survey_rows_read", Int(u.result.rowsScanned)), ("worker_peak_rss_mb", try workerPeakRSS(conn))])
            FileHandle.standardOutput.write(Data((line + "\n").utf8))
        }
    }

    /// A user's table of `rows` positions: survey positions (a seeded sample), 90% moved by
    /// 0.2″ as a second epoch would see them, the rest 0.01° from any.
    static func userPositions(_ rows: Int, survey conn: SchedulerConnection, surveyRows: Int) throws -> (ra: [Double], dec: [Double]) {
        let fraction = min(1, Double(rows) * 1.2 / Double(max(1, surveyRows)))
        let t = try conn.run(CatalogQuery(dataset: AnchorCatalog.dataset).sample(fraction: fraction, seed: 5).select(["coord_ra", "coord_dec"]).maxRows(2 * rows)).result.table
        guard let ra = t.numbers("coord_ra"), let dec = t.numbers("coord_dec"), ra.count >= rows else {
            throw ValidationError("the survey gave too few positions for \(rows) rows")
        }
        var rng = SplitMix64(seed: 0xC0FFEE)
        var outRa = [Double](), outDec = [Double]()
        for i in 0..<rows {
            func normal() -> Double {
                let u1 = max(rng.nextUnit(), .leastNonzeroMagnitude), u2 = rng.nextUnit()
                return (-2 * log(u1)).squareRoot() * cos(2 * .pi * u2)
            }
            let moved = rng.nextUnit() < 0.9
            let s = 0.2 / 3600
            outDec.append(moved ? dec[i] + s * normal() : dec[(i * 7919) % ra.count] + 0.01)
            outRa.append(moved ? ra[i] + s * normal() / cos(dec[i] * .pi / 180) : ra[(i * 104_729) % ra.count] + 0.01)
        }
        return (outRa, outDec)
    }

    /// The two catalogs: objectId, coord_ra, coord_dec and r_psfFlux of each.
    static func writeCatalogs(rows n: Int, left: String, right: String) throws {
        let all = SyntheticCatalog(seed: 31).rows(0, count: n)
        let names = SyntheticCatalog.schema.map(\.name)
        func column(_ name: String) -> ColumnData { all[names.firstIndex(of: name)!] }
        let specs = SyntheticCatalog.schema.filter { ["objectId", "coord_ra", "coord_dec", "r_psfFlux"].contains($0.name) }
        let picked = specs.map { column($0.name) }
        try FITSTableWriter.write(to: left, columns: specs, data: picked)
        guard case .int64(let ids) = column("objectId"), case .float32(let flux) = column("r_psfFlux") else { return }
        let ra = column("coord_ra").doubles, dec = column("coord_dec").doubles
        var rng = SplitMix64(seed: 0x5EC0_2D)
        var rra = [Double](repeating: 0, count: n), rdec = rra, rflux = [Float](repeating: 0, count: n), rid = [Int64](repeating: 0, count: n)
        let sigma = 0.2 / 3600
        for i in 0..<n {
            func normal() -> Double {
                let u1 = max(rng.nextUnit(), .leastNonzeroMagnitude), u2 = rng.nextUnit()
                return (-2 * log(u1)).squareRoot() * cos(2 * .pi * u2)
            }
            rid[i] = ids[i] + 1_000_000_000_000
            if rng.nextUnit() < 0.9 {
                // The same object, measured again.
                rdec[i] = min(90, max(-90, dec[i] + sigma * normal()))
                rra[i] = ra[i] + sigma * normal() / max(1e-6, cos(dec[i] * .pi / 180))
                rflux[i] = flux[i] * Float(1 + 0.05 * normal())
            } else {
                // Another object, somewhere in the footprint.
                rra[i] = ra[Int(rng.nextUnit() * Double(n)) % n] + 0.01 * (rng.nextUnit() - 0.5)
                rdec[i] = dec[Int(rng.nextUnit() * Double(n)) % n]
                rflux[i] = flux[i]
            }
        }
        try FITSTableWriter.write(to: right, columns: specs, data: [.int64(rid), .float64(rra), .float64(rdec), .float32(rflux)])
    }
}
