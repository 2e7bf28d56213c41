import Foundation
import Testing
@testable import TesseraCompute
import TesseraProtocol

let exprSchema: [String: ExpressionType] = [
    "r_psfFlux": .number, "g_psfFlux": .number, "i_psfFlux": .number, "refExtendedness": .number,
    "coord_ra": .number, "coord_dec": .number, "detect_isPrimary": .boolean, "cell": .number,
]

/// A per-row reference interpreter, written separately from the column kernels.
func referenceValue(_ e: ExpressionTree, _ row: [String: Double]) -> Double {
    func b(_ x: Bool) -> Double { x ? 1 : 0 }
    switch e {
    case .number(let v, _): return v
    case .integer(let k, _): return Double(k)
    case .column(let n, _): return row[n]!
    case .unary(.negate, let x, _): return -referenceValue(x, row)
    case .unary(.not, let x, _): return b(referenceValue(x, row) == 0)
    case .binary(let op, let l, let r, _):
        let x = referenceValue(l, row), y = referenceValue(r, row)
        switch op {
        case .add: return x + y
        case .subtract: return x - y
        case .multiply: return x * y
        case .divide: return x / y
        case .less: return b(x < y)
        case .lessEqual: return b(x <= y)
        case .greater: return b(x > y)
        case .greaterEqual: return b(x >= y)
        case .equal: return b(x == y)
        case .notEqual: return b(x != y)
        case .and: return b(x != 0 && y != 0)
        case .or: return b(x != 0 || y != 0)
        }
    case .call(let name, let args, _):
        let a = args.map { referenceValue($0, row) }
        switch name {
        case "abs": return Swift.abs(a[0])
        case "sqrt": return sqrt(a[0])
        case "log10": return log10(a[0])
        case "ln": return log(a[0])
        case "exp": return exp(a[0])
        case "pow": return pow(a[0], a[1])
        case "min": return a[0].isNaN || a[1].isNaN ? .nan : Swift.min(a[0], a[1])
        case "max": return a[0].isNaN || a[1].isNaN ? .nan : Swift.max(a[0], a[1])
        case "isnan": return b(a[0].isNaN)
        case "mag": return a[0] > 0 ? -2.5 * log10(a[0]) + 31.4 : .nan
        case "distance":
            // Haversine, an independent formula.
            let r = Double.pi / 180
            let h = pow(sin((a[3] - a[1]) * r / 2), 2) + cos(a[1] * r) * cos(a[3] * r) * pow(sin((a[2] - a[0]) * r / 2), 2)
            return 2 * asin(Swift.min(1, sqrt(h))) / r
        default: return .nan
        }
    }
}

@Suite struct ExpressionTests {
    func run(_ text: String, _ cols: [String: [Double]], bools: [String: [Bool]] = [:]) throws -> ExpressionVector {
        let e = try ExpressionChecker.check(text, schema: exprSchema)
        var c: [String: ExpressionVector] = cols.mapValues { .numbers($0) }
        for (k, v) in bools { c[k] = .booleans(v) }
        let n = cols.values.first?.count ?? bools.values.first?.count ?? 1
        return ExpressionEvaluator.evaluate(e, columns: c, rows: n)
    }

    @Test func precedenceAndAssociativity() throws {
        #expect(try run("1 + 2 * 3 - 4 / 2", [:]) == .constant(5))
        #expect(try run("-2 * -3", [:]) == .constant(6))
        #expect(try run("(1 + 2) * 3", [:]) == .constant(9))
        #expect(try run("10 - 4 - 3", [:]) == .constant(3))
        #expect(try run("2e3 + .5 + 1.5E-1", [:]) == .constant(2000.65))
        let v = try run("cell > 1 and cell < 4 or not cell != 0", ["cell": [0, 1, 2, 3, 4, 5]])
        #expect(v == .booleans([true, false, true, true, false, false]))
    }

    @Test func numpyNaNSemantics() throws {
        let x: [Double] = [1, .nan, 3]
        #expect(try run("cell < 2", ["cell": x]) == .booleans([true, false, false]))
        #expect(try run("cell == cell", ["cell": x]) == .booleans([true, false, true]))
        #expect(try run("cell != cell", ["cell": x]) == .booleans([false, true, false]))
        #expect(try run("isnan(cell)", ["cell": x]) == .booleans([false, true, false]))
        guard case .numbers(let m) = try run("min(cell, 2)", ["cell": x]) else { Issue.record("type"); return }
        #expect(m[0] == 1 && m[1].isNaN && m[2] == 2)
        guard case .numbers(let mags) = try run("mag(r_psfFlux)", ["r_psfFlux": [3631e9, 0, -5, .nan, 1]]) else { return }
        #expect(abs(mags[0] - (-2.5 * log10(3631e9) + 31.4)) < 1e-12)
        #expect(mags[1].isNaN && mags[2].isNaN && mags[3].isNaN)
        #expect(mags[4] == 31.4)
        guard case .numbers(let s) = try run("sqrt(cell) + log10(cell - 1)", ["cell": [-1, 1, 11]]) else { return }
        #expect(s[0].isNaN && s[1] == -.infinity && abs(s[2] - (sqrt(11) + 1)) < 1e-12)
    }

    /// Float32 columns are used as read (comparisons and magnitudes widen value by value): the
    /// answers are those of the same values widened first.
    @Test func float32ColumnsGiveTheSameAnswersAsWidenedOnes() throws {
        let f: [Float] = [-3, 0, 0.5, 1, 24, 912.7, 1e6, .nan, .infinity, 3.3e38]
        let wide = f.map(Double.init)
        for text in ["r_psfFlux > 912.7", "r_psfFlux <= 1", "1 < r_psfFlux", "24 >= r_psfFlux", "r_psfFlux == 0.5", "r_psfFlux != 1",
                     "mag(r_psfFlux) < 24", "log10(r_psfFlux) > 2", "r_psfFlux * 2 - 1 > 0", "mag(r_psfFlux) - mag(r_psfFlux) == 0"] {
            let e = try ExpressionChecker.check(text, schema: exprSchema)
            let asFloats = ExpressionEvaluator.evaluate(e, columns: ["r_psfFlux": .floats(f)], rows: f.count)
            let asDoubles = ExpressionEvaluator.evaluate(e, columns: ["r_psfFlux": .numbers(wide)], rows: f.count)
            #expect(asFloats == asDoubles, "\(text)")
        }
        let e = try ExpressionChecker.check("mag(r_psfFlux)", schema: exprSchema)
        guard case .numbers(let a) = ExpressionEvaluator.evaluate(e, columns: ["r_psfFlux": .floats(f)], rows: f.count),
              case .numbers(let b) = ExpressionEvaluator.evaluate(e, columns: ["r_psfFlux": .numbers(wide)], rows: f.count) else {
            Issue.record("mag gives numbers")
            return
        }
        #expect(zip(a, b).allSatisfy { $0 == $1 || ($0.isNaN && $1.isNaN) })
    }

    @Test func distanceMatchesHaversineFromTinyToLarge() throws {
        let cases: [(Double, Double, Double, Double)] = [
            (10, 20, 10 + 1e-9, 20), (0, 0, 180, 0), (359.9, -30, 0.1, -30), (45, 89.999, 225, 89.999), (12, -45, 13, -44),
        ]
        let e = try ExpressionChecker.check("distance(coord_ra, coord_dec, cell, r_psfFlux)", schema: exprSchema)
        for (a, b, c, d) in cases {
            let v = ExpressionEvaluator.evaluate(e, columns: ["coord_ra": .numbers([a]), "coord_dec": .numbers([b]),
                                                              "cell": .numbers([c]), "r_psfFlux": .numbers([d])], rows: 1).numbers(1)[0]
            let ref = referenceValue(e.expression, ["coord_ra": a, "coord_dec": b, "cell": c, "r_psfFlux": d])
            #expect(abs(v - ref) <= 1e-9 * max(ref, 1e-6), "\(a),\(b) → \(c),\(d): \(v) vs \(ref)")
        }
    }

    /// Random expressions over random rows: the column kernels agree with the per-row interpreter.
    @Test func columnKernelsAgreeWithARowInterpreter() throws {
        var rng = SplitMix64(seed: 17)
        let n = 500
        var cols: [String: [Double]] = [:]
        for name in ["r_psfFlux", "g_psfFlux", "cell"] {
            cols[name] = (0..<n).map { i in i % 37 == 0 ? .nan : (rng.nextUnit() - 0.3) * 100 }
        }
        let texts = [
            "r_psfFlux - g_psfFlux > 0.4 and cell < 10",
            "mag(r_psfFlux) - mag(g_psfFlux)",
            "abs(cell) * 2 + pow(cell, 2) / (1 + abs(r_psfFlux))",
            "not (cell >= 0 or r_psfFlux <= -10) and isnan(g_psfFlux) == isnan(cell)",
            "max(r_psfFlux, g_psfFlux) - min(r_psfFlux, cell) + exp(cell / 100) - ln(abs(cell) + 1)",
            "-r_psfFlux / -2 != cell",
        ]
        for text in texts {
            let checked = try ExpressionChecker.check(text, schema: exprSchema)
            let got = ExpressionEvaluator.evaluate(checked, columns: cols.mapValues { .numbers($0) }, rows: n).numbers(n)
            for i in 0..<n {
                let ref = referenceValue(checked.expression, cols.mapValues { $0[i] })
                #expect(got[i].bitPattern == ref.bitPattern || abs(got[i] - ref) <= 1e-12 * abs(ref), "\(text), row \(i): \(got[i]) vs \(ref)")
            }
        }
    }

    @Test func errorsPointAtTheProblem() {
        func message(_ text: String) -> String {
            do { _ = try ExpressionChecker.check(text, schema: exprSchema); return "no error" } catch { return "\(error)" }
        }
        let unknown = message("r_psfMg - i_psfFlux > 0.4")
        #expect(unknown.contains("unknown column `r_psfMg` — did you mean `r_psfFlux`?"))
        #expect(unknown.contains("\n  ^^^^^^^"))
        #expect(message("log(r_psfFlux)").contains("unknown function `log`"))
        #expect(message("pow(r_psfFlux)").contains("`pow` takes 2 arguments, got 1"))
        #expect(message("r_psfFlux and cell > 1").contains("`and` needs a condition on its left"))
        #expect(message("detect_isPrimary + 1").contains("needs a number on its left"))
        #expect(message("cell = 3").contains("compare with `==`"))
        #expect(message("cell > 1 <").contains("the expression ends too early") || message("cell > 1 <").contains("chain"))
        #expect(message("1 < cell < 3").contains("do not chain"))
        #expect(message("mag(r_psfFlux) > 20 $").contains("unexpected character `$`"))
        #expect(message("(cell + 1").contains("expected `)`"))
        #expect(message("") .contains("ends too early"))
        #expect(throws: ExpressionError.self) { try ExpressionChecker.check("cell + 1", schema: exprSchema, expecting: .boolean) }
        let e = try? ExpressionChecker.check("detect_isPrimary and refExtendedness == 0 and mag(r_psfFlux) < 24", schema: exprSchema)
        #expect(e?.columns == ["detect_isPrimary", "refExtendedness", "r_psfFlux"])
        #expect(e?.type == .boolean)
    }
}

/// What the parser refuses so that no expression can exhaust a daemon's stack or time.
struct ExpressionLimitTests {
    static let schema: [String: ExpressionType] = ["a": .number, "b": .number, "flag": .boolean]

    func refusal(_ text: String) -> String? {
        do {
            _ = try ExpressionChecker.check(text, schema: Self.schema)
            return nil
        } catch {
            return error.message
        }
    }

    @Test func nestingUpToTheLimitParsesAndOneMoreIsRefused() {
        let n = Limits.expressionDepth
        // Parentheses alone build no deeper tree, but the parser's own recursion is bounded too.
        #expect(refusal(String(repeating: "(", count: n - 1) + "a > 0" + String(repeating: ")", count: n - 1)) == nil)
        #expect(refusal(String(repeating: "(", count: n + 1) + "a > 0" + String(repeating: ")", count: n + 1))?.contains("limit of \(n)") == true)
        // A chain of additions is as deep as it is long: `a + a + … > 0` has depth terms + 1.
        let ok = Array(repeating: "a", count: n - 1).joined(separator: " + ") + " > 0"
        #expect(refusal(ok) == nil)
        let deep = Array(repeating: "a", count: n + 1).joined(separator: " + ") + " > 0"
        #expect(refusal(deep)?.contains("limit of \(n)") == true)
        #expect(refusal(String(repeating: "not ", count: 2_000) + "flag")?.contains("limit of \(n)") == true)
        #expect(refusal(String(repeating: "- ", count: 2_000) + "a > 0")?.contains("limit of \(n)") == true)
        #expect(refusal(String(repeating: "abs(", count: 1_000) + "a" + String(repeating: ")", count: 1_000) + " > 0")?.contains("limit of \(n)") == true)
    }

    @Test func longTextAndLongNamesAreRefusedBeforeAnyWork() {
        #expect(refusal(String(repeating: "a", count: Limits.identifierCharacters) + " > 0")?.contains("unknown column") == true)
        #expect(refusal(String(repeating: "a", count: Limits.identifierCharacters + 1) + " > 0")?.contains("limit of \(Limits.identifierCharacters)") == true)
        #expect(refusal(String(repeating: "a + ", count: Limits.expressionCharacters / 4) + "a > 0")?.contains("limit of \(Limits.expressionCharacters)") == true)
        // "Did you mean" still helps with ordinary typos.
        #expect(refusal("flga")?.contains("did you mean `flag`") == true)
    }
}
