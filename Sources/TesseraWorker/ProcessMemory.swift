import Foundation

/// Resident memory of this process, from /proc (Linux).
public enum ProcessMemory {
    /// Current resident set size in bytes (0 where /proc is not available).
    public static var residentBytes: UInt64 { statusField("VmRSS:") }
    /// Peak resident set size in bytes since the process started.
    public static var peakResidentBytes: UInt64 { statusField("VmHWM:") }

    static func statusField(_ name: String) -> UInt64 {
        guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
        for line in text.split(separator: "\n") where line.hasPrefix(name) {
            let kb = line.dropFirst(name.count).split(whereSeparator: { $0 == " " || $0 == "\t" }).first.flatMap { UInt64($0) } ?? 0
            return kb * 1024
        }
        return 0
    }
}
