import ArgumentParser
import Foundation
import TesseraClient
import TesseraCluster
import TesseraCompute
import TesseraProtocol
import TesseraSky
import TesseraStorage
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
        try lookAtTheImages(conn)

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
            for (t, v, _) in vs where t != root {
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
        // The workers' own counts (scans, cache, memory) come with their heartbeats: wait for one.
        Thread.sleep(forTimeInterval: Double(LocalCluster.Options().heartbeatMs) / 1000 + 0.1)
        print(StatusReport.render(try conn.status(), endpoint: cluster.clientEndpoint))
    }

    /// Analyses of the demo catalog, answered where its shards live: a colour–magnitude diagram of
    /// point sources (with partial answers as they merge), a HEALPix density map, number counts
    /// per cell, and a cone search.
    func askTheCatalog(_ conn: SchedulerConnection) throws {
        let object = CatalogQuery(dataset: "demo_object")
        func show(_ u: CatalogUpdate) {
            print(String(format: "    partial after %.3f s: %d shards, %d rows matched", u.seconds, u.result.shards, u.result.rowsMatched))
        }

        print("\ncolour–magnitude diagram of point sources (g−r from −1 to 2 in 60 bins, r from 16 to 24 in 80):")
        let cmd = try conn.run(object.filter("refExtendedness == 0")
            .histogram2D(x: "mag(g_psfFlux) - mag(r_psfFlux)", bins: 60, range: -1...2, y: "mag(r_psfFlux)", bins: 80, range: 16...24)
            .progressive(every: 0.1), name: "demo cmd", onUpdate: show)
        let h = cmd.result.histogram
        let peak = h.indices.max { h[$0] < h[$1] } ?? 0
        print(String(format: "  %d point sources in the diagram over %d shards (%.3f s); busiest bin g−r %.2f, r %.1f with %d",
                     h.reduce(0, +), cmd.result.shards, cmd.seconds, -1 + 0.05 * (Double(peak / 80) + 0.5), 16 + 0.1 * (Double(peak % 80) + 0.5), h[peak]))
        // A coarse picture: r down the page, g−r across, darker where more sources.
        let shades = Array(" .:-=+*#%@")
        let top = Double(h.max() ?? 1)
        for ry in stride(from: 0, to: 80, by: 8) {
            var line = "    r \(String(format: "%4.1f", 16 + 0.1 * Double(ry))) |"
            for gx in stride(from: 0, to: 60, by: 2) {
                var n: UInt64 = 0
                for dy in 0..<8 { for dx in 0..<2 { n += h[(gx + dx) * 80 + ry + dy] } }
                line.append(shades[min(shades.count - 1, Int((Double(n) / (top * 16)).squareRoot() * Double(shades.count - 1) * 1.5))])
            }
            print(line)
        }

        print("\nsky density, HEALPix order 6 (0.92° pixels):")
        let map = try conn.run(object.skyMap(order: 6, mean: "mag(r_psfFlux)"), name: "demo map").result.table
        if let counts = map.numbers("count"), let pixels = map.numbers("pixel") {
            let order = counts.indices.sorted { counts[$0] > counts[$1] }
            print("  \(counts.count) pixels hold objects; the densest:")
            for k in order.prefix(3) { print(String(format: "    pixel %6.0f: %6.0f objects", pixels[k], counts[k])) }
        }

        print("\nnumber counts per 1°×1° cell (galaxies, r < 24):")
        let cells = try conn.run(object.filter("refExtendedness == 1 and mag(r_psfFlux) < 24").groupBy("cell")
            .aggregate(.count(), .mean("mag(r_psfFlux)"), .median("mag(r_psfFlux)")), name: "demo cells")
        print("  \(cells.result.table.rowCount) cells; the first five:")
        try ResultOutput.write(ResultTable(names: cells.result.table.names, columns: cells.result.table.columns.map { $0.prefix(5) }), format: "table", to: nil)

        print("\ncone search: the 5 brightest objects within 0.2° of (60, −35):")
        let cone = try conn.run(object.region(.cone(ra: 60, dec: -35, radius: 0.2)).select(["objectId", "coord_ra", "coord_dec", "mag(r_psfFlux)"])
            .sorted(by: "mag(r_psfFlux)").limit(5), name: "demo cone")
        try ResultOutput.write(cone.result.table, format: "table", to: nil)
        print(String(format: "  (%.3f s, %d of %d rows read matched)", cone.seconds, cone.result.rowsMatched, cone.result.rowsScanned))
    }

    /// A small coadd of the demo catalog (1″ pixels, g and r, generated once and stored beside the
    /// catalog): a cutout around the region's brightest object, drawn here and written as a PNG,
    /// and forced photometry of every object on it, compared with the catalog's fluxes.
    func lookAtTheImages(_ conn: SchedulerConnection) throws {
        let (ra, dec) = (60.0...60.2, -35.1...(-34.9))
        if try !conn.status().datasets.contains(where: { $0.name == "demo_coadd" }) {
            let folder = data + "/demo-coadd"
            print("\nrendering a coadd of the catalog on \(ra.lowerBound)…\(ra.upperBound)° × \(dec.lowerBound)…\(dec.upperBound)° (1″ pixels, g and r) in \(folder)/ ...")
            let coadd = SyntheticCoadd(tiling: SkyTiling(pixelScaleArcsec: 1, borderPixels: 64), seed: 7)
            let files = try FileManager.default.contentsOfDirectory(atPath: data + "/demo-input-\(catalogRows)").filter { $0.hasSuffix(".fits") }.sorted()
                .map { data + "/demo-input-\(catalogRows)/" + $0 }
            let patches = try coadd.write(region: try BoxRegion(raMin: ra.lowerBound, raMax: ra.upperBound, decMin: dec.lowerBound, decMax: dec.upperBound),
                                          bands: ["g", "r"], sources: try CoaddSources(catalogFiles: files, bands: ["g", "r"]), to: folder)
            var o = ImageIngestOptions(dataset: "demo_coadd", files: patches)
            o.replicas = min(2, workers)
            o.colocateWith = "demo_object"
            let done = try ImageIngest.run(o, connection: conn)
            print("ingested `demo_coadd`: \(done.shards) patch files beside `demo_object`")
        }
        let region = CatalogQuery.Region.box(raMin: ra.lowerBound + 0.01, raMax: ra.upperBound - 0.01, decMin: dec.lowerBound + 0.01, decMax: dec.upperBound - 0.01)
        let brightest = try conn.run(CatalogQuery(dataset: "demo_object").region(region).select(["coord_ra", "coord_dec", "mag(r_psfFlux)"])
            .sorted(by: "mag(r_psfFlux)").limit(1), name: "demo brightest").result.table
        guard let bra = brightest.numbers("coord_ra")?.first, let bdec = brightest.numbers("coord_dec")?.first else { return }
        let cut = try conn.run(CatalogQuery(dataset: "demo_coadd").region(.cone(ra: bra, dec: bdec, radius: 0.001)).cutout(bands: ["r"], width: 64, height: 64),
                               name: "demo cutout")
        guard let c = cut.result.cutouts.first else { return }
        print(String(format: "\ncutout: 64 × 64 pixels of r around the brightest object (%.5f, %.5f), r = %.2f, in %.3f s:", bra, bdec,
                     brightest.numbers("mag(r_psfFlux)")?.first ?? .nan, cut.seconds))
        let grey = PNGImage.stretched(c.image, width: 64, height: 64)
        let shades = Array(" .:-=+*#%@")
        for y in stride(from: 0, to: 64, by: 4) {
            var line = "    "
            for x in stride(from: 0, to: 64, by: 2) {
                var sum = 0
                for dy in 0..<4 { for dx in 0..<2 { sum += Int(grey[(y + dy) * 64 + x + dx]) } }
                line.append(shades[min(shades.count - 1, sum / 8 * shades.count / 256)])
            }
            print(line)
        }
        // Four times larger, for a picture viewer.
        var big = [UInt8](repeating: 0, count: 256 * 256)
        for y in 0..<256 { for x in 0..<256 { big[y * 256 + x] = grey[(y / 4) * 64 + x / 4] } }
        let png = data + "/demo-cutout.png"
        try DurableFile.write(try PNGImage.encode(width: 256, height: 256, kind: .grey, pixels: big), to: png)
        print("  (written as \(png))")

        print("\nforced photometry of every catalog object on the coadd (2″ aperture, r), against the catalog's fluxes:")
        let pull = "(r_apFlux - r_psfFlux) / r_apFluxErr"
        let phot = CatalogQuery(dataset: "demo_object").region(region).forcedPhotometry(on: "demo_coadd", bands: ["r"], apertureArcsec: 2).filter("r_apFlag == 0")
        let stats = try conn.run(phot.aggregate(.count(pull), .mean(pull), .std(pull)), name: "demo forced photometry")
        let t = stats.result.table
        print(String(format: "  %.0f objects measured where their shards and patches are, in %.3f s: pulls (measured − catalog) / error have mean %.3f and σ %.3f",
                     t.numbers(t.names[0])?.first ?? 0, stats.seconds, t.numbers(t.names[1])?.first ?? .nan, t.numbers(t.names[2])?.first ?? .nan))
        let hist = try conn.run(phot.histogram(pull, bins: 10, range: -5...5), name: "demo pulls").result.histogram
        let most = Double(hist.max() ?? 1)
        for (k, n) in hist.enumerated() {
            print(String(format: "    %+3d … %+3d | %@ %d", -5 + k, -4 + k, String(repeating: "#", count: Int((Double(n) / most * 40).rounded())), n))
        }
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
