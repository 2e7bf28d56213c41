import SwiftProtobuf
import TesseraProtocol

#if canImport(Glibc)
import Glibc
#endif

/// Reads a shard file through a read-only memory map: the footer is checked (magic, length,
/// checksum) when the file is opened, and each column chunk's checksum when it is read; only the
/// columns and row groups asked for are touched.
///
/// Sendable because nothing in it changes after `init`: the mapping is read-only, and the chunk
/// cache it shares is itself locked; tasks on several threads read one reader at once.
public final class ShardReader: @unchecked Sendable {
    public let path: String
    /// The mapped file as it was when opened: a file replaced or rewritten under the same path
    /// has another identity (``ShardReaderPool`` checks it before handing the reader out again).
    public let identity: FileIdentity
    public let footer: Tessera_V1_ShardFooter
    /// The file's checksum: the xxHash64 of its footer, which holds every chunk's own checksum
    /// (the registry records it at ingest; a worker compares the two when it opens a shard).
    public let checksum: UInt64
    private let base: UnsafeRawPointer
    private let size: Int
    /// Where decoded chunks are kept for later reads (nil: every read decodes).
    public let cache: DecodedColumnCache?

    public init(path: String, cache: DecodedColumnCache? = nil) throws(ShardError) {
        self.path = path
        self.cache = cache
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .io(path: path, operation: "open", errno: errno) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .io(path: path, operation: "stat", errno: errno) }
        identity = FileIdentity(st)
        let size = Int(st.st_size)
        let tail = 8 + 8 + 8
        guard size >= ShardWriter.magic.count + tail else {
            throw .corruptFile(path: path, reason: "only \(size) bytes: truncated or not a shard file")
        }
        guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
            throw .io(path: path, operation: "mmap", errno: errno)
        }
        // A row group stores every column's chunk side by side, and a question reads a few
        // columns: the kernel's read-around on a page fault (up to the device's read-ahead,
        // megabytes) would read the columns it skips too. Chunks are asked for whole instead,
        // as they are decoded or ahead of a scan (`prefetch`).
        _ = madvise(p, size, MADV_RANDOM)
        let base = UnsafeRawPointer(p)
        func fail(_ why: String) -> ShardError {
            munmap(p, size)
            return .corruptFile(path: path, reason: why)
        }
        let magic = ShardWriter.magic
        guard (0..<8).allSatisfy({ base.load(fromByteOffset: $0, as: UInt8.self) == magic[$0] }) else {
            throw fail("it does not start with the shard magic")
        }
        guard (0..<8).allSatisfy({ base.load(fromByteOffset: size - 8 + $0, as: UInt8.self) == magic[$0] }) else {
            throw fail("it does not end with the shard magic (truncated?)")
        }
        let footerLength = Int(clamping: UInt64(littleEndian: base.loadUnaligned(fromByteOffset: size - tail, as: UInt64.self)))
        let footerHash = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: size - 16, as: UInt64.self))
        guard footerLength <= size - tail - 8 else { throw fail("footer length \(footerLength) exceeds the file") }
        let footerStart = size - tail - footerLength
        // Read whole, as one request (with MADV_RANDOM each page would be a read of its own).
        let page = Self.pageSize
        _ = madvise(p + footerStart / page * page, size - footerStart / page * page, MADV_WILLNEED)
        let footerBytes = UnsafeRawBufferPointer(start: base + footerStart, count: footerLength)
        guard XXHash64.hash(footerBytes) == footerHash else { throw fail("footer checksum mismatch") }
        checksum = footerHash
        let f: Tessera_V1_ShardFooter
        do {
            f = try Tessera_V1_ShardFooter(serializedBytes: Array(footerBytes))
        } catch {
            throw fail("footer does not decode: \(error)")
        }
        guard ShardWriter.readableVersions.contains(f.formatVersion) else {
            throw fail("format version \(f.formatVersion) is not supported (this build reads \(ShardWriter.readableVersions))")
        }
        // Fields the readers index and range by: a planted footer (its checksum made to match)
        // must fail here, not trap later.
        guard f.marginFirstGroup <= UInt64(f.rowGroups.count) else {
            throw fail("the margin starts at row group \(f.marginFirstGroup) of \(f.rowGroups.count)")
        }
        for column in f.columns {
            switch column.type {
            case .columnFloat64, .columnFloat32, .columnInt64, .columnInt32, .columnInt16, .columnUint8, .columnBool: continue
            case .UNRECOGNIZED(let n): throw fail("column `\(column.name)` has type \(n), which this build does not know")
            }
        }
        for (g, group) in f.rowGroups.enumerated() {
            guard group.chunks.count == f.columns.count else { throw fail("row group \(g) has \(group.chunks.count) chunks for \(f.columns.count) columns") }
            // Rows times a column's width may not overflow (a planted footer's count would trap).
            guard group.rows <= Limits.shardRows else { throw fail("row group \(g) has \(group.rows) rows, over the limit of \(Limits.shardRows)") }
            for (c, chunk) in group.chunks.enumerated() {
                guard chunk.offset >= 8, chunk.storedLength <= UInt64(footerStart), chunk.offset <= UInt64(footerStart) - chunk.storedLength else {
                    throw fail("row group \(g), column `\(f.columns[c].name)`: chunk lies outside the data area")
                }
                guard chunk.rawLength == group.rows * UInt64(ColumnData.width(f.columns[c].type)) else {
                    throw fail("row group \(g), column `\(f.columns[c].name)`: \(chunk.rawLength) bytes for \(group.rows) rows")
                }
            }
        }
        self.base = base
        self.size = size
        footer = f
    }

    deinit { munmap(UnsafeMutableRawPointer(mutating: base), size) }

    public var columnNames: [String] { footer.columns.map(\.name) }
    public var rowGroupCount: Int { footer.rowGroups.count }
    /// Row groups holding the shard's own rows (the rest are margin).
    public var ownRowGroups: Range<Int> { 0..<Int(footer.marginFirstGroup) }
    public var marginRowGroups: Range<Int> { Int(footer.marginFirstGroup)..<footer.rowGroups.count }

    public func columnIndex(_ name: String) throws(ShardError) -> Int {
        guard let i = footer.columns.firstIndex(where: { $0.name == name }) else {
            throw .unknownColumn(path: path, column: name, available: columnNames)
        }
        return i
    }

    /// One column of one row group, checksum verified.
    public func read(column c: Int, rowGroup g: Int) throws(ShardError) -> ColumnData {
        guard let cache, cache.capacityBytes > 0 else { return try decode(column: c, rowGroup: g) }
        let key = DecodedColumnCache.Key(path: path, fileChecksum: checksum, column: c, rowGroup: g)
        if let kept = cache.lookup(key) { return kept }
        let d = try decode(column: c, rowGroup: g)
        cache.insert(key, d, bytes: Int(footer.rowGroups[g].chunks[c].rawLength))
        return d
    }

    /// Asks the kernel to start reading these columns' chunks of row group `g` from the disk
    /// (`MADV_WILLNEED`) and returns at once, so that a scan computing on one row group has the
    /// next ones in memory by the time it decodes them: the disk works while the core does.
    /// Chunks the column cache keeps are skipped; for pages already in memory it costs a system
    /// call and no reading.
    public func prefetch(columns: some Sequence<Int>, rowGroup g: Int) {
        guard g >= 0 && g < footer.rowGroups.count else { return }
        for c in columns where c >= 0 && c < footer.columns.count {
            if let cache, cache.capacityBytes > 0,
               cache.contains(DecodedColumnCache.Key(path: path, fileChecksum: checksum, column: c, rowGroup: g)) { continue }
            willNeed(footer.rowGroups[g].chunks[c])
        }
    }

    /// Asks the kernel to read one chunk's stored bytes from the disk, as one request.
    private func willNeed(_ chunk: Tessera_V1_ColumnChunk) {
        // Bounds were checked against the file at open; the range is widened to whole pages.
        let start = Int(chunk.offset) / Self.pageSize * Self.pageSize
        let end = min(size, Int(chunk.offset) + Int(chunk.storedLength))
        guard end > start else { return }
        _ = madvise(UnsafeMutableRawPointer(mutating: base + start), end - start, MADV_WILLNEED)
    }

    private static let pageSize = max(4096, Int(sysconf(Int32(_SC_PAGESIZE))))

    /// A chunk decoded from the file: its checksum checked, then decompressed or decoded.
    func decode(column c: Int, rowGroup g: Int) throws(ShardError) -> ColumnData {
        guard g >= 0 && g < footer.rowGroups.count else { throw .rowGroupOutOfRange(path: path, rowGroup: g, count: footer.rowGroups.count) }
        let chunk = footer.rowGroups[g].chunks[c]
        let name = footer.columns[c].name
        // The mapping reads no more than is touched (MADV_RANDOM): the chunk is asked for whole.
        willNeed(chunk)
        let stored = UnsafeRawBufferPointer(start: base + Int(chunk.offset), count: Int(chunk.storedLength))
        guard XXHash64.hash(stored) == chunk.checksum else {
            throw .corruptChunk(path: path, rowGroup: g, column: name, reason: "checksum mismatch")
        }
        let type = footer.columns[c].type
        switch chunk.codec {
        case .chunkRaw:
            guard chunk.storedLength == chunk.rawLength else {
                throw .corruptChunk(path: path, rowGroup: g, column: name, reason: "raw chunk of \(chunk.storedLength) bytes, expected \(chunk.rawLength)")
            }
            return ColumnData.fromStored(type, stored)
        case .chunkLz4:
            let bytes: [UInt8]
            do {
                bytes = try LZ4.decompress(stored, rawLength: Int(chunk.rawLength))
            } catch {
                throw .corruptChunk(path: path, rowGroup: g, column: name, reason: "\(error)")
            }
            return bytes.withUnsafeBytes { ColumnData.fromStored(type, $0) }
        case .chunkDictionary, .chunkRuns:
            let rows = Int(footer.rowGroups[g].rows)
            let width = ColumnData.width(type)
            guard chunk.rawLength == UInt64(rows * width) else {
                throw .corruptChunk(path: path, rowGroup: g, column: name, reason: "\(chunk.rawLength) decoded bytes for \(rows) rows of \(width) bytes")
            }
            do throws(ChunkEncodingError) {
                return try ColumnData.decoded(type, rows: rows) { (out) throws(ChunkEncodingError) in
                    try ChunkEncoding.decode(chunk.codec, stored, width: width, rows: rows, into: out)
                }
            } catch {
                throw .corruptChunk(path: path, rowGroup: g, column: name, reason: error.description)
            }
        case .UNRECOGNIZED(let k):
            throw .corruptChunk(path: path, rowGroup: g, column: name, reason: "unknown codec \(k)")
        }
    }

    /// The named columns over the given row groups (default: the shard's own rows), concatenated.
    public func read(columns names: [String], rowGroups: [Int]? = nil) throws(ShardError) -> [ColumnData] {
        let idx = try names.map { (n) throws(ShardError) in try columnIndex(n) }
        let groups = rowGroups ?? Array(ownRowGroups)
        var out = idx.map { ColumnData.empty(footer.columns[$0].type) }
        for g in groups {
            for (k, c) in idx.enumerated() { out[k].append(try read(column: c, rowGroup: g)) }
        }
        return out
    }

    /// Row groups whose spatial-index range meets one of the given index ranges (order 29).
    public func rowGroups(overlapping ranges: [Range<Int64>], margin: Bool = false) -> [Int] {
        let groups = margin ? Array(marginRowGroups) : Array(ownRowGroups)
        return groups.filter { g in
            let rg = footer.rowGroups[g]
            return ranges.contains { $0.lowerBound <= rg.indexMax && rg.indexMin < $0.upperBound }
        }
    }
}
