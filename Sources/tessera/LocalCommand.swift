import ArgumentParser
import Dispatch
import Foundation
import TesseraCluster
import TesseraGateway
import TesseraSecurity

#if canImport(Glibc)
import Glibc
#endif

struct LocalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "local",
        abstract: "Start a scheduler and N workers on this machine (restarting any that dies); stop them all on Ctrl-C or SIGTERM.")

    @Option(help: "Worker processes.")
    var workers = 2

    @Option(help: "Client port (the worker port is the next one).")
    var port = 7700

    @Option(help: "Executor threads per worker (default: one per core).")
    var threads: Int?

    @Option(help: "Folder for the registry and the workers' shards (a restarted cluster finds its datasets there).")
    var data = "tessera-data"

    @Flag(help: "Run without keys (the ports are on 127.0.0.1 only either way).")
    var insecure = false

    @Option(help: "The Python interpreter workers run users' functions in (default: python3 on PATH; it needs the tessera client package).")
    var python: String?

    @Flag(help: "Workers do not run users' Python functions.")
    var noPython = false

    @Option(help: "Resident memory, in MiB, one Python executor may reach during a call before it is killed (default: the worker's, 2048).")
    var pythonMemoryMb: Int?

    @Option(help: "Seconds a client may fall silent before its jobs are cancelled (default: the scheduler's, 30).")
    var clientTimeoutS: Double?

    @Option(help: "Where the HTTP gateway (TAP, VOSI) listens (default: 127.0.0.1 at the client port + 80).")
    var http: String?

    @Flag(help: "Do not start the HTTP gateway.")
    var noHttp = false

    @Flag(help: "The gateway lets requests without a token in, as user `anonymous` (it listens on loopback only).")
    var anonymous = false

    @Flag(help: "The gateway's TAP UPLOAD may fetch tables by URL from loopback and private addresses too (default: public addresses only).")
    var uploadsFromPrivateAddresses = false

    @Flag(help: "The gateway serves the HiPS trees in DATA/hips without a token.")
    var publicHips = false

    @Option(help: "How workers confine users' Python functions: landlock (the default; refused on kernels before Linux 6.12, which cannot scope signals), landlock-unscoped-signals (accepts those) or none (see tessera-worker --help).")
    var pythonSandbox: String?

    @Option(help: "A folder users' Python functions may read (repeatable).")
    var pythonRead: [String] = []

    @Option(help: "A folder users' Python functions may read and write (repeatable).")
    var pythonWrite: [String] = []

    @Option(help: "Stop the cluster when the process with this pid exits (for a parent that starts it, like tessera.LocalCluster in Python).")
    var exitWithParent: Int32?

    func validate() throws {
        guard workers >= 1 && workers <= 256 else { throw ValidationError("--workers must be between 1 and 256") }
        guard port > 0 && port < 65535 else { throw ValidationError("--port must be between 1 and 65534") }
    }

    func run() throws {
        var o = LocalCluster.Options()
        o.workers = workers
        o.port = port
        o.threadsPerWorker = threads
        o.dataDirectory = data
        o.insecure = insecure
        o.python = python
        o.allowPython = !noPython
        o.pythonMemoryMb = pythonMemoryMb
        if let pythonSandbox { o.workerArguments += ["--python-sandbox", pythonSandbox] }
        o.workerArguments += pythonRead.flatMap { ["--python-read", $0] } + pythonWrite.flatMap { ["--python-write", $0] }
        o.clientTimeoutSeconds = clientTimeoutS
        // A daemon that dies is started again; say so where the user is looking.
        o.onEvent = { line in
            print("tessera local: \(line)")
            fflush(nil)
        }
        let cluster = try LocalCluster(o)
        print("Tessera local cluster: \(workers) workers")
        print("  client endpoint: \(cluster.clientEndpoint)")
        print("  worker endpoint: \(cluster.workerEndpoint)")
        print("  data folder:     \(data)")
        if let keys = cluster.keys {
            print("  keys:            \(keys.path) (tessera commands here use \(keys.userKeyPath("local")))")
        }
        if !noHttp {
            var g = GatewayConfiguration(scheduler: cluster.clientEndpoint)
            (g.host, g.port) = try GatewayCommand.hostPort(http ?? "127.0.0.1:\(port + 80)")
            g.tokensPath = data + "/gateway-tokens"
            g.anonymous = anonymous
            g.uploadsFromPrivateAddresses = uploadsFromPrivateAddresses
            g.hipsRoot = data + "/hips"
            g.publicHiPS = publicHips
            let shown = g
            let gateway = GatewayCommand.serve(shown) { bound in
                print("  HTTP gateway:    http://\(shown.host):\(bound)/tap (tokens: tessera token create USER --tokens \(shown.tokensPath ?? ""))\(shown.anonymous ? ", anonymous allowed" : "")")
                fflush(nil)
            }
            Thread.detachNewThread {
                do { try gateway.wait() } catch { print("tessera local: \(error)"); fflush(nil) }
            }
        }
        print("Press Ctrl-C to stop.")
        fflush(nil)
        let stop = DispatchSemaphore(value: 0)
        var sources: [any DispatchSourceSignal] = []
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            s.setEventHandler { stop.signal() }
            s.resume()
            sources.append(s)
        }
        if let parent = exitWithParent {
            Thread.detachNewThread {
                while kill(parent, 0) == 0 || errno == EPERM { Thread.sleep(forTimeInterval: 0.5) }
                stop.signal()
            }
        }
        stop.wait()
        print("stopping the local cluster")
        cluster.stop()
        _ = sources
    }
}
