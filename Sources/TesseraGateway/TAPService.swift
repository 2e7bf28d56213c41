import Foundation
import Synchronization
import TesseraADQL
import TesseraClient
import TesseraCompute
import TesseraProtocol
import TesseraStorage

/// What the gateway allows each request and each user.
public struct GatewayLimits: Sendable {
    /// The longest `QUERY`, in characters.
    public var queryCharacters = 16_384
    /// The largest request body (a POSTed form), in bytes.
    public var bodyBytes = 1 << 20
    /// Requests one user may have in progress at once; one client address, for requests
    /// without a token.
    public var concurrentRequestsPerUser = 8
    /// Requests without a token the gateway serves at once, from all addresses together.
    public var requestsWithoutToken = 256
    /// Requests the gateway serves at once, from everyone together (with a token or without):
    /// each user's share bounds one user, this bounds the many (each request waiting on the
    /// cluster holds a thread, and its answer is held whole).
    public var requestsInProgress = 1_024
    /// The cells (rows × columns) of sync answers held at once, for all requests together.
    public var answerCellsInProgress = 100_000_000
    /// Seconds a client may leave a part of an answer untaken before its connection is closed.
    public var sendTimeoutSeconds = 60
    /// Rows returned when MAXREC is not given, and the most it may ask for.
    public var defaultMaxrec = 100_000
    public var maxrecLimit = 2_000_000
    /// The most cells (rows × fields) one answer may hold: a query over many columns gets fewer
    /// rows than MAXREC (with the overflow flag), as a wide one at MAXREC would take gigabytes.
    public var answerCells = 20_000_000
    /// Async jobs one user may hold, and how long a finished one is kept.
    public var asyncJobsPerUser = 32
    public var asyncRetentionSeconds = 24 * 3600.0
    /// What one UPLOAD table may hold; a multipart request body may be this large.
    public var upload = UploadLimits()

    public init() {}
}

/// A TAP request refused or failed: the HTTP status and the message for the error document.
public struct TAPError: Error, Sendable {
    public var status: Int
    public var message: String
    public init(_ status: Int, _ message: String) {
        self.status = status
        self.message = message
    }

    /// A request whose client left before its answer was ready (nginx's 499, "client closed
    /// request"): no one reads it, but the access log tells it from the service's own failures.
    static let clientLeft = TAPError(499, "the client left before the answer was ready: its question was cancelled on the cluster")
}

/// The TAP service: turns ADQL into catalog plans for the scheduler, and describes the tables
/// a user may read (VOSI tables, TAP_SCHEMA). It holds no socket: every question runs on a
/// connection of its own, as the user it is asked for.
public final class TAPService: Sendable {
    public let endpoint: String
    public let limits: GatewayLimits
    /// The schema TAP lists catalog datasets under.
    public static let catalogSchema = "tessera"
    /// Each user's tables, as one fetch shared by every request that asks while it runs and
    /// for 2 s after (a burst of queries costs one status round trip, not one each).
    private let cache = Mutex<[String: (at: Double, tables: Task<[ADQLTable], any Error>)]>([:])
    let pool: SchedulerPool
    /// The sync answers held now (``GatewayLimits/answerCellsInProgress``).
    let answerBudget: AnswerBudget
    /// Uploads in progress per user: as many as the scheduler keeps open ingests for one.
    let uploadSlots = PerUserSlots(limit: Limits.pendingIngestsPerUser)

    /// Whether an UPLOAD by URL may fetch from loopback and private addresses (a gateway that
    /// serves only this machine: nothing is reached that its users could not reach themselves).
    public let allowPrivateUploadURLs: Bool

    public init(endpoint: String, limits: GatewayLimits = GatewayLimits(), allowPrivateUploadURLs: Bool = false) {
        self.endpoint = endpoint
        self.limits = limits
        self.allowPrivateUploadURLs = allowPrivateUploadURLs
        pool = SchedulerPool(endpoint: endpoint)
        answerBudget = AnswerBudget(limit: limits.answerCellsInProgress)
    }

    // MARK: Tables

    /// The catalog tables `user` may read, as the scheduler lists them (cached for 2 s).
    public func tables(for user: String) async throws(TAPError) -> [ADQLTable] {
        let now = Date().timeIntervalSince1970
        let pool = self.pool
        let fetch = cache.withLock { c -> Task<[ADQLTable], any Error> in
            if let hit = c[user], now - hit.at < 2 { return hit.tables }
            // Shared by the requests of the next 2 s: not stopped when this one's client leaves.
            let t = ClientDeparture.unwatched {
                Task {
                    let reply = try await pool.run(as: user) { conn, _ in try conn.status() }
                    // (A query's own uploads are named in TAP_UPLOAD, by that query alone.)
                    return reply.datasets.filter { ($0.kind.isEmpty || $0.kind == "catalog") && !$0.name.hasPrefix(Self.uploadPrefix) }.map(Self.table)
                }
            }
            c[user] = (now, t)
            return t
        }
        do {
            return try await fetch.value
        } catch {
            cache.withLock { if $0[user]?.at == now { $0[user] = nil } }  // a failure is not kept
            throw TAPError(503, "the scheduler at \(endpoint) did not answer: \(error)")
        }
    }

    static func table(_ d: Tessera_V1_DatasetStatus) -> ADQLTable {
        let columns = d.columns.map { c in
            ADQLColumn(name: c.name, type: c.type, unit: c.unit,
                       ucd: c.name == d.raColumn ? "pos.eq.ra;meta.main" : c.name == d.decColumn ? "pos.eq.dec;meta.main" : "",
                       description: c.description_p)
        }
        var about = "\(d.rows) rows in \(d.shards) HEALPix shards"
        if !d.owner.isEmpty { about += "; a table of \(d.owner)'s\(d.shared ? ", shared" : "")" }
        return ADQLTable(schema: catalogSchema, name: d.name, columns: columns, raColumn: d.raColumn, decColumn: d.decColumn, description: about)
    }

    /// VOTable's datatype for a stored column as the gateway returns it (integers widen to long).
    static func datatype(_ t: Tessera_V1_ColumnType) -> String {
        switch t {
        case .columnFloat64: "double"
        case .columnFloat32: "float"
        case .columnBool: "boolean"
        default: "long"
        }
    }

    /// TAP_SCHEMA's own foreign keys, as TAP 1.1 (§4) lists them.
    static let tapSchemaKeys: [(id: String, from: String, target: String, fromColumn: String, targetColumn: String)] = [
        ("schemas_of_tables", "TAP_SCHEMA.tables", "TAP_SCHEMA.schemas", "schema_name", "schema_name"),
        ("tables_of_columns", "TAP_SCHEMA.columns", "TAP_SCHEMA.tables", "table_name", "table_name"),
        ("from_tables_of_keys", "TAP_SCHEMA.keys", "TAP_SCHEMA.tables", "from_table", "table_name"),
        ("target_tables_of_keys", "TAP_SCHEMA.keys", "TAP_SCHEMA.tables", "target_table", "table_name"),
        ("keys_of_key_columns", "TAP_SCHEMA.key_columns", "TAP_SCHEMA.keys", "key_id", "key_id"),
    ]

    /// TAP_SCHEMA's five tables, describing `tables` and themselves.
    public static func tapSchema(_ tables: [ADQLTable]) -> [LocalTable] {
        typealias C = LocalTable.Column
        func t(_ s: String) -> LocalCell { .text(s) }
        func i(_ v: Int) -> LocalCell { .integer(Int64(v)) }
        let schemas = LocalTable(schema: "TAP_SCHEMA", name: "schemas", description: "schemas of this service", columns: [
            C("schema_name", "char", "schema name"), C("utype", "char", "utype"), C("description", "char", "description"), C("schema_index", "int", "order in listings"),
        ], rows: [])
        let tablesT = LocalTable(schema: "TAP_SCHEMA", name: "tables", description: "tables of this service", columns: [
            C("schema_name", "char", "schema"), C("table_name", "char", "name to use in queries"), C("table_type", "char", "table or view"),
            C("utype", "char", "utype"), C("description", "char", "description"), C("table_index", "int", "order in listings"),
        ], rows: [])
        let columnsT = LocalTable(schema: "TAP_SCHEMA", name: "columns", description: "columns of this service's tables", columns: [
            C("table_name", "char", "table"), C("column_name", "char", "column"), C("datatype", "char", "VOTable datatype"),
            C("arraysize", "char", "VOTable arraysize"), C("xtype", "char", "VOTable xtype"), C("size", "int", "deprecated length"),
            C("description", "char", "description"), C("utype", "char", "utype"), C("unit", "char", "unit"), C("ucd", "char", "UCD"),
            C("indexed", "int", "1 if indexed"), C("principal", "int", "1 if principal"), C("std", "int", "1 if standard"),
            C("column_index", "int", "order in listings"),
        ], rows: [])
        let keys = LocalTable(schema: "TAP_SCHEMA", name: "keys", description: "foreign keys between tables", columns: [
            C("key_id", "char", "key"), C("from_table", "char", "table holding the key"), C("target_table", "char", "table it points to"),
            C("description", "char", "description"), C("utype", "char", "utype"),
        ], rows: [])
        let keyColumns = LocalTable(schema: "TAP_SCHEMA", name: "key_columns", description: "columns of foreign keys", columns: [
            C("key_id", "char", "key"), C("from_column", "char", "column in from_table"), C("target_column", "char", "column in target_table"),
        ], rows: [])
        let meta = [schemas, tablesT, columnsT, keys, keyColumns]

        var out = meta
        out[0].rows = [[t("TAP_SCHEMA"), .null, t("the tables that describe this service"), i(0)],
                       [t(catalogSchema), .null, t("the survey's catalogs, and users' own tables"), i(1)]]
        var tableRows: [[LocalCell]] = [], columnRows: [[LocalCell]] = []
        for (n, m) in meta.enumerated() {
            tableRows.append([t("TAP_SCHEMA"), t(m.qualifiedName), t("table"), .null, t(m.description), i(100 + n)])
            for (k, c) in m.columns.enumerated() {
                columnRows.append([t(m.qualifiedName), t(ADQLParser.delimited(c.name)), t(c.datatype), c.datatype == "char" ? t("*") : .null, .null, .null,
                                   t(c.description), .null, .null, .null, i(0), i(1), i(1), i(k)])
            }
        }
        for (n, table) in tables.enumerated() {
            let name = queryName(table)
            tableRows.append([t(table.schema), t(name), t("table"), .null, t(table.description), i(n)])
            for (k, c) in table.columns.enumerated() {
                let indexed = isIndexed(c.name, of: table)
                columnRows.append([t(name), t(ADQLParser.delimited(c.name)), t(datatype(c.type)), .null, .null, .null, t(c.description), .null,
                                   t(c.unit), t(c.ucd), i(indexed ? 1 : 0), i(1), i(0), i(k)])
            }
        }
        out[3].rows = tapSchemaKeys.map { [t($0.id), t($0.from), t($0.target), t("\($0.fromColumn) of \($0.from)"), .null] }
        out[4].rows = tapSchemaKeys.map { [t($0.id), t($0.fromColumn), t($0.targetColumn)] }
        out[1].rows = tableRows
        out[2].rows = columnRows
        return out
    }

    /// Whether the spatial index serves conditions on a column: the position columns (a
    /// region), and the HEALPix index the rows are sorted by.
    static func isIndexed(_ column: String, of table: ADQLTable) -> Bool {
        column == table.raColumn || column == table.decColumn || column == "_healpix_29"
    }

    /// How a table is named in queries: `tessera.name`, in double quotes where ADQL needs them.
    static func queryName(_ table: ADQLTable) -> String {
        "\(table.schema).\(ADQLParser.delimited(table.name))"
    }

    // MARK: Queries

    /// The MAXREC a request asks for: the default when absent, refused when not a count.
    public func maxrec(_ raw: String?) throws(TAPError) -> Int {
        guard let raw, !raw.isEmpty else { return limits.defaultMaxrec }
        guard let v = Int(raw.trimmingCharacters(in: .whitespaces)) else { throw TAPError(400, "MAXREC=\(raw.prefix(40)) is not a whole number") }
        guard v >= 0 else { throw TAPError(400, "MAXREC=\(v) is negative: give 0 (metadata only) up to \(limits.maxrecLimit)") }
        guard v <= limits.maxrecLimit else { throw TAPError(400, "MAXREC=\(v) is over this service's limit of \(limits.maxrecLimit) rows") }
        return v
    }

    /// Answers an ADQL query for `user`, with the tables of its `UPLOAD` (stored in the user's
    /// workspace for this query, when it names them).
    /// `uploadLifetime`: seconds the stored uploads are kept (at least as long as the query may run).
    /// `cells`: the answer's share of the gateway's budget, taken as its rows arrive (a sync
    /// answer's; an async job's results have their owner's bound instead). Over it, the question
    /// is stopped and refused.
    public func run(adql: String, maxrec: Int, user: String, priority: PriorityClass, uploads: [TAPUpload] = [],
                    uploadLifetime: Double = TAPService.uploadLifetimeSeconds, cells: AnswerCells? = nil) async throws(TAPError) -> TAPTable {
        guard adql.count <= limits.queryCharacters else {
            throw TAPError(400, "the query is \(adql.count) characters long, over this service's limit of \(limits.queryCharacters)")
        }
        let query: ADQLQuery
        do {
            query = try ADQLParser.parse(adql)
        } catch {
            throw TAPError(400, "ADQL error: \(error)")
        }
        if query.from.schema?.uppercased() == "TAP_SCHEMA" {
            let schema = Self.tapSchema(try await tables(for: user))
            guard let table = schema.first(where: { $0.name.lowercased() == query.from.name.lowercased() }) else {
                throw TAPError(400, "ADQL error: no table named `\(query.from.qualifiedName)` (TAP_SCHEMA has schemas, tables, columns, keys and key_columns) (at \(query.from.position))")
            }
            do {
                return try await answer(query, from: table, maxrec: maxrec)
            } catch {
                throw TAPError(400, "ADQL error: \(error)")
            }
        }
        // An upload without positions, queried alone: answered here.
        if query.join == nil, query.from.schema?.uppercased() == Self.uploadSchema,
           let upload = uploads.first(where: { $0.name.lowercased() == query.from.name.lowercased() }), Self.positionColumns(upload.table) == nil {
            let table = try Self.localTable(upload)
            do {
                return try await answer(query, from: table, maxrec: maxrec)
            } catch {
                throw TAPError(400, "ADQL error: \(error) (UPLOAD `\(upload.name)` has no position columns, so it is queried in the gateway: columns, WHERE, ORDER BY and TOP)")
            }
        }
        var named: [PreparedUpload] = []
        for ref in [query.from] + (query.join.map { [$0.table] } ?? []) where ref.schema?.uppercased() == Self.uploadSchema {
            guard let upload = uploads.first(where: { $0.name.lowercased() == ref.name.lowercased() }) else {
                throw TAPError(400, "ADQL error: no table named `\(ref.qualifiedName)`: the request's UPLOAD has \(uploads.isEmpty ? "no tables" : uploads.map { "`\($0.name)`" }.joined(separator: ", ")) (at \(ref.position))")
            }
            if !named.contains(where: { $0.table.name == upload.name }) { named.append(try Self.prepare(upload, lifetime: uploadLifetime)) }
        }
        var translator = ADQLTranslator(tables: try await tables(for: user) + named.map(\.table))
        var plan: ADQLPlan
        // MAXREC bounds the rows; the gateway holds the answer whole, so a wide SELECT is bounded
        // by its cells (rows × fields) too: fewer rows, with the overflow flag MAXREC gives.
        var maxrec = maxrec
        do {
            plan = try translator.translate(query, maxrec: maxrec)
            let cellRows = limits.answerCells / max(1, plan.fields.count)
            if maxrec > cellRows {
                maxrec = cellRows
                plan = try translator.translate(query, maxrec: maxrec)
            }
        } catch {
            throw TAPError(400, "ADQL error: \(error)")
        }
        // Translated: now the uploads it names are stored.
        for upload in named { try await store(upload, user: user) }
        let question = CatalogQuery(plan: plan.plan).priority(priority)
        do {
            let answer = try await pool.run(as: user) { conn, isStopped in
                // Each batch of rows takes its cells as it comes; a refusal stops the question.
                let taking: (CatalogUpdate) -> Void = { u in
                    let rows = u.result.partial.rows
                    cells?.take(rows.rowCount * max(1, rows.names.count))
                }
                let stopped = { isStopped() || cells?.isRefused == true }
                func asNormal() throws -> CatalogResult {
                    // The first try's rows are dropped: so are their cells.
                    cells?.giveBack()
                    return try conn.run(question.priority(.normal), name: "tap \(user)", onUpdate: taking, isStopped: stopped).result
                }
                do {
                    return try conn.run(question, name: "tap \(user)", onUpdate: taking, isStopped: stopped).result
                } catch ClientError.rejected(.errorOverBudget, let message) where priority == .interactive && message.contains("interactive budget") {
                    // Too big to answer at once: a sync query waits anyway, so it runs in the
                    // normal class rather than being refused (the interactive lane stays free).
                    return try asNormal()
                } catch ClientError.jobEnded(.jobFailed, let message) where priority == .interactive && message.contains("an interactive task may run") {
                    // Slower than the interactive class allows (a busy worker, a heavy question):
                    // asked again as normal, as one over the interactive budget is.
                    return try asNormal()
                }
            }
            let table = TAPTable(answer.table, plan: plan, maxrec: maxrec) { table, column in
                named.first { $0.table.qualifiedName == table }?.texts[column]
            }
            // An answer that came whole at the end (a TOP, an aggregate) takes its cells now.
            if let cells, !cells.cover(table.rowCount * max(1, table.fields.count)) { throw answerBudget.refusal }
            return table
        } catch let e as TAPError {
            throw e
        } catch is CancellationError where ClientDeparture.ofRequest?.hasLeft == true {
            throw TAPError.clientLeft
        } catch is CancellationError where cells?.isRefused == true {
            throw answerBudget.refusal
        } catch ClientError.noScheduler(let e, let s) {
            throw TAPError(503, "the scheduler at \(e) did not answer within \(s) s")
        } catch let e as ClientError {
            throw TAPError(Self.status(of: e), "query failed: \(e)")
        } catch {
            throw TAPError(400, "query failed: \(error)")
        }
    }


    /// A query over a table held here (TAP_SCHEMA's, or an upload without positions, up to its
    /// cell limit with LIKEs on every row), on a thread of the pool's own.
    func answer(_ query: ADQLQuery, from table: LocalTable, maxrec: Int) async throws -> TAPTable {
        try await pool.threads.perform {
            let r = try table.run(query, maxrec: maxrec)
            return TAPTable(local: r.columns, rows: r.rows, overflow: r.overflow)
        }
    }

    /// The HTTP status of a failed question: the cluster's trouble (worth asking again) is 503,
    /// a user over their share 429, the question itself 400. A VO client retries only the first two.
    static func status(of e: ClientError) -> Int {
        switch e {
        case .noScheduler, .timedOut, .transport, .schedulerRestarted: 503
        case .rejected(.errorDataUnavailable, _): 503
        case .rejected(.errorOverBudget, _): 429
        default: 400
        }
    }
}
