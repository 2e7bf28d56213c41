import Foundation

/// Who a request without a token comes from, for its share of the gateway: its client's
/// address. An IPv4 address stands for itself; an IPv6 address for its /64, the block one
/// subscriber is given (a client picks any address in it at will). Behind a trusted proxy
/// (`--trusted-proxy`), the client is the right-most `X-Forwarded-For` entry that is not itself
/// a trusted proxy: entries further left are the client's own word, and anyone may write them.
public enum ClientAddress {
    /// An IP address in one spelling (`203.0.113.5`, `2001:db8::1`; an IPv4 address seen on an
    /// IPv6 socket, `::ffff:203.0.113.5`, as IPv4), or nil when it is not one. Brackets
    /// (`[2001:db8::1]`, as some proxies write them) and a zone (`%eth0`) are dropped.
    public static func address(_ text: some StringProtocol) -> String? {
        bytes(text).flatMap(spelled)
    }

    /// The address's key: an IPv4 address itself, an IPv6 address its /64
    /// (`2001:db8:1:2::/64`); nil when it is not an IP address.
    public static func key(_ text: some StringProtocol) -> String? {
        bytes(text).flatMap(key(of:))
    }

    /// The key of the client a request comes from: its connection's `peer`, or behind a trusted
    /// proxy the right-most `forwardedFor` entry that is not a trusted proxy. `forwardedFor` is
    /// every `X-Forwarded-For` value in order; `trustedProxies` holds ``address(_:)``s, whole
    /// (trusting a proxy is not trusting its neighbours). A proxy that sends no usable entry
    /// stands for its clients itself.
    public static func client(peer: String?, forwardedFor: [String], trustedProxies: Set<String>) -> String {
        guard let peer = peer.flatMap({ bytes($0) }), let peerKey = key(of: peer) else { return "unknown" }
        guard let spelled = spelled(peer), trustedProxies.contains(spelled) else { return peerKey }
        let entries = forwardedFor.flatMap { $0.split(separator: ",") }.suffix(64)
        for entry in entries.reversed() {
            guard let b = bytes(entry), let a = Self.spelled(b), let k = key(of: b) else { return peerKey }
            if !trustedProxies.contains(a) { return k }
        }
        return peerKey
    }

    /// 4 bytes for IPv4 (and IPv4-mapped IPv6), 16 for IPv6.
    private static func bytes(_ text: some StringProtocol) -> [UInt8]? {
        var host = Substring(text.trimmingCharacters(in: .whitespaces))
        if host.hasPrefix("["), let close = host.firstIndex(of: "]") { host = host[host.index(after: host.startIndex)..<close] }
        if let percent = host.firstIndex(of: "%") { host = host[..<percent] }
        guard !host.isEmpty, host.utf8.count < 64 else { return nil }
        var v4 = in_addr()
        if inet_pton(AF_INET, String(host), &v4) == 1 { return withUnsafeBytes(of: v4) { Array($0) } }
        var v6 = in6_addr()
        guard inet_pton(AF_INET6, String(host), &v6) == 1 else { return nil }
        let b = withUnsafeBytes(of: v6) { Array($0) }
        if b[0..<10].allSatisfy({ $0 == 0 }) && b[10] == 0xff && b[11] == 0xff { return Array(b[12..<16]) }
        return b
    }

    private static func key(of bytes: [UInt8]) -> String? {
        guard bytes.count == 16 else { return spelled(bytes) }
        return spelled(Array(bytes[0..<8]) + [UInt8](repeating: 0, count: 8)).map { $0 + "/64" }
    }

    private static func spelled(_ bytes: [UInt8]) -> String? {
        if bytes.count == 4 { return "\(bytes[0]).\(bytes[1]).\(bytes[2]).\(bytes[3])" }
        var a = in6_addr()
        withUnsafeMutableBytes(of: &a) { p in for i in 0..<16 { p[i] = bytes[i] } }
        var out = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        guard inet_ntop(AF_INET6, &a, &out, socklen_t(out.count)) != nil else { return nil }
        return String(decoding: out.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
