import Testing
import TesseraProtocol
@testable import TesseraStorage

@Suite struct CSVTableTests {
    @Test func typesAreInferredAndEmptyFieldsAreNaN() throws {
        let csv = """
        objectId,coord_ra,coord_dec,r_psfFlux,nvisits,isPrimary
        1,10.5,-5.25,100.0,3,true
        2,11,-6,,4,false
        3,12.25,-7.5,1e3,,True\r
        """
        let (specs, data) = try CSVTable.parse(Array(csv.utf8))
        #expect(specs.map(\.name) == ["objectId", "coord_ra", "coord_dec", "r_psfFlux", "nvisits", "isPrimary"])
        #expect(data[0] == .int64([1, 2, 3]))
        #expect(data[1] == .float64([10.5, 11, 12.25]))
        guard case .float64(let flux) = data[3], case .float64(let visits) = data[4] else { Issue.record("types"); return }
        #expect(flux[0] == 100 && flux[1].isNaN && flux[2] == 1000)
        // An integer column with a gap becomes Float64 with NaN, as pandas reads it.
        #expect(visits[0] == 3 && visits[1] == 4 && visits[2].isNaN)
        #expect(data[5] == .bool([true, false, true]))
    }

    @Test func raggedRowsAndBadNumbersNameTheLineAndColumn() {
        #expect(throws: CSVError.raggedRow(path: "t.csv", line: 3, fields: 2, expected: 3)) {
            try CSVTable.parse(Array("a,b,c\n1,2,3\n4,5\n".utf8), path: "t.csv")
        }
        #expect(throws: CSVError.badNumber(path: "t.csv", line: 3, column: "b", text: "2.x")) {
            try CSVTable.parse(Array("a,b\n1,2\n3,2.x\n".utf8), path: "t.csv")
        }
        #expect(throws: CSVError.empty(path: "t.csv")) { try CSVTable.parse([], path: "t.csv") }
        #expect(throws: CSVError.empty(path: "t.csv")) { try CSVTable.parse(Array("a,b\n".utf8), path: "t.csv") }
        #expect(throws: CSVError.duplicateColumn(path: "t.csv", column: "a")) { try CSVTable.parse(Array("a,a\n1,2\n".utf8), path: "t.csv") }
        #expect(throws: CSVError.self) { try CSVTable.read(path: "/nonexistent.csv") }
    }

    @Test func quotedFieldsMayHoldCommas() throws {
        let (specs, data) = try CSVTable.parse(Array("x,\"y\"\n\"1\",\"2.5\"\n".utf8))
        #expect(specs.map(\.name) == ["x", "y"])
        #expect(data[0] == .int64([1]))
        #expect(data[1] == .float64([2.5]))
    }
}
