import TesseraProtocol
import Foundation
import GRDB

/// Names a shard file: `DATASET/INGEST/orderK-pixP`, also its path (plus `.shard`) under a
/// worker's `catalogs/` folder. A new ingest writes a new folder, so replacing a dataset never
/// touches the files of the one in use.
public struct ShardKey: Hashable, Sendable, CustomStringConvertible {
    public var dataset: String
    public var ingestId: String
    public var order: Int
    public var pixel: Int64

    public init(dataset: String, ingestId: String, order: Int, pixel: Int64) {
        self.dataset = dataset; self.ingestId = ingestId; self.order = order; self.pixel = pixel
    }

    /// Parses a key or a relative path (with or without `.shard`).
    public init?(_ text: String) {
        var parts = text.split(separator: "/").map(String.init)
        guard parts.count == 3 else { return nil }
        if parts[2].hasSuffix(".shard") { parts[2] = String(parts[2].dropLast(6)) }
        let op = parts[2].split(separator: "-")
        guard op.count == 2, op[0].hasPrefix("order"), op[1].hasPrefix("pix"),
              let o = Int(op[0].dropFirst(5)), let p = Int64(op[1].dropFirst(3)) else { return nil }
        self.init(dataset: parts[0], ingestId: parts[1], order: o, pixel: p)
        guard problem == nil else { return nil }
    }

    /// Why this key cannot name a shard (a bad name, an order past 29, a pixel not on the sky),
    /// or nil. Keys from outside become file paths and registry rows: checked before either.
    public var problem: String? {
        if let why = Validate.name(dataset, what: "dataset name", limit: Limits.datasetNameCharacters) { return why }
        if let why = Validate.name(ingestId, what: "ingest id", limit: Limits.datasetNameCharacters) { return why }
        return Self.pixelProblem(order: order, pixel: pixel)
    }

    /// Why `pixel` is not a HEALPix pixel of `order`, or nil.
    public static func pixelProblem(order: Int, pixel: Int64) -> String? {
        guard order >= 0, order <= Limits.shardOrder else { return "HEALPix order \(order) is outside 0…\(Limits.shardOrder)" }
        let pixels = Int64(12) << (2 * order)
        guard pixel >= 0, pixel < pixels else { return "pixel \(pixel) is not one of order \(order)'s \(pixels) pixels" }
        return nil
    }

    public var description: String { "\(dataset)/\(ingestId)/order\(order)-pix\(pixel)" }
    public var relativePath: String { "catalogs/\(description).shard" }
}

/// A registry problem a user can act on.
public enum RegistryError: Error, CustomStringConvertible, Equatable {
    case datasetExists(String)
    case unknownDataset(String)
    case database(String)

    public var description: String {
        switch self {
        case .datasetExists(let n): "a dataset named `\(n)` exists already: choose another name, or replace it (--replace)"
        case .unknownDataset(let n): "there is no dataset named `\(n)`"
        case .database(let m): "registry database error: \(m)"
        }
    }
}

/// Where a shard is: its pixel, size, and the workers holding a copy.
public typealias ShardLocation = (order: Int, pixel: Int64, bytes: Int64, rows: Int64, checksum: UInt64, workers: [String])

/// A dataset as the registry knows it.
public struct DatasetRecord: Codable, Sendable, Equatable, FetchableRecord, MutablePersistableRecord {
    public static let databaseTableName = "dataset"
    public var id: Int64?
    public var name: String
    /// "catalog" (later also "coadd").
    public var kind: String
    /// The schema, as `ShardFooter.columns` serialized (protobuf).
    public var schema: Data
    public var raColumn: String
    public var decColumn: String
    public var maxRowsPerShard: Int64
    public var marginArcsec: Double
    public var rows: Int64
    public var createdAt: Date
    /// The ingest that wrote the current shards (their folder on the workers).
    public var ingestId: String
    /// Empty for a survey dataset, which every user reads; else the user whose table it is (in
    /// their workspace, named `OWNER..NAME`), read by them alone unless `shared`.
    public var owner: String = ""
    public var shared: Bool = false
    /// When a user's table is removed (nil: kept).
    public var expiresAt: Date?

    public init(name: String, kind: String = "catalog", schema: Data, raColumn: String, decColumn: String,
                maxRowsPerShard: Int64, marginArcsec: Double, rows: Int64, createdAt: Date = Date(), ingestId: String = "",
                owner: String = "", shared: Bool = false, expiresAt: Date? = nil) {
        self.name = name; self.kind = kind; self.schema = schema; self.raColumn = raColumn; self.decColumn = decColumn
        self.maxRowsPerShard = maxRowsPerShard; self.marginArcsec = marginArcsec; self.rows = rows; self.createdAt = createdAt
        self.ingestId = ingestId; self.owner = owner; self.shared = shared; self.expiresAt = expiresAt
    }

    /// Whether `user` may read it: a survey dataset, their own table, or one shared.
    public func isVisible(to user: String) -> Bool { owner.isEmpty || owner == user || shared }

    /// Its name as `user` writes it: their own table's without the owner's prefix.
    public func name(for user: String) -> String {
        !owner.isEmpty && owner == user && name.hasPrefix(owner + "..") ? String(name.dropFirst(owner.count + 2)) : name
    }

    public mutating func didInsert(_ inserted: InsertionSuccess) { id = inserted.rowID }
}

/// One shard of a dataset: a HEALPix pixel, its size and checksum.
public struct ShardRecord: Codable, Sendable, Equatable, FetchableRecord, MutablePersistableRecord {
    public static let databaseTableName = "shard"
    public var id: Int64?
    public var datasetId: Int64
    public var order: Int
    public var pixel: Int64
    public var rows: Int64
    public var marginRows: Int64
    public var bytes: Int64
    /// xxHash64 of the shard file's footer (its content identity), as a signed integer.
    public var checksum: Int64
    /// Per-column statistics: `ShardFooter` row-group stats summarised (protobuf), for planning.
    public var statistics: Data

    public init(datasetId: Int64 = 0, order: Int, pixel: Int64, rows: Int64, marginRows: Int64, bytes: Int64, checksum: Int64, statistics: Data = Data()) {
        self.datasetId = datasetId; self.order = order; self.pixel = pixel; self.rows = rows
        self.marginRows = marginRows; self.bytes = bytes; self.checksum = checksum; self.statistics = statistics
    }

    public mutating func didInsert(_ inserted: InsertionSuccess) { id = inserted.rowID }

    /// The shard's name in worker manifests.
    public func key(dataset: DatasetRecord) -> String {
        ShardKey(dataset: dataset.name, ingestId: dataset.ingestId, order: order, pixel: pixel).description
    }
}

/// A copy of a shard on a worker (named by its stable worker name, not the per-run id).
public struct ReplicaRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "replica"
    public var shardId: Int64
    public var worker: String
}

/// The registry: datasets, shards, replicas and workers, in one SQLite file at the scheduler.
/// Every change is one transaction: an interrupted ingest leaves the previous state.
public final class Registry: Sendable {
    let db: DatabaseQueue

    /// Opens (creating if needed) the registry at `path` and brings its schema up to date.
    public init(path: String) throws {
        var config = Configuration()
        config.foreignKeysEnabled = true
        db = try DatabaseQueue(path: path, configuration: config)
        try Self.migrator.migrate(db)
    }

    /// An in-memory registry (tests).
    public init() throws {
        var config = Configuration()
        config.foreignKeysEnabled = true
        db = try DatabaseQueue(configuration: config)
        try Self.migrator.migrate(db)
    }

    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1: datasets, shards, replicas, workers") { db in
            try db.create(table: "dataset") { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("name", .text).notNull().unique()
                t.column("kind", .text).notNull()
                t.column("schema", .blob).notNull()
                t.column("raColumn", .text).notNull()
                t.column("decColumn", .text).notNull()
                t.column("maxRowsPerShard", .integer).notNull()
                t.column("marginArcsec", .double).notNull()
                t.column("rows", .integer).notNull()
                t.column("createdAt", .datetime).notNull()
            }
            try db.create(table: "shard") { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("datasetId", .integer).notNull().indexed().references("dataset", onDelete: .cascade)
                t.column("order", .integer).notNull()
                t.column("pixel", .integer).notNull()
                t.column("rows", .integer).notNull()
                t.column("marginRows", .integer).notNull()
                t.column("bytes", .integer).notNull()
                t.column("checksum", .integer).notNull()
                t.column("statistics", .blob).notNull()
                t.uniqueKey(["datasetId", "order", "pixel"])
            }
            try db.create(table: "replica") { t in
                t.column("shardId", .integer).notNull().references("shard", onDelete: .cascade)
                t.column("worker", .text).notNull().indexed()
                t.primaryKey(["shardId", "worker"])
            }
            try db.create(table: "worker") { t in
                t.primaryKey("name", .text)
                t.column("peerEndpoint", .text).notNull()
                t.column("lastSeen", .datetime).notNull()
            }
        }
        m.registerMigration("v2: ingest ids") { db in
            try db.alter(table: "dataset") { t in t.add(column: "ingestId", .text).notNull().defaults(to: "") }
        }
        m.registerMigration("v3: scheduler epochs and job ids") { db in
            // One row: the epoch of the latest scheduler start, and the lowest job id no start has handed out.
            try db.create(table: "scheduler") { t in
                t.primaryKey("id", .integer).check { $0 == 1 }
                t.column("epoch", .integer).notNull()
                t.column("jobIdFloor", .integer).notNull()
            }
            try db.execute(sql: "INSERT INTO scheduler (id, epoch, jobIdFloor) VALUES (1, 0, 1)")
        }
        m.registerMigration("v4: users' workspaces") { db in
            try db.alter(table: "dataset") { t in
                t.add(column: "owner", .text).notNull().defaults(to: "")
                t.add(column: "shared", .boolean).notNull().defaults(to: false)
                t.add(column: "expiresAt", .datetime)
            }
        }
        return m
    }

    /// Versions of the schema applied, oldest first.
    public func appliedMigrations() throws -> [String] {
        try db.read { try Self.migrator.appliedMigrations($0) }
    }

    public func datasets() throws -> [DatasetRecord] {
        try db.read { try DatasetRecord.order(Column("name")).fetchAll($0) }
    }

    public func dataset(named name: String) throws -> DatasetRecord? {
        try db.read { try DatasetRecord.filter(Column("name") == name).fetchOne($0) }
    }

    public func shards(of dataset: DatasetRecord) throws -> [ShardRecord] {
        try db.read { try ShardRecord.filter(Column("datasetId") == dataset.id).order(Column("order"), Column("pixel")).fetchAll($0) }
    }

    /// Datasets whose rows read back as valid, and a description of each that does not (a
    /// damaged or hand-edited file must not stop the scheduler that reads it at every start).
    public func validDatasets() throws -> (datasets: [DatasetRecord], skipped: [String]) {
        try db.read { db in
            let rows = try Row.fetchCursor(db, sql: "SELECT * FROM dataset ORDER BY name")
            var good: [DatasetRecord] = [], bad: [String] = []
            while let r = try rows.next() {
                let id = r["id"].map { "\($0)" } ?? "?"
                do {
                    let d = try DatasetRecord(row: r)
                    if let why = Validate.name(d.ingestId, what: "ingest id", limit: Limits.datasetNameCharacters), !d.ingestId.isEmpty {
                        bad.append("dataset row \(id): \(why)")
                    } else if d.name.isEmpty || d.name.contains("/") || d.name.hasPrefix(".") {
                        bad.append("dataset row \(id): name `\(d.name.prefix(100))` cannot name a folder")
                    } else {
                        good.append(d)
                    }
                } catch {
                    bad.append("dataset row \(id): \(error)")
                }
            }
            return (good, bad)
        }
    }

    /// A dataset's shards as `shardLocations(of:)` gives them, leaving out (and describing) rows
    /// with a pixel not on the sky, a negative size or values of the wrong type.
    public func validShardLocations(of dataset: DatasetRecord) throws -> (shards: [ShardLocation], skipped: [String]) {
        try db.read { db in
            let reps = try replicas(of: dataset, db)
            let rows = try Row.fetchCursor(db, sql: """
                SELECT id, "order", pixel, bytes, checksum, rows FROM shard WHERE datasetId = ? ORDER BY "order", pixel
                """, arguments: [dataset.id])
            var out: [ShardLocation] = [], bad: [String] = []
            while let r = try rows.next() {
                do {
                    let id: Int64 = try r.decode(atIndex: 0)
                    let order: Int = try r.decode(atIndex: 1), pixel: Int64 = try r.decode(atIndex: 2), bytes: Int64 = try r.decode(atIndex: 3)
                    let checksum: Int64 = try r.decode(atIndex: 4), rowCount: Int64 = try r.decode(atIndex: 5)
                    if let why = ShardKey.pixelProblem(order: order, pixel: pixel) {
                        bad.append("shard row \(id) of `\(dataset.name)`: \(why)")
                    } else if bytes < 0 || rowCount < 0 {
                        bad.append("shard row \(id) of `\(dataset.name)`: negative \(bytes < 0 ? "size \(bytes)" : "row count \(rowCount)")")
                    } else {
                        out.append((order, pixel, bytes, rowCount, UInt64(bitPattern: checksum), reps[id] ?? []))
                    }
                } catch {
                    bad.append("a shard row of `\(dataset.name)`: \(error)")
                }
            }
            return (out, bad)
        }
    }

    /// A dataset's shards as a planner needs them — pixel, size and holders, without the per-chunk
    /// statistics — in (order, pixel) order, read in one query.
    public func shardLocations(of dataset: DatasetRecord) throws -> [ShardLocation] {
        try db.read { db in
            let reps = try replicas(of: dataset, db)
            let rows = try Row.fetchCursor(db, sql: """
                SELECT id, "order", pixel, bytes, checksum, rows FROM shard WHERE datasetId = ? ORDER BY "order", pixel
                """, arguments: [dataset.id])
            var out: [ShardLocation] = []
            while let r = try rows.next() {
                let id: Int64 = try r.decode(atIndex: 0)
                let checksum: Int64 = try r.decode(atIndex: 4)
                out.append((try r.decode(atIndex: 1), try r.decode(atIndex: 2), try r.decode(atIndex: 3), try r.decode(atIndex: 5),
                            UInt64(bitPattern: checksum), reps[id] ?? []))
            }
            return out
        }
    }

    /// Workers holding each shard of a dataset, by shard id.
    public func replicas(of dataset: DatasetRecord) throws -> [Int64: [String]] {
        try db.read { db in try replicas(of: dataset, db) }
    }

    func replicas(of dataset: DatasetRecord, _ db: Database) throws -> [Int64: [String]] {
        let rows = try Row.fetchCursor(db, sql: """
            SELECT replica.shardId, replica.worker FROM replica JOIN shard ON shard.id = replica.shardId
            WHERE shard.datasetId = ? ORDER BY replica.shardId, replica.worker
            """, arguments: [dataset.id])
        var out: [Int64: [String]] = [:]
        while let r = try rows.next() {
            // Rows of the wrong type are skipped (a replica that cannot be read is no replica).
            guard let id: Int64 = try? r.decode(atIndex: 0), let w: String = try? r.decode(atIndex: 1) else { continue }
            out[id, default: []].append(w)
        }
        return out
    }

    /// Records a finished ingest: the dataset, its shards and where their replicas are, in one
    /// transaction. A dataset of that name is refused unless `replace`, which swaps it atomically.
    /// - Parameter replicas: per shard (same order as `shards`), the workers holding a copy.
    @discardableResult
    public func commitIngest(_ dataset: DatasetRecord, shards: [ShardRecord], replicas: [[String]], replace: Bool) throws -> DatasetRecord {
        precondition(shards.count == replicas.count)
        return try db.write { db in
            if let old = try DatasetRecord.filter(Column("name") == dataset.name).fetchOne(db) {
                guard replace else { throw RegistryError.datasetExists(dataset.name) }
                _ = try old.delete(db)
            }
            var d = dataset
            d.id = nil
            try d.insert(db)
            let datasetID = db.lastInsertedRowID
            d.id = datasetID
            for (s, holders) in zip(shards, replicas) {
                var rec = s
                rec.id = nil
                rec.datasetId = datasetID
                try rec.insert(db)
                let shardID = db.lastInsertedRowID
                for w in holders { try ReplicaRecord(shardId: shardID, worker: w).insert(db) }
            }
            return d
        }
    }

    /// Users' tables whose lifetime ended before `now`.
    public func expiredDatasets(before now: Date) throws -> [DatasetRecord] {
        try db.read { try DatasetRecord.filter(Column("expiresAt") != nil && Column("expiresAt") < now).fetchAll($0) }
    }

    /// Drops a dataset with its shards and replicas.
    public func dropDataset(named name: String) throws {
        try db.write { db in
            guard let d = try DatasetRecord.filter(Column("name") == name).fetchOne(db) else { throw RegistryError.unknownDataset(name) }
            _ = try d.delete(db)
        }
    }

    /// Begins a scheduler start: the next epoch, and the first job id it may hand out. Ids up to
    /// `reserve` past it are set aside for this start in the same transaction, so a start that
    /// dies without writing again never hands out an id another start used.
    public func beginEpoch(reserve: UInt32) throws -> (epoch: UInt64, firstJobID: UInt32) {
        try db.write { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT epoch, jobIdFloor FROM scheduler WHERE id = 1"),
                  let epoch: Int64 = row["epoch"], let floor: Int64 = row["jobIdFloor"], epoch >= 0, epoch < Int64.max, floor >= 1
            else { throw RegistryError.database("the scheduler row (epoch, job id floor) is missing or damaged") }
            guard floor + Int64(reserve) <= Int64(UInt32.max) else {
                throw RegistryError.database("job ids are exhausted (floor \(floor)); reset the `scheduler` table's jobIdFloor")
            }
            try db.execute(sql: "UPDATE scheduler SET epoch = ?, jobIdFloor = ? WHERE id = 1", arguments: [epoch + 1, floor + Int64(reserve)])
            return (UInt64(epoch + 1), UInt32(floor))
        }
    }

    /// Sets aside job ids below `floor` for the running start (called before it hands out the last reserved one).
    public func reserveJobIDs(below floor: UInt32) throws {
        try db.write { db in
            try db.execute(sql: "UPDATE scheduler SET jobIdFloor = max(jobIdFloor, ?) WHERE id = 1", arguments: [Int64(floor)])
        }
    }

    /// Notes a worker's stable name and endpoint.
    public func recordWorker(name: String, peerEndpoint: String, seen: Date = Date()) throws {
        try db.write { db in
            try db.execute(sql: """
                INSERT INTO worker (name, peerEndpoint, lastSeen) VALUES (?, ?, ?)
                ON CONFLICT(name) DO UPDATE SET peerEndpoint = excluded.peerEndpoint, lastSeen = excluded.lastSeen
                """, arguments: [name, peerEndpoint, seen])
        }
    }

    /// Workers the registry has seen: name, peer endpoint, last registration.
    public func workers() throws -> [(name: String, peerEndpoint: String, lastSeen: Date)] {
        try db.read { db in
            try Row.fetchAll(db, sql: "SELECT name, peerEndpoint, lastSeen FROM worker ORDER BY name").map { ($0["name"], $0["peerEndpoint"], $0["lastSeen"]) }
        }
    }

    /// Compares what a worker reports holding with what the registry expects it to hold.
    /// - Returns: shard keys the registry expects but the worker lacks (lost: to be reported, never
    ///   silently dropped), and keys the worker has that no dataset lists (orphans, e.g. of an
    ///   ingest that never committed).
    public func reconcile(worker: String, holdings: Set<String>) throws -> (missing: [String], orphans: [String]) {
        let expected: [String] = try db.read { db in
            try Row.fetchAll(db, sql: """
                SELECT dataset.name, dataset.ingestId, shard."order", shard.pixel FROM replica
                JOIN shard ON shard.id = replica.shardId JOIN dataset ON dataset.id = shard.datasetId
                WHERE replica.worker = ?
                """, arguments: [worker]).compactMap { r in
                guard let name: String = try? r.decode(forColumn: "name"), let ingest: String = try? r.decode(forColumn: "ingestId"),
                      let order: Int = try? r.decode(forColumn: "order"), let pixel: Int64 = try? r.decode(forColumn: "pixel") else { return nil }
                return ShardKey(dataset: name, ingestId: ingest, order: order, pixel: pixel).description
            }
        }
        let e = Set(expected)
        return (e.subtracting(holdings).sorted(), holdings.subtracting(e).sorted())
    }
}
