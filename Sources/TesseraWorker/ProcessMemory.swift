import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Resident memory of this process, from /proc (Linux).
public enum ProcessMemory {
    /// Current resident set size in bytes (0 where /proc is not available).
    public static var residentBytes: UInt64 { statusField("VmRSS:") }
    /// Peak resident set size in bytes since the process started.
    public static var peakResidentBytes: UInt64 { statusField("VmHWM:") }

    /// Keeps freed memory in the process instead of handing it back to the kernel at once.
    ///
    /// A scan allocates and frees the same few megabytes per row group (decoded columns, masks).
    /// By default glibc serves blocks that size with mmap and trims the heap top on free, so every
    /// row group paid page faults again (measured: ~10% of a filter scan's time). The heap then
    /// stays at the scan's working set; the memory limit still governs stored results.
    public static func retainFreedMemory() {
        #if canImport(Glibc)
        // <malloc.h> values (the header is not in the Glibc module).
        let trimThreshold: Int32 = -1, mmapThreshold: Int32 = -3
        _ = glibcMallopt(mmapThreshold, 64 << 20)
        _ = glibcMallopt(trimThreshold, 256 << 20)
        #endif
    }

    static func statusField(_ name: String) -> UInt64 {
        guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
        for line in text.split(separator: "\n") where line.hasPrefix(name) {
            let kb = line.dropFirst(name.count).split(whereSeparator: { $0 == " " || $0 == "\t" }).first.flatMap { UInt64($0) } ?? 0
            return kb * 1024
        }
        return 0
    }
}

#if canImport(Glibc)
@_silgen_name("mallopt")
private func glibcMallopt(_ parameter: Int32, _ value: Int32) -> Int32
#endif
