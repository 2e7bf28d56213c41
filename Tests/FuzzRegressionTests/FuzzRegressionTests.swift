import Foundation
import Testing
import TesseraFuzzHarness
import TesseraTestKit

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
        let h = try FuzzHarness(target, scratch: temporaryFolder("fuzz-\(target.rawValue)"))
        for path in corpus + Self.files("regressions", target) {
            h.run(Array(try Data(contentsOf: URL(fileURLWithPath: path))))
        }
    }

    /// The image target's seeds reach the planning they are for: cutouts on the tract's patches
    /// and on the image on its own grid, a depth map of order 16 over four patches, a HiPS are
    /// planned into tasks; the pole-to-pole box, the 1e300″ annulus and the 1e-322-wide median
    /// histogram are refused in words (each once trapped the scheduler or a worker).
    @Test func imageSeedsReachTheirPlanning() throws {
        let h = try FuzzHarness(.images, scratch: temporaryFolder("fuzz-images-plan"))
        var outcomes: [String: String] = [:]
        for path in Self.files("corpus", .images) {
            outcomes[URL(fileURLWithPath: path).lastPathComponent] = h.imagePlan(Array(try Data(contentsOf: URL(fileURLWithPath: path))))
        }
        func planned(_ seed: String) -> Bool { outcomes[seed].map { $0.hasSuffix(" tasks") && !$0.hasPrefix("0 ") } ?? false }
        func refused(_ seed: String, _ words: String) -> Bool { outcomes[seed].map { $0.hasPrefix("refused:") && $0.contains(words) } ?? false }
        #expect(planned("i0") && planned("i1") && planned("i5"), "\(outcomes)")
        #expect(refused("i2", "larger than the limit"), "\(String(describing: outcomes["i2"]))")
        #expect(planned("i3") || refused("i3", "larger than the limit"), "\(String(describing: outcomes["i3"]))")
        #expect(planned("i4"), "\(String(describing: outcomes["i4"]))")
        #expect(refused("i6", "the annulus reaches"), "\(String(describing: outcomes["i6"]))")
        #expect(refused("i7", "cannot be cut into"), "\(String(describing: outcomes["i7"]))")
    }
}
