import TesseraProtocol
#if canImport(Glibc)
import Glibc
#endif

/// A built-in function: argument types, result type, and its per-row kernel.
struct ExpressionFunction: Sendable {
    var arguments: [ExpressionType]
    var result: ExpressionType
}

/// An expression that passed the checks, ready to evaluate on batches.
public struct CheckedExpression: Sendable, Equatable {
    public let text: String
    public let expression: ExpressionTree
    public let type: ExpressionType
    /// Columns it reads.
    public var columns: [String] { expression.columns }
}

/// Parses and checks expressions against a schema: unknown columns (with the nearest name
/// suggested), unknown functions, wrong argument counts and type errors are reported with the
/// offending part of the text marked.
public enum ExpressionChecker {
    static let functions: [String: ExpressionFunction] = [
        "abs": .init(arguments: [.number], result: .number),
        "sqrt": .init(arguments: [.number], result: .number),
        "log10": .init(arguments: [.number], result: .number),
        "ln": .init(arguments: [.number], result: .number),
        "exp": .init(arguments: [.number], result: .number),
        "pow": .init(arguments: [.number, .number], result: .number),
        "min": .init(arguments: [.number, .number], result: .number),
        "max": .init(arguments: [.number, .number], result: .number),
        "floor": .init(arguments: [.number], result: .number),
        "ceil": .init(arguments: [.number], result: .number),
        "round": .init(arguments: [.number], result: .number),
        // Halves away from zero, as SQL's ROUND (round() goes to even, as numpy's).
        "round_away": .init(arguments: [.number], result: .number),
        "isnan": .init(arguments: [.number], result: .boolean),
        "mag": .init(arguments: [.number], result: .number),
        "distance": .init(arguments: [.number, .number, .number, .number], result: .number),
    ]

    /// - Parameter schema: column name → whether it holds numbers or booleans.
    public static func check(_ text: String, schema: [String: ExpressionType], expecting: ExpressionType? = nil) throws(ExpressionError) -> CheckedExpression {
        let e = try ExpressionParser.parse(text)
        let t = try type(of: e, text, schema)
        if let expecting, t != expecting {
            throw ExpressionError(message: "the expression gives \(t), but \(expecting) is needed here", source: text, range: e.range)
        }
        return CheckedExpression(text: text, expression: e, type: t)
    }

    static func type(of e: ExpressionTree, _ text: String, _ schema: [String: ExpressionType]) throws(ExpressionError) -> ExpressionType {
        func fail(_ m: String, _ r: SourceRange) -> ExpressionError { ExpressionError(message: m, source: text, range: r) }
        switch e {
        case .number, .integer:
            return .number
        case .column(let name, let r):
            guard let t = schema[name] else {
                var m = "unknown column `\(name)`"
                if let s = nearest(name, schema.keys) { m += " — did you mean `\(s)`?" }
                throw fail(m, r)
            }
            return t
        case .unary(let op, let x, _):
            let t = try type(of: x, text, schema)
            let need: ExpressionType = op == .not ? .boolean : .number
            guard t == need else { throw fail("`\(op == .not ? "not" : "-")` needs \(need), this is \(t)", x.range) }
            return need
        case .binary(let op, let a, let b, _):
            let ta = try type(of: a, text, schema), tb = try type(of: b, text, schema)
            if op.isLogical {
                guard ta == .boolean else { throw fail("`\(op.rawValue)` needs a condition on its left, this is \(ta)", a.range) }
                guard tb == .boolean else { throw fail("`\(op.rawValue)` needs a condition on its right, this is \(tb)", b.range) }
                return .boolean
            }
            if op.isComparison && (op == .equal || op == .notEqual) && ta == .boolean && tb == .boolean { return .boolean }
            guard ta == .number else { throw fail("`\(op.rawValue)` needs a number on its left, this is \(ta)", a.range) }
            guard tb == .number else { throw fail("`\(op.rawValue)` needs a number on its right, this is \(tb)", b.range) }
            return op.isComparison ? .boolean : .number
        case .call(let name, let args, let r):
            guard let f = functions[name] else {
                var m = "unknown function `\(name)`"
                if let s = nearest(name, functions.keys) { m += " — did you mean `\(s)`?" }
                m += " (functions: \(functions.keys.sorted().joined(separator: ", ")))"
                throw fail(m, r)
            }
            guard args.count == f.arguments.count else {
                throw fail("`\(name)` takes \(f.arguments.count) argument\(f.arguments.count == 1 ? "" : "s"), got \(args.count)", r)
            }
            for (a, need) in zip(args, f.arguments) {
                let t = try type(of: a, text, schema)
                guard t == need else { throw fail("`\(name)` needs \(need) here, this is \(t)", a.range) }
            }
            return f.result
        }
    }

    /// The closest name within half its length in edits (for "did you mean").
    static func nearest<S: Sequence>(_ name: String, _ candidates: S) -> String? where S.Element == String {
        let limit = max(2, (name.count + 1) / 2)
        // Names differing in length by more than the limit cannot be within it: skipping them
        // keeps the search cheap however long a mistyped name is (it is bounded too, by the parser).
        guard name.count <= Limits.identifierCharacters else { return nil }
        let lowered = name.lowercased()
        var best: (String, Int)?
        for c in candidates where abs(c.count - name.count) <= limit && c.count <= Limits.identifierCharacters {
            let d = editDistance(lowered, c.lowercased())
            if d <= limit && (best == nil || d < best!.1 || (d == best!.1 && c < best!.0)) { best = (c, d) }
        }
        return best?.0
    }

    static func editDistance(_ a: String, _ b: String) -> Int {
        let x = Array(a), y = Array(b)
        if x.isEmpty { return y.count }
        var prev = Array(0...y.count), cur = [Int](repeating: 0, count: y.count + 1)
        for i in 1...x.count {
            cur[0] = i
            for j in stride(from: 1, through: y.count, by: 1) {
                cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x[i - 1] == y[j - 1] ? 0 : 1))
            }
            swap(&prev, &cur)
        }
        return prev[y.count]
    }
}
