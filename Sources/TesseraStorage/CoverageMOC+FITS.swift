import Foundation
import TesseraProtocol
import TesseraSky

extension CoverageMOC {
    /// The MOC 2.0 FITS serialisation: a binary table of NUNIQ cells with the standard's
    /// keywords (what mocpy, Aladin and TOPCAT read).
    public func fitsBytes() throws -> [UInt8] {
        let path = NSTemporaryDirectory() + "tessera-moc-\(UUID().uuidString).fits"
        defer { unlink(path) }
        let keywords: [FITSKeyword] = [
            .init("PIXTYPE", .text("HEALPIX"), "HEALPix magic code"), .init("ORDERING", .text("NUNIQ"), "NUNIQ coding method"),
            .init("COORDSYS", .text("C"), "ICRS reference frame"), .init("MOCVERS", .text("2.0"), "MOC version"),
            .init("MOCDIM", .text("SPACE"), "Spatial MOC"), .init("MOCORD_S", .integer(maxOrder), "MOC resolution (best order)"),
            .init("MOCORDER", .integer(maxOrder), "MOC resolution (MOC 1.1)"), .init("MOCTOOL", .text("tessera"), "Name of the MOC generator"),
        ]
        try FITSTableWriter.write(to: path, columns: [ColumnSpec("UNIQ", .columnInt64)], data: [.int64(nuniq)], extensionName: "MOC", keywords: keywords)
        return Array(try Data(contentsOf: URL(fileURLWithPath: path)))
    }
}
