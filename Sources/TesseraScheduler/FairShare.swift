import DequeModule
import Foundation
import TesseraProtocol

/// Each user's recent worker time, decayed with a half-life, as Slurm's fair-share factor uses
/// it: within a class, the user with the least usage per unit of weight runs next.
///
/// Usage is kept scaled to a moving reference time instead of decayed per read: every user
/// decays by the same factor, so comparing scaled values orders users exactly as decayed values
/// would, and picking the next task costs no exponentials. A charge at time `now` is scaled up
/// by 2^((now − reference)/half-life); when that factor grows large, all values are scaled down
/// and the reference moves.
struct FairShare {
    let halfLifeNs: UInt64
    private(set) var names: [String] = []
    private var ids: [String: Int] = [:]
    /// Worker microseconds, scaled to `reference`.
    private var scaledUsage: [Double] = []
    private var weight: [Double] = []
    private var reference: UInt64
    private let weights: [String: Double]
    /// Scales are taken per tenth of a second (usage moves by 0.02 % in that time at the default
    /// half-life), and the two latest are kept: a task's refund, at its report, then finds its
    /// charge's scale without computing an exponential.
    static let quantumNs: UInt64 = 100_000_000
    private var cachedQuanta: (UInt64, UInt64) = (.max, .max)
    private var cachedScales: (Double, Double) = (1, 1)

    init(halfLifeNs: UInt64, weights: [String: Double], now: UInt64) {
        self.halfLifeNs = max(1, halfLifeNs)
        self.weights = weights
        reference = now
    }

    /// The user's index, assigned on first sight.
    mutating func id(of user: String) -> Int {
        if let i = ids[user] { return i }
        let i = names.count
        ids[user] = i
        names.append(user)
        scaledUsage.append(0)
        let w = weights[user] ?? 1
        weight.append(w.isFinite && w > 0 ? w : 1)
        return i
    }

    /// 2^((t − reference)/half-life), t taken to its tenth of a second.
    private mutating func scale(at t: UInt64) -> Double {
        let q = t / Self.quantumNs
        if q == cachedQuanta.0 { return cachedScales.0 }
        if q == cachedQuanta.1 { return cachedScales.1 }
        let exponent = Double(Int64(bitPattern: q &* Self.quantumNs &- reference)) / Double(halfLifeNs)
        let s = exp2(max(exponent, -1074))
        cachedQuanta = (q, cachedQuanta.0)
        cachedScales = (s, cachedScales.0)
        return s
    }

    /// Adds worker time spent.
    mutating func charge(_ user: Int, micros: Double, now: UInt64) {
        guard micros.isFinite, micros > 0 else { return }
        let (limit, overflow) = halfLifeNs.multipliedReportingOverflow(by: 64)
        if !overflow && now > reference && now &- reference > limit {
            // Renormalise: decay everyone to `now`, which becomes the reference.
            let factor = exp2(-Double(now &- reference) / Double(halfLifeNs))
            for i in scaledUsage.indices { scaledUsage[i] *= factor }
            reference = now
            cachedQuanta = (.max, .max)
        }
        scaledUsage[user] += micros * scale(at: now)
    }

    /// Takes back a charge of `micros` made at `chargedAt` (an estimate, replaced by what the
    /// task took, or refunded for a run that never executed), at the scale it was added with:
    /// 2^((chargedAt − reference)/half-life), which also holds after a renormalisation moved
    /// the reference, since that scaled everything added before it alike.
    mutating func refund(_ user: Int, micros: Double, chargedAt: UInt64) {
        guard micros > 0, micros.isFinite else { return }
        scaledUsage[user] = max(0, scaledUsage[user] - micros * scale(at: chargedAt))
    }

    /// The ordering key within a class: lower runs first. Comparable between users at any one moment.
    @inline(__always) func rank(_ user: Int) -> Double { scaledUsage[user] / weight[user] }

    /// Worker seconds a user spent, decayed to `now`.
    func usageSeconds(_ user: Int, now: UInt64) -> Double {
        scaledUsage[user] * exp2(-Double(Int64(bitPattern: now &- reference)) / Double(halfLifeNs)) / 1e6
    }

    func weight(of user: Int) -> Double { weight[user] }

    /// Every user's usage together (scaled), for ``share(_:of:)``.
    var totalScaledUsage: Double { scaledUsage.reduce(0, +) }

    /// A user's fraction of all users' decayed usage (`total`: ``totalScaledUsage``).
    func share(_ user: Int, of total: Double) -> Double {
        total > 0 ? scaledUsage[user] / total : 0
    }

    var userCount: Int { names.count }
}

/// A queue lane: one job's ready tasks, with its class and user. The next task is taken from
/// the most urgent class, within it from the user furthest below their share, and among that
/// user's jobs from the oldest: a user's jobs then finish one after another, each as soon as it
/// can, instead of all at the end (a job's merges would otherwise queue behind the scans of the
/// user's later jobs).
struct Lane: Hashable {
    var priority: PriorityClass
    var user: Int
    var job: JobID
}

/// Ready task keys by lane, each lane in arrival order. Lanes are few (jobs with work queued
/// here), so they sit in a small array searched in order, not a hash table; a lane that
/// empties keeps its buffer for the next keys (the common case: one job's queue drained and
/// refilled every turn), and empty lanes are dropped only once there are several.
struct ReadyLanes {
    struct Entry {
        var lane: Lane
        var keys: Deque<UInt64>
    }

    private(set) var entries: [Entry] = []
    /// Keys queued, stale ones included.
    private(set) var count = 0

    var isEmpty: Bool { count == 0 }

    /// Keys queued in lanes of one class, stale ones included.
    func count(of priority: PriorityClass) -> Int {
        entries.reduce(0) { $0 + ($1.lane.priority == priority ? $1.keys.count : 0) }
    }

    @inline(__always) private func index(of lane: Lane) -> Int? {
        for i in entries.indices where entries[i].lane == lane { return i }
        return nil
    }

    mutating func append(_ key: UInt64, _ lane: Lane) {
        count += 1
        if let i = index(of: lane) {
            entries[i].keys.append(key)
            return
        }
        if entries.count >= 8 { entries.removeAll { $0.keys.isEmpty } }
        entries.append(Entry(lane: lane, keys: [key]))
    }

    mutating func append(contentsOf keys: [UInt64], _ lane: Lane) {
        for k in keys { append(k, lane) }
    }

    mutating func popFirst(_ lane: Lane) -> UInt64? {
        guard let i = index(of: lane), let k = entries[i].keys.popFirst() else { return nil }
        count -= 1
        return k
    }

    mutating func popLast(_ lane: Lane) -> UInt64? {
        guard let i = index(of: lane), let k = entries[i].keys.popLast() else { return nil }
        count -= 1
        return k
    }

    /// Lanes with keys queued.
    var lanes: some Sequence<Lane> { entries.lazy.filter { !$0.keys.isEmpty }.map(\.lane) }

    /// Looks at up to `limit` keys from the back of a lane, newest first: `decide` says of each
    /// whether to drop it (stale), take it (removed and returned), or leave it.
    mutating func scanBack(_ lane: Lane, limit: Int, _ decide: (UInt64) -> ScanDecision) -> UInt64? {
        scan(lane, fromBack: true, limit: limit, decide)
    }

    /// As ``scanBack(_:limit:_:)``, from the front (oldest first).
    mutating func scanFront(_ lane: Lane, limit: Int, _ decide: (UInt64) -> ScanDecision) -> UInt64? {
        scan(lane, fromBack: false, limit: limit, decide)
    }

    private mutating func scan(_ lane: Lane, fromBack: Bool, limit: Int, _ decide: (UInt64) -> ScanDecision) -> UInt64? {
        guard let i = index(of: lane) else { return nil }
        var k = fromBack ? entries[i].keys.count - 1 : 0
        var looked = 0
        while k >= 0 && k < entries[i].keys.count && looked < limit {
            looked += 1
            switch decide(entries[i].keys[k]) {
            case .drop:
                entries[i].keys.remove(at: k)
                count -= 1
                if fromBack { k -= 1 }
            case .take:
                count -= 1
                return entries[i].keys.remove(at: k)
            case .keep:
                k += fromBack ? -1 : 1
            }
        }
        return nil
    }

    enum ScanDecision { case drop, take, keep }

    /// Every key, lane by lane (to re-queue them elsewhere).
    var allKeys: [UInt64] { entries.flatMap { Array($0.keys) } }
}
