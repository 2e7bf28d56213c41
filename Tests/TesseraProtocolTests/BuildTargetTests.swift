import Testing
import TesseraBuildTarget

/// A build for x86-64-v3 or v4 reads the processor's flags before it runs anything: the features it
/// lacks are named, a processor it cannot judge is let through, and a baseline build needs none.
@Suite struct BuildTargetTests {
    static let v3 = ["avx2", "fma", "bmi2"]

    @Test func namesWhatTheProcessorLacks() {
        let old = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt avx\nbugs\t\t: spectre_v1\n"
        #expect(BuildTarget.missingFeatures(Self.v3, cpuinfo: old) == ["avx2", "fma", "bmi2"])
        let zen4 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 bmi1 bmi2 fma avx512f avx512dq\n"
        #expect(BuildTarget.missingFeatures(Self.v3, cpuinfo: zen4) == [])
        let noFMA = "flags\t: sse2 avx avx2 bmi2 fma4\n"
        #expect(BuildTarget.missingFeatures(Self.v3, cpuinfo: noFMA) == ["fma"], "fma4 is not fma")
    }

    /// A v4 build needs AVX-512's five subsets beyond v3: an AVX2 processor (Zen 3) lacks just
    /// those, one with AVX-512 F alone (Knights Landing has no BW, DQ or VL) the rest, and a
    /// Zen 4 nothing. The lists are Package.swift's: the build host is tested the same way.
    @Test func aV4BuildNeedsAVX512() {
        let zen3 = "flags\t\t: fpu sse2 avx avx2 bmi1 bmi2 f16c fma abm movbe popcnt xsave sha_ni\n"
        #expect(BuildTarget.missingFeatures(BuildTarget.x86_64_v3, cpuinfo: zen3) == [])
        #expect(BuildTarget.missingFeatures(BuildTarget.x86_64_v4, cpuinfo: zen3) == ["avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"])
        let knl = "flags\t\t: fpu sse2 avx avx2 bmi1 bmi2 f16c fma abm movbe popcnt xsave avx512f avx512cd avx512er avx512pf\n"
        #expect(BuildTarget.missingFeatures(BuildTarget.x86_64_v4, cpuinfo: knl) == ["avx512bw", "avx512dq", "avx512vl"])
        let zen4 = zen3.dropLast() + " avx512f avx512dq avx512ifma avx512cd avx512bw avx512vl avx512_bf16\n"
        #expect(BuildTarget.missingFeatures(BuildTarget.x86_64_v4, cpuinfo: String(zen4)) == [])
        #expect(BuildTarget.x86_64_v4.starts(with: BuildTarget.x86_64_v3))
    }

    @Test func unknownProcessorsAndBaselineBuildsPass() {
        #expect(BuildTarget.missingFeatures(Self.v3, cpuinfo: nil) == nil)
        #expect(BuildTarget.missingFeatures(Self.v3, cpuinfo: "processor : 0\nmodel name : something\n") == nil)
        #expect(BuildTarget.missingFeatures([], cpuinfo: "flags : sse2\n") == [])
        // This machine runs the tests, so it runs this build.
        #expect(BuildTarget.missingFeatures() == [])
    }
}
