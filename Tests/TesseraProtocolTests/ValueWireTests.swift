import Testing
import TesseraProtocol
import TesseraCompute
#if canImport(Glibc)
import Glibc
#endif

let everyValueCase: [Value] = [
    .empty,
    .int64(0),
    .int64(-123_456_789_012),
    .int64(.min),
    .float64(3.25),
    .float64(-0.0),
    .float64(.infinity),
    .int64Column([]),
    .int64Column([1, -2, .max, .min]),
    .float64Column([]),
    .float64Column([1.5, -2.25, .greatestFiniteMagnitude, .leastNonzeroMagnitude]),
    .moments(Moments(of: [1.0, 2, 3, 4.5])),
    .moments(Moments()),
    .bytes([]),
    .bytes([0, 1, 2, 255]),
]

@Suite("Value wire form")
struct ValueWireTests {
    @Test(arguments: everyValueCase)
    func singleValueRoundTrip(value: Value) throws {
        var frame: [UInt8] = []
        let info = value.append(to: &frame, key: 0xABCD, frameIndex: 0)
        #expect(info.key == 0xABCD)
        #expect(info.frame == 0)
        #expect(info.offset == 0)
        #expect(info.length == UInt64(value.byteCount))
        #expect(info.count == UInt64(value.elementCount))
        #expect(frame.count == value.byteCount)
        let back = try Value(info: info, frames: [frame])
        #expect(back == value)
    }

    @Test func nanSurvivesBitExactly() throws {
        var frame: [UInt8] = []
        let nan = Double(bitPattern: 0x7FF8_0000_0000_1234)
        let i1 = Value.float64(nan).append(to: &frame, key: 1, frameIndex: 0)
        let i2 = Value.float64Column([nan, 1]).append(to: &frame, key: 2, frameIndex: 0)
        guard case .float64(let x) = try Value(info: i1, frames: [frame]) else { Issue.record("kind"); return }
        #expect(x.bitPattern == nan.bitPattern)
        guard case .float64Column(let c) = try Value(info: i2, frames: [frame]) else { Issue.record("kind"); return }
        #expect(c[0].bitPattern == nan.bitPattern)
        #expect(c[1] == 1)
    }

    @Test func valuesPackedIntoOneFrameRoundTrip() throws {
        var frame: [UInt8] = []
        var infos: [Tessera_V1_ValueInfo] = []
        for (i, v) in everyValueCase.enumerated() {
            infos.append(v.append(to: &frame, key: UInt64(i) << 32 | 7, frameIndex: 0))
        }
        #expect(frame.count == everyValueCase.reduce(0) { $0 + $1.byteCount })
        // Offsets are contiguous.
        for (a, b) in zip(infos, infos.dropFirst()) { #expect(a.offset + a.length == b.offset) }
        for (info, v) in zip(infos, everyValueCase) {
            #expect(try Value(info: info, frames: [frame]) == v)
        }
        // Also after a trip through WireProtocol (the frame is large enough to be LZ4'd or not).
        var env = Envelope()
        var results = Tessera_V1_JobResults()
        results.values = infos
        env.jobResults = results
        let (decodedEnv, frames) = try WireProtocol.decode(WireProtocol.encode(env, frames: [frame]))
        for (info, v) in zip(decodedEnv.jobResults.values, everyValueCase) {
            #expect(try Value(info: info, frames: frames) == v)
        }
    }

    @Test func valuesSpreadOverSeveralFrames() throws {
        var frames: [[UInt8]] = [[], [], []]
        var infos: [(Tessera_V1_ValueInfo, Value)] = []
        for (i, v) in everyValueCase.enumerated() {
            let f = i % 3
            infos.append((v.append(to: &frames[f], key: UInt64(i), frameIndex: UInt32(f)), v))
        }
        let big = Value.float64Column((0..<10_000).map(Double.init))
        infos.append((big.append(to: &frames[1], key: 99, frameIndex: 1), big))
        for (info, v) in infos { #expect(try Value(info: info, frames: frames) == v) }
    }

    @Test func byteCountAndElementCount() {
        #expect(Value.empty.byteCount == 0)
        #expect(Value.empty.elementCount == 0)
        #expect(Value.int64(1).byteCount == 8)
        #expect(Value.float64Column([1, 2, 3]).byteCount == 24)
        #expect(Value.float64Column([1, 2, 3]).elementCount == 3)
        #expect(Value.moments(Moments()).byteCount == 48)
        #expect(Value.moments(Moments()).elementCount == 1)
        #expect(Value.bytes([1, 2]).byteCount == 2)
        #expect(Value.int64(5).description == "5")
        #expect(Value.int64Column([1, 2]).description == "int64[2]")
    }

    // MARK: Bounds

    func goodInfo() -> (Tessera_V1_ValueInfo, [[UInt8]]) {
        var frame: [UInt8] = [9, 9, 9] // a prefix so offsets are not 0
        let info = Value.int64Column([1, 2, 3]).append(to: &frame, key: 5, frameIndex: 0)
        return (info, [frame])
    }

    func expectInvalid(_ info: Tessera_V1_ValueInfo, _ frames: [[UInt8]], sourceLocation: SourceLocation = #_sourceLocation) {
        let err = #expect(throws: ProtocolError.self, sourceLocation: sourceLocation) { try Value(info: info, frames: frames) }
        if let err, case .invalidContent = err {} else {
            Issue.record("expected invalidContent, got \(String(describing: err))", sourceLocation: sourceLocation)
        }
    }

    @Test func goodInfoDecodes() throws {
        let (info, frames) = goodInfo()
        #expect(info.offset == 3)
        #expect(try Value(info: info, frames: frames) == .int64Column([1, 2, 3]))
    }

    @Test func offsetPastEndThrows() {
        var (info, frames) = goodInfo()
        info.offset = UInt64(frames[0].count) + 1
        info.length = 0
        expectInvalid(info, frames)
        info.offset = .max
        expectInvalid(info, frames)
    }

    @Test func lengthPastEndThrows() {
        var (info, frames) = goodInfo()
        info.length += 1
        expectInvalid(info, frames)
        info.length = .max // offset + length would overflow
        expectInvalid(info, frames)
        info.offset = 8; info.length = UInt64.max - 4
        expectInvalid(info, frames)
    }

    @Test func frameIndexOutOfRangeThrows() {
        var (info, frames) = goodInfo()
        info.frame = 1
        expectInvalid(info, frames)
        info.frame = .max
        expectInvalid(info, frames)
        expectInvalid(goodInfo().0, [])
    }

    @Test func lengthInconsistentWithKindThrows() {
        var (info, frames) = goodInfo()
        info.count = 2 // 3 elements' bytes, claims 2
        expectInvalid(info, frames)

        var frame: [UInt8] = []
        var scalar = Value.int64(1).append(to: &frame, key: 1, frameIndex: 0)
        frame.append(0)
        scalar.length = 9
        expectInvalid(scalar, [frame])
        scalar.length = 7
        expectInvalid(scalar, [frame])
        scalar.kind = .valueFloat64
        expectInvalid(scalar, [frame])
        scalar.kind = .valueMoments
        scalar.length = 8
        expectInvalid(scalar, [frame])
    }

    @Test func unknownKindThrows() {
        var (info, frames) = goodInfo()
        info.kind = .UNRECOGNIZED(42)
        expectInvalid(info, frames)
    }

    /// A hostile `count` (e.g. from a corrupted header) must be rejected like any other bad field:
    /// `Int(info.count) * 8` traps on overflow instead of throwing.
    @Test func hugeElementCountThrowsInsteadOfTrapping() async {
        await #expect(processExitsWith: .success) {
            var frame: [UInt8] = []
            var info = Value.int64Column([1, 2]).append(to: &frame, key: 1, frameIndex: 0)
            info.count = UInt64(1) << 61 // * 8 overflows Int
            do {
                _ = try Value(info: info, frames: [frame])
                exit(2)
            } catch {
                exit(0)
            }
        }
    }

    @Test func hugeElementCountAboveIntMaxThrowsInsteadOfTrapping() async {
        await #expect(processExitsWith: .success) {
            var frame: [UInt8] = []
            var info = Value.float64Column([1, 2]).append(to: &frame, key: 1, frameIndex: 0)
            info.count = .max // not representable as Int
            do {
                _ = try Value(info: info, frames: [frame])
                exit(2)
            } catch {
                exit(0)
            }
        }
    }
}
