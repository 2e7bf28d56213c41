import ArgumentParser
import AsyncHTTPClient
import Dispatch
import Foundation
import NIOCore
import NIOHTTP1
import Synchronization
import TesseraClient
import TesseraCluster
import TesseraGateway
import TesseraProtocol

/// `tessera bench tap`: the HTTP gateway under a portal's load, beside the native client on the
/// same cluster and questions: many small TAP sync cones at once (latency percentiles), one
/// large VOTable BINARY2 answer streamed (MB/s), and cones while a batch scan runs.
struct TAPBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tap",
        abstract: "TAP through the gateway: concurrent 1′ cones (p50/p95/p99), a 1M-row BINARY2 stream (MB/s), cones beside a batch scan; each beside the native client.")

    @OptionGroup var anchor: AnchorCatalog

    @Option(help: "Clients asking at once.")
    var concurrency = 50

    @Option(help: "Cones each client asks, one after another.")
    var conesPerClient = 10

    @Option(help: "Cone radius, arcminutes.")
    var radiusArcmin = 1.0

    @Option(help: "Clients that ask the concurrent cones, in order: tap_http (AsyncHTTPClient), tap_http_plain (a plain keep-alive client), native.")
    var coneClients = "tap_http,tap_http_plain,native"

    @Option(help: "Rows of the streamed answer.")
    var streamRows = 1_000_000

    @Option(help: "Rows of a user's table sent with UPLOAD and cross-matched at 1″ with the survey (0: none).")
    var uploadRows = 100_000

    static let coneClientNames: Set<String> = ["tap_http", "tap_http_plain", "native"]

    func validate() throws {
        let unknown = coneClients.split(separator: ",").map(String.init).filter { !Self.coneClientNames.contains($0) }
        if !unknown.isEmpty {
            throw ValidationError("unknown cone client \(unknown.joined(separator: ", ")) (tap_http, tap_http_plain or native)")
        }
    }

    func run() throws {
        let (cluster, conn, rows) = try anchor.start()
        defer { cluster.stop() }
        var config = GatewayConfiguration(scheduler: cluster.clientEndpoint)
        config.anonymous = true
        config.port = 0
        // A portal's back end is one user asking many questions at once.
        config.limits.concurrentRequestsPerUser = max(8, concurrency + 8)
        config.limits.maxrecLimit = max(config.limits.maxrecLimit, streamRows)
        let bound = Mutex<Int?>(nil)
        _ = GatewayCommand.serve(config) { port in bound.withLock { $0 = port } }
        let deadline = Date().addingTimeInterval(30)
        while bound.withLock({ $0 }) == nil {
            guard Date() < deadline else { throw ValidationError("the gateway did not start") }
            Thread.sleep(forTimeInterval: 0.05)
        }
        let base = "http://127.0.0.1:\(bound.withLock { $0 } ?? 0)/tap"
        let coneClients = coneClients.split(separator: ",").map(String.init)
        let concurrency = self.concurrency, conesPerClient = self.conesPerClient, radius = radiusArcmin / 60, streamRows = self.streamRows
        let upload = uploadRows > 0 ? try Self.uploadDocument(try CrossmatchBench.userPositions(uploadRows, survey: conn, surveyRows: rows)) : nil
        try blocking {
            var pool = HTTPClient.Configuration()
            pool.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: concurrency + 8)
            let http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: pool)
            do {
                try await Self.benchmarks(http: http, base: base, endpoint: cluster.clientEndpoint, rows: rows, coneClients: coneClients, concurrency: concurrency,
                                          conesPerClient: conesPerClient, radius: radius, streamRows: streamRows)
                if let upload { try await Self.uploadCrossmatch(http: http, base: base, document: upload.bytes, rows: upload.rows, surveyRows: rows) }
                try await http.shutdown()
            } catch {
                try? await http.shutdown()
                throw error
            }
        }
        print(jsonLine([("bench", "tap"), ("workload", "memory"), ("gateway_process_peak_rss_mib", Double(peakRSS()) / 1_048_576)] + (try workerPeakRSS(conn))))
    }

    /// A user's table as a client uploads it: VOTable BINARY2 (id, ra, dec).
    static func uploadDocument(_ positions: (ra: [Double], dec: [Double])) throws -> (bytes: [UInt8], rows: Int) {
        let n = positions.ra.count
        let table = TAPTable(fields: [TAPField(name: "id", datatype: "long", unit: "", ucd: "meta.id", description: ""),
                                      TAPField(name: "ra", datatype: "double", unit: "deg", ucd: "pos.eq.ra", description: ""),
                                      TAPField(name: "dec", datatype: "double", unit: "deg", ucd: "pos.eq.dec", description: "")],
                             columns: [.longs((0..<Int64(n)).map { $0 }), .doubles(positions.ra), .doubles(positions.dec)], overflow: false)
        guard let format = ResultFormat(responseFormat: "votable") else { throw ValidationError("no VOTable writer") }
        let writer = ResultWriter(table: table, format: format)
        let collected = Mutex<[UInt8]>([])
        try blocking { try await writer.write { chunk in collected.withLock { $0 += chunk } } }
        return (collected.withLock { $0 }, n)
    }

    /// A user's table sent with UPLOAD (multipart, BINARY2) and cross-matched at 1″ with the
    /// survey, all pairs counted, in one TAP sync request; warm (after one round).
    static func uploadCrossmatch(http: HTTPClient, base: String, document: [UInt8], rows: Int, surveyRows: Int) async throws {
        let query = "SELECT COUNT(*) AS pairs FROM TAP_UPLOAD.mine AS u JOIN object AS o "
            + "ON DISTANCE(POINT('ICRS', u.ra, u.dec), POINT('ICRS', o.coord_ra, o.coord_dec)) < 1.0 / 3600"
        let boundary = "tessera-bench-\(UInt64.random(in: 0...UInt64.max))"
        var body: [UInt8] = []
        for (name, value) in [("LANG", "ADQL"), ("QUERY", query), ("UPLOAD", "mine,param:mine"), ("RESPONSEFORMAT", "votable/td")] {
            body += Array("--\(boundary)\r\nContent-Disposition: form-data; name=\"\(name)\"\r\n\r\n\(value)\r\n".utf8)
        }
        body += Array("--\(boundary)\r\nContent-Disposition: form-data; name=\"mine\"; filename=\"mine.xml\"\r\nContent-Type: application/x-votable+xml\r\n\r\n".utf8)
        body += document
        body += Array("\r\n--\(boundary)--\r\n".utf8)
        for round in 0..<6 {
            var request = HTTPClientRequest(url: base + "/sync")
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "multipart/form-data; boundary=\(boundary)")
            request.body = .bytes(ByteBuffer(bytes: body))
            let t0 = now()
            let response = try await http.execute(request, timeout: .seconds(300))
            let answer = String(buffer: try await response.body.collect(upTo: 1 << 20))
            let seconds = Double(now() - t0) / 1e9
            guard response.status == .ok, let pairs = answer.split(separator: "<TD>").dropFirst().first?.split(separator: "<").first else {
                throw ValidationError("the upload failed: \(response.status.code) \(answer.prefix(400))")
            }
            if round == 0 { continue }  // warm-up
            print(jsonLine([("bench", "tap"), ("workload", "upload_crossmatch"), ("client", "tap_http"), ("upload_rows", rows), ("upload_bytes", document.count),
                            ("survey_rows", surveyRows), ("radius_arcsec", 1.0), ("pairs", Int(pairs) ?? -1), ("seconds", seconds)]))
            fflush(nil)
        }
    }

    static func cone(_ rng: inout some RandomNumberGenerator, radius: Double) -> (ra: Double, dec: Double) {
        (Double.random(in: 51...69, using: &rng), Double.random(in: -44...(-26), using: &rng))
    }

    static func adql(ra: Double, dec: Double, radius: Double) -> String {
        "SELECT objectId, coord_ra, coord_dec, r_psfFlux FROM object WHERE CONTAINS(POINT('ICRS', coord_ra, coord_dec), CIRCLE('ICRS', \(ra), \(dec), \(radius))) = 1"
    }

    static func queryString(_ params: [(String, String)]) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        return params.map { "\($0.0)=\($0.1.addingPercentEncoding(withAllowedCharacters: allowed) ?? "")" }.joined(separator: "&")
    }

    static func coneParams(_ c: (ra: Double, dec: Double), radius: Double) -> [(String, String)] {
        [("LANG", "ADQL"), ("QUERY", adql(ra: c.ra, dec: c.dec, radius: radius))]
    }

    static func get(_ http: HTTPClient, _ url: String, params: [(String, String)]) async throws -> (bytes: Int, firstByte: Double, seconds: Double) {
        let query = queryString(params)
        let t0 = now()
        let response = try await http.execute(HTTPClientRequest(url: url + "?" + query), timeout: .seconds(300))
        guard response.status == .ok else {
            var body = try await response.body.collect(upTo: 1 << 20)
            throw ValidationError("HTTP \(response.status): \(body.readString(length: body.readableBytes) ?? "")")
        }
        var bytes = 0
        var first: UInt64 = 0
        for try await part in response.body {
            if first == 0 { first = now() }
            bytes += part.readableBytes
        }
        return (bytes, Double(first - t0) / 1e9, Double(now() - t0) / 1e9)
    }

    static func percentiles(_ times: [Double]) -> [(String, Any)] {
        let t = times.sorted()
        func pct(_ p: Double) -> Double { t.isEmpty ? 0 : t[min(t.count - 1, Int((p * Double(t.count - 1)).rounded()))] * 1e3 }
        return [("p50_ms", pct(0.5)), ("p95_ms", pct(0.95)), ("p99_ms", pct(0.99)), ("max_ms", (t.last ?? 0) * 1e3)]
    }

    static func benchmarks(http: HTTPClient, base: String, endpoint: String, rows: Int, coneClients: [String], concurrency: Int, conesPerClient: Int,
                           radius: Double, streamRows: Int) async throws {
        var rng = SystemRandomNumberGenerator()
        // Warm-up: shards mapped, then the gateway's pool of scheduler connections filled as
        // a portal's steady load keeps it (each client's first cone opens one).
        for _ in 0..<20 {
            _ = try await get(http, base + "/sync", params: coneParams(cone(&rng, radius: radius), radius: radius))
        }
        let warmCones = (0..<concurrency).map { _ in cone(&rng, radius: radius) }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for c in warmCones { group.addTask { _ = try await get(http, base + "/sync", params: coneParams(c, radius: radius)) } }
            try await group.waitForAll()
        }
        // 1. Concurrent small cones, the same cones through each client: TAP with a full HTTP
        // client (AsyncHTTPClient), TAP with a plain keep-alive client (the load generator's
        // own CPU kept small, as a remote portal's would not be on these cores), and the
        // native client.
        var cones: [[(ra: Double, dec: Double)]] = []
        for _ in 0..<concurrency { cones.append((0..<conesPerClient).map { _ in cone(&rng, radius: radius) }) }
        let frozen = cones
        guard let url = URL(string: base), let port = url.port else { throw ValidationError("no port in \(base)") }
        let path = url.path
        for client in coneClients {
            let t0 = now()
            let times = try await withThrowingTaskGroup(of: [Double].self) { group in
                for k in 0..<concurrency {
                    group.addTask {
                        var out: [Double] = []
                        switch client {
                        case "tap_http":
                            for c in frozen[k] {
                                out.append(try await get(http, base + "/sync", params: coneParams(c, radius: radius)).seconds)
                            }
                        case "tap_http_plain":
                            out = try await onThread {
                                let plain = try PlainHTTPClient(port: port)
                                return try frozen[k].map { c in
                                    let target = path + "/sync?" + queryString(coneParams(c, radius: radius))
                                    let t0 = now()
                                    let answer = try plain.get(target)
                                    guard answer.status == 200 else { throw ValidationError("HTTP \(answer.status) for \(target)") }
                                    return Double(now() - t0) / 1e9
                                }
                            }
                        case "native":
                            out = try await onThread {
                                let conn = try SchedulerConnection(endpoint: endpoint)
                                conn.priority = .interactive
                                return try frozen[k].map { c in
                                    let q = CatalogQuery(dataset: AnchorCatalog.dataset).region(.cone(ra: c.ra, dec: c.dec, radius: radius))
                                        .select(["objectId", "coord_ra", "coord_dec", "r_psfFlux"])
                                    return try conn.run(q).seconds
                                }
                            }
                        default:
                            throw ValidationError("unknown cone client `\(client)` (tap_http, tap_http_plain or native)")
                        }
                        return out
                    }
                }
                var all: [Double] = []
                for try await part in group { all += part }
                return all
            }
            let wall = Double(now() - t0) / 1e9
            print(jsonLine([("bench", "tap"), ("workload", "cones_concurrent"), ("client", client), ("rows", rows), ("concurrency", concurrency),
                            ("queries", times.count), ("radius_arcmin", radius * 60)] + percentiles(times) + [("queries_per_s", Double(times.count) / wall)]))
            fflush(nil)
        }
        // 2. A large answer streamed: VOTable BINARY2 through the gateway, and rows through the native client.
        let columns = "objectId, coord_ra, coord_dec, g_psfFlux, r_psfFlux, i_psfFlux"
        for _ in 0..<2 {
            let s = try await get(http, base + "/sync", params: [("LANG", "ADQL"), ("QUERY", "SELECT TOP \(streamRows) \(columns) FROM object"),
                                                                 ("MAXREC", "\(streamRows)"), ("RESPONSEFORMAT", "votable")])
            print(jsonLine([("bench", "tap"), ("workload", "stream_binary2"), ("client", "tap_http"), ("rows", streamRows), ("bytes", s.bytes),
                            ("seconds", s.seconds), ("first_byte_seconds", s.firstByte), ("mb_per_s", Double(s.bytes) / s.seconds / 1e6),
                            ("mrows_per_s", Double(streamRows) / s.seconds / 1e6)]))
            let native = try await onThread {
                let conn = try SchedulerConnection(endpoint: endpoint)
                let q = CatalogQuery(dataset: AnchorCatalog.dataset).select(columns.components(separatedBy: ", ")).limit(streamRows).maxRows(streamRows)
                let u = try conn.run(q)
                return (u.seconds, u.result.table.rowCount)
            }
            print(jsonLine([("bench", "tap"), ("workload", "stream_rows"), ("client", "native"), ("rows", native.1), ("seconds", native.0),
                            ("mrows_per_s", Double(native.1) / native.0 / 1e6)]))
            fflush(nil)
        }
        // 3. Interactive before batch: TAP cones one at a time, alone, then while a batch
        // full-catalog aggregate runs again and again.
        var alone: [Double] = []
        for _ in 0..<100 {
            let c = cone(&rng, radius: radius)
            alone.append(try await get(http, base + "/sync", params: coneParams(c, radius: radius)).seconds)
        }
        print(jsonLine([("bench", "tap"), ("workload", "cones_alone"), ("client", "tap_http"), ("queries", alone.count)] + percentiles(alone)))
        let stop = Atomic<Bool>(false)
        let scans = Atomic<Int>(0)
        let scanner = Thread {
            guard let conn = try? SchedulerConnection(endpoint: endpoint) else { return }
            conn.priority = .batch
            let q = CatalogQuery(dataset: AnchorCatalog.dataset).filter("mag(r_psfFlux) < 24").aggregate(.mean("mag(g_psfFlux) - mag(r_psfFlux)"))
            while !stop.load(ordering: .relaxed) {
                if (try? conn.run(q)) != nil { scans.add(1, ordering: .relaxed) }
            }
        }
        scanner.start()
        try await Task.sleep(nanoseconds: 300_000_000)
        var during: [Double] = []
        for _ in 0..<100 {
            let c = cone(&rng, radius: radius)
            during.append(try await get(http, base + "/sync", params: coneParams(c, radius: radius)).seconds)
        }
        stop.store(true, ordering: .relaxed)
        print(jsonLine([("bench", "tap"), ("workload", "cones_beside_batch_scan"), ("client", "tap_http"), ("queries", during.count),
                        ("batch_scans_finished", scans.load(ordering: .relaxed))] + percentiles(during)))
        fflush(nil)
    }
}

/// Runs async code from a synchronous command, blocking until it ends.
func blocking(_ body: @escaping @Sendable () async throws -> Void) throws {
    let done = DispatchSemaphore(value: 0)
    let failure = Mutex<(any Error)?>(nil)
    Task.detached {
        do { try await body() } catch { failure.withLock { $0 = error } }
        done.signal()
    }
    done.wait()
    if let e = failure.withLock({ $0 }) { throw e }
}

/// Runs blocking client code on a thread of its own.
func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, any Error>) in
        Thread { c.resume(with: Result { try body() }) }.start()
    }
}
