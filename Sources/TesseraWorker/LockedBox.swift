import Foundation

/// A value guarded by a pthread mutex (`NSLock`), shared between the event loop and the
/// executor threads.
///
/// Why not `Synchronization.Mutex`: ThreadSanitizer cannot see through it here, so every access
/// to the executor pool's queues showed as a race, which would hide a real one. With a pthread
/// lock (which TSan intercepts) a TSan run of ingest, queries and the scheduler benchmark reports
/// nothing.
final class LockedBox<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value

    init(_ value: Value) { self.value = value }

    func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}
