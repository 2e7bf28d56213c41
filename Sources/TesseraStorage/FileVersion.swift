import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// What names one version of an open regular file: its size, modification time and inode (a
/// file replaced by a rename is a new inode, even if written within the same second).
public struct FileVersion: Sendable, Equatable {
    public var size: Int
    /// Whole seconds since 1970.
    public var modifiedSeconds: Int
    public var inode: UInt64

    /// The version of the file open as `descriptor`; nil if it is not a regular file.
    public init?(descriptor: Int32) {
        var st = stat()
        guard fstat(descriptor, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return nil }
        size = Int(st.st_size)
        modifiedSeconds = Int(st.st_mtim.tv_sec)
        inode = UInt64(st.st_ino)
    }
}
