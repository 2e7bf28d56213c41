import TesseraProtocol

/// Where a task is in its life. Raw values are stored in a byte per task.
enum TaskState: UInt8 {
    /// Some input is not available yet.
    case waiting
    /// Queued at the scheduler, not yet sent to a worker.
    case ready
    /// Sent to a worker, not yet reported.
    case running
    /// Finished; its value is held by `holder` because some dependent still needs it.
    case done
    /// Finished, and its value is no longer held anywhere (nothing needs it).
    case released
    /// Briefly, while recovery decides whether it waits or is ready.
    case recovering
}

/// One job's tasks as parallel arrays (struct of arrays: a million tasks are a few dozen MB, and
/// every update is an index, not a hash lookup or an object).
///
/// A reference type because the state machine updates it in place through many helpers; it
/// never leaves the scheduler's one thread.
final class JobRecord {
    let id: JobID
    let client: ConnectionID
    let clientTag: UInt64
    let name: String
    /// Whom it runs for (from authentication, or the user an admin submitted it for).
    var user = ClientIdentity.local.user
    /// Its class, and the fair-share user index: the queue lane its ready tasks wait in.
    var priority: PriorityClass = .normal
    var lane = Lane(priority: .normal, user: 0, job: 0)
    /// What the registry says it will read (catalog questions).
    var estimate: Tessera_V1_CostEstimate?
    let operators: [String]
    let params: [Tessera_V1_OperatorParams]
    let dataKeys: [String]
    let batchResults: Bool
    let submittedAt: UInt64

    // The graph. Progressive snapshot tasks are appended after the submitted graph's tasks: they
    // read the current frontier of finished partial answers and no task reads them, so the
    // reverse-edge CSR only grows an empty range at its end.
    var op: [UInt16]
    var arg: [Int64]
    var paramIndex: [UInt32]
    var dataKey: [UInt32]
    var inputOffsets: [UInt32]
    var inputs: [UInt32]
    var dependentOffsets: [UInt32]
    let dependents: [UInt32]
    var isOutput: [Bool]
    let outputCount: Int
    /// Tasks of the submitted graph; indices at or past this are snapshots.
    let graphTaskCount: Int

    /// For progressive jobs: how to merge partial answers, and how often to send one.
    var progress: Progress?
    struct Progress {
        var operatorIndex: UInt16
        var paramIndex: UInt32
        var intervalNs: UInt64
        var lastSnapshotAt: UInt64
        /// A graph task finished since the last snapshot was taken.
        var newWork = false
        /// The snapshot task in flight (one at a time), if any.
        var running: Int?
        /// No snapshot before this: at least `intervalNs` apart, and never more than a fifth of
        /// the time spent on snapshots (a merge of a large frontier must not starve the scans).
        var nextAllowedAt: UInt64 = 0
    }

    // Mutable per-task state.
    var state: [TaskState]
    /// Inputs not yet available, for waiting tasks.
    var waitCount: [UInt32]
    /// Dependents not yet done: the value is released when this reaches zero.
    var pendingDependents: [UInt32]
    /// The worker holding the value (done tasks) or running the task (running tasks); 0 = none.
    var worker: [WorkerID]
    var resultBytes: [UInt32]
    var operatorFailures: [UInt8]
    /// Workers on which a task's operator failed (few tasks ever fail: kept sparse), so that its
    /// retry goes to another holder of its data when there is one.
    var failedOn: [Int: Set<WorkerID>] = [:]
    /// Runs of a task cancelled past their deadline (sparse, like `failedOn`).
    var timeouts: [Int: Int] = [:]
    /// Runs of a task that found an input missing on a holder the scheduler still counted live
    /// (sparse, like `failedOn`): a value no fetch can bring (a peer that cannot be reached, a
    /// value over the fetcher's budget) must fail the job rather than be recomputed forever.
    var missingInputRounds: [Int: Int] = [:]
    /// The job's own task deadline (nil: the scheduler's, from the data size).
    var taskTimeoutNs: UInt64?
    var lostRuns: [UInt8]
    var delivered: [Bool]

    var doneCount = 0
    /// Task runs, all told.
    var runs = 0
    /// Its tasks' smoothed compute time, microseconds, once one has reported (for in-flight limits).
    var meanTaskMicros: Double?
    /// Times each task was run (a run that found an input missing did not execute and is not counted).
    var runCount: [UInt16]
    /// Worker microseconds charged to the user's fair share when the task was handed out (an
    /// estimate), and when: replaced by what it took when it reports, refunded when the run
    /// never executed or its job ended first.
    var charged: [Double]
    var chargedAt: [UInt64]
    /// Runs beyond each task's first.
    var reruns: Int { runCount.reduce(0) { $0 + max(0, Int($1) - 1) } }
    /// Workers that have received this job's operator table.
    var setUpOn: Set<WorkerID> = []

    /// Ready tasks held back while the client is not reading and the job holds
    /// `maxHeldResultBytes` of its results; queued again when the client reads.
    var parked: [UInt64] = []

    // Results waiting to be streamed to the client.
    var pendingValues: [Tessera_V1_ValueInfo] = []
    var pendingBytes: [UInt8] = []
    /// Direct results: outputs stay on their workers and the client takes them there.
    let directResults: Bool
    /// A collect's row cap (every shard's rows are an output of their own, each capped on its
    /// worker): the rows its outputs reported, together, may not pass it.
    var rowCap: UInt64?
    var rowsReturned: UInt64 = 0
    /// The CURVE key of the client that submitted the job (empty when insecure).
    var clientKey = ""
    var pendingLocations: [Tessera_V1_ValueLocation] = []
    /// For direct results: the secret a take of them presents (see `JobSetup.take_token`).
    var takeToken: [UInt8] = []

    /// Sixteen bytes from the system's cryptographic generator (getrandom).
    static func newTakeToken() -> [UInt8] {
        var g = SystemRandomNumberGenerator()
        return (0..<2).flatMap { _ in withUnsafeBytes(of: g.next() as UInt64) { Array($0) } }
    }
    var lastResultsSentAt: UInt64 = 0

    var taskCount: Int { op.count }
    /// Every task of the submitted graph has finished.
    var isComplete: Bool { doneCount == graphTaskCount }
    @inline(__always) func isSnapshot(_ t: Int) -> Bool { t >= graphTaskCount }

    /// Its tasks when admitted (snapshots added later are not counted against its user's budget).
    let admittedTasks: Int

    init(id: JobID, client: ConnectionID, submit: Tessera_V1_SubmitJob, graph: TaskGraph, now: UInt64) {
        self.id = id
        admittedTasks = graph.taskCount
        self.client = client
        clientTag = submit.clientTag
        name = submit.name
        batchResults = submit.batchResults
        directResults = submit.directResults
        submittedAt = now
        operators = graph.operators
        params = graph.params
        dataKeys = graph.dataKeys
        op = graph.op
        arg = graph.arg
        paramIndex = graph.paramIndex
        dataKey = graph.dataKey
        inputOffsets = graph.inputOffsets
        inputs = graph.inputs
        let n = graph.taskCount
        graphTaskCount = n

        // Reverse edges, as a second CSR.
        var counts = [UInt32](repeating: 0, count: n + 1)
        for i in graph.inputs { counts[Int(i) + 1] += 1 }
        for i in 0..<n { counts[i + 1] += counts[i] }
        var fill = counts
        var deps = [UInt32](repeating: 0, count: graph.inputs.count)
        for t in 0..<n {
            for j in Int(graph.inputOffsets[t])..<Int(graph.inputOffsets[t + 1]) {
                let src = Int(graph.inputs[j])
                deps[Int(fill[src])] = UInt32(t)
                fill[src] += 1
            }
        }
        dependentOffsets = counts
        dependents = deps

        var out = [Bool](repeating: false, count: n)
        if graph.outputs.isEmpty {
            for t in 0..<n where counts[t + 1] == counts[t] { out[t] = true }
        } else {
            for o in graph.outputs { out[Int(o)] = true }
        }
        isOutput = out
        outputCount = out.reduce(0) { $0 + ($1 ? 1 : 0) }

        state = [TaskState](repeating: .waiting, count: n)
        waitCount = (0..<n).map { graph.inputOffsets[$0 + 1] - graph.inputOffsets[$0] }
        pendingDependents = (0..<n).map { counts[$0 + 1] - counts[$0] }
        worker = [WorkerID](repeating: 0, count: n)
        resultBytes = [UInt32](repeating: 0, count: n)
        operatorFailures = [UInt8](repeating: 0, count: n)
        lostRuns = [UInt8](repeating: 0, count: n)
        delivered = [Bool](repeating: false, count: n)
        runCount = [UInt16](repeating: 0, count: n)
        charged = [Double](repeating: 0, count: n)
        chargedAt = [UInt64](repeating: 0, count: n)
    }

    @inline(__always) func hasDependents(_ t: Int) -> Bool { dependentOffsets[t + 1] > dependentOffsets[t] }

    @inline(__always) func inputRange(_ t: Int) -> Range<Int> { Int(inputOffsets[t])..<Int(inputOffsets[t + 1]) }

    @inline(__always) func dependentRange(_ t: Int) -> Range<Int> { Int(dependentOffsets[t])..<Int(dependentOffsets[t + 1]) }

    /// The data key a task reads, if any.
    /// The name of task `t`'s operator.
    func operatorName(_ t: Int) -> String {
        let k = Int(op[t])
        return k < operators.count ? operators[k] : ""
    }

    func dataKeyName(_ t: Int) -> String? {
        guard !dataKey.isEmpty, dataKey[t] > 0 else { return nil }
        return dataKeys[Int(dataKey[t]) - 1]
    }

    /// Appends a snapshot task merging `sources` (finished tasks whose values are held), pinning
    /// those values until it finishes. Returns its index.
    func appendSnapshot(of sources: [Int], operatorIndex: UInt16, paramIndex p: UInt32) -> Int {
        let t = taskCount
        op.append(operatorIndex)
        arg.append(0)
        paramIndex.append(p)
        if !dataKey.isEmpty { dataKey.append(0) }
        for i in sources {
            inputs.append(UInt32(i))
            pendingDependents[i] += 1
        }
        inputOffsets.append(UInt32(inputs.count))
        dependentOffsets.append(dependentOffsets[dependentOffsets.count - 1])
        isOutput.append(true)
        state.append(.waiting)
        waitCount.append(0)
        pendingDependents.append(0)
        worker.append(0)
        resultBytes.append(0)
        operatorFailures.append(0)
        lostRuns.append(0)
        delivered.append(false)
        runCount.append(0)
        charged.append(0)
        chargedAt.append(0)
        return t
    }

    var runningCount: Int { state.reduce(0) { $0 + ($1 == .running ? 1 : 0) } }
    var readyCount: Int { state.reduce(0) { $0 + ($1 == .ready ? 1 : 0) } }
}
