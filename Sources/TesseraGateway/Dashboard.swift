import Foundation
import Hummingbird
import ServiceLifecycle
import Synchronization
import TesseraClient
import TesseraProtocol
import TesseraSky

/// The dashboard's data: a JSON snapshot of what the viewer may see of the cluster, built from
/// the scheduler's status, and the cluster's throughput over the last five minutes.
final class DashboardFeed: Sendable {
    let pool: SchedulerPool
    /// (seconds since 1970, tasks completed so far), one a second at most, five minutes of them.
    private let samples = Mutex<[(Double, UInt64)]>([])

    init(pool: SchedulerPool) { self.pool = pool }

    /// The status as `user` may see it, with each dataset's shard pixels.
    func status(for user: String) async throws -> Tessera_V1_StatusReply {
        try await pool.run(as: user) { conn, _ in try conn.status(withCoverage: true) }
    }

    /// Tasks per second between successive samples, for the last five minutes.
    func throughput(adding tasks: UInt64, at t: Double) -> [[Double]] {
        samples.withLock { s in
            if s.last.map({ t - $0.0 >= 0.9 }) ?? true { s.append((t, tasks)) }
            s.removeAll { t - $0.0 > 300 }
            return zip(s, s.dropFirst()).map { a, b in [b.0, b.1 >= a.1 ? Double(b.1 - a.1) / max(1e-3, b.0 - a.0) : 0] }
        }
    }

    /// The snapshot the page renders.
    func snapshot(for user: String) async throws -> String {
        let s = try await status(for: user)
        let now = Date().timeIntervalSince1970
        let workers: [[String: Any]] = s.workers.map { w in
            ["name": w.name, "threads": w.threads, "in_flight": w.inFlight, "in_flight_limit": w.inFlightLimit, "rss": w.rssBytes,
             "memory_limit": w.memoryLimit, "tasks_done": w.tasksDone, "stored": w.storedBytes, "heartbeat_ms": w.lastHeartbeatMs]
        }
        let jobs: [[String: Any]] = s.jobs.map { j in
            let state = switch j.state {
            case .jobRunning: "running"
            case .jobDone: "done"
            case .jobFailed: "failed"
            default: "cancelled"
            }
            return ["id": j.jobID, "name": j.name, "user": j.user, "priority": PriorityClass(j.priority).description, "state": state,
                    "done": j.tasksDone, "total": j.taskCount, "running": j.running, "seconds": j.seconds.isFinite ? j.seconds : 0]
        }
        let datasets: [[String: Any]] = s.datasets.map { d in
            ["name": d.name, "rows": d.rows, "shards": d.shards, "bytes": d.bytes, "owner": d.owner, "coverage": coverage(d)]
        }
        let doc: [String: Any] = [
            "time": now, "uptime_s": s.uptimeSeconds, "epoch": s.epoch, "tasks_completed": s.tasksCompleted, "jobs_completed": s.jobsCompleted,
            "viewer": user, "workers": workers, "jobs": jobs, "datasets": datasets,
            "throughput": throughput(adding: s.tasksCompleted, at: now),
        ]
        return String(decoding: try JSONSerialization.data(withJSONObject: doc), as: UTF8.self)
    }

    /// A dataset's shards as outlines in RA/Dec, computed once per set of shards (the page
    /// asks every second; the shards change only with an ingest).
    private let outlines = Mutex<[String: (shards: [UInt64], polygons: [[[Double]]])]>([:])
    static let maxCachedOutlines = 256

    func coverage(_ d: Tessera_V1_DatasetStatus) -> [[[Double]]] {
        let key = d.shardOrders.map(UInt64.init) + d.shardPixels
        if let hit = outlines.withLock({ $0[d.name] }), hit.shards == key { return hit.polygons }
        let polygons = zip(d.shardOrders, d.shardPixels).map { order, pixel in
            Self.outline(order: Int(order), pixel: Int64(clamping: pixel)).map { [($0.ra * 1e4).rounded() / 1e4, ($0.dec * 1e4).rounded() / 1e4] }
        }
        outlines.withLock { cache in
            // Uploads come and go as datasets of their own: the cache is dropped when it would
            // grow past a few hundred, rather than keep every name it ever saw.
            if cache.count >= Self.maxCachedOutlines { cache.removeAll() }
            cache[d.name] = (key, polygons)
        }
        return polygons
    }

    /// A shard pixel's outline in RA/Dec (degrees), two points per edge.
    static func outline(order: Int, pixel: Int64) -> [(ra: Double, dec: Double)] {
        guard (0...HEALPix.maxOrder).contains(order), pixel >= 0, pixel < HEALPix.pixelCount(order) else { return [] }
        return HEALPix.boundaries(order: order, pixel: pixel, step: 2).map { v in
            let ra = atan2(v.y, v.x) * 180 / .pi
            return (ra < 0 ? ra + 360 : ra, asin(max(-1, min(1, v.z))) * 180 / .pi)
        }
    }
}

/// The dashboard's page: plain HTML, CSS and JavaScript, no build step. It opens
/// `/api/events` (server-sent events, a snapshot a second) and draws workers, jobs with their
/// progress, throughput and each dataset's shards on a Mollweide map of the sky. A token is
/// given once as `/?token=...` (EventSource cannot send headers) and kept for the tab.
enum DashboardPage {
    static let html = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Tessera</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  :root { --ink: #1d232b; --muted: #6b7480; --line: #e2e5ea; --bar: #3b7dd8; --warn: #d8833b; --bg: #f7f8fa; }
  body { font: 14px/1.4 system-ui, sans-serif; color: var(--ink); background: var(--bg); margin: 0; }
  header { display: flex; gap: 2em; align-items: baseline; padding: 12px 20px; background: #fff; border-bottom: 1px solid var(--line); }
  header h1 { font-size: 18px; margin: 0; }
  header .stat { color: var(--muted); }
  header .stat b { color: var(--ink); }
  #state.down { color: #c33; }
  main { display: grid; grid-template-columns: repeat(auto-fit, minmax(640px, 1fr)); gap: 16px; padding: 16px 20px; }
  section { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 12px 14px; overflow-x: auto; }
  section h2 { font-size: 14px; margin: 0 0 8px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); }
  table { width: 100%; border-collapse: collapse; }
  th, td { text-align: left; padding: 4px 6px; border-bottom: 1px solid var(--line); white-space: nowrap; }
  th { font-weight: 600; color: var(--muted); font-size: 12px; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .meter { position: relative; width: 120px; height: 10px; background: var(--line); border-radius: 5px; overflow: hidden; display: inline-block; vertical-align: middle; }
  .meter > span { position: absolute; left: 0; top: 0; bottom: 0; background: var(--bar); }
  .meter.high > span { background: var(--warn); }
  progress { width: 140px; vertical-align: middle; }
  .pill { font-size: 11px; padding: 1px 6px; border-radius: 8px; background: var(--line); }
  .pill.interactive { background: #dbeafe; } .pill.batch { background: #fde7d4; }
  canvas { width: 100%; display: block; }
  .empty { color: var(--muted); font-style: italic; }
  .maps { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 10px; }
  .maps figure { margin: 0; } .maps figcaption { font-size: 12px; color: var(--muted); }
</style>
</head>
<body>
<header>
  <h1>Tessera</h1>
  <span class="stat" id="state">connecting…</span>
  <span class="stat">workers <b id="n-workers">–</b></span>
  <span class="stat">jobs running <b id="n-jobs">–</b></span>
  <span class="stat">tasks done <b id="n-tasks">–</b></span>
  <span class="stat">up <b id="uptime">–</b></span>
</header>
<main>
  <section id="workers-section">
    <h2>Workers</h2>
    <table id="workers"><thead><tr><th>name</th><th>load</th><th>tasks</th><th>memory</th><th class="num">done</th></tr></thead><tbody></tbody></table>
  </section>
  <section id="jobs-section">
    <h2>Jobs</h2>
    <table id="jobs"><thead><tr><th>job</th><th>user</th><th>class</th><th>progress</th><th class="num">running</th><th class="num">s</th></tr></thead><tbody></tbody></table>
  </section>
  <section>
    <h2>Throughput, last 5 minutes (tasks/s)</h2>
    <canvas id="throughput" width="600" height="200" style="height:200px"></canvas>
  </section>
  <section>
    <h2>Datasets</h2>
    <table id="datasets"><thead><tr><th>name</th><th class="num">rows</th><th class="num">shards</th><th class="num">MB</th><th>owner</th></tr></thead><tbody></tbody></table>
    <div class="maps" id="maps"></div>
  </section>
</main>
<script>
"use strict";
// A token given as ?token=... is kept for this tab (EventSource cannot send headers).
const params = new URLSearchParams(location.search);
if (params.get("token")) { sessionStorage.setItem("tessera-token", params.get("token")); history.replaceState(null, "", location.pathname); }
const token = sessionStorage.getItem("tessera-token");
const query = token ? "?token=" + encodeURIComponent(token) : "";

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("data-")) e.setAttribute(k, v); else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}
function meter(fraction, text) {
  const m = el("span", { class: "meter" + (fraction > 0.85 ? " high" : ""), title: text });
  const s = el("span"); s.style.width = Math.max(0, Math.min(1, fraction)) * 100 + "%"; m.append(s);
  return el("span", {}, m, " ", text);
}
function mb(bytes) { return (bytes / 1048576).toFixed(0); }
function duration(s) { s = Math.floor(s); return s >= 3600 ? Math.floor(s / 3600) + "h" + Math.floor(s % 3600 / 60) + "m" : s >= 60 ? Math.floor(s / 60) + "m" + (s % 60) + "s" : s + "s"; }

function renderWorkers(workers) {
  const body = document.querySelector("#workers tbody");
  body.replaceChildren(...workers.map(w => el("tr", { "data-worker": w.name },
    el("td", {}, w.name),
    el("td", {}, meter(w.in_flight / Math.max(1, w.in_flight_limit), w.in_flight + "/" + w.in_flight_limit)),
    el("td", { class: "num" }, w.threads + " thr"),
    el("td", {}, meter(w.memory_limit ? w.rss / w.memory_limit : 0, mb(w.rss) + (w.memory_limit ? " / " + mb(w.memory_limit) : "") + " MB")),
    el("td", { class: "num" }, w.tasks_done.toLocaleString()))));
  if (!workers.length) body.append(el("tr", {}, el("td", { class: "empty", colSpan: 5 }, "no workers")));
}

function renderJobs(jobs) {
  const body = document.querySelector("#jobs tbody");
  const running = jobs.filter(j => j.state === "running");
  const recent = jobs.filter(j => j.state !== "running").slice(-5).reverse();
  body.replaceChildren(...running.concat(recent).map(j => {
    const p = el("progress", { max: Math.max(1, j.total), value: j.done, title: j.done + " of " + j.total + " tasks" });
    return el("tr", { "data-job": j.id, "data-state": j.state, "data-done": j.done, "data-total": j.total },
      el("td", {}, "#" + j.id + " ", j.name),
      el("td", {}, j.user),
      el("td", {}, el("span", { class: "pill " + j.priority }, j.priority)),
      el("td", {}, p, " ", j.state === "running" ? Math.round(100 * j.done / Math.max(1, j.total)) + "%" : j.state),
      el("td", { class: "num" }, j.running),
      el("td", { class: "num" }, j.seconds.toFixed(1)));
  }));
  if (!body.children.length) body.append(el("tr", {}, el("td", { class: "empty", colSpan: 6 }, "no jobs")));
}

function renderThroughput(points) {
  const c = document.getElementById("throughput"), g = c.getContext("2d");
  // Drawn at the size it is shown, so that its text is readable.
  if (c.clientWidth && c.width !== c.clientWidth) { c.width = c.clientWidth; c.height = 200; }
  const W = c.width, H = c.height, left = 48, bottom = 22;
  g.clearRect(0, 0, W, H);
  const now = points.length ? points[points.length - 1][0] : 0;
  const max = Math.max(1, ...points.map(p => p[1]));
  g.strokeStyle = "#e2e5ea"; g.fillStyle = "#6b7480"; g.font = "11px system-ui";
  for (let k = 0; k <= 4; k++) {
    const y = (H - bottom) * (1 - k / 4) + 0.5;
    g.beginPath(); g.moveTo(left, y); g.lineTo(W, y); g.stroke();
    g.fillText((max * k / 4).toFixed(max < 8 ? 1 : 0), 4, y + 4);
  }
  for (let m = 0; m <= 5; m++) g.fillText("-" + m + "m", left + (W - left) * (1 - m / 5) - 12, H - 6);
  g.strokeStyle = "#3b7dd8"; g.lineWidth = 2; g.beginPath();
  points.forEach((p, i) => {
    const x = left + (W - left) * (1 - (now - p[0]) / 300), y = (H - bottom) * (1 - p[1] / max);
    i ? g.lineTo(x, y) : g.moveTo(x, y);
  });
  g.stroke();
}

// Mollweide projection of (ra, dec) in degrees onto [-2√2, 2√2] × [-√2, √2], RA increasing leftwards.
function mollweide(ra, dec) {
  const lon = -((ra + 180) % 360 - 180) * Math.PI / 180, lat = dec * Math.PI / 180;
  let t = lat;
  for (let k = 0; k < 20 && Math.abs(Math.abs(lat) - Math.PI / 2) > 1e-9; k++) {
    const d = (2 * t + Math.sin(2 * t) - Math.PI * Math.sin(lat)) / (2 + 2 * Math.cos(2 * t));
    t -= d; if (Math.abs(d) < 1e-10) break;
  }
  return [2 * Math.SQRT2 / Math.PI * lon * Math.cos(t), Math.SQRT2 * Math.sin(t)];
}
const palette = ["#3b7dd8", "#d8833b", "#3bb08f", "#b03ba8", "#c9b22c", "#d83b5b"];
function renderMap(canvas, polygons, colour) {
  const g = canvas.getContext("2d"), W = canvas.width, H = canvas.height;
  const sx = W / (4 * Math.SQRT2) * 0.98, sy = H / (2 * Math.SQRT2) * 0.98;
  const px = ([x, y]) => [W / 2 + x * sx, H / 2 - y * sy];
  g.clearRect(0, 0, W, H);
  g.beginPath(); g.ellipse(W / 2, H / 2, 2 * Math.SQRT2 * sx, Math.SQRT2 * sy, 0, 0, 2 * Math.PI);
  g.fillStyle = "#f2f4f7"; g.fill(); g.strokeStyle = "#c9ced6"; g.stroke();
  g.fillStyle = colour; g.strokeStyle = colour;
  for (const poly of polygons) {
    const pts = poly.map(([ra, dec]) => px(mollweide(ra, dec)));
    // A pixel across the map's edge (RA 180°) would span the map: draw its centre only.
    const xs = pts.map(p => p[0]);
    g.beginPath();
    if (Math.max(...xs) - Math.min(...xs) > W / 3) {
      const [cx, cy] = px(mollweide(poly[0][0], poly[0][1])); g.rect(cx - 1, cy - 1, 2, 2);
    } else { pts.forEach((p, i) => i ? g.lineTo(p[0], p[1]) : g.moveTo(p[0], p[1])); g.closePath(); }
    g.fill();
  }
}
let drawnCoverage = "";
function renderDatasets(datasets) {
  const body = document.querySelector("#datasets tbody");
  body.replaceChildren(...datasets.map(d => el("tr", { "data-dataset": d.name },
    el("td", {}, d.name), el("td", { class: "num" }, d.rows.toLocaleString()), el("td", { class: "num" }, d.shards),
    el("td", { class: "num" }, mb(d.bytes)), el("td", {}, d.owner || "survey"))));
  if (!datasets.length) body.append(el("tr", {}, el("td", { class: "empty", colSpan: 5 }, "no datasets")));
  const key = datasets.map(d => d.name + ":" + d.shards + ":" + d.rows).join(",");
  if (key === drawnCoverage) return;  // coverage changes only when datasets do
  drawnCoverage = key;
  const maps = document.getElementById("maps");
  maps.replaceChildren(...datasets.map((d, i) => {
    const c = el("canvas", { width: 520, height: 260, "data-coverage": d.name });
    renderMap(c, d.coverage || [], palette[i % palette.length]);
    return el("figure", {}, c, el("figcaption", {}, d.name + ": " + d.shards + " HEALPix shards"));
  }));
}

function render(s) {
  document.getElementById("state").textContent = "live";
  document.getElementById("state").className = "stat";
  document.getElementById("n-workers").textContent = s.workers.length;
  document.getElementById("n-jobs").textContent = s.jobs.filter(j => j.state === "running").length;
  document.getElementById("n-tasks").textContent = s.tasks_completed.toLocaleString();
  document.getElementById("uptime").textContent = duration(s.uptime_s);
  renderWorkers(s.workers); renderJobs(s.jobs); renderThroughput(s.throughput); renderDatasets(s.datasets);
}

function connect() {
  const events = new EventSource("/api/events" + query);
  events.onmessage = m => render(JSON.parse(m.data));
  events.onerror = () => {
    const st = document.getElementById("state");
    st.textContent = token || location.hostname === "127.0.0.1" || location.hostname === "localhost" ? "reconnecting…" : "reconnecting… (open with ?token=YOUR_TOKEN)";
    st.className = "stat down";
  };
}
connect();
</script>
</body>
</html>
"""#
}
