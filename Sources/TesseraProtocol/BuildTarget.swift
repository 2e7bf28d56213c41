#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// The processor features a build was compiled for. A release build on an x86-64 host with AVX2
/// and FMA targets them (`Package.swift`, x86-64-v3: the scans' kernels run four or eight lanes
/// wide instead of two); such a binary on a processor without them would die of SIGILL somewhere
/// in a scan, so each program checks first and says what to do.
public enum BuildTarget {
    /// The CPU features this binary was compiled to use (empty: the baseline of its architecture).
    public static var requiredFeatures: [String] {
        #if TESSERA_X86_64_V3
        ["avx2", "fma", "bmi2"]
        #else
        []
        #endif
    }

    /// The required features this machine's processor lacks, from the `flags` line of
    /// /proc/cpuinfo (nil: no such line to read, so unknown).
    public static func missingFeatures(_ required: [String] = requiredFeatures,
                                       cpuinfo: String? = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) -> [String]? {
        guard !required.isEmpty else { return [] }
        guard let cpuinfo, let flags = cpuinfo.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) else { return nil }
        let have = Set(flags.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == ":" }).map(String.init))
        return required.filter { !have.contains($0) }
    }

    /// Exits with a message naming the missing features, before any kernel runs, when this
    /// processor cannot run this build.
    public static func requireProcessor(program: String) {
        guard let missing = missingFeatures(), !missing.isEmpty else { return }
        let message = "\(program): this build uses \(missing.joined(separator: ", ")), which this processor lacks; "
            + "rebuild on this machine, or with TESSERA_TARGET_CPU=x86-64 for a build any x86-64 runs\n"
        FileHandle.standardError.write(Data(message.utf8))
        exit(70)  // EX_SOFTWARE
    }
}
