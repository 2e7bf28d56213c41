/// A parsed expression: text a person writes (`r_psfMag - i_psfMag > 0.4 and refExtendedness == 0`,
/// `mag(g_psfFlux)`), checked against a schema before it runs.
public indirect enum ExpressionTree: Sendable, Equatable {
    case number(Double, SourceRange)
    /// An integer literal beyond 2^53, which a Double would round: compared exactly with Int64
    /// columns (`objectId == 609780990190346456`), a Double elsewhere.
    case integer(Int64, SourceRange)
    case column(String, SourceRange)
    case unary(UnaryOperator, ExpressionTree, SourceRange)
    case binary(BinaryOperator, ExpressionTree, ExpressionTree, SourceRange)
    case call(String, [ExpressionTree], SourceRange)

    public var range: SourceRange {
        switch self {
        case .number(_, let r), .integer(_, let r), .column(_, let r), .unary(_, _, let r), .binary(_, _, _, let r), .call(_, _, let r): r
        }
    }

    /// Integers up to this magnitude are exact as Doubles.
    static let exactDoubleIntegers = 9_007_199_254_740_992.0  // 2^53

    /// The parts of a top-level `and` chain (the expression itself when it is not one).
    public var conjuncts: [ExpressionTree] {
        if case .binary(.and, let a, let b, _) = self { return a.conjuncts + b.conjuncts }
        return [self]
    }

    /// The expression as text that two equal expressions share whatever their spacing and
    /// position in the source (numbers by their bits), so it can key values computed from it.
    public var canonical: String {
        switch self {
        case .number(let v, _): "n\(v.bitPattern)"
        case .integer(let k, _): "i\(k)"
        case .column(let c, _): "c\(c.utf8.count):\(c)"
        case .unary(let op, let x, _): "u\(op.rawValue)(\(x.canonical))"
        case .binary(let op, let a, let b, _): "b\(op.rawValue)(\(a.canonical),\(b.canonical))"
        case .call(let f, let args, _): "f\(f)(\(args.map(\.canonical).joined(separator: ",")))"
        }
    }

    /// Whether evaluating it calls a function (a logarithm, a distance): worth computing once
    /// for several questions.
    public var callsFunction: Bool {
        switch self {
        case .number, .integer, .column: false
        case .call: true
        case .unary(_, let x, _): x.callsFunction
        case .binary(_, let a, let b, _): a.callsFunction || b.callsFunction
        }
    }

    /// The canonical texts of its subexpressions (itself included) that call a function.
    public var subexpressionsCallingFunctions: Set<String> {
        var out: Set<String> = []
        func walk(_ e: ExpressionTree) {
            guard e.callsFunction else { return }
            out.insert(e.canonical)
            switch e {
            case .unary(_, let x, _): walk(x)
            case .binary(_, let a, let b, _): walk(a); walk(b)
            case .call(_, let args, _): args.forEach(walk)
            default: break
            }
        }
        walk(self)
        return out
    }

    /// Column names the expression reads, in first-use order.
    public var columns: [String] {
        var out: [String] = []
        func walk(_ e: ExpressionTree) {
            switch e {
            case .number, .integer: break
            case .column(let n, _): if !out.contains(n) { out.append(n) }
            case .unary(_, let x, _): walk(x)
            case .binary(_, let a, let b, _): walk(a); walk(b)
            case .call(_, let args, _): args.forEach(walk)
            }
        }
        walk(self)
        return out
    }
}

/// Characters `start ..< end` of the source text.
public struct SourceRange: Sendable, Equatable {
    public var start: Int
    public var end: Int
    public init(_ start: Int, _ end: Int) { self.start = start; self.end = end }
    func union(_ o: SourceRange) -> SourceRange { SourceRange(min(start, o.start), max(end, o.end)) }
}

public enum UnaryOperator: String, Sendable { case negate = "-", not }

public enum BinaryOperator: String, Sendable {
    case add = "+", subtract = "-", multiply = "*", divide = "/"
    case less = "<", lessEqual = "<=", greater = ">", greaterEqual = ">=", equal = "==", notEqual = "!="
    case and, or

    var isComparison: Bool { [.less, .lessEqual, .greater, .greaterEqual, .equal, .notEqual].contains(self) }
    var isLogical: Bool { self == .and || self == .or }

    /// The comparison with its operands swapped: `c < x` is `x > c`.
    var mirrored: BinaryOperator {
        switch self {
        case .less: .greater
        case .lessEqual: .greaterEqual
        case .greater: .less
        case .greaterEqual: .lessEqual
        default: self
        }
    }
}

/// What an expression's values are.
public enum ExpressionType: Sendable, Equatable, CustomStringConvertible {
    case number, boolean
    public var description: String { self == .number ? "a number" : "a boolean" }
}

/// A problem in an expression, pointing at where it is.
public struct ExpressionError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public var source: String
    public var range: SourceRange

    public var description: String {
        let pad = String(repeating: " ", count: max(0, range.start))
        let marks = String(repeating: "^", count: max(1, range.end - range.start))
        return "\(message)\n  \(source)\n  \(pad)\(marks)"
    }
}
