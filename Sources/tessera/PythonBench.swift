import ArgumentParser
import Foundation

/// `tessera bench python`: the Python client beside pyarrow and Dask, measured by the client's
/// own benchmark (`python -m tessera.bench`), with this build's daemons.
struct PythonBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "python",
        abstract: "The Python client: collect into pandas beside pyarrow, map_partitions beside Dask, Ctrl-C until idle (JSON lines).")

    @Option(help: "The Python with the client installed (pip install ./Clients/python pyarrow dask distributed).")
    var python = ".venv/bin/python"

    @Argument(parsing: .captureForPassthrough, help: "Arguments for `python -m tessera.bench` (--anchor DIR, --collect DIR, --only collect|map|cancel, ...).")
    var arguments: [String] = []

    func run() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: python.contains("/") ? python : "/usr/bin/env")
        p.arguments = (python.contains("/") ? [] : [python]) + ["-m", "tessera.bench"] + (arguments.first == "--" ? Array(arguments.dropFirst()) : arguments)
        var env = ProcessInfo.processInfo.environment
        // The daemons of this build, wherever the client looks for them.
        env["TESSERA_BIN_DIR"] = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent().path
        p.environment = env
        try p.run()
        p.waitUntilExit()
        if p.terminationStatus != 0 { throw ExitCode(p.terminationStatus) }
    }
}
