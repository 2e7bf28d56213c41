import ArgumentParser
import Foundation
import TesseraSurvey

struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate", abstract: "Generate synthetic survey data.", subcommands: [GenerateCatalog.self])
}

struct GenerateCatalog: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "catalog",
        abstract: "Write a deterministic LSST-like object catalog as FITS binary tables (the same seed gives the same rows).")

    @Option(help: "Rows in all.")
    var rows = 1_000_000

    @Option(help: "Random seed.")
    var seed: UInt64 = 42

    @Option(help: "Output folder (created if missing).")
    var out: String

    @Option(help: "Rows per FITS file.")
    var rowsPerFile = 1_000_000

    func validate() throws {
        guard rows > 0 else { throw ValidationError("--rows must be positive") }
        guard rowsPerFile > 0 else { throw ValidationError("--rows-per-file must be positive") }
    }

    func run() throws {
        let start = Date()
        let paths = try SyntheticCatalog(seed: seed).writeFITS(rows: rows, rowsPerFile: rowsPerFile, to: out) { done, total in
            FileHandle.standardError.write(Data("\r  \(done)/\(total) rows".utf8))
        }
        FileHandle.standardError.write(Data("\n".utf8))
        print("wrote \(rows) rows in \(paths.count) files to \(out) in \(String(format: "%.1f", Date().timeIntervalSince(start))) s")
    }
}
