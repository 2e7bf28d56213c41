import Foundation
import NIOCore
import Testing
@testable import TesseraClient
@testable import TesseraGateway
import TesseraTestKit

/// SODA's parameters as the standard spells them (DALI shapes and intervals), and the errors
/// a client gets for the rest.
struct SODAParameterTests {
    func region(_ fields: [String: [String]]) throws -> CatalogQuery.Region? { try SODAService.region(fields) }

    @Test func shapes() throws {
        guard case .cone(let ra, let dec, let r)? = try region(["POS": ["CIRCLE 60.5 -35.25 0.01"]]) else { Issue.record("no circle"); return }
        #expect(ra == 60.5 && dec == -35.25 && r == 0.01)
        guard case .cone(_, _, let r2)? = try region(["CIRCLE": ["60 -35 2e-3"]]) else { Issue.record("no circle"); return }
        #expect(r2 == 0.002)
        guard case .box(let a, let b, let c, let d)? = try region(["POS": ["RANGE 10 11 -5 -4"]]) else { Issue.record("no range"); return }
        #expect([a, b, c, d] == [10, 11, -5, -4])
        guard case .polygon(let v)? = try region(["POLYGON": ["10 0 11 0 11 1"]]) else { Issue.record("no polygon"); return }
        #expect(v.count == 3 && v[2].ra == 11 && v[2].dec == 1)
        #expect(try region([:]) == nil)
    }

    @Test func refusals() {
        func label(_ f: [String: [String]]) -> String? {
            do { _ = try SODAService.region(f); return nil } catch { return error.label + ": " + error.message }
        }
        #expect(label(["POS": ["CIRCLE 1 2 3", "CIRCLE 4 5 6"]])?.hasPrefix("MultiValuedParamNotSupported") == true)
        #expect(label(["POS": ["CIRCLE 1 2 3"], "CIRCLE": ["1 2 3"]])?.hasPrefix("MultiValuedParamNotSupported") == true)
        #expect(label(["POS": ["RANGE -Inf +Inf 0 1"]])?.contains("finite") == true)
        #expect(label(["POS": ["CIRCLE 1 95 1"]])?.contains("-90 ≤ dec ≤ 90") == true)
        #expect(label(["POS": ["CIRCLE 1 2 nan"]])?.contains("finite") == true)
        #expect(label(["POS": ["BOX 1 2 3 4"]])?.contains("CIRCLE, RANGE or POLYGON") == true)
        #expect(label(["POLYGON": ["1 2 3 4"]])?.contains("3 to") == true)
        #expect(label(["CIRCLE": ["1 2 x"]])?.contains("not a number") == true)
        #expect(label(["POS": ["RANGE 2 1 0 1"]])?.contains("ra1 ≤ ra2") == true)
        // Finite ends whose difference is not (it once reached the scheduler's tiling as ∞).
        #expect(label(["POS": ["RANGE -1e308 1e308 -1 1"]])?.contains("ra1 + 360") == true)
    }

    @Test func bandsByWavelengthOrName() throws {
        let ugrizy = ["g", "r", "i"]
        #expect(try SODAService.bands("5.6e-7 6.8e-7", of: ugrizy) == ["r"])
        #expect(try SODAService.bands("4.5e-7 6e-7", of: ugrizy) == ["g", "r"])
        #expect(try SODAService.bands("-Inf +Inf", of: ugrizy) == ugrizy)
        #expect(try SODAService.bands("r,i", of: ugrizy) == ["r", "i"])
        #expect(try SODAService.bands(nil, of: ugrizy) == [])
        #expect(throws: SODAError.self) { try SODAService.bands("1e-3 1e-2", of: ugrizy) }
        #expect(throws: SODAError.self) { try SODAService.bands("z", of: ugrizy) }
        #expect(throws: SODAError.self) { try SODAService.bands("7e-7 6e-7", of: ugrizy) }
    }

    @Test func identifiers() {
        #expect(ImageID("ivo://tessera/coadd")?.dataset == "coadd")
        #expect(ImageID("coadd")?.text == "ivo://tessera/coadd")
        let p = ImageID("ivo://tessera/coadd?r/552303")
        #expect(p?.patch?.band == "r" && p?.patch?.pixel == 552303 && p?.text == "ivo://tessera/coadd?r/552303")
        for bad in ["", "ivo://tessera/", "ivo://tessera/co add", "ivo://tessera/coadd?r", "ivo://tessera/coadd?r/-1", "ivo://tessera/coadd?r/x", "../etc"] {
            #expect(ImageID(bad) == nil, "\(bad)")
        }
    }

    @Test func hipsPathsStayInsideTheRoot() throws {
        let root = temporaryFolder("hips")
        try FileManager.default.createDirectory(atPath: root + "/t/Norder3/Dir0", withIntermediateDirectories: true)
        try Data("x".utf8).write(to: URL(fileURLWithPath: root + "/t/Norder3/Dir0/Npix5.fits"))
        try Data("x".utf8).write(to: URL(fileURLWithPath: root + "/t/properties"))
        let s = SODAService(pool: SchedulerPool(endpoint: "tcp://127.0.0.1:1"), hipsRoot: root)
        #expect(try s.hipsFile("t/Norder3/Dir0/Npix5.fits").contentType == "application/fits")
        #expect(try s.hipsFile("t/properties").contentType.hasPrefix("text/plain"))
        for bad in ["t/../t/properties", "../x", "t//properties", "t/./properties", "t/Norder3/Dir0/Npix5.exe", "t/Norder3", "t/%2e%2e/properties"] {
            #expect(throws: SODAError.self, "\(bad)") { try s.hipsFile(bad) }
        }
    }

    /// A HiPS file is opened once: its tag, length and bytes are of that open file, whatever
    /// replaces the path meanwhile; what is not a regular file is a 404 (a FIFO without waiting).
    @Test func aHiPSFileIsItsOpenVersion() throws {
        let root = temporaryFolder("hips-open")
        try FileManager.default.createDirectory(atPath: root + "/t/Norder3/Dir0", withIntermediateDirectories: true)
        let path = root + "/t/Norder3/Dir0/Npix5.fits"
        let first = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        try Data(first).write(to: URL(fileURLWithPath: path))
        let s = SODAService(pool: SchedulerPool(endpoint: "tcp://127.0.0.1:1"), hipsRoot: root)
        let open = try s.hipsFile("t/Norder3/Dir0/Npix5.fits")
        #expect(open.size == first.count)
        #expect(try s.hipsFile("t/Norder3/Dir0/Npix5.fits").entityTag == open.entityTag)
        // Replaced by a rename, as a new tree's files are.
        try Data([UInt8](repeating: 9, count: 1_000)).write(to: URL(fileURLWithPath: root + "/new"))
        #expect(rename(root + "/new", path) == 0)
        let replaced = try s.hipsFile("t/Norder3/Dir0/Npix5.fits")
        #expect(replaced.entityTag != open.entityTag && replaced.size == 1_000)
        // The file opened first still reads whole, in chunks, as it was.
        var bytes: [UInt8] = []
        while bytes.count < open.size {
            let chunk = try open.read(at: bytes.count, count: min(1 << 17, open.size - bytes.count))
            #expect(chunk.readableBytes > 0)
            if chunk.readableBytes == 0 { break }
            bytes += chunk.getBytes(at: chunk.readerIndex, length: chunk.readableBytes) ?? []
        }
        #expect(bytes == first)
        #expect(try open.read(at: open.size, count: 10).readableBytes == 0)
        // Not a regular file: a folder named like a tile, a FIFO (opened without blocking), nothing.
        try FileManager.default.createDirectory(atPath: root + "/t/Norder3/Dir0/Npix6.fits", withIntermediateDirectories: true)
        #expect(mkfifo(root + "/t/Norder3/Dir0/Npix7.fits", 0o600) == 0)
        for name in ["Npix6.fits", "Npix7.fits", "Npix8.fits"] {
            do {
                _ = try s.hipsFile("t/Norder3/Dir0/" + name)
                Issue.record("\(name) was served")
            } catch {
                #expect(error.status == 404 && error.message.contains("no HiPS file"), "\(name): \(error.message)")
            }
        }
    }
}
