import TesseraProtocol

/// Numbers the peers of a ROUTER socket: a peer (routing id bytes, and on a CURVE socket the key
/// it authenticated with) ↔ a small integer the state machine uses.
///
/// A routing id alone does not name a peer for good: a client may choose its own, and after a
/// peer disconnects another may connect under the same one. Replies are sent to a routing id, so
/// when a message arrives under a known routing id from another key, the earlier connection is
/// forgotten (what is still sent to it goes nowhere, and the scheduler cancels its jobs) and the
/// newcomer gets a number of its own: it never reads the earlier one's answers.
struct ConnectionTable {
    private struct Peer {
        var routingID: [UInt8]
        /// The CURVE key it authenticated with (nil on an insecure socket).
        var key: String?
        var lastSeen: UInt64
    }

    private var byRoutingID: [[UInt8]: ConnectionID] = [:]
    private var peers: [ConnectionID: Peer] = [:]
    private var next: ConnectionID = 1

    /// Peers known.
    var count: Int { peers.count }

    /// The number of the peer that sent a message now; `forgotten` is the earlier connection
    /// under the same routing id with another key, if there was one.
    mutating func id(for routingID: [UInt8], key: String?, now: UInt64) -> (id: ConnectionID, forgotten: ConnectionID?) {
        var forgotten: ConnectionID?
        if let id = byRoutingID[routingID] {
            if peers[id]?.key == key {
                peers[id]?.lastSeen = now
                return (id, nil)
            }
            peers.removeValue(forKey: id)
            forgotten = id
        }
        // 0 names no peer; after four billion connections the numbers go round, past those
        // still in use.
        while next == 0 || peers[next] != nil { next &+= 1 }
        let id = next
        next &+= 1
        byRoutingID[routingID] = id
        peers[id] = Peer(routingID: routingID, key: key, lastSeen: now)
        return (id, forgotten)
    }

    /// The routing id to send to, or nil for a peer forgotten (or never known).
    func routingID(_ id: ConnectionID) -> [UInt8]? { peers[id]?.routingID }

    /// Forgets peers silent for `idleNs` that `keep` does not claim; returns them.
    mutating func prune(idleNs: UInt64, now: UInt64, keep: (ConnectionID) -> Bool) -> [ConnectionID] {
        let gone = peers.filter { now &- $0.value.lastSeen > idleNs && !keep($0.key) }.keys.sorted()
        for id in gone {
            if let p = peers.removeValue(forKey: id), byRoutingID[p.routingID] == id { byRoutingID.removeValue(forKey: p.routingID) }
        }
        return gone
    }
}
