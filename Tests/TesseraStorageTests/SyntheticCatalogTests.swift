import Foundation
import Testing
import TesseraProtocol
import TesseraStorage
import TesseraSurvey
import TesseraTestKit

@Suite struct SyntheticCatalogTests {
    @Test func sameRowsHoweverTheCatalogIsSplit() {
        let c = SyntheticCatalog(seed: 7)
        var joined = c.rows(0, count: 300)
        for (k, part) in c.rows(300, count: 200).enumerated() { joined[k].append(part) }
        #expect(joined == c.rows(0, count: 500))
        #expect(SyntheticCatalog(seed: 8).rows(0, count: 10) != c.rows(0, count: 10))
    }

    @Test func rowsLookLikeASurvey() {
        let c = SyntheticCatalog(seed: 1)
        let cols = c.rows(0, count: 20_000)
        let names = SyntheticCatalog.schema.map(\.name)
        guard case .float64(let ra) = cols[names.firstIndex(of: "coord_ra")!],
              case .float64(let dec) = cols[names.firstIndex(of: "coord_dec")!],
              case .float32(let r) = cols[names.firstIndex(of: "r_psfFlux")!],
              case .float32(let ext) = cols[names.firstIndex(of: "refExtendedness")!],
              case .int64(let ids) = cols[0]
        else { Issue.record("column types"); return }
        // Clusters may spill a little past the field edge; the bulk is inside.
        #expect(ra.filter { (49...71).contains($0) }.count == ra.count)
        #expect(dec.filter { (-46...(-24)).contains($0) }.count == dec.count)
        #expect(Set(ids).count == ids.count)
        let galaxies = ext.filter { $0 == 1 }.count
        // P(galaxy) = 0.35 + 0.5·P(r > 23) ≈ 0.35 + 0.5 × 0.937 ≈ 0.82.
        #expect(galaxies > 15_600 && galaxies < 17_200)
        // Number counts rise to faint magnitudes: more objects at r > 24 than at r < 20.
        let mags = r.filter { $0 > 0 }.map { -2.5 * log10(Double($0)) + 31.4 }
        #expect(mags.filter { $0 > 24 }.count > 10 * mags.filter { $0 < 20 }.count)
    }

    @Test func fitsFilesReadBackAsGenerated() throws {
        let dir = temporaryFolder("gen")
        let c = SyntheticCatalog(seed: 3)
        let paths = try c.writeFITS(rows: 10_000, rowsPerFile: 4_000, to: dir)
        #expect(paths.count == 3)
        let t = try FITSTableReader(path: paths[1])
        #expect(t.rowCount == 4_000)
        let expected = c.rows(4_000, count: 4_000)
        for (k, spec) in SyntheticCatalog.schema.enumerated() {
            #expect(try t.read(column: spec.name) == expected[k], "\(spec.name)")
        }
        #expect(t.columns.first { $0.name == "g_psfFlux" }?.unit == "nJy")
    }
}
