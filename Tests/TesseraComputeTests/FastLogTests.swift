import Foundation
import Testing
@testable import TesseraCompute

@Suite struct FastLogTests {
    /// Within 3 ulp of glibc over 40 decades, at powers of two and ten, and table edges.
    @Test func staysWithinThreeUlpOfGlibc() {
        var rng = SplitMix64(seed: 17)
        var xs: [Double] = []
        for _ in 0..<200_000 { xs.append(Foundation.exp(Double(rng.next() >> 11) * 0x1p-53 * 184 - 92)) }
        for k in -60...60 { xs.append(Foundation.pow(2, Double(k))); xs.append(Foundation.pow(10, Double(k) / 3)) }
        for i in 0..<256 { xs.append(1 + Double(i) / 128); xs.append((1 + Double(i) / 128).nextDown * 1024) }
        let fast = FastLog.log10s(xs)
        var worst = 0.0
        for (x, f) in zip(xs, fast) {
            let exact = Foundation.log10(x)
            worst = max(worst, abs(f - exact) / exact.ulp)
        }
        #expect(worst <= 3)
    }

    /// The four-lane path for Float32 fluxes gives exactly the scalar path's magnitudes.
    @Test func vectorAndScalarMagnitudesAgree() {
        var rng = SplitMix64(seed: 5)
        var f: [Float] = []
        for k in 0..<20_003 {
            var x = Float(Foundation.exp(rng.nextUnit() * 30 - 3))
            if k % 501 == 0 { x = -x }
            if k % 777 == 0 { x = 1 }
            f.append(x)
        }
        let fast = FastLog.magnitudes(f)
        let scalar = FastLog.magnitudes(f.map(Double.init))
        #expect(zip(fast, scalar).allSatisfy { $0 == $1 || ($0.isNaN && $1.isNaN) })
    }

    /// Magnitudes, including fluxes near 1 (the table form there), subnormal and infinite ones,
    /// stay within 3 ulp of glibc's at the scale of the sum's terms (31.4 and 2.5 log10 f: a
    /// magnitude near 0 is a cancellation, and its own ulp means nothing), and one flux at a time
    /// gives exactly the kernel's value.
    @Test func magnitudesAgreeWithGlibc() {
        var rng = SplitMix64(seed: 23)
        var xs: [Double] = [.leastNonzeroMagnitude, .leastNormalMagnitude.nextDown, .infinity, 1, 0.25, 4, 0.2500001, 3.99999]
        for _ in 0..<100_000 { xs.append(Foundation.exp(rng.nextUnit() * 40 - 10)) }
        for _ in 0..<1000 { xs.append(0.2 + rng.nextUnit() * 4) }
        let fast = FastLog.magnitudes(xs)
        for (x, m) in zip(xs, fast) {
            let exact = -2.5 * Foundation.log10(x) + 31.4
            let scale = Swift.max(abs(exact), 31.4, abs(2.5 * Foundation.log10(x)))
            #expect(m == exact || abs(m - exact) <= 3 * scale.ulp, "mag(\(x)) = \(m), glibc \(exact)")
            #expect(FastLog.magnitude(x).bitPattern == m.bitPattern, "mag(\(x)) one at a time")
        }
    }

    @Test func specialValuesAreGlibcs() {
        let xs: [Double] = [0, -0.0, -1, .infinity, -.infinity, .nan, .leastNonzeroMagnitude, .leastNormalMagnitude, 1, 10, .greatestFiniteMagnitude]
        for (x, f) in zip(xs, FastLog.log10s(xs)) {
            let g = Foundation.log10(x)
            #expect(f == g || (f.isNaN && g.isNaN) || abs(f - g) <= 3 * g.ulp, "log10(\(x))")
        }
        let m = FastLog.magnitudes([0, -5, .nan, 3631e9])
        #expect(m[0].isNaN && m[1].isNaN && m[2].isNaN)
        #expect(abs(m[3] - (-2.5 * Foundation.log10(3631e9) + 31.4)) < 1e-12)
    }
}
