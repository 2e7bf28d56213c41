import Testing
@testable import TesseraDaemon

/// The scheduler's table of ROUTER peers: a routing id under another key is another peer, and
/// silent peers nothing refers to are forgotten.
struct ConnectionTableTests {
    @Test func aRoutingIDUnderAnotherKeyIsANewPeerAndTheOldOneIsForgotten() {
        var t = ConnectionTable()
        let rid: [UInt8] = [0, 1, 2, 3, 4]
        let (alice, none) = t.id(for: rid, key: "alice", now: 1)
        #expect(none == nil)
        #expect(t.id(for: rid, key: "alice", now: 2) == (alice, nil))
        let (mallory, forgotten) = t.id(for: rid, key: "mallory", now: 3)
        #expect(mallory != alice)
        #expect(forgotten == alice)
        #expect(t.routingID(alice) == nil, "answers to the first peer would reach the second")
        #expect(t.routingID(mallory) == rid)
        // Alice coming back under it is a third peer, never her old number again.
        let (again, gone) = t.id(for: rid, key: "alice", now: 4)
        #expect(gone == mallory)
        #expect(again != alice && again != mallory)
        #expect(t.count == 1)
        // Without keys (an insecure socket on loopback) the routing id alone names a peer.
        let (plain, _) = t.id(for: [9], key: nil, now: 5)
        #expect(t.id(for: [9], key: nil, now: 6) == (plain, nil))
    }

    @Test func silentPeersAreForgottenUnlessKept() {
        var t = ConnectionTable()
        let a = t.id(for: [1], key: nil, now: 0).id
        let b = t.id(for: [2], key: nil, now: 0).id
        let c = t.id(for: [3], key: nil, now: 0).id
        _ = t.id(for: [3], key: nil, now: 90)
        #expect(t.prune(idleNs: 60, now: 100, keep: { $0 == b }) == [a])
        #expect(t.routingID(a) == nil)
        #expect(t.routingID(b) == [2] && t.routingID(c) == [3])
        // A forgotten routing id that speaks again is a new peer.
        let (a2, forgotten) = t.id(for: [1], key: nil, now: 101)
        #expect(a2 != a && forgotten == nil)
        #expect(t.count == 3)
    }
}
