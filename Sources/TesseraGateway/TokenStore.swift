import Crypto
import Foundation
import Synchronization
import TesseraProtocol
import TesseraSecurity

/// The gateway's bearer tokens: a file of `USER SHA256-OF-TOKEN CREATED` lines, mode 0600.
///
/// Only hashes are stored, so the file does not hold the tokens themselves: `tessera token
/// create USER` prints a new token once and appends its hash. The gateway reads the file again
/// when it changes, so a token added or removed takes effect without a restart.
public final class TokenStore: Sendable {
    public let path: String
    private let state = Mutex<(stamp: [Int], checked: Double, users: [String: String])>(([], -.infinity, [:]))

    public init(path: String) {
        self.path = path
    }

    /// A new token for `user`, recorded in the file at `path` (created if missing).
    public static func create(user: String, path: String) throws(KeyError) -> String {
        if let why = Validate.name(user, what: "user name", limit: Limits.workerNameCharacters) { throw KeyError(why) }
        var rng = SystemRandomNumberGenerator()
        let bytes = (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let token = "tsr_" + bytes.map { String(format: "%02x", $0) }.joined()
        var text = FileManager.default.contents(atPath: path).map { String(decoding: $0, as: UTF8.self) } ?? "# Tessera gateway tokens: USER SHA256-OF-TOKEN CREATED (tessera token create USER)\n"
        if !text.hasSuffix("\n") { text += "\n" }
        text += "\(user) \(hash(token)) \(Int(Date().timeIntervalSince1970))\n"
        try writePrivately(text, to: path)
        return token
    }

    static func hash(_ token: String) -> String {
        SHA256.hash(data: Array(token.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    /// The user a token belongs to, or nil.
    public func user(for token: String) -> String? {
        guard token.utf8.count <= 256 else { return nil }
        let h = Self.hash(token)
        // A known token is looked up again in the file at most once a second (a removed one
        // stops working within that); an unknown one at once (it may have just been created).
        let now = Date().timeIntervalSince1970
        if let user = state.withLock({ now - $0.checked < 1 ? $0.users[h] : nil }) { return user }
        reloadIfChanged(now: now)
        return state.withLock { $0.users[h] }
    }

    private func reloadIfChanged(now: Double) {
        // The file's modification time (to the nanosecond) and size.
        let attributes = try? FileManager.default.attributesOfItem(atPath: path)
        let modified = (attributes?[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
        let stamp = attributes == nil ? [0] : [Int(modified * 1e9), Int(attributes?[.size] as? Int ?? 0)]
        if state.withLock({ s in
            s.checked = now
            return s.stamp == stamp
        }) { return }
        var users: [String: String] = [:]
        if let data = FileManager.default.contents(atPath: path) {
            for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
                let words = line.split(separator: " ").map(String.init)
                // A line by hand may name anyone: only valid user names act for a user.
                guard words.count >= 2, !words[0].hasPrefix("#"), words[1].count == 64,
                      Validate.name(words[0], what: "user name", limit: Limits.workerNameCharacters) == nil else { continue }
                users[words[1]] = words[0]
            }
        }
        state.withLock { $0 = (stamp, now, users) }
    }
}
