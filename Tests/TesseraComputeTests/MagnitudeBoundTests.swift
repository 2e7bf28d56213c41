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

    /// A filter's conjuncts applied as loops over their columns (``ColumnTest``) keep exactly the
    /// rows the evaluator keeps, conjunct by conjunct: booleans, Float32, Float64 and Int64
    /// columns, every comparison, magnitudes around their thresholds with NaN, zero and negative
    /// fluxes, over all rows and over a subset.
    @Test func columnTestsKeepTheRowsTheEvaluatorKeeps() throws {
        let flux = Self.fluxes(around: [24, 22.5, 20])
        let n = flux.count
        var rng = SplitMix64(seed: 21)
        // Small integers, and values around ±2^53, where widening to Double starts to round.
        let edges: [Int64] = [.max, .min, 1 << 53, (1 << 53) - 1, (1 << 53) + 1, -(1 << 53), -(1 << 53) - 1, -(1 << 53) + 1]
        let ext = (0..<n).map { i in i % 50 == 7 ? edges[(i / 50) % edges.count] : Int64(rng.next() % 3) - 1 }
        let primary = (0..<n).map { _ in rng.next() % 4 != 0 }
        let dec = (0..<n).map { _ in Double(rng.next() % 2000) / 10 - 100 }
        let filters = [
            "detect_isPrimary and refExtendedness == 0 and mag(r_psfFlux) < 24",
            "mag(r_psfFlux) >= 22.5 and r_psfFlux != 1 and not detect_isPrimary",
            "24 > mag(r_psfFlux) and refExtendedness <= 0.5 and coord_dec > -26.5",
            "mag(r_psfFlux) > 20 and 0 < refExtendedness and coord_dec <= 10 and -30 >= coord_dec",
            "refExtendedness != 0 and mag(r_psfFlux) <= 24 and r_psfFlux > 1e5 and coord_dec == 0",
            "refExtendedness < 9007199254740991 and refExtendedness != 1 and refExtendedness <= 5",
            "refExtendedness > 9007199254740990",
            "9007199254740990 <= refExtendedness and refExtendedness != 9007199254740991",
            "refExtendedness < 1 and refExtendedness > 0.5",
        ]
        let subset = (0..<n).filter { _ in rng.next() % 3 == 0 }
        for (fluxKind, fluxColumn) in [("Float64", ExpressionVector.numbers(flux)), ("Float32", .floats(flux.map { Float($0) }))] {
            for (extKind, extColumn) in [("Int64", ExpressionVector.integers(ext)), ("Float64", .numbers(ext.map { Double($0) }))] {
                let columns: [String: ExpressionVector] = ["r_psfFlux": fluxColumn, "refExtendedness": extColumn,
                                                           "detect_isPrimary": .booleans(primary), "coord_dec": .numbers(dec)]
                for text in filters {
                    let e = try ExpressionChecker.check(text, schema: exprSchema)
                    let conjuncts = FilterPlan.conjuncts(of: e)
                    #expect(conjuncts.allSatisfy { ColumnTest($0.expression) != nil }, "\(text): every conjunct is a column test")
                    // The evaluator, conjunct by conjunct, on every row.
                    var want = [Bool](repeating: true, count: n)
                    for c in conjuncts {
                        want = Kernels.logical(want, ExpressionEvaluator.evaluate(c, columns: columns, rows: n).booleans(n), and: true)
                    }
                    let got = FilterPlan.evaluate(conjuncts, columns: columns, rows: n)
                    let wrong = (0..<n).filter { got[$0] != want[$0] }
                    #expect(wrong.isEmpty, "\(text), flux \(fluxKind), refExtendedness \(extKind): rows \(wrong.prefix(5).map { flux[$0] })")
                    #expect(want.contains(true) || text.hasSuffix("== 0") || text.hasSuffix("> 0.5"), "\(text) keeps some rows")
                    let gotSome = FilterPlan.evaluate(conjuncts, columns: columns, rows: n, among: subset)
                    let inSubset = Set(subset)
                    let wrongSome = (0..<n).filter { gotSome[$0] != (want[$0] && inSubset.contains($0)) }
                    #expect(wrongSome.isEmpty, "\(text) among a subset, flux \(fluxKind): rows \(wrongSome.prefix(5))")
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
