import Foundation
import Synchronization
import TesseraProtocol
import ZeroMQ

/// Why keys could not be read, made or used: the message says which file and what to do.
public struct KeyError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// One party's CURVE identity in a file of its own (mode 0600): its name, role, key pair, and the
/// public key of the cluster's scheduler it talks to. A user is handed this one file.
///
/// ```
/// # Tessera key: keep it secret
/// name = alice
/// role = user
/// public-key = <40 Z85 characters>
/// secret-key = <40 Z85 characters>
/// scheduler-key = <40 Z85 characters>
/// ```
public struct KeyFile: Sendable, Equatable {
    public enum Role: String, Sendable { case scheduler, worker, user }

    public var name: String
    public var role: Role
    public var keys: CurveKeyPair
    /// The scheduler's public key (the scheduler's own file has its own public key here).
    public var schedulerKey: String

    public init(name: String, role: Role, keys: CurveKeyPair, schedulerKey: String) {
        self.name = name
        self.role = role
        self.keys = keys
        self.schedulerKey = schedulerKey
    }

    public static func read(_ path: String) throws(KeyError) -> KeyFile {
        guard let data = FileManager.default.contents(atPath: path), data.count <= 64 * 1024 else {
            throw KeyError("cannot read the key file \(path)")
        }
        var fields: [String: String] = [:]
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
            let t = line.trimmingCharacters(in: .whitespaces)
            guard !t.isEmpty, !t.hasPrefix("#"), let eq = t.firstIndex(of: "=") else { continue }
            fields[t[..<eq].trimmingCharacters(in: .whitespaces)] = t[t.index(after: eq)...].trimmingCharacters(in: .whitespaces)
        }
        guard let name = fields["name"], let role = fields["role"].flatMap(Role.init(rawValue:)),
              let secret = fields["secret-key"], let keys = CurveKeyPair(secretKey: secret),
              let scheduler = fields["scheduler-key"], CurveKeyPair.isValidKey(scheduler)
        else {
            throw KeyError("\(path) is not a Tessera key file (it needs name, role, secret-key and scheduler-key lines)")
        }
        if let pub = fields["public-key"], pub != keys.publicKey {
            throw KeyError("\(path): its public key does not belong to its secret key")
        }
        return KeyFile(name: name, role: role, keys: keys, schedulerKey: scheduler)
    }

    public var text: String {
        """
        # Tessera key: keep it secret (whoever holds it is \(role.rawValue) `\(name)` to the cluster)
        name = \(name)
        role = \(role.rawValue)
        public-key = \(keys.publicKey)
        secret-key = \(keys.secretKey)
        scheduler-key = \(schedulerKey)

        """
    }

    /// Writes the file readable by its owner only, atomically (never half a key).
    public func write(to path: String) throws(KeyError) {
        try writePrivately(text, to: path)
    }
}

/// Writes `text` to `path` with mode 0600, through a temporary file renamed into place.
public func writePrivately(_ text: String, to path: String) throws(KeyError) {
    let tmp = path + ".tmp-\(getpid())"
    let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    guard fd >= 0 else { throw KeyError("cannot create \(tmp): \(String(cString: strerror(errno)))") }
    let bytes = Array(text.utf8)
    let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    let synced = fsync(fd) == 0
    close(fd)
    guard written == bytes.count, synced, rename(tmp, path) == 0 else {
        unlink(tmp)
        throw KeyError("cannot write \(path): \(String(cString: strerror(errno)))")
    }
}

/// Who a cluster admits: worker keys (by worker name) and user keys (by user name, some admins).
/// Kept as two text files beside the scheduler's key, one `NAME PUBLIC-KEY [admin]` per line.
public struct AccessList: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public var name: String
        public var isAdmin: Bool
    }

    public var workers: [String: Entry] = [:]
    public var users: [String: Entry] = [:]

    public init() {}

    static func parse(_ path: String) throws(KeyError) -> [String: Entry] {
        guard FileManager.default.fileExists(atPath: path) else { return [:] }
        guard let data = FileManager.default.contents(atPath: path) else { throw KeyError("cannot read \(path)") }
        var out: [String: Entry] = [:]
        for (n, line) in String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            guard let first = words.first, !first.hasPrefix("#") else { continue }
            guard words.count >= 2, CurveKeyPair.isValidKey(words[1]), Validate.name(first, what: "name", limit: Limits.workerNameCharacters) == nil else {
                throw KeyError("\(path) line \(n + 1): expected `NAME PUBLIC-KEY [admin]`")
            }
            out[words[1]] = Entry(name: first, isAdmin: words.dropFirst(2).contains("admin"))
        }
        return out
    }

    /// Every admitted worker's public key, sorted.
    public var workerKeys: [String] { workers.keys.sorted() }
}

/// A cluster's key folder: `scheduler.key`, `workers.list`, `users.list`, and the key files it
/// made for workers (`worker-NAME.key`) and users (`user-NAME.key`), all private to its owner.
public struct KeyDirectory: Sendable {
    public let path: String

    public init(_ path: String) { self.path = path }

    public var schedulerKeyPath: String { path + "/scheduler.key" }
    public var workersListPath: String { path + "/workers.list" }
    public var usersListPath: String { path + "/users.list" }
    public func workerKeyPath(_ name: String) -> String { path + "/worker-\(name).key" }
    public func userKeyPath(_ name: String) -> String { path + "/user-\(name).key" }

    /// The scheduler's key, made (with the folder, mode 0700) if there is none yet.
    @discardableResult
    public func initialize() throws(KeyError) -> KeyFile {
        if FileManager.default.fileExists(atPath: schedulerKeyPath) { return try KeyFile.read(schedulerKeyPath) }
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw KeyError("cannot create the key folder \(path): \(error)")
        }
        let keys: CurveKeyPair
        do { keys = try CurveKeyPair.generate() } catch { throw KeyError("cannot generate a CURVE key: \(error)") }
        let k = KeyFile(name: "scheduler", role: .scheduler, keys: keys, schedulerKey: keys.publicKey)
        try k.write(to: schedulerKeyPath)
        return k
    }

    /// A new worker or user: a fresh key pair in its own file, its public key added to the list.
    /// An existing name keeps its key (the file is read back).
    @discardableResult
    public func add(_ role: KeyFile.Role, name: String, admin: Bool = false) throws(KeyError) -> KeyFile {
        if let why = Validate.name(name, what: "\(role.rawValue) name", limit: Limits.workerNameCharacters) { throw KeyError(why) }
        let scheduler = try initialize()
        let file = role == .worker ? workerKeyPath(name) : userKeyPath(name)
        if FileManager.default.fileExists(atPath: file) { return try KeyFile.read(file) }
        let keys: CurveKeyPair
        do { keys = try CurveKeyPair.generate() } catch { throw KeyError("cannot generate a CURVE key: \(error)") }
        let k = KeyFile(name: name, role: role, keys: keys, schedulerKey: scheduler.keys.publicKey)
        try k.write(to: file)
        try admit(role, name: name, publicKey: keys.publicKey, admin: admin)
        return k
    }

    /// Adds a public key made elsewhere (a user's own `tessera keys new`) to the workers' or
    /// users' list.
    public func admit(_ role: KeyFile.Role, name: String, publicKey: String, admin: Bool = false) throws(KeyError) {
        guard CurveKeyPair.isValidKey(publicKey) else { throw KeyError("`\(publicKey)` is not a CURVE public key (40 Z85 characters)") }
        if let why = Validate.name(name, what: "\(role.rawValue) name", limit: Limits.workerNameCharacters) { throw KeyError(why) }
        let list = role == .worker ? workersListPath : usersListPath
        let old = FileManager.default.contents(atPath: list).map { String(decoding: $0, as: UTF8.self) } ?? "# NAME PUBLIC-KEY [admin]\n"
        try writePrivately(old + "\(name) \(publicKey)\(admin ? " admin" : "")\n", to: list)
    }

    /// The admitted workers and users as the files say now.
    public func accessList() throws(KeyError) -> AccessList {
        var a = AccessList()
        a.workers = try AccessList.parse(workersListPath)
        a.users = try AccessList.parse(usersListPath)
        return a
    }

    /// The lists' modification times and sizes: when this changes, they changed (an appended
    /// line changes the size even within one tick of the file system's clock).
    public var listsSignature: [Int] {
        [workersListPath, usersListPath].flatMap { path -> [Int] in
            var st = stat()
            guard stat(path, &st) == 0 else { return [0, 0, 0] }
            return [Int(st.st_mtim.tv_sec), Int(st.st_mtim.tv_nsec), Int(st.st_size)]
        }
    }
}

/// How a process authenticates to the cluster: CURVE keys, or nothing (loopback only).
public enum Credentials: Sendable, Equatable {
    case insecure
    case curve(KeyFile)

    /// The user's key: `explicit` (a `--key` flag), else `$TESSERA_KEY`, else the local
    /// cluster's user key under `./tessera-data/keys`. Insecure when none exists.
    public static func find(explicit: String?, environment: [String: String] = ProcessInfo.processInfo.environment,
                            dataFolder: String = "tessera-data") throws(KeyError) -> Credentials {
        if let path = explicit ?? environment["TESSERA_KEY"] { return .curve(try KeyFile.read(path)) }
        let local = KeyDirectory(dataFolder + "/keys").userKeyPath(LocalKeys.userName)
        if FileManager.default.fileExists(atPath: local) { return .curve(try KeyFile.read(local)) }
        return .insecure
    }
}

/// The names a local cluster gives its keys.
public enum LocalKeys {
    /// The user `tessera local` makes for the person who started it (an admin).
    public static let userName = "local"
}

/// Where an endpoint can be reached from.
public enum EndpointScope {
    /// Whether only this machine can reach `endpoint` (loopback TCP, IPC, in-process).
    public static func isLoopback(_ endpoint: String) -> Bool {
        if endpoint.hasPrefix("ipc://") || endpoint.hasPrefix("inproc://") { return true }
        guard endpoint.hasPrefix("tcp://") else { return false }
        let rest = endpoint.dropFirst(6)
        let host = rest.lastIndex(of: ":").map { rest[..<$0] } ?? rest
        return host.hasPrefix("127.") || host == "localhost" || host == "[::1]"
    }

    /// Refuses to run without keys on an address other hosts can reach.
    public static func checkInsecure(_ endpoints: [String]) throws(KeyError) {
        for e in endpoints where !isLoopback(e) {
            throw KeyError("refusing to listen on \(e) without keys: --insecure is allowed on loopback addresses only (127.0.0.1, ::1); give the cluster keys (tessera keys) to listen beyond this machine")
        }
    }
}

/// The credentials a connection to an endpoint uses when its caller names none: those of a
/// cluster this process started (``register(_:for:)``), else `Credentials.find` (a `TESSERA_KEY`
/// file, or the local cluster's key under `./tessera-data/keys`), else none.
public enum CredentialStore {
    private static let known = Mutex<[String: Credentials]>([:])

    /// Remembers the credentials for a cluster this process started.
    public static func register(_ credentials: Credentials, for endpoint: String) {
        known.withLock { $0[endpoint] = credentials }
    }

    public static func credentials(for endpoint: String) -> Credentials {
        if let c = known.withLock({ $0[endpoint] }) { return c }
        return (try? Credentials.find(explicit: nil)) ?? .insecure
    }
}

extension Credentials {
    /// Makes `socket` a CURVE client of the scheduler (nothing when insecure).
    public func secure(_ socket: Socket) throws(ZeroMQError) {
        if case .curve(let key) = self { try socket.makeCurveClient(serverPublicKey: key.schedulerKey, keys: key.keys) }
    }

    /// Makes `socket` a CURVE client of a worker's peer endpoint, whose public key is `serverKey`.
    public func secure(_ socket: Socket, serverKey: String) throws(ZeroMQError) {
        if case .curve(let key) = self { try socket.makeCurveClient(serverPublicKey: serverKey, keys: key.keys) }
    }
}
