import Foundation
import SwiftProtobuf
import TesseraProtocol
import TesseraStorage

/// Operators that answer catalog questions: a scan of one shard on the worker that holds it,
/// and the merge of partial answers (reduction tree nodes and progressive snapshots).
public enum CatalogOperators {
    public static let all: [TaskOperator] = [catalogScan, catalogMerge, crossmatchSide, crossmatch, crossmatchCover]

    /// Parameters both operators read: blob `plan` (a serialized `CatalogQueryPlan`) and strings
    /// `ra`, `dec` (the dataset's position columns).
    public static func params(plan: CatalogQueryPlan, raColumn: String, decColumn: String) -> Tessera_V1_OperatorParams {
        var p = Tessera_V1_OperatorParams()
        p.blobs["plan"] = (try? plan.serializedData()) ?? Data()
        p.strings = ["ra": raColumn, "dec": decColumn]
        return p
    }

    static func plan(_ ctx: OperatorContext, _ name: String) throws(OperatorError) -> CatalogQueryPlan {
        guard let bytes = ctx.params.blobs["plan"], let plan = try? CatalogQueryPlan(serializedBytes: bytes) else {
            throw OperatorError(name, "the task carries no readable catalog plan")
        }
        return plan
    }

    /// Reads one shard and returns its `CatalogPartial` (as bytes).
    ///
    /// Scans of one shard file (and position columns) share a pass: the worker's pool runs the
    /// ones it has at once in one pass over the row groups, and later ones join it mid-way.
    public static let catalogScan = TaskOperator("catalog_scan", "answer a catalog question over one shard",
                                                 sharedPass: SharedPassSupport(key: sharedPassKey, open: openSharedPass)) { ctx throws(OperatorError) in
        let name = "catalog_scan"
        return .bytes(try checkedScan(ctx, plan: plan(ctx, name), operatorName: name) { (q, reader, ra, dec) throws(CatalogQueryError) in
            try CatalogScan.scanSerialized(q, reader: reader, raColumn: ra, decColumn: dec, isCancelled: ctx.isCancelled)
        })
    }

    /// Scans of the same file, expected checksum and position columns read the same data the
    /// same way.
    @Sendable static func sharedPassKey(_ ctx: OperatorContext) -> String? {
        guard let key = ctx.dataKey, let root = ctx.dataRoot else { return nil }
        return "\(root)/\(key)#\(ctx.dataChecksum ?? 0)#\(ctx.params.strings["ra"] ?? "coord_ra")#\(ctx.params.strings["dec"] ?? "coord_dec")"
    }

    /// The shard opened and checked as a lone scan opens it (``checkedScan``), as a shared pass.
    @Sendable static func openSharedPass(_ ctx: OperatorContext) throws(OperatorError) -> any TaskPass {
        let name = "catalog_scan"
        let (reader, ra, dec) = try openShard(ctx, name)
        return CatalogScanPass(pass: SharedShardPass(reader: reader, raColumn: ra, decColumn: dec))
    }

    /// Opens the task's shard and checks it is the registered file.
    static func openShard(_ ctx: OperatorContext, _ name: String) throws(OperatorError) -> (ShardReader, String, String) {
        guard let key = ctx.dataKey, let shard = ShardKey(key), let root = ctx.dataRoot else {
            throw OperatorError(name, "the task names no shard this worker can open (data key \(ctx.dataKey ?? "none"))")
        }
        let ra = ctx.params.strings["ra"] ?? "coord_ra", dec = ctx.params.strings["dec"] ?? "coord_dec"
        let reader: ShardReader
        do {
            let path = root + "/" + shard.relativePath
            reader = try ctx.shardReaders.map { (p) throws(ShardError) in try p.reader(path: path) } ?? ShardReader(path: path)
        } catch {
            // The shard could not be opened or read: another replica may serve.
            throw OperatorError(name, "\(error)")
        }
        if let want = ctx.dataChecksum, want != 0, reader.checksum != want {
            // A damaged, replaced or planted file: another replica may be the right one.
            throw OperatorError(name, "shard \(key) on this worker is not the file the registry recorded (checksum \(String(reader.checksum, radix: 16)), expected \(String(want, radix: 16)))")
        }
        return (reader, ra, dec)
    }

    /// Input `k` of a merge, read as the `CatalogPartial` it must be.
    public static func partial(_ v: Value, input k: Int, _ name: String) throws(OperatorError) -> CatalogPartial {
        guard case .bytes(let b) = v, let p = try? CatalogPartial(serializedBytes: b) else {
            throw OperatorError(name, "input \(k) is not a catalog partial (\(v))")
        }
        return p
    }

    public static func serialized(_ p: CatalogPartial, _ name: String) throws(OperatorError) -> [UInt8] {
        do { return try p.serializedBytes() } catch { throw OperatorError(name, "\(error)") }
    }

    /// The task's plan, as `catalog_scan` reads it (for operators built on the scan).
    public static func taskPlan(_ ctx: OperatorContext, _ name: String) throws(OperatorError) -> CatalogQueryPlan {
        try plan(ctx, name)
    }

    /// Answers `plan` over the task's shard: the checksum checked, the plan checked against the
    /// shard's schema. Operators built on the scan (Python functions) share it.
    public static func scan(_ ctx: OperatorContext, plan: CatalogQueryPlan, operatorName name: String) throws(OperatorError) -> CatalogPartial {
        try checkedScan(ctx, plan: plan, operatorName: name) { (q, reader, ra, dec) throws(CatalogQueryError) in
            try CatalogScan.scan(q, reader: reader, raColumn: ra, decColumn: dec, isCancelled: ctx.isCancelled)
        }
    }

    /// Opens the task's shard, checks it is the registered file and the plan against its schema,
    /// and runs `body` on them; errors become the operator's, retryable where another replica
    /// may serve.
    static func checkedScan<T>(_ ctx: OperatorContext, plan: CatalogQueryPlan, operatorName name: String,
                               _ body: (CheckedCatalogQuery, ShardReader, String, String) throws(CatalogQueryError) -> T) throws(OperatorError) -> T {
        let (reader, ra, dec) = try openShard(ctx, name)
        do throws(CatalogQueryError) {
            let q = try CheckedCatalogQuery(plan, columns: reader.footer.columns, raColumn: ra, decColumn: dec)
            return try body(q, reader, ra, dec)
        } catch {
            throw OperatorError(name, error.message, retryable: error.retryable)
        }
    }

    // MARK: Cross-match

    /// Parameters of a cross-match's tasks: the plan and the left position columns as for a
    /// scan, the right dataset's position columns, and the right columns the question reads.
    public static func crossmatchParams(plan: CatalogQueryPlan, raColumn: String, decColumn: String,
                                        rightRa: String, rightDec: String, rightColumns: [String]) -> Tessera_V1_OperatorParams {
        var p = params(plan: plan, raColumn: raColumn, decColumn: decColumn)
        p.strings["right_ra"] = rightRa
        p.strings["right_dec"] = rightDec
        var names = Tessera_V1_RowBatch()
        names.names = rightColumns
        p.blobs["right_columns"] = (try? names.serializedData()) ?? Data()
        return p
    }

    /// One right shard's rows (own and margin: positions and the columns the question reads),
    /// for the pairing tasks of the left shards it overlaps.
    public static let crossmatchSide = TaskOperator("crossmatch_side", "read a right shard's rows for a cross-match") { ctx throws(OperatorError) in
        let name = "crossmatch_side"
        guard let ra = ctx.params.strings["right_ra"], let dec = ctx.params.strings["right_dec"],
              let blob = ctx.params.blobs["right_columns"], let columns = try? Tessera_V1_RowBatch(serializedBytes: blob) else {
            throw OperatorError(name, "the task carries no cross-match columns")
        }
        var sideCtx = ctx
        sideCtx.params.strings["ra"] = ra
        sideCtx.params.strings["dec"] = dec
        // Inputs, if any: covers of the left shards that read this side (a sparse left side
        // needs only the right rows near its own).
        var covers: [[Range<Int64>]] = []
        for v in ctx.inputs {
            guard case .int64Column(let c) = v, let r = Crossmatch.ranges(of: c) else { throw OperatorError(name, "an input is not a cover (\(v))") }
            covers.append(r)
        }
        let (reader, _, _) = try openShard(sideCtx, name)
        do throws(CatalogQueryError) {
            return .bytes(try CrossmatchSide.read(reader, raColumn: ra, decColumn: dec, columns: columns.names,
                                                  within: covers.isEmpty ? nil : Crossmatch.union(covers)).serialized())
        } catch {
            throw OperatorError(name, error.message, retryable: error.retryable)
        }
    }

    /// Where a left shard's rows are, widened by the radius (`Crossmatch.cover`): for the sides
    /// of right shards much denser than the left rows that meet them.
    public static let crossmatchCover = TaskOperator("crossmatch_cover", "where a left shard's rows are, for a cross-match") { ctx throws(OperatorError) in
        let name = "crossmatch_cover"
        let plan = try plan(ctx, name)
        let (reader, _, _) = try openShard(ctx, name)
        let footer = reader.footer
        guard let ic = footer.columns.firstIndex(where: { $0.name == footer.indexColumn }) else {
            throw OperatorError(name, "shard \(reader.path) has no spatial index column `\(footer.indexColumn)`")
        }
        var index: [Int64] = []
        do {
            for g in reader.ownRowGroups {
                if case .int64(let a) = try reader.read(column: ic, rowGroup: g) { index += a }
            }
        } catch {
            throw OperatorError(name, "\(error)", retryable: true)
        }
        let r = plan.crossmatch.radiusArcsec
        guard r.isFinite, r > 0, r <= Limits.crossmatchRadiusArcsec else { throw OperatorError(name, "a cross-match radius of \(r)″ is out of range") }
        return .int64Column(Crossmatch.value(of: Crossmatch.cover(index: index, radiusArcsec: r)))
    }

    /// Left rows of the task's shard paired with the right rows of its inputs (`crossmatch_side`
    /// values), answered as the question asks. Argument 0: one input, whose pixel meets the
    /// shard's; the left rows inside both pixels meet all its rows. Argument 1: the left rows no
    /// input's pixel covers meet the own rows of every input (right shards near the shard).
    public static let crossmatch = TaskOperator("crossmatch", "pair a left shard's rows with right rows within a radius") { ctx throws(OperatorError) in
        let name = "crossmatch"
        let plan = try plan(ctx, name)
        guard plan.hasCrossmatch else { throw OperatorError(name, "the task's plan asks for no cross-match") }
        var sides: [CrossmatchSide] = []
        for v in ctx.inputs {
            guard case .bytes(let b) = v else { throw OperatorError(name, "an input is not a cross-match side (\(v))") }
            do throws(CatalogQueryError) { sides.append(try CrossmatchSide(serialized: b)) } catch {
                throw OperatorError(name, error.message, retryable: true)
            }
        }
        guard let first = sides.first, ctx.arg == 1 || sides.count == 1 else {
            throw OperatorError(name, "a cross-match task reads one right shard (or, for uncovered rows, at least one): it got \(sides.count)")
        }
        guard sides.allSatisfy({ $0.names == first.names }) else {
            throw OperatorError(name, "the right shards' columns differ")
        }
        let (reader, ra, dec) = try openShard(ctx, name)
        do throws(CatalogQueryError) {
            let checked = try Crossmatch.check(plan, left: reader.footer.columns, leftRa: ra, leftDec: dec, right: first.schema, rightMarginArcsec: nil)
            let own = Crossmatch.range(order: Int(reader.footer.order), pixel: reader.footer.pixel)
            let ranges: [Range<Int64>]
            let right: CrossmatchSide
            if ctx.arg == 1 {
                ranges = Crossmatch.subtracting(sides.map { Crossmatch.range(order: $0.order, pixel: $0.pixel) }, from: own)
                right = try CrossmatchSide.ownRows(of: sides)
            } else {
                ranges = Crossmatch.intersecting([own], [Crossmatch.range(order: first.order, pixel: first.pixel)])
                right = first
            }
            var acc = try CrossmatchTask(checked: checked, reader: reader, raColumn: ra, decColumn: dec, ranges: ranges, right: right).run(isCancelled: ctx.isCancelled)
            return .bytes(try acc.serializedPartial())
        } catch {
            throw OperatorError(name, error.message, retryable: error.retryable)
        }
    }

    /// Merges the `CatalogPartial`s of its inputs into one.
    public static let catalogMerge = TaskOperator("catalog_merge", "merge partial answers of a catalog question") { ctx throws(OperatorError) in
        let name = "catalog_merge"
        let plan = try plan(ctx, name)
        var parts: [CatalogPartial] = []
        parts.reserveCapacity(ctx.inputs.count)
        for (k, v) in ctx.inputs.enumerated() { parts.append(try partial(v, input: k, name)) }
        do {
            return .bytes(try CatalogMerge.merge(parts, plan: plan).serializedBytes())
        } catch let e as CatalogQueryError {
            throw OperatorError(name, e.message, retryable: e.retryable)
        } catch {
            throw OperatorError(name, "\(error)")
        }
    }
}

/// A shared shard pass as the worker's pool runs it: tasks in, values out.
final class CatalogScanPass: TaskPass {
    let pass: SharedShardPass
    init(pass: SharedShardPass) { self.pass = pass }

    func attach(_ ctx: OperatorContext, done: @escaping @Sendable (Result<Value, OperatorError>, UInt32) -> Void) -> Bool {
        let name = "catalog_scan"
        let plan: CatalogQueryPlan
        do throws(OperatorError) {
            plan = try CatalogOperators.plan(ctx, name)
        } catch {
            done(.failure(error), 0)
            return true
        }
        return pass.attach(plan, isCancelled: ctx.isCancelled) { result, micros in
            done(result.map { .bytes($0) }.mapError { OperatorError(name, $0.message, retryable: $0.retryable) }, micros)
        }
    }

    func run() { pass.run() }
    var tasksAnswered: Int { pass.attachedTotal }
}

/// The operators that run users' Python functions. They are implemented by the worker daemon
/// (they need executor processes), and offered only by workers that allow Python.
public enum PythonOperatorNames {
    /// A shard's selected rows through the user's function (a `catalog_scan` feeding a call).
    public static let map = "python_map"
    /// The user's combine folded over partials, in a reduction tree node.
    public static let combine = "python_combine"
    /// The task parameter (a string) naming the user whose function the task runs, set by the
    /// scheduler from the job's user: a worker runs it only on that user's executors.
    public static let userParameter = "python_user"
}
