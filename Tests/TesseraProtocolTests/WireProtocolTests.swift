import Testing
import TesseraProtocol
import TesseraCompute
import SwiftProtobuf

// MARK: Helpers

func pingEnvelope(_ nonce: UInt64 = 42) -> Envelope {
    var e = Envelope()
    var p = Tessera_V1_Ping()
    p.nonce = nonce
    e.ping = p
    return e
}

/// Bytes of `n` Float64 values from a seeded generator: noisy mantissas LZ4 cannot shrink.
func randomFloat64Bytes(_ n: Int, seed: UInt64) -> [UInt8] {
    var rng = SplitMix64(seed: seed)
    let values = (0..<n).map { _ in rng.nextUnit() * 2 - 1 }
    return values.withUnsafeBytes { [UInt8]($0) }
}

func randomFloat32Bytes(_ n: Int, seed: UInt64) -> [UInt8] {
    var rng = SplitMix64(seed: seed)
    let values = (0..<n).map { _ in Float(rng.nextUnit() * 1000 - 500) }
    return values.withUnsafeBytes { [UInt8]($0) }
}

func sortedInt64Bytes(_ n: Int) -> [UInt8] {
    (0..<Int64(n)).map { $0 * 3 }.littleEndianBytes
}

func header(of parts: [[UInt8]]) throws -> Envelope {
    try parts[0].withUnsafeBytes { (b) throws(ProtocolError) in try WireProtocol.decodeHeader(b) }
}

/// Re-serialises an altered header (without going through `encode`, which would fix the version).
func reserialize(_ env: Envelope) throws -> [UInt8] {
    try env.serializedBytes() as [UInt8]
}

// MARK: Round trips and codec choice

@Suite("WireProtocol encode/decode")
struct WireProtocolTests {
    @Test func roundTripWithoutFrames() throws {
        let parts = WireProtocol.encode(pingEnvelope(7))
        #expect(parts.count == 1)
        let (env, frames) = try WireProtocol.decode(parts)
        #expect(frames.isEmpty)
        #expect(env.version == WireProtocol.version)
        #expect(env.ping.nonce == 7)
        #expect(env.frames.isEmpty)
    }

    @Test func roundTripWithMixedBulkFrames() throws {
        let frames: [[UInt8]] = [
            [],
            [1, 2, 3],
            sortedInt64Bytes(100_000),
            randomFloat64Bytes(10_000, seed: 1),
            [UInt8](repeating: 0, count: 50_000),
            Array("small text frame".utf8),
        ]
        var e = Envelope()
        var job = Tessera_V1_JobFinished()
        job.jobID = 12
        job.state = .jobDone
        job.error = "none"
        job.seconds = 1.5
        e.jobFinished = job
        let parts = WireProtocol.encode(e, frames: frames)
        #expect(parts.count == frames.count + 1)
        let (env, decoded) = try WireProtocol.decode(parts)
        #expect(decoded == frames)
        #expect(env.jobFinished == job)
        #expect(env.frames.count == frames.count)
        for (info, f) in zip(env.frames, frames) { #expect(info.rawLength == UInt64(f.count)) }
    }

    @Test func encodeOverwritesVersionAndStaleFrameInfo() throws {
        var e = pingEnvelope()
        e.version = 99
        e.frames = [Tessera_V1_FrameInfo(), Tessera_V1_FrameInfo(), Tessera_V1_FrameInfo()]
        let parts = WireProtocol.encode(e, frames: [[9]])
        let h = try header(of: parts)
        #expect(h.version == WireProtocol.version)
        #expect(h.frames.count == 1)
        #expect(try WireProtocol.decode(parts).1 == [[9]])
    }

    @Test func lz4IsAppliedToCompressibleFrames() throws {
        let raw = sortedInt64Bytes(100_000)
        #expect(raw.count == 800_000)
        let parts = WireProtocol.encode(pingEnvelope(), frames: [raw])
        let h = try header(of: parts)
        #expect(h.frames[0].codec == .lz4)
        #expect(h.frames[0].rawLength == 800_000)
        // Distinct consecutive values only share their high zero bytes: roughly half the size.
        #expect(parts[1].count < raw.count * 6 / 10, "sorted int64 should compress; got \(parts[1].count) bytes")
        #expect(try WireProtocol.decode(parts).1 == [raw])
    }

    @Test func lz4ShrinksSortedColumnWithRepeatsDramatically() throws {
        // A sorted column of 100k random values from a small range (long runs of equal values).
        var rng = SplitMix64(seed: 2024)
        let values = (0..<100_000).map { _ in Int64(rng.next() % 1000) }.sorted()
        let raw = values.littleEndianBytes
        let parts = WireProtocol.encode(pingEnvelope(), frames: [raw])
        let h = try header(of: parts)
        #expect(h.frames[0].codec == .lz4)
        #expect(h.frames[0].rawLength == UInt64(raw.count))
        #expect(parts[1].count < raw.count / 20, "got \(parts[1].count) of \(raw.count) bytes")
        let decoded = try WireProtocol.decode(parts).1
        #expect([Int64](littleEndianBytes: decoded[0]) == values)
    }

    @Test func compressFalseSendsRaw() throws {
        let raw = sortedInt64Bytes(100_000)
        let parts = WireProtocol.encode(pingEnvelope(), frames: [raw], compress: false)
        #expect(try header(of: parts).frames[0].codec == .raw)
        #expect(parts[1] == raw)
    }

    @Test(arguments: [0, 1, 100, LZ4.minimumSize - 1])
    func smallFramesStayRaw(size: Int) throws {
        let raw = [UInt8](repeating: 0, count: size) // perfectly compressible, but too small
        let parts = WireProtocol.encode(pingEnvelope(), frames: [raw])
        let h = try header(of: parts)
        #expect(h.frames[0].codec == .raw)
        #expect(parts[1] == raw)
    }

    @Test func frameAtMinimumSizeIsCompressedWhenWorthwhile() throws {
        let raw = [UInt8](repeating: 0, count: LZ4.minimumSize)
        let h = try header(of: WireProtocol.encode(pingEnvelope(), frames: [raw]))
        #expect(h.frames[0].codec == .lz4)
    }

    @Test func noisyFloat64DataStaysRaw() throws {
        let raw = randomFloat64Bytes(100_000, seed: 0xF00D)
        let parts = WireProtocol.encode(pingEnvelope(), frames: [raw])
        #expect(try header(of: parts).frames[0].codec == .raw)
        #expect(parts[1] == raw)
        #expect(try WireProtocol.decode(parts).1 == [raw])
    }

    @Test func noisyFloat32DataStaysRaw() throws {
        let raw = randomFloat32Bytes(100_000, seed: 0xBEEF)
        let parts = WireProtocol.encode(pingEnvelope(), frames: [raw])
        #expect(try header(of: parts).frames[0].codec == .raw)
        #expect(parts[1] == raw)
    }

    @Test func codecIsChosenPerFrame() throws {
        let frames = [randomFloat64Bytes(2000, seed: 3), sortedInt64Bytes(2000), [1, 2, 3]]
        let parts = WireProtocol.encode(pingEnvelope(), frames: frames)
        let h = try header(of: parts)
        #expect(h.frames.map(\.codec) == [.raw, .lz4, .raw])
        #expect(try WireProtocol.decode(parts).1 == frames)
    }

    @Test func lz4HelpersRoundTrip() throws {
        let raw = sortedInt64Bytes(10_000)
        let packed = raw.withUnsafeBytes { LZ4.compress($0) }
        #expect(packed.count < raw.count)
        let back = try packed.withUnsafeBytes { (p) throws(ProtocolError) in try LZ4.decompress(p, rawLength: raw.count) }
        #expect(back == raw)
        // Unconditional compression of noise still round-trips.
        let noise = randomFloat64Bytes(1000, seed: 9)
        let packedNoise = noise.withUnsafeBytes { LZ4.compress($0) }
        #expect(noise.withUnsafeBytes { LZ4.compressIfWorthwhile($0) } == nil)
        #expect(try packedNoise.withUnsafeBytes { (p) throws(ProtocolError) in try LZ4.decompress(p, rawLength: noise.count) } == noise)
        // Wrong declared length is detected.
        #expect(throws: ProtocolError.self) {
            try packed.withUnsafeBytes { (p) throws(ProtocolError) in try LZ4.decompress(p, rawLength: raw.count + 1) }
        }
        #expect(throws: ProtocolError.self) {
            try packed.withUnsafeBytes { (p) throws(ProtocolError) in try LZ4.decompress(p, rawLength: -1) }
        }
    }

    @Test func errorReplyRoundTrip() throws {
        let parts = WireProtocol.errorReply(.init(rawValue: 1) ?? .init(), "boom", clientTag: 5, jobID: 9)
        let (env, frames) = try WireProtocol.decode(parts)
        #expect(frames.isEmpty)
        #expect(env.error.message == "boom")
        #expect(env.error.clientTag == 5)
        #expect(env.error.jobID == 9)
    }
}

// MARK: Decode errors

@Suite("WireProtocol decode errors")
struct WireProtocolErrorTests {
    @Test func corruptedLZ4FrameThrowsCorruptFrame() throws {
        let frames = [[1, 2, 3], sortedInt64Bytes(50_000)]
        var parts = WireProtocol.encode(pingEnvelope(), frames: frames)
        #expect(try header(of: parts).frames[1].codec == .lz4)
        // Scramble the compressed block.
        var rng = SplitMix64(seed: 77)
        for i in stride(from: 0, to: parts[2].count, by: 3) { parts[2][i] = UInt8(truncatingIfNeeded: rng.next()) }
        let err = #expect(throws: ProtocolError.self) { try WireProtocol.decode(parts) }
        guard case .corruptFrame(let index, _) = err else {
            Issue.record("expected corruptFrame, got \(String(describing: err))"); return
        }
        #expect(index == 1)
    }

    @Test func truncatedLZ4FrameThrowsCorruptFrame() throws {
        var parts = WireProtocol.encode(pingEnvelope(), frames: [sortedInt64Bytes(50_000)])
        parts[1].removeLast(parts[1].count / 2)
        let err = #expect(throws: ProtocolError.self) { try WireProtocol.decode(parts) }
        guard case .corruptFrame(0, _) = err else {
            Issue.record("expected corruptFrame(0), got \(String(describing: err))"); return
        }
    }

    @Test func lz4FrameWithWrongDeclaredLengthThrows() throws {
        var parts = WireProtocol.encode(pingEnvelope(), frames: [sortedInt64Bytes(50_000)])
        var h = try header(of: parts)
        h.frames[0].rawLength -= 8
        parts[0] = try reserialize(h)
        let err = #expect(throws: ProtocolError.self) { try WireProtocol.decode(parts) }
        guard case .corruptFrame(0, _) = err else {
            Issue.record("expected corruptFrame(0), got \(String(describing: err))"); return
        }
    }

    @Test func rawFrameLengthMismatchThrows() throws {
        var parts = WireProtocol.encode(pingEnvelope(), frames: [[1, 2, 3, 4]])
        parts[1].append(5)
        let err = #expect(throws: ProtocolError.self) { try WireProtocol.decode(parts) }
        guard case .corruptFrame(0, let why) = err else {
            Issue.record("expected corruptFrame(0), got \(String(describing: err))"); return
        }
        #expect(why.contains("5"))
    }

    @Test func unknownCodecThrows() throws {
        var parts = WireProtocol.encode(pingEnvelope(), frames: [[1, 2]])
        var h = try header(of: parts)
        h.frames[0].codec = .UNRECOGNIZED(9)
        parts[0] = try reserialize(h)
        let err = #expect(throws: ProtocolError.self) { try WireProtocol.decode(parts) }
        guard case .corruptFrame(0, let why) = err else {
            Issue.record("expected corruptFrame(0), got \(String(describing: err))"); return
        }
        #expect(why.contains("9"))
    }

    @Test func oversizedDeclaredLengthThrowsWithoutAllocating() throws {
        var parts = WireProtocol.encode(pingEnvelope(), frames: [sortedInt64Bytes(10_000)])
        var h = try header(of: parts)
        h.frames[0].rawLength = UInt64(WireProtocol.maximumFrameBytes) + 1
        parts[0] = try reserialize(h)
        #expect(throws: ProtocolError.self) { try WireProtocol.decode(parts) }
        h.frames[0].rawLength = .max
        parts[0] = try reserialize(h)
        #expect(throws: ProtocolError.self) { try WireProtocol.decode(parts) }
    }

    @Test(arguments: [UInt32(0), 2, 1000, .max])
    func wrongVersionThrowsUnsupportedVersion(version: UInt32) throws {
        var parts = WireProtocol.encode(pingEnvelope(), frames: [[1]])
        var h = try header(of: parts)
        h.version = version
        parts[0] = try reserialize(h)
        #expect(throws: ProtocolError.unsupportedVersion(version)) { try WireProtocol.decode(parts) }
        #expect(ProtocolError.unsupportedVersion(version).description.contains("\(version)"))
    }

    @Test func frameCountMismatchThrows() throws {
        let parts = WireProtocol.encode(pingEnvelope(), frames: [[1], [2]])
        #expect(throws: ProtocolError.frameCountMismatch(declared: 2, received: 1)) {
            try WireProtocol.decode(Array(parts.dropLast()))
        }
        #expect(throws: ProtocolError.frameCountMismatch(declared: 2, received: 3)) {
            try WireProtocol.decode(parts + [[3]])
        }
    }

    @Test func emptyMessageThrows() {
        #expect(throws: ProtocolError.emptyMessage) { try WireProtocol.decode([[UInt8]]()) }
    }

    @Test func headerWithoutBodyIsMalformed() throws {
        var e = Envelope()
        e.version = WireProtocol.version
        let bytes: [UInt8] = try e.serializedBytes()
        let err = #expect(throws: ProtocolError.self) { try WireProtocol.decode([bytes]) }
        guard case .malformedHeader = err else {
            Issue.record("expected malformedHeader, got \(String(describing: err))"); return
        }
    }

    @Test func garbageHeaderIsMalformed() {
        let err = #expect(throws: ProtocolError.self) { try WireProtocol.decode([[0xFF, 0xFF, 0xFF, 0xFF]]) }
        guard case .malformedHeader = err else {
            Issue.record("expected malformedHeader, got \(String(describing: err))"); return
        }
    }
}

// MARK: Fuzzing

@Suite("WireProtocol fuzz")
struct WireProtocolFuzzTests {
    /// Decodes and requires the outcome to be a decode or a ProtocolError (typed throws guarantees
    /// the error type; the point is that nothing traps). Returns true when it decoded.
    @discardableResult
    func decodeSurvives(_ parts: [[UInt8]]) -> Bool {
        do {
            let (env, frames) = try WireProtocol.decode(parts)
            // A successful decode must be self-consistent.
            #expect(frames.count == parts.count - 1)
            #expect(env.frames.count == frames.count)
            for (info, f) in zip(env.frames, frames) { #expect(UInt64(f.count) == info.rawLength) }
            return true
        } catch {
            _ = error.description
            return false
        }
    }

    @Test func randomByteStringsNeverCrash() {
        var rng = SplitMix64(seed: 0xDEC0DE)
        var decoded = 0
        for _ in 0..<2000 {
            let partCount = Int(rng.next() % 4) + 1
            var parts: [[UInt8]] = []
            for _ in 0..<partCount {
                let len = Int(rng.next() % 64)
                parts.append((0..<len).map { _ in UInt8(truncatingIfNeeded: rng.next()) })
            }
            if decodeSurvives(parts) { decoded += 1 }
        }
        // Random bytes are almost never a valid envelope with a body and version 1.
        #expect(decoded < 100)
    }

    @Test func randomProtobufLikeHeadersNeverCrash() {
        // Bytes that start like an Envelope (version 1, a frames entry) so decoding goes deeper.
        var rng = SplitMix64(seed: 31337)
        for _ in 0..<2000 {
            var h: [UInt8] = [0x08, 0x01, 0x12]
            let len = Int(rng.next() % 12)
            h.append(UInt8(len))
            h += (0..<len).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            h += [0xda, 0x02, 0x02, 0x08, UInt8(truncatingIfNeeded: rng.next())] // ping (field 43)
            let extra = (0..<Int(rng.next() % 100)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            decodeSurvives([h, extra])
            decodeSurvives([h])
        }
    }

    @Test func mutationsOfValidMessagesNeverCrash() throws {
        let templates: [[[UInt8]]] = [
            WireProtocol.encode(pingEnvelope(1), frames: [sortedInt64Bytes(2000)]),
            WireProtocol.encode(pingEnvelope(2), frames: [[1, 2, 3], sortedInt64Bytes(1000), randomFloat64Bytes(600, seed: 5)]),
            WireProtocol.encode(pingEnvelope(3), frames: [[UInt8](repeating: 7, count: 8000), []]),
            WireProtocol.errorReply(.init(), "message text", clientTag: 77, jobID: 3),
        ]
        for t in templates { #expect(decodeSurvives(t)) }

        var rng = SplitMix64(seed: 0xB17F11B)
        var decodedIntact = 0
        for round in 0..<2000 {
            var parts = templates[round % templates.count]
            switch rng.next() % 5 {
            case 0: // flip 1-4 random bits anywhere
                for _ in 0..<(1 + Int(rng.next() % 4)) {
                    let p = Int(rng.next() % UInt64(parts.count))
                    guard !parts[p].isEmpty else { continue }
                    let i = Int(rng.next() % UInt64(parts[p].count))
                    parts[p][i] ^= 1 << UInt8(rng.next() % 8)
                }
            case 1: // flip a bit in the header
                guard !parts[0].isEmpty else { break }
                let i = Int(rng.next() % UInt64(parts[0].count))
                parts[0][i] ^= 1 << UInt8(rng.next() % 8)
            case 2: // truncate one part
                let p = Int(rng.next() % UInt64(parts.count))
                let keep = parts[p].isEmpty ? 0 : Int(rng.next() % UInt64(parts[p].count))
                parts[p] = Array(parts[p].prefix(keep))
            case 3: // drop or duplicate a part
                if rng.next() % 2 == 0 {
                    parts.remove(at: Int(rng.next() % UInt64(parts.count)))
                } else {
                    parts.append(parts[Int(rng.next() % UInt64(parts.count))])
                }
            default: // overwrite a random byte
                let p = Int(rng.next() % UInt64(parts.count))
                guard !parts[p].isEmpty else { break }
                parts[p][Int(rng.next() % UInt64(parts[p].count))] = UInt8(truncatingIfNeeded: rng.next())
            }
            if decodeSurvives(parts) { decodedIntact += 1 }
        }
        // Sanity: the mutations do reject a good share of messages.
        #expect(decodedIntact < 2000)
    }
}

#if canImport(Glibc)
import Glibc
#endif

@Suite("WireProtocol allocation limits")
struct WireProtocolAllocationTests {
    /// A ~30-byte message whose header claims an LZ4 frame of 2,000,000,000 bytes makes the receiver
    /// allocate and zero-fill 2 GB before LZ4 reports the frame as corrupt. LZ4 cannot expand data
    /// more than ~255×, so a declared length far above 255 × the compressed size is corrupt on
    /// its face and should be rejected before allocating. Runs in a child process and checks its
    /// peak RSS.
    @Test func tinyLZ4FrameClaimingHugeLengthIsRejectedWithoutAllocating() async {
        await #expect(processExitsWith: .success) {
            var env = Envelope()
            env.ping = Tessera_V1_Ping()
            var info = Tessera_V1_FrameInfo()
            info.codec = .lz4
            info.rawLength = 2_000_000_000
            env.version = WireProtocol.version
            env.frames = [info]
            let headerBytes: [UInt8] = (try? env.serializedBytes()) ?? []
            let parts: [[UInt8]] = [headerBytes, [0x1F, 0, 1, 0]]
            do throws(ProtocolError) {
                _ = try WireProtocol.decode(parts)
                exit(3) // decoded garbage into 2 GB: wrong as well
            } catch {
                guard case .corruptFrame = error else { exit(4) }
            }
            var usage = rusage()
            getrusage(RUSAGE_SELF.rawValue, &usage)
            let peakMB = usage.ru_maxrss / 1024 // kilobytes on Linux
            exit(peakMB < 1000 ? 0 : 1)
        }
    }
}

/// A message's declared sizes are checked against the receiver's budget before anything is
/// decompressed: a few kilobytes cannot make a daemon allocate gigabytes.
struct WireBudgetTests {
    @Test func declaredSizesOverTheBudgetAreRefusedBeforeDecompressing() throws {
        let zeros = [UInt8](repeating: 0, count: 8 << 20)
        let parts = WireProtocol.encode(pingEnvelope(), frames: [zeros, zeros, zeros])
        #expect(parts.dropFirst().allSatisfy { $0.count < 64 << 10 })  // LZ4 packs zeros ~250×
        #expect(throws: ProtocolError.self) { try WireProtocol.decode(parts, budget: 16 << 20) }
        do {
            _ = try WireProtocol.decode(parts, budget: 16 << 20)
        } catch {
            guard case .overBudget(let why) = error else { Issue.record("\(error)"); return }
            #expect(why.contains("limit of \(16 << 20)"))
        }
        // Within the budget it decodes to exactly what was sent.
        let (_, frames) = try WireProtocol.decode(parts, budget: 32 << 20)
        #expect(frames == [zeros, zeros, zeros])
    }

    @Test func tooManyFramesAreRefused() {
        var parts = WireProtocol.encode(pingEnvelope())
        parts += Array(repeating: [], count: Limits.framesPerMessage + 1)
        #expect(throws: ProtocolError.self) { try WireProtocol.decode(parts) }
    }
}
