import Foundation
import Glibc
import NIOCore
import TesseraStorage

/// A HiPS file, open: its version (time and size, its ETag) and the bytes sent come from the same
/// open file. A tree is replaced by renaming folders; a stat by path, then an open by path, could
/// send the new tree's bytes under the old tree's tag, which a browser would then keep.
final class OpenHiPSFile: Sendable {
    private let descriptor: Int32
    private let version: FileVersion
    let contentType: String
    var size: Int { version.size }
    /// Whole seconds, as HTTP dates have them.
    var modified: Date { Date(timeIntervalSince1970: Double(version.modifiedSeconds)) }

    /// Opens the file at `path` (`name` in messages): a 404 when there is no regular file there,
    /// a 503 when the gateway is out of file descriptors (worth asking again), else a 500.
    init(path: String, contentType: String, name: String) throws(SODAError) {
        // Non-blocking: opening a FIFO left in the folder must not hold the request.
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else {
            let code = errno
            switch code {
            case ENOENT, ENOTDIR, ELOOP, ENAMETOOLONG: throw .notFound("no HiPS file `\(name)`")
            case EMFILE, ENFILE: throw .serviceError(status: 503, "the gateway has too many files open; ask again shortly")
            default: throw .serviceError("HiPS file `\(name)` cannot be opened: \(String(cString: strerror(code)))")
            }
        }
        guard let version = FileVersion(descriptor: fd) else {
            close(fd)
            throw .notFound("no HiPS file `\(name)`")
        }
        descriptor = fd
        self.version = version
        self.contentType = contentType
    }

    deinit { close(descriptor) }

    /// The file's version as an HTTP entity tag: its time, size and inode (the inode tells apart
    /// two versions written within a second: a replaced tree's files are new files).
    var entityTag: String {
        "\"\(String(version.modifiedSeconds, radix: 16))-\(String(version.size, radix: 16))-\(String(version.inode, radix: 16))\""
    }

    /// Up to `count` bytes from `offset` (fewer only at the end of the file), read straight into
    /// the buffer that is sent.
    func read(at offset: Int, count: Int) throws(SODAError) -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: count)
        while buffer.readableBytes < count {
            let filled = buffer.readableBytes
            var result = 0
            buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count - filled) { space in
                result = pread(descriptor, space.baseAddress!, count - filled, off_t(offset + filled))
                return max(0, result)
            }
            if result > 0 || (result < 0 && errno == EINTR) { continue }
            guard result == 0 else { throw .serviceError("a HiPS file could not be read: \(String(cString: strerror(errno)))") }
            break  // the end of the file
        }
        return buffer
    }
}
