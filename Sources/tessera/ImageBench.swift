import ArgumentParser
import Foundation
import TesseraClient
import TesseraCluster
import TesseraCompute
import TesseraProtocol
import TesseraSky
import TesseraStorage
import TesseraSurvey

/// What `bench cutout` and `bench forced-phot` share: a generated catalog on a small field, its
/// coadd in one band, both ingested once into a local cluster in DATA (reused across runs).
struct ImageBenchData: ParsableArguments {
    @Option(help: "A folder for the generated catalog, coadd and the cluster's data (reused across runs).")
    var data: String

    @Option(help: "The field: RAMIN,RAMAX,DECMIN,DECMAX in degrees (patches meeting it are rendered).")
    var field = "60.0,60.2,-35.0,-34.8"

    @Option(help: "Catalog rows on the field.")
    var rows = 1_000_000

    @Option(help: "Pixel size of the coadd, arcseconds.")
    var pixelScale = 0.2

    @Option(help: "Workers of the local cluster (one executor thread each).")
    var workers = 2

    @Option(help: "Most catalog rows per shard (smaller shards spread forced photometry more evenly over the workers).")
    var maxRowsPerShard = 100_000

    @Option(help: "Copies of each catalog shard and patch (as `tessera ingest --replicas`): with one, a worker holding more patches measures more rows; with two, either may measure any shard's rows.")
    var replicas = 2

    func validate() throws {
        guard workers >= 1, replicas >= 1, replicas <= workers else {
            throw ValidationError("--replicas must be from 1 to --workers (\(workers)); got \(replicas)")
        }
    }

    @Option(help: "The Python with astropy and photutils, for the anchor (empty: no anchor).")
    var python = ".venv/bin/python"

    var fieldBox: (ra: ClosedRange<Double>, dec: ClosedRange<Double>) {
        get throws {
            let v = field.split(separator: ",").compactMap { Double($0) }
            guard v.count == 4, v[0] < v[1], v[2] < v[3] else { throw ValidationError("--field must be RAMIN,RAMAX,DECMIN,DECMAX") }
            return (v[0]...v[1], v[2]...v[3])
        }
    }

    var catalogFile: String { data + "/catalog-\(rows).fits" }
    var coaddFolder: String { data + "/coadd-\(pixelScale)" }

    /// Writes what is missing, starts the cluster, ingests what it does not hold.
    func start() throws -> (LocalCluster, SchedulerConnection, [String]) {
        try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
        let (ra, dec) = try fieldBox
        if !FileManager.default.fileExists(atPath: catalogFile) {
            FileHandle.standardError.write(Data("writing \(catalogFile) (once) ...\n".utf8))
            var c = SyntheticCatalog(seed: 17)
            (c.raRange, c.decRange) = (ra, dec)
            let cols = c.rows(0, count: rows)
            try FITSTableWriter.write(to: catalogFile, columns: SyntheticCatalog.schema, data: cols)
        }
        let coadd = SyntheticCoadd(tiling: SkyTiling(pixelScaleArcsec: pixelScale), seed: 5)
        let region = try BoxRegion(raMin: ra.lowerBound, raMax: ra.upperBound, decMin: dec.lowerBound, decMax: dec.upperBound)
        let patches = try coadd.write(region: region, bands: ["r"], sources: try CoaddSources(catalogFiles: [catalogFile], bands: ["r"]), to: coaddFolder) { done, total in
            FileHandle.standardError.write(Data("\r  \(done)/\(total) patches".utf8))
        }
        // The count's line ended, so that the JSON lines after it start lines of their own when
        // both streams go to one terminal or file.
        if !patches.isEmpty { FileHandle.standardError.write(Data("\n".utf8)) }
        var o = LocalCluster.Options()
        o.workers = workers
        o.threadsPerWorker = 1
        o.dataDirectory = data + "/tessera-\(workers)w-\(maxRowsPerShard)" + (replicas == 1 ? "" : "-\(replicas)r")
        o.logFile = data + "/tessera-bench.log"
        let cluster = try LocalCluster(o)
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        let held = Set(try conn.status().datasets.map(\.name))
        if !held.contains("catalog") {
            FileHandle.standardError.write(Data("ingesting the catalog (once; not timed) ...\n".utf8))
            var opts = IngestOptions(dataset: "catalog", files: [catalogFile])
            opts.replicas = replicas
            opts.maxRowsPerShard = maxRowsPerShard
            _ = try CatalogIngest.run(opts, connection: conn)
        }
        if !held.contains("coadd") {
            FileHandle.standardError.write(Data("ingesting \(patches.count) patches beside it (once; not timed) ...\n".utf8))
            var opts = ImageIngestOptions(dataset: "coadd", files: patches)
            opts.replicas = replicas
            opts.colocateWith = "catalog"
            _ = try ImageIngest.run(opts, connection: conn)
        }
        return (cluster, conn, patches)
    }

    /// The best of `repeats` timed runs of `q` after one warm-up, seconds, and the last answer.
    func bestOf(_ repeats: Int, _ conn: SchedulerConnection, _ q: CatalogQuery) throws -> (seconds: Double, last: CatalogUpdate) {
        var last = try conn.run(q)
        var best = Double.infinity
        for _ in 0..<max(1, repeats) {
            let t0 = now()
            last = try conn.run(q)
            best = min(best, Double(now() - t0) / 1e9)
        }
        return (best, last)
    }

    func anchor(_ script: String, _ args: [String]) throws {
        guard !python.isEmpty else { return }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: python)
        p.arguments = [script] + args
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw ValidationError("the anchor \(script) failed (exit \(p.terminationStatus))") }
    }
}

/// `tessera bench cutout`: 256 × 256 cutouts at random positions through the cluster (sequential
/// requests, each a job), beside astropy's Cutout2D opening the patch file for each.
struct CutoutBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cutout", abstract: "Cutouts at random positions through the cluster: p50/p99 latency, beside astropy Cutout2D on the patch files.")

    @OptionGroup var setup: ImageBenchData

    @Option(help: "Cutouts timed (after 20 warm-up ones).")
    var count = 500

    @Option(help: "Pixels per side.")
    var size = 256

    @Flag(help: "Take the cutouts from the workers over their CURVE peer endpoints, as a client on another machine does (default: their same-host sockets).")
    var overNetwork = false

    func run() throws {
        let (cluster, conn, _) = try setup.start()
        defer { cluster.stop() }
        conn.sameHostResults = !overNetwork
        let (ra, dec) = try setup.fieldBox
        var rng = SplitMix64(seed: 99)
        // Positions inside the field, away from its edge by the cutout's half-size.
        let inset = Double(size) * setup.pixelScale / 3600
        let positions = (0..<(count + 20)).map { _ in
            (ra.lowerBound + inset + (ra.upperBound - ra.lowerBound - 2 * inset) * rng.nextUnit(),
             dec.lowerBound + inset + (dec.upperBound - dec.lowerBound - 2 * inset) * rng.nextUnit())
        }
        var times: [Double] = []
        for (k, p) in positions.enumerated() {
            let q = CatalogQuery(dataset: "coadd").region(.cone(ra: p.0, dec: p.1, radius: 0.001)).cutout(bands: ["r"], width: size, height: size)
            let t0 = now()
            let u = try conn.run(q)
            let dt = Double(now() - t0) / 1e6
            guard let c = u.result.cutouts.first, c.box.width == size else { throw ValidationError("no cutout at \(p)") }
            if k >= 20 { times.append(dt) }
        }
        times.sort()
        let line = jsonLine([("bench", "cutout"), ("engine", "tessera"), ("results_from", overNetwork ? "workers over CURVE/TCP" : "workers' same-host sockets"),
                             ("cutouts", count), ("size", size), ("pixel_scale", setup.pixelScale),
                             ("p50_ms", times[times.count / 2]), ("p99_ms", times[min(times.count - 1, times.count * 99 / 100)]),
                             ("mean_ms", times.reduce(0, +) / Double(times.count)), ("workers", setup.workers), ("worker_peak_rss_mb", try workerPeakRSS(conn))])
        FileHandle.standardOutput.write(Data((line + "\n").utf8))
        let list = setup.data + "/cutout-positions.txt"
        try positions.dropFirst(20).map { "\($0.0) \($0.1)" }.joined(separator: "\n").write(toFile: list, atomically: true, encoding: .utf8)
        try setup.anchor("scripts/anchor_images.py", ["cutout", "--patches", setup.coaddFolder, "--positions", list, "--size", "\(size)"])
    }
}

/// `tessera bench forced-phot`: every catalog row on the field measured (r = 5 pixels, annulus 10
/// to 17.5 pixels) and averaged on the cluster, beside photutils on a sample of the same rows.
struct ForcedPhotBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "forced-phot", abstract: "Forced photometry of every catalog row on the field: sources per second, beside photutils on the same pixels.")

    @OptionGroup var setup: ImageBenchData

    @Option(help: "Timed runs (after one warm-up).")
    var repeats = 3

    @Option(help: "Rows photutils measures (it is slow).")
    var anchorRows = 20_000

    @Flag(help: "Only the measurement on one core in this process (no cluster, no anchor).")
    var oneCoreOnly = false

    func run() throws {
        if oneCoreOnly {
            let patches = try FileManager.default.contentsOfDirectory(atPath: setup.coaddFolder).filter { $0.hasSuffix(".fits") }.sorted()
            guard !patches.isEmpty else { throw ValidationError("no patches in \(setup.coaddFolder): run the bench once without --one-core-only") }
            FileHandle.standardOutput.write(Data((try oneCore(patches: patches.map { setup.coaddFolder + "/" + $0 }) + "\n").utf8))
            return
        }
        let (cluster, conn, patches) = try setup.start()
        defer { cluster.stop() }
        let aperture = 5 * setup.pixelScale
        let q = CatalogQuery(dataset: "catalog").forcedPhotometry(on: "coadd", bands: ["r"], apertureArcsec: aperture)
            .aggregate([.count("r_apFlux"), .mean("(r_apFlux - r_psfFlux) / r_apFluxErr")])
        let (best, u) = try setup.bestOf(repeats, conn, q)
        let measured = Int(u.result.table.numbers(u.result.table.names[0])?.first ?? 0)
        let line = jsonLine([("bench", "forced_phot"), ("engine", "tessera"), ("sources", measured), ("rows", setup.rows), ("aperture_px", 5),
                             ("seconds", best), ("sources_per_s", Double(measured) / best), ("workers", setup.workers),
                             ("worker_peak_rss_mb", try workerPeakRSS(conn))])
        FileHandle.standardOutput.write(Data((line + "\n").utf8))
        FileHandle.standardOutput.write(Data((try oneCore(patches: patches) + "\n").utf8))
        try setup.anchor("scripts/anchor_images.py", ["forced-phot", "--patches", setup.coaddFolder, "--catalog", setup.catalogFile,
                                                      "--rows", "\(anchorRows)", "--aperture-px", "5"])
    }
}

extension ForcedPhotBench {
    /// The measurement alone, on one core in this process: the first `anchorRows` × 10 catalog
    /// rows, grouped by patch as the anchor groups them, in a shard's order, each measured on its own patch file
    /// (the same call a worker makes per row), best of `repeats`.
    func oneCore(patches: [String]) throws -> String {
        let (ra, dec) = try setup.fieldBox
        var c = SyntheticCatalog(seed: 17)
        (c.raRange, c.decRange) = (ra, dec)
        let cols = c.rows(0, count: min(setup.rows, 10 * anchorRows))
        guard case .float64(let ras) = cols[1], case .float64(let decs) = cols[2] else { throw ValidationError("the catalog has no coord_ra, coord_dec") }
        var files: [Int64: ImagePatchFile] = [:]
        for p in patches {
            let f = try ImagePatchFile(path: p)
            files[f.header.patch] = f
        }
        let tiling = SkyTiling(pixelScaleArcsec: setup.pixelScale)
        var byPatch: [Int64: [Int]] = [:]
        for i in ras.indices { byPatch[tiling.patch(ra: ras[i], dec: decs[i]), default: []].append(i) }
        // In the order of a shard's spatial index, as a worker reads its rows (a random order
        // reads each stamp's rows from memory rather than cache).
        let cell = ras.indices.map { HEALPix.pixel(order: 18, ra: ras[$0], dec: decs[$0]) }
        for (p, rows) in byPatch { byPatch[p] = rows.sorted { cell[$0] < cell[$1] } }
        let fp = ForcedPhotometry(apertureRadius: 5)
        var scratch = SigmaClippedMedian.Scratch()
        var best = Double.infinity, measured = 0, checksum = 0.0
        for _ in 0..<max(1, repeats) {
            measured = 0
            checksum = 0
            let t0 = now()
            // Patches in order, so that the sum of fluxes is the same from run to run.
            for patch in byPatch.keys.sorted() {
                guard let file = files[patch], let rows = byPatch[patch] else { continue }
                for i in rows {
                    let m = ForcedPhotometryQuestion.measure(file, ra: ras[i], dec: decs[i], with: fp, scratch: &scratch)
                    if m.flux.isFinite { measured += 1; checksum += m.flux }
                }
            }
            best = min(best, Double(now() - t0) / 1e9)
        }
        return jsonLine([("bench", "forced_phot_one_core"), ("engine", "tessera"), ("sources", measured), ("seconds", best),
                         ("sources_per_s", Double(measured) / best), ("us_per_source", best / Double(max(measured, 1)) * 1e6),
                         ("mean_flux", checksum / Double(max(measured, 1)))])
    }
}

/// `tessera bench hips`: a HiPS of the field's coadd made on the cluster and written, beside
/// Aladin's Hipsgen (CDS's HiPS builder) on the same patch files.
struct HiPSBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hips", abstract: "A HiPS of the coadd made on the cluster: seconds and tile pixels per second, beside Aladin's Hipsgen on the same patch files.")

    @OptionGroup var setup: ImageBenchData

    @Option(help: "Timed runs (after one warm-up).")
    var repeats = 2

    @Option(help: "Pixels per tile side.")
    var tileWidth = 512

    @Option(help: "Aladin's command for the anchor (empty: no anchor).")
    var aladin = "aladin"

    func run() throws {
        let (cluster, conn, patches) = try setup.start()
        defer { cluster.stop() }
        let out = setup.data + "/hips-r"
        var summary = try conn.makeHiPS(dataset: "coadd", band: "r", tileWidth: tileWidth, directory: out)
        var times: [Double] = []
        for _ in 0..<repeats {
            summary = try conn.makeHiPS(dataset: "coadd", band: "r", tileWidth: tileWidth, cut: summary.cut, directory: out)
            times.append(summary.seconds)
        }
        let best = times.min() ?? summary.seconds
        let deepestPixels = Double(summary.tilesPerOrder[summary.order] ?? 0) * Double(tileWidth * tileWidth)
        let line = jsonLine([("bench", "hips"), ("engine", "tessera"), ("patches", patches.count), ("order", summary.order), ("tile_width", tileWidth),
                             ("tiles", summary.tiles), ("mb_written", Double(summary.bytes) / 1e6), ("seconds", best),
                             ("deepest_pixels_per_s", deepestPixels / best), ("workers", setup.workers), ("worker_peak_rss_mb", try workerPeakRSS(conn))])
        FileHandle.standardOutput.write(Data((line + "\n").utf8))
        guard !aladin.isEmpty else { return }
        // Hipsgen reads the IMAGE extension (hdu=1) of the same files into the same order and width.
        let folder = setup.data + "/hips-aladin-in"
        try? FileManager.default.removeItem(atPath: folder)
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        for p in patches { try FileManager.default.createSymbolicLink(atPath: folder + "/" + (p as NSString).lastPathComponent, withDestinationPath: p) }
        let target = setup.data + "/hips-aladin"
        try? FileManager.default.removeItem(atPath: target)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = [aladin, "-hipsgen", "in=\(folder)", "out=\(target)", "creator_did=ivo://tessera.bench/r", "hips_order=\(summary.order)",
                       "hips_tile_width=\(tileWidth)", "hdu=1"]
        p.standardOutput = FileHandle.nullDevice
        let t0 = now()
        try p.run()
        p.waitUntilExit()
        let seconds = Double(now() - t0) / 1e9
        guard p.terminationStatus == 0 else { throw ValidationError("Aladin's Hipsgen failed (exit \(p.terminationStatus))") }
        var usage = rusage()
        getrusage(RUSAGE_CHILDREN.rawValue, &usage)
        let tiles = (try? FileManager.default.subpathsOfDirectory(atPath: target + "/Norder\(summary.order)"))?.filter { $0.hasSuffix(".fits") }.count ?? 0
        let anchor = jsonLine([("bench", "hips"), ("engine", "aladin-hipsgen"), ("patches", patches.count), ("order", summary.order), ("tile_width", tileWidth),
                               ("deepest_tiles", tiles), ("seconds", seconds), ("deepest_pixels_per_s", Double(tiles * tileWidth * tileWidth) / seconds),
                               ("peak_rss_mb", Double(usage.ru_maxrss) / 1024)])
        FileHandle.standardOutput.write(Data((anchor + "\n").utf8))
    }
}

/// `tessera bench stack`: a mean stack of SIZE × SIZE cutouts around every catalog row on the
/// field, made on the cluster, beside numpy stacking the same cutouts from the patch files.
struct StackBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stack", abstract: "A mean stack around every catalog row on the field: cutouts per second, beside numpy on the same patch files.")

    @OptionGroup var setup: ImageBenchData

    @Option(help: "Timed runs (after one warm-up).")
    var repeats = 3

    @Option(help: "Pixels per side (odd).")
    var size = 41

    @Option(help: "Rows numpy stacks.")
    var anchorRows = 200_000

    func run() throws {
        let (cluster, conn, _) = try setup.start()
        defer { cluster.stop() }
        let q = CatalogQuery(dataset: "catalog").stack(on: "coadd", band: "r", size: size)
        let (best, u) = try setup.bestOf(repeats, conn, q)
        let sources = u.result.partial.stack.sources
        let line = jsonLine([("bench", "stack"), ("engine", "tessera"), ("cutouts", Int(sources)), ("size", size), ("seconds", best),
                             ("cutouts_per_s", Double(sources) / best), ("workers", setup.workers), ("worker_peak_rss_mb", try workerPeakRSS(conn))])
        FileHandle.standardOutput.write(Data((line + "\n").utf8))
        try setup.anchor("scripts/anchor_images.py", ["stack", "--patches", setup.coaddFolder, "--catalog", setup.catalogFile,
                                                      "--rows", "\(anchorRows)", "--size", "\(size)"])
    }
}
