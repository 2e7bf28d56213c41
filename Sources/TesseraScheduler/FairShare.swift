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

    /// Adds worker time spent (or, negative, corrects an estimate charged earlier).
    mutating func charge(_ user: Int, micros: Double, now: UInt64) {
        guard micros.isFinite, micros != 0 else { return }
        var exponent = Double(Int64(bitPattern: now &- reference)) / Double(halfLifeNs)
        if exponent > 64 {
            // Renormalise: decay everyone to `now`, which becomes the reference.
            let factor = exp2(-exponent)
            for i in scaledUsage.indices { scaledUsage[i] *= factor }
            reference = now
            exponent = 0
        }
        scaledUsage[user] = max(0, scaledUsage[user] + micros * exp2(max(exponent, -64)))
    }

    /// The ordering key within a class: lower runs first. Comparable between users at any one moment.
    @inline(__always) func rank(_ user: Int) -> Double { scaledUsage[user] / weight[user] }

    /// Worker seconds a user spent, decayed to `now`.
    func usageSeconds(_ user: Int, now: UInt64) -> Double {
        scaledUsage[user] * exp2(-Double(Int64(bitPattern: now &- reference)) / Double(halfLifeNs)) / 1e6
    }

    func weight(of user: Int) -> Double { weight[user] }

    /// Each user's fraction of all users' decayed usage.
    func share(_ user: Int) -> Double {
        let total = scaledUsage.reduce(0, +)
        return total > 0 ? scaledUsage[user] / total : 0
    }

    var userCount: Int { names.count }
}

/// A queue lane: one class and one user. Ready tasks queue in lanes so that the next one is
/// taken from the most urgent class, and within it from the user furthest below their share.
struct Lane: Hashable {
    var priority: PriorityClass
    var user: Int
}

/// Ready task keys by lane, each lane in arrival order. Lanes are few (classes × active users),
/// so choosing among them is a short scan.
struct ReadyLanes {
    private(set) var lanes: [Lane: Deque<UInt64>] = [:]

    /// Keys queued, stale ones included.
    private(set) var count = 0

    var isEmpty: Bool { lanes.isEmpty }

    mutating func append(_ key: UInt64, _ lane: Lane) {
        lanes[lane, default: []].append(key)
        count += 1
    }

    mutating func append(contentsOf keys: [UInt64], _ lane: Lane) {
        if keys.isEmpty { return }
        lanes[lane, default: []].append(contentsOf: keys)
        count += keys.count
    }

    mutating func popFirst(_ lane: Lane) -> UInt64? {
        guard let k = lanes[lane]?.popFirst() else { return nil }
        count -= 1
        if lanes[lane]?.isEmpty == true { lanes.removeValue(forKey: lane) }
        return k
    }

    mutating func popLast(_ lane: Lane) -> UInt64? {
        guard let k = lanes[lane]?.popLast() else { return nil }
        count -= 1
        if lanes[lane]?.isEmpty == true { lanes.removeValue(forKey: lane) }
        return k
    }

    /// Looks at up to `limit` keys from the back of a lane, newest first: `decide` says of each
    /// whether to drop it (stale), take it (removed and returned), or leave it.
    mutating func scanBack(_ lane: Lane, limit: Int, _ decide: (UInt64) -> ScanDecision) -> UInt64? {
        guard var q = lanes.removeValue(forKey: lane) else { return nil }
        let before = q.count
        defer {
            count -= before - q.count
            if !q.isEmpty { lanes[lane] = q }
        }
        var k = q.count - 1
        let stop = Swift.max(0, q.count - limit)
        while k >= stop {
            switch decide(q[k]) {
            case .drop:
                q.remove(at: k)
            case .take:
                return q.remove(at: k)
            case .keep:
                break
            }
            k -= 1
        }
        return nil
    }

    enum ScanDecision { case drop, take, keep }

    /// Every key, lane by lane (to re-queue them elsewhere).
    var allKeys: [UInt64] { lanes.values.flatMap { Array($0) } }
}
