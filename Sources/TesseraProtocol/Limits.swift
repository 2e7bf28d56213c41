/// Every limit on what arrives from outside — a client, a worker, a peer, a file — in one place.
/// Each bounds the memory or time one request can cost a daemon; an input over a limit is
/// refused with an error that names the limit and its value. The README's "Limits" table lists
/// the same values (a test keeps the two in step).
public enum Limits {
    // MARK: Messages

    /// Largest header frame (the `Envelope`) any socket accepts.
    public static let headerBytes = 64 << 20
    /// Most bytes one message from a client may decode to, bulk frames decompressed included.
    public static let clientMessageBytes = 256 << 20
    /// Most bytes one message from a worker to the scheduler, or between workers, may decode to.
    public static let workerMessageBytes = 1 << 31
    /// Most bulk frames in one message.
    public static let framesPerMessage = 4096

    // MARK: Expressions

    /// Longest expression text, in bytes.
    public static let expressionCharacters = 16_384
    /// Most expression text in one question, all its expressions together, in bytes.
    public static let planTextBytes = 65_536
    /// Deepest expression tree: parentheses, function calls, unary operators and chains of binary
    /// operators all count (`a + b + c` is 3 deep).
    public static let expressionDepth = 256
    /// Longest column or function name, in characters.
    public static let identifierCharacters = 256

    // MARK: Catalog questions

    /// Widest margin a catalog's shards may keep of their neighbours' rows, in arcseconds.
    public static let marginArcsec = 3_600.0
    /// Most vertices of a polygon region.
    public static let polygonVertices = 1_024
    /// Most histogram bins (x times y).
    public static let histogramBins = 10_000_000
    /// Most groups a group-by may ask for (`max_groups`): each holds its key, count and every
    /// aggregate's moments on every worker and in every merge.
    public static let groups = 1_000_000
    /// A catalog question's reduction tree merges at most this many partials in one task (its
    /// `fan_in`; 0 takes `catalogFanInDefault`): a merge holds all its inputs at once, and a
    /// partial may be a histogram of millions of bins.
    public static let catalogFanIn: ClosedRange<UInt32> = 2...64
    public static let catalogFanInDefault: UInt32 = 8
    /// Most bytes a group-by's moments may take, groups (`max_groups`) times aggregated
    /// expressions (48 bytes each): 256 MiB, so 55 expressions at the default 100,000 groups.
    public static let groupMomentsBytes = 256 << 20
    /// Groups a group-by may produce unless the question sets `max_groups`.
    public static let groupsDefault = 100_000
    /// Most buckets of one question's quantile sketches, all groups and expressions together
    /// (8 bytes each: 128 MiB). A sketch grows with the span of its values' magnitudes (about
    /// 230 buckets per factor of ten), so a quantile of values from 1e-300 to 1e300 takes 138,000.
    public static let quantileBuckets = 16 << 20
    /// Seconds between progressive snapshots: at least, and at most.
    public static let progressIntervalSeconds: ClosedRange<Double> = 0.1...3_600
    /// Most selected columns, aggregates or group keys in one question.
    public static let planExpressions = 1_024

    // MARK: Workers

    /// Most executor threads a worker may declare.
    public static let workerThreads = 1_024
    /// Longest worker name, in characters (letters, digits, `-`, `_`, `.`).
    public static let workerNameCharacters = 128
    /// Longest peer endpoint, in characters; it must read `tcp://HOST:PORT`.
    public static let endpointCharacters = 256
    /// Most operators a worker may offer.
    public static let workerOperators = 4_096

    // MARK: Datasets and ingest

    /// Longest dataset name, in characters (letters, digits, `-`, `_`, `.`; not starting with `.`).
    public static let datasetNameCharacters = 128
    /// Most shards in one ingest.
    public static let ingestShards = 100_000
    /// Ingests one user may have begun and not yet committed (each holds its plan in the
    /// scheduler's memory until then); beginning one more abandons the oldest.
    public static let pendingIngestsPerUser = 4
    /// Most replicas of a shard.
    public static let replicas = 16
    /// Most rows in one shard (and in its margin).
    public static let shardRows: UInt64 = 1 << 31
    /// Largest HEALPix order of a shard.
    public static let shardOrder = 29

    // MARK: Jobs

    /// Longest job name, in characters.
    public static let jobNameCharacters = 1_024
    /// A job's own task deadline, in seconds: at least, and at most.
    public static let taskTimeoutSeconds: ClosedRange<Double> = 0.1...604_800
    /// Most job ids in one client heartbeat.
    public static let heartbeatJobs = 4_096
    /// Replies a client that does not read may have waiting in the scheduler (beyond libzmq's
    /// own queue of 64), by count and by bytes: past either, its further requests are dropped
    /// unanswered until it reads.
    public static let clientBacklogMessages = 1_024
    public static let clientBacklogBytes = 64 << 20

    /// Lifetime of a user's table, in seconds: at least, and at most (30 days).
    public static let workspaceLifetimeSeconds: ClosedRange<Double> = 1...(30 * 86_400)

    // MARK: Cross-match

    /// Widest cross-match radius, in arcseconds (a right dataset's margin bounds it too).
    public static let crossmatchRadiusArcsec = 3_600.0
    /// Most nearest neighbours a cross-match may ask per row.
    public static let crossmatchNeighbours = 1_000
    /// Most pairs one left row group (up to 65,536 rows) may find: pairs are held in memory
    /// before the filter and the result see them.
    public static let crossmatchPairsPerRowGroup = 4_000_000
    /// Positions of the right side one row group's left rows may be compared with (each within
    /// its window, pair or not): a nearest match of a dense right side at a wide radius cost
    /// hours of a worker without finding many pairs.
    public static let crossmatchComparisonsPerRowGroup = 1_000_000_000

    // MARK: Python

    /// Largest pickled Python function (map and combine together) a question may carry.
    public static let pythonFunctionBytes = 16 << 20
    /// Largest value one Python call may return (pickled).
    public static let pythonValueBytes = 256 << 20

    /// Longest failure message a task's report carries (a Python exception's text and
    /// traceback are the user's to choose): its start and end are kept, the middle cut.
    public static let failureMessageBytes = 64 << 10

    /// `message` within ``failureMessageBytes``: its first and last halves, and how much was cut.
    public static func boundedFailureMessage(_ message: String) -> String {
        let bytes = message.utf8
        guard bytes.count > failureMessageBytes else { return message }
        let half = failureMessageBytes / 2
        return String(decoding: bytes.prefix(half), as: UTF8.self) + "\n… (\(bytes.count - 2 * half) bytes cut) …\n"
            + String(decoding: bytes.suffix(half), as: UTF8.self)
    }
}

/// An ingest's margin and shard size, checked where the client starts (before reading a file)
/// and again at the scheduler's commit, with the same words.
public enum IngestOptionsCheck {
    public static func problem(marginArcsec: Double, maxRowsPerShard: UInt64) -> String? {
        guard marginArcsec.isFinite, marginArcsec >= 0, marginArcsec <= Limits.marginArcsec else {
            return "a margin of \(marginArcsec)″ is outside 0…\(Int(Limits.marginArcsec))″"
        }
        guard maxRowsPerShard <= Limits.shardRows else {
            return "max_rows_per_shard \(maxRowsPerShard) is over the limit of \(Limits.shardRows) rows per shard"
        }
        return nil
    }
}

extension Limits {
    /// Every limit as the README's table lists it: what it bounds, its value, and where it applies.
    public static let documented: [(limit: String, value: String, appliesTo: String)] = [
        ("message header", bytes(headerBytes), "every socket"),
        ("message from a client, decoded", bytes(clientMessageBytes), "scheduler client port (frames' declared sizes are checked before any is decompressed)"),
        ("message from a worker or peer, decoded", bytes(workerMessageBytes), "scheduler worker port, worker peer port"),
        ("bulk frames per message", "\(framesPerMessage)", "every socket"),
        ("expression text", "\(expressionCharacters) bytes", "filters, selections, aggregates, keys"),
        ("expression text of one question", "\(planTextBytes) bytes", "all of a question's expressions together"),
        ("expression depth", "\(expressionDepth)", "parentheses, calls, prefix operators and operator chains all count"),
        ("column or function name", "\(identifierCharacters) characters", "expressions, dataset schemas"),
        ("polygon vertices", "\(polygonVertices)", "polygon regions"),
        ("histogram bins (x × y)", "\(histogramBins)", "histograms; each bin must also have an ordinary floating-point width"),
        ("groups of a group-by (max_groups)", "\(groups)", "grouped aggregates (\(groupsDefault) unless the question says)"),
        ("quantile sketch buckets", "\(quantileBuckets)", "one question's quantiles, all groups together; about 230 per factor of ten in the values' span"),
        ("progress interval", "\(progressIntervalSeconds.lowerBound)…\(Int(progressIntervalSeconds.upperBound)) s", "progressive questions"),
        ("aggregates or selected columns", "\(planExpressions)", "one question; also columns per dataset"),
        ("worker threads", "1…\(workerThreads)", "worker registration"),
        ("worker name", "\(workerNameCharacters) characters of `A-Za-z0-9-_.`", "worker registration, key names"),
        ("peer endpoint", "\(endpointCharacters) characters, `tcp://HOST:PORT`", "worker registration"),
        ("operators a worker offers", "\(workerOperators)", "worker registration"),
        ("dataset name", "\(datasetNameCharacters) characters of `A-Za-z0-9-_.`", "ingest"),
        ("shards per ingest", "\(ingestShards)", "ingest"),
        ("ingests begun and not committed, per user", "\(pendingIngestsPerUser)", "ingest (one more abandons the oldest, as do 15 minutes with no shard stored)"),
        ("replicas", "\(replicas)", "ingest"),
        ("rows per shard (and per margin)", "\(shardRows)", "ingest, worker shard writes"),
        ("a shard's margin of its neighbours' rows", "\(Int(marginArcsec))″", "ingest (`--margin-arcsec`)"),
        ("shard HEALPix order", "0…\(shardOrder)", "ingest, registry rows"),
        ("job name", "\(jobNameCharacters) bytes", "job submission"),
        ("task deadline asked by a job", "\(taskTimeoutSeconds.lowerBound)…\(Int(taskTimeoutSeconds.upperBound)) s", "job submission (`task_timeout_s`)"),
        ("job ids per client heartbeat", "\(heartbeatJobs)", "scheduler client port"),
        ("replies waiting for a client that does not read", "\(clientBacklogMessages) or \(bytes(clientBacklogBytes))", "scheduler client port (its further requests are dropped until it reads)"),
        ("lifetime of a user's table", "\(Int(workspaceLifetimeSeconds.lowerBound)) s…\(Int(workspaceLifetimeSeconds.upperBound / 86_400)) days (default 1 day)", "uploads (`tessera upload --lifetime-hours`)"),
        ("cross-match radius", "\(Int(crossmatchRadiusArcsec))″", "cross-match (and at most the right dataset's margin)"),
        ("nearest neighbours per row", "\(crossmatchNeighbours)", "cross-match (`k`)"),
        ("pairs per left row group", "\(crossmatchPairsPerRowGroup)", "cross-match (a radius is also bounded by the right dataset's margin)"),
        ("comparisons per left row group", "\(crossmatchComparisonsPerRowGroup)", "cross-match (positions of the right side compared, pairs or not)"),
        ("pickled Python function", bytes(pythonFunctionBytes), "`map_partitions` and `reduce` (function and combine together)"),
        ("value of one Python call, pickled", bytes(pythonValueBytes), "worker Python executors"),
        ("partials one merge reads (`fan_in`)", "\(catalogFanIn.lowerBound)…\(catalogFanIn.upperBound) (default \(catalogFanInDefault))", "catalog questions"),
        ("a group-by's moments (groups × aggregated expressions × 48 bytes)", bytes(groupMomentsBytes), "catalog questions"),
        ("a task's failure message", "\(failureMessageBytes >> 10) KiB (start and end kept)", "worker task reports"),
    ]

    static func bytes(_ n: Int) -> String { n >= 1 << 30 ? "\(n >> 30) GiB" : "\(n >> 20) MiB" }

    /// The README's limits table, in Markdown.
    public static var markdownTable: String {
        (["| limit | value | applies to |", "|---|---|---|"] + documented.map { "| \($0.limit) | \($0.value) | \($0.appliesTo) |" })
            .joined(separator: "\n")
    }
}

extension Double {
    /// The number as a whole number for a message ("4097"), or as it is when no `Int` holds it
    /// ("1e+300", "nan"): `Int(x)` traps on those, and the values a message names are often
    /// the hostile ones it refuses.
    public var wholeText: String {
        isFinite && magnitude < 0x1p62 ? String(Int(rounded())) : "\(self)"
    }

    /// The number without a needless ".0" ("30", "0.5"): a whole number as an integer, any
    /// other as it is.
    public var shortText: String {
        self == rounded() && magnitude < 0x1p62 ? String(Int(self)) : "\(self)"
    }
}

/// Checks shared by every daemon for names and endpoints that come from outside.
public enum Validate {
    /// A name made of letters, digits, `-`, `_` and `.`, not empty, not starting with `.`, at most
    /// `limit` characters. Returns why not, or nil when it is fine.
    public static func name(_ s: String, what: String, limit: Int) -> String? {
        guard !s.isEmpty else { return "\(what) is empty" }
        guard s.utf8.count <= limit else { return "\(what) of \(s.utf8.count) bytes is over the limit of \(limit)" }
        guard s.first != ".", s.utf8.allSatisfy({ isNameByte($0) }) else {
            return "\(what) `\(s)` may hold only letters, digits, `-`, `_` and `.`, and may not start with `.`"
        }
        return nil
    }

    static func isNameByte(_ b: UInt8) -> Bool {
        (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x2D || b == 0x5F || b == 0x2E
    }

    /// A ZeroMQ TCP endpoint a peer can dial: `tcp://HOST:PORT`, HOST a name or an address
    /// (IPv6 in brackets), PORT 1…65535. Returns why not, or nil when it is fine.
    public static func tcpEndpoint(_ s: String) -> String? {
        guard s.utf8.count <= Limits.endpointCharacters else {
            return "endpoint of \(s.utf8.count) bytes is over the limit of \(Limits.endpointCharacters)"
        }
        let why = "endpoint `\(s)` is not tcp://HOST:PORT"
        guard s.hasPrefix("tcp://") else { return why }
        let rest = s.dropFirst(6)
        guard let colon = rest.lastIndex(of: ":") else { return why }
        var host = rest[..<colon]
        let port = rest[rest.index(after: colon)...]
        guard let p = Int(port), p >= 1, p <= 65_535, port.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return why }
        if host.hasPrefix("[") && host.hasSuffix("]") {
            host = host.dropFirst().dropLast()
            guard !host.isEmpty, host.utf8.allSatisfy({ isHexByte($0) || $0 == 0x3A || $0 == 0x2E }) else { return why }
            return nil
        }
        guard !host.isEmpty, host != "*", host.utf8.allSatisfy({ isNameByte($0) }) else { return why }
        return nil
    }

    static func isHexByte(_ b: UInt8) -> Bool {
        (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x46) || (b >= 0x61 && b <= 0x66)
    }
}
