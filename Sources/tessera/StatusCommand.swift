import ArgumentParser
import Foundation
import TesseraClient
import TesseraProtocol

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status", abstract: "Show a cluster's workers, their load and memory, and its jobs.")

    @OptionGroup var target: SchedulerTarget

    @Option(help: "Seconds to wait for the scheduler.")
    var timeout = 5.0

    func run() throws {
        let conn = try target.connect(timeout: timeout)
        let s = try conn.status(timeout: timeout)
        print(StatusReport.render(s, endpoint: target.scheduler))
    }
}

enum StatusReport {
    static func render(_ s: Tessera_V1_StatusReply, endpoint: String) -> String {
        var out = "scheduler \(endpoint): up \(String(format: "%.0f", s.uptimeSeconds)) s, \(s.tasksCompleted) tasks and \(s.jobsCompleted) jobs completed\n"
        // With a registry, epochs count the scheduler's starts on it: every one after the first is a restart.
        out += "  epoch \(s.epoch)\(s.epoch > 1 && s.epoch < 1 << 32 ? " (\(s.epoch - 1) restarts on this registry)" : "")"
        out += ", \(s.jobsAbandoned) jobs cancelled for a silent client, \(s.tasksTimedOut) task runs past their deadline\n"
        out += "\nworkers (\(s.workers.count)):\n"
        out += pad(["id", "name", "threads", "in flight", "stored", "rss", "peak rss", "tasks done", "heartbeat", "restarts"]) + "\n"
        for w in s.workers {
            out += pad([
                "\(w.id)", w.name, "\(w.threads)", "\(w.inFlight)/\(w.inFlightLimit)",
                "\(w.storedResults) (\(mib(w.storedBytes))\(w.spilledBytes > 0 ? " + \(mib(w.spilledBytes)) on disk" : ""))", mib(w.rssBytes), mib(w.peakRssBytes), "\(w.tasksDone)", "\(w.lastHeartbeatMs) ms ago",
                "\(w.restarts)",
            ]) + "\n"
        }
        if s.workers.contains(where: { $0.scans.passTasks > 0 || $0.scans.cacheCapacityBytes > 0 }) {
            // Shared scans: how many questions each pass over a shard answered; the column cache.
            out += "\nscans:\n"
            out += pad(["id", "shard passes", "scans answered", "most in one pass", "column cache", "cache hits"]) + "\n"
            for w in s.workers {
                let c = w.scans
                let lookups = c.cacheHits + c.cacheMisses
                out += pad([
                    "\(w.id)", "\(c.passes)", "\(c.passTasks)", "\(c.mostInOnePass)",
                    c.cacheCapacityBytes > 0 ? "\(mib(c.cacheBytes)) of \(mib(c.cacheCapacityBytes))" : "off",
                    lookups > 0 ? String(format: "%.1f%%", 100 * Double(c.cacheHits) / Double(lookups)) : "-",
                ]) + "\n"
            }
        }
        out += "\ndatasets (\(s.datasets.count)):\n"
        if s.datasets.isEmpty { out += "  (none)\n" }
        for d in s.datasets {
            let warn = d.shardsWithoutLiveReplica > 0 ? "  ⚠ \(d.shardsWithoutLiveReplica) shards have no live copy" : ""
            // A user's table: whose, shared or not, and how long it has left.
            let table = d.owner.isEmpty ? "" : "  table of \(d.owner)\(d.shared ? ", shared" : ""), \(String(format: "%.1f", d.expiresInS / 3600)) h left"
            out += pad([d.name, d.kind, "\(d.rows) rows", "\(d.shards) shards", mib(d.bytes), "≥\(d.minReplicas) live copies"]) + table + warn + "\n"
        }
        out += "\njobs:\n"
        if s.jobs.isEmpty { out += "  (none)\n" }
        for j in s.jobs {
            let state = switch j.state {
            case .jobRunning: "running"
            case .jobDone: "done"
            case .jobFailed: "failed"
            case .jobCancelled: "cancelled"
            default: "?"
            }
            let share = s.users.first { $0.user == j.user }.map { String(format: "share %.0f%%", 100 * $0.share) } ?? "share -"
            out += pad(["\(j.jobID)", j.name.isEmpty ? "-" : j.name, "user \(j.user.isEmpty ? "-" : j.user)", PriorityClass(j.priority).description, share,
                        state, "\(j.tasksDone)/\(j.taskCount) tasks", "\(j.running) running", String(format: "%.2f s", j.seconds)]) + "\n"
        }
        out += "\nusers (fair share: worker time, half-life \(String(format: "%.0f", s.fairShareHalfLifeS)) s):\n"
        if s.users.isEmpty { out += "  (none)\n" }
        for u in s.users {
            out += pad([u.user, String(format: "share %.1f%%", 100 * u.share), String(format: "%.2f worker s", u.usageSeconds),
                        String(format: "weight %g", u.weight), "\(u.jobs) jobs", "\(u.runningTasks) tasks running"]) + "\n"
        }
        return out
    }

    static func mib(_ b: UInt64) -> String { String(format: "%.1f MiB", Double(b) / 1_048_576) }

    static func pad(_ cols: [String]) -> String {
        "  " + cols.map { $0.count >= 14 ? $0 + " " : $0 + String(repeating: " ", count: 14 - $0.count) }.joined()
    }
}
