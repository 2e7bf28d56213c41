#if canImport(Glibc)
import Glibc
#endif

/// A column of expression values over a batch.
public enum ExpressionVector: Sendable, Equatable {
    case numbers([Double])
    case booleans([Bool])
    /// A constant, not yet spread over the batch.
    case constant(Double)

    /// As numbers over `n` rows.
    func numbers(_ n: Int) -> [Double] {
        switch self {
        case .numbers(let a): a
        case .constant(let v): [Double](repeating: v, count: n)
        case .booleans(let b): b.map { $0 ? 1 : 0 }
        }
    }

    func booleans(_ n: Int) -> [Bool] {
        switch self {
        case .booleans(let b): b
        case .numbers(let a): a.map { $0 != 0 }
        case .constant(let v): [Bool](repeating: v != 0, count: n)
        }
    }
}

/// Evaluates a checked expression over a batch, column at a time: every operator is one loop
/// over contiguous arrays (integer columns arrive as Float64). NaN behaves as in numpy:
/// comparisons with NaN are false (`!=` true), arithmetic propagates it, `min`/`max` return it.
public enum ExpressionEvaluator {
    /// - Parameters:
    ///   - columns: the batch's columns by name (numbers or booleans), each `rows` long.
    public static func evaluate(_ e: CheckedExpression, columns: [String: ExpressionVector], rows: Int) -> ExpressionVector {
        eval(e.expression, columns, rows)
    }

    static func eval(_ e: ExpressionTree, _ cols: [String: ExpressionVector], _ n: Int) -> ExpressionVector {
        switch e {
        case .number(let v, _):
            return .constant(v)
        case .column(let name, _):
            return cols[name] ?? .constant(.nan)
        case .unary(.negate, let x, _):
            if case .constant(let v) = eval(x, cols, n) { return .constant(-v) }
            return .numbers(eval(x, cols, n).numbers(n).map { -$0 })
        case .unary(.not, let x, _):
            return .booleans(eval(x, cols, n).booleans(n).map { !$0 })
        case .binary(let op, let a, let b, _):
            let va = eval(a, cols, n), vb = eval(b, cols, n)
            if op.isLogical {
                let x = va.booleans(n), y = vb.booleans(n)
                var out = [Bool](repeating: false, count: n)
                if op == .and { for i in 0..<n { out[i] = x[i] && y[i] } } else { for i in 0..<n { out[i] = x[i] || y[i] } }
                return .booleans(out)
            }
            if case .booleans(let x) = va, case .booleans(let y) = vb {
                return .booleans(zip(x, y).map { op == .equal ? $0 == $1 : $0 != $1 })
            }
            if case .constant(let x) = va, case .constant(let y) = vb {
                if op.isComparison { return .booleans([Bool](repeating: compare(op, x, y), count: n)) }
                return .constant(arith(op, x, y))
            }
            let x = va.numbers(n), y = vb.numbers(n)
            if op.isComparison {
                var out = [Bool](repeating: false, count: n)
                switch op {
                case .less: for i in 0..<n { out[i] = x[i] < y[i] }
                case .lessEqual: for i in 0..<n { out[i] = x[i] <= y[i] }
                case .greater: for i in 0..<n { out[i] = x[i] > y[i] }
                case .greaterEqual: for i in 0..<n { out[i] = x[i] >= y[i] }
                case .equal: for i in 0..<n { out[i] = x[i] == y[i] }
                default: for i in 0..<n { out[i] = x[i] != y[i] }
                }
                return .booleans(out)
            }
            var out = [Double](repeating: 0, count: n)
            switch op {
            case .add: for i in 0..<n { out[i] = x[i] + y[i] }
            case .subtract: for i in 0..<n { out[i] = x[i] - y[i] }
            case .multiply: for i in 0..<n { out[i] = x[i] * y[i] }
            default: for i in 0..<n { out[i] = x[i] / y[i] }
            }
            return .numbers(out)
        case .call(let name, let args, _):
            let vs = args.map { eval($0, cols, n) }
            if name == "isnan" { return .booleans(vs[0].numbers(n).map(\.isNaN)) }
            if vs.allSatisfy({ if case .constant = $0 { true } else { false } }) {
                let xs = vs.map { $0.numbers(1)[0] }
                return .constant(apply(name, xs))
            }
            let cols = vs.map { $0.numbers(n) }
            var out = [Double](repeating: 0, count: n)
            switch name {
            case "abs": for i in 0..<n { out[i] = abs(cols[0][i]) }
            case "sqrt": for i in 0..<n { out[i] = cols[0][i].squareRoot() }
            case "log10": for i in 0..<n { out[i] = log10(cols[0][i]) }
            case "ln": for i in 0..<n { out[i] = log(cols[0][i]) }
            case "exp": for i in 0..<n { out[i] = exp(cols[0][i]) }
            case "mag": for i in 0..<n { out[i] = magnitude(cols[0][i]) }
            case "floor": for i in 0..<n { out[i] = cols[0][i].rounded(.down) }
            case "ceil": for i in 0..<n { out[i] = cols[0][i].rounded(.up) }
            case "round": for i in 0..<n { out[i] = cols[0][i].rounded(.toNearestOrEven) }
            default: for i in 0..<n { out[i] = apply(name, cols.map { $0[i] }) }
            }
            return .numbers(out)
        }
    }

    static func compare(_ op: BinaryOperator, _ x: Double, _ y: Double) -> Bool {
        switch op {
        case .less: x < y
        case .lessEqual: x <= y
        case .greater: x > y
        case .greaterEqual: x >= y
        case .equal: x == y
        default: x != y
        }
    }

    static func arith(_ op: BinaryOperator, _ x: Double, _ y: Double) -> Double {
        switch op {
        case .add: x + y
        case .subtract: x - y
        case .multiply: x * y
        default: x / y
        }
    }

    /// AB magnitude of a flux in nJy: −2.5 log10(f) + 31.4; NaN unless the flux is positive.
    @inline(__always) public static func magnitude(_ f: Double) -> Double { f > 0 ? -2.5 * log10(f) + 31.4 : .nan }

    /// Angular distance in degrees between two RA/Dec positions (degrees), accurate at every scale.
    public static func distance(_ ra1: Double, _ dec1: Double, _ ra2: Double, _ dec2: Double) -> Double {
        let d2r = Double.pi / 180
        let (s1, c1) = (sin(dec1 * d2r), cos(dec1 * d2r)), (s2, c2) = (sin(dec2 * d2r), cos(dec2 * d2r))
        let dra = (ra2 - ra1) * d2r
        let (sd, cd) = (sin(dra), cos(dra))
        // Vincenty's formula for the sphere: atan2 of the cross and dot products.
        let x = c2 * sd, y = c1 * s2 - s1 * c2 * cd
        return atan2((x * x + y * y).squareRoot(), s1 * s2 + c1 * c2 * cd) / d2r
    }

    static func apply(_ name: String, _ x: [Double]) -> Double {
        switch name {
        case "abs": abs(x[0])
        case "sqrt": x[0].squareRoot()
        case "log10": log10(x[0])
        case "ln": log(x[0])
        case "exp": exp(x[0])
        case "floor": x[0].rounded(.down)
        case "ceil": x[0].rounded(.up)
        // numpy rounds halves to even.
        case "round": x[0].rounded(.toNearestOrEven)
        case "pow": pow(x[0], x[1])
        // numpy's minimum/maximum: NaN wins.
        case "min": x[0].isNaN || x[1].isNaN ? .nan : Swift.min(x[0], x[1])
        case "max": x[0].isNaN || x[1].isNaN ? .nan : Swift.max(x[0], x[1])
        case "mag": magnitude(x[0])
        case "distance": distance(x[0], x[1], x[2], x[3])
        default: .nan
        }
    }
}
