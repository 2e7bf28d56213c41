import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The kernel's page cache for the files under a folder: how much of them is in memory, and
/// dropping them from it, so that a benchmark can read a catalog as one far larger than memory
/// is read, from the disk.
enum PageCache {
    /// Regular files under `directory` whose names end with `suffix`, and their sizes.
    static func files(under directory: String, suffix: String) -> [(path: String, bytes: Int)] {
        guard let walk = FileManager.default.enumerator(atPath: directory) else { return [] }
        var out: [(String, Int)] = []
        while let name = walk.nextObject() as? String {
            guard name.hasSuffix(suffix) else { continue }
            let path = directory + "/" + name
            var st = stat()
            if stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG { out.append((path, Int(st.st_size))) }
        }
        return out
    }

    /// Asks the kernel to drop the cached pages of those files (`POSIX_FADV_DONTNEED`). Pages a
    /// process still maps, or dirty ones, stay: stop the processes first.
    static func evict(under directory: String, suffix: String) {
        for f in files(under: directory, suffix: suffix) {
            let fd = open(f.path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { continue }
            _ = posix_fadvise(fd, 0, 0, Int32(POSIX_FADV_DONTNEED))
            close(fd)
        }
    }

    /// The fraction of those files' bytes in the page cache (`mincore` on a mapping of each).
    static func residentFraction(under directory: String, suffix: String) -> Double {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        var resident = 0, total = 0
        for f in files(under: directory, suffix: suffix) where f.bytes > 0 {
            let fd = open(f.path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { continue }
            defer { close(fd) }
            guard let map = mmap(nil, f.bytes, PROT_READ, MAP_SHARED, fd, 0), map != MAP_FAILED else { continue }
            defer { munmap(map, f.bytes) }
            let pages = (f.bytes + page - 1) / page
            var flags = [UInt8](repeating: 0, count: pages)
            guard mincore(map, f.bytes, &flags) == 0 else { continue }
            resident += flags.reduce(0) { $0 + Int($1 & 1) } * page
            total += pages * page
        }
        return total == 0 ? 0 : Double(resident) / Double(total)
    }
}
