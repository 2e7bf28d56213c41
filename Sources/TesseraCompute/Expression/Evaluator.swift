#if canImport(Glibc)
import Glibc
#endif

/// A column of expression values over a batch.
public enum ExpressionVector: Sendable, Equatable {
    case numbers([Double])
    /// A stored Float32 column as read: comparisons and magnitudes use it without first widening
    /// the whole column to Float64 (half the memory traffic); other operators widen it.
    case floats([Float])
    case booleans([Bool])
    /// A stored Int64 column as read: compared exactly with other Int64 columns and with integer
    /// literals beyond 2^53 (ids); widened to Float64 for everything else.
    case integers([Int64])
    /// A constant, not yet spread over the batch.
    case constant(Double)

    /// As numbers over `n` rows.
    func numbers(_ n: Int) -> [Double] {
        switch self {
        case .numbers(let a): a
        case .floats(let a): Kernels.widened(a)
        case .integers(let a): Kernels.map(a) { Double($0) }
        case .constant(let v): [Double](repeating: v, count: n)
        case .booleans(let b): b.map { $0 ? 1 : 0 }
        }
    }

    /// The values at the given rows, in that order.
    func gathered(_ rows: [Int]) -> ExpressionVector {
        switch self {
        case .numbers(let a): .numbers(Kernels.gather(a, rows))
        case .floats(let a): .floats(Kernels.gather(a, rows))
        case .booleans(let a): .booleans(Kernels.gather(a, rows))
        case .integers(let a): .integers(Kernels.gather(a, rows))
        case .constant: self
        }
    }

    func booleans(_ n: Int) -> [Bool] {
        switch self {
        case .booleans(let b): b
        case .numbers(let a): a.map { $0 != 0 }
        case .floats(let a): a.map { $0 != 0 }
        case .integers(let a): a.map { $0 != 0 }
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
    ///   - known: values of some subexpressions over the same rows, computed already (by another
    ///     question of a shared scan); nil for those it does not have.
    public static func evaluate(_ e: CheckedExpression, columns: [String: ExpressionVector], rows: Int,
                                known: ((ExpressionTree) -> ExpressionVector?)? = nil) -> ExpressionVector {
        eval(e.expression, columns, rows, known)
    }

    static func eval(_ e: ExpressionTree, _ cols: [String: ExpressionVector], _ n: Int,
                     _ known: ((ExpressionTree) -> ExpressionVector?)? = nil) -> ExpressionVector {
        if let known {
            switch e {
            case .call, .binary, .unary: if let v = known(e) { return v }
            default: break
            }
        }
        switch e {
        case .number(let v, _):
            return .constant(v)
        case .integer(let k, _):
            return .constant(Double(k))
        case .column(let name, _):
            return cols[name] ?? .constant(.nan)
        case .unary(.negate, let x, _):
            switch eval(x, cols, n, known) {
            case .constant(let v): return .constant(-v)
            case let v: return .numbers(Kernels.map(v.numbers(n)) { -$0 })
            }
        case .unary(.not, let x, _):
            return .booleans(Kernels.map(eval(x, cols, n, known).booleans(n)) { !$0 })
        case .binary(let op, let a, let b, _):
            if let bound = MagnitudeBound(op, a, b) {
                switch eval(bound.flux, cols, n, known) {
                case .floats(let f): return .booleans(bound.evaluate(f))
                case .constant: break   // folded below, as any constant
                case let v: return .booleans(bound.evaluate(v.numbers(n)))
                }
            }
            let va = eval(a, cols, n, known), vb = eval(b, cols, n, known)
            if op.isComparison, let exact = exactComparison(op, va, a, vb, b) { return .booleans(exact) }
            if op.isLogical {
                let x = va.booleans(n), y = vb.booleans(n)
                return .booleans(Kernels.logical(x, y, and: op == .and))
            }
            if case .booleans(let x) = va, case .booleans(let y) = vb {
                return .booleans(op == .equal ? Kernels.zip(x, y) { $0 == $1 } : Kernels.zip(x, y) { $0 != $1 })
            }
            switch (va, vb) {
            case (.constant(let x), .constant(let y)):
                if op.isComparison { return .booleans([Bool](repeating: compare(op, x, y), count: n)) }
                return .constant(arith(op, x, y))
            case (.floats(let x), .constant(let c)) where op.isComparison:
                return .booleans(Kernels.compare(x, op, c))
            case (.constant(let c), .floats(let y)) where op.isComparison:
                return .booleans(Kernels.compare(y, op.mirrored, c))
            case (let v, .constant(let c)):
                // A constant operand stays a scalar in the loop.
                let x = v.numbers(n)
                if op.isComparison { return .booleans(Kernels.compare(x, op, c)) }
                return .numbers(Kernels.arithmetic(x, op, c))
            case (.constant(let c), let v):
                let y = v.numbers(n)
                if op.isComparison { return .booleans(Kernels.compare(y, op.mirrored, c)) }
                switch op {
                // + and × commute.
                case .add, .multiply: return .numbers(Kernels.arithmetic(y, op, c))
                case .subtract: return .numbers(Kernels.map(y) { c - $0 })
                default: return .numbers(Kernels.map(y) { c / $0 })
                }
            default:
                let x = va.numbers(n), y = vb.numbers(n)
                switch op {
                case .less: return .booleans(Kernels.zip(x, y) { $0 < $1 })
                case .lessEqual: return .booleans(Kernels.zip(x, y) { $0 <= $1 })
                case .greater: return .booleans(Kernels.zip(x, y) { $0 > $1 })
                case .greaterEqual: return .booleans(Kernels.zip(x, y) { $0 >= $1 })
                case .equal: return .booleans(Kernels.zip(x, y) { $0 == $1 })
                case .notEqual: return .booleans(Kernels.zip(x, y) { $0 != $1 })
                case .add: return .numbers(Kernels.zip(x, y) { $0 + $1 })
                case .subtract: return .numbers(Kernels.zip(x, y) { $0 - $1 })
                case .multiply: return .numbers(Kernels.zip(x, y) { $0 * $1 })
                default: return .numbers(Kernels.zip(x, y) { $0 / $1 })
                }
            }
        case .call(let name, let args, _):
            let vs = args.map { eval($0, cols, n, known) }
            if name == "isnan" { return .booleans(Kernels.map(vs[0].numbers(n)) { $0.isNaN }) }
            if vs.allSatisfy({ if case .constant = $0 { true } else { false } }) {
                let xs = vs.map { $0.numbers(1)[0] }
                return .constant(apply(name, xs))
            }
            if vs.count == 1, case .floats(let f) = vs[0] {
                if name == "mag" { return .numbers(FastLog.magnitudes(f)) }
                if name == "log10" { return .numbers(FastLog.log10s(f)) }
            }
            let cols = vs.map { $0.numbers(n) }
            switch name {
            case "abs": return .numbers(Kernels.map(cols[0]) { Swift.abs($0) })
            case "sqrt": return .numbers(Kernels.map(cols[0]) { $0.squareRoot() })
            case "log10": return .numbers(FastLog.log10s(cols[0]))
            case "ln": return .numbers(Kernels.map(cols[0]) { log($0) })
            case "exp": return .numbers(Kernels.map(cols[0]) { exp($0) })
            case "mag": return .numbers(FastLog.magnitudes(cols[0]))
            case "floor": return .numbers(Kernels.map(cols[0]) { $0.rounded(.down) })
            case "ceil": return .numbers(Kernels.map(cols[0]) { $0.rounded(.up) })
            case "round": return .numbers(Kernels.map(cols[0]) { $0.rounded(.toNearestOrEven) })
            case "round_away": return .numbers(Kernels.map(cols[0]) { $0.rounded(.toNearestOrAwayFromZero) })
            case "pow": return .numbers(Kernels.zip(cols[0], cols[1]) { pow($0, $1) })
            case "min": return .numbers(Kernels.zip(cols[0], cols[1]) { $0.isNaN || $1.isNaN ? .nan : Swift.min($0, $1) })
            case "max": return .numbers(Kernels.zip(cols[0], cols[1]) { $0.isNaN || $1.isNaN ? .nan : Swift.max($0, $1) })
            case "distance":
                return .numbers([Double](unsafeUninitializedCapacity: n) { out, count in
                    for i in 0..<n { out[i] = distance(cols[0][i], cols[1][i], cols[2][i], cols[3][i]) }
                    count = n
                })
            default:
                return .numbers([Double](unsafeUninitializedCapacity: n) { out, count in
                    for i in 0..<n { out[i] = apply(name, cols.map { $0[i] }) }
                    count = n
                })
            }
        }
    }

    /// Int64 columns against each other or against an integer literal, compared as integers
    /// (as Doubles, ids beyond 2^53 that differ could compare equal); nil for anything else.
    static func exactComparison(_ op: BinaryOperator, _ va: ExpressionVector, _ a: ExpressionTree,
                                _ vb: ExpressionVector, _ b: ExpressionTree) -> [Bool]? {
        switch (va, vb, a, b) {
        case (.integers(let x), .integers(let y), _, _):
            return Kernels.zip(x, y) { compare(op, $0, $1) }
        case (.integers(let x), _, _, .integer(let k, _)):
            return Kernels.compare(x, op, k)
        case (_, .integers(let y), .integer(let k, _), _):
            return Kernels.compare(y, op.mirrored, k)
        default:
            return nil
        }
    }

    @inline(__always) static func compare<T: Comparable>(_ op: BinaryOperator, _ x: T, _ y: T) -> Bool {
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
    public static func magnitude(_ f: Double) -> Double { FastLog.magnitude(f) }

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
        case "log10": FastLog.log10(x[0])
        case "ln": log(x[0])
        case "exp": exp(x[0])
        case "floor": x[0].rounded(.down)
        case "ceil": x[0].rounded(.up)
        // numpy rounds halves to even.
        case "round": x[0].rounded(.toNearestOrEven)
        case "round_away": x[0].rounded(.toNearestOrAwayFromZero)
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

/// `mag(f) op c` (or `c op mag(f)`) for <, <=, >, >=, evaluated as a bound on the flux itself:
/// `mag` decreases with the flux, so `mag(f) < 24` is `f > 10^((31.4 − 24)/2.5)`. A comparison
/// of the column with a number instead of a logarithm per row, and a bound zone maps can prune
/// row groups with.
///
/// Exact: only fluxes clearly on one side of the threshold are decided by the bound; those
/// within a relative 1e-9 of it (far wider than the magnitude's rounding, a few ulp) get the
/// magnitude computed as `mag` computes it, and the comparison as written. NaN, zero and negative
/// fluxes have no magnitude and fail every such comparison, as they do written out.
struct MagnitudeBound {
    /// The flux expression, the magnitude's threshold, and whether rows brighter than it pass
    /// (`<`, `<=`) or fainter ones (`>`, `>=`).
    let flux: ExpressionTree
    let op: BinaryOperator
    let magnitude: Double
    /// Fluxes below `low` are fainter than the threshold, above `high` brighter, for certain.
    let low: Double, high: Double

    static let band = 1e-9

    init?(_ op: BinaryOperator, _ a: ExpressionTree, _ b: ExpressionTree) {
        var op = op
        let call: ExpressionTree, c: Double
        switch (a, b) {
        case (.call, .number(let v, _)): (call, c) = (a, v)
        case (.call, .integer(let k, _)): (call, c) = (a, Double(k))
        case (.number(let v, _), .call): (call, c, op) = (b, v, op.mirrored)
        case (.integer(let k, _), .call): (call, c, op) = (b, Double(k), op.mirrored)
        default: return nil
        }
        guard case .call("mag", let args, _) = call, args.count == 1, c.isFinite,
              [.less, .lessEqual, .greater, .greaterEqual].contains(op) else { return nil }
        flux = args[0]
        self.op = op
        magnitude = c
        let t = pow(10, (31.4 - c) / 2.5)
        low = t * (1 - Self.band)
        high = t * (1 + Self.band)
    }

    var passesBrighter: Bool { op == .less || op == .lessEqual }

    /// The column's bound for zone maps: brighter rows need a flux of at least `low`, fainter
    /// ones at most `high`.
    var columnTest: (test: ColumnBound.Test, value: Double) {
        passesBrighter ? (.greaterEqual, low) : (.lessEqual, high)
    }

    func evaluate<T: BinaryFloatingPoint>(_ x: [T]) -> [Bool] {
        let (lo, hi) = (low, high)
        let brighter = passesBrighter
        return x.withUnsafeBufferPointer { xp in
            [Bool](unsafeUninitializedCapacity: xp.count) { out, count in
                let n = xp.count
                if brighter {
                    for i in 0..<n { out[i] = Double(xp[i]) > hi }
                } else {
                    for i in 0..<n {
                        let v = Double(xp[i])
                        out[i] = (v > 0) && (v < lo)
                    }
                }
                // The band around the threshold, where the magnitude's rounding decides.
                for i in 0..<n {
                    let v = Double(xp[i])
                    if v >= lo && v <= hi { out[i] = ExpressionEvaluator.compare(op, FastLog.magnitude(v), magnitude) }
                }
                count = n
            }
        }
    }
}

/// Element-wise loops over contiguous arrays into fresh uninitialised storage: no per-element
/// uniqueness or bounds checks, so the compiler can vectorise them.
enum Kernels {
    /// `x[i] op c` for a comparison: the operator is chosen once, outside a concrete loop (a
    /// closure per element was measured at 15% of a filter scan).
    /// Float32 values are widened one at a time (exactly: every Float is a Double).
    /// Int64 values against an integer, exactly.
    static func compare(_ x: [Int64], _ op: BinaryOperator, _ c: Int64) -> [Bool] {
        switch op {
        case .less: map(x) { $0 < c }
        case .lessEqual: map(x) { $0 <= c }
        case .greater: map(x) { $0 > c }
        case .greaterEqual: map(x) { $0 >= c }
        case .equal: map(x) { $0 == c }
        default: map(x) { $0 != c }
        }
    }

    static func compare<T: BinaryFloatingPoint>(_ x: [T], _ op: BinaryOperator, _ c: Double) -> [Bool] {
        x.withUnsafeBufferPointer { xp in
            [Bool](unsafeUninitializedCapacity: xp.count) { out, count in
                let n = xp.count
                switch op {
                case .less: for i in 0..<n { out[i] = Double(xp[i]) < c }
                case .lessEqual: for i in 0..<n { out[i] = Double(xp[i]) <= c }
                case .greater: for i in 0..<n { out[i] = Double(xp[i]) > c }
                case .greaterEqual: for i in 0..<n { out[i] = Double(xp[i]) >= c }
                case .equal: for i in 0..<n { out[i] = Double(xp[i]) == c }
                default: for i in 0..<n { out[i] = Double(xp[i]) != c }
                }
                count = n
            }
        }
    }

    /// `a[rows[i]]` for every i. (Generic over the element only: a closure argument per element
    /// was not inlined, measured.)
    static func gather<T>(_ a: [T], _ rows: [Int]) -> [T] {
        a.withUnsafeBufferPointer { ap in
            rows.withUnsafeBufferPointer { rp in
                [T](unsafeUninitializedCapacity: rp.count) { out, count in
                    for i in 0..<rp.count { (out.baseAddress! + i).initialize(to: ap[rp[i]]) }
                    count = rp.count
                }
            }
        }
    }

    /// Float32 values as Float64.
    static func widened(_ a: [Float]) -> [Double] {
        a.withUnsafeBufferPointer { ap in
            [Double](unsafeUninitializedCapacity: ap.count) { out, count in
                for i in 0..<ap.count { out[i] = Double(ap[i]) }
                count = ap.count
            }
        }
    }

    /// `x[i] and y[i]` (or `or`), without short-circuit branches.
    static func logical(_ x: [Bool], _ y: [Bool], and: Bool) -> [Bool] {
        let n = Swift.min(x.count, y.count)
        return x.withUnsafeBufferPointer { xp in
            y.withUnsafeBufferPointer { yp in
                [Bool](unsafeUninitializedCapacity: n) { out, count in
                    // Bools are bytes holding 0 or 1, so the bitwise forms are exact and branch-free.
                    xp.withMemoryRebound(to: UInt8.self) { xb in
                        yp.withMemoryRebound(to: UInt8.self) { yb in
                            out.withMemoryRebound(to: UInt8.self) { ob in
                                if and { for i in 0..<n { ob[i] = xb[i] & yb[i] } } else { for i in 0..<n { ob[i] = xb[i] | yb[i] } }
                            }
                        }
                    }
                    count = n
                }
            }
        }
    }

    /// `x[i] op c` for + − × ÷.
    static func arithmetic(_ x: [Double], _ op: BinaryOperator, _ c: Double) -> [Double] {
        x.withUnsafeBufferPointer { xp in
            [Double](unsafeUninitializedCapacity: xp.count) { out, count in
                let n = xp.count
                switch op {
                case .add: for i in 0..<n { out[i] = xp[i] + c }
                case .subtract: for i in 0..<n { out[i] = xp[i] - c }
                case .multiply: for i in 0..<n { out[i] = xp[i] * c }
                default: for i in 0..<n { out[i] = xp[i] / c }
                }
                count = n
            }
        }
    }

    @inline(__always) static func map<T, R>(_ x: [T], _ f: (T) -> R) -> [R] {
        x.withUnsafeBufferPointer { xp in
            [R](unsafeUninitializedCapacity: xp.count) { out, count in
                for i in 0..<xp.count { (out.baseAddress! + i).initialize(to: f(xp[i])) }
                count = xp.count
            }
        }
    }

    @inline(__always) static func zip<T, U, R>(_ x: [T], _ y: [U], _ f: (T, U) -> R) -> [R] {
        let n = Swift.min(x.count, y.count)
        return x.withUnsafeBufferPointer { xp in
            y.withUnsafeBufferPointer { yp in
                [R](unsafeUninitializedCapacity: n) { out, count in
                    for i in 0..<n { (out.baseAddress! + i).initialize(to: f(xp[i], yp[i])) }
                    count = n
                }
            }
        }
    }
}

/// A filter conjunct applied as one loop over a stored column, clearing the rows that fail in
/// the filter's mask in place: a boolean column or its negation, a column compared with a number, or a magnitude
/// compared with a number (as its flux bound, ``MagnitudeBound``). No vector of the conjunct's
/// own, no copy of the column: a filter of such conjuncts (most filters) is a few passes over its
/// columns. The rows that pass are those the evaluator passes, element by element: the same
/// comparisons on the same values (Float32 and Int64 widened to Double as it widens them).
struct ColumnTest {
    enum Kind {
        case isTrue, isFalse
        case compare(BinaryOperator, Double)
        case magnitude(MagnitudeBound)
    }

    let column: String
    let kind: Kind

    init?(_ e: ExpressionTree) {
        switch e {
        case .column(let c, _):
            (column, kind) = (c, .isTrue)
        case .unary(.not, .column(let c, _), _):
            (column, kind) = (c, .isFalse)
        case .binary(let op, .column(let c, _), .number(let v, _), _) where op.isComparison:
            (column, kind) = (c, .compare(op, v))
        case .binary(let op, .number(let v, _), .column(let c, _), _) where op.isComparison:
            (column, kind) = (c, .compare(op.mirrored, v))
        case .binary(let op, let a, let b, _):
            guard let bound = MagnitudeBound(op, a, b), case .column(let c, _) = bound.flux else { return nil }
            (column, kind) = (c, .magnitude(bound))
        default:
            return nil
        }
    }

    /// Clears `keep[i]` for the rows that fail (only at `rows`, when given). False, with `keep`
    /// untouched, for a column of a kind not handled here (the caller evaluates the conjunct).
    func apply(to keep: inout [Bool], columns: [String: ExpressionVector], rows: [Int]?) -> Bool {
        guard let v = columns[column] else { return false }
        switch (kind, v) {
        case (.isTrue, .booleans(let b)):
            b.withUnsafeBufferPointer { bp in
                bp.withMemoryRebound(to: UInt8.self) { bb in Self.clear(&keep, rows) { bb[$0] != 0 } }
            }
        case (.isFalse, .booleans(let b)):
            b.withUnsafeBufferPointer { bp in
                bp.withMemoryRebound(to: UInt8.self) { bb in Self.clear(&keep, rows) { bb[$0] == 0 } }
            }
        case (.compare(let op, let c), .numbers(let x)): x.withUnsafeBufferPointer { Self.compare(&keep, rows, $0, op, c) }
        case (.compare(let op, let c), .floats(let x)): x.withUnsafeBufferPointer { Self.compare(&keep, rows, $0, op, c) }
        case (.compare(let op, let c), .integers(let x)) where c == c.rounded() && abs(c) < 0x1p53:
            // An integer below 2^53 in magnitude: comparing the Int64s is the same as comparing
            // them widened (a value that rounds when widened is at least 2^53 from zero, on the
            // same side of `c` either way), and needs no conversion per row.
            let k = Int64(c)
            x.withUnsafeBufferPointer { xp in
                switch op {
                case .less: Self.clear(&keep, rows) { xp[$0] < k }
                case .lessEqual: Self.clear(&keep, rows) { xp[$0] <= k }
                case .greater: Self.clear(&keep, rows) { xp[$0] > k }
                case .greaterEqual: Self.clear(&keep, rows) { xp[$0] >= k }
                case .equal: Self.clear(&keep, rows) { xp[$0] == k }
                default: Self.clear(&keep, rows) { xp[$0] != k }
                }
            }
        case (.compare(let op, let c), .integers(let x)):
            x.withUnsafeBufferPointer { xp in
                switch op {
                case .less: Self.clear(&keep, rows) { Double(xp[$0]) < c }
                case .lessEqual: Self.clear(&keep, rows) { Double(xp[$0]) <= c }
                case .greater: Self.clear(&keep, rows) { Double(xp[$0]) > c }
                case .greaterEqual: Self.clear(&keep, rows) { Double(xp[$0]) >= c }
                case .equal: Self.clear(&keep, rows) { Double(xp[$0]) == c }
                default: Self.clear(&keep, rows) { Double(xp[$0]) != c }
                }
            }
        case (.magnitude(let bound), .floats(let x)): x.withUnsafeBufferPointer { Self.magnitude(&keep, rows, $0, bound) }
        case (.magnitude(let bound), .numbers(let x)): x.withUnsafeBufferPointer { Self.magnitude(&keep, rows, $0, bound) }
        default:
            return false
        }
        return true
    }

    static func compare<T: BinaryFloatingPoint>(_ keep: inout [Bool], _ rows: [Int]?, _ xp: UnsafeBufferPointer<T>, _ op: BinaryOperator, _ c: Double) {
        switch op {
        case .less: clear(&keep, rows) { Double(xp[$0]) < c }
        case .lessEqual: clear(&keep, rows) { Double(xp[$0]) <= c }
        case .greater: clear(&keep, rows) { Double(xp[$0]) > c }
        case .greaterEqual: clear(&keep, rows) { Double(xp[$0]) >= c }
        case .equal: clear(&keep, rows) { Double(xp[$0]) == c }
        default: clear(&keep, rows) { Double(xp[$0]) != c }
        }
    }

    /// As ``MagnitudeBound/evaluate(_:)``: the bound decides, and rows in the band around it
    /// get the magnitude in a second loop, run only when the first saw such a row (rare: a
    /// relative 1e-9 around the threshold). The first keeps them, so that the second still sees
    /// which rows had passed before.
    static func magnitude<T: BinaryFloatingPoint>(_ keep: inout [Bool], _ rows: [Int]?, _ xp: UnsafeBufferPointer<T>, _ b: MagnitudeBound) {
        let (lo, hi, op, m) = (b.low, b.high, b.op, b.magnitude)
        // The loops are written out, on raw pointers with 32-bit flags: through `clear`'s closure
        // the band flag stayed in memory, and with byte flags the compiler chained it through
        // conditional moves; either way the loop ran a row at a time (measured: a quarter of
        // count_filter's time). In this form it runs eight rows to an instruction.
        var inBand: UInt32 = 0
        keep.withUnsafeMutableBufferPointer { kp in
            kp.withMemoryRebound(to: UInt8.self) { kb in
                guard let k = kb.baseAddress, let x = xp.baseAddress else { return }
                var band: UInt32 = 0
                if let rows {
                    for i in rows {
                        let v = Double(x[i])
                        band |= (v >= lo ? 1 : 0) & (v <= hi ? 1 : 0)
                        k[i] &= b.passesBrighter ? (v >= lo ? 1 : 0) : (v > 0 ? 1 : 0) & (v <= hi ? 1 : 0)
                    }
                } else if b.passesBrighter {
                    for i in 0..<min(kb.count, xp.count) {
                        let v = Double(x[i])
                        let above: UInt32 = v >= lo ? 1 : 0
                        band |= above & (v <= hi ? 1 : 0)
                        k[i] &= UInt8(truncatingIfNeeded: above)
                    }
                } else {
                    for i in 0..<min(kb.count, xp.count) {
                        let v = Double(x[i])
                        let below: UInt32 = v <= hi ? 1 : 0
                        band |= (v >= lo ? 1 : 0) & below
                        k[i] &= UInt8(truncatingIfNeeded: (v > 0 ? 1 : 0) & below)
                    }
                }
                inBand = band
            }
        }
        guard inBand != 0 else { return }
        keep.withUnsafeMutableBufferPointer { kp in
            func settle(_ i: Int) {
                let v = Double(xp[i])
                if kp[i] && v >= lo && v <= hi { kp[i] = ExpressionEvaluator.compare(op, FastLog.magnitude(v), m) }
            }
            if let rows { for i in rows { settle(i) } } else { for i in 0..<min(kp.count, xp.count) { settle(i) } }
        }
    }

    /// `keep[i] = keep[i] && passes(i)` over every row, or over `rows`; branch-free on the mask
    /// (bytes holding 0 or 1), so the loop over every row vectorises.
    @inline(__always) static func clear(_ keep: inout [Bool], _ rows: [Int]?, _ passes: (Int) -> Bool) {
        keep.withUnsafeMutableBufferPointer { kp in
            kp.withMemoryRebound(to: UInt8.self) { kb in
                if let rows {
                    for i in rows { kb[i] &= passes(i) ? 1 : 0 }
                } else {
                    for i in 0..<kb.count { kb[i] &= passes(i) ? 1 : 0 }
                }
            }
        }
    }
}
