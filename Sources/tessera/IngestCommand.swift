import ArgumentParser
import Foundation
import TesseraClient
import TesseraProtocol

/// What `ingest` and `upload` read: the table's name, its files and how they are cut.
struct TableInput: ParsableArguments {
    @Argument(help: "The table's name.")
    var name: String

    @Argument(help: "Input files: FITS binary tables (.fits) or CSV with a header (.csv).")
    var files: [String]

    @Option(help: "The right ascension column (degrees).")
    var ra = "coord_ra"

    @Option(help: "The declination column (degrees).")
    var dec = "coord_dec"

    @Option(help: "Most rows in one shard; denser sky gets smaller pixels.")
    var maxRowsPerShard = 1_000_000

    @Option(help: "Margin radius in arcseconds (rows of neighbouring shards kept with each shard).")
    var marginArcsec = 10.0

    @Option(name: .customLong("spill-dir"), help: "Where rows wait, by shard, between reading the files and sending the shards (needs about the input's size free; default: $TMPDIR, else /var/tmp).")
    var spillDirectory: String?

    @Flag(help: "Replace a table of the same name.")
    var replace = false

    func validate() throws {
        guard !files.isEmpty else { throw ValidationError("give at least one input file") }
        guard maxRowsPerShard > 0 else { throw ValidationError("--max-rows-per-shard must be positive") }
        if let problem = IngestOptionsCheck.problem(marginArcsec: marginArcsec, maxRowsPerShard: UInt64(maxRowsPerShard)) {
            throw ValidationError("--margin-arcsec, --max-rows-per-shard: \(problem)")
        }
    }

    func options() -> IngestOptions {
        var o = IngestOptions(dataset: name, files: files)
        o.raColumn = ra
        o.decColumn = dec
        o.maxRowsPerShard = maxRowsPerShard
        o.marginArcsec = marginArcsec
        o.replace = replace
        o.spillDirectory = spillDirectory
        return o
    }

    /// Loads the table and says what was stored.
    func load(_ o: IngestOptions, _ conn: SchedulerConnection, what: String) throws {
        let start = Date()
        let done = try CatalogIngest.run(o, connection: conn) { line in
            FileHandle.standardError.write(Data("  \(line)\n".utf8))
        }
        let secs = Date().timeIntervalSince(start)
        print("\(what) `\(done.dataset)`: \(done.rows) rows in \(done.shards) shards, \(o.replicas) replica(s), \(String(format: "%.1f", secs)) s (\(String(format: "%.2f", Double(done.rows) / secs / 1e6)) Mrows/s)")
    }
}

struct IngestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ingest",
        abstract: "Load FITS binary tables or CSV files into a sharded catalog on the cluster.")

    @OptionGroup var table: TableInput

    @Option(help: "Copies of each shard, on distinct workers.")
    var replicas = 2

    @Flag(help: "The files are coadd images (FITS with a TAN WCS): Tessera's patches, or any image astropy writes.")
    var images = false

    @Option(help: "With --images: the catalog to place the patches beside (each on the workers holding the catalog shard covering it).")
    var beside: String?

    @Option(help: "With --images: the band of images whose headers name none (BAND or FILTER).")
    var band: String?

    @OptionGroup var target: SchedulerTarget

    func validate() throws {
        guard replicas >= 1 else { throw ValidationError("--replicas must be at least 1") }
        guard images || (beside == nil && band == nil) else { throw ValidationError("--beside and --band are for --images") }
    }

    func run() throws {
        let conn = try target.connect()
        if images {
            var o = ImageIngestOptions(dataset: table.name, files: table.files)
            o.replicas = min(replicas, max(1, try conn.status().workers.count))
            o.replace = table.replace
            o.colocateWith = beside ?? ""
            o.band = band
            let start = Date()
            let done = try ImageIngest.run(o, connection: conn) { FileHandle.standardError.write(Data("  \($0)\n".utf8)) }
            print("ingested images `\(done.dataset)`: \(done.shards) patch files, \(o.replicas) replica(s), \(String(format: "%.1f", Date().timeIntervalSince(start))) s")
            return
        }
        var o = table.options()
        o.replicas = min(replicas, max(1, try conn.status().workers.count))
        try table.load(o, conn, what: "ingested")
    }
}

struct UploadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "upload",
        abstract: "Load a table of your own (FITS or CSV) into your workspace, to cross-match against the survey.",
        discussion: """
            The table is yours alone (unless --shared: others then read it as USER..NAME), sharded
            like a catalog with a copy on every worker, so that it meets each survey shard where
            that shard is. It is removed after --lifetime-hours (default 24); your workspace holds
            at most the scheduler's --workspace-quota-mb. Its name may not be a survey dataset's.

            Example:
              tessera upload xray sources.csv --ra RA --dec DEC
              tessera crossmatch xray object --radius-arcsec 1 --select left_id,right_objectId,sep_arcsec
            """)

    @OptionGroup var table: TableInput

    @Option(help: "Hours until the table is removed (at most 30 days).")
    var lifetimeHours = 24.0

    @Flag(help: "Let every user read it (as USER..NAME).")
    var shared = false

    @OptionGroup var target: SchedulerTarget

    func validate() throws {
        guard lifetimeHours.isFinite, lifetimeHours > 0 else { throw ValidationError("--lifetime-hours must be a positive number") }
    }

    func run() throws {
        let conn = try target.connect()
        var o = table.options()
        o.workspace = true
        o.shared = shared
        o.lifetimeSeconds = lifetimeHours * 3600
        o.replicas = min(Limits.replicas, max(1, try conn.status().workers.count))
        try table.load(o, conn, what: "uploaded")
    }
}
