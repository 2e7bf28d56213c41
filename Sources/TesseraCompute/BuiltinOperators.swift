import TesseraProtocol
#if canImport(Glibc)
import Glibc
#endif

/// The operators every worker has: no-op, numeric generators, column statistics and mergeable
/// reductions. Enough to exercise the scheduler and wire; the dataframe and image operators come
/// from their own modules into the same registry.
public enum BuiltinOperators {
    public static let all: [TaskOperator] = [noop, inc, sum, arange, randomNormal, count, columnSum, mean, moments, mergeMoments, fail]

    /// Does nothing; returns `empty`.
    public static let noop = TaskOperator("noop", "does nothing") { _ in .empty }

    /// `arg + 1` with no inputs, otherwise (sum of the inputs) + 1. Parameter `sleep_us` makes it
    /// take that long (for tests and benchmarks of slow tasks; it honours cancellation).
    public static let inc = TaskOperator("inc", "arg + 1, or the inputs' sum + 1") { ctx throws(OperatorError) in
        let sleepMicros = ctx.number("sleep_us", default: 0)
        if sleepMicros > 0 { try sleep(micros: sleepMicros, ctx, "inc") }
        if ctx.inputs.isEmpty { return .int64(ctx.arg &+ 1) }
        switch try total(ctx.inputs, "inc") {
        case .int64(let v): return .int64(v &+ 1)
        case .float64(let v): return .float64(v + 1)
        default: return .empty
        }
    }

    /// The sum of every number in the inputs (scalars and column elements); `arg` when it has none.
    public static let sum = TaskOperator("sum", "sum of all input numbers") { ctx throws(OperatorError) in
        ctx.inputs.isEmpty ? .int64(ctx.arg) : try total(ctx.inputs, "sum")
    }

    /// A Float64 column `start, start + step, ...` of `arg` values (parameters `start`, `step`).
    public static let arange = TaskOperator("arange", "float64 column of arg evenly spaced values") { ctx throws(OperatorError) in
        guard ctx.arg >= 0, ctx.arg <= 1 << 28 else { throw OperatorError("arange", "length \(ctx.arg) is outside 0...\(1 << 28)") }
        let start = ctx.number("start", default: 0), step = ctx.number("step", default: 1)
        return .float64Column((0..<Int(ctx.arg)).map { start + Double($0) * step })
    }

    /// `arg` normally distributed Float64 values (parameters `seed`, `mean`, `sigma`), the same
    /// for the same seed on every machine.
    public static let randomNormal = TaskOperator("random_normal", "float64 column of arg normal deviates") { ctx throws(OperatorError) in
        guard ctx.arg >= 0, ctx.arg <= 1 << 28 else { throw OperatorError("random_normal", "length \(ctx.arg) is outside 0...\(1 << 28)") }
        let seed = ctx.number("seed", default: 0)
        guard let seedInt = Int64(exactly: seed.rounded(.towardZero)) else {
            throw OperatorError("random_normal", "seed \(seed) is not a representable integer")
        }
        var rng = SplitMix64(seed: UInt64(bitPattern: seedInt))
        let mu = ctx.number("mean", default: 0), sigma = ctx.number("sigma", default: 1)
        let n = Int(ctx.arg)
        var out = [Double](repeating: 0, count: n)
        var i = 0
        while i < n {
            // Box–Muller: two deviates per pair of uniforms.
            let u1 = max(rng.nextUnit(), Double.leastNonzeroMagnitude), u2 = rng.nextUnit()
            let r = (-2 * log(u1)).squareRoot()
            out[i] = mu + sigma * r * cos(2 * .pi * u2)
            if i + 1 < n { out[i + 1] = mu + sigma * r * sin(2 * .pi * u2) }
            i += 2
        }
        return .float64Column(out)
    }

    /// Number of non-NaN elements in the inputs (as pandas' count).
    public static let count = TaskOperator("count", "count of non-NaN input elements") { ctx throws(OperatorError) in
        var n: Int64 = 0
        for v in ctx.inputs {
            switch v {
            // Wrapping, and a moments' count (a peer's number) only when it is one: inputs
            // doubled by a graph, or a NaN count, may not trap the worker.
            case .float64Column(let c): for x in c where !x.isNaN { n &+= 1 }
            case .int64Column(let c): n &+= Int64(c.count)
            case .float64(let x): if !x.isNaN { n &+= 1 }
            case .int64: n &+= 1
            case .moments(let m):
                guard let k = Int64(exactly: m.count.rounded(.towardZero)), k >= 0 else {
                    throw OperatorError("count", "a moments input counts \(m.count) elements, not a whole number that fits")
                }
                n &+= k
            case .empty: break
            case .bytes: throw OperatorError("count", "cannot count opaque bytes")
            }
        }
        return .int64(n)
    }

    /// Sum of the non-NaN elements of Float64 inputs as Float64.
    public static let columnSum = TaskOperator("column_sum", "sum of non-NaN input elements, as float64") { ctx throws(OperatorError) in
        .float64(try moments(of: ctx.inputs, "column_sum").sum)
    }

    /// Mean of the non-NaN input elements (NaN when there are none).
    public static let mean = TaskOperator("mean", "mean of non-NaN input elements") { ctx throws(OperatorError) in
        let m = try moments(of: ctx.inputs, "mean")
        return .float64(m.count > 0 ? m.mean : .nan)
    }

    /// The mergeable moments (count, mean, M2, min, max, sum) of the inputs' elements.
    public static let moments = TaskOperator("moments", "mergeable moments of input elements") { ctx throws(OperatorError) in
        .moments(try moments(of: ctx.inputs, "moments"))
    }

    /// Merges moments (and raw columns) from the inputs into one state: the reduction step.
    public static let mergeMoments = TaskOperator("merge_moments", "merge of input moments") { ctx throws(OperatorError) in
        .moments(try moments(of: ctx.inputs, "merge_moments"))
    }

    /// Always fails with parameter string `message` (for testing the failure path).
    public static let fail = TaskOperator("fail", "always fails") { ctx throws(OperatorError) in
        throw OperatorError("fail", ctx.params.strings["message"] ?? "failed as asked", retryable: ctx.params.strings["refuse"] == nil)
    }

    // MARK: Helpers

    static func total(_ inputs: [Value], _ name: String) throws(OperatorError) -> Value {
        var i: Int64 = 0
        var f: Double = 0
        var isFloat = false
        for v in inputs {
            switch v {
            case .int64(let x): i &+= x
            case .int64Column(let c): for x in c { i &+= x }
            case .float64(let x): f += x; isFloat = true
            case .float64Column(let c): for x in c { f += x }; isFloat = true
            case .moments(let m): f += m.sum; isFloat = true
            case .empty: break
            case .bytes: throw OperatorError(name, "cannot add opaque bytes")
            }
        }
        return isFloat ? .float64(f + Double(i)) : .int64(i)
    }

    static func moments(of inputs: [Value], _ name: String) throws(OperatorError) -> Moments {
        var m = Moments()
        for v in inputs {
            switch v {
            case .moments(let o): m.merge(o)
            case .float64Column(let c): m.merge(Moments(of: c))
            case .int64Column(let c): m.merge(Moments(of: c.lazy.map(Double.init)))
            case .float64(let x): m.merge(Moments(of: CollectionOfOne(x)))
            case .int64(let x): m.merge(Moments(of: CollectionOfOne(Double(x))))
            case .empty: break
            case .bytes: throw OperatorError(name, "cannot take moments of opaque bytes")
            }
        }
        return m
    }

    static func sleep(micros: Double, _ ctx: OperatorContext, _ name: String) throws(OperatorError) {
        var left = micros
        while left > 0 {
            if ctx.isCancelled() { throw OperatorError(name, "cancelled") }
            let step = min(left, 10_000)
            usleep(UInt32(step))
            left -= step
        }
    }
}

/// A small, fast, seedable generator (Steele et al.'s SplitMix64), identical on every platform.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// A uniform double in [0, 1).
    public mutating func nextUnit() -> Double { Double(next() >> 11) * 0x1.0p-53 }
}
