import ArgumentParser
import Foundation
import TesseraClient
import TesseraProtocol

struct IngestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ingest",
        abstract: "Load FITS binary tables or CSV files into a sharded catalog on the cluster.")

    @Argument(help: "The dataset's name.")
    var name: String

    @Argument(help: "Input files: FITS binary tables (.fits) or CSV with a header (.csv).")
    var files: [String]

    @Option(help: "The right ascension column (degrees).")
    var ra = "coord_ra"

    @Option(help: "The declination column (degrees).")
    var dec = "coord_dec"

    @Option(help: "Most rows in one shard; denser sky gets smaller pixels.")
    var maxRowsPerShard = 1_000_000

    @Option(help: "Copies of each shard, on distinct workers.")
    var replicas = 2

    @Option(help: "Margin radius in arcseconds (rows of neighbouring shards kept with each shard).")
    var marginArcsec = 10.0

    @Option(name: .customLong("spill-dir"), help: "Where rows wait, by shard, between reading the files and sending the shards (needs about the input's size free; default: $TMPDIR, else /var/tmp).")
    var spillDirectory: String?

    @Flag(help: "Replace a dataset of the same name.")
    var replace = false

    @OptionGroup var target: SchedulerTarget

    func validate() throws {
        guard !files.isEmpty else { throw ValidationError("give at least one input file") }
        guard maxRowsPerShard > 0 else { throw ValidationError("--max-rows-per-shard must be positive") }
        guard replicas >= 1 else { throw ValidationError("--replicas must be at least 1") }
        guard marginArcsec >= 0 else { throw ValidationError("--margin-arcsec cannot be negative") }
    }

    func run() throws {
        let conn = try target.connect()
        var o = IngestOptions(dataset: name, files: files)
        o.raColumn = ra
        o.decColumn = dec
        o.maxRowsPerShard = maxRowsPerShard
        o.replicas = min(replicas, max(1, try conn.status().workers.count))
        o.marginArcsec = marginArcsec
        o.replace = replace
        o.spillDirectory = spillDirectory
        let start = Date()
        let done = try CatalogIngest.run(o, connection: conn) { line in
            FileHandle.standardError.write(Data("  \(line)\n".utf8))
        }
        let secs = Date().timeIntervalSince(start)
        print("ingested `\(done.dataset)`: \(done.rows) rows in \(done.shards) shards, \(o.replicas) replica(s), \(String(format: "%.1f", secs)) s (\(String(format: "%.2f", Double(done.rows) / secs / 1e6)) Mrows/s)")
    }
}
