import Foundation
import Synchronization
import Testing
import TesseraClient
import TesseraCluster
import TesseraProtocol
import TesseraSecurity
import TesseraTestKit

#if canImport(Glibc)
import Glibc
#endif

/// A small network of Linux network namespaces: the scheduler and each worker on a host of its
/// own (its own address, joined by veth pairs to a bridge), the test as the client on the
/// bridge. `tc netem` adds delay and loss; bringing a host's link down partitions it.
final class NamespaceNetwork {
    let tag: String
    let subnet: String
    let bridge: String
    var hosts: [String] = []
    var processes: [Process] = []
    let binDirectory: String

    /// Whether this process may make namespaces (root, with iproute2).
    static let available: Bool = {
        guard getuid() == 0, FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip") || FileManager.default.isExecutableFile(atPath: "/sbin/ip") else { return false }
        let probe = "tsprobe\(getpid())"
        guard (try? NamespaceNetwork.sh("ip netns add \(probe)")) != nil else { return false }
        _ = try? NamespaceNetwork.sh("ip netns delete \(probe)")
        return true
    }()

    @discardableResult
    static func sh(_ command: String) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", command]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        guard p.terminationStatus == 0 else { throw ClusterError.startFailed("`\(command)` failed: \(text)") }
        return text
    }

    init(binDirectory: String) throws {
        self.binDirectory = binDirectory
        let id = getpid() % 100_000
        tag = "t\(id)"
        subnet = "10.77.\(id % 250)"
        bridge = "tb\(id)"
        try Self.sh("ip link add \(bridge) type bridge && ip addr add \(subnet).254/24 dev \(bridge) && ip link set \(bridge) up")
    }

    /// A host with address `subnet.N`, linked to the bridge.
    func addHost(_ n: Int) throws -> String {
        let ns = "\(tag)h\(n)", outside = "\(tag)v\(n)", inside = "\(tag)i\(n)"
        try Self.sh("""
            ip netns add \(ns) && ip link add \(outside) type veth peer name \(inside) && \
            ip link set \(inside) netns \(ns) && ip link set \(outside) master \(bridge) && ip link set \(outside) up && \
            ip netns exec \(ns) ip addr add \(subnet).\(n)/24 dev \(inside) && ip netns exec \(ns) ip link set \(inside) up && \
            ip netns exec \(ns) ip link set lo up
            """)
        hosts.append(ns)
        return ns
    }

    func address(_ n: Int) -> String { "\(subnet).\(n)" }

    /// Runs a daemon on host `n`.
    func launch(host n: Int, _ executable: String, _ args: [String], log: FileHandle) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        p.arguments = ["netns", "exec", "\(tag)h\(n)", binDirectory + "/" + executable] + args
        p.standardOutput = log
        p.standardError = log
        try p.run()
        processes.append(p)
        return p
    }

    /// Delay and loss on host `n`'s link, both ways, with `tc netem`. Where the kernel has no
    /// netem (some VM kernels), the link is made slow instead (`tc tbf`: queueing delay under
    /// load) and loses packets at random through nftables. Returns what was applied.
    @discardableResult
    func impair(host n: Int, delayMs: Int, jitterMs: Int, lossPercent: Int) throws -> String {
        let inside = "ip netns exec \(tag)h\(n)"
        do {
            try Self.sh("tc qdisc replace dev \(tag)v\(n) root netem delay \(delayMs)ms \(jitterMs)ms loss \(lossPercent)%")
            try Self.sh("\(inside) tc qdisc replace dev \(tag)i\(n) root netem delay \(delayMs)ms \(jitterMs)ms loss \(lossPercent)%")
            return "netem: \(delayMs)±\(jitterMs) ms, \(lossPercent)% loss"
        } catch {
            guard "\(error)".contains("qdisc kind is unknown") else { throw error }
        }
        try Self.sh("tc qdisc replace dev \(tag)v\(n) root tbf rate 4mbit burst 16kb latency 200ms")
        try Self.sh("\(inside) tc qdisc replace dev \(tag)i\(n) root tbf rate 4mbit burst 16kb latency 200ms")
        try Self.sh("\(inside) nft add table inet lossy")
        try Self.sh("\(inside) nft add chain inet lossy in '{ type filter hook input priority 0; }'")
        try Self.sh("\(inside) nft add chain inet lossy out '{ type filter hook output priority 0; }'")
        try Self.sh("\(inside) nft add rule inet lossy in meta iifname != lo numgen random mod 100 '<' \(lossPercent) drop")
        try Self.sh("\(inside) nft add rule inet lossy out meta oifname != lo numgen random mod 100 '<' \(lossPercent) drop")
        return "no netem in this kernel: tbf 4 Mbit/s (queueing delay up to 200 ms), nftables \(lossPercent)% loss each way"
    }

    /// Cuts host `n` off the network, or joins it again.
    func partition(host n: Int, _ cut: Bool) throws {
        try Self.sh("ip link set \(tag)v\(n) \(cut ? "down" : "up")")
    }

    func tearDown() {
        for p in processes where p.isRunning { kill(p.processIdentifier, SIGTERM) }
        let deadline = Date().addingTimeInterval(5)
        for p in processes {
            while p.isRunning && Date() < deadline { usleep(20_000) }
            if p.isRunning { kill(p.processIdentifier, SIGKILL) }
        }
        for (i, ns) in hosts.enumerated() {
            _ = try? Self.sh("ip netns pids \(ns) | xargs -r kill -9")
            _ = try? Self.sh("ip netns delete \(ns)")
            _ = try? Self.sh("ip link delete \(tag)v\(i + 1)")
        }
        _ = try? Self.sh("ip link delete \(bridge)")
    }
}

@Suite(.serialized, .enabled(if: NamespaceNetwork.available, "needs root and iproute2: network namespaces (ip netns) cannot be made here"))
struct NetworkEndToEndTests {
    @Test func aJobFinishesOverADelayedLossyNetworkAndAPartitionedWorkerRejoins() throws {
        let bin = ProcessInfo.processInfo.environment["TESSERA_BIN_DIR"] ?? LocalCluster.defaultBinDirectory()
        let net = try NamespaceNetwork(binDirectory: bin)
        defer { net.tearDown() }
        // Host 1: the scheduler; hosts 2…4: workers.
        for n in 1...4 { try net.addHost(n) }
        let keys = KeyDirectory(temporaryFolder("netns-keys"))
        try keys.initialize()
        let user = try keys.add(.user, name: "tester", admin: true)
        for w in 2...4 { try keys.add(.worker, name: "w\(w)") }
        let logPath = temporaryFolder("netns-logs") + "/cluster.log"
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = try #require(FileHandle(forWritingAtPath: logPath))
        _ = try net.launch(host: 1, "tessera-scheduler", [
            "--clients", "tcp://\(net.address(1)):7700", "--workers", "tcp://\(net.address(1)):7701", "--keys", keys.path,
            "--heartbeat-ms", "200", "--worker-timeout-ms", "2000",
        ], log: log)
        for w in 2...4 {
            _ = try net.launch(host: w, "tessera-worker", [
                "--scheduler", "tcp://\(net.address(1)):7701", "--name", "w\(w)", "--key", keys.workerKeyPath("w\(w)"),
                "--peer-bind", "tcp://\(net.address(w)):7702", "--threads", "2",
            ], log: log)
        }
        let endpoint = "tcp://\(net.address(1)):7700"
        @Sendable func connect() throws -> SchedulerConnection { try SchedulerConnection(endpoint: endpoint, timeout: 10, credentials: .curve(user)) }
        func waitForWorkers(_ names: Set<String>, timeout: Double) throws -> Tessera_V1_StatusReply {
            let deadline = Date().addingTimeInterval(timeout)
            while Date() < deadline {
                if let s = try? connect().status(timeout: 2), Set(s.workers.map(\.name)) == names { return s }
                usleep(200_000)
            }
            throw ClientError.timedOut("workers \(names.sorted()) not all registered within \(timeout) s (log: \(logPath))")
        }
        let all: Set<String> = ["w2", "w3", "w4"]
        let first = try waitForWorkers(all, timeout: 30)
        // Each on its own address.
        #expect(Set(first.workers.map(\.peerEndpoint)) == Set((2...4).map { "tcp://\(net.address($0)):7702" }))

        // Delay and loss on every link.
        var applied = ""
        for n in 1...4 { applied = try net.impair(host: n, delayMs: 15, jitterMs: 5, lossPercent: 1) }
        print("network impairment: \(applied)")
        let conn = try connect()
        let leaves = 3_000
        let slow = try conn.run(.plan(TestCluster.treeReduce(leaves, sleepMicros: 300)), idleTimeout: 120)
        #expect(slow.values.values.first == .int64(Int64(leaves * (leaves + 1) / 2)))

        // Partition w3 mid-job: the job still finishes, right.
        let answer = Mutex<Int64?>(nil)
        let runner = Thread {
            guard let c = try? connect(), let out = try? c.run(.plan(TestCluster.treeReduce(leaves, sleepMicros: 1_000)), idleTimeout: 120),
                  case .int64(let v)? = out.values.values.first else { return }
            answer.withLock { $0 = v }
        }
        runner.start()
        usleep(700_000)
        try net.partition(host: 3, true)
        let deadline = Date().addingTimeInterval(120)
        while answer.withLock({ $0 }) == nil && Date() < deadline { usleep(100_000) }
        #expect(answer.withLock { $0 } == Int64(leaves * (leaves + 1) / 2), "the job finished correctly without w3")
        let without = try conn.status()
        #expect(!without.workers.contains { $0.name == "w3" }, "the partitioned worker was declared dead")

        // Reachable again: it rejoins, and takes work.
        try net.partition(host: 3, false)
        let back = try waitForWorkers(all, timeout: 60)
        #expect(back.workers.first { $0.name == "w3" }?.restarts == 1, "w3 registered again")
        // Work placed round robin reaches w3 again. One short job may finish before w3 (its link
        // still impaired) is handed anything, so jobs are run until it is, for a bounded time.
        var w3Done: UInt64 = 0
        let seen = Date().addingTimeInterval(30)
        while w3Done == 0 && Date() < seen {
            let after = try conn.run(.plan(TestCluster.independent(600, sleepMicros: 5_000)))
            #expect(after.values.count == 600)
            w3Done = (try? conn.status().workers.first { $0.name == "w3" }?.tasksDone) ?? 0
        }
        #expect(w3Done > 0, "w3 ran tasks after rejoining")
    }
}
