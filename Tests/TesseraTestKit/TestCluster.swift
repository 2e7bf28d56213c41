import Foundation
import TesseraClient
import TesseraCluster
import TesseraCompute
import TesseraProtocol
import TesseraSecurity
import ZeroMQ

/// A local cluster for end-to-end tests: real scheduler and worker processes on loopback, on
/// ports the OS picks (so parallel runs never collide), logs in a temporary file, and fast
/// failure detection. Stopped by `stop()` or when dropped.
public enum TestCluster {
    public static func start(workers: Int = 2, threads: Int = 1, heartbeatMs: Int = 100, workerTimeoutMs: Int = 800,
                             dataDirectory: String? = nil, orphanGraceSeconds: Double? = nil, supervise: Bool = false,
                             clientTimeoutSeconds: Double? = nil, memoryLimitMb: Int? = nil,
                             schedulerArguments: [String] = []) throws -> LocalCluster {
        var o = LocalCluster.Options()
        o.schedulerArguments = schedulerArguments
        // A test that kills a daemon usually wants it to stay dead.
        o.supervise = supervise
        o.clientTimeoutSeconds = clientTimeoutSeconds
        o.memoryLimitMb = memoryLimitMb
        o.orphanGraceSeconds = orphanGraceSeconds
        o.dataDirectory = dataDirectory
        // With a data folder the keys are in it; without, in a folder under the tests' root.
        if dataDirectory == nil { o.keysDirectory = TestFolders.file("keys") }
        o.workers = workers
        o.threadsPerWorker = threads
        o.heartbeatMs = heartbeatMs
        o.workerTimeoutMs = workerTimeoutMs
        o.logFile = TestFolders.file("cluster.log")
        // What the daemons put in the temporary folder goes with the test process's, even from
        // a worker a test kills.
        o.temporaryDirectory = TestFolders.root
        return try LocalCluster(o)
    }

    /// A plan of `n` independent `inc` tasks, each sleeping `sleepMicros`.
    public static func independent(_ n: Int, sleepMicros: Double = 0) -> Tessera_V1_Plan {
        Workloads.independent(tasks: UInt64(n), params: Workloads.sleeping(microseconds: sleepMicros))
    }

    /// A tree reduction: `leaves` `inc` tasks (argument i, so the sum is leaves·(leaves+1)/2) summed with fan-in `fanIn`.
    public static func treeReduce(_ leaves: Int, fanIn: UInt32 = 8, sleepMicros: Double = 0) -> Tessera_V1_Plan {
        Workloads.treeReduce(leaves: UInt64(leaves), fanIn: fanIn, leafParams: Workloads.sleeping(microseconds: sleepMicros))
    }
}

/// A tiny tmpfs mounted at `path` (root only), to run out of disk space on purpose.
/// - Returns: false when it could not be mounted.
public func mountTinyFilesystem(at path: String, kilobytes: Int) -> Bool {
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/mount")
    p.arguments = ["-t", "tmpfs", "-o", "size=\(kilobytes)k", "tmpfs", path]
    guard (try? p.run()) != nil else { return false }
    p.waitUntilExit()
    return p.terminationStatus == 0
}

public func unmount(_ path: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/umount")
    p.arguments = ["-l", path]
    try? p.run()
    p.waitUntilExit()
}

extension LocalCluster {
    /// The credentials of a new worker key added to this cluster's list: a member, who may still
    /// send anything.
    public func workerCredentials(_ name: String) throws -> Credentials {
        guard let keys else { return .insecure }
        return .curve(try keys.add(.worker, name: name))
    }
}

/// A DEALER connected to `endpoint` with `credentials` (the scheduler's key by default, or a
/// worker's peer key): what a hand-made client or worker sends, unchecked by our client code.
public func rawDealer(_ context: ZMQContext, _ endpoint: String, _ credentials: Credentials, serverKey: String? = nil,
                      receiveTimeoutMs: Int32 = 10_000, routingID: [UInt8]? = nil) throws -> Socket {
    let s = try context.socket(.dealer)
    try s.setLinger(milliseconds: 0)
    try s.setReceiveTimeout(milliseconds: receiveTimeoutMs)
    if let routingID { try s.setRoutingID(routingID) }
    if let serverKey { try credentials.secure(s, serverKey: serverKey) } else { try credentials.secure(s) }
    try s.connect(endpoint)
    return s
}
