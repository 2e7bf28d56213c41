import Foundation
import Testing
import TesseraCompute
import TesseraProtocol
import TesseraSky
import TesseraStorage
import TesseraTestKit

/// Object ids beyond 2^53 (Rubin's are about 2^59, where Doubles are 128 apart): comparisons with
/// integer literals and between Int64 columns are exact, row-group pruning keeps every group that
/// may hold a match, and rows come back with their exact ids.
@Suite struct IntegerExactnessTests {
    static let base: Int64 = 609_780_990_190_346_000

    @Test func integerLiteralsBeyondTwoToTheFiftyThreeStayIntegers() throws {
        let schema: [String: ExpressionType] = ["objectId": .number]
        let e = try ExpressionChecker.check("objectId == 609780990190346457", schema: schema)
        guard case .binary(.equal, _, .integer(let k, _), _) = e.expression else { Issue.record("\(e.expression)"); return }
        #expect(k == 609_780_990_190_346_457)
        guard case .binary(_, _, .integer(let m, _), _) = try ExpressionChecker.check("objectId > -609780990190346457", schema: schema).expression else {
            Issue.record("negative literal"); return
        }
        #expect(m == -609_780_990_190_346_457)
        // Small integers and anything with a point or exponent stay Doubles.
        guard case .binary(_, _, .number(3, _), _) = try ExpressionChecker.check("objectId > 3", schema: schema).expression,
              case .binary(_, _, .number(6.1e17, _), _) = try ExpressionChecker.check("objectId > 6.1e17", schema: schema).expression else {
            Issue.record("doubles"); return
        }
    }

    @Test func comparisonsPruningAndRowsAreExact() throws {
        let n = 3_000
        let ra = (0..<n).map { 60 + Double($0 % 50) * 0.01 }, dec = (0..<n).map { -35 + Double($0 / 50) * 0.01 }
        let index = zip(ra, dec).map { HEALPix.spatialIndex(ra: $0, dec: $1) }
        let order = index.indices.sorted { index[$0] < index[$1] }
        // Ids ascend along the spatial order, so row groups have narrow id ranges to prune by.
        var ids = [Int64](repeating: 0, count: n)
        for (rank, i) in order.enumerated() { ids[i] = Self.base + Int64(rank) }
        let other = ids.map { $0 % 3 == 0 ? $0 : $0 + 1 }
        let schema = [ColumnSpec("coord_ra", .columnFloat64), ColumnSpec("coord_dec", .columnFloat64),
                      ColumnSpec("objectId", .columnInt64), ColumnSpec("parentId", .columnInt64), ColumnSpec("_healpix_29", .columnInt64)]
        let dir = temporaryFolder("int")
        let path = dir + "/ids.shard"
        try ShardWriter.write(to: path, columns: schema, data: [.float64(ra), .float64(dec), .int64(ids), .int64(other), .int64(index)],
                              indexColumn: "_healpix_29", order: 0, pixel: 0, rowGroupRows: 100)
        let reader = try ShardReader(path: path)
        defer { try? FileManager.default.removeItem(atPath: dir) }

        func count(_ filter: String) throws -> Int {
            let a = try answer(plan { $0.filter = filter }, [reader])
            return Int(try #require(a.table.numbers("count")?.first))
        }
        let k = Self.base + 1_234
        #expect(Double(k) == Double(k + 1))  // as Doubles these ids are one
        #expect(try count("objectId == \(k)") == ids.filter { $0 == k }.count)
        #expect(try count("objectId == \(k)") == 1)
        #expect(try count("objectId != \(k)") == n - 1)
        #expect(try count("objectId < \(k)") == ids.filter { $0 < k }.count)
        #expect(try count("\(k) > objectId") == ids.filter { $0 < k }.count)
        #expect(try count("objectId >= \(k) and objectId <= \(k + 3)") == 4)
        #expect(try count("objectId > \(k)") == ids.filter { $0 > k }.count)
        #expect(try count("objectId == parentId") == zip(ids, other).filter { $0 == $1 }.count)
        #expect(try count("objectId < parentId") == zip(ids, other).filter { $0 < $1 }.count)
        // Grouping by such ids keeps every id its own group, with the exact key, also when the
        // partials of two shards (the same rows twice) merge.
        let expectedGroups = Dictionary(grouping: other.indices, by: { other[$0] })
        let keys = expectedGroups.keys.sorted()
        for (shards, copies) in [([reader], 1), ([reader, reader], 2)] {
            let byParent = try answer(plan { $0.groupBy = "parentId"; $0.aggregates = [aggregate(.aggCount), aggregate(.aggMean, "coord_ra")] }, shards)
            #expect(byParent.table.columns.first == .int64s(keys))
            #expect(byParent.table.numbers("count") == keys.map { Double(copies * expectedGroups[$0]!.count) })
            let means = try #require(byParent.table.numbers("mean(coord_ra)"))
            for (k, m) in zip(keys, means) {
                let exact = expectedGroups[k]!.reduce(0) { $0 + ra[$1] } / Double(expectedGroups[k]!.count)
                #expect(abs(m - exact) <= 1e-12 * exact)
            }
        }
        // The exact id comes back.
        let rows = try answer(plan { $0.filter = "objectId == \(k)"; $0.rows.select = ["objectId"] }, [reader])
        #expect(rows.table.rowCount == 1)
        #expect(rows.table.columns.first == .int64s([k]))
    }
}
