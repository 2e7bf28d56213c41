import ArgumentParser
import Dispatch
import Foundation
import Logging
import Synchronization
import TesseraClient
import TesseraGateway
import TesseraSecurity

/// `tessera gateway`: the HTTP gateway (TAP, VOSI, TAP_SCHEMA) in front of a scheduler.
struct GatewayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway",
        abstract: "Serve the cluster over HTTP: TAP 1.1 with ADQL (sync and async), VOSI and TAP_SCHEMA; stop on Ctrl-C or SIGTERM.")

    @OptionGroup var target: SchedulerTarget

    @Option(help: "Address and port to listen on.")
    var listen = "127.0.0.1:7780"

    @Option(help: "The bearer tokens file (`tessera token create USER`).")
    var tokens = "tessera-data/gateway-tokens"

    @Flag(help: "Let requests without a token in, as user `anonymous` (loopback addresses only).")
    var anonymous = false

    @Flag(help: "Let TAP UPLOAD fetch tables by URL from loopback and private addresses too (default: public addresses only).")
    var uploadsFromPrivateAddresses = false

    @Option(help: "The URL clients reach the gateway at, when a proxy stands in front (e.g. https://archive.example/tessera); links and redirects use it. Default: the request's Host, over http.")
    var publicUrl: String?

    @Option(help: "The folder of HiPS trees served at /hips/NAME/ (tessera hips -o FOLDER/NAME).")
    var hipsDir = "tessera-data/hips"

    @Flag(help: "Serve the HiPS trees without a token (a portal's sky viewer fetches tiles by URL alone).")
    var publicHips = false

    @Option(help: "Requests one user may have in progress at once (one client address, for requests without a token).")
    var maxRequestsPerUser = 8

    @Option(help: "Requests without a token (public paths, and --public-hips tiles) served at once, from all addresses together.")
    var maxRequestsWithoutToken = 256

    @Option(help: "Requests served at once, from everyone together (with a token or without); beyond it, 429 with Retry-After.")
    var maxRequests = 1_024

    @Option(help: "Cells (rows × columns) of TAP sync answers held at once, for all requests together; an answer that would pass it is stopped and refused (503).")
    var maxAnswerCells = 100_000_000

    @Option(help: "A proxy in front of the gateway whose X-Forwarded-For names the client of a request without a token (repeatable; an IP address). From any other address that header is ignored.")
    var trustedProxy: [String] = []

    @Option(help: "Seconds a client may leave a part of an answer untaken before its connection is closed (and its request's place given back).")
    var sendTimeoutSeconds = 60

    @Option(help: "Seconds a stopping gateway (SIGTERM, Ctrl-C) waits for the requests in progress before it closes their connections; keep it below the platform's own grace (Kubernetes: 30 s).")
    var shutdownGraceSeconds = 20

    @Option(help: "The longest QUERY, in characters.")
    var maxQueryChars = 16_384

    @Option(help: "Rows returned when MAXREC is not given.")
    var defaultMaxrec = 100_000

    @Option(help: "The largest MAXREC a request may give.")
    var maxrecLimit = 2_000_000

    func validate() throws {
        guard (1...1024).contains(maxRequestsPerUser) else { throw ValidationError("--max-requests-per-user must be 1…1024") }
        guard (1...86_400).contains(sendTimeoutSeconds) else { throw ValidationError("--send-timeout-seconds must be 1…86400") }
        guard (0...3600).contains(shutdownGraceSeconds) else { throw ValidationError("--shutdown-grace-seconds must be 0…3600") }
        guard (1...65536).contains(maxRequestsWithoutToken) else { throw ValidationError("--max-requests-without-token must be 1…65536") }
        guard (1...65536).contains(maxRequests) else { throw ValidationError("--max-requests must be 1…65536") }
        guard (1...10_000_000_000).contains(maxAnswerCells) else { throw ValidationError("--max-answer-cells must be 1…10000000000") }
        for proxy in trustedProxy where ClientAddress.address(proxy) == nil {
            throw ValidationError("--trusted-proxy must be an IP address (203.0.113.5, 2001:db8::1), got `\(proxy.prefix(80))`")
        }
        guard (64...1_000_000).contains(maxQueryChars) else { throw ValidationError("--max-query-chars must be 64…1000000") }
        guard maxrecLimit >= 1, (0...maxrecLimit).contains(defaultMaxrec) else { throw ValidationError("--default-maxrec must be 0…--maxrec-limit") }
        _ = try GatewayCommand.hostPort(listen)
        if let publicUrl, Gateway.publicURL(publicUrl) == nil {
            throw ValidationError("--public-url must be an http:// or https:// URL with a plain host[:port] and no quotes or spaces: `\(publicUrl.prefix(80))`")
        }
    }

    static func hostPort(_ s: String) throws -> (String, Int) {
        guard let colon = s.lastIndex(of: ":"), let port = Int(s[s.index(after: colon)...]), (0...65535).contains(port) else {
            throw ValidationError("`\(s)` is not HOST:PORT")
        }
        return (String(s[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]")), port)
    }

    func configuration() throws -> GatewayConfiguration {
        var c = GatewayConfiguration(scheduler: target.scheduler)
        (c.host, c.port) = try Self.hostPort(listen)
        c.tokensPath = tokens
        c.anonymous = anonymous
        c.uploadsFromPrivateAddresses = uploadsFromPrivateAddresses
        c.publicURL = publicUrl.flatMap(Gateway.publicURL)
        c.hipsRoot = hipsDir
        c.publicHiPS = publicHips
        c.limits.concurrentRequestsPerUser = maxRequestsPerUser
        c.limits.requestsWithoutToken = maxRequestsWithoutToken
        c.limits.requestsInProgress = maxRequests
        c.limits.answerCellsInProgress = maxAnswerCells
        c.limits.sendTimeoutSeconds = sendTimeoutSeconds
        c.shutdownGraceSeconds = shutdownGraceSeconds
        c.trustedProxies = Set(trustedProxy.compactMap { ClientAddress.address($0) })
        c.limits.queryCharacters = maxQueryChars
        c.limits.defaultMaxrec = defaultMaxrec
        c.limits.maxrecLimit = maxrecLimit
        return c
    }

    func run() throws {
        if let key = target.key { CredentialStore.register(.curve(try KeyFile.read(key)), for: target.scheduler) }
        try Self.serve(try configuration()).wait()
    }

    /// Starts the gateway on the concurrency pool; the handle waits for it to end (after
    /// SIGTERM or SIGINT, once the requests in progress finish).
    static func serve(_ config: GatewayConfiguration, onListening: @escaping @Sendable (Int) -> Void = { port in
        print("tessera gateway: listening on http://127.0.0.1:\(port)/tap")
        fflush(nil)
    }) -> GatewayHandle {
        let handle = GatewayHandle()
        var logger = Logger(label: "tessera.gateway")
        logger.logLevel = ProcessInfo.processInfo.environment["TESSERA_LOG"].flatMap(Logger.Level.init(rawValue:)) ?? .info
        Task.detached {
            do {
                try await Gateway.run(config, logger: logger) { port in onListening(port) }
                handle.finish(nil)
            } catch {
                handle.finish("\(error)")
            }
        }
        return handle
    }
}

/// A gateway running in this process.
final class GatewayHandle: Sendable {
    private let done = DispatchSemaphore(value: 0)
    private let failure = Mutex<String?>(nil)

    func finish(_ error: String?) {
        failure.withLock { $0 = error }
        done.signal()
    }

    /// Blocks until the gateway stops; throws if it failed.
    func wait() throws {
        done.wait()
        if let e = failure.withLock({ $0 }) { throw ValidationError("the gateway stopped: \(e)") }
    }
}

/// `tessera token`: bearer tokens for the gateway.
struct TokenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token", abstract: "Bearer tokens for the HTTP gateway.", subcommands: [Create.self])

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make a token for USER: printed once, its hash kept in the tokens file (the gateway reads it again when it changes).")

        @Argument(help: "The Tessera user the token acts as.")
        var user: String

        @Option(help: "The tokens file.")
        var tokens = "tessera-data/gateway-tokens"

        func run() throws {
            try FileManager.default.createDirectory(atPath: (tokens as NSString).deletingLastPathComponent.isEmpty ? "." : (tokens as NSString).deletingLastPathComponent,
                                                    withIntermediateDirectories: true)
            print(try TokenStore.create(user: user, path: tokens))
        }
    }
}
