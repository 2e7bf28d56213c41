import Testing
import TesseraProtocol
#if canImport(Glibc)
import Glibc
#endif

/// A small diamond: 0 → {1, 2} → 3, with parameters, data keys and explicit outputs.
func sampleGraph() -> TaskGraph {
    var p = Tessera_V1_OperatorParams()
    p.numbers["sleep_us"] = 5
    p.strings["message"] = "hi"
    var g = TaskGraph(operators: ["arange", "sum", "inc"], params: [p], dataKeys: ["shard-a", "shard-b"])
    let a = g.add(operatorIndex: 0, arg: 100)
    let b = g.add(operatorIndex: 1, inputs: [a])
    let c = g.add(operatorIndex: 2, arg: -5, inputs: [a], paramIndex: 1)
    let d = g.add(operatorIndex: 1, arg: .max, inputs: [b, c, a])
    g.outputs = [d, b]
    g.dataKey = [1, 0, 2, 0]
    return g
}

func roundTrip(_ g: TaskGraph) throws(ProtocolError) -> TaskGraph {
    let (spec, frames) = g.encoded()
    return try TaskGraph(spec: spec, frames: frames)
}

/// Decodes and returns the invalidContent message, failing the test for anything else.
func invalidContentMessage(_ spec: Tessera_V1_GraphSpec, _ frames: [[UInt8]], maximumTasks: Int = 50_000_000,
                           sourceLocation: SourceLocation = #_sourceLocation) -> String? {
    do {
        _ = try TaskGraph(spec: spec, frames: frames, maximumTasks: maximumTasks)
        Issue.record("graph was accepted", sourceLocation: sourceLocation)
        return nil
    } catch {
        guard case .invalidContent(let why) = error else {
            Issue.record("expected invalidContent, got \(error)", sourceLocation: sourceLocation)
            return nil
        }
        return why
    }
}

@Suite("TaskGraph")
struct TaskGraphTests {
    @Test func builderLaysOutParallelArrays() {
        let g = sampleGraph()
        #expect(g.taskCount == 4)
        #expect(g.op == [0, 1, 2, 1])
        #expect(g.arg == [100, 0, -5, .max])
        #expect(g.paramIndex == [0, 0, 1, 0])
        #expect(g.inputOffsets == [0, 0, 1, 2, 5])
        #expect(g.inputs == [0, 0, 1, 2, 0])
    }

    @Test func encodeDecodeRoundTrip() throws {
        let g = sampleGraph()
        let (spec, frames) = g.encoded()
        #expect(spec.taskCount == 4)
        #expect(frames.count == 7)
        #expect(frames[0].count == 4 * 2)
        #expect(frames[1].count == 4 * 8)
        #expect(frames[3].count == 5 * 4)
        let back = try roundTrip(g)
        #expect(back == g)
    }

    @Test func roundTripThroughWireProtocol() throws {
        var g = TaskGraph(operators: ["inc"])
        g.reserve(tasks: 10_000, inputs: 10_000)
        for i in 0..<10_000 { g.add(operatorIndex: 0, arg: Int64(i), inputs: i == 0 ? [] : [UInt32(i - 1)]) }
        let (spec, frames) = g.encoded()
        var env = Envelope()
        var submit = Tessera_V1_SubmitJob()
        submit.graph = spec
        env.submitJob = submit
        let parts = WireProtocol.encode(env, frames: frames)
        let (decodedEnv, decodedFrames) = try WireProtocol.decode(parts)
        let back = try TaskGraph(spec: decodedEnv.submitJob.graph, frames: decodedFrames)
        #expect(back == g)
        #expect(back.outputs.isEmpty)
        #expect(back.dataKey.isEmpty)
    }

    @Test func minimalGraphRoundTrip() throws {
        var g = TaskGraph(operators: ["noop"])
        g.add(operatorIndex: 0)
        #expect(try roundTrip(g) == g)
    }

    @Test func inputReferringToLaterTaskIsRejected() throws {
        var g = TaskGraph(operators: ["inc"])
        g.add(operatorIndex: 0, inputs: [1]) // task 0 reads task 1: a forward edge
        g.add(operatorIndex: 0)
        let (spec, frames) = g.encoded()
        let why = try #require(invalidContentMessage(spec, frames))
        #expect(why.contains("task 0 reads task 1"))
    }

    @Test func selfInputIsRejected() throws {
        var g = TaskGraph(operators: ["inc"])
        g.add(operatorIndex: 0)
        g.add(operatorIndex: 0, inputs: [0, 1]) // task 1 reads itself
        let (spec, frames) = g.encoded()
        let why = try #require(invalidContentMessage(spec, frames))
        #expect(why.contains("task 1 reads task 1"))
    }

    @Test func operatorIndexOutOfRangeIsRejected() throws {
        var g = TaskGraph(operators: ["inc", "sum"])
        g.add(operatorIndex: 1)
        g.add(operatorIndex: 2)
        let (spec, frames) = g.encoded()
        let why = try #require(invalidContentMessage(spec, frames))
        #expect(why.contains("task 1 uses operator 2"))
    }

    @Test func parameterIndexOutOfRangeIsRejected() throws {
        var g = TaskGraph(operators: ["inc"], params: [.init()])
        g.add(operatorIndex: 0, paramIndex: 1) // fine: params[0]
        g.add(operatorIndex: 0, paramIndex: 2) // no params[1]
        let (spec, frames) = g.encoded()
        let why = try #require(invalidContentMessage(spec, frames))
        #expect(why.contains("task 1 uses parameter set 2"))
    }

    @Test func outputIndexOutOfRangeIsRejected() throws {
        var g = sampleGraph()
        g.outputs = [3, 4]
        let (spec, frames) = g.encoded()
        let why = try #require(invalidContentMessage(spec, frames))
        #expect(why.contains("output task 4"))
    }

    @Test func dataKeyOutOfRangeIsRejected() throws {
        var g = sampleGraph()
        g.dataKey = [0, 0, 3, 0] // only 2 keys
        let (spec, frames) = g.encoded()
        let why = try #require(invalidContentMessage(spec, frames))
        #expect(why.contains("data key 3"))
    }

    @Test func dataKeyCountMismatchIsRejected() throws {
        var g = sampleGraph()
        g.dataKey = [0, 1]
        let (spec, frames) = g.encoded()
        #expect(invalidContentMessage(spec, frames) != nil)
    }

    @Test(arguments: 0..<7)
    func frameWithPartialElementIsRejected(frameIndex: Int) throws {
        let (spec, frames) = sampleGraph().encoded()
        var bad = frames
        bad[frameIndex].append(0)
        let why = try #require(invalidContentMessage(spec, bad))
        #expect(why.contains("not a multiple") || why.contains("entries"), "\(why)")
    }

    @Test(arguments: [0, 1, 2, 3])
    func frameWithWrongElementCountIsRejected(frameIndex: Int) throws {
        let (spec, frames) = sampleGraph().encoded()
        var bad = frames
        let size = [2, 8, 4, 4][frameIndex]
        bad[frameIndex].removeLast(size) // one whole element short
        let why = try #require(invalidContentMessage(spec, bad))
        #expect(why.contains("expected"), "\(why)")
    }

    @Test func inputsNotSpannedByOffsetsAreRejected() throws {
        let (spec, frames) = sampleGraph().encoded()
        var bad = frames
        bad[4] += [0, 0, 0, 0] // an extra input nobody's offsets cover
        let why = try #require(invalidContentMessage(spec, bad))
        #expect(why.contains("offsets"))
    }

    @Test func wrongNumberOfFramesIsRejected() throws {
        let (spec, frames) = sampleGraph().encoded()
        #expect(invalidContentMessage(spec, Array(frames.dropLast())) != nil)
        #expect(invalidContentMessage(spec, frames + [[]]) != nil)
    }

    @Test func emptyGraphAndMissingOperatorsAreRejected() throws {
        let (spec, frames) = TaskGraph(operators: ["inc"]).encoded()
        #expect(invalidContentMessage(spec, frames)?.contains("empty") == true)

        var g = TaskGraph(operators: [])
        g.add(operatorIndex: 0)
        let (spec2, frames2) = g.encoded()
        #expect(invalidContentMessage(spec2, frames2)?.contains("operators") == true)
    }

    @Test func taskLimitIsEnforcedBeforeReadingFrames() throws {
        let (spec, frames) = sampleGraph().encoded()
        #expect(invalidContentMessage(spec, frames, maximumTasks: 3)?.contains("limit") == true)
        var huge = spec
        huge.taskCount = .max
        #expect(invalidContentMessage(huge, frames) != nil)
    }

    @Test func decreasingInputOffsetsAreRejected() throws {
        // Offsets [0, 0, 1, 0, 1] over one input: task 2 has lo 1 > hi 0.
        var spec = Tessera_V1_GraphSpec()
        spec.taskCount = 4
        spec.operators = ["inc"]
        var frames: [[UInt8]] = [
            [UInt16](repeating: 0, count: 4).littleEndianBytes,
            [Int64](repeating: 0, count: 4).littleEndianBytes,
            [UInt32](repeating: 0, count: 4).littleEndianBytes,
            [UInt32]([0, 0, 1, 0, 1]).littleEndianBytes,
            [UInt32]([0]).littleEndianBytes,
            [], [],
        ]
        let why = try #require(invalidContentMessage(spec, frames))
        #expect(why.contains("task 2 has decreasing input offsets"))
        // The same arrays with monotonic offsets are fine.
        frames[3] = [UInt32]([0, 0, 1, 1, 1]).littleEndianBytes
        let g = try TaskGraph(spec: spec, frames: frames)
        #expect(g.inputOffsets == [0, 0, 1, 1, 1])
        #expect(g.inputs == [0])
    }

    /// Offsets that rise past the inputs and come back down (`[0, 0, 5, 2]` with 2 inputs) pass the
    /// span check (`offsets[n] == inputs.count`); task 1 then reads inputs[2...4]. The decoder
    /// must reject this, not trap on an out-of-range index.
    @Test func nonMonotonicOffsetsPastTheInputsAreRejectedWithoutTrapping() async {
        await #expect(processExitsWith: .success) {
            var spec = Tessera_V1_GraphSpec()
            spec.taskCount = 3
            spec.operators = ["inc"]
            let frames: [[UInt8]] = [
                [UInt16](repeating: 0, count: 3).littleEndianBytes,
                [Int64](repeating: 0, count: 3).littleEndianBytes,
                [UInt32](repeating: 0, count: 3).littleEndianBytes,
                [UInt32]([0, 0, 5, 2]).littleEndianBytes,
                [UInt32]([0, 0]).littleEndianBytes,
                [], [],
            ]
            do {
                _ = try TaskGraph(spec: spec, frames: frames)
                exit(2) // accepted: also wrong
            } catch {
                exit(0)
            }
        }
    }

    @Test func randomGraphFramesNeverTrapOnValidation() throws {
        // Random small graphs with random (but span-consistent, monotonic) wiring: accepted iff
        // every input precedes its reader.
        var rng = SplitMix64Local(seed: 4)
        for _ in 0..<500 {
            let n = Int(rng.next() % 8) + 1
            var g = TaskGraph(operators: ["a", "b"])
            var forward = false
            for i in 0..<n {
                let k = Int(rng.next() % 3)
                var ins: [UInt32] = []
                for _ in 0..<k {
                    let t = UInt32(rng.next() % UInt64(n))
                    if t >= UInt32(i) { forward = true }
                    ins.append(t)
                }
                g.add(operatorIndex: Int(rng.next() % 2), inputs: ins)
            }
            let (spec, frames) = g.encoded()
            let result = Result { () throws(ProtocolError) in try TaskGraph(spec: spec, frames: frames) }
            switch result {
            case .success(let back): #expect(!forward); #expect(back == g)
            case .failure: #expect(forward)
            }
        }
    }
}

/// Local copy of a tiny generator (TesseraProtocol tests should not need TesseraCompute for this).
struct SplitMix64Local {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite("Little-endian arrays")
struct LittleEndianTests {
    @Test func int64RoundTripAndLayout() {
        let a: [Int64] = [0, 1, -1, .max, .min, 0x0102_0304_0506_0708]
        let b = a.littleEndianBytes
        #expect(b.count == 48)
        #expect(Array(b[8..<16]) == [1, 0, 0, 0, 0, 0, 0, 0])
        #expect(Array(b[16..<24]) == [UInt8](repeating: 0xFF, count: 8))
        #expect(Array(b[40..<48]) == [8, 7, 6, 5, 4, 3, 2, 1])
        #expect([Int64](littleEndianBytes: b) == a)
    }

    @Test func otherWidthsRoundTrip() {
        let u16: [UInt16] = [0, 1, 0xABCD, .max]
        #expect(u16.littleEndianBytes == [0, 0, 1, 0, 0xCD, 0xAB, 0xFF, 0xFF])
        #expect([UInt16](littleEndianBytes: u16.littleEndianBytes) == u16)
        let u32: [UInt32] = [7, 0xDEAD_BEEF]
        #expect([UInt32](littleEndianBytes: u32.littleEndianBytes) == u32)
        let i8: [Int8] = [-128, 0, 127]
        #expect([Int8](littleEndianBytes: i8.littleEndianBytes) == i8)
        let u64: [UInt64] = (0..<1000).map { UInt64($0) &* 0x9E37_79B9_7F4A_7C15 }
        #expect([UInt64](littleEndianBytes: u64.littleEndianBytes) == u64)
    }

    @Test func emptyAndPartialInputs() {
        #expect([Int64]().littleEndianBytes.isEmpty)
        #expect([Int64](littleEndianBytes: []).isEmpty)
        #expect([UInt32](littleEndianBytes: [1, 2, 3]).isEmpty) // partial element ignored
        #expect([UInt32](littleEndianBytes: [1, 0, 0, 0, 9, 9]) == [1])
    }
}
