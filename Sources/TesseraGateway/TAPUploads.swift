import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import TesseraADQL
import TesseraClient
import TesseraProtocol
import TesseraStorage

/// One table of a request's `UPLOAD`: its name in the `TAP_UPLOAD` schema, and its rows.
public struct TAPUpload: Sendable {
    public var name: String
    public var table: UploadedTable
}

/// An upload checked and ready to store for one query: the table queries name, its text kept
/// here, and the ingest that stores its numbers.
struct PreparedUpload: Sendable {
    var table: ADQLTable
    /// Text columns by name, each value at its row's number.
    var texts: [String: [String?]]
    var ingest: IngestOptions
}

extension TAPService {
    /// The schema uploads are named under (`TAP_UPLOAD.name`).
    public static let uploadSchema = "TAP_UPLOAD"
    /// How an upload's stored name begins (it is not listed among the user's tables).
    public static let uploadPrefix = "tapupload-"
    /// The hidden column numbering an upload's rows, where its text is looked up.
    public static let uploadRowColumn = "_upload_row"
    /// Seconds a sync query's upload is kept in its user's workspace (it is only for that
    /// query; expiry frees the workspace's quota). An async job's lives as long as the job may run.
    public static let uploadLifetimeSeconds = 900.0
    /// Most tables in one request's UPLOAD.
    public static let maxUploads = 8

    /// The tables a request's `UPLOAD` values name (`name,URI` pairs, `;` between pairs), each
    /// read from the multipart body's part `param:NAME`, or fetched from an http(s) URL.
    public func uploads(_ values: [String], parts: [String: [UInt8]]) async throws(TAPError) -> [TAPUpload] {
        // Every pair checked before anything is read or fetched.
        var pairs: [(name: String, uri: String)] = []
        for value in values {
            for pair in value.split(separator: ";") where !pair.trimmingCharacters(in: .whitespaces).isEmpty {
                let kv = pair.split(separator: ",", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                guard kv.count == 2 else { throw TAPError(400, "UPLOAD=\(pair.prefix(80)): give `name,param:part` (the table's name, then where it is)") }
                let name = kv[0]
                guard Self.isUploadName(name) else {
                    throw TAPError(400, "UPLOAD table name `\(name.prefix(80))`: a name is a letter then letters, digits or _, at most 64 characters")
                }
                guard !pairs.contains(where: { $0.name.lowercased() == name.lowercased() }) else { throw TAPError(400, "UPLOAD names the table `\(name)` twice") }
                pairs.append((name, kv[1]))
                guard pairs.count <= Self.maxUploads else { throw TAPError(400, "UPLOAD names more than \(Self.maxUploads) tables") }
            }
        }
        var out: [TAPUpload] = []
        var read: [String: UploadedTable] = [:]  // each part or URL read once, however many names it has
        var total = 0
        for (name, uri) in pairs {
            let isPart = uri.lowercased().hasPrefix("param:")
            let key = isPart ? "param:" + uri.dropFirst(6) : uri
            if let table = read[key] {
                out.append(TAPUpload(name: name, table: table))
                continue
            }
            let bytes: [UInt8]
            if isPart {
                let part = String(uri.dropFirst(6))
                guard let b = parts[part] else {
                    throw TAPError(400, "UPLOAD `\(name)` names the part `\(part.prefix(80))`, which the request does not have (send the VOTable as a multipart/form-data part of that name)")
                }
                bytes = b
            } else {
                bytes = try await UploadFetcher.fetch(uri, table: name, limit: limits.upload.bytes, allowPrivate: allowPrivateUploadURLs)
            }
            // Every table of one request is held at once: together at most twice one's limit.
            total += bytes.count
            guard total <= 2 * limits.upload.bytes else {
                throw TAPError(400, "UPLOAD: these tables come to over \(2 * limits.upload.bytes >> 20) MiB together, the most one request may upload")
            }
            // Parsing takes seconds of work for the largest (a 71 MB TABLEDATA document 14 s in a
            // debug build), and memory beyond the document's own of about its size (TABLEDATA) to
            // four times it (BINARY2: the base64 text, its decoding, the columns): on a thread of
            // its own, not one every request's async code shares.
            let limits = limits.upload
            do {
                let table = try await pool.threads.perform { try VOTableReader.read(bytes, limits: limits) }
                read[key] = table
                out.append(TAPUpload(name: name, table: table))
            } catch let error as VOTableError {
                throw TAPError(400, "UPLOAD `\(name)`: \(error.message)")
            } catch {
                throw TAPError(400, "UPLOAD `\(name)`: \(error)")
            }
        }
        return out
    }

    /// A name an upload's table or column may have: an identifier the engine reads as one name
    /// (``ADQLTranslator/isEngineName(_:)``), not starting with `_` (Tessera's own columns do),
    /// at most 64 characters.
    static func isUploadName(_ s: String) -> Bool {
        s.utf8.count <= 64 && !s.hasPrefix("_") && ADQLTranslator.isEngineName(s)
    }

    /// The position columns of an upload: those with the UCDs `pos.eq.ra` and `pos.eq.dec`
    /// (`meta.main` first), else the first of the usual names.
    static func positionColumns(_ t: UploadedTable) -> (ra: String, dec: String)? {
        let numeric = t.columns.filter { $0.values.stored != nil }
        func byUCD(_ word: String) -> String? {
            let having = numeric.filter { $0.ucd.lowercased().split(separator: ";").contains(Substring(word)) }
            return (having.first { $0.ucd.lowercased().contains("meta.main") } ?? having.first)?.name
        }
        func byName(_ names: [String]) -> String? {
            for n in names { if let c = numeric.first(where: { $0.name.lowercased() == n }) { return c.name } }
            return nil
        }
        if let ra = byUCD("pos.eq.ra"), let dec = byUCD("pos.eq.dec") { return (ra, dec) }
        guard let ra = byName(["ra", "ra_deg", "raj2000", "ra_icrs", "coord_ra", "_raj2000"]),
              let dec = byName(["dec", "dec_deg", "dej2000", "decj2000", "de_icrs", "dec_icrs", "coord_dec", "_dej2000"]) else { return nil }
        return (ra, dec)
    }

    /// Rows an upload without positions may hold to be queried alone (in the gateway).
    public static let maxLocalUploadRows = 100_000
    /// The most cells (rows × columns) of an upload without positions, queried in the gateway.
    public static let maxLocalUploadCells = 1_000_000

    /// An upload without position columns as a table the gateway answers queries of itself
    /// (it cannot be sharded on the sky, nor meet the survey): `SELECT` of its columns with
    /// `WHERE`, `ORDER BY` and `TOP`, as TAP_SCHEMA's tables are queried.
    static func localTable(_ upload: TAPUpload) throws(TAPError) -> LocalTable {
        let t = upload.table
        guard t.rows <= maxLocalUploadRows else {
            throw TAPError(400, "UPLOAD `\(upload.name)` has no position columns and \(t.rows) rows: a table without positions is queried alone, up to \(maxLocalUploadRows) rows; give it RA and Dec columns (UCDs pos.eq.ra and pos.eq.dec, or names ra and dec) to store it on the cluster")
        }
        // Its cells are held as values (24 bytes each), row by row, more than once while a query
        // runs: 100,000 rows of 200 columns took over a gigabyte.
        guard t.rows * t.columns.count <= maxLocalUploadCells else {
            throw TAPError(400, "UPLOAD `\(upload.name)` has no position columns and \(t.rows) rows × \(t.columns.count) columns: a table without positions is queried in the gateway, up to \(maxLocalUploadCells) cells; send fewer columns, or give it RA and Dec columns to store it on the cluster")
        }
        var columns: [LocalTable.Column] = []
        var cells: [[LocalCell]] = []
        for c in t.columns {
            let (datatype, values): (String, [LocalCell])
            switch c.values {
            case .text(let v): (datatype, values) = ("char", v.map { $0.map(LocalCell.text) ?? .null })
            case .numbers(.float64(let v)): (datatype, values) = ("double", v.map { $0.isNaN ? .null : .real($0) })
            case .numbers(.float32(let v)): (datatype, values) = ("float", v.map { $0.isNaN ? .null : .real(Double($0)) })
            case .numbers(.int64(let v)): (datatype, values) = ("long", v.map { .integer($0) })
            case .numbers(.int32(let v)): (datatype, values) = ("int", v.map { .integer(Int64($0)) })
            case .numbers(.int16(let v)): (datatype, values) = ("short", v.map { .integer(Int64($0)) })
            case .numbers(.uint8(let v)): (datatype, values) = ("unsignedByte", v.map { .integer(Int64($0)) })
            // (Booleans come back as 0 and 1.)
            case .numbers(.bool(let v)): (datatype, values) = ("short", v.map { .integer($0 ? 1 : 0) })
            case .integersWithNulls(let type, let v):
                let names: [ColumnType: String] = [.columnInt64: "long", .columnInt32: "int", .columnUint8: "unsignedByte"]
                (datatype, values) = (names[type] ?? "short", v.map { $0.map(LocalCell.integer) ?? .null })
            }
            var column = LocalTable.Column(c.name, datatype, c.description)
            (column.unit, column.ucd, column.xtype) = (c.unit, c.ucd, c.xtype)
            columns.append(column)
            cells.append(values)
        }
        let rows = (0..<t.rows).map { r in cells.map { $0[r] } }
        return LocalTable(schema: uploadSchema, name: upload.name, description: "uploaded with this query", columns: columns, rows: rows)
    }

    /// `upload` checked (column names, positions), as the table a query names and the ingest
    /// that stores it in the user's workspace for `lifetime` seconds. Nothing is stored yet: the
    /// query is translated first, so a bad one costs no ingest.
    static func prepare(_ upload: TAPUpload, lifetime: Double) throws(TAPError) -> PreparedUpload {
        let t = upload.table
        func refuse(_ why: String) -> TAPError { TAPError(400, "UPLOAD `\(upload.name)`: \(why)") }
        guard t.rows > 0 else { throw refuse("the table has no rows") }
        var seen = Set<String>()
        for c in t.columns {
            guard Self.isUploadName(c.name) else {
                throw refuse("the column name `\(c.name.prefix(80))` is not one queries can use: a letter, then letters, digits or _ (at most 64)")
            }
            guard seen.insert(c.name.lowercased()).inserted else { throw refuse("two columns are named `\(c.name)` (names are compared ignoring case)") }
        }
        guard let (ra, dec) = Self.positionColumns(t) else {
            throw refuse("no position columns: mark the RA and Dec columns with the UCDs pos.eq.ra and pos.eq.dec, or name them ra and dec (degrees, ICRS)")
        }
        var specs: [ColumnSpec] = [], data: [ColumnData] = [], columns: [ADQLColumn] = [], texts: [String: [String?]] = [:]
        for c in t.columns {
            if case .text(let values) = c.values {
                texts[c.name] = values
                columns.append(ADQLColumn(name: c.name, type: .columnInt64, unit: c.unit, ucd: c.ucd, description: c.description, isText: true))
            } else if let d = c.values.stored {
                specs.append(ColumnSpec(c.name, d.type, unit: c.unit, description: c.description))
                data.append(d)
                columns.append(ADQLColumn(name: c.name, type: d.type, unit: c.unit, ucd: c.ucd, description: c.description))
            }
        }
        if !texts.isEmpty {
            specs.append(ColumnSpec(Self.uploadRowColumn, .columnInt64, description: "row number in the upload"))
            data.append(.int64((0..<Int64(t.rows)).map { $0 }))
        }
        var nonce = SystemRandomNumberGenerator()
        let stored = Self.uploadPrefix + upload.name + "-" + String(nonce.next() as UInt64, radix: 36)
        let source = "UPLOAD `\(upload.name)`"
        var options = IngestOptions(dataset: stored, files: [source])
        options.tablesInMemory[source] = (specs, data)
        options.raColumn = ra
        options.decColumn = dec
        options.workspace = true
        options.lifetimeSeconds = lifetime
        let table = ADQLTable(schema: uploadSchema, name: upload.name, columns: columns, raColumn: ra, decColumn: dec,
                              description: "uploaded with this query (\(t.rows) rows)", dataset: stored, rowColumn: texts.isEmpty ? nil : uploadRowColumn)
        return PreparedUpload(table: table, texts: texts, ingest: options)
    }

    /// Stores a prepared upload in `user`'s workspace.
    func store(_ upload: PreparedUpload, user: String) async throws(TAPError) {
        func refuse(_ why: String) -> TAPError { TAPError(400, "UPLOAD `\(upload.table.name)`: \(why)") }
        let o = upload.ingest
        // Like `tessera upload`: up to a copy on every worker, so each meets the survey's shards
        // where they are. A user's uploads beyond the scheduler's open ingests per user wait
        // their turn here (one more begun there would abandon the oldest, failing its query).
        await uploadSlots.acquire(user)
        var failure: TAPError?
        do {
            _ = try await pool.run(as: user) { conn, _ in
                var o = o
                o.replicas = min(Limits.replicas, max(1, try conn.status().workers.count))
                return try CatalogIngest.run(o, connection: conn).rows
            }
        } catch ClientError.rejected(_, let message) {
            failure = refuse(message)
        } catch let e as IngestError {
            failure = TAPError(400, "\(e)")
        } catch ClientError.noScheduler(let e, let s) {
            failure = TAPError(503, "the scheduler at \(e) did not answer within \(s) s")
        } catch {
            failure = refuse("storing it failed: \(error)")
        }
        await uploadSlots.release(user)
        if let failure { throw failure }
    }
}

/// Fetches an `UPLOAD` given by URL, as TAP requires, without letting a request reach what
/// only the gateway can: the URL's host is resolved first and refused when any address is
/// loopback, private, link-local or otherwise not public (unless the gateway serves only this
/// machine); the connection then goes to the address checked, for http and https alike (no
/// second lookup that a rebinding name server could answer otherwise), while https still
/// verifies the certificate for the URL's host name; no redirects; at most `limit` bytes and 30 s.
enum UploadFetcher {
    static func fetch(_ uri: String, table: String, limit: Int, allowPrivate: Bool) async throws(TAPError) -> [UInt8] {
        func refuse(_ why: String) -> TAPError { TAPError(400, "UPLOAD `\(table)` from \(uri.prefix(120)): \(why)") }
        guard let url = URL(string: uri), let scheme = url.scheme?.lowercased(), scheme == "http" || scheme == "https",
              let host = url.host, !host.isEmpty, url.user == nil else {
            throw refuse("give param:PART (a part of a multipart request) or an http(s) URL without credentials")
        }
        let port = url.port ?? (scheme == "https" ? 443 : 80)
        // getaddrinfo blocks (for the resolver's timeouts, with a name server that never
        // answers): on a thread of its own, never one of the few the async handlers share.
        let addresses = await withCheckedContinuation { (c: CheckedContinuation<[String], Never>) in
            resolvers.run { c.resume(returning: resolve(host, port: port)) }
        }
        guard let first = addresses.first else { throw refuse("the host `\(host.prefix(80))` does not resolve") }
        // (An IPv6 address with a zone, `fe80::1%eth0`, is no host to fetch from.)
        guard !addresses.contains(where: { $0.contains("%") }) else { throw refuse("the host resolves to an address with a zone") }
        if !allowPrivate, let inner = addresses.first(where: { !isPublic($0) }) {
            throw refuse("the host resolves to \(inner), an address that is not public; this gateway fetches only from public addresses")
        }
        // A client of its own for this fetch, pinned to the address checked: the client's
        // lookup of `host` is replaced by it (TLS still names and verifies `host`).
        var configuration = HTTPClient.Configuration(redirectConfiguration: .disallow, timeout: .init(connect: .seconds(10), read: .seconds(30)))
        configuration.dnsOverride = [host: first]
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        var request = HTTPClientRequest(url: uri)
        request.headers.add(name: "User-Agent", value: "tessera-gateway")
        let result: Result<[UInt8], TAPError>
        do {
            let response = try await client.execute(request, timeout: .seconds(30))
            guard response.status == .ok else { throw refuse("the server answered \(response.status.code) \(response.status.reasonPhrase)") }
            var bytes: [UInt8] = []
            for try await chunk in response.body {
                guard bytes.count + chunk.readableBytes <= limit else { throw refuse("over this service's upload limit of \(limit) bytes") }
                bytes += chunk.readableBytesView
            }
            result = .success(bytes)
        } catch let e as TAPError {
            result = .failure(e)
        } catch {
            result = .failure(refuse("fetching it failed: \(error)"))
        }
        try? await client.shutdown()
        return try result.get()
    }

    static let resolvers = BlockingThreads()

    /// The numeric addresses `host` resolves to.
    static func resolve(_ host: String, port: Int) -> [String] {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &list) == 0, let head = list else { return [] }
        defer { freeaddrinfo(head) }
        var out: [String] = []
        var node: UnsafeMutablePointer<addrinfo>? = head
        while let n = node {
            var name = [CChar](repeating: 0, count: Int(NI_MAXHOST))
            if getnameinfo(n.pointee.ai_addr, n.pointee.ai_addrlen, &name, socklen_t(name.count), nil, 0, NI_NUMERICHOST) == 0 {
                out.append(String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
            }
            node = n.pointee.ai_next
        }
        return out
    }

    /// Whether a numeric address is a public unicast one (not loopback, private, link-local,
    /// shared, multicast, reserved or unspecified; IPv4-mapped IPv6 judged as IPv4).
    static func isPublic(_ address: String) -> Bool {
        var v4 = in_addr()
        if inet_pton(AF_INET, address, &v4) == 1 { return isPublicV4(UInt32(bigEndian: v4.s_addr)) }
        var v6 = in6_addr()
        guard inet_pton(AF_INET6, address, &v6) == 1 else { return false }
        let b = withUnsafeBytes(of: v6) { Array($0) }
        if b[0..<10].allSatisfy({ $0 == 0 }) && b[10] == 0xff && b[11] == 0xff {
            return isPublicV4(UInt32(b[12]) << 24 | UInt32(b[13]) << 16 | UInt32(b[14]) << 8 | UInt32(b[15]))
        }
        if b.allSatisfy({ $0 == 0 }) || (b[0..<15].allSatisfy { $0 == 0 } && b[15] == 1) { return false }  // :: and ::1
        if b[0] & 0xfe == 0xfc { return false }  // fc00::/7 unique local
        if b[0] == 0xfe && b[1] & 0xc0 == 0x80 { return false }  // fe80::/10 link-local
        if b[0] == 0xff { return false }  // multicast
        return b[0] & 0xe0 == 0x20  // 2000::/3, global unicast
    }

    static func isPublicV4(_ a: UInt32) -> Bool {
        let blocked: [(UInt32, Int)] = [
            (0x0000_0000, 8), (0x0A00_0000, 8), (0x6440_0000, 10), (0x7F00_0000, 8), (0xA9FE_0000, 16), (0xAC10_0000, 12),
            (0xC000_0000, 24), (0xC0A8_0000, 16), (0xC612_0000, 15), (0xE000_0000, 4), (0xF000_0000, 4),
        ]
        return !blocked.contains { net, bits in a >> (32 - bits) == net >> (32 - bits) }
    }
}

/// At most `limit` holders per user at once; the others wait their turn, first come first
/// served (a freed slot passes straight to the next waiter).
actor PerUserSlots {
    let limit: Int
    private var held: [String: Int] = [:]
    private var waiting: [String: [CheckedContinuation<Void, Never>]] = [:]

    init(limit: Int) { self.limit = max(1, limit) }

    func acquire(_ user: String) async {
        if held[user, default: 0] < limit {
            held[user, default: 0] += 1
            return
        }
        await withCheckedContinuation { waiting[user, default: []].append($0) }
    }

    func release(_ user: String) {
        if var queue = waiting[user], !queue.isEmpty {
            let next = queue.removeFirst()
            waiting[user] = queue.isEmpty ? nil : queue
            next.resume()
        } else {
            held[user, default: 1] -= 1
            if held[user] == 0 { held[user] = nil }
        }
    }

    /// Slots `user` holds now (for tests).
    func holding(_ user: String) -> Int { held[user, default: 0] }
}
