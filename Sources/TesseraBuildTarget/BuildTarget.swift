#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// The processor features a build was compiled for. A release build on an x86-64-v3 or v4 host
/// targets them (`Package.swift`: the scans' kernels run four Float64 lanes wide instead of two,
/// and with AVX-512 compare into mask registers); such a binary on an older processor would die
/// of SIGILL somewhere in a scan, so each program checks first and says what to do. This module
/// alone is compiled for the baseline, so that the check itself runs anywhere.
public enum BuildTarget {
    /// What the compiler's "haswell" may emit on its own, as /proc/cpuinfo names it (lzcnt is
    /// "abm"). Package.swift tests the build host for the same lists (a manifest cannot import
    /// this module): change both together.
    public static let x86_64_v3 = ["avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "popcnt", "xsave"]
    /// What its "skylake-avx512" may emit on its own: v3 and AVX-512 F, CD, BW, DQ and VL (its
    /// other features, such as AES or CLWB, come only from intrinsics, which Tessera does not use).
    public static let x86_64_v4 = x86_64_v3 + ["avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"]

    /// The CPU features this binary was compiled to use (empty: the baseline of its architecture).
    public static var requiredFeatures: [String] {
        #if TESSERA_X86_64_V4
        x86_64_v4
        #elseif TESSERA_X86_64_V3
        x86_64_v3
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
        #if TESSERA_X86_64_V4
        let lower = ", or x86-64-v3 for AVX2 without AVX-512"
        #else
        let lower = ""
        #endif
        let message = "\(program): this build uses \(missing.joined(separator: ", ")), which this processor lacks; "
            + "rebuild on this machine, or with TESSERA_TARGET_CPU=x86-64 for a build any x86-64 runs\(lower)\n"
        FileHandle.standardError.write(Data(message.utf8))
        exit(70)  // EX_SOFTWARE
    }
}
