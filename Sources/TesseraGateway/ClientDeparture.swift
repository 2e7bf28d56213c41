import NIOCore
import Synchronization

/// Whether the client of a connection has left: it closed the connection, or its sending side.
///
/// A sync request (TAP, SODA, a coverage MOC) waits while the cluster answers. Before this, a
/// client that gave up (a closed browser tab, a timed-out script) left its question running to
/// its end, and an interactive one over budget was even asked again as normal. Now the question
/// polls its departure and is cancelled on the cluster within a poll (100 ms).
///
/// A client that half-closes (shuts its sending side and waits for the answer) is taken as gone
/// too: at the socket the two look the same until an answer is written, and browsers, curl,
/// pyvo and stilts never half-close. nginx treats a proxied request the same way by default
/// (`proxy_ignore_client_abort off`).
final class ClientDeparture: Sendable {
    private let gone = Atomic<Bool>(false)

    /// True once the client has closed its side of the connection.
    var hasLeft: Bool { gone.load(ordering: .relaxed) }

    func markLeft() { gone.store(true, ordering: .relaxed) }

    /// The departure of the client whose request is being served, for the scheduler pool to
    /// poll while its question runs; set by ``Gateway/whileClientStays(_:_:)`` around the routes
    /// that wait for the cluster. (A task-local, not a parameter: the pool is reached through
    /// the services.) A task started meanwhile would inherit it: one that outlives the request
    /// (a UWS job, a cached table list) is started ``unwatched(_:)``.
    @TaskLocal static var ofRequest: ClientDeparture?

    /// `make`'s result, with no request's departure in force: for starting a task that is not
    /// the request's own, which would otherwise be stopped when this request's client leaves.
    static func unwatched<T>(_ make: () -> T) -> T {
        $ofRequest.withValue(nil, operation: make)
    }

    /// The departure of `channel`'s client; one already marked when the connection is closed
    /// (its handlers are gone); nil when its pipeline does not watch for one.
    static func of(_ channel: any Channel) async -> ClientDeparture? {
        if let departure = try? await channel.eventLoop.submit({
            try channel.pipeline.syncOperations.handler(type: ClientDepartureHandler.self).departure
        }).get() {
            return departure
        }
        guard !channel.isActive else { return nil }
        let gone = ClientDeparture()
        gone.markLeft()
        return gone
    }
}

/// Added to each connection's pipeline: notes when its client closes its side (or the whole
/// connection). Everything else passes through untouched.
final class ClientDepartureHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    let departure = ClientDeparture()

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event as? ChannelEvent == .inputClosed { departure.markLeft() }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        departure.markLeft()
        context.fireChannelInactive()
    }
}
