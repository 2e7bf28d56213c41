import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Where tests put their files: one folder per test process, `$TMPDIR/tessera-tests-PID-XXXXXX`
/// (made by `mkdtemp`, mode 0700), removed when the process exits. Set `TESSERA_KEEP_TEST_FILES`
/// to a non-empty value to keep it for a post-mortem (its path is printed at exit).
///
/// Why one root: the suite makes hundreds of folders a run (clusters' data and keys, inputs,
/// spills, logs, and what the clusters' daemons put in their `TMPDIR`), 200 MB in all, and a
/// machine that runs it often (a CI host shares its `/tmp`) fills its disk with them unless every
/// one is removed. A run that was killed cannot remove its root, so the first folder of the next
/// run removes the roots no process holds: each root's process keeps an exclusive `flock` on the
/// root's `.lock` for its life, which the kernel releases however it ends, and which a process
/// of another PID namespace sharing `/tmp` holds as well.
///
/// The root's path is about 35 bytes: Unix socket paths under it (a worker's Python executors')
/// stay under the 108-byte limit while `$TMPDIR` is under about 45.
public enum TestFolders {
    static let prefix = "tessera-tests-"
    static let lockName = ".lock"

    /// This process's root, made (its lock taken, its removal at exit arranged) on first use.
    public static let root: String = {
        let parent = FileManager.default.temporaryDirectory.path
        removeAbandonedRoots(in: parent)
        var template = Array((parent + "/" + prefix + "\(getpid())-XXXXXX").utf8CString)
        let root: String
        if let made = mkdtemp(&template) {
            root = String(cString: made)
        } else {
            // No temporary folder to make one in: the tests' own folders will say what fails.
            root = parent + "/" + prefix + "\(getpid())"
        }
        // Held (never closed) while the process lives; taken before the lock file has its
        // name, so that no sweep finds it unheld.
        let lock = open(root + "/" + lockName + "-new", O_CREAT | O_RDWR | O_CLOEXEC, 0o600)
        if lock >= 0, flock(lock, LOCK_EX | LOCK_NB) == 0 { rename(root + "/" + lockName + "-new", root + "/" + lockName) }
        if let keep = ProcessInfo.processInfo.environment["TESSERA_KEEP_TEST_FILES"], !keep.isEmpty {
            atexit { FileHandle.standardError.write(Data("the tests' files are kept in \(TestFolders.root)\n".utf8)) }
        } else {
            atexit { try? FileManager.default.removeItem(atPath: TestFolders.root) }
        }
        return root
    }()

    /// A fresh folder under this process's root.
    public static func make(_ name: String) -> String {
        let dir = root + "/\(name)-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    /// A path under this process's root for one file (the file itself is not made).
    public static func file(_ name: String) -> String {
        root + "/\(UInt32.random(in: 0...UInt32.max))-\(name)"
    }

    /// Removes the roots in `parent` that are this user's and whose lock no process holds. A
    /// root without a lock file is left alone (its process may not have made it yet).
    static func removeAbandonedRoots(in parent: String) {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: parent) else { return }
        for name in names where name.hasPrefix(prefix) {
            let path = parent + "/" + name
            var st = stat()
            guard lstat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR, st.st_uid == getuid() else { continue }
            let lock = open(path + "/" + lockName, O_RDWR | O_CLOEXEC | O_NOFOLLOW)
            guard lock >= 0 else { continue }
            let abandoned = flock(lock, LOCK_EX | LOCK_NB) == 0
            if abandoned { try? FileManager.default.removeItem(atPath: path) }
            close(lock)
        }
    }
}

/// A fresh temporary folder (under `TestFolders.root`, removed when the test process exits).
public func temporaryFolder(_ name: String) -> String {
    TestFolders.make(name)
}
