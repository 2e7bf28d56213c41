import Dispatch
import Synchronization
import TesseraProtocol
import TesseraStorage

/// One pass over a shard's row groups that feeds every catalog question attached to it: shared
/// scans (convoy scheduling). Each row group's columns are decoded once for all the questions
/// that read it, however many there are.
///
/// Questions may attach while the pass runs. One that joins at row group `p` is fed `p`, `p+1`,
/// … to the end, then the pass wraps around to the part it missed, `0..<p`; it leaves as soon as
/// it has seen every row group it reads. Each row group is reduced on its own and a question's
/// answer folds the pieces in ascending row-group order (the pieces of `p…` wait until those of
/// `0..<p` are folded), so every question's answer is its solo answer to the last bit.
///
/// `run()` is called by one thread (the driver); `attach` by any.
public final class SharedShardPass: @unchecked Sendable {
    /// A question's answer (the partial's wire bytes) and the worker time charged to it: its own
    /// work plus an equal share of each row group's decoding among the questions that read it.
    public typealias Completion = @Sendable (Result<[UInt8], CatalogQueryError>, _ micros: UInt32) -> Void

    struct Joiner {
        let plan: CatalogQueryPlan
        let isCancelled: @Sendable () -> Bool
        let done: Completion
    }

    /// A question riding the pass (driver-only).
    final class Member {
        let plan: ShardScanPlan
        let isCancelled: @Sendable () -> Bool
        let done: Completion
        /// Whether the question reads each row group of the shard.
        var needs: [Bool]
        /// The shard's columns it may read.
        let columns: [Int]
        /// Row groups it reads that the pass has not yet brought.
        var remaining: Int
        /// The row group it joined at: pieces from there on wait for those before it.
        let start: Int
        var answer: ScanAccumulator
        var waiting: [ScanAccumulator] = []
        /// A head that is full: nothing after it in row-group order can change the answer.
        var complete = false
        var nanos: Double = 0

        init(_ plan: ShardScanPlan, groupCount: Int, start: Int, isCancelled: @escaping @Sendable () -> Bool, done: @escaping Completion) {
            self.plan = plan
            self.isCancelled = isCancelled
            self.done = done
            self.start = start
            needs = [Bool](repeating: false, count: groupCount)
            for g in plan.groups { needs[g] = true }
            columns = plan.columnNumbers.map(\.number) + (plan.indexColumnNumber.map { [$0] } ?? [])
            remaining = plan.groups.count
            answer = plan.accumulator()
        }
    }

    struct Shared {
        var joining: [Joiner] = []
        var closed = false
        var attachedTotal = 0
    }

    public let reader: ShardReader
    public let raColumn: String, decColumn: String
    private let shared = Mutex(Shared())
    // The driver's own state, touched only by the thread in `run()`.
    private var members: [Member] = []
    private var position = 0
    private let groupCount: Int
    /// Columns of each row group asked of the disk ahead of the pass, since it last brought it.
    private var prefetched: [Set<Int>]
    /// Row groups, from the pass's position on, whose chunks are asked of the disk before they
    /// are needed: on a catalog read from the disk, the disk reads those while the core
    /// decodes and evaluates this one (a row group's chunk is about half a megabyte a column).
    static let readAhead = 4
    /// Questions attached in the pass's life, and the most at once (for tests and statistics).
    public private(set) var mostAtOnce = 0
    /// Subexpressions computed once over a row group for several questions, over the pass's life.
    public private(set) var sharedComputations = 0

    public init(reader: ShardReader, raColumn: String, decColumn: String) {
        self.reader = reader
        self.raColumn = raColumn
        self.decColumn = decColumn
        groupCount = reader.ownRowGroups.count
        prefetched = Array(repeating: [], count: groupCount)
    }

    /// Adds a question, to be answered through `done` on the driver's thread. False once the pass
    /// has ended (the caller then starts a pass of its own).
    public func attach(_ plan: CatalogQueryPlan, isCancelled: @escaping @Sendable () -> Bool = { false }, done: @escaping Completion) -> Bool {
        shared.withLock { s in
            if s.closed { return false }
            s.joining.append(Joiner(plan: plan, isCancelled: isCancelled, done: done))
            s.attachedTotal += 1
            return true
        }
    }

    /// Questions attached over the pass's life.
    public var attachedTotal: Int { shared.withLock { $0.attachedTotal } }

    /// Runs the pass until no question is attached (then it is closed: `attach` returns false).
    public func run() {
        while step() {}
    }

    /// Admits the questions waiting to join, then brings one row group to those that read it.
    /// False when the pass has ended.
    func step() -> Bool {
        let joiners: [Joiner]? = shared.withLock { s in
            if s.joining.isEmpty && members.isEmpty {
                s.closed = true
                return nil
            }
            let j = s.joining
            s.joining.removeAll()
            return j
        }
        guard let joiners else { return false }
        for j in joiners { admit(j) }
        mostAtOnce = max(mostAtOnce, members.count)
        if members.isEmpty { return true }

        let g = position
        readAhead(from: g)
        let readers = groupCount == 0 ? [] : members.filter { !$0.complete && $0.needs[g] }
        if !readers.isEmpty {
            bring(g, to: readers)
        }
        // Brought: on the pass's next round (riders that joined late) it is asked for again.
        if groupCount > 0 { prefetched[g].removeAll(keepingCapacity: true) }
        position = groupCount == 0 ? 0 : (position + 1) % groupCount
        finishDone()
        return true
    }

    /// Asks the disk for the chunks the members will read in the next ``readAhead`` row groups,
    /// each chunk once until the pass brings its row group.
    private func readAhead(from g: Int) {
        guard groupCount > 0 else { return }
        for d in 0..<min(Self.readAhead, groupCount) {
            let h = (g + d) % groupCount
            var wanted = Set<Int>()
            for m in members where !m.complete && m.needs[h] { wanted.formUnion(m.columns) }
            wanted.subtract(prefetched[h])
            guard !wanted.isEmpty else { continue }
            reader.prefetch(columns: wanted, rowGroup: h)
            prefetched[h].formUnion(wanted)
        }
    }

    private func admit(_ j: Joiner) {
        let start = DispatchTime.now().uptimeNanoseconds
        let plan: ShardScanPlan
        do throws(CatalogQueryError) {
            let q = try CheckedCatalogQuery(j.plan, columns: reader.footer.columns, raColumn: raColumn, decColumn: decColumn)
            plan = try ShardScanPlan(q, reader: reader, raColumn: raColumn, decColumn: decColumn)
        } catch {
            j.done(.failure(error), Self.micros(since: start))
            return
        }
        let m = Member(plan, groupCount: groupCount, start: position, isCancelled: j.isCancelled, done: j.done)
        m.nanos = Double(DispatchTime.now().uptimeNanoseconds - start)
        members.append(m)
    }

    /// Row group `g` for every member that reads it: each column decoded once, on first use,
    /// and each subexpression that calls a function and that two or more members compute
    /// (`mag(r_psfFlux)` in several questions) computed once over the row group.
    private func bring(_ g: Int, to readers: [Member]) {
        var decoded: [Int: ColumnData] = [:]
        var decodeNanos = 0.0
        var timed: [(Member, Double)] = []
        var shared: SharedValues?
        if readers.count > 1 {
            var seen: Set<String> = [], twice: Set<String> = []
            for m in readers {
                for e in m.plan.functionSubexpressions where !seen.insert(e).inserted { twice.insert(e) }
            }
            if !twice.isEmpty {
                shared = SharedValues(rows: Int(reader.footer.rowGroups[g].rows), subexpressions: twice) { [reader] name in
                    guard let c = try? reader.columnIndex(name) else { return nil }
                    if let d = decoded[c] { return d }
                    guard let d = try? reader.read(column: c, rowGroup: g) else { return nil }
                    decoded[c] = d
                    return d
                }
            }
        }
        for m in readers {
            if m.isCancelled() {
                fail(m, CatalogQueryError("cancelled", retryable: true))
                continue
            }
            let t0 = DispatchTime.now().uptimeNanoseconds
            var decodingHere = 0.0
            do throws(CatalogQueryError) {
                let piece = try m.plan.scan(rowGroup: g, shared: shared) { (c) throws(ShardError) in
                    if let d = decoded[c] { return d }
                    let d0 = DispatchTime.now().uptimeNanoseconds
                    let d = try reader.read(column: c, rowGroup: g)
                    decodingHere += Double(DispatchTime.now().uptimeNanoseconds - d0)
                    decoded[c] = d
                    return d
                }
                m.remaining -= 1
                if g >= m.start && m.start > 0 {
                    // After the row groups this member missed: folded once those are.
                    m.waiting.append(piece)
                } else if try m.answer.absorb(piece) {
                    m.complete = true
                }
            } catch {
                fail(m, error)
            }
            decodeNanos += decodingHere
            timed.append((m, Double(DispatchTime.now().uptimeNanoseconds - t0) - decodingHere))
        }
        sharedComputations += shared?.computed ?? 0
        // The decoding is shared: each member that read the row group pays an equal part.
        let share = timed.isEmpty ? 0 : decodeNanos / Double(timed.count)
        for (m, own) in timed { m.nanos += own + share }
    }

    private func fail(_ m: Member, _ error: CatalogQueryError) {
        members.removeAll { $0 === m }
        m.done(.failure(error), UInt32(clamping: Int(m.nanos / 1000)))
    }

    /// Answers the members that have seen every row group they read (or whose head is full).
    private func finishDone() {
        var still: [Member] = []
        for m in members {
            // Early pieces are all folded once the member has none left to see before `start`
            // (a head full among them needs nothing after).
            guard m.complete || m.remaining == 0 else {
                still.append(m)
                continue
            }
            let t0 = DispatchTime.now().uptimeNanoseconds
            let result: Result<[UInt8], CatalogQueryError>
            do throws(CatalogQueryError) {
                if !m.complete {
                    for piece in m.waiting where try m.answer.absorb(piece) { break }
                }
                m.waiting.removeAll()
                result = .success(try m.answer.serializedPartial())
            } catch {
                result = .failure(error)
            }
            m.nanos += Double(DispatchTime.now().uptimeNanoseconds - t0)
            m.done(result, UInt32(clamping: Int(m.nanos / 1000)))
        }
        members = still
    }

    static func micros(since start: UInt64) -> UInt32 {
        UInt32(clamping: (DispatchTime.now().uptimeNanoseconds - start) / 1000)
    }
}

/// Subexpressions that several questions of a shared pass compute over one row group, each
/// computed once over all the row group's rows on first use and handed to each question for
/// the rows it holds. The values are the same element by element as the question's own
/// evaluation would give (every operator works row by row), so answers do not change.
final class SharedValues {
    let rows: Int
    let subexpressions: Set<String>
    /// A column of the row group, decoded (nil: it could not be read; the question then reads
    /// it itself and reports the error).
    let column: (String) -> ColumnData?
    private var values: [String: ExpressionVector] = [:]
    /// Subexpressions computed so far.
    var computed: Int { values.count }

    init(rows: Int, subexpressions: Set<String>, column: @escaping (String) -> ColumnData?) {
        self.rows = rows
        self.subexpressions = subexpressions
        self.column = column
    }

    /// A lookup for an evaluation over `count` rows: the row group's rows `rows` (nil: all).
    func lookup(rows map: [Int]?, count: Int) -> (ExpressionTree) -> ExpressionVector? {
        { [self] e in value(e, rows: map, count: count) }
    }

    func value(_ e: ExpressionTree, rows map: [Int]?, count: Int) -> ExpressionVector? {
        let key = e.canonical
        guard subexpressions.contains(key) else { return nil }
        if values[key] == nil {
            // Over every row only when this question alone needs a fair part of them: a
            // selective question's few rows cost less on their own.
            guard count * 4 >= rows else { return nil }
            var columns: [String: ExpressionVector] = [:]
            for name in e.columns {
                guard let d = column(name) else { return nil }
                columns[name] = CatalogScan.vector(d)
            }
            values[key] = ExpressionEvaluator.eval(e, columns, rows)
        }
        guard let all = values[key] else { return nil }
        return map.map { all.gathered($0) } ?? all
    }
}
