import ArgumentParser

/// `tessera`: run a local cluster, look at a cluster, benchmark it, and the demo.
@main
struct TesseraCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tessera",
        abstract: "Tessera: a code-to-the-data engine for survey astronomy.",
        subcommands: [DemoCommand.self, LocalCommand.self, StatusCommand.self, GenerateCommand.self, IngestCommand.self, QueryCommand.self, SubmitCommand.self, BenchCommand.self])
}

/// The default client endpoint of a cluster started with `tessera local`.
let defaultSchedulerEndpoint = "tcp://127.0.0.1:7700"
