import Testing
import TesseraBuildTarget

/// A build for x86-64-v3 reads the processor's flags before it runs anything: the features it
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

    @Test func unknownProcessorsAndBaselineBuildsPass() {
        #expect(BuildTarget.missingFeatures(Self.v3, cpuinfo: nil) == nil)
        #expect(BuildTarget.missingFeatures(Self.v3, cpuinfo: "processor : 0\nmodel name : something\n") == nil)
        #expect(BuildTarget.missingFeatures([], cpuinfo: "flags : sse2\n") == [])
        // This machine runs the tests, so it runs this build.
        #expect(BuildTarget.missingFeatures() == [])
    }
}
