import ArgumentParser
import Dispatch
import Foundation
import TesseraClient
import TesseraCluster
import TesseraProtocol
import TesseraStorage
import TesseraSurvey

/// `tessera bench ingest`: end-to-end ingest throughput on a local cluster.
struct IngestBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ingest",
        abstract: "Ingest rate end to end (read FITS, index, partition, ship, write, commit) on a fresh local cluster.")

    @Option(help: "Rows of synthetic catalog to generate (once) and ingest; ignored with --files.")
    var rows = 2_000_000

    @Option(parsing: .upToNextOption, help: "Ingest these FITS files instead (e.g. what anchor_catalog.py --only-data wrote).")
    var files: [String] = []

    @Option(help: "Workers of the local cluster.")
    var workers = 2

    @Option(help: "Copies of each shard.")
    var replicas = 2

    @Option(help: "Most rows per shard.")
    var maxRowsPerShard = 1_000_000

    @Flag(help: "Afterwards, read every shard back from the workers' disks and compare all rows with the input.")
    var verify = false

    @Option(help: "Where generated input is kept between runs.")
    var dir = FileManager.default.temporaryDirectory.appendingPathComponent("tessera-bench-ingest").path

    func run() throws {
        var inputs = files
        if inputs.isEmpty {
            inputs = try SyntheticCatalog(seed: 42).writeFITS(rows: rows, rowsPerFile: 1_000_000, to: dir + "/input-\(rows)")
        }
        let data = dir + "/cluster-\(getpid())"
        try? FileManager.default.removeItem(atPath: data)
        defer { try? FileManager.default.removeItem(atPath: data) }
        var o = LocalCluster.Options()
        o.workers = workers
        o.dataDirectory = data
        o.logFile = dir + "/cluster.log"
        let cluster = try LocalCluster(o)
        defer { cluster.stop() }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        var opts = IngestOptions(dataset: "bench", files: inputs)
        opts.replicas = replicas
        opts.maxRowsPerShard = maxRowsPerShard
        var phases: [String] = []
        let t = DispatchTime.now().uptimeNanoseconds
        let done = try CatalogIngest.run(opts, connection: conn) { phases.append($0) }
        let secs = Double(DispatchTime.now().uptimeNanoseconds - t) / 1e9
        let s = try conn.status()
        let ds = s.datasets.first { $0.name == "bench" }
        print(jsonLine([
            ("engine", "tessera"), ("workload", "ingest"), ("rows", Int(done.rows)), ("shards", Int(done.shards)), ("replicas", replicas),
            ("seconds", secs), ("mrows_per_s", Double(done.rows) / secs / 1e6),
            ("stored_mib", Double(ds?.bytes ?? 0) / 1_048_576), ("min_live_replicas", Int(ds?.minReplicas ?? 0)),
            ("client_peak_rss_mib", Double(peakRSS()) / 1_048_576),
            ("worker_peak_rss_mib", s.workers.map { Double($0.peakRssBytes) / 1_048_576 }.max() ?? 0),
        ]))
        for p in phases where p.contains("[") { FileHandle.standardError.write(Data("  \(p)\n".utf8)) }
        if verify { try verifyReadBack(inputs: inputs, opts: opts, data: data) }
    }

    /// Every input row comes back exactly (order aside) from one copy of each shard.
    func verifyReadBack(inputs: [String], opts: IngestOptions, data: String) throws {
        let t = DispatchTime.now().uptimeNanoseconds
        let (specs, input, _) = try CatalogIngest.readInputs(opts)
        var seen = Set<String>()
        var back = specs.map { ColumnData.empty($0.type) }
        let e = FileManager.default.enumerator(atPath: data)
        while let rel = e?.nextObject() as? String {
            guard rel.hasSuffix(".shard"), seen.insert((rel as NSString).lastPathComponent).inserted else { continue }
            let cols = try ShardReader(path: data + "/" + rel).read(columns: specs.map(\.name))
            for k in 0..<cols.count { back[k].append(cols[k]) }
        }
        guard let idCol = specs.firstIndex(where: { $0.name == "objectId" }),
              case .int64(let a) = input[idCol], case .int64(let b) = back[idCol] else {
            throw ValidationError("verification needs an Int64 objectId column")
        }
        let ia = RadixSort.order(a), ib = RadixSort.order(b)
        var mismatched: [String] = []
        for k in 0..<specs.count where input[k].gathered(ia) != back[k].gathered(ib) {
            // NaN != NaN: compare bit patterns for float columns.
            if !sameBits(input[k].gathered(ia), back[k].gathered(ib)) { mismatched.append(specs[k].name) }
        }
        print(jsonLine([("engine", "tessera"), ("workload", "ingest_verify"), ("rows_in", a.count), ("rows_back", b.count),
                        ("columns", specs.count), ("identical", mismatched.isEmpty && a.count == b.count),
                        ("mismatched_columns", mismatched.joined(separator: ",")),
                        ("seconds", Double(DispatchTime.now().uptimeNanoseconds - t) / 1e9)]))
    }

    func sameBits(_ x: ColumnData, _ y: ColumnData) -> Bool {
        switch (x, y) {
        case (.float64(let a), .float64(let b)): a.count == b.count && zip(a, b).allSatisfy { $0.bitPattern == $1.bitPattern }
        case (.float32(let a), .float32(let b)): a.count == b.count && zip(a, b).allSatisfy { $0.bitPattern == $1.bitPattern }
        default: x == y
        }
    }

}

/// This process's peak resident memory (VmHWM), bytes.
func peakRSS() -> UInt64 {
    guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
          let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }) else { return 0 }
    let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
    return words.count > 1 ? (UInt64(words[1]) ?? 0) * 1024 : 0
}
