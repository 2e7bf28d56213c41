import Synchronization

/// The cells (rows × columns) of sync answers the gateway holds at once, for all requests
/// together. A TAP sync answer is held whole from its first row until it is written, so each
/// user's share of requests bounded one user's memory, not the gateway's: 1,024 requests of
/// 20M cells each were tens of gigabytes. An answer takes its cells as its rows arrive; one that
/// would pass the limit is stopped on the cluster and refused (503, worth asking again).
public final class AnswerBudget: Sendable {
    /// The most cells held at once.
    let limit: Int
    private let used = Mutex(0)

    init(limit: Int) { self.limit = limit }

    /// Why an answer is refused.
    var refusal: TAPError {
        TAPError(503, "the gateway holds \(limit) cells (rows × columns) of answers at most, for all queries together, and this answer would pass that: try again shortly, or ask for fewer rows (MAXREC) or columns")
    }

    /// Takes `cells` more; false, taking nothing, when that would pass the limit.
    fileprivate func take(_ cells: Int) -> Bool {
        used.withLock { u in
            guard cells <= limit - u else { return false }
            u += cells
            return true
        }
    }

    fileprivate func giveBack(_ cells: Int) {
        used.withLock { $0 -= cells }
    }
}

/// One answer's cells in an ``AnswerBudget``, given back when it is dropped (its answer written,
/// or the request failed).
public final class AnswerCells: Sendable {
    let budget: AnswerBudget
    private let held = Mutex(0)
    /// Set when a take was refused: the question that asked stops.
    private let refused = Atomic<Bool>(false)

    init(_ budget: AnswerBudget) { self.budget = budget }

    /// Takes `cells` more from the budget; false (and ``isRefused`` from then on) when the
    /// budget has no room.
    @discardableResult
    func take(_ cells: Int) -> Bool {
        guard cells > 0 else { return true }
        guard budget.take(cells) else {
            refused.store(true, ordering: .relaxed)
            return false
        }
        held.withLock { $0 += cells }
        return true
    }

    /// Takes what `cells` needs beyond what is held already.
    @discardableResult
    func cover(_ cells: Int) -> Bool {
        take(cells - held.withLock { $0 })
    }

    var isRefused: Bool { refused.load(ordering: .relaxed) }

    /// Gives back every cell held (the rows they were for were dropped).
    func giveBack() {
        budget.giveBack(held.withLock { h in
            defer { h = 0 }
            return h
        })
    }

    deinit { giveBack() }
}
