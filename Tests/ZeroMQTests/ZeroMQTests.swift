import Testing
@testable import ZeroMQ
import CZeroMQ

#if canImport(Glibc)
import Glibc
#endif

/// Receive timeout for every socket in these tests: a broken exchange fails instead of hanging.
private let timeoutMs: Int32 = 3000

/// A socket with a receive and send timeout set, so no test can block forever.
private func makeSocket(_ ctx: ZMQContext, _ type: SocketType) throws -> Socket {
    let s = try ctx.socket(type)
    try s.setReceiveTimeout(milliseconds: timeoutMs)
    try s.setSendTimeout(milliseconds: timeoutMs)
    return s
}

/// A unique inproc name per call (inproc names are per context, but keep them distinct anyway).
private func inprocName(_ tag: String) -> String {
    "inproc://\(tag)-\(UInt64.random(in: 0 ... .max))"
}

private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

@Suite("ZeroMQ sockets")
struct ZeroMQSocketTests {
    @Test func versionIsReported() {
        let v = ZMQContext.version
        let parts = v.split(separator: ".")
        #expect(parts.count == 3)
        #expect(Int(parts[0]) ?? 0 >= 4, "libzmq \(v) is older than 4")
    }

    /// ROUTER sees [identity, payload...]; replying with that identity reaches the DEALER.
    private func routerDealerRoundTrip(endpoint: String) throws {
        let ctx = try ZMQContext()
        let router = try makeSocket(ctx, .router)
        defer { router.close() }
        let dealer = try makeSocket(ctx, .dealer)
        defer { dealer.close() }

        let bound = try router.bind(endpoint)
        try dealer.connect(bound)

        let request: [[UInt8]] = [bytes("hello"), [], [0, 1, 2, 255], [UInt8](repeating: 7, count: 100_000)]
        #expect(try dealer.send(parts: request))

        let got = try #require(try router.receiveParts())
        #expect(got.count == request.count + 1, "ROUTER must prefix the routing id")
        let identity = got[0]
        #expect(!identity.isEmpty)
        #expect(Array(got.dropFirst()) == request)

        let reply: [[UInt8]] = [bytes("world"), bytes("second part")]
        #expect(try router.send(parts: [identity] + reply))
        let back = try #require(try dealer.receiveParts())
        #expect(back == reply)
    }

    @Test func routerDealerMultipartOverInproc() throws {
        try routerDealerRoundTrip(endpoint: inprocName("rd"))
    }

    @Test func routerDealerMultipartOverTCP() throws {
        try routerDealerRoundTrip(endpoint: "tcp://127.0.0.1:*")
    }

    @Test func bindReturnsTheResolvedTCPEndpoint() throws {
        let ctx = try ZMQContext()
        let s = try makeSocket(ctx, .router)
        defer { s.close() }
        let bound = try s.bind("tcp://127.0.0.1:*")
        #expect(bound.hasPrefix("tcp://127.0.0.1:"))
        #expect(!bound.hasSuffix("*"))
        let port = try #require(Int(bound.split(separator: ":").last ?? ""))
        #expect(port > 0 && port < 65536)
        #expect(try s.lastEndpoint == bound)
    }

    @Test func pairExchangesInBothDirections() throws {
        let ctx = try ZMQContext()
        let a = try makeSocket(ctx, .pair)
        defer { a.close() }
        let b = try makeSocket(ctx, .pair)
        defer { b.close() }
        let ep = try a.bind(inprocName("pair"))
        try b.connect(ep)

        for i in 0..<10 {
            try a.send(parts: [bytes("ping \(i)"), [UInt8(i)]])
            #expect(try b.receiveParts() == [bytes("ping \(i)"), [UInt8(i)]])
            try b.send(parts: [bytes("pong \(i)")])
            #expect(try a.receiveParts() == [bytes("pong \(i)")])
        }
    }

    @Test func pushPullOverTCP() throws {
        let ctx = try ZMQContext()
        let pull = try makeSocket(ctx, .pull)
        defer { pull.close() }
        let push = try makeSocket(ctx, .push)
        defer { push.close() }
        let ep = try pull.bind("tcp://127.0.0.1:*")
        try push.connect(ep)
        for i in 0..<5 { try push.send(parts: [[UInt8(i)]]) }
        for i in 0..<5 { #expect(try pull.receiveParts() == [[UInt8(i)]]) }
    }

    @Test func pubSubDeliversOnlySubscribedPrefix() throws {
        let ctx = try ZMQContext()
        let pub = try makeSocket(ctx, .pub)
        defer { pub.close() }
        let sub = try makeSocket(ctx, .sub)
        defer { sub.close() }
        let ep = try pub.bind("tcp://127.0.0.1:*")
        try sub.subscribe(bytes("news."))
        try sub.connect(ep)

        // Subscriptions reach the publisher asynchronously: publish until one arrives (bounded).
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(5)
        var received: [[[UInt8]]] = []
        while received.isEmpty && clock.now < deadline {
            try pub.send(parts: [bytes("other.topic"), bytes("ignored")])
            try pub.send(parts: [bytes("news.weather"), bytes("sunny")])
            usleep(10_000)
            while let m = try sub.receiveParts(dontWait: true) { received.append(m) }
        }
        try #require(!received.isEmpty, "no subscribed message arrived within 5 s")
        for m in received {
            #expect(m == [bytes("news.weather"), bytes("sunny")])
        }
    }

    @Test func receiveDontWaitOnEmptySocketReturnsNil() throws {
        let ctx = try ZMQContext()
        let a = try makeSocket(ctx, .pair)
        defer { a.close() }
        let b = try makeSocket(ctx, .pair)
        defer { b.close() }
        let ep = try a.bind(inprocName("empty"))
        try b.connect(ep)
        #expect(try a.receive(dontWait: true) == nil)
        #expect(try a.receiveParts(dontWait: true) == nil)
        // ...and then something once a message is queued.
        try b.send(parts: [bytes("x")])
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(3)
        var got: [[UInt8]]?
        while got == nil && clock.now < deadline {
            got = try a.receiveParts(dontWait: true)
            if got == nil { usleep(1000) }
        }
        #expect(got == [bytes("x")])
    }

    @Test func blockingReceiveTimesOutWithEAGAIN() throws {
        let ctx = try ZMQContext()
        let s = try ctx.socket(.pair)
        defer { s.close() }
        try s.setReceiveTimeout(milliseconds: 50)
        _ = try s.bind(inprocName("timeout"))
        let err = #expect(throws: ZeroMQError.self) { try s.receive() }
        #expect(err?.code == EAGAIN)
        #expect(err?.isWouldBlock == true)
        #expect(err?.description.contains("receive") == true)
    }

    @Test func sendDontWaitWithoutPeerReturnsFalse() throws {
        let ctx = try ZMQContext()
        let dealer = try makeSocket(ctx, .dealer)
        defer { dealer.close() }
        // No connection at all: a DEALER has nowhere to queue the message.
        #expect(try dealer.send(parts: [bytes("nobody")], dontWait: true) == false)
    }

    @Test func routerMandatoryReportsUnknownPeer() throws {
        let ctx = try ZMQContext()
        let router = try makeSocket(ctx, .router)
        defer { router.close() }
        try router.setRouterMandatory(true)
        _ = try router.bind(inprocName("mandatory"))
        let err = #expect(throws: ZeroMQError.self) {
            try router.send(parts: [bytes("no-such-peer"), bytes("payload")])
        }
        #expect(err?.code == EHOSTUNREACH)
        #expect(err?.description.contains("routing id") == true)
    }

    @Test func routingIDIsSeenByRouterAsFirstFrame() throws {
        let ctx = try ZMQContext()
        let router = try makeSocket(ctx, .router)
        defer { router.close() }
        let dealer = try makeSocket(ctx, .dealer)
        defer { dealer.close() }
        let id: [UInt8] = bytes("worker-42")
        try dealer.setRoutingID(id)
        let ep = try router.bind("tcp://127.0.0.1:*")
        try dealer.connect(ep)
        try dealer.send(parts: [bytes("register")])
        let got = try #require(try router.receiveParts())
        #expect(got == [id, bytes("register")])

        // The router can address the dealer by that id, with mandatory routing on.
        try router.setRouterMandatory(true)
        try router.send(parts: [id, bytes("ack")])
        #expect(try dealer.receiveParts() == [bytes("ack")])
    }

    @Test func socketOptionsAreAccepted() throws {
        let ctx = try ZMQContext()
        let s = try makeSocket(ctx, .dealer)
        defer { s.close() }
        try s.setLinger(milliseconds: 100)
        try s.setSendHighWaterMark(10)
        try s.setReceiveHighWaterMark(10)
        try s.setImmediate(true)
        try s.setHeartbeat(intervalMs: 100, timeoutMs: 300, ttlMs: 1000)
        try s.setMaxMessageSize(1 << 20)
        #expect(try s.getInt(ZMQ_LINGER, "linger") == 100)
        #expect(try s.getInt(ZMQ_SNDHWM, "send hwm") == 10)
    }

    @Test func closeIsIdempotent() throws {
        let ctx = try ZMQContext()
        let s = try ctx.socket(.pair)
        s.close()
        s.close()
    }
}

@Suite("ZeroMQ errors")
struct ZeroMQErrorTests {
    @Test func bindingSameTCPEndpointTwiceIsEADDRINUSE() throws {
        let ctx = try ZMQContext()
        let a = try makeSocket(ctx, .router)
        defer { a.close() }
        let b = try makeSocket(ctx, .router)
        defer { b.close() }
        let ep = try a.bind("tcp://127.0.0.1:*")
        let err = #expect(throws: ZeroMQError.self) { try b.bind(ep) }
        #expect(err?.code == EADDRINUSE)
        #expect(err?.operation == "bind \(ep)")
        let text = err?.description ?? ""
        #expect(text.contains("bind \(ep)"))
        #expect(text.contains("errno \(EADDRINUSE)"))
        #expect(text.contains("another process already listens"))
    }

    @Test(arguments: ["tcp://no-port-here", "bogus://somewhere", "tcp://127.0.0.1:notaport", "not an endpoint"])
    func connectingToMalformedEndpointFails(endpoint: String) throws {
        let ctx = try ZMQContext()
        let s = try makeSocket(ctx, .dealer)
        defer { s.close() }
        let err = #expect(throws: ZeroMQError.self) { try s.connect(endpoint) }
        let e = try #require(err)
        #expect(e.code != 0)
        #expect(e.code == EINVAL || e.code == EPROTONOSUPPORT, "unexpected errno \(e.code): \(e)")
        #expect(e.operation == "connect \(endpoint)")
        #expect(e.description.contains("connect \(endpoint)"))
        #expect(!e.reason.isEmpty)
    }

    @Test func bindingMalformedEndpointFails() throws {
        let ctx = try ZMQContext()
        let s = try makeSocket(ctx, .router)
        defer { s.close() }
        let err = #expect(throws: ZeroMQError.self) { try s.bind("carrier-pigeon://roof") }
        #expect(err?.code == EPROTONOSUPPORT)
        #expect(err?.description.contains("bind carrier-pigeon://roof") == true)
    }

    @Test func disconnectFromUnknownEndpointFails() throws {
        let ctx = try ZMQContext()
        let s = try makeSocket(ctx, .dealer)
        defer { s.close() }
        let err = #expect(throws: ZeroMQError.self) { try s.disconnect("tcp://127.0.0.1:1") }
        #expect(err?.code == ENOENT)
        #expect(err?.operation.hasPrefix("disconnect") == true)
    }

    @Test func errorFlagsAndDescription() {
        let again = ZeroMQError(code: EAGAIN, operation: "receive on dealer socket")
        #expect(again.isWouldBlock)
        #expect(!again.isTerminated)
        #expect(again.description.hasPrefix("ZeroMQ: receive on dealer socket failed: "))
        #expect(again.description.contains("[errno \(EAGAIN)]"))
        let term = ZeroMQError(code: ETERM, operation: "x")
        #expect(term.isTerminated)
        #expect(!term.isWouldBlock)
        #expect(ZeroMQError(code: EHOSTUNREACH, operation: "send").description.contains("no connected peer"))
        #expect(ZeroMQError(code: 1, operation: "a") != ZeroMQError(code: 1, operation: "b"))
    }
}

@Suite("ZeroMQ poller")
struct PollerTests {
    @Test func reportsReadabilityOfSocket() throws {
        let ctx = try ZMQContext()
        let a = try makeSocket(ctx, .pair)
        defer { a.close() }
        let b = try makeSocket(ctx, .pair)
        defer { b.close() }
        let ep = try a.bind(inprocName("poll"))
        try b.connect(ep)

        var poller = Poller()
        let idx = poller.add(a)
        do { let ready = try poller.wait(timeoutMs: 0); #expect(ready == 0) }
        do { let r = poller.isReadable(idx); #expect(!r) }

        try b.send(parts: [bytes("wake")])
        do { let ready = try poller.wait(timeoutMs: 3000); #expect(ready == 1) }
        do { let r = poller.isReadable(idx); #expect(r) }
        #expect(try a.receiveParts() == [bytes("wake")])

        // Drained: nothing readable any more.
        do { let ready = try poller.wait(timeoutMs: 10); #expect(ready == 0) }
        do { let r = poller.isReadable(idx); #expect(!r) }
    }

    @Test func reportsReadabilityOfPipeAndSocketIndependently() throws {
        var fds: [Int32] = [0, 0]
        try #require(pipe(&fds) == 0)
        defer { close(fds[0]); close(fds[1]) }

        let ctx = try ZMQContext()
        let a = try makeSocket(ctx, .pair)
        defer { a.close() }
        let b = try makeSocket(ctx, .pair)
        defer { b.close() }
        let ep = try a.bind(inprocName("pollfd"))
        try b.connect(ep)

        var poller = Poller()
        let sIdx = poller.add(a)
        let fIdx = poller.add(fileDescriptor: fds[0])
        #expect(sIdx == 0)
        #expect(fIdx == 1)
        do { let ready = try poller.wait(timeoutMs: 0); #expect(ready == 0) }

        var byte: UInt8 = 1
        #expect(write(fds[1], &byte, 1) == 1)
        do { let ready = try poller.wait(timeoutMs: 3000); #expect(ready == 1) }
        do { let r = poller.isReadable(fIdx); #expect(r) }
        do { let r = poller.isReadable(sIdx); #expect(!r) }

        var sink: UInt8 = 0
        #expect(read(fds[0], &sink, 1) == 1)
        #expect(sink == 1)
        try b.send(parts: [bytes("msg")])
        do { let ready = try poller.wait(timeoutMs: 3000); #expect(ready == 1) }
        do { let r = poller.isReadable(sIdx); #expect(r) }
        do { let r = poller.isReadable(fIdx); #expect(!r) }
        _ = try a.receive()
    }

    @Test func waitTimesOutWhenNothingIsReady() throws {
        var fds: [Int32] = [0, 0]
        try #require(pipe(&fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        var poller = Poller()
        poller.add(fileDescriptor: fds[0])
        let clock = ContinuousClock()
        let start = clock.now
        do { let ready = try poller.wait(timeoutMs: 50); #expect(ready == 0) }
        let elapsed = clock.now - start
        #expect(elapsed >= .milliseconds(40))
        #expect(elapsed < .seconds(2))
    }

    @Test func pollingAnInvalidDescriptorNeverReportsReadable() throws {
        var poller = Poller()
        poller.add(fileDescriptor: 987_654) // not an open descriptor
        // poll(2) marks it POLLNVAL (libzmq reports that as an error on some builds, or as not readable).
        do {
            _ = try poller.wait(timeoutMs: 0)
            do { let r = poller.isReadable(0); #expect(!r) }
        } catch {
            #expect(error.operation == "poll")
        }
    }
}

@Suite("ZeroMQ frames")
struct FrameTests {
    @Test func copyingInitialisers() {
        let src: [UInt8] = [1, 2, 3, 4, 5]
        #expect(Frame(src).array == src)
        #expect(Frame(src).count == 5)
        let f = src.withUnsafeBytes { Frame(copying: $0) }
        #expect(f.array == src)
        #expect(Frame([]).count == 0)
        #expect(Frame([]).array == [])
        let g = Frame(count: 4)
        g.mutableBytes.copyBytes(from: [9, 8, 7, 6])
        #expect(g.array == [9, 8, 7, 6])
        #expect(Array(g.bytes) == [9, 8, 7, 6])
    }

    @Test func zeroCopyFrameIsReceivedIntact() throws {
        let ctx = try ZMQContext()
        let a = try makeSocket(ctx, .pair)
        defer { a.close() }
        let b = try makeSocket(ctx, .pair)
        defer { b.close() }
        let ep = try a.bind("tcp://127.0.0.1:*")
        try b.connect(ep)

        let n = 3 * 1024 * 1024 + 17
        let buf = try #require(malloc(n))
        let typed = buf.bindMemory(to: UInt8.self, capacity: n)
        for i in 0..<n { typed[i] = UInt8(truncatingIfNeeded: i &* 31 &+ i >> 8) }
        let frame = Frame(takingOwnershipOf: buf, count: n)
        #expect(frame.count == n)
        #expect(try b.send([Frame(bytes("header")), frame]))
        // libzmq takes the content: the sent frame is empty afterwards.
        #expect(frame.count == 0)

        let got = try #require(try a.receive())
        try #require(got.count == 2)
        #expect(got[0].array == bytes("header"))
        #expect(got[1].count == n)
        var mismatches = 0
        for (i, x) in got[1].bytes.enumerated() where x != UInt8(truncatingIfNeeded: i &* 31 &+ i >> 8) { mismatches += 1 }
        #expect(mismatches == 0)
    }

    @Test func sentFrameArrayIsIndependentOfSender() throws {
        let ctx = try ZMQContext()
        let a = try makeSocket(ctx, .pair)
        defer { a.close() }
        let b = try makeSocket(ctx, .pair)
        defer { b.close() }
        let ep = try a.bind(inprocName("frames"))
        try b.connect(ep)
        var payload = [UInt8](repeating: 0xAB, count: 1000)
        try b.send([Frame(payload)])
        payload[0] = 0 // the frame copied it
        let got = try #require(try a.receive())
        #expect(got.count == 1)
        #expect(got[0].array == [UInt8](repeating: 0xAB, count: 1000))
    }
}

@Suite("ZeroMQ CURVE")
struct CurveTests {
    @Test(.enabled(if: CurveKeyPair.isSupported, "libzmq built without CURVE"))
    func generatedKeysAreZ85() throws {
        let a = try CurveKeyPair.generate()
        let b = try CurveKeyPair.generate()
        let z85 = Set("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")
        for key in [a.publicKey, a.secretKey, b.publicKey, b.secretKey] {
            #expect(key.utf8.count == 40)
            #expect(key.allSatisfy { z85.contains($0) }, "not Z85: \(key)")
        }
        #expect(a != b)
        #expect(a.publicKey != a.secretKey)
    }

    @Test(.enabled(if: CurveKeyPair.isSupported, "libzmq built without CURVE"))
    func curveSecuredDealerRouterExchange() throws {
        let ctx = try ZMQContext()
        let serverKeys = try CurveKeyPair.generate()
        let clientKeys = try CurveKeyPair.generate()

        let server = try makeSocket(ctx, .router)
        defer { server.close() }
        try server.makeCurveServer(secretKey: serverKeys.secretKey)
        let ep = try server.bind("tcp://127.0.0.1:*")

        let client = try makeSocket(ctx, .dealer)
        defer { client.close() }
        try client.makeCurveClient(serverPublicKey: serverKeys.publicKey, keys: clientKeys)
        try client.connect(ep)

        try client.send(parts: [bytes("secret"), bytes("payload")])
        let got = try #require(try server.receiveParts())
        #expect(Array(got.dropFirst()) == [bytes("secret"), bytes("payload")])
        try server.send(parts: [got[0], bytes("ok")])
        #expect(try client.receiveParts() == [bytes("ok")])
    }

    @Test(.enabled(if: CurveKeyPair.isSupported, "libzmq built without CURVE"))
    func curveClientWithWrongServerKeyIsNotHeard() throws {
        let ctx = try ZMQContext()
        let serverKeys = try CurveKeyPair.generate()
        let impostor = try CurveKeyPair.generate()
        let clientKeys = try CurveKeyPair.generate()

        let server = try ctx.socket(.router)
        defer { server.close() }
        try server.setReceiveTimeout(milliseconds: 300)
        try server.makeCurveServer(secretKey: serverKeys.secretKey)
        let ep = try server.bind("tcp://127.0.0.1:*")

        let client = try makeSocket(ctx, .dealer)
        defer { client.close() }
        try client.makeCurveClient(serverPublicKey: impostor.publicKey, keys: clientKeys)
        try client.connect(ep)
        _ = try client.send(parts: [bytes("hello")], dontWait: true)

        let err = #expect(throws: ZeroMQError.self) { try server.receive() }
        #expect(err?.isWouldBlock == true)
    }

    @Test(.enabled(if: CurveKeyPair.isSupported, "libzmq built without CURVE"))
    func plainClientCannotTalkToCurveServer() throws {
        let ctx = try ZMQContext()
        let serverKeys = try CurveKeyPair.generate()
        let server = try ctx.socket(.router)
        defer { server.close() }
        try server.setReceiveTimeout(milliseconds: 300)
        try server.makeCurveServer(secretKey: serverKeys.secretKey)
        let ep = try server.bind("tcp://127.0.0.1:*")
        let client = try makeSocket(ctx, .dealer)
        defer { client.close() }
        try client.connect(ep)
        _ = try client.send(parts: [bytes("plain")], dontWait: true)
        let err = #expect(throws: ZeroMQError.self) { try server.receive() }
        #expect(err?.isWouldBlock == true)
    }
}
