import Foundation
import Testing
import TesseraFuzzHarness

/// Every committed fuzz input — the seed corpora, and each crash the fuzzer ever found
/// (`Fuzz/regressions/TARGET/`) — runs through its harness without trapping.
struct FuzzRegressionTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path + "/Fuzz"

    static func files(_ folder: String, _ target: FuzzTarget) -> [String] {
        let dir = root + "/" + folder + "/" + target.rawValue
        return ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted().map { dir + "/" + $0 }
    }

    @Test(arguments: FuzzTarget.allCases)
    func committedInputsRunWithoutTrapping(_ target: FuzzTarget) throws {
        let corpus = Self.files("corpus", target)
        #expect(!corpus.isEmpty, "Fuzz/corpus/\(target.rawValue) has no seeds: run `tessera-fuzz seeds Fuzz/corpus`")
        let h = try FuzzHarness(target, scratch: NSTemporaryDirectory() + "tessera-fuzz-test-\(target.rawValue)-\(getpid())")
        for path in corpus + Self.files("regressions", target) {
            h.run(Array(try Data(contentsOf: URL(fileURLWithPath: path))))
        }
    }
}
