import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A new folder of this process's own in the temporary folder, made by `mkdtemp`: a name no one
/// can guess, mode 0700, and never one that already existed. A name from the process id alone
/// could be made first by another local account (world-writable, or with a log file planted as
/// a link to one of the worker's own files), and `createDirectory` would take it as it was.
enum PrivateFolder {
    struct Failed: Error, CustomStringConvertible {
        let path: String
        let reason: String
        var description: String { "cannot make a private folder \(path): \(reason)" }
    }

    /// `$TMPDIR/<prefix>-<pid>-XXXXXX`, made.
    static func make(_ prefix: String) throws -> String {
        let template = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(getpid())-XXXXXX").path
        var bytes = Array(template.utf8CString)
        guard let made = bytes.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw Failed(path: template, reason: String(cString: strerror(errno)))
        }
        return String(cString: made)
    }
}
