import Foundation
import SwiftProtobuf
import Testing
import TesseraCompute
import TesseraProtocol

/// A worker reads the rows of each catalog answer it returns from the wire form (without
/// decoding it) for the scheduler's row cap: checked against SwiftProtobuf's decoding of the
/// same bytes.
struct PartialRowCountTests {
    static func partial(rows n: Int, kind: Int, seed: UInt64) -> CatalogPartial {
        var g = SplitMix64(seed: seed)
        var p = CatalogPartial()
        (p.shards, p.rowsScanned, p.rowsMatched) = (1, UInt64(n) * 3, UInt64(n))
        p.histogram = (0..<17).map { _ in UInt64.random(in: 0...1 << 40, using: &g) }
        p.groupKeys = [1.5, 2.5]
        var column = Tessera_V1_RowColumn()
        switch kind {
        case 0: var l = Tessera_V1_DoubleList(); l.values = (0..<n).map { _ in Double.random(in: -1e9...1e9, using: &g) }; column.doubles = l
        case 1: var l = Tessera_V1_Int64List(); l.values = (0..<n).map { _ in Int64.random(in: .min ... .max, using: &g) }; column.int64S = l
        case 2: var l = Tessera_V1_BoolList(); l.values = (0..<n).map { _ in Bool.random(using: &g) }; column.bools = l
        default: var l = Tessera_V1_FloatList(); l.values = (0..<n).map { _ in Float.random(in: -1...1, using: &g) }; column.floats = l
        }
        var second = Tessera_V1_RowColumn()
        var l = Tessera_V1_DoubleList()
        l.values = Array(repeating: 1, count: n)
        second.doubles = l
        p.rows.names = ["a", "b"]
        p.rows.columns = [column, second]
        p.rows.index = (0..<n).map { Int64($0) }
        return p
    }

    @Test func everyColumnTypeCountsAsDecodingDoes() throws {
        for kind in 0..<4 {
            for n in [0, 1, 2, 127, 128, 1_000, 70_000] {
                let bytes: [UInt8] = try Self.partial(rows: n, kind: kind, seed: UInt64(kind * 100_000 + n)).serializedBytes()
                let decoded = try CatalogPartial(serializedBytes: bytes)
                #expect(CatalogPartial.rowCount(serialized: bytes) == decoded.rows.rowCount, "kind \(kind), \(n) rows")
                #expect(decoded.rows.rowCount == n)
            }
        }
        // Answers without rows (an aggregate, an empty message) have none.
        var counted = CatalogPartial()
        counted.rowsMatched = 12
        #expect(CatalogPartial.rowCount(serialized: try counted.serializedBytes()) == 0)
        #expect(CatalogPartial.rowCount(serialized: []) == 0)
    }

    @Test func unpackedValuesCountAsAParserReadsThem() throws {
        // RowColumn.bools (3) holding BoolList.values (1) as five separate varints, and a
        // doubles list split into two packed runs.
        let bools: [UInt8] = [0x08, 1, 0x08, 0, 0x08, 1, 0x08, 1, 0x08, 0]
        let column: [UInt8] = [0x1A, UInt8(bools.count)] + bools
        let batch: [UInt8] = [0x12, UInt8(column.count)] + column
        let message: [UInt8] = [0x52, UInt8(batch.count)] + batch
        #expect(try CatalogPartial(serializedBytes: message).rows.rowCount == 5)
        #expect(CatalogPartial.rowCount(serialized: message) == 5)
        let runs: [UInt8] = [0x0A, 16] + [UInt8](repeating: 0, count: 16) + [0x0A, 8] + [UInt8](repeating: 0, count: 8)
        let column2: [UInt8] = [0x0A, UInt8(runs.count)] + runs
        let batch2: [UInt8] = [0x12, UInt8(column2.count)] + column2
        let message2: [UInt8] = [0x52, UInt8(batch2.count)] + batch2
        #expect(try CatalogPartial(serializedBytes: message2).rows.rowCount == 3)
        #expect(CatalogPartial.rowCount(serialized: message2) == 3)
    }

    @Test func malformedBytesNeverTrap() throws {
        let bytes: [UInt8] = try Self.partial(rows: 300, kind: 1, seed: 9).serializedBytes()
        // Every cut of a real answer: a count no larger than the whole's, or nil.
        for cut in 0..<bytes.count {
            if let n = CatalogPartial.rowCount(serialized: Array(bytes[..<cut])) { #expect(n <= 300) }
        }
        var g = SplitMix64(seed: 4)
        for _ in 0..<2_000 {
            let junk = (0..<Int.random(in: 0...64, using: &g)).map { _ in UInt8.random(in: 0...255, using: &g) }
            _ = CatalogPartial.rowCount(serialized: junk)
        }
        // A length past the end, and a varint that never ends.
        #expect(CatalogPartial.rowCount(serialized: [0x52, 0x7F, 0x12]) == nil)
        #expect(CatalogPartial.rowCount(serialized: [0x08] + [UInt8](repeating: 0xFF, count: 12)) == nil)
    }
}
