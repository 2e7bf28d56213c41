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
    /// The worker's cache of decoded column chunks, shared by its tasks (nil: none).
    public var columnCache: DecodedColumnCache?

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

    public init(_ name: String, _ summary: String, run: @escaping @Sendable (OperatorContext) throws(OperatorError) -> Value) {
        self.name = name
        self.summary = summary
        self.run = run
    }
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
    public static var standard: OperatorRegistry { OperatorRegistry(BuiltinOperators.all + CatalogOperators.all) }
}
