import Crypto
import Foundation
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization
import TesseraADQL
import TesseraClient
import TesseraCompute
import TesseraProtocol
import TesseraStorage
import UnixSignals

/// A request's context: who made it (set by ``GatewayMiddleware``).
public struct GatewayContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    /// The authenticated user, or the anonymous one when the gateway allows it.
    public var user: String = ""
    /// The address of the connection's other end (a proxy's, behind one).
    public let peerAddress: String?
    /// The connection (closed when its client stops taking an answer).
    let channel: any Channel

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
        peerAddress = source.channel.remoteAddress?.ipAddress
    }

    public var maxUploadSize: Int { 1 << 20 }
}

/// How the gateway runs.
public struct GatewayConfiguration: Sendable {
    /// The scheduler's client endpoint.
    public var scheduler: String
    public var host: String = "127.0.0.1"
    public var port: Int = 8080
    /// The bearer tokens file (`tessera token create`).
    public var tokensPath: String?
    /// Lets requests without a token in, as user `anonymous` (loopback addresses only).
    public var anonymous = false
    /// Lets a TAP UPLOAD by URL fetch from loopback and private addresses (a gateway for one
    /// machine or one trusted network). Off: public addresses only, so no request reaches the
    /// cluster's own network through the gateway, even one that listens on loopback behind a proxy.
    public var uploadsFromPrivateAddresses = false
    /// The address clients reach the gateway at (`https://archive.example/tessera` behind a
    /// proxy), for links in documents and redirects; nil: the request's own Host.
    public var publicURL: String?
    public var limits = GatewayLimits()
    /// The folder of HiPS trees served at `/hips/NAME/…` (`tessera hips -o FOLDER/NAME`).
    public var hipsRoot: String?
    /// Serves the HiPS trees without a token (a portal's sky viewer fetches tiles by URL alone).
    public var publicHiPS = false
    /// The proxies (their ``ClientAddress/address(_:)``es) whose `X-Forwarded-For` names the client
    /// of a request without a token; from any other peer the header is the client's own word
    /// and is ignored.
    public var trustedProxies: Set<String> = []
    /// Seconds a stopping gateway (SIGTERM, SIGINT) waits for the requests in progress before
    /// it closes their connections.
    public var shutdownGraceSeconds = 20

    public init(scheduler: String) { self.scheduler = scheduler }

    /// The user requests without a token run as when ``anonymous`` is on.
    public static let anonymousUser = "anonymous"
}

/// Requests in progress per user.
final class RequestCounts: Sendable {
    let counts = Mutex<[String: Int]>([:])
}

/// A response's writer whose every write must be taken by the client within `timeout`, else its
/// connection is closed (the write then fails, and the request gives its place back).
/// Hummingbird's idle timeout does not run while a response is being sent, so a client that
/// stopped reading held its place, and what was queued for it, for good.
struct SendTimeoutWriter: ResponseBodyWriter {
    var inner: any ResponseBodyWriter
    let channel: any Channel
    let timeout: TimeAmount

    mutating func write(_ buffer: ByteBuffer) async throws {
        let cutOff = channel.eventLoop.scheduleTask(in: timeout) { [channel] in channel.close(promise: nil) }
        defer { cutOff.cancel() }
        try await inner.write(buffer)
    }

    consuming func finish(_ trailingHeaders: HTTPFields?) async throws {
        let cutOff = channel.eventLoop.scheduleTask(in: timeout) { [channel] in channel.close(promise: nil) }
        defer { cutOff.cancel() }
        try await inner.finish(trailingHeaders)
    }
}

/// One request's place in its user's count: given back once, when its body has been written,
/// or when the response is dropped without being written (the client went away first).
final class RequestSlot: Sendable {
    private let giveBack: Mutex<(@Sendable () -> Void)?>

    init(_ giveBack: @escaping @Sendable () -> Void) { self.giveBack = Mutex(giveBack) }

    func release() {
        let g = giveBack.withLock { g -> (@Sendable () -> Void)? in
            defer { g = nil }
            return g
        }
        g?()
    }

    deinit { release() }
}

/// Authenticates each request, holds it to its user's share of concurrent requests, and
/// writes one structured access-log line for it. A request without a token (a public path, or
/// a HiPS tile under `--public-hips`) is held to its client address's share instead, and all of
/// them together to ``GatewayLimits/requestsWithoutToken``: a portal's viewers each get a share
/// of their own, and no crowd of them can take the whole gateway.
struct GatewayMiddleware: RouterMiddleware {
    typealias Context = GatewayContext
    let tokens: TokenStore?
    let anonymous: Bool
    let limits: GatewayLimits
    let inFlight: RequestCounts
    let logger: Logger
    var publicHiPS = false
    var trustedProxies: Set<String> = []
    /// The count that every request without a token also takes a place in.
    static let withoutTokenKey = "@"
    /// The count that every request takes a place in (no user or address is named `*`).
    static let everyoneKey = "*"

    /// Paths anyone may read: VOSI's availability and capabilities (clients discover the
    /// service before they authenticate), and the dashboard's static page.
    static func isPublic(_ path: String) -> Bool {
        path == "/tap/availability" || path == "/tap/capabilities" || path == "/" || path == "/tap"
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let start = DispatchTime.now().uptimeNanoseconds
        var context = context
        var response: Response
        let path = request.uri.path
        // `X-Forwarded-For`: the client and the proxies the request passed through (RFC
        // 7239's `Forwarded` says the same, and is not read).
        let forwardedFor = request.headers.filter { $0.name.canonicalName == "x-forwarded-for" }.map(\.value)
        let client = ClientAddress.client(peer: context.peerAddress, forwardedFor: forwardedFor, trustedProxies: trustedProxies)
        // The dashboard's EventSource cannot send headers: its token comes as `?token=`.
        var header = request.headers[.authorization]
        if header == nil, path.hasPrefix("/api/") {
            var q: [String: String] = [:]
            Gateway.formFields(request.uri.query ?? "", into: &q)
            if let t = q["TOKEN"] { header = "Bearer \(t)" }
        }
        if let header {
            let parts = header.split(separator: " ", maxSplits: 1)
            if parts.count == 2, parts[0].lowercased() == "bearer", let user = tokens?.user(for: String(parts[1])) {
                context.user = user
            } else {
                response = Self.unauthorized("the bearer token is not valid (ask for one: tessera token create USER)")
                log(request, response, user: "-", client: client, start: start)
                return response
            }
        } else if anonymous {
            context.user = GatewayConfiguration.anonymousUser
        } else if !Self.isPublic(path) && !(publicHiPS && path.hasPrefix("/hips/")) {
            response = Self.unauthorized("this service needs a bearer token: `Authorization: Bearer TOKEN` (tessera token create USER)")
            log(request, response, user: "-", client: client, start: start)
            return response
        }
        let user = context.user.isEmpty ? "-" : context.user
        // VOSI availability is a constant answer, and what a load balancer's health check asks:
        // it takes no place, so a crowd that fills the places does not make the gateway look down.
        if path == "/tap/availability" {
            response = try await next(request, context)
            log(request, response, user: user, client: client, start: start)
            return response
        }
        // The counts this request takes a place in, each with its bound and what a refusal says.
        let n = limits.concurrentRequestsPerUser
        var places: [(key: String, bound: Int, full: String)] = context.user.isEmpty ? [
            (Self.withoutTokenKey + client, n, "the address \(client) has \(n) requests without a token in progress, the most one address may: wait for one to finish"),
            (Self.withoutTokenKey, limits.requestsWithoutToken,
             "the gateway has \(limits.requestsWithoutToken) requests without a token in progress, the most it serves at once: try again shortly, or send a token"),
        ] : [(user, n, "user \(user) has \(n) requests in progress, the most one user may: wait for one to finish")]
        places.append((Self.everyoneKey, limits.requestsInProgress,
                       "the gateway has \(limits.requestsInProgress) requests in progress, the most it serves at once: try again shortly"))
        let refused = inFlight.counts.withLock { counts -> Int? in
            if let full = places.firstIndex(where: { counts[$0.key, default: 0] >= $0.bound }) { return full }
            for p in places { counts[p.key, default: 0] += 1 }
            return nil
        }
        if let refused {
            response = Gateway.errorResponse(429, places[refused].full)
            response.headers[.retryAfter] = "1"
            log(request, response, user: user, client: client, start: start)
            return response
        }
        // The slot is held until the response's body is written (a streamed answer, or an
        // event stream, is most of a request's life), or dropped unwritten.
        let counts = inFlight
        let keys = places.map(\.key)
        // A count back to 0 is removed: there are as many keys as client addresses.
        let slot = RequestSlot { counts.counts.withLock { c in for k in keys { c[k] = c[k].flatMap { $0 > 1 ? $0 - 1 : nil } } } }
        do {
            response = try await next(request, context)
        } catch let e as TAPError {
            response = Gateway.errorResponse(e.status, e.message)
        } catch let e as HTTPError {
            response = Gateway.errorResponse(Int(e.status.code), e.body ?? "\(e.status)")
        } catch let e as ClientError {
            // The cluster's answer to a route that does not name its own errors.
            response = Gateway.errorResponse(TAPService.status(of: e), "\(e)")
        } catch {
            // Anything else a route let through gets its message, not a bare 500.
            response = Gateway.errorResponse(500, "\(error)")
        }
        let body = response.body
        let (channel, sendTimeout) = (context.channel, TimeAmount.seconds(Int64(limits.sendTimeoutSeconds)))
        response.body = ResponseBody(contentLength: body.contentLength) { writer in
            defer { slot.release() }
            try await body.write(SendTimeoutWriter(inner: writer, channel: channel, timeout: sendTimeout))
        }
        log(request, response, user: user, client: client, start: start)
        return response
    }

    func log(_ request: Request, _ response: Response, user: String, client: String, start: UInt64) {
        let ms = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6
        logger.info("request", metadata: [
            "method": "\(request.method)", "path": "\(request.uri.path)", "status": "\(response.status.code)",
            "user": "\(user)", "client": "\(client)", "ms": "\((ms * 10).rounded() / 10)",
        ])
    }

    static func unauthorized(_ message: String) -> Response {
        var r = Gateway.errorResponse(401, message)
        r.headers[.wwwAuthenticate] = "Bearer realm=\"tessera\""
        return r
    }
}

/// The HTTP gateway: TAP 1.1 (sync and async), VOSI, and TAP_SCHEMA over the scheduler.
public enum Gateway {
    /// The router with every route, for a server or a test.
    public static func router(_ config: GatewayConfiguration, logger: Logger) -> Router<GatewayContext> {
        let service = TAPService(endpoint: config.scheduler, limits: config.limits, allowPrivateUploadURLs: config.uploadsFromPrivateAddresses)
        let base: @Sendable (Request) -> String = { baseURL($0, config: config) }
        let jobs = AsyncJobs(service: service)
        let router = Router(context: GatewayContext.self)
        router.add(middleware: GatewayMiddleware(tokens: config.tokensPath.map(TokenStore.init), anonymous: config.anonymous,
                                                 limits: config.limits, inFlight: RequestCounts(), logger: logger, publicHiPS: config.publicHiPS,
                                                 trustedProxies: config.trustedProxies))

        let feed = DashboardFeed(pool: service.pool)
        router.get("/") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/html;charset=utf-8"], body: .init(byteBuffer: ByteBuffer(string: DashboardPage.html)))
        }
        router.get("/api/status") { _, context in
            do {
                return Response(status: .ok, headers: [.contentType: "application/json"],
                                body: .init(byteBuffer: ByteBuffer(string: try await feed.snapshot(for: context.user))))
            } catch {
                throw TAPError(503, "the scheduler did not answer: \(error)")
            }
        }
        // Server-sent events: a snapshot a second, for ten minutes (EventSource reconnects),
        // until the client leaves or the gateway shuts down.
        router.get("/api/events") { _, context in
            let user = context.user
            return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"], body: ResponseBody { body in
                let end = Date().addingTimeInterval(600)
                while Date() < end, !Task.isCancelled, !Task.isShuttingDownGracefully {
                    let message: String
                    do {
                        message = "data: \(try await feed.snapshot(for: user))\n\n"
                    } catch {
                        message = "event: failure\ndata: \(ResultTable.jsonString("the scheduler did not answer: \(error)"))\n\n"
                    }
                    try await body.write(ByteBuffer(string: message))
                    for _ in 0..<10 where !Task.isShuttingDownGracefully { try await Task.sleep(nanoseconds: 100_000_000) }
                }
                try await body.finish(nil)
            })
        }
        // Catalogs' coverage MOCs, as static documents with an ETag.
        let coverage = CoverageService(pool: service.pool)
        router.get("/moc/:file") { request, context in
            let params = try await parameters(request, limit: config.limits.bodyBytes)
            let raw = params["ORDER"] ?? "\(CoverageService.defaultOrder)"
            guard let order = Int(raw), (0...CoverageService.maxOrder).contains(order) else {
                throw TAPError(400, "ORDER=\(raw.prefix(20)) is not a HEALPix order of 0…\(CoverageService.maxOrder)")
            }
            let doc = try await whileClientStays(context) {
                try await coverage.document(try context.parameters.require("file"), order: order, user: context.user)
            }
            let tag = "\"" + SHA256.hash(data: doc.body).prefix(12).map { String(format: "%02x", $0) }.joined() + "\""
            var headers: HTTPFields = [.contentType: doc.contentType, .eTag: tag, .cacheControl: "private, max-age=60"]
            if request.headers[.ifNoneMatch] == tag {
                headers[.contentType] = nil
                return Response(status: .notModified, headers: headers, body: .init())
            }
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: doc.body)))
        }
        // SODA cutouts, DataLink, and HiPS trees as static files.
        let soda = SODAService(pool: service.pool, hipsRoot: config.hipsRoot)
        let sodaSync: @Sendable (Request, GatewayContext) async throws -> Response = { request, context in
            do {
                let parameters = try await parameterLists(request, limit: config.limits.bodyBytes)
                let (bytes, name) = try await whileClientStays(context) { try await soda.cutout(parameters, user: context.user) }
                return Response(status: .ok, headers: [.contentType: "application/fits", .contentDisposition: "inline; filename=\"\(name)\""],
                                body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
            } catch let e as SODAError {
                return e.response
            } catch let e as TAPError {
                return SODAError(status: e.status, label: "UsageError", message: e.message).response
            } catch {
                return SODAError(status: 503, label: "TransientFault", message: "\(error)").response
            }
        }
        router.get("/soda/sync", use: sodaSync)
        router.post("/soda/sync", use: sodaSync)
        router.get("/soda/links") { request, context in
            do {
                let doc = try await soda.links(try await parameterLists(request, limit: config.limits.bodyBytes), base: base(request), user: context.user)
                return xml(200, doc, contentType: "application/x-votable+xml;content=datalink")
            } catch let e as SODAError {
                return e.response
            }
        }
        router.get("/hips/list") { request, _ in
            text(200, soda.hipsList(base: base(request)))
        }
        router.get("/hips/**") { request, _ in
            do {
                let file = try soda.hipsFile(String(request.uri.path.dropFirst("/hips/".count)))
                // A tree is replaced whole when made again: its files' time, size and inode name the version.
                let tag = file.entityTag
                var headers: HTTPFields = [.eTag: tag, .cacheControl: config.publicHiPS ? "public, max-age=3600" : "private, max-age=3600",
                                           .lastModified: httpDate(file.modified), .accessControlAllowOrigin: "*"]
                if request.headers[.ifNoneMatch] == tag { return Response(status: .notModified, headers: headers, body: .init()) }
                headers[.contentType] = file.contentType
                // Streamed 128 KiB at a time as the client reads, from the file opened above: an
                // Allsky or a deep tile is not held whole in memory, and the request keeps its
                // place until it is sent.
                let threads = service.pool.threads
                return Response(status: .ok, headers: headers, body: ResponseBody(contentLength: file.size) { writer in
                    var offset = 0
                    while offset < file.size {
                        let chunk = try await threads.perform { [offset] in try file.read(at: offset, count: min(1 << 17, file.size - offset)) }
                        // Cut short in place (not replaced by a rename): the answer cannot be completed.
                        guard chunk.readableBytes > 0 else { throw SODAError.notFound("a HiPS file was cut short while it was sent") }
                        offset += chunk.readableBytes
                        try await writer.write(chunk)
                    }
                    try await writer.finish(nil)
                })
            } catch let e as SODAError {
                return e.response
            }
        }
        router.get("/tap") { request, _ in
            text(200, "Tessera TAP service: /tap/sync, /tap/async, /tap/capabilities, /tap/availability, /tap/tables\n")
        }
        router.get("/tap/availability") { _, _ in
            xml(200, """
                <?xml version="1.0" encoding="UTF-8"?>
                <vosi:availability xmlns:vosi="http://www.ivoa.net/xml/VOSIAvailability/v1.0">
                  <vosi:available>true</vosi:available>
                  <vosi:note>accepting queries</vosi:note>
                </vosi:availability>

                """)
        }
        router.get("/tap/capabilities") { request, _ in
            xml(200, capabilities(base: base(request), limits: config.limits))
        }
        router.get("/tap/examples") { _, context in
            xml(200, examples(try await service.tables(for: context.user)), contentType: "application/xhtml+xml")
        }
        router.get("/tap/tables") { _, context in
            xml(200, tableset(try await service.tables(for: context.user)))
        }
        let sync: @Sendable (Request, GatewayContext) async throws -> Response = { request, context in
            let form = try await form(request, limit: config.limits.bodyBytes, multipartLimit: config.limits.upload.bytes)
            return try await whileClientStays(context) { try await runSync(form, service: service, user: context.user) }
        }
        router.get("/tap/sync", use: sync)
        router.post("/tap/sync", use: sync)

        // UWS: the job list, one job, and its parts.
        router.get("/tap/async") { request, context in
            let list = await jobs.list(owner: context.user)
            var s = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<uws:jobs xmlns:uws=\"http://www.ivoa.net/xml/UWS/v1.0\" xmlns:xlink=\"http://www.w3.org/1999/xlink\" version=\"1.1\">\n"
            for j in list {
                s += "  <uws:jobref id=\"\(j.id)\" xlink:href=\"\(base(request))/tap/async/\(j.id)\"><uws:phase>\(j.phase.rawValue)</uws:phase><uws:ownerId>\(ResultWriter.xml(j.owner))</uws:ownerId><uws:creationTime>\(iso(j.created))</uws:creationTime></uws:jobref>\n"
            }
            return xml(200, s + "</uws:jobs>\n")
        }
        router.post("/tap/async") { request, context in
            let form = try await form(request, limit: config.limits.bodyBytes, multipartLimit: config.limits.upload.bytes)
            let params = form.first
            // A job is created whatever its parameters say (UWS); what is wrong with them is
            // its error once it runs. Only the size limits apply now, and uploads are read (the
            // job keeps their rows until it runs, not the request's body).
            try checkSize(params, limits: config.limits)
            let uploads = try await service.uploads(form.lists["UPLOAD"] ?? [], parts: form.parts)
            let job = try await jobs.create(owner: context.user, parameters: params, uploads: uploads)
            if params["PHASE"]?.uppercased() == "RUN" { try await jobs.run(job.id, owner: context.user) }
            return redirect("\(base(request))/tap/async/\(job.id)")
        }
        router.get("/tap/async/:id") { request, context in
            let id = try context.parameters.require("id")
            let params = try await parameters(request, limit: config.limits.bodyBytes)
            var job = try await jobs.job(id, owner: context.user)
            if let wait = params["WAIT"].flatMap(Double.init) {
                let phase = params["PHASE"].flatMap { AsyncJobs.Phase(rawValue: $0.uppercased()) }
                job = try await whileClientStays(context) { try await jobs.wait(id, owner: context.user, seconds: wait < 0 ? 60 : wait, whilePhase: phase) }
            }
            return xml(200, jobDocument(job, base: base(request)))
        }
        router.delete("/tap/async/:id") { request, context in
            try await jobs.delete(try context.parameters.require("id"), owner: context.user)
            return redirect("\(base(request))/tap/async")
        }
        router.post("/tap/async/:id") { request, context in
            let id = try context.parameters.require("id")
            let params = try await parameters(request, limit: config.limits.bodyBytes)
            guard params["ACTION"]?.uppercased() == "DELETE" else { throw TAPError(400, "POST to a job takes ACTION=DELETE") }
            try await jobs.delete(id, owner: context.user)
            return redirect("\(base(request))/tap/async")
        }
        router.get("/tap/async/:id/:part") { request, context in
            let id = try context.parameters.require("id")
            let job = try await jobs.job(id, owner: context.user)
            switch try context.parameters.require("part") {
            case "phase": return text(200, job.phase.rawValue)
            case "quote": return text(200, "")
            case "executionduration": return text(200, "\(job.executionDuration)")
            case "destruction": return text(200, iso(job.destruction))
            case "owner": return text(200, job.owner)
            case "error":
                guard let e = job.error else { throw TAPError(404, "job \(id) has no error (phase \(job.phase.rawValue))") }
                return xml(200, ResultWriter.errorVOTable(e), contentType: "application/x-votable+xml")
            case "parameters": return xml(200, parametersDocument(job))
            case "results": return xml(200, resultsDocument(job, base: base(request)))
            default: throw TAPError(404, "a job has no part `\(try context.parameters.require("part").prefix(40))`")
            }
        }
        router.get("/tap/async/:id/results/result") { request, context in
            let id = try context.parameters.require("id")
            let job = try await jobs.job(id, owner: context.user)
            guard let table = job.result else { throw TAPError(404, "job \(id) has no result (phase \(job.phase.rawValue))") }
            let format = try responseFormat(job.parameters)
            return tableResponse(table, format: format, query: job.parameters["QUERY"] ?? "")
        }
        router.post("/tap/async/:id/:part") { request, context in
            let id = try context.parameters.require("id")
            let params = try await parameters(request, limit: config.limits.bodyBytes)
            let part = try context.parameters.require("part")
            switch part {
            case "phase":
                switch params["PHASE"]?.uppercased() {
                case "RUN": try await jobs.run(id, owner: context.user)
                case "ABORT": try await jobs.abort(id, owner: context.user)
                default: throw TAPError(400, "PHASE must be RUN or ABORT")
                }
            case "executionduration":
                guard let v = params["EXECUTIONDURATION"].flatMap(Int.init), v >= 0 else { throw TAPError(400, "EXECUTIONDURATION must be a whole number of seconds") }
                _ = try await jobs.update(id, owner: context.user) { j throws(TAPError) in
                    j.executionDuration = v == 0 ? AsyncJobs.maxExecutionDuration : min(v, AsyncJobs.maxExecutionDuration)
                }
            case "destruction":
                guard let raw = params["DESTRUCTION"], let d = parseISO(raw) else { throw TAPError(400, "DESTRUCTION must be an ISO 8601 time") }
                let latest = Date().addingTimeInterval(config.limits.asyncRetentionSeconds)
                _ = try await jobs.update(id, owner: context.user) { j throws(TAPError) in j.destruction = min(d, latest) }
            case "parameters":
                try checkSize(params, limits: config.limits)
                // A job's uploads are read from the request that creates it; here they would be
                // named and never stored, and the query would fail later for want of the table.
                guard params["UPLOAD"] == nil else {
                    throw TAPError(400, "UPLOAD goes with the request that creates the job (POST /tap/async), not with a change to its parameters")
                }
                let changed = try AsyncJobs.kept(params, limit: config.limits.queryCharacters)
                _ = try await jobs.update(id, owner: context.user) { j throws(TAPError) in
                    guard j.phase == .pending else { throw TAPError(409, "job \(id) is \(j.phase.rawValue): parameters change only while PENDING") }
                    j.parameters.merge(changed) { $1 }
                }
            default:
                throw TAPError(404, "a job has no part `\(part.prefix(40))` to change")
            }
            return redirect("\(base(request))/tap/async/\(id)")
        }
        return router
    }

    /// Runs the gateway until SIGTERM or SIGINT, then finishes the requests in progress.
    public static func run(_ config: GatewayConfiguration, logger: Logger, onListening: @escaping @Sendable (Int) async -> Void = { _ in }) async throws {
        if config.anonymous && !isLoopbackHost(config.host) {
            throw TAPError(400, "--anonymous is allowed on loopback addresses only (127.0.0.1, ::1); give users tokens (tessera token create) to serve beyond this machine")
        }
        // A connection idle between requests for a minute is closed (Hummingbird's timer does not
        // run while an answer is sent: a client that stops taking one is cut off by
        // `SendTimeoutWriter`).
        // Each connection notes when its client leaves, for the requests that wait on the cluster.
        let app = Application(router: router(config, logger: logger),
                              server: .http1(configuration: .init(additionalChannelHandlers: [ClientDepartureHandler()], idleTimeout: .seconds(60))),
                              configuration: .init(address: .hostname(config.host, port: config.port), serverName: "tessera-gateway"),
                              onServerRunning: { channel in await onListening(channel.localAddress?.port ?? config.port) },
                              logger: logger)
        var lifecycle = ServiceGroupConfiguration(services: [app], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        // On SIGTERM the requests in progress get this long to finish; then the server is
        // cancelled and their connections closed. Without a bound, a client that stopped
        // reading (or a dashboard's event stream) held the gateway up until its idle timeout,
        // past a Kubernetes pod's 30 s grace.
        lifecycle.maximumGracefulShutdownDuration = .seconds(config.shutdownGraceSeconds)
        let group = ServiceGroup(configuration: lifecycle)
        try await group.run()
    }

    /// A `--public-url` as links use it (no trailing `/`), or nil when it is not a plain
    /// http(s) URL.
    public static func publicURL(_ raw: String) -> String? {
        let url = raw.hasSuffix("/") ? String(raw.dropLast()) : raw
        guard url.utf8.count <= 512, url.allSatisfy({ $0.isASCII && !$0.isWhitespace && !"\"<>'&\\?#".contains($0) }),
              let scheme = url.range(of: "://"), ["http", "https"].contains(url[..<scheme.lowerBound]) else { return nil }
        let rest = url[scheme.upperBound...]
        let authority = rest.prefix { $0 != "/" }
        return isPlainAuthority(String(authority)) ? url : nil
    }

    /// Whether only this machine reaches `host`: `localhost`, `::1`, or a numeric 127.x.y.z.
    static func isLoopbackHost(_ host: String) -> Bool {
        if host == "localhost" || host == "::1" || host == "[::1]" { return true }
        let parts = host.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts[0] == "127" && parts.allSatisfy { UInt8($0) != nil }
    }

    // MARK: Sync

    /// Runs `body`, a route's wait for the cluster, so that the questions it asks are cancelled
    /// on the cluster once the request's client leaves (``ClientDeparture``): it then throws
    /// ``TAPError/clientLeft``.
    static func whileClientStays<T>(_ context: GatewayContext, _ body: () async throws -> T) async throws -> T {
        let departure = await ClientDeparture.of(context.channel)
        do {
            return try await ClientDeparture.$ofRequest.withValue(departure, operation: body)
        } catch is CancellationError where departure?.hasLeft == true {
            throw TAPError.clientLeft
        }
    }

    static func runSync(_ form: RequestForm, service: TAPService, user: String) async throws -> Response {
        let params = form.first
        try checkParameters(params, limits: service.limits)
        if let r = params["REQUEST"], r.lowercased() != "doquery" { throw TAPError(400, "REQUEST=\(r.prefix(40)) is not supported: use doQuery") }
        guard let query = params["QUERY"], !query.isEmpty else { throw TAPError(400, "no QUERY parameter: give QUERY=an ADQL query") }
        let maxrec = try service.maxrec(params["MAXREC"])
        let format = try responseFormat(params)
        let uploads = try await service.uploads(form.lists["UPLOAD"] ?? [], parts: form.parts)
        let cells = AnswerCells(service.answerBudget)
        let table = try await service.run(adql: query, maxrec: maxrec, user: user, priority: .interactive, uploads: uploads, cells: cells)
        return tableResponse(table, format: format, query: query, holding: cells)
    }

    static func checkSize(_ params: [String: String], limits: GatewayLimits) throws(TAPError) {
        if let q = params["QUERY"], q.count > limits.queryCharacters {
            throw TAPError(400, "the query is \(q.count) characters long, over this service's limit of \(limits.queryCharacters)")
        }
    }

    /// Refuses what this service cannot do with a request's parameters, naming the parameter.
    static func checkParameters(_ params: [String: String], limits: GatewayLimits) throws(TAPError) {
        if let lang = params["LANG"], !lang.uppercased().hasPrefix("ADQL") { throw TAPError(400, "LANG=\(lang.prefix(40)) is not supported: use ADQL") }
        try checkSize(params, limits: limits)
        _ = try responseFormat(params)
    }

    static func responseFormat(_ params: [String: String]) throws(TAPError) -> ResultFormat {
        let raw = params["RESPONSEFORMAT"] ?? params["FORMAT"] ?? ""
        guard let f = ResultFormat(responseFormat: raw) else {
            throw TAPError(400, "RESPONSEFORMAT=\(raw.prefix(60)) is not supported: use \(ResultFormat.advertised.map(\.alias).joined(separator: ", ")) or their MIME types")
        }
        return f
    }

    /// `table` written in `format`; `holding` (its cells in the gateway's budget) is given back
    /// once it has been written or dropped.
    static func tableResponse(_ table: TAPTable, format: ResultFormat, query: String, holding cells: AnswerCells? = nil) -> Response {
        let writer = ResultWriter(table: table, format: format, infos: [("QUERY", String(query.prefix(4096)))])
        return Response(status: .ok, headers: [.contentType: format.contentType], body: ResponseBody { body in
            defer { withExtendedLifetime(cells) {} }
            try await writer.write { chunk in try await body.write(ByteBuffer(bytes: chunk)) }
            try await body.finish(nil)
        })
    }

    // MARK: Parameters

    /// A request's parameters (from its query string, then a form or multipart body), and the
    /// parts of a multipart body (a TAP UPLOAD's tables).
    struct RequestForm {
        /// Every value of each parameter; names upper-cased (DALI's names are case-insensitive).
        var lists: [String: [String]] = [:]
        var parts: [String: [UInt8]] = [:]
        /// The first value of each parameter.
        var first: [String: String] { lists.compactMapValues(\.first) }
    }

    /// The request's parameters and parts. A body is read up to `limit` bytes, a multipart one
    /// (uploads) up to `multipartLimit` where given.
    static func form(_ request: Request, limit: Int, multipartLimit: Int? = nil) async throws -> RequestForm {
        var out = RequestForm()
        formFieldLists(request.uri.query ?? "", into: &out.lists)
        guard request.method == .post else { return out }
        let type = request.headers[.contentType] ?? ""
        let multipart = type.lowercased().hasPrefix("multipart/")
        let most = multipart ? multipartLimit ?? limit : limit
        let body: ByteBuffer
        do {
            body = try await request.body.collect(upTo: most)
        } catch {
            throw TAPError(413, "the request body is over this service's limit of \(most) bytes\(multipart ? " for a multipart (upload) request" : "")")
        }
        if multipart {
            let parsed = try MultipartForm.parse(Array(buffer: body), contentType: type)
            for (k, v) in parsed.fields { out.lists[k, default: []] += v }
            out.parts = parsed.parts
        } else {
            formFieldLists(String(buffer: body), into: &out.lists)
        }
        return out
    }

    /// The request's parameters, the first value of each (names upper-cased).
    static func parameters(_ request: Request, limit: Int) async throws -> [String: String] {
        try await form(request, limit: limit).first
    }

    /// Every value of each parameter, from the query string and then the body; names upper-cased.
    static func parameterLists(_ request: Request, limit: Int) async throws -> [String: [String]] {
        try await form(request, limit: limit).lists
    }

    /// Adds the fields of `application/x-www-form-urlencoded` text (a query string or a form
    /// body: `+` is a space, `%XX` a byte), the first value of each name.
    static func formFields(_ text: String, into out: inout [String: String]) {
        var lists: [String: [String]] = [:]
        formFieldLists(text, into: &lists)
        for (k, v) in lists where out[k] == nil { out[k] = v.first }
    }

    /// Every value of each field (SODA and DataLink may repeat one), names upper-cased.
    static func formFieldLists(_ text: String, into out: inout [String: [String]]) {
        for pair in text.utf8.split(separator: UInt8(ascii: "&")) {
            let kv = pair.split(separator: UInt8(ascii: "="), maxSplits: 1, omittingEmptySubsequences: false).map(formDecoded)
            guard let k = kv.first, !k.isEmpty else { continue }
            out[k.uppercased(), default: []].append(kv.count > 1 ? kv[1] : "")
        }
    }

    /// One form-encoded value: `+` a space, `%XX` a byte; a `%` not followed by two hex digits
    /// stays as it is, and bytes that are not UTF-8 become U+FFFD.
    static func formDecoded(_ bytes: Substring.UTF8View.SubSequence) -> String {
        func hex(_ b: UInt8) -> UInt8? {
            switch b {
            case 48...57: b - 48
            case 65...70: b - 55
            case 97...102: b - 87
            default: nil
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var i = bytes.startIndex
        while i < bytes.endIndex {
            let b = bytes[i]
            if b == UInt8(ascii: "+") {
                out.append(32)
            } else if b == UInt8(ascii: "%"), let j = bytes.index(i, offsetBy: 2, limitedBy: bytes.endIndex), j < bytes.endIndex,
                      let hi = hex(bytes[bytes.index(after: i)]), let lo = hex(bytes[j]) {
                out.append(hi << 4 | lo)
                i = j
            } else {
                out.append(b)
            }
            i = bytes.index(after: i)
        }
        return String(decoding: out, as: UTF8.self)
    }

    // MARK: Documents

    /// The gateway's address as the client reached it, for links in documents and redirects:
    /// the request's authority when it is a plain `host[:port]` (a name, IPv4 or [IPv6]),
    /// else the address the gateway listens on. Nothing else from the header reaches a link.
    static func baseURL(_ request: Request, config: GatewayConfiguration) -> String {
        if let url = config.publicURL { return url }
        if let host = request.head.authority, isPlainAuthority(host) { return "http://\(host)" }
        let h = config.host.contains(":") ? "[\(config.host)]" : config.host
        return "http://\(h):\(config.port)"
    }

    static func isPlainAuthority(_ a: String) -> Bool {
        guard !a.isEmpty, a.utf8.count <= 255 else { return false }
        var hostPart = Substring(a)
        if a.hasPrefix("[") {
            guard let close = a.firstIndex(of: "]") else { return false }
            let inside = a[a.index(after: a.startIndex)..<close]
            guard !inside.isEmpty, inside.allSatisfy({ $0.isHexDigit || $0 == ":" || $0 == "." }) else { return false }
            hostPart = a[a.index(after: close)...]
            if hostPart.isEmpty { return true }
            guard hostPart.first == ":" else { return false }
            return hostPart.dropFirst().allSatisfy(\.isASCII) && UInt16(hostPart.dropFirst()) != nil
        }
        if let colon = a.lastIndex(of: ":") {
            guard UInt16(a[a.index(after: colon)...]) != nil else { return false }
            hostPart = a[..<colon]
        }
        return !hostPart.isEmpty && hostPart.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "." || $0 == "-") }
    }

    static func text(_ status: Int, _ s: String) -> Response {
        Response(status: .init(code: status), headers: [.contentType: "text/plain;charset=utf-8"], body: .init(byteBuffer: ByteBuffer(string: s)))
    }

    static func xml(_ status: Int, _ s: String, contentType: String = "text/xml;charset=utf-8") -> Response {
        Response(status: .init(code: status), headers: [.contentType: contentType], body: .init(byteBuffer: ByteBuffer(string: s)))
    }

    static func redirect(_ url: String) -> Response {
        Response(status: .seeOther, headers: [.location: url], body: .init())
    }

    /// An error as TAP returns it: an ERROR VOTable with the HTTP status.
    public static func errorResponse(_ status: Int, _ message: String) -> Response {
        xml(status, ResultWriter.errorVOTable(message), contentType: "application/x-votable+xml")
    }

    /// An HTTP date (RFC 9110's IMF-fixdate).
    static func httpDate(_ d: Date) -> String {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "GMT")
        f.dateFormat = "EEE, dd MMM yyyy HH:mm:ss 'GMT'"
        return f.string(from: d)
    }

    static func iso(_ d: Date) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime]
        return f.string(from: d)
    }

    static func parseISO(_ s: String) -> Date? {
        let f = ISO8601DateFormatter()
        for opts: ISO8601DateFormatter.Options in [[.withInternetDateTime], [.withInternetDateTime, .withFractionalSeconds]] {
            f.formatOptions = opts
            if let d = f.date(from: s) { return d }
        }
        return nil
    }

    static func jobDocument(_ j: AsyncJobs.Job, base: String) -> String {
        func time(_ d: Date?) -> String { d.map { ">\(iso($0))<" } ?? " xsi:nil=\"true\"/><" }
        var s = """
            <?xml version="1.0" encoding="UTF-8"?>
            <uws:job xmlns:uws="http://www.ivoa.net/xml/UWS/v1.0" xmlns:xlink="http://www.w3.org/1999/xlink" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" version="1.1">
              <uws:jobId>\(j.id)</uws:jobId>
              <uws:ownerId>\(ResultWriter.xml(j.owner))</uws:ownerId>
              <uws:phase>\(j.phase.rawValue)</uws:phase>
              <uws:quote xsi:nil="true"/>
              <uws:creationTime>\(iso(j.created))</uws:creationTime>

            """
        s += j.started.map { "  <uws:startTime>\(iso($0))</uws:startTime>\n" } ?? "  <uws:startTime xsi:nil=\"true\"/>\n"
        s += j.ended.map { "  <uws:endTime>\(iso($0))</uws:endTime>\n" } ?? "  <uws:endTime xsi:nil=\"true\"/>\n"
        s += "  <uws:executionDuration>\(j.executionDuration)</uws:executionDuration>\n"
        s += "  <uws:destruction>\(iso(j.destruction))</uws:destruction>\n"
        s += parametersElement(j)
        s += "  <uws:results>\n"
        if j.result != nil { s += "    <uws:result id=\"result\" xlink:href=\"\(base)/tap/async/\(j.id)/results/result\"/>\n" }
        s += "  </uws:results>\n"
        if let e = j.error {
            s += "  <uws:errorSummary type=\"fatal\" hasDetail=\"true\"><uws:message>\(ResultWriter.xml(e))</uws:message></uws:errorSummary>\n"
        }
        _ = time
        return s + "</uws:job>\n"
    }

    static func parametersElement(_ j: AsyncJobs.Job) -> String {
        var s = "  <uws:parameters>\n"
        for (k, v) in j.parameters.sorted(by: { $0.key < $1.key }) {
            s += "    <uws:parameter id=\"\(ResultWriter.xml(k))\">\(ResultWriter.xml(v))</uws:parameter>\n"
        }
        return s + "  </uws:parameters>\n"
    }

    static func parametersDocument(_ j: AsyncJobs.Job) -> String {
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n" + parametersElement(j)
            .replacingOccurrences(of: "  <uws:parameters>", with: "<uws:parameters xmlns:uws=\"http://www.ivoa.net/xml/UWS/v1.0\">")
    }

    static func resultsDocument(_ j: AsyncJobs.Job, base: String) -> String {
        var s = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<uws:results xmlns:uws=\"http://www.ivoa.net/xml/UWS/v1.0\" xmlns:xlink=\"http://www.w3.org/1999/xlink\">\n"
        if j.result != nil { s += "  <uws:result id=\"result\" xlink:href=\"\(base)/tap/async/\(j.id)/results/result\"/>\n" }
        return s + "</uws:results>\n"
    }

    static func capabilities(base: String, limits: GatewayLimits) -> String {
        var formats = ""
        for f in ResultFormat.advertised {
            let id = f.alias == "votable/td" ? " ivo-id=\"ivo://ivoa.net/std/TAPRegExt#output-votable-td\""
                : f.alias == "votable/b2" || f.alias == "votable" ? " ivo-id=\"ivo://ivoa.net/std/TAPRegExt#output-votable-binary2\"" : ""
            formats += "    <outputFormat\(id)><mime>\(ResultWriter.xml(f.mime))</mime><alias>\(f.alias)</alias></outputFormat>\n"
        }
        let geometry = ["POINT", "CIRCLE", "BOX", "POLYGON", "CONTAINS", "INTERSECTS", "DISTANCE"]
            .map { "        <feature><form>\($0)</form></feature>\n" }.joined()
        return """
            <?xml version="1.0" encoding="UTF-8"?>
            <vosi:capabilities xmlns:vosi="http://www.ivoa.net/xml/VOSICapabilities/v1.0" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:vr="http://www.ivoa.net/xml/VOResource/v1.0" xmlns:vs="http://www.ivoa.net/xml/VODataService/v1.1" xmlns:tr="http://www.ivoa.net/xml/TAPRegExt/v1.0">
              <capability standardID="ivo://ivoa.net/std/TAP" xsi:type="tr:TableAccess">
                <interface xsi:type="vs:ParamHTTP" role="std" version="1.1">
                  <accessURL use="base">\(base)/tap</accessURL>
                </interface>
                <language>
                  <name>ADQL</name>
                  <version ivo-id="ivo://ivoa.net/std/ADQL#v2.0">2.0</version>
                  <description>A subset of ADQL: one table or a positional join, WHERE, GROUP BY one key, ORDER BY, TOP</description>
                  <languageFeatures type="ivo://ivoa.net/std/TAPRegExt#features-udf">
                    <feature><form>mag(flux DOUBLE) -> DOUBLE</form><description>AB magnitude of a flux in nJy: 31.4 - 2.5 log10(flux)</description></feature>
                  </languageFeatures>
                  <languageFeatures type="ivo://ivoa.net/std/TAPRegExt#features-adqlgeo">
            \(geometry)      </languageFeatures>
                </language>
            \(formats)    <uploadMethod ivo-id="ivo://ivoa.net/std/TAPRegExt#upload-inline"/>
                <uploadMethod ivo-id="ivo://ivoa.net/std/TAPRegExt#upload-http"/>
                <uploadMethod ivo-id="ivo://ivoa.net/std/TAPRegExt#upload-https"/>
                <retentionPeriod><default>\(Int(limits.asyncRetentionSeconds))</default><hard>\(Int(limits.asyncRetentionSeconds))</hard></retentionPeriod>
                <executionDuration><default>600</default><hard>\(AsyncJobs.maxExecutionDuration)</hard></executionDuration>
                <outputLimit><default unit="row">\(limits.defaultMaxrec)</default><hard unit="row">\(limits.maxrecLimit)</hard></outputLimit>
                <uploadLimit><default unit="byte">\(limits.upload.bytes)</default><hard unit="byte">\(limits.upload.bytes)</hard></uploadLimit>
              </capability>
              <capability standardID="ivo://ivoa.net/std/DALI#examples">
                <interface xsi:type="vr:WebBrowser"><accessURL use="full">\(base)/tap/examples</accessURL></interface>
              </capability>
              <capability standardID="ivo://ivoa.net/std/VOSI#capabilities">
                <interface xsi:type="vs:ParamHTTP"><accessURL use="full">\(base)/tap/capabilities</accessURL></interface>
              </capability>
              <capability standardID="ivo://ivoa.net/std/VOSI#availability">
                <interface xsi:type="vs:ParamHTTP"><accessURL use="full">\(base)/tap/availability</accessURL></interface>
              </capability>
              <capability standardID="ivo://ivoa.net/std/VOSI#tables-1.1">
                <interface xsi:type="vs:ParamHTTP" version="1.1"><accessURL use="full">\(base)/tap/tables</accessURL></interface>
              </capability>
            </vosi:capabilities>

            """
    }

    /// DALI's examples document: queries of the first table the user can read, each runnable.
    static func examples(_ tables: [ADQLTable]) -> String {
        var items: [(id: String, name: String, about: String, query: String)] = [
            ("tables", "The tables", "What this service holds, from TAP_SCHEMA.", "SELECT table_name, description FROM TAP_SCHEMA.tables"),
        ]
        if let t = tables.first {
            let name = TAPService.queryName(t), ra = ADQLParser.delimited(t.raColumn), dec = ADQLParser.delimited(t.decColumn)
            items.append(("cone", "A cone search", "Rows within 0.1° of a position, nearest first.",
                          "SELECT TOP 100 *, DISTANCE(POINT('ICRS', \(ra), \(dec)), POINT('ICRS', 60, -35)) AS d FROM \(name) WHERE CONTAINS(POINT('ICRS', \(ra), \(dec)), CIRCLE('ICRS', 60, -35, 0.1)) = 1 ORDER BY d"))
            items.append(("count", "Counting", "Rows of the whole table.", "SELECT COUNT(*) FROM \(name)"))
        }
        var s = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<html xmlns=\"http://www.w3.org/1999/xhtml\"><head><title>Tessera TAP examples</title></head><body vocab=\"http://www.ivoa.net/rdf/examples#\">\n"
        for e in items {
            s += "<div id=\"\(e.id)\" resource=\"#\(e.id)\" typeof=\"example\">\n<h2 property=\"name\">\(e.name)</h2>\n<p>\(ResultWriter.xml(e.about))</p>\n"
            s += "<pre class=\"dali-example\" property=\"query\">\(ResultWriter.xml(e.query))</pre>\n</div>\n"
        }
        return s + "</body></html>\n"
    }

    static func tableset(_ tables: [ADQLTable]) -> String {
        var s = """
            <?xml version="1.0" encoding="UTF-8"?>
            <vosi:tableset xmlns:vosi="http://www.ivoa.net/xml/VOSITables/v1.0" xmlns:vs="http://www.ivoa.net/xml/VODataService/v1.1" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">

            """
        func column(_ name: String, _ description: String, _ unit: String, _ ucd: String, _ type: String, indexed: Bool) -> String {
            var c = "      <column><name>\(ResultWriter.xml(ADQLParser.delimited(name)))</name>"
            if !description.isEmpty { c += "<description>\(ResultWriter.xml(description))</description>" }
            if !unit.isEmpty { c += "<unit>\(ResultWriter.xml(unit))</unit>" }
            if !ucd.isEmpty { c += "<ucd>\(ResultWriter.xml(ucd))</ucd>" }
            c += "<dataType xsi:type=\"vs:VOTableType\"\(type == "char" ? " arraysize=\"*\"" : "")>\(type)</dataType>"
            if indexed { c += "<flag>indexed</flag>" }
            return c + "</column>\n"
        }
        s += "  <schema><name>\(TAPService.catalogSchema)</name><description>the survey's catalogs, and users' own tables</description>\n"
        for t in tables {
            s += "    <table type=\"base_table\"><name>\(ResultWriter.xml(TAPService.queryName(t)))</name>"
            if !t.description.isEmpty { s += "<description>\(ResultWriter.xml(t.description))</description>" }
            s += "\n"
            for c in t.columns {
                s += column(c.name, c.description, c.unit, c.ucd, TAPService.datatype(c.type), indexed: TAPService.isIndexed(c.name, of: t))
            }
            s += "    </table>\n"
        }
        s += "  </schema>\n  <schema><name>TAP_SCHEMA</name><description>the tables that describe this service</description>\n"
        for m in TAPService.tapSchema([]) {
            s += "    <table type=\"table\"><name>\(m.qualifiedName)</name><description>\(ResultWriter.xml(m.description))</description>\n"
            for c in m.columns { s += column(c.name, c.description, "", "", c.datatype, indexed: false) }
            for k in TAPService.tapSchemaKeys where k.from == m.qualifiedName {
                s += "      <foreignKey><targetTable>\(k.target)</targetTable><fkColumn><fromColumn>\(k.fromColumn)</fromColumn><targetColumn>\(k.targetColumn)</targetColumn></fkColumn></foreignKey>\n"
            }
            s += "    </table>\n"
        }
        return s + "  </schema>\n</vosi:tableset>\n"
    }
}
