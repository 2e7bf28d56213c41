import Foundation

/// A value guarded by a pthread mutex (`NSLock`), shared between the event loop and the
/// executor threads.
///
/// Why not `Synchronization.Mutex`: ThreadSanitizer cannot see through it here, so every access
/// to the executor pool's queues showed as a race, which hid any real one. With a pthread lock
/// (intercepted by TSan) a TSan run of ingest, queries and the scheduler benchmark reports
/// nothing. A worker once aborted with heap corruption ("corrupted size vs. prev_size") after a
/// large ingest; this is the lock that guards the arrays both sides append to and drain.
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
