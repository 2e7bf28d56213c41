import Dispatch
import TesseraProtocol

/// Writes shards from ingest clients on a thread of its own, one at a time: sorting, encoding and
/// syncing a shard of a million rows takes about a second, and on the event loop it would stall
/// the worker's heartbeats, fetches and task reports for that long.
public final class BackgroundShardWriter: Sendable {
    /// A written (or refused) shard, for the event loop to answer its client.
    public struct Finished: Sendable {
        /// The client's ROUTER identity.
        public let identity: [UInt8]
        public let request: Tessera_V1_StoreShard
        public let reply: Tessera_V1_ShardStored
    }

    private let store: ShardStore
    private let workerName: String
    private let queue = DispatchQueue(label: "tessera.worker.shard-writes")
    private let state = LockedBox<(finished: [Finished], inFlight: Int)>(([], 0))
    private let wake: @Sendable () -> Void

    /// - Parameter wake: called when a write finishes (the event loop then calls `drainFinished`).
    public init(store: ShardStore, workerName: String, wake: @escaping @Sendable () -> Void) {
        self.store = store
        self.workerName = workerName
        self.wake = wake
    }

    /// Queues one shard; its reply comes out of `drainFinished` once the file is on disk.
    public func submit(_ r: Tessera_V1_StoreShard, frames: [[UInt8]], identity: [UInt8]) {
        state.withLock { $0.inFlight += 1 }
        queue.async { [store, workerName, state, wake] in
            let reply = store.store(r, frames: frames, workerName: workerName)
            state.withLock {
                $0.finished.append(Finished(identity: identity, request: r, reply: reply))
                $0.inFlight -= 1
            }
            wake()
        }
    }

    /// Writes finished since the last call.
    public func drainFinished() -> [Finished] {
        state.withLock { s in
            defer { s.finished.removeAll() }
            return s.finished
        }
    }

    /// Shards queued or being written.
    public var inFlight: Int { state.withLock { $0.inFlight } }
}
