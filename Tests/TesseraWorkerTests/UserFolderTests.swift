import Testing
import TesseraDaemon
import TesseraProtocol

/// Each user's functions write in a folder of their own inside a `--python-write` folder,
/// named from the user's name: no two users may share one, and no name may leave the folder.
struct UserFolderTests {
    @Test func everyValidNameIsItsOwnFolder() {
        // Two names of the longest length allowed, alike in their first 127 characters.
        let stem = String(repeating: "a", count: Limits.workerNameCharacters - 1)
        let (first, second) = (stem + "1", stem + "2")
        #expect(Validate.name(first, what: "user", limit: Limits.workerNameCharacters) == nil)
        #expect(PythonSettings.userFolder(first) == first && PythonSettings.userFolder(second) == second)
        #expect(PythonSettings.userFolder("alice.b-c_9") == "alice.b-c_9")
    }

    @Test func noNameLeavesTheFolder() {
        for hostile in ["", ".", "..", "../victor", "a/b", ".hidden", "é", String(repeating: "/", count: 500)] {
            let folder = PythonSettings.userFolder(hostile)
            #expect(!folder.isEmpty && folder != "." && folder != ".." && !folder.hasPrefix(".") && !folder.contains("/")
                    && folder.utf8.count <= Limits.workerNameCharacters + 1, "\(hostile) → \(folder)")
        }
    }
}
