import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Where tests put their files: one folder per test process, `$TMPDIR/tessera-tests-PID`, removed
/// when the process exits (set `TESSERA_KEEP_TEST_FILES=1` to keep it for a post-mortem).
///
/// Why one root: the suite makes hundreds of folders a run (clusters' data, inputs, spills,
/// keys, logs), 200 MB in all, and a machine that runs it often (a CI host shares its `/tmp`)
/// fills its disk with them unless every one is removed. A run that was killed cannot remove
/// its root, so the first folder of the next run removes the roots of test processes that no
/// longer run and were last touched more than a day ago (the age guards against a process of
/// another PID namespace sharing `/tmp`, whose PID looks dead from here).
public enum TestFolders {
    static let prefix = "tessera-tests-"

    /// This process's root, made (and its removal at exit arranged) on first use.
    public static let root: String = {
        let parent = FileManager.default.temporaryDirectory.path
        removeAbandonedRoots(in: parent)
        let root = parent + "/" + prefix + "\(getpid())"
        try? FileManager.default.removeItem(atPath: root)
        try? FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        if ProcessInfo.processInfo.environment["TESSERA_KEEP_TEST_FILES"] == nil {
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

    static func removeAbandonedRoots(in parent: String) {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: parent) else { return }
        let dayAgo = Date().addingTimeInterval(-86_400)
        for name in names where name.hasPrefix(prefix) {
            guard let pid = pid_t(name.dropFirst(prefix.count)), pid != getpid(), kill(pid, 0) != 0, errno == ESRCH else { continue }
            let path = parent + "/" + name
            guard let attributes = try? FileManager.default.attributesOfItem(atPath: path),
                  (attributes[.ownerAccountID] as? NSNumber)?.uint32Value == getuid(),
                  let modified = attributes[.modificationDate] as? Date, modified < dayAgo else { continue }
            try? FileManager.default.removeItem(atPath: path)
        }
    }
}

/// A fresh temporary folder (under `TestFolders.root`, removed when the test process exits).
public func temporaryFolder(_ name: String) -> String {
    TestFolders.make(name)
}
