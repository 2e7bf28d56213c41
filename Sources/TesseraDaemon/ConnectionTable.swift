import TesseraProtocol

/// Numbers the peers of a ROUTER socket: routing id bytes ↔ a small integer the state machine uses.
struct ConnectionTable {
    private var byIdentity: [[UInt8]: ConnectionID] = [:]
    private var identities: [[UInt8]] = [[]]

    mutating func id(for identity: [UInt8]) -> ConnectionID {
        if let id = byIdentity[identity] { return id }
        let id = ConnectionID(identities.count)
        identities.append(identity)
        byIdentity[identity] = id
        return id
    }

    func identity(_ id: ConnectionID) -> [UInt8]? {
        Int(id) < identities.count && id > 0 ? identities[Int(id)] : nil
    }
}
