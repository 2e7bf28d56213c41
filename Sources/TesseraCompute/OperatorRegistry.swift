import TesseraProtocol
import TesseraStorage

#if canImport(Glibc)
import Glibc
#endif

/// Everything one task invocation sees.
public struct OperatorContext: Sendable {
    /// The task's integer argument.
    public var arg: Int64
    /// The task's named parameters (empty when it has none).
    public var params: Tessera_V1_OperatorParams
    /// Values of the task's inputs, in the order the graph lists them.
    public var inputs: [Value]
    /// The data (shard, tile) the task reads, if any.
    public var dataKey: String?
    /// The worker's data folder, where `dataKey` is found.
    public var dataRoot: String?
    /// The registry's checksum of that data, when known: a file that differs is refused.
    public var dataChecksum: UInt64?
    /// Long-running operators poll this and stop early when the job was cancelled.
    public var isCancelled: @Sendable () -> Bool
    /// The worker's open shard files and decoded column chunks, shared by its tasks (nil: each
    /// task opens its shard itself, with no chunk cache).
    public var shardReaders: ShardReaderPool?

    public init(arg: Int64 = 0, params: Tessera_V1_OperatorParams = .init(), inputs: [Value] = [], dataKey: String? = nil,
                dataRoot: String? = nil, isCancelled: @escaping @Sendable () -> Bool = { false }) {
        self.arg = arg
        self.params = params
        self.inputs = inputs
        self.dataKey = dataKey
        self.dataRoot = dataRoot
        self.isCancelled = isCancelled
    }

    /// A numeric parameter, or `default` when absent.
    public func number(_ name: String, default d: Double) -> Double { params.numbers[name] ?? d }
}

/// Why an operator could not produce a value; the message reaches the client as the job's error.
public struct OperatorError: Error, CustomStringConvertible, Sendable, Equatable {
    public let operatorName: String
    public let message: String
    /// False when running the task again, here or elsewhere, would fail the same way (the
    /// question itself is refused): the scheduler then fails the job at once.
    public let retryable: Bool

    public init(_ operatorName: String, _ message: String, retryable: Bool = true) {
        self.operatorName = operatorName
        self.message = message
        self.retryable = retryable
    }

    public var description: String { "operator `\(operatorName)`\(retryable ? "" : " refused"): \(message)" }
}

/// An operator a worker can run: a name and a function from context to value. Dataframe and
/// image operators register here the same way as the built-in ones.
public struct TaskOperator: Sendable {
    public let name: String
    public let summary: String
    public let run: @Sendable (OperatorContext) throws(OperatorError) -> Value
    /// Set for operators whose tasks can share one pass over the same data (shard scans): the
    /// worker's pool then runs tasks with the same pass key together.
    public let sharedPass: SharedPassSupport?

    public init(_ name: String, _ summary: String, sharedPass: SharedPassSupport? = nil,
                run: @escaping @Sendable (OperatorContext) throws(OperatorError) -> Value) {
        self.name = name
        self.summary = summary
        self.sharedPass = sharedPass
        self.run = run
    }
}

/// How an operator's tasks share a pass over their data.
public struct SharedPassSupport: Sendable {
    /// The pass a task may join: tasks with the same key read the same data the same way (nil:
    /// the task runs alone).
    public let key: @Sendable (OperatorContext) -> String?
    /// Opens a pass over the task's data; an error is the task's own (as if it had run alone).
    public let open: @Sendable (OperatorContext) throws(OperatorError) -> any TaskPass

    public init(key: @escaping @Sendable (OperatorContext) -> String?, open: @escaping @Sendable (OperatorContext) throws(OperatorError) -> any TaskPass) {
        self.key = key
        self.open = open
    }
}

/// A pass over one piece of data that answers every task attached to it.
public protocol TaskPass: AnyObject, Sendable {
    /// Attaches a task; `done` is called once with its value and the worker time charged to it,
    /// on the thread running the pass. False once the pass has ended.
    func attach(_ ctx: OperatorContext, done: @escaping @Sendable (Result<Value, OperatorError>, _ micros: UInt32) -> Void) -> Bool
    /// Runs the pass on the calling thread until no task remains attached; then it has ended.
    func run()
    /// Tasks attached over the pass's life.
    var tasksAnswered: Int { get }
}

/// Maps operator names to implementations.
public struct OperatorRegistry: Sendable {
    private var table: [String: TaskOperator] = [:]

    public init(_ operators: [TaskOperator] = []) {
        for o in operators { register(o) }
    }

    public mutating func register(_ op: TaskOperator) { table[op.name] = op }

    public subscript(name: String) -> TaskOperator? { table[name] }

    /// Registered names, sorted.
    public var names: [String] { table.keys.sorted() }

    /// The registry every worker starts with.
    public static var standard: OperatorRegistry { OperatorRegistry(BuiltinOperators.all + CatalogOperators.all + ImageOperators.all + HiPSOperators.all) }

    /// Operators only the scheduler places, from plans it has checked: their parameters are
    /// catalog questions, tiles and boxes checked against the registry, the limits and the
    /// user's access, which a client's own task graph would bypass. A client asks for them with
    /// a plan.
    public static let planOnly: Set<String> = Set((CatalogOperators.all + ImageOperators.all + HiPSOperators.all).map(\.name))
        .union([PythonOperatorNames.map, PythonOperatorNames.combine])
}
