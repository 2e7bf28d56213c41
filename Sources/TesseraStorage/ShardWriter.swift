import SwiftProtobuf
import TesseraProtocol

#if canImport(Glibc)
import Glibc
#endif

/// Writes catalog shard files: rows sorted by the order-29 spatial index, cut into row groups,
/// each column chunk stored in the smallest of: raw, LZ4 (only where that saves at least ~10%),
/// a dictionary or runs (`ChunkEncoding`, chosen when smaller than LZ4), with a checksum and
/// min/max; then a footer with the schema and the row-group index. The file appears under its
/// name only once complete and on disk (temporary name, fsync, rename, fsync of the folder).
public enum ShardWriter {
    public static let magic: [UInt8] = Array("TSHARD01".utf8)
    /// 2 added the dictionary and runs chunk encodings.
    public static let formatVersion: UInt32 = 2
    public static let readableVersions: ClosedRange<UInt32> = 1...2
    public static let defaultRowGroupRows = 65_536

    /// What a written shard holds.
    public struct Summary: Sendable, Equatable {
        public var rows: Int
        public var marginRows: Int
        public var bytes: Int
        public var rowGroups: Int
        /// Chunks stored LZ4-compressed / raw / as a dictionary or runs.
        public var compressedChunks: Int
        public var rawChunks: Int
        public var encodedChunks: Int
        /// xxHash64 of the whole footer: identifies the shard's content.
        public var checksum: UInt64
        /// The footer (schema, row groups, statistics), serialized.
        public var footer: [UInt8]
    }

    /// Writes a shard.
    /// - Parameters:
    ///   - columns: the schema; `data` holds one column per entry, in the same order.
    ///   - indexColumn: the Int64 column with each row's order-29 HEALPix index (rows are sorted by it).
    ///   - margin: rows of neighbouring pixels near the boundary, same schema (kept apart, after the own rows).
    @discardableResult
    public static func write(
        to path: String, columns: [ColumnSpec], data: [ColumnData], indexColumn: String,
        order: Int, pixel: Int64, margin: [ColumnData]? = nil, rowGroupRows: Int = defaultRowGroupRows
    ) throws(ShardError) -> Summary {
        try validate(columns, data, "rows")
        if let margin { try validate(columns, margin, "margin rows") }
        guard let ic = columns.firstIndex(where: { $0.name == indexColumn }) else {
            throw .invalidInput("index column `\(indexColumn)` is not in the schema")
        }
        guard columns[ic].type == .columnInt64 else { throw .invalidInput("index column `\(indexColumn)` must be Int64") }
        guard rowGroupRows > 0 else { throw .invalidInput("row groups need at least one row") }

        var footer = Tessera_V1_ShardFooter()
        footer.formatVersion = formatVersion
        footer.columns = columns.map {
            var s = Tessera_V1_ColumnSchema()
            s.name = $0.name; s.type = $0.type; s.unit = $0.unit; s.description_p = $0.description
            return s
        }
        footer.order = UInt32(order)
        footer.pixel = pixel
        footer.indexColumn = indexColumn

        var body: [UInt8] = magic
        var compressed = 0, raw = 0, encodedChunks = 0
        func appendGroups(_ cols: [ColumnData]) {
            let sorted = sortedByIndex(cols, ic)
            let n = sorted.first?.count ?? 0
            var start = 0
            while start < n {
                let end = min(start + rowGroupRows, n)
                var g = Tessera_V1_RowGroup()
                g.rows = UInt64(end - start)
                if case .int64(let idx) = sorted[ic] { g.indexMin = idx[start]; g.indexMax = idx[end - 1] }
                for col in sorted {
                    let part = col.slice(start..<end)
                    var chunk = Tessera_V1_ColumnChunk()
                    let stats = part.statistics
                    chunk.min = stats.min; chunk.max = stats.max; chunk.nanCount = stats.nans
                    part.withStoredBytes { bytes in
                        chunk.rawLength = UInt64(bytes.count)
                        chunk.offset = UInt64(body.count)
                        let lz4 = LZ4.compressIfWorthwhile(bytes)
                        if let (codec, encoded) = ChunkEncoding.encode(bytes, width: ColumnData.width(col.type), limit: lz4?.count ?? bytes.count) {
                            chunk.codec = codec
                            chunk.checksum = XXHash64.hash(encoded)
                            body.append(contentsOf: encoded)
                            encodedChunks += 1
                        } else if let packed = lz4 {
                            chunk.codec = .chunkLz4
                            chunk.checksum = XXHash64.hash(packed)
                            body.append(contentsOf: packed)
                            compressed += 1
                        } else {
                            chunk.codec = .chunkRaw
                            chunk.checksum = XXHash64.hash(bytes)
                            body.append(contentsOf: bytes)
                            raw += 1
                        }
                        chunk.storedLength = UInt64(body.count) - chunk.offset
                    }
                    g.chunks.append(chunk)
                }
                footer.rowGroups.append(g)
                start = end
            }
        }
        appendGroups(data)
        footer.rows = UInt64(data.first?.count ?? 0)
        footer.marginFirstGroup = UInt32(footer.rowGroups.count)
        if let margin {
            appendGroups(margin)
            footer.marginRows = UInt64(margin.first?.count ?? 0)
        }
        let footerBytes: [UInt8] = (try? footer.serializedBytes()) ?? []
        let footerHash = XXHash64.hash(footerBytes)
        body.append(contentsOf: footerBytes)
        withUnsafeBytes(of: UInt64(footerBytes.count).littleEndian) { body.append(contentsOf: $0) }
        withUnsafeBytes(of: footerHash.littleEndian) { body.append(contentsOf: $0) }
        body.append(contentsOf: magic)
        try DurableFile.write(body, to: path)
        return Summary(rows: Int(footer.rows), marginRows: Int(footer.marginRows), bytes: body.count,
                       rowGroups: footer.rowGroups.count, compressedChunks: compressed, rawChunks: raw, encodedChunks: encodedChunks, checksum: footerHash,
                       footer: footerBytes)
    }

    static func validate(_ columns: [ColumnSpec], _ data: [ColumnData], _ what: String) throws(ShardError) {
        guard !columns.isEmpty else { throw .invalidInput("the schema has no columns") }
        guard data.count == columns.count else { throw .invalidInput("\(columns.count) columns in the schema but \(data.count) given for the \(what)") }
        let n = data[0].count
        for (c, d) in zip(columns, data) {
            guard d.type == c.type else { throw .invalidInput("column `\(c.name)` is declared \(c.type) but holds \(d.type)") }
            guard d.count == n else { throw .invalidInput("column `\(c.name)` has \(d.count) \(what), `\(columns[0].name)` has \(n)") }
        }
        var seen = Set<String>()
        for c in columns where !seen.insert(c.name).inserted { throw .invalidInput("column `\(c.name)` appears twice") }
    }

    /// Every column reordered by ascending spatial index (stable, so equal indexes keep input order).
    static func sortedByIndex(_ cols: [ColumnData], _ ic: Int) -> [ColumnData] {
        guard case .int64(let idx) = cols[ic] else { return cols }
        if zip(idx, idx.dropFirst()).allSatisfy({ $0 <= $1 }) { return cols }
        let order = idx.allSatisfy({ $0 >= 0 }) ? RadixSort.order(idx) : idx.indices.sorted { idx[$0] < idx[$1] || (idx[$0] == idx[$1] && $0 < $1) }
        return cols.map { $0.gathered(order) }
    }
}

/// Writes a file so that it is either absent or complete under its final name.
public enum DurableFile {
    public static func write(_ bytes: [UInt8], to path: String) throws(ShardError) {
        let tmp = "\(path).tmp-\(getpid())"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .io(path: tmp, operation: "create", errno: errno) }
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + off, bytes.count - off) }
            if n < 0 {
                if errno == EINTR { continue }
                let e = errno
                close(fd); unlink(tmp)
                throw .io(path: tmp, operation: "write", errno: e)
            }
            off += n
        }
        if fsync(fd) != 0 {
            let e = errno
            close(fd); unlink(tmp)
            throw .io(path: tmp, operation: "fsync", errno: e)
        }
        close(fd)
        guard rename(tmp, path) == 0 else {
            let e = errno
            unlink(tmp)
            throw .io(path: path, operation: "rename into place", errno: e)
        }
        // The rename itself must survive a crash: sync the folder.
        let dir = path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : "."
        let dfd = open(dir.isEmpty ? "/" : dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 { fsync(dfd); close(dfd) }
    }
}
