import Foundation

/// Who a request without a token comes from, for its share of the gateway: its client's
/// address. An IPv4 address stands for itself; an IPv6 address for its /64, the block one
/// subscriber is given (a client picks any address in it at will). Behind a trusted proxy
/// (`--trusted-proxy`), the client is the right-most `X-Forwarded-For` entry that is not itself
/// a trusted proxy: entries further left are the client's own word, and anyone may write them.
public enum ClientAddress {
    /// The address's key (`203.0.113.5`, `2001:db8:1:2::/64`), or nil when it is not an IP address.
    public static func key(_ address: some StringProtocol) -> String? {
        let text = address.trimmingCharacters(in: .whitespaces)
        // `[2001:db8::1]` and `[::1]:443` (as some proxies write them); a zone (`%eth0`) is dropped.
        var host = Substring(text)
        if host.hasPrefix("["), let close = host.firstIndex(of: "]") { host = host[host.index(after: host.startIndex)..<close] }
        if let percent = host.firstIndex(of: "%") { host = host[..<percent] }
        guard !host.isEmpty, host.utf8.count < 64 else { return nil }
        var v4 = in_addr()
        if inet_pton(AF_INET, String(host), &v4) == 1 { return dotted(v4) }
        var v6 = in6_addr()
        guard inet_pton(AF_INET6, String(host), &v6) == 1 else { return nil }
        let bytes = withUnsafeBytes(of: v6) { Array($0) }
        // An IPv4 client on an IPv6 socket (::ffff:a.b.c.d) is that IPv4 client.
        if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xff && bytes[11] == 0xff {
            return "\(bytes[12]).\(bytes[13]).\(bytes[14]).\(bytes[15])"
        }
        var prefix = in6_addr()
        withUnsafeMutableBytes(of: &prefix) { p in for i in 0..<8 { p[i] = bytes[i] } }
        var out = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        guard inet_ntop(AF_INET6, &prefix, &out, socklen_t(out.count)) != nil else { return nil }
        return String(decoding: out.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) + "/64"
    }

    /// The client a request comes from: `peer` (its connection's address), or behind a trusted
    /// proxy the right-most `forwardedFor` entry that is not a trusted proxy. `forwardedFor` is
    /// every `X-Forwarded-For` value in order; `trustedProxies` holds ``key(_:)``s. A proxy that
    /// sends no usable entry stands for its clients itself.
    public static func client(peer: String?, forwardedFor: [String], trustedProxies: Set<String>) -> String {
        guard let peerKey = peer.flatMap({ key($0) }) else { return "unknown" }
        guard trustedProxies.contains(peerKey) else { return peerKey }
        let entries = forwardedFor.flatMap { $0.split(separator: ",") }.suffix(64)
        for entry in entries.reversed() {
            guard let k = key(entry) else { return peerKey }
            if !trustedProxies.contains(k) { return k }
        }
        return peerKey
    }

    private static func dotted(_ a: in_addr) -> String {
        withUnsafeBytes(of: a) { "\($0[0]).\($0[1]).\($0[2]).\($0[3])" }
    }
}
