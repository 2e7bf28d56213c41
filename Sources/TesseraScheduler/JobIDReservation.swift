import TesseraProtocol
import TesseraStorage

/// The job ids a scheduler start may hand out, set aside in the registry before they are used,
/// so that no later start hands out the same id — even when this one dies without a word.
public struct JobIDReservation {
    public let registry: Registry
    /// Ids set aside at a time (a start that dies skips what it did not use).
    public let block: UInt32
    /// Ids below this are this start's.
    public private(set) var reservedBelow: JobID

    /// Begins a scheduler start on `registry`: a new epoch, and its first job id.
    public static func begin(_ registry: Registry, block: UInt32 = 10_000) throws -> (JobIDReservation, epoch: UInt64, firstJobID: JobID) {
        let (epoch, first) = try registry.beginEpoch(reserve: block)
        return (JobIDReservation(registry: registry, block: block, reservedBelow: first &+ block), epoch, first)
    }

    /// Sets more ids aside once `next` (the id the scheduler hands out next) is within half a
    /// block of the end of those reserved. Call after every turn.
    public mutating func extend(ifNeededFor next: JobID) throws {
        guard next &+ block / 2 >= reservedBelow else { return }
        let floor = next &+ block
        try registry.reserveJobIDs(below: floor)
        reservedBelow = floor
    }
}
