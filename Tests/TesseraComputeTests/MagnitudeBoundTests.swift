import Foundation
import Testing
@testable import TesseraCompute

/// `mag(f) op c` evaluated as a bound on the flux: the same rows as the magnitude computed per
/// row and compared as written, at the threshold and next to it, for Float32 and Float64
/// columns, both ways round, with NaN, zero, negative, infinite and subnormal fluxes.
@Suite struct MagnitudeBoundTests {
    static let ops = ["<", "<=", ">", ">="]

    /// Fluxes on, around and far from each threshold.
    static func fluxes(around cuts: [Double]) -> [Double] {
        var out: [Double] = [.nan, 0, -0.0, -1, -1e30, .infinity, -.infinity, 5e-324, 1e-310, .leastNormalMagnitude, 1, 1e30]
        var rng = SplitMix64(seed: 8)
        for c in cuts {
            let t = pow(10, (31.4 - c) / 2.5)
            var x = t
            for _ in 0..<40 { out.append(x); x = x.nextUp }
            x = t
            for _ in 0..<40 { out.append(x); x = x.nextDown }
            for k in [1e-15, 1e-12, 1e-10, 1e-9, 2e-9, 1e-6, 0.01, 0.5] { out += [t * (1 + k), t * (1 - k)] }
            // The Float32 values nearest the threshold.
            var f = Float(t)
            for _ in 0..<8 { out.append(Double(f)); out.append(Double(f.nextUp)); out.append(Double(f.nextDown)); f = f.nextUp }
            for _ in 0..<200 { out.append(t * Double.random(in: 0.9...1.1, using: &rng)) }
        }
        return out
    }

    @Test func theBoundPicksTheRowsTheWrittenComparisonPicks() throws {
        let cuts = [24.0, 20, 22.5, 16.123456789, 31.4, 0, 40, -5, 1000, -1000]
        let values = Self.fluxes(around: cuts)
        let floats = values.map { Float($0) }
        for c in cuts {
            for op in Self.ops {
                for text in ["mag(r_psfFlux) \(op) \(c)", "\(c) \(op) mag(r_psfFlux)"] {
                    let e = try ExpressionChecker.check(text, schema: exprSchema)
                    guard case .binary(let o, let a, let b, _) = e.expression else { Issue.record("\(text) is not a comparison"); continue }
                    #expect(MagnitudeBound(o, a, b) != nil, "\(text) is rewritten")
                    let mirrored = text.hasPrefix("\(c)")
                    for (name, column) in [("Float64", ExpressionVector.numbers(values)), ("Float32", .floats(floats))] {
                        let got = ExpressionEvaluator.evaluate(e, columns: ["r_psfFlux": column], rows: values.count).booleans(values.count)
                        let xs = column.numbers(values.count)
                        // The written form, one row at a time: the magnitude as `mag` gives it, compared.
                        let want = xs.map { x -> Bool in
                            let m = FastLog.magnitude(x)
                            let (l, r) = mirrored ? (c, m) : (m, c)
                            switch op {
                            case "<": return l < r
                            case "<=": return l <= r
                            case ">": return l > r
                            default: return l >= r
                            }
                        }
                        let wrong = xs.indices.filter { got[$0] != want[$0] }
                        #expect(wrong.isEmpty, "\(text) on \(name): \(wrong.prefix(5).map { xs[$0] })")
                    }
                }
            }
        }
    }

    @Test func otherComparisonsAreLeftAsWritten() throws {
        for text in ["mag(r_psfFlux) == 24", "mag(r_psfFlux) != 24", "mag(r_psfFlux) < g_psfFlux", "log10(r_psfFlux) < 2", "mag(r_psfFlux + 1) < 24"] {
            let e = try ExpressionChecker.check(text, schema: exprSchema)
            guard case .binary(let o, let a, let b, _) = e.expression else { continue }
            let bound = MagnitudeBound(o, a, b)
            if text.hasPrefix("mag(r_psfFlux + 1)") {
                // Any flux expression is bounded the same way.
                #expect(bound != nil)
            } else {
                #expect(bound == nil, "\(text)")
            }
        }
        // The flux bound also prunes: a row group whose fluxes are all fainter than 24 is skipped.
        let e = try ExpressionChecker.check("mag(r_psfFlux) < 24", schema: exprSchema)
        let bounds = ColumnBound.conjuncts(of: e.expression)
        #expect(bounds.count == 1 && bounds[0].column == "r_psfFlux" && bounds[0].test == .greaterEqual)
        #expect(abs(bounds[0].value / pow(10, (31.4 - 24) / 2.5) - 1) < 1e-8)
    }
}
