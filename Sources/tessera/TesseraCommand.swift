import ArgumentParser
import Foundation
import TesseraBuildTarget
import TesseraClient
import TesseraSecurity

/// `tessera`: run a local cluster, look at a cluster, benchmark it, and the demo.
@main
struct TesseraCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tessera",
        abstract: "Tessera: a code-to-the-data engine for survey astronomy.",
        subcommands: [DemoCommand.self, LocalCommand.self, KeysCommand.self, LimitsCommand.self, StatusCommand.self, GenerateCommand.self, IngestCommand.self, UploadCommand.self, QueryCommand.self, CrossmatchCommand.self, CutoutCommand.self, StackCommand.self, ImageStatsCommand.self, HiPSCommand.self, SubmitCommand.self, GatewayCommand.self, TokenCommand.self, BenchCommand.self])

    /// Refuses, with a message, a processor this build cannot run on; then parses and runs.
    static func main() {
        BuildTarget.requireProcessor(program: "tessera")
        do {
            var command = try parseAsRoot(nil)
            try command.run()
        } catch ClientError.interrupted(let jobs, let confirmed) {
            // Ctrl-C: the jobs were cancelled and the command's partial files removed.
            FileHandle.standardError.write(Data("\(ClientError.interrupted(jobs: jobs, confirmed: confirmed))\n".utf8))
            Foundation.exit(128 + max(Interrupts.signal, 0))
        } catch IngestError.interrupted {
            FileHandle.standardError.write(Data("\(IngestError.interrupted)\n".utf8))
            Foundation.exit(128 + max(Interrupts.signal, 0))
        } catch {
            exit(withError: error)
        }
    }
}

/// The default client endpoint of a cluster started with `tessera local`.
let defaultSchedulerEndpoint = "tcp://127.0.0.1:7700"

/// Which scheduler a command talks to, and with which key.
struct SchedulerTarget: ParsableArguments {
    @Option(help: "The scheduler's client endpoint (default: $TESSERA_SCHEDULER, else \(defaultSchedulerEndpoint)).")
    var scheduler = ProcessInfo.processInfo.environment["TESSERA_SCHEDULER"] ?? defaultSchedulerEndpoint

    @Option(help: "Your key file (from `tessera keys add-user`). Default: $TESSERA_KEY, else ./tessera-data/keys/user-local.key (made by `tessera local`), else none.")
    var key: String?

    /// A connection to the scheduler, authenticated with the key.
    /// Ctrl-C cancels the connection's jobs on the cluster, or stops its ingest before the
    /// commit, then ends the command (``Interrupts``).
    func connect(timeout: Double = 5) throws -> SchedulerConnection {
        let credentials: Credentials? = try key.map { .curve(try KeyFile.read($0)) }
        let conn = try SchedulerConnection(endpoint: scheduler, timeout: timeout, credentials: credentials)
        Interrupts.arm(conn)
        return conn
    }
}
