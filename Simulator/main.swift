import ArgumentParser
import Dispatch
import Foundation
import Synchronization
import TesseraBuildTarget
import TesseraSimulation

#if canImport(Glibc)
import Glibc
#endif

/// `tessera-sim`: runs seeds of the deterministic whole-cluster simulation and prints one JSON
/// line per failing seed and one summary line. A failing seed replays exactly with `--seed N`.
struct SimCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tessera-sim",
        abstract: "Run the whole cluster (real scheduler and worker engines) in simulated time, with faults, for many seeds.")

    @Option(help: "How many seeds to run.")
    var seeds: UInt64 = 1_000

    @Option(help: "The first seed.")
    var start: UInt64 = 1

    @Option(help: "Replay one seed and print its faults, outcomes and violations.")
    var seed: UInt64?

    @Flag(help: "Run without faults (the network still delays and reorders across connections).")
    var noFaults = false

    @Option(help: "Threads running seeds side by side.")
    var threads = ProcessInfo.processInfo.activeProcessorCount

    func run() throws {
        var options = Simulation.Options()
        options.faults = !noFaults
        if let seed {
            let r = Simulation.run(seed: seed, options: options)
            for f in r.faults { print("fault: \(f)") }
            for (i, o) in r.outcomes.enumerated() { print("client \(i): \(o)") }
            for v in r.violations { print("VIOLATION: \(v)") }
            print("seed \(seed): \(r.steps) steps, \(String(format: "%.1f", r.simulatedSeconds)) simulated s, trace \(String(r.trace, radix: 16)), "
                + "\(r.violations.isEmpty ? "ok" : "\(r.violations.count) violations")")
            if !r.violations.isEmpty { throw ExitCode(1) }
            return
        }
        struct Totals { var steps = 0; var failures: [UInt64] = []; var outcomes: [String: Int] = [:]; var simSeconds = 0.0; var restarts = 0 }
        let totals = Mutex(Totals())
        let next = Atomic<UInt64>(0)
        let began = Date()
        let count = seeds, first = start, opts = options
        DispatchQueue.concurrentPerform(iterations: max(1, threads)) { _ in
            while true {
                let k = next.add(1, ordering: .relaxed).oldValue
                guard k < count else { return }
                let s = first + k
                let r = Simulation.run(seed: s, options: opts)
                totals.withLock { t in
                    t.steps += r.steps
                    t.simSeconds += r.simulatedSeconds
                    t.restarts += r.schedulerRestarts
                    for o in r.outcomes {
                        let name = switch o {
                        case .correct: "correct"
                        case .wrong: "wrong"
                        case .failed: "failed_clearly"
                        case .abandoned: "abandoned"
                        case .hung: "hung"
                        }
                        t.outcomes[name, default: 0] += 1
                    }
                    for case .failed(let why) in r.outcomes {
                        t.outcomes["failed: " + String(why.prefix(60)), default: 0] += 1
                    }
                    if !r.violations.isEmpty {
                        t.failures.append(s)
                        let v = r.violations.prefix(3).map { "\"\($0.replacingOccurrences(of: "\"", with: "'"))\"" }.joined(separator: ",")
                        print("{\"seed\":\(s),\"violations\":[\(v)]}")
                        fflush(nil)
                    }
                }
            }
        }
        let t = totals.withLock { $0 }
        let outcomes = t.outcomes.sorted { $0.key < $1.key }.map { "\"\($0.key)\":\($0.value)" }.joined(separator: ",")
        print("{\"bench\":\"simulation\",\"seeds\":\(count),\"first_seed\":\(first),\"steps\":\(t.steps),\"simulated_seconds\":\(Int(t.simSeconds)),"
            + "\"scheduler_restarts\":\(t.restarts),\"failing_seeds\":\(t.failures.count),\"outcomes\":{\(outcomes)},"
            + "\"wall_seconds\":\(String(format: "%.1f", Date().timeIntervalSince(began)))}")
        if !t.failures.isEmpty { throw ExitCode(1) }
    }
}

BuildTarget.requireProcessor(program: "tessera-sim")
// Swift seeds its hash function per process: the simulation never lets an order come from a
// hash, and this makes sure of it for seeds replayed in another process.
if getenv("SWIFT_DETERMINISTIC_HASHING") == nil {
    setenv("SWIFT_DETERMINISTIC_HASHING", "1", 1)
    var args = CommandLine.arguments.map { strdup($0) } + [nil]
    execv("/proc/self/exe", &args)
}
SimCommand.main()
