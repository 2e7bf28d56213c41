import Crypto
import Foundation
import Hummingbird
import Synchronization
import TesseraClient
import TesseraCompute
import TesseraProtocol
import TesseraSky
import TesseraStorage

/// Catalogs' coverage MOCs (IVOA MOC 2.0): the HEALPix cells that hold rows, from a sky map of
/// the catalog at the asked order, in FITS (NUNIQ) or JSON. Served as static documents: an
/// ETag from the content, and kept a minute (the same answer until the catalog changes).
final class CoverageService: Sendable {
    let pool: SchedulerPool
    private let cache = Mutex<[String: (at: Double, body: [UInt8])]>([:])
    /// The finest order served (order 10 is 3.4′ cells, 12.6M of them on the sky: a sky map
    /// of that many pixels is the most one request may ask of the workers and the gateway).
    static let maxOrder = 10
    static let defaultOrder = 8

    init(pool: SchedulerPool) { self.pool = pool }

    /// The MOC of `dataset` as `user` may read it, at `order`.
    func moc(_ dataset: String, order: Int, user: String) async throws -> CoverageMOC {
        let question = CatalogQuery(dataset: dataset).skyMap(order: order)
        let table = try await pool.run(as: user) { conn, isStopped in
            try conn.run(question, name: "moc \(dataset)", isStopped: isStopped).result.table
        }
        guard let pixels = table.numbers("pixel"), let counts = table.numbers("count") else { return CoverageMOC(order: order, pixels: []) }
        return CoverageMOC(order: order, pixels: zip(pixels, counts).filter { $0.1 > 0 }.map { Int64($0.0) })
    }

    /// The document for `file` (`NAME.fits` or `NAME.json`), cached for a minute per user.
    func document(_ file: String, order: Int, user: String) async throws -> (body: [UInt8], contentType: String) {
        let json = file.hasSuffix(".json")
        guard json || file.hasSuffix(".fits") else {
            throw TAPError(404, "a coverage MOC is NAME.fits or NAME.json, not `\(file.prefix(80))`")
        }
        let dataset = String(file.dropLast(5))
        let type = json ? "application/json" : "application/fits"
        let key = "\(user)\u{1}\(file)\u{1}\(order)"
        let now = Date().timeIntervalSince1970
        if let hit = cache.withLock({ $0[key] }), now - hit.at < 60 { return (hit.body, type) }
        let moc: CoverageMOC
        do {
            moc = try await self.moc(dataset, order: order, user: user)
        } catch ClientError.rejected(_, let message) where message.contains("no dataset named") {
            throw TAPError(404, message)
        }
        let body = json ? Array(moc.json.utf8) : try moc.fitsBytes()
        cache.withLock { c in
            c = c.filter { now - $0.value.at < 60 }
            c[key] = (now, body)
        }
        return (body, type)
    }
}
