#if canImport(Glibc)
import Glibc
#endif
import TesseraProtocol

/// A mergeable quantile sketch (DDSketch, Masson et al. 2019) with a relative-error guarantee:
/// for any q, the returned value is within `relativeAccuracy` (0.5%) of the exact value at rank
/// ⌊q·(n−1)⌋ of the sorted non-NaN inputs (values of either sign; zero is exact).
///
/// Buckets are fixed by value, not by arrival, so merging sketches in any order or tree shape
/// gives exactly the same sketch: a quantile does not depend on how the catalog was sharded.
public struct QuantileSketch: Sendable, Equatable {
    public static let relativeAccuracy = 0.005
    static let gamma = (1 + relativeAccuracy) / (1 - relativeAccuracy)
    static let logGamma = log(gamma)
    /// Bucket index range kept per sign: values below ~1e-300 in magnitude count in the lowest
    /// bucket (far smaller than any catalog quantity), so memory stays bounded.
    static let minIndex: Int32 = -69_000, maxIndex: Int32 = 69_000

    var positiveOffset: Int32 = 0
    var positive: [UInt64] = []
    var negativeOffset: Int32 = 0
    var negative: [UInt64] = []
    var zeros: UInt64 = 0

    public init() {}

    /// Buckets held, both signs: what the sketch costs (8 bytes each).
    public var buckets: Int { positive.count + negative.count }

    /// Refuses sketches that hold more than `Limits.quantileBuckets` buckets in all.
    static func checkBudget(_ sketches: [[QuantileSketch]]) throws(CatalogQueryError) {
        var total = 0
        for column in sketches { for s in column { total &+= s.buckets } }
        guard total <= Limits.quantileBuckets else {
            throw CatalogQueryError("the quantiles need sketches of over \(Limits.quantileBuckets) buckets (\(Limits.quantileBuckets >> 17) MiB): their values span too many factors of ten in too many groups; ask for fewer groups, or a quantile of something narrower (a magnitude rather than a flux)")
        }
    }

    /// Values counted (NaN is never added).
    public var count: UInt64 { positive.reduce(zeros, +) + negative.reduce(0, +) }

    @inline(__always) static func index(_ magnitude: Double) -> Int32 {
        let i = (log(magnitude) / logGamma).rounded(.up)
        if !(i > Double(minIndex)) { return minIndex }
        return i < Double(maxIndex) ? Int32(i) : maxIndex
    }

    /// The value a bucket stands for: the point of (γ^(i−1), γ^i] with equal relative error to both ends.
    static func value(_ i: Int32) -> Double { 2 * pow(gamma, Double(i)) / (gamma + 1) }

    /// Adds one value; NaN is skipped, as pandas does.
    @inline(__always) public mutating func add(_ v: Double) {
        if v.isNaN { return }
        if v > 0 {
            Self.bump(&positive, &positiveOffset, Self.index(v), by: 1)
        } else if v < 0 {
            Self.bump(&negative, &negativeOffset, Self.index(-v), by: 1)
        } else {
            zeros += 1
        }
    }

    @inline(__always) static func bump(_ buckets: inout [UInt64], _ offset: inout Int32, _ i: Int32, by n: UInt64) {
        if buckets.isEmpty {
            offset = i
            buckets.append(n)
            return
        }
        if i < offset {
            buckets.insert(contentsOf: [UInt64](repeating: 0, count: Int(offset - i)), at: 0)
            offset = i
        } else if Int(i - offset) >= buckets.count {
            buckets.append(contentsOf: [UInt64](repeating: 0, count: Int(i - offset) - buckets.count + 1))
        }
        buckets[Int(i - offset)] += n
    }

    /// Adds another sketch's counts.
    public mutating func merge(_ o: QuantileSketch) {
        zeros += o.zeros
        for (k, n) in o.positive.enumerated() where n > 0 { Self.bump(&positive, &positiveOffset, o.positiveOffset + Int32(k), by: n) }
        for (k, n) in o.negative.enumerated() where n > 0 { Self.bump(&negative, &negativeOffset, o.negativeOffset + Int32(k), by: n) }
    }

    /// The value at rank ⌊q·(n−1)⌋ within the relative accuracy; NaN when empty or q is outside [0, 1].
    public func quantile(_ q: Double) -> Double {
        let n = count
        guard n > 0, q >= 0, q <= 1 else { return .nan }
        let rank = UInt64((q * Double(n - 1)).rounded(.down))
        var seen: UInt64 = 0
        // Most negative first: the negative store read from its largest magnitude down.
        for k in stride(from: negative.count - 1, through: 0, by: -1) {
            seen += negative[k]
            if seen > rank { return -Self.value(negativeOffset + Int32(k)) }
        }
        seen += zeros
        if seen > rank { return 0 }
        for k in 0..<positive.count {
            seen += positive[k]
            if seen > rank { return Self.value(positiveOffset + Int32(k)) }
        }
        return Self.value(positiveOffset + Int32(positive.count - 1))
    }

    // MARK: Wire form

    public init(_ p: Tessera_V1_QuantileSketch) {
        positiveOffset = p.positiveOffset
        positive = p.positive
        negativeOffset = p.negativeOffset
        negative = p.negative
        zeros = p.zeros
    }

    public var proto: Tessera_V1_QuantileSketch {
        var p = Tessera_V1_QuantileSketch()
        p.positiveOffset = positiveOffset
        p.positive = positive
        p.negativeOffset = negativeOffset
        p.negative = negative
        p.zeros = zeros
        return p
    }

    /// Rejects sketches whose bucket ranges fall outside what `add` can produce (from a corrupt message).
    var isWellFormed: Bool {
        func ok(_ off: Int32, _ b: [UInt64]) -> Bool {
            b.isEmpty || (off >= Self.minIndex && Int(off) + b.count - 1 <= Int(Self.maxIndex))
        }
        return ok(positiveOffset, positive) && ok(negativeOffset, negative)
    }
}
