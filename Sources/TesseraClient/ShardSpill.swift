import Foundation
import TesseraProtocol
import TesseraStorage

#if canImport(Glibc)
import Glibc
#endif

/// Rows waiting on local disk between reading the input files and sending each shard to its
/// workers, so an ingest holds one input file (and a shard or two) in memory rather than the
/// whole catalog.
///
/// Each shard has two files, its own rows and its margin rows, each a sequence of blocks (one per
/// input file that had rows for it): `u32 rows`, `u32 columns`, then per column `u8 type` and the
/// values' stored bytes. Blocks keep the type their file had; loading widens to the final type
/// (an integer column that a later file has nulls in becomes Float64 for every file).
final class ShardSpill {
    let directory: String
    private(set) var ownRows: [Int]
    private(set) var marginRows: [Int]

    /// `$TMPDIR` if set, else `/var/tmp`: large temporary files belong on disk, and `/tmp` is
    /// memory on many systems.
    static var defaultParent: String {
        if let t = ProcessInfo.processInfo.environment["TMPDIR"], !t.isEmpty { return t }
        return FileManager.default.fileExists(atPath: "/var/tmp") ? "/var/tmp" : NSTemporaryDirectory()
    }

    /// - Parameters:
    ///   - parent: the folder to make the spill's own folder in.
    ///   - expectedBytes: about what will be spilled (the input's size): refused up front when the
    ///     folder's file system has less free, rather than failing half-way.
    init(parent: String, shards: Int, expectedBytes: Int = 0) throws(IngestError) {
        var fs = statvfs()
        if statvfs(parent, &fs) == 0 {
            let free = Int(fs.f_bavail) * Int(fs.f_frsize)
            if free < expectedBytes {
                throw .store("the spill folder \(parent) has \(free >> 20) MiB free; this input needs about \(expectedBytes >> 20) MiB there (choose another with --spill-dir)")
            }
        }
        let dir = (parent as NSString).appendingPathComponent("tessera-ingest-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        } catch {
            throw .store("cannot make a spill folder in \(parent) (choose another with --spill-dir): \(error.localizedDescription)")
        }
        directory = dir
        ownRows = [Int](repeating: 0, count: shards)
        marginRows = [Int](repeating: 0, count: shards)
    }

    /// Deletes the spill.
    func remove() { try? FileManager.default.removeItem(atPath: directory) }

    func path(_ shard: Int, margin: Bool) -> String { "\(directory)/\(shard)-\(margin ? "margin" : "own").spill" }

    /// Appends one block of rows to a shard's own or margin rows.
    func append(shard: Int, margin: Bool, columns: [ColumnData]) throws(IngestError) {
        let rows = columns.first?.count ?? 0
        guard rows > 0 else { return }
        var block: [UInt8] = []
        block.reserveCapacity(8 + columns.reduce(0) { $0 + 1 + $1.count * ColumnData.width($1.type) })
        withUnsafeBytes(of: UInt32(rows).littleEndian) { block.append(contentsOf: $0) }
        withUnsafeBytes(of: UInt32(columns.count).littleEndian) { block.append(contentsOf: $0) }
        for c in columns {
            block.append(UInt8(truncatingIfNeeded: c.type.rawValue))
            block.append(contentsOf: c.storedBytes)
        }
        let p = path(shard, margin: margin)
        guard let f = fopen(p, "ab") else { throw .store("cannot write spill file \(p): \(String(cString: strerror(errno)))") }
        let written = block.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, f) }
        let closed = fclose(f)
        guard written == block.count, closed == 0 else {
            throw .store("cannot write spill file \(p) (disk full? choose another folder with --spill-dir): \(String(cString: strerror(errno)))")
        }
        if margin { marginRows[shard] += rows } else { ownRows[shard] += rows }
    }

    /// A shard's own or margin rows, each column in its final type.
    func load(shard: Int, margin: Bool, types: [ColumnType]) throws(IngestError) -> [ColumnData] {
        var out = types.map { ColumnData.empty($0) }
        let p = path(shard, margin: margin)
        guard FileManager.default.fileExists(atPath: p) else { return out }
        guard let bytes = FileManager.default.contents(atPath: p) else { throw .store("cannot read spill file \(p)") }
        func corrupt(_ why: String) -> IngestError { .store("spill file \(p) is damaged: \(why)") }
        // (`withUnsafeBytes` rethrows untyped errors: the typed one comes out through a Result.)
        let parsed: Result<Void, IngestError> = bytes.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
            Result { () throws(IngestError) in
                var at = 0
                while at < raw.count {
                    guard at + 8 <= raw.count else { throw corrupt("a block header is cut short") }
                    let rows = Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: at, as: UInt32.self)))
                    let count = Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: at + 4, as: UInt32.self)))
                    at += 8
                    guard count == types.count else { throw corrupt("a block of \(count) columns, expected \(types.count)") }
                    for k in 0..<count {
                        guard at < raw.count, let type = ColumnType(rawValue: Int(raw[at])) else { throw corrupt("an unknown column type") }
                        at += 1
                        let length = rows * ColumnData.width(type)
                        guard at + length <= raw.count else { throw corrupt("a column is cut short") }
                        let col: ColumnData
                        do {
                            col = try ColumnData(type: type, rows: rows, storedBytes: UnsafeRawBufferPointer(rebasing: raw[at..<(at + length)]))
                        } catch {
                            throw corrupt("\(error)")
                        }
                        at += length
                        out[k].append(type == types[k] ? col : .float64(col.doubles))
                    }
                }
            }
        }
        try parsed.get()
        return out
    }
}
