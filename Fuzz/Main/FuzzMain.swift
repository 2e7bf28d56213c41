import Foundation
import TesseraBuildTarget
import TesseraFuzzHarness

#if canImport(Glibc)
import Glibc
#endif

/// The target this process fuzzes: `TESSERA_FUZZ_TARGET` (scripts/fuzz.sh sets it).
func makeHarness() -> FuzzHarness {
    let env = ProcessInfo.processInfo.environment
    guard let name = env["TESSERA_FUZZ_TARGET"], let target = FuzzTarget(rawValue: name) else {
        FileHandle.standardError.write(Data("set TESSERA_FUZZ_TARGET to one of: \(FuzzTarget.allCases.map(\.rawValue).joined(separator: ", "))\n".utf8))
        exit(2)
    }
    let scratch = env["TESSERA_FUZZ_SCRATCH"] ?? NSTemporaryDirectory() + "tessera-fuzz-\(name)-\(getpid())"
    do {
        return try FuzzHarness(target, scratch: scratch)
    } catch {
        FileHandle.standardError.write(Data("cannot set up the \(name) fuzz target: \(error)\n".utf8))
        exit(2)
    }
}

#if FUZZING
/// libFuzzer's entry point: one input, any bytes.
nonisolated(unsafe) var harness: FuzzHarness?

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    if harness == nil { harness = makeHarness() }
    harness?.run(data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? [])
    return 0
}

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<Int32>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32) -> Int32

/// SwiftPM links an executable's entry point as `<module>_main`, so the program starts here
/// and hands over to libFuzzer's driver.
@_cdecl("tessera_fuzz_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    BuildTarget.requireProcessor(program: "tessera-fuzz")
    // The target's fixture (a shard, a registry) is made before the first input, so its
    // one-time allocations are not charged to an input.
    harness = makeHarness()
    var count = argc
    var vector = argv
    return LLVMFuzzerRunDriver(&count, &vector, fuzzOneInput)
}
#else
/// Without the fuzzer: `tessera-fuzz seeds DIR` writes every target's seed corpus;
/// `tessera-fuzz replay TARGET FILE...` runs inputs through a target (a crash's reproducer).
@main
struct FuzzMain {
    static func main() throws {
        BuildTarget.requireProcessor(program: "tessera-fuzz")
        let args = Array(CommandLine.arguments.dropFirst())
        switch args.first {
        case "seeds" where args.count == 2:
            let scratch = NSTemporaryDirectory() + "tessera-fuzz-seeds-\(getpid())"
            for t in FuzzTarget.allCases {
                let dir = args[1] + "/" + t.rawValue
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
                for (name, bytes) in try FuzzSeeds.seeds(t, scratch: scratch) {
                    FileManager.default.createFile(atPath: dir + "/" + name, contents: Data(bytes))
                }
            }
        case "replay" where args.count >= 3:
            guard let t = FuzzTarget(rawValue: args[1]) else { throw CocoaError(.featureUnsupported) }
            let h = try FuzzHarness(t, scratch: NSTemporaryDirectory() + "tessera-fuzz-replay-\(getpid())")
            for path in args.dropFirst(2) { h.run(Array(try Data(contentsOf: URL(fileURLWithPath: path)))) }
            print("replayed \(args.count - 2) input(s) through \(t.rawValue): no crash")
        default:
            print("usage: tessera-fuzz seeds DIR | tessera-fuzz replay TARGET FILE...   (fuzzing itself: scripts/fuzz.sh TARGET SECONDS)")
        }
    }
}
#endif
