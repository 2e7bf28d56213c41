import ArgumentParser
import Foundation
import TesseraClient
import TesseraCompute
import SwiftProtobuf
import TesseraProtocol

/// Comma-separated numbers of an option, exactly `count` finite ones.
func optionNumbers(_ s: String, _ count: Int, _ what: String) throws -> [Double] {
    let p = s.split(separator: ",").compactMap { Double($0.trimmingCharacters(in: .whitespaces)) }
    guard p.count == count, p.allSatisfy(\.isFinite) else { throw ValidationError("\(what) needs \(count) comma-separated numbers, got `\(s)`") }
    return p
}

/// Where on the sky a question looks: `--cone` or `--box` (catalog questions, cutouts, stacks).
struct SkyRegionOptions: ParsableArguments {
    @Option(help: "A cone: RA,DEC,RADIUS in degrees.")
    var cone: String?

    @Option(help: "An RA/Dec box: RAMIN,RAMAX,DECMIN,DECMAX in degrees.")
    var box: String?

    /// `q` with the region, if one was given.
    func apply(to q: CatalogQuery) throws -> CatalogQuery {
        var q = q
        if let cone {
            let c = try optionNumbers(cone, 3, "--cone")
            q = q.region(.cone(ra: c[0], dec: c[1], radius: c[2]))
        }
        if let box {
            let b = try optionNumbers(box, 4, "--box")
            q = q.region(.box(raMin: b[0], raMax: b[1], decMin: b[2], decMax: b[3]))
        }
        return q
    }
}

/// Options every catalog question shares, turned into a `CatalogQuery`.
struct QueryOptions: ParsableArguments {
    @OptionGroup var region: SkyRegionOptions

    @Option(name: .customLong("where"), help: "A condition rows must meet, e.g. \"mag(r_psfFlux) < 24 and refExtendedness == 0\".")
    var filter: String = ""

    @Option(help: "Rows back with these columns or expressions, comma-separated (`*` for all); `NAME = EXPR` names a computed column.")
    var select: String?

    @Option(name: .customLong("group-by"), help: "Aggregate per value of this numeric expression.")
    var groupBy: String?

    @Option(help: "An aggregate, repeatable: count, count:EXPR, sum:, mean:, min:, max:, var:, std:, median:, qP:EXPR (e.g. q0.9:EXPR).")
    var agg: [String] = []

    @Option(help: "A histogram axis EXPR:BINS:MIN:MAX; give it twice for a 2-D histogram (x then y).")
    var hist: [String] = []

    @Option(name: .customLong("map-order"), help: "A HEALPix density map at this order (with --map-mean for a mean per pixel).")
    var mapOrder: Int?

    @Option(name: .customLong("map-mean"), help: "The expression averaged per map pixel.")
    var mapMean: String?

    @Option(help: "At most this many rows (head, or top-k with --sort).")
    var limit: Int?

    @Option(help: "Sort rows by this expression (needs --limit).")
    var sort: String?

    @Flag(help: "Sort descending.")
    var descending = false

    @Option(help: "Return a random fraction of the rows (seeded, the same rows whatever the sharding).")
    var sample: Double?

    @Option(help: "Seed of --sample.")
    var seed: UInt64 = 0

    @Option(name: .customLong("max-groups"), help: "Most groups a group-by may produce (default 100000).")
    var maxGroups: Int?

    @Option(name: .customLong("forced-phot"), help: "Measure each row on this image dataset (forced aperture photometry): adds BAND_apFlux, BAND_apFluxErr, BAND_apBackground and BAND_apFlag columns.")
    var forcedPhot: String?

    @Option(name: .customLong("aperture-arcsec"), help: "With --forced-phot: the aperture's radius (the background annulus is 2 to 3.5 times it).")
    var apertureArcsec = 1.0

    @Option(help: "With --forced-phot: the bands to measure, comma-separated (default: all).")
    var bands: String?

    @Option(name: .customLong("max-rows"), help: "Most rows a collect may return (default 1000000).")
    var maxRows: Int?

    /// `EXPR:BINS:MIN:MAX`, split from the right so the expression may hold anything.
    func axis(_ s: String) throws -> (String, Int, ClosedRange<Double>) {
        let parts = s.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard parts.count >= 4, let bins = Int(parts[parts.count - 3]), let lo = Double(parts[parts.count - 2]),
              let hi = Double(parts[parts.count - 1]), bins > 0, lo < hi else {
            throw ValidationError("--hist needs EXPR:BINS:MIN:MAX with BINS > 0 and MIN < MAX, got `\(s)`")
        }
        return (parts[0..<(parts.count - 3)].joined(separator: ":"), bins, lo...hi)
    }

    /// The question: `base` (a dataset, or a cross-match) with these options.
    func query(_ base: CatalogQuery) throws -> CatalogQuery {
        var q = base
        q = try region.apply(to: q)
        if !filter.isEmpty { q = q.filter(filter) }
        if let forcedPhot {
            let list = bands.map { $0.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) } } ?? []
            q = q.forcedPhotometry(on: forcedPhot, bands: list, apertureArcsec: apertureArcsec)
        } else if bands != nil {
            throw ValidationError("--bands is for --forced-phot")
        }
        let asked = [hist.isEmpty ? 0 : 1, mapOrder == nil ? 0 : 1, (select != nil || limit != nil || sample != nil) ? 1 : 0,
                     (groupBy != nil || !agg.isEmpty) ? 1 : 0].reduce(0, +)
        guard asked <= 1 else {
            throw ValidationError("ask for one kind of result: aggregates (--agg, --group-by), --hist, --map-order, or rows (--select, --limit, --sample)")
        }
        if !hist.isEmpty {
            guard hist.count <= 2 else { throw ValidationError("--hist is given once (1-D) or twice (2-D)") }
            let x = try axis(hist[0])
            if hist.count == 2 {
                let y = try axis(hist[1])
                q = q.histogram2D(x: x.0, bins: x.1, range: x.2, y: y.0, bins: y.1, range: y.2)
            } else {
                q = q.histogram(x.0, bins: x.1, range: x.2)
            }
        } else if let mapOrder {
            q = q.skyMap(order: mapOrder, mean: mapMean)
        } else if select != nil || limit != nil || sample != nil {
            let cols = QueryCommand.topLevelParts(select ?? "*")
            q = q.select(cols == ["*"] ? [] : cols)
            if let limit { q = q.limit(limit) }
            if let sort { q = q.sorted(by: sort, descending: descending) }
            if let sample { q = q.sample(fraction: sample, seed: seed) }
            if let maxRows { q = q.maxRows(maxRows) }
        } else {
            do {
                q = q.aggregate(try (agg.isEmpty ? ["count"] : agg).map { (s) throws(CatalogQueryError) in try Aggregate(parsing: s) })
            } catch {
                throw ValidationError(error.message)
            }
            if let groupBy { q = q.groupBy(groupBy, maxGroups: maxGroups) }
        }
        return q
    }
}

/// Where and how a result is written.
struct OutputOptions: ParsableArguments {
    @Option(help: "Output: table, csv, json or fits.")
    var format: String = "table"

    @Option(name: .short, help: "Write the result to this file (needed for fits).")
    var output: String?

    @Flag(help: "Show partial results while the job runs.")
    var progress = false

    @Option(help: "Keep the rows (with --select) as a table of this name in your workspace, as `tessera upload` would (a day's lifetime; --replace-stored replaces one).")
    var store: String?

    @Flag(help: "With --store: replace a table of that name.")
    var replaceStored = false

    func validate() throws {
        guard ["table", "csv", "json", "fits"].contains(format) else { throw ValidationError("--format must be table, csv, json or fits") }
        if format == "fits" && output == nil { throw ValidationError("--format fits needs -o FILE") }
    }
}

/// How a job shares the cluster: its class, and whom it is for.
struct JobOptions: ParsableArguments {
    @Option(help: "The job's class: interactive (first; must fit the interactive budget), normal, or batch (runs in what the others leave).")
    var priority: String = "normal"

    @Option(help: "Run the job for this user (an admin key only, or a cluster without keys, where it tags jobs for fair share).")
    var user: String?

    @Flag(help: "Take results a job leaves on its workers (cutouts) over their CURVE peer endpoints, even from workers on this host (default: their same-host sockets).")
    var resultsOverNetwork = false

    func validate() throws {
        guard PriorityClass(name: priority) != nil else { throw ValidationError("--priority must be interactive, normal or batch, not `\(priority)`") }
    }

    func apply(to conn: SchedulerConnection) {
        conn.priority = PriorityClass(name: priority) ?? .normal
        if let user { conn.onBehalfOf = user }
        conn.sameHostResults = !resultsOverNetwork
    }
}

struct QueryCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "query",
        abstract: "Ask a question of a catalog, computed where its shards are.",
        discussion: """
            Examples:
              tessera query --dataset object --where "refExtendedness == 0 and mag(r_psfFlux) < 24"
              tessera query --dataset object --cone 60,-35,0.5 --agg "mean:mag(g_psfFlux) - mag(r_psfFlux)"
              tessera query --dataset object --group-by cell --agg count:mag(r_psfFlux) --agg mean:mag(r_psfFlux)
              tessera query --dataset object --hist "mag(g_psfFlux)-mag(r_psfFlux):60:-1:2" --hist "mag(r_psfFlux):80:16:24"
              tessera query --dataset object --map-order 6 --format fits -o density.fits
              tessera query --dataset object --cone 60,-35,0.1 --select objectId,coord_ra,coord_dec --limit 10
            """)

    @Option(help: "The dataset.")
    var dataset: String

    @OptionGroup var query: QueryOptions
    @OptionGroup var out: OutputOptions
    @OptionGroup var job: JobOptions

    @OptionGroup var target: SchedulerTarget

    func run() throws {
        var q = try query.query(CatalogQuery(dataset: dataset))
        if out.progress { q = q.progressive() }
        try runQuery(q, target: target, out: out, job: job)
    }
}

/// Runs a question and writes its answer; with `--progress`, partial answers go to stderr.
func runQuery(_ q: CatalogQuery, target: SchedulerTarget, out: OutputOptions, job: JobOptions) throws {
    let conn = try target.connect()
    job.apply(to: conn)
    // A collect written as CSV, JSON or FITS goes out a batch at a time as the shards answer (in
    // the order the whole answer would have had), and no batch is kept.
    let streams = q.plan.collectsRows && out.store == nil && RowWriter.formats.contains(out.format)
    var rows = streams ? try RowWriter(format: out.format, to: out.output) : nil
    var wroteRows = false
    // A batch that could not be written stops the question (it is cancelled), with this error.
    var writeFailure: (any Error)?
    let final: CatalogUpdate
    do {
        final = try conn.run(q, keepsRows: !streams, onUpdate: { u in
            if streams && !u.isFinal {
                let t = u.result.table
                if t.rowCount > 0 && writeFailure == nil {
                    do { try rows?.append(t) } catch { writeFailure = error }
                    wroteRows = true
                }
                return
            }
            guard out.progress else { return }
            let line = "partial after \(String(format: "%.2f", u.seconds)) s: \(u.result.shards) shards, \(u.result.rowsMatched) rows matched"
            FileHandle.standardError.write((line + "\n").data(using: .utf8)!)
        }, isStopped: { writeFailure != nil })
    } catch {
        rows?.discard()
        throw writeFailure ?? error
    }
    var table = final.result.table
    if table.names.isEmpty && !wroteRows && out.store == nil && q.plan.hasRows && !q.plan.hasPython && !q.plan.hasCrossmatch,
       let d = try? conn.status().datasets.first(where: { $0.name == q.plan.dataset }) {
        // No shard answered (a region off the footprint): the columns as a shard would name them.
        table = .noRows(selecting: q.plan.rows.select, schema: d.columns.map { ($0.name, $0.type) })
    }
    if let name = out.store {
        try storeRows(final.result.table, as: name, of: q, conn: conn, replace: out.replaceStored)
    } else if var rows {
        // No shard had a row: the answer's own (empty) table, with its columns' names.
        try rows.complete(appending: wroteRows ? nil : table)
    } else {
        try ResultOutput.write(table, format: out.format, to: out.output)
    }
    let r = final.result
    FileHandle.standardError.write("\(r.shards) shards, \(r.rowsScanned) rows read, \(r.rowsMatched) matched, \(String(format: "%.3f", final.seconds)) s\n".data(using: .utf8)!)
}

/// `--store`: a question's rows kept as a table in the user's workspace (written to a FITS file
/// here and uploaded). Positions are the dataset's own position columns (`left_` ones for a
/// cross-match), which the rows must hold.
func storeRows(_ t: ResultTable, as name: String, of q: CatalogQuery, conn: SchedulerConnection, replace: Bool) throws {
    guard q.plan.hasRows else { throw ValidationError("--store keeps rows: give --select") }
    // A table needs rows: an ingest refuses an empty file, which would be named by its temporary path.
    guard t.rowCount > 0 else { throw ValidationError("--store: the question matched no rows, so there is no table to store (nothing was stored as `\(name)`)") }
    guard let d = try conn.status().datasets.first(where: { $0.name == q.plan.dataset }) else {
        throw ValidationError("no dataset named `\(q.plan.dataset)`")
    }
    let prefix = q.plan.hasCrossmatch ? Crossmatch.leftPrefix : ""
    let (ra, dec) = (prefix + d.raColumn, prefix + d.decColumn)
    guard t.names.contains(ra), t.names.contains(dec) else {
        throw ValidationError("--store needs the positions among the selected columns: add \(ra) and \(dec) to --select")
    }
    let file = FileManager.default.temporaryDirectory.appendingPathComponent("tessera-store-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).fits").path
    defer { try? FileManager.default.removeItem(atPath: file) }
    try ResultOutput.write(t, format: "fits", to: file)
    var o = IngestOptions(dataset: name, files: [file])
    (o.raColumn, o.decColumn, o.workspace, o.replace) = (ra, dec, true, replace)
    o.replicas = min(Limits.replicas, max(1, try conn.status().workers.count))
    let done = try CatalogIngest.run(o, connection: conn)
    FileHandle.standardError.write(Data("stored `\(done.dataset)`: \(done.rows) rows in \(done.shards) shards, in your workspace\n".utf8))
}

struct CrossmatchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "crossmatch",
        abstract: "Pair the rows of two catalogs within a radius, on the workers holding them.",
        discussion: """
            The question's rows are the pairs: columns left_NAME, right_NAME and sep_arcsec (arcseconds).
            --where, --select, --agg, --hist and the other query options read them; --cone and --box
            select left rows. The radius is at most RIGHT's margin (--margin-arcsec at its ingest).

            Examples:
              tessera crossmatch xray object --radius-arcsec 1 --select left_id,right_objectId,sep_arcsec
              tessera crossmatch xray object --radius-arcsec 2 --all --hist sep_arcsec:20:0:2
              tessera crossmatch object object2 --radius-arcsec 0.5 --where "mag(left_r_psfFlux) < 22" \\
                  --agg "mean:mag(left_r_psfFlux) - mag(right_r_psfFlux)"
            """)

    @Argument(help: "The left catalog: each of its rows is paired.")
    var left: String

    @Argument(help: "The right catalog.")
    var right: String

    @Option(help: "The radius, arcseconds.")
    var radiusArcsec: Double

    @Flag(help: "Every right row within the radius (default: the nearest).")
    var all = false

    @Option(help: "The nearest K right rows within the radius, per left row.")
    var k = 1

    @OptionGroup var query: QueryOptions
    @OptionGroup var out: OutputOptions
    @OptionGroup var job: JobOptions

    @OptionGroup var target: SchedulerTarget

    func validate() throws {
        if all && k != 1 { throw ValidationError("--k counts nearest rows: give --all or --k, not both") }
        guard k >= 1 else { throw ValidationError("--k must be at least 1") }
    }

    func run() throws {
        var q = try query.query(CatalogQuery(dataset: left).crossmatch(right, radiusArcsec: radiusArcsec, all ? .all : .nearest(k: k)))
        if out.progress { q = q.progressive() }
        try runQuery(q, target: target, out: out, job: job)
    }
}

struct SubmitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "submit",
        abstract: "Run a catalog plan written as JSON (protobuf's JSON form of CatalogQueryPlan).",
        discussion: """
            Example PLAN.json:
              {"dataset": "object", "cone": {"ra": 60, "dec": -35, "radius": 1},
               "filter": "refExtendedness == 1", "groupBy": "cell",
               "aggregates": [{"function": "AGG_MEAN", "expression": "mag(r_psfFlux)"}]}
            """)

    @Argument(help: "The plan file.")
    var plan: String

    @OptionGroup var out: OutputOptions
    @OptionGroup var job: JobOptions

    @OptionGroup var target: SchedulerTarget

    func run() throws {
        let text: String
        do { text = try String(contentsOfFile: plan, encoding: .utf8) } catch { throw ValidationError("cannot read \(plan): \(error.localizedDescription)") }
        let p: CatalogQueryPlan
        do { p = try CatalogQueryPlan(jsonString: text) } catch { throw ValidationError("\(plan) is not a catalog plan: \(error)") }
        var q = CatalogQuery(plan: p)
        if out.progress { q = q.progressive() }
        try runQuery(q, target: target, out: out, job: job)
    }
}

extension QueryCommand {
    /// A comma-separated list split at its top-level commas only: `distance(ra, dec, 60, -35)` is
    /// one selection.
    static func topLevelParts(_ s: String) -> [String] {
        var parts: [String] = [], current = "", depth = 0
        for ch in s {
            switch ch {
            case "(": depth += 1
            case ")": depth = max(0, depth - 1)
            case "," where depth == 0:
                parts.append(current.trimmingCharacters(in: .whitespaces))
                current = ""
                continue
            default: break
            }
            current.append(ch)
        }
        parts.append(current.trimmingCharacters(in: .whitespaces))
        return parts
    }
}
