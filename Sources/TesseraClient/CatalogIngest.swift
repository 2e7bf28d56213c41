import Dispatch
import Foundation
import TesseraProtocol
import TesseraSky
import TesseraStorage
import ZeroMQ

/// What to ingest and how.
public struct IngestOptions: Sendable {
    public var dataset: String
    public var files: [String]
    public var raColumn = "coord_ra"
    public var decColumn = "coord_dec"
    public var maxRowsPerShard = 1_000_000
    public var replicas = 2
    public var marginArcsec = 10.0
    public var replace = false
    /// Seconds to wait for a worker to confirm a stored shard.
    public var storeTimeout = 120.0
    /// Where rows wait, by shard, between reading the files and sending the shards; it needs
    /// about as much free space as the input. Default: `$TMPDIR`, else `/var/tmp` (on disk, where
    /// `/tmp` may be memory).
    public var spillDirectory: String?
    /// An upload: the table goes into the user's workspace (visible to them alone unless
    /// `shared`), and is removed `lifetimeSeconds` after it is committed (nil: a day).
    public var workspace = false
    public var shared = false
    public var lifetimeSeconds: Double?
    /// Tables already in memory (a TAP upload), read in place of the file of the same name in
    /// `files`.
    public var tablesInMemory: [String: (specs: [ColumnSpec], data: [ColumnData])] = [:]

    public init(dataset: String, files: [String]) {
        self.dataset = dataset
        self.files = files
    }
}

/// Why an ingest stopped. Nothing is committed then: the catalog stays as it was.
public enum IngestError: Error, CustomStringConvertible {
    case input(String)
    case badCoordinate(file: String, row: Int, what: String)
    case schemaMismatch(file: String, reason: String)
    case store(String)
    /// The connection's ``SchedulerConnection/isInterrupted`` turned true (Ctrl-C) before the commit.
    case interrupted

    public var description: String {
        switch self {
        case .input(let m): m
        case .badCoordinate(let f, let r, let what): "\(f), row \(r): \(what); fix or drop the row and ingest again"
        case .schemaMismatch(let f, let why): "\(f) does not match the first file's columns: \(why)"
        case .store(let m): "ingest failed, nothing was committed: \(m)"
        case .interrupted: "interrupted before the commit: nothing was committed, the shards already sent are removed from their workers, and nothing was left on local disk"
        }
    }
}

/// Loads catalog files through the cluster: reads FITS binary tables (cfitsio) or CSV, adds the
/// order-29 spatial index, partitions the sky adaptively with margins, sends each shard's columns
/// straight to the workers the scheduler chose, and commits the dataset in one registry
/// transaction once every copy is durably written.
///
/// Memory does not grow with the catalog: a first pass reads only the positions and counts rows
/// per pixel (`SkyHistogram`) for the partition; a second reads each file once and spills its rows
/// to local disk by shard (`ShardSpill`); each shard is then read back and sent. What is held at
/// once is one input file, the pixel counts, and the shards in flight.
public enum CatalogIngest {
    public static let indexColumn = "_healpix_29"
    /// The finest shard order (1.7′ pixels): the first pass counts rows per pixel of this order.
    /// A shard stays larger than `maxRowsPerShard` only where the sky holds more than ~340,000
    /// rows per square arcminute.
    public static let partitionOrder = 11

    /// - Parameter progress: short lines for a terminal.
    public static func run(_ o: IngestOptions, connection conn: SchedulerConnection, progress: (String) -> Void = { _ in }) throws -> Tessera_V1_IngestCommitted {
        let t0 = DispatchTime.now().uptimeNanoseconds
        func elapsed() -> String { String(format: "%.2f s", Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9) }
        guard !o.files.isEmpty else { throw IngestError.input("no input files given") }
        guard o.maxRowsPerShard > 0 else { throw IngestError.input("max_rows_per_shard must be positive, not \(o.maxRowsPerShard)") }
        if let problem = IngestOptionsCheck.problem(marginArcsec: o.marginArcsec, maxRowsPerShard: UInt64(o.maxRowsPerShard)) {
            throw IngestError.input(problem)
        }

        // Pass 1: positions only, counted per pixel for the partition (memory grows with the sky
        // covered, not with the rows).
        var histogram = SkyHistogram(order: partitionOrder)
        for path in o.files {
            if conn.isInterrupted() { throw IngestError.interrupted }
            let (ra, dec) = try readPositions(path, o)
            histogram.add(indexes: (0..<ra.count).map { HEALPix.spatialIndex(ra: ra[$0], dec: dec[$0]) })
        }
        let rows = histogram.rows
        let shards = SkyPartitioner.partition(histogram, maxRows: o.maxRowsPerShard)
        let ranges = shards.map(\.indexRange)
        progress("\(rows) rows in \(o.files.count) file(s): \(shards.count) shards (orders \(Set(shards.map(\.order)).sorted().map(String.init).joined(separator: ","))) [\(elapsed())]")

        // Pass 2: each file once, its rows spilled to local disk by shard, with margins.
        let inputBytes = o.files.reduce(0) { total, path in
            if let t = o.tablesInMemory[path] { return total + t.data.reduce(0) { $0 + $1.count * ColumnData.width($1.type) } }
            return total + ((try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0)
        }
        let spill = try ShardSpill(parent: o.spillDirectory ?? ShardSpill.defaultParent, shards: shards.count, expectedBytes: inputBytes)
        defer { spill.remove() }
        var finder = MarginFinder(shards: ranges, radius: o.marginArcsec / 3600 * .pi / 180)
        var specs: [ColumnSpec] = []
        for (n, path) in o.files.enumerated() {
            if conn.isInterrupted() { throw IngestError.interrupted }
            var (fileSpecs, data, warnings) = try readFile(path, first: n == 0, o)
            for w in warnings { progress("warning: \(w)") }
            if let k = fileSpecs.firstIndex(where: { $0.name == indexColumn }) {
                fileSpecs.remove(at: k)
                data.remove(at: k)
            }
            if n == 0 {
                specs = fileSpecs
            } else {
                guard fileSpecs.map(\.name) == specs.map(\.name) else {
                    throw IngestError.schemaMismatch(file: path, reason: "columns \(fileSpecs.map(\.name)) vs \(specs.map(\.name))")
                }
                for k in specs.indices where fileSpecs[k].type != specs[k].type {
                    // Promote where a file has nulls in an integer column.
                    guard fileSpecs[k].type == .columnFloat64 || specs[k].type == .columnFloat64 else {
                        throw IngestError.schemaMismatch(file: path, reason: "column `\(specs[k].name)` is \(fileSpecs[k].type), was \(specs[k].type)")
                    }
                    specs[k].type = .columnFloat64
                }
            }
            // (`readFile` has checked that both are there.)
            guard let ri = fileSpecs.firstIndex(where: { $0.name == o.raColumn }), let di = fileSpecs.firstIndex(where: { $0.name == o.decColumn }) else {
                throw IngestError.input("\(path) has no columns `\(o.raColumn)` and `\(o.decColumn)`")
            }
            let ra = data[ri].doubles, dec = data[di].doubles
            var home = [Int32](repeating: 0, count: ra.count)
            var margin: [Int: [Int]] = [:]
            var fileIndex = [Int64](repeating: 0, count: ra.count)
            for i in 0..<ra.count {
                let x = HEALPix.spatialIndex(ra: ra[i], dec: dec[i])
                fileIndex[i] = x
                guard let h = finder.shard(containing: x) else {
                    throw IngestError.input("\(path) changed while it was read (row \(i + 1) is in no shard of the first pass)")
                }
                home[i] = Int32(h)
                for s in finder.shards(takingRowAt: x, ra: ra[i], dec: dec[i], home: h) { margin[s, default: []].append(i) }
            }
            data.append(.int64(fileIndex))
            // Rows by shard: a counting sort of the home shards, keeping file order within each.
            var start = [Int](repeating: 0, count: shards.count + 1)
            for h in home { start[Int(h) + 1] += 1 }
            for s in 0..<shards.count { start[s + 1] += start[s] }
            var next = start
            var byShard = [Int](repeating: 0, count: ra.count)
            for (i, h) in home.enumerated() { byShard[next[Int(h)]] = i; next[Int(h)] += 1 }
            for s in 0..<shards.count where start[s + 1] > start[s] {
                let picked = Array(byShard[start[s]..<start[s + 1]])
                try spill.append(shard: s, margin: false, columns: data.map { $0.gathered(picked) })
            }
            for (s, picked) in margin { try spill.append(shard: s, margin: true, columns: data.map { $0.gathered(picked) }) }
            progress("read \(path) (\(ra.count) rows) [\(elapsed())]")
        }
        guard zip(shards, spill.ownRows).allSatisfy({ $0.rows.count == $1 }) else {
            throw IngestError.input("the input files changed while they were read (row counts differ between the two passes)")
        }
        specs.append(ColumnSpec(indexColumn, .columnInt64, description: "HEALPix order-29 nested index"))
        progress("spilled by shard, margins \(spill.marginRows.reduce(0, +)) rows [\(elapsed())]")

        // Where each shard goes.
        let rowBytes = specs.reduce(0) { $0 + ColumnData.width($1.type) }
        var begin = Tessera_V1_IngestBegin()
        begin.clientTag = conn.makeTag()
        begin.dataset = o.dataset
        begin.replace = o.replace
        begin.replicas = UInt32(o.replicas)
        begin.workspace = o.workspace
        begin.shared = o.shared
        begin.lifetimeS = o.lifetimeSeconds ?? 0
        begin.onBehalfOf = conn.onBehalfOf
        begin.shards = shards.enumerated().map { k, shard in
            var s = Tessera_V1_ShardSpec()
            s.order = UInt32(shard.order); s.pixel = shard.pixel; s.rows = UInt64(shard.rows.count)
            s.bytes = UInt64((shard.rows.count + spill.marginRows[k]) * rowBytes)
            return s
        }
        let plan = try self.begin(begin, connection: conn)
        // The name it is stored under (a table's in the user's workspace is theirs alone).
        let storedName = plan.dataset.isEmpty ? o.dataset : plan.dataset
        let schema = specs.map {
            var c = Tessera_V1_ColumnSchema()
            c.name = $0.name; c.type = $0.type; c.unit = $0.unit; c.description_p = $0.description
            return c
        }

        // Send every copy, a few at a time per worker, and collect the confirmations.
        let types = specs.map(\.type)
        var loaded: (shard: Int, frames: [[UInt8]])?
        let request = { (k: Int) -> Tessera_V1_StoreShard in
            let s = shards[k]
            var req = Tessera_V1_StoreShard()
            req.ingestID = plan.ingestID
            req.dataset = storedName
            req.order = UInt32(s.order)
            req.pixel = s.pixel
            req.columns = schema
            req.indexColumn = indexColumn
            req.raColumn = o.raColumn
            req.decColumn = o.decColumn
            req.rows = UInt64(s.rows.count)
            req.marginRows = UInt64(spill.marginRows[k])
            return req
        }
        let stored = try sending(plan, dataset: storedName, connection: conn) {
            try store(plan: plan, count: shards.count, storeTimeout: o.storeTimeout, connection: conn, progress: progress,
                      request: request) { (k) throws(IngestError) in
                // A shard's copies are sent one after another: read its spill once for all of them.
                if let l = loaded, l.shard == k { return l.frames }
                var frames = try spill.load(shard: k, margin: false, types: types).map(\.storedBytes)
                if spill.marginRows[k] > 0 { frames += try spill.load(shard: k, margin: true, types: types).map(\.storedBytes) }
                loaded = (k, frames)
                return frames
            }
        }
        progress("stored [\(elapsed())]")

        var commit = Tessera_V1_IngestCommit()
        commit.clientTag = conn.makeTag()
        commit.ingestID = plan.ingestID
        commit.dataset = storedName
        commit.replace = o.replace
        commit.columns = schema
        commit.raColumn = o.raColumn
        commit.decColumn = o.decColumn
        commit.maxRowsPerShard = UInt64(o.maxRowsPerShard)
        commit.marginArcsec = o.marginArcsec
        return try self.commit(commit, places: shards.map { ($0.order, $0.pixel) }, stored: stored, connection: conn)
    }

    /// Asks the scheduler where each shard goes (and to expect them).
    static func begin(_ begin: Tessera_V1_IngestBegin, connection conn: SchedulerConnection) throws -> Tessera_V1_IngestPlan {
        var be = Envelope()
        be.ingestBegin = begin
        let reply: Envelope
        do {
            reply = try conn.request(be, tag: begin.clientTag)
        } catch ClientError.interrupted {
            throw IngestError.interrupted
        }
        guard case .ingestPlan(let plan) = reply.body else { throw IngestError.store("unexpected reply to the ingest request") }
        return plan
    }

    /// Runs `body`, an ingest's sending once `plan` was given, and then checks for an
    /// interruption one last time before the commit. If it stops (an interruption, a worker's
    /// refusal, a file that changed), the scheduler is told to abandon the ingest at once
    /// (`IngestAbort`): the copies already stored are removed from their workers within a tick.
    /// Without it they stayed for the scheduler's idle limit and the orphans' grace (15 min and
    /// an hour), and the pending ingest held its user's places and quota meanwhile.
    static func sending<T>(_ plan: Tessera_V1_IngestPlan, dataset: String, connection conn: SchedulerConnection, _ body: () throws -> T) throws -> T {
        do {
            let value = try body()
            if conn.isInterrupted() { throw IngestError.interrupted }
            return value
        } catch {
            var abort = Tessera_V1_IngestAbort()
            abort.clientTag = conn.makeTag()
            abort.ingestID = plan.ingestID
            abort.dataset = dataset
            var e = Envelope()
            e.ingestAbort = abort
            // Waited for briefly, so that it has left before an interrupted process exits; if it
            // is lost, the scheduler abandons the ingest by itself once it has been idle too long.
            _ = try? conn.uninterruptible { try conn.request(e, tag: abort.clientTag, timeout: SchedulerConnection.interruptConfirmSeconds) }
            throw error
        }
    }

    /// Commits an ingest: `commit` with each shard (`places[k]`) as its workers reported storing
    /// it (`stored[k]`; the scheduler checks the copies agree), and the scheduler's answer.
    static func commit(_ commit: Tessera_V1_IngestCommit, places: [(order: Int, pixel: Int64)], stored: [[Tessera_V1_ShardStored]],
                       connection conn: SchedulerConnection) throws -> Tessera_V1_IngestCommitted {
        var commit = commit
        for (k, place) in places.enumerated() {
            var c = Tessera_V1_CommittedShard()
            c.order = UInt32(place.order)
            c.pixel = place.pixel
            let copies = stored[k]
            c.rows = copies.first?.rows ?? 0
            c.marginRows = copies.first?.marginRows ?? 0
            c.bytes = copies.first?.bytes ?? 0
            c.checksum = copies.first?.checksum ?? 0
            c.footer = copies.first?.footer ?? Data()
            c.workers = copies.map(\.workerName)
            commit.shards.append(c)
        }
        var ce = Envelope()
        ce.ingestCommit = commit
        // A commit once sent cannot be called back: it is waited for, not interrupted.
        guard case .ingestCommitted(let done) = try conn.uninterruptible({ try conn.request(ce, tag: commit.clientTag) }).body else {
            throw IngestError.store("unexpected reply to the commit")
        }
        return done
    }

    /// Sends every copy of every shard (`frames(k)`: shard k's own columns, then its margin
    /// columns if it has margin rows), a few at a time per worker, and collects the confirmations.
    /// - Parameter request: shard k's message (without its request id).
    /// Stops with ``IngestError/interrupted`` once the connection is interrupted.
    static func store(plan: Tessera_V1_IngestPlan, count: Int, storeTimeout: Double, connection conn: SchedulerConnection, progress: (String) -> Void,
                      request: (Int) -> Tessera_V1_StoreShard,
                      frames: (Int) throws(IngestError) -> [[UInt8]]) throws -> [[Tessera_V1_ShardStored]] {
        let ctx = try ZMQContext()
        var sockets: [WorkerID: Socket] = [:]
        defer { for s in sockets.values { s.close() } }
        // Only the workers the plan chose: they, and no others, were told to admit this client.
        let chosen = Set(plan.placements.flatMap(\.workers))
        for (peer, _) in zip(plan.workers, plan.workerNames) where chosen.contains(peer.workerID) {
            let s = try ctx.socket(.dealer)
            try s.setSendHighWaterMark(0)
            try conn.credentials.secure(s, serverKey: peer.publicKey)
            try s.connect(peer.endpoint)
            sockets[peer.workerID] = s
        }
        // Work list: (shard, worker) pairs.
        var queue: [(shard: Int, worker: WorkerID)] = []
        for (k, p) in plan.placements.enumerated() { for w in p.workers { queue.append((k, w)) } }
        let totalCopies = queue.count
        var outstanding: [UInt64: (shard: Int, worker: WorkerID, sentAt: UInt64)] = [:]
        var perWorker: [WorkerID: Int] = [:]
        var results = [[Tessera_V1_ShardStored]](repeating: [], count: count)
        var nextRequest: UInt64 = 1
        var done = 0
        var lastReport = DispatchTime.now().uptimeNanoseconds
        while done < totalCopies {
            if conn.isInterrupted() { throw IngestError.interrupted }
            // Keep up to 2 shards in flight per worker.
            var i = 0
            while i < queue.count {
                let (k, w) = queue[i]
                if perWorker[w, default: 0] >= 2 { i += 1; continue }
                queue.remove(at: i)
                guard let sock = sockets[w] else { throw IngestError.store("the plan names worker \(w), which it does not describe") }
                var req = request(k)
                req.requestID = nextRequest
                var e = Envelope()
                e.storeShard = req
                try sock.send(parts: WireProtocol.encode(e, frames: try frames(k)))
                outstanding[nextRequest] = (k, w, DispatchTime.now().uptimeNanoseconds)
                perWorker[w, default: 0] += 1
                nextRequest += 1
            }
            // Wait for confirmations.
            var poller = Poller()
            let ids = sockets.keys.sorted()
            for id in ids { poller.add(sockets[id]!) }
            try poller.wait(timeoutMs: 200)
            for (n, id) in ids.enumerated() where poller.isReadable(n) {
                while let parts = try sockets[id]!.receiveParts(dontWait: true) {
                    let (env, _) = try WireProtocol.decode(parts)
                    if case .error(let err) = env.body { throw IngestError.store("worker \(id): \(err.message)") }
                    guard case .shardStored(let r) = env.body, let o = outstanding.removeValue(forKey: r.requestID) else { continue }
                    guard r.error.isEmpty else {
                        let asked = request(o.shard)
                        throw IngestError.store("worker \(r.workerName) could not store shard order\(asked.order)-pix\(asked.pixel): \(r.error)")
                    }
                    results[o.shard].append(r)
                    perWorker[o.worker, default: 1] -= 1
                    done += 1
                }
            }
            let now = DispatchTime.now().uptimeNanoseconds
            if let late = outstanding.values.first(where: { now - $0.sentAt > UInt64(storeTimeout * 1e9) }) {
                let name = plan.workerNames[plan.workers.firstIndex { $0.workerID == late.worker } ?? 0]
                let r = request(late.shard)
                throw IngestError.store("worker \(name) did not confirm shard order\(r.order)-pix\(r.pixel) within \(storeTimeout) s (is it still running?)")
            }
            if now - lastReport > 500_000_000 {
                progress("stored \(done)/\(totalCopies) shard copies")
                lastReport = now
            }
        }
        progress("stored \(done)/\(totalCopies) shard copies")
        return results
    }

    /// Reads every input file into memory; all must have the same columns (for checking an
    /// ingest against its input; the ingest itself holds one file at a time).
    public static func readInputs(_ o: IngestOptions) throws -> ([ColumnSpec], [ColumnData], [String]) {
        guard !o.files.isEmpty else { throw IngestError.input("no input files given") }
        var specs: [ColumnSpec] = []
        var data: [ColumnData] = []
        var warnings: [String] = []
        for (n, path) in o.files.enumerated() {
            let (fileSpecs, fileData, fileWarnings) = try readFile(path, first: n == 0, o)
            warnings += fileWarnings
            if n == 0 {
                specs = fileSpecs
                data = fileData
                continue
            }
            guard fileSpecs.map(\.name) == specs.map(\.name) else {
                throw IngestError.schemaMismatch(file: path, reason: "columns \(fileSpecs.map(\.name)) vs \(specs.map(\.name))")
            }
            for (k, col) in fileData.enumerated() {
                if col.type != data[k].type {
                    // Promote where a later file has nulls in an integer column.
                    if col.type == .columnFloat64 || data[k].type == .columnFloat64 {
                        data[k] = .float64(data[k].doubles + col.doubles)
                        specs[k].type = .columnFloat64
                        continue
                    }
                    throw IngestError.schemaMismatch(file: path, reason: "column `\(specs[k].name)` is \(col.type), was \(data[k].type)")
                }
                data[k].append(col)
            }
        }
        return (specs, data, warnings)
    }

    /// One input file's columns (FITS binary table or CSV), coordinates checked. Columns of types
    /// a catalog cannot hold are skipped, with a warning from the first file.
    static func readFile(_ path: String, first: Bool, _ o: IngestOptions) throws -> ([ColumnSpec], [ColumnData], [String]) {
        var specs: [ColumnSpec] = []
        var data: [ColumnData] = []
        var warnings: [String] = []
        if let t = o.tablesInMemory[path] {
            guard t.data.first.map({ $0.count > 0 }) == true else { throw IngestError.input("\(path) has no rows") }
            (specs, data) = t
        } else if path.lowercased().hasSuffix(".csv") {
            (specs, data) = try CSVTable.read(path: path)
        } else {
            let t = try FITSTableReader(path: path)
            guard t.rowCount > 0 else { throw IngestError.input("\(path) has no rows") }
            for c in t.columns {
                switch c.columnType {
                case .success(let type):
                    let col = try t.read(column: c.name)
                    // Integer columns with nulls come back as Float64.
                    specs.append(ColumnSpec(c.name, col.type == type ? type : col.type, unit: c.unit))
                    data.append(col)
                case .failure(let e):
                    if first { warnings.append("\(path): skipping column `\(c.name)`: \(e)".replacingOccurrences(of: ":  column", with: ": column")) }
                }
            }
        }
        try validateCoordinates(path, specs, data, o)
        return (specs, data, warnings)
    }

    /// One input file's positions, checked (FITS files read just those two columns).
    static func readPositions(_ path: String, _ o: IngestOptions) throws -> (ra: [Double], dec: [Double]) {
        if o.tablesInMemory[path] != nil || path.lowercased().hasSuffix(".csv") {
            let (specs, data, _) = try readFile(path, first: false, o)  // (coordinates checked)
            guard let ri = specs.firstIndex(where: { $0.name == o.raColumn }), let di = specs.firstIndex(where: { $0.name == o.decColumn }) else {
                throw IngestError.input("\(path) has no columns `\(o.raColumn)` and `\(o.decColumn)`")
            }
            return (data[ri].doubles, data[di].doubles)
        }
        let t = try FITSTableReader(path: path)
        guard t.rowCount > 0 else { throw IngestError.input("\(path) has no rows") }
        let names = t.columns.map(\.name)
        try requireCoordinateColumns(path, names, o)
        let ra = try t.read(column: o.raColumn), dec = try t.read(column: o.decColumn)
        try validateCoordinates(path, [ColumnSpec(o.raColumn, ra.type), ColumnSpec(o.decColumn, dec.type)], [ra, dec], o)
        return (ra.doubles, dec.doubles)
    }

    static func requireCoordinateColumns(_ path: String, _ names: [String], _ o: IngestOptions) throws {
        guard names.contains(o.raColumn) else {
            throw IngestError.input("\(path) has no column `\(o.raColumn)` (choose the RA column with --ra); it has: \(names.joined(separator: ", "))")
        }
        guard names.contains(o.decColumn) else {
            throw IngestError.input("\(path) has no column `\(o.decColumn)` (choose the Dec column with --dec); it has: \(names.joined(separator: ", "))")
        }
    }

    static func validateCoordinates(_ path: String, _ specs: [ColumnSpec], _ data: [ColumnData], _ o: IngestOptions) throws {
        try requireCoordinateColumns(path, specs.map(\.name), o)
        guard let ri = specs.firstIndex(where: { $0.name == o.raColumn }), let di = specs.firstIndex(where: { $0.name == o.decColumn }) else { return }
        let ra = data[ri].doubles, dec = data[di].doubles
        for i in 0..<ra.count {
            if !ra[i].isFinite { throw IngestError.badCoordinate(file: path, row: i + 1, what: "\(o.raColumn) is \(ra[i])") }
            if !dec[i].isFinite || abs(dec[i]) > 90 { throw IngestError.badCoordinate(file: path, row: i + 1, what: "\(o.decColumn) is \(dec[i]), outside −90…90") }
        }
    }
}
