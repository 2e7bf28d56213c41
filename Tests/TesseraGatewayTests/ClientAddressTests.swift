import Testing
import TesseraGateway

/// Who a request without a token comes from: its address's key, and `X-Forwarded-For` believed
/// only from a trusted proxy, right to left.
struct ClientAddressTests {
    @Test func keys() {
        #expect(ClientAddress.key("203.0.113.5") == "203.0.113.5")
        #expect(ClientAddress.key(" 203.0.113.5\t") == "203.0.113.5")
        // An IPv4 client seen on an IPv6 socket is the IPv4 client.
        #expect(ClientAddress.key("::ffff:203.0.113.5") == "203.0.113.5")
        // IPv6: the /64 a subscriber is given, however its last half is chosen.
        #expect(ClientAddress.key("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64")
        #expect(ClientAddress.key("2001:db8:1:2:ffff:ffff:ffff:ffff") == "2001:db8:1:2::/64")
        #expect(ClientAddress.key("[2001:db8:1:2::9]") == "2001:db8:1:2::/64")
        #expect(ClientAddress.key("2001:db8:1:3::9") == "2001:db8:1:3::/64")
        #expect(ClientAddress.key("fe80::1%eth0") == "fe80::/64")
        #expect(ClientAddress.key("::1") == "::/64")
        for bad in ["", " ", "unknown", "1.2.3", "203.0.113.5:8080", "256.1.1.1", "2001:db8::1::2", "[::1", String(repeating: "1", count: 200)] {
            #expect(ClientAddress.key(bad) == nil, "\(bad)")
        }
    }

    @Test func forwardedForIsBelievedOnlyFromATrustedProxy() {
        let proxy: Set = ["127.0.0.1", "10.0.0.2"]
        // Not from a proxy: the header is the client's own word.
        #expect(ClientAddress.client(peer: "198.51.100.7", forwardedFor: ["203.0.113.5"], trustedProxies: proxy) == "198.51.100.7")
        #expect(ClientAddress.client(peer: "127.0.0.1", forwardedFor: ["203.0.113.5"], trustedProxies: []) == "127.0.0.1")
        // From a proxy: the right-most entry no trusted proxy wrote. Entries to its left are
        // whatever the client sent.
        #expect(ClientAddress.client(peer: "127.0.0.1", forwardedFor: ["203.0.113.5"], trustedProxies: proxy) == "203.0.113.5")
        #expect(ClientAddress.client(peer: "127.0.0.1", forwardedFor: ["198.51.100.1, 203.0.113.5"], trustedProxies: proxy) == "203.0.113.5")
        #expect(ClientAddress.client(peer: "127.0.0.1", forwardedFor: ["198.51.100.1", "203.0.113.5, 10.0.0.2"], trustedProxies: proxy) == "203.0.113.5")
        #expect(ClientAddress.client(peer: "127.0.0.1", forwardedFor: ["2001:db8:1:2::77"], trustedProxies: proxy) == "2001:db8:1:2::/64")
        // A proxy with no usable word stands for its clients itself.
        #expect(ClientAddress.client(peer: "127.0.0.1", forwardedFor: [], trustedProxies: proxy) == "127.0.0.1")
        #expect(ClientAddress.client(peer: "127.0.0.1", forwardedFor: ["10.0.0.2"], trustedProxies: proxy) == "127.0.0.1")
        #expect(ClientAddress.client(peer: "127.0.0.1", forwardedFor: ["203.0.113.5, not-an-address"], trustedProxies: proxy) == "127.0.0.1")
        #expect(ClientAddress.client(peer: nil, forwardedFor: ["203.0.113.5"], trustedProxies: proxy) == "unknown")
        // An IPv6 proxy is trusted alone, not its /64: a neighbour's header is its own word, and
        // an entry from a neighbour is a client, not a proxy.
        let v6: Set = [ClientAddress.address("2001:db8:1:2::10")!]
        #expect(v6 == ["2001:db8:1:2::10"])
        #expect(ClientAddress.client(peer: "2001:db8:1:2::99", forwardedFor: ["198.51.100.1"], trustedProxies: v6) == "2001:db8:1:2::/64")
        #expect(ClientAddress.client(peer: "2001:db8:1:2:0:0:0:10", forwardedFor: ["198.51.100.1"], trustedProxies: v6) == "198.51.100.1")
        #expect(ClientAddress.client(peer: "2001:db8:1:2::10", forwardedFor: ["198.51.100.1, 2001:db8:1:2::99"], trustedProxies: v6) == "2001:db8:1:2::/64")
        #expect(ClientAddress.address("::ffff:203.0.113.5") == "203.0.113.5" && ClientAddress.address("[2001:DB8::1]") == "2001:db8::1")
    }
}
