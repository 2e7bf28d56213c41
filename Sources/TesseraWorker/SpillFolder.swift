import Foundation
import SwiftProtobuf
import TesseraCompute
import TesseraProtocol

#if canImport(Glibc)
import Glibc
#endif

/// Kept values spilled past the worker's memory limit: one file per value in a folder of the
/// worker's own, LZ4-compressed when that pays. A folder left by an earlier run is emptied at
/// start (its values belonged to jobs of a registration that is over).
///
/// File layout: `TSPL` · u32 header length · `ValueInfo` (protobuf) · u8 codec (0 raw, 1 LZ4) ·
/// u64 raw length · payload.
public final class SpillFolder: SpillStore, Sendable {
    public let path: String
    static let magic: [UInt8] = Array("TSPL".utf8)

    /// - Parameter made: the folder was just made, empty and private (`mkdtemp`): it is used as
    ///   it is. Removing and making it again by name would leave a moment in which another local
    ///   account could put its own folder, or a link, at the name.
    public init(path: String, made: Bool = false) throws {
        self.path = path
        if made { return }
        try? FileManager.default.removeItem(atPath: path)
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
    }

    func file(_ key: UInt64) -> String { path + "/" + String(key, radix: 16) + ".spill" }

    /// Writes one value (a temporary file renamed into place, so a reader never sees half of one).
    public func write(_ key: UInt64, _ value: Value) throws {
        var payload: [UInt8] = []
        let info = value.append(to: &payload, key: key, frameIndex: 0)
        let header: [UInt8] = try info.serializedBytes()
        let compressed = payload.withUnsafeBytes { LZ4.compressIfWorthwhile($0) }
        var out = Self.magic
        withUnsafeBytes(of: UInt32(header.count).littleEndian) { out.append(contentsOf: $0) }
        out += header
        out.append(compressed == nil ? 0 : 1)
        withUnsafeBytes(of: UInt64(payload.count).littleEndian) { out.append(contentsOf: $0) }
        out += compressed ?? payload
        let tmp = file(key) + ".tmp"
        guard FileManager.default.createFile(atPath: tmp, contents: Data(out)) else {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: tmp])
        }
        guard rename(tmp, file(key)) == 0 else {
            unlink(tmp)
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: file(key)])
        }
    }

    public func read(_ key: UInt64) -> Value? {
        guard let data = FileManager.default.contents(atPath: file(key)) else { return nil }
        let bytes = [UInt8](data)
        guard bytes.count >= 17, Array(bytes[0..<4]) == Self.magic else { return nil }
        let headerLength = Int(bytes[4..<8].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }.littleEndian)
        guard headerLength <= bytes.count - 17 else { return nil }
        var at = 8 + headerLength
        guard var info = try? Tessera_V1_ValueInfo(serializedBytes: Array(bytes[8..<at])) else { return nil }
        let codec = bytes[at]
        let rawLength = Int(clamping: bytes[(at + 1)..<(at + 9)].withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }.littleEndian)
        at += 9
        // A damaged file must not ask for an allocation it cannot back: LZ4 expands at most
        // 255-fold, and no value is larger than a message.
        guard rawLength <= min(Limits.workerMessageBytes, (bytes.count - at) * 255 + 64) else { return nil }
        let payload: [UInt8]
        if codec == 1 {
            guard let p = try? bytes[at...].withUnsafeBytes({ (b) throws(ProtocolError) in try LZ4.decompress(b, rawLength: rawLength) }) else { return nil }
            payload = p
        } else {
            payload = Array(bytes[at...])
        }
        info.frame = 0
        info.offset = 0
        return try? Value(info: info, frames: [payload])
    }

    public func remove(_ keys: [UInt64]) {
        for k in keys { unlink(file(k)) }
    }
}

/// Writes spilled values on a thread of its own: a value of hundreds of megabytes takes a while
/// to compress and write, and the event loop must keep heartbeating and serving meanwhile.
public final class SpillWriter: Sendable {
    public struct Finished: Sendable {
        public var written: [UInt64] = []
        public var failed: [UInt64] = []
        public var errors: [String] = []
    }

    public let folder: SpillFolder
    private let queue = DispatchQueue(label: "tessera.worker.spills")
    private let state = LockedBox<(finished: Finished, inFlight: Int)>((Finished(), 0))
    private let wake: @Sendable () -> Void

    /// - Parameter wake: called when a batch is written (the event loop then calls `drainFinished`).
    public init(folder: SpillFolder, wake: @escaping @Sendable () -> Void) {
        self.folder = folder
        self.wake = wake
    }

    public func submit(_ values: [(key: UInt64, value: Value)]) {
        state.withLock { $0.inFlight += 1 }
        let batch = values.map { ($0.key, $0.value) }
        queue.async { [folder, state, wake] in
            var done = Finished()
            for (k, v) in batch {
                do {
                    try folder.write(k, v)
                    done.written.append(k)
                } catch {
                    done.failed.append(k)
                    done.errors.append("\(error)")
                }
            }
            state.withLock {
                $0.finished.written += done.written
                $0.finished.failed += done.failed
                $0.finished.errors += done.errors
                $0.inFlight -= 1
            }
            wake()
        }
    }

    /// Batches finished since the last call.
    public func drainFinished() -> Finished {
        state.withLock { s in
            defer { s.finished = Finished() }
            return s.finished
        }
    }
}
