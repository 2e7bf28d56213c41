/// Count, mean, sum of squared deviations, min, max and sum of a set of numbers: a mergeable
/// aggregate state (Welford's update, Chan et al.'s merge), so partial results combine in any
/// order and tree shape to the same answer within rounding. NaN values are skipped, as pandas does.
public struct Moments: Sendable, Hashable {
    public var count: Double = 0
    public var mean: Double = 0
    /// Sum of squared deviations from the mean.
    public var m2: Double = 0
    public var min: Double = .infinity
    public var max: Double = -.infinity
    public var sum: Double = 0

    static let wireSize = 48

    public init() {}

    /// The moments of `values`, skipping NaN.
    public init<C: Collection>(of values: C) where C.Element == Double {
        for v in values where !v.isNaN { add(v) }
    }

    /// Adds one value (Welford's update); the caller skips NaN.
    @inline(__always) public mutating func add(_ v: Double) {
        count += 1
        let d = v - mean
        mean += d / count
        m2 += d * (v - mean)
        if v < min { min = v }
        if v > max { max = v }
        sum += v
    }

    init(array a: [Double]) {
        count = a[0]; mean = a[1]; m2 = a[2]; min = a[3]; max = a[4]; sum = a[5]
    }

    var asArray: [Double] { [count, mean, m2, min, max, sum] }

    /// Combines two partial states (Chan et al.'s parallel update).
    public mutating func merge(_ o: Moments) {
        if o.count == 0 { return }
        if count == 0 { self = o; return }
        let n = count + o.count
        let d = o.mean - mean
        mean += d * o.count / n
        m2 += o.m2 + d * d * count * o.count / n
        count = n
        if o.min < min { min = o.min }
        if o.max > max { max = o.max }
        sum += o.sum
    }

    /// Sample variance (ddof = 1, as pandas); NaN below two values.
    public var variance: Double { count > 1 ? m2 / (count - 1) : .nan }
    public var standardDeviation: Double { variance.squareRoot() }
}
