/// An explicit task graph: a DAG of operator invocations, as parallel arrays indexed by task.
///
/// This is the client's and the scheduler's shared picture of `GraphSpec` and its bulk frames.
/// Inputs of task `i` are `inputs[inputOffsets[i] ..< inputOffsets[i + 1]]`, each an earlier task,
/// so the task order is a topological order and a cycle cannot be expressed.
public struct TaskGraph: Sendable, Equatable {
    /// Operator names; `op[i]` indexes into it.
    public var operators: [String]
    /// Parameter sets; `paramIndex[i]` is 0 for none or `k` for `params[k - 1]`.
    public var params: [Tessera_V1_OperatorParams]
    /// Data keys (shards, tiles) tasks read; `dataKey[i]` is 0 for none or `k` for `dataKeys[k - 1]`.
    public var dataKeys: [String]
    public var op: [UInt16]
    public var arg: [Int64]
    public var paramIndex: [UInt32]
    public var inputOffsets: [UInt32]
    public var inputs: [UInt32]
    /// Tasks whose values go to the client; empty means every task that no other task reads.
    public var outputs: [UInt32]
    /// Empty, or one entry per task.
    public var dataKey: [UInt32]

    public var taskCount: Int { op.count }

    public init(operators: [String] = [], params: [Tessera_V1_OperatorParams] = [], dataKeys: [String] = []) {
        self.operators = operators
        self.params = params
        self.dataKeys = dataKeys
        op = []; arg = []; paramIndex = []; inputOffsets = [0]; inputs = []; outputs = []; dataKey = []
    }

    /// Appends a task and returns its index.
    /// - Parameters:
    ///   - operatorIndex: index into `operators`.
    ///   - inputs: indices of earlier tasks whose values this task reads, in order.
    @discardableResult
    public mutating func add(operatorIndex: Int, arg: Int64 = 0, inputs newInputs: [UInt32] = [], paramIndex p: UInt32 = 0) -> UInt32 {
        let index = UInt32(op.count)
        op.append(UInt16(operatorIndex))
        self.arg.append(arg)
        paramIndex.append(p)
        inputs.append(contentsOf: newInputs)
        inputOffsets.append(UInt32(inputs.count))
        return index
    }

    /// Adds a reduction tree over `inputs`: tasks of `operatorIndex` each reading up to `fanIn`
    /// values, layer by layer, down to one. Returns the root (a single input still gets its own
    /// reduction, so the answer has the same shape whatever the count).
    @discardableResult
    public mutating func addReduction(of inputs: [UInt32], operatorIndex: Int, fanIn: Int, paramIndex p: UInt32 = 0) -> UInt32 {
        precondition(fanIn >= 2 && !inputs.isEmpty)
        var layer = inputs
        repeat {
            var next: [UInt32] = []
            next.reserveCapacity(layer.count / fanIn + 1)
            var i = 0
            while i < layer.count {
                next.append(add(operatorIndex: operatorIndex, inputs: Array(layer[i..<min(i + fanIn, layer.count)]), paramIndex: p))
                i += fanIn
            }
            layer = next
        } while layer.count > 1
        return layer[0]
    }

    /// Reserves room for `tasks` tasks with `inputs` inputs in all.
    public mutating func reserve(tasks: Int, inputs n: Int) {
        op.reserveCapacity(tasks); arg.reserveCapacity(tasks); paramIndex.reserveCapacity(tasks)
        inputOffsets.reserveCapacity(tasks + 1); inputs.reserveCapacity(n)
    }

    // MARK: Wire form

    /// The `GraphSpec` header and its bulk frames, in the order the schema documents.
    public func encoded() -> (Tessera_V1_GraphSpec, [[UInt8]]) {
        var spec = Tessera_V1_GraphSpec()
        spec.taskCount = UInt64(taskCount)
        spec.operators = operators
        spec.params = params
        spec.dataKeys = dataKeys
        return (spec, [
            op.littleEndianBytes, arg.littleEndianBytes, paramIndex.littleEndianBytes,
            inputOffsets.littleEndianBytes, inputs.littleEndianBytes, outputs.littleEndianBytes,
            dataKey.littleEndianBytes,
        ])
    }

    /// Rebuilds and validates a graph from its wire form. Every inconsistency is reported with the
    /// task it concerns; nothing is trusted.
    public init(spec: Tessera_V1_GraphSpec, frames: [[UInt8]], maximumTasks: Int = 50_000_000) throws(ProtocolError) {
        guard frames.count == 7 else {
            throw .invalidContent("task graph needs 7 bulk frames (ops, args, params, input offsets, inputs, outputs, data keys), got \(frames.count)")
        }
        guard spec.taskCount <= UInt64(maximumTasks) else {
            throw .invalidContent("task graph has \(spec.taskCount) tasks, more than the limit of \(maximumTasks)")
        }
        let n = Int(spec.taskCount)
        guard n > 0 else { throw .invalidContent("task graph is empty") }
        guard !spec.operators.isEmpty, spec.operators.count <= Int(UInt16.max) + 1 else {
            throw .invalidContent("task graph names \(spec.operators.count) operators (1 to 65536 allowed)")
        }
        operators = spec.operators
        params = spec.params
        dataKeys = spec.dataKeys
        op = try Self.array(frames[0], "operator index", count: n)
        arg = try Self.array(frames[1], "argument", count: n)
        paramIndex = try Self.array(frames[2], "parameter index", count: n)
        inputOffsets = try Self.array(frames[3], "input offset", count: n + 1)
        inputs = try Self.array(frames[4], "input", count: nil)
        outputs = try Self.array(frames[5], "output", count: nil)
        let dk: [UInt32] = try Self.array(frames[6], "data key", count: nil)
        guard dk.isEmpty || dk.count == n else {
            throw .invalidContent("task graph has \(dk.count) data key entries for \(n) tasks")
        }
        dataKey = dk
        try validate()
    }

    private func validate() throws(ProtocolError) {
        let n = taskCount
        let nOps = operators.count, nParams = params.count, nKeys = dataKeys.count
        guard inputOffsets[0] == 0, Int(inputOffsets[n]) == inputs.count else {
            throw .invalidContent("task graph input offsets do not span the \(inputs.count) inputs")
        }
        for i in 0..<n {
            guard Int(op[i]) < nOps else {
                throw .invalidContent("task \(i) uses operator \(op[i]) but only \(nOps) are named")
            }
            guard Int(paramIndex[i]) <= nParams else {
                throw .invalidContent("task \(i) uses parameter set \(paramIndex[i]) but only \(nParams) are given")
            }
            let lo = inputOffsets[i], hi = inputOffsets[i + 1]
            guard lo <= hi else { throw .invalidContent("task \(i) has decreasing input offsets") }
            guard Int(hi) <= inputs.count else {
                throw .invalidContent("task \(i)'s input offset \(hi) is past the \(inputs.count) inputs")
            }
            for j in Int(lo)..<Int(hi) where inputs[j] >= UInt32(i) {
                throw .invalidContent(
                    "task \(i) reads task \(inputs[j]), which does not come before it (inputs must precede their readers; cycles are impossible)")
            }
        }
        for o in outputs where Int(o) >= n {
            throw .invalidContent("output task \(o) does not exist (graph has \(n) tasks)")
        }
        for (i, k) in dataKey.enumerated() where Int(k) > nKeys {
            throw .invalidContent("task \(i) uses data key \(k) but only \(nKeys) are given")
        }
    }

    private static func array<T: FixedWidthInteger>(_ bytes: [UInt8], _ what: String, count: Int?) throws(ProtocolError) -> [T] {
        let size = MemoryLayout<T>.size
        guard bytes.count % size == 0 else {
            throw .invalidContent("task graph \(what) frame has \(bytes.count) bytes, not a multiple of \(size)")
        }
        let k = bytes.count / size
        if let count, k != count {
            throw .invalidContent("task graph has \(k) \(what) entries, expected \(count)")
        }
        return [T](littleEndianBytes: bytes)
    }
}

extension Array where Element: FixedWidthInteger {
    /// The elements as little-endian bytes (a plain copy on little-endian machines).
    public var littleEndianBytes: [UInt8] {
        #if _endian(little)
        return withUnsafeBytes { [UInt8]($0) }
        #else
        return map(\.littleEndian).withUnsafeBytes { [UInt8]($0) }
        #endif
    }

    /// Elements read from little-endian bytes; a trailing partial element is ignored.
    public init(littleEndianBytes bytes: [UInt8]) {
        let k = bytes.count / MemoryLayout<Element>.size
        self.init(unsafeUninitializedCapacity: k) { buf, n in
            bytes.withUnsafeBytes { src in
                UnsafeMutableRawBufferPointer(buf).copyMemory(
                    from: UnsafeRawBufferPointer(rebasing: src[0..<(k * MemoryLayout<Element>.size)]))
            }
            n = k
        }
        #if !_endian(little)
        self = map { Element(littleEndian: $0) }
        #endif
    }
}
