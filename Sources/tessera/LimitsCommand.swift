import ArgumentParser
import TesseraProtocol

/// `tessera limits`: what one request may ask of a cluster (the README's table, from the same values).
struct LimitsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "limits", abstract: "Print the limits every daemon enforces on what it is sent, as a Markdown table.")

    func run() {
        print(Limits.markdownTable)
    }
}
