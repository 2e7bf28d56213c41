import Dispatch
import TesseraCompute
import TesseraProtocol

/// A catalog question, built step by step and sent only when its results are asked for:
///
/// ```swift
/// let client = TesseraClient(endpoint: "tcp://127.0.0.1:5555")
/// let cmd = client.catalog("object")
///     .region(.cone(ra: 60, dec: -35, radius: 2))
///     .filter("refExtendedness == 0")
///     .histogram2D(x: "mag(g_psfFlux) - mag(r_psfFlux)", bins: 60, range: -1...2,
///                  y: "mag(r_psfFlux)", bins: 80, range: 16...24)
/// for try await update in cmd.updates() { print(update.result.rowsMatched, update.isFinal) }
/// ```
///
/// Every step returns a new value; nothing is sent until ``updates()`` or ``result()``.
public struct CatalogQuery: Sendable {
    public private(set) var plan: CatalogQueryPlan
    /// The scheduler it runs on, when made by ``TesseraClient/catalog(_:)``.
    public let endpoint: String?
    /// Its class (nil: the connection's, normal unless set).
    public private(set) var priority: PriorityClass?

    public init(dataset: String, endpoint: String? = nil) {
        plan = CatalogQueryPlan()
        plan.dataset = dataset
        self.endpoint = endpoint
    }

    /// A query from a plan (e.g. read from JSON by `tessera submit`).
    public init(plan: CatalogQueryPlan, endpoint: String? = nil) {
        self.plan = plan
        self.endpoint = endpoint
    }

    public enum Region: Sendable {
        /// Degrees.
        case cone(ra: Double, dec: Double, radius: Double)
        /// Degrees; raMin > raMax wraps through RA 0.
        case box(raMin: Double, raMax: Double, decMin: Double, decMax: Double)
        /// A convex polygon, vertices in degrees.
        case polygon([(ra: Double, dec: Double)])
    }

    private func with(_ change: (inout CatalogQueryPlan) -> Void) -> CatalogQuery {
        var q = self
        change(&q.plan)
        return q
    }

    public func region(_ r: Region) -> CatalogQuery {
        with { p in
            switch r {
            case .cone(let ra, let dec, let radius):
                var c = Tessera_V1_ConeSpec()
                (c.ra, c.dec, c.radius) = (ra, dec, radius)
                p.cone = c
            case .box(let a, let b, let c, let d):
                var x = Tessera_V1_BoxSpec()
                (x.raMin, x.raMax, x.decMin, x.decMax) = (a, b, c, d)
                p.box = x
            case .polygon(let v):
                var x = Tessera_V1_PolygonSpec()
                x.ra = v.map(\.ra)
                x.dec = v.map(\.dec)
                p.polygon = x
            }
        }
    }

    /// The kind of a cross-match: each left row's nearest `k` right rows, or every right row,
    /// within the radius.
    public enum CrossmatchKind: Sendable, Equatable {
        case nearest(k: Int = 1)
        case all
    }

    /// Pairs this dataset's rows (after the region) with `right`'s rows within `radiusArcsec`:
    /// the question's filter and result then read the pairs' columns, `left_NAME`, `right_NAME`
    /// and `sep_arcsec` (as astropy's `search_around_sky` and `match_to_catalog_sky` pair rows).
    public func crossmatch(_ right: String, radiusArcsec: Double, _ kind: CrossmatchKind = .nearest()) -> CatalogQuery {
        var q = self
        q.plan.crossmatch.right = right
        q.plan.crossmatch.radiusArcsec = radiusArcsec
        switch kind {
        case .nearest(let k):
            q.plan.crossmatch.kind = .crossmatchNearest
            q.plan.crossmatch.k = UInt32(clamping: max(1, k))
        case .all:
            q.plan.crossmatch.kind = .crossmatchAll
            q.plan.crossmatch.k = 0
        }
        return q
    }

    /// Keeps rows meeting a condition; successive filters must all hold.
    public func filter(_ condition: String) -> CatalogQuery {
        with { p in p.filter = p.filter.isEmpty ? condition : "(\(p.filter)) and (\(condition))" }
    }

    /// Aggregates over the rows (per group after ``groupBy(_:maxGroups:)``).
    public func aggregate(_ aggregates: Aggregate...) -> CatalogQuery { aggregate(aggregates) }

    public func aggregate(_ aggregates: [Aggregate]) -> CatalogQuery {
        with { p in p.aggregates += aggregates.map(\.spec) }
    }

    /// Rows passing (the default when nothing else is asked).
    public func count() -> CatalogQuery { aggregate(.count()) }

    /// Groups rows by a numeric key expression (NaN keys dropped, as pandas does).
    public func groupBy(_ key: String, maxGroups: Int? = nil) -> CatalogQuery {
        with { p in
            p.groupBy = key
            if let maxGroups { p.maxGroups = UInt64(max(0, maxGroups)) }
        }
    }

    /// A 1-D histogram with numpy's bins.
    public func histogram(_ x: String, bins: Int, range: ClosedRange<Double>) -> CatalogQuery {
        with { p in
            var h = Tessera_V1_HistogramSpec()
            (h.x, h.xBins, h.xMin, h.xMax) = (x, UInt32(clamping: bins), range.lowerBound, range.upperBound)
            p.histogram = h
        }
    }

    /// A 2-D histogram with `np.histogram2d`'s bins.
    public func histogram2D(x: String, bins xBins: Int, range xRange: ClosedRange<Double>,
                            y: String, bins yBins: Int, range yRange: ClosedRange<Double>) -> CatalogQuery {
        with { p in
            var h = Tessera_V1_HistogramSpec()
            (h.x, h.xBins, h.xMin, h.xMax) = (x, UInt32(clamping: xBins), xRange.lowerBound, xRange.upperBound)
            (h.y, h.yBins, h.yMin, h.yMax) = (y, UInt32(clamping: yBins), yRange.lowerBound, yRange.upperBound)
            p.histogram = h
        }
    }

    /// Rows per HEALPix (nested) pixel of `order`, and the mean of `mean` per pixel if given.
    public func skyMap(order: Int, mean: String? = nil) -> CatalogQuery {
        with { p in
            var m = Tessera_V1_SkyMapSpec()
            m.order = UInt32(clamping: order)
            m.expression = mean ?? ""
            p.skyMap = m
        }
    }

    /// Rows back, with these columns or expressions (all columns when empty).
    public func select(_ columns: [String]) -> CatalogQuery {
        with { p in p.rows.select = columns }
    }

    /// At most `n` rows: the first in spatial order, or the top `n` after ``sorted(by:descending:)``.
    public func limit(_ n: Int) -> CatalogQuery {
        with { p in p.rows.limit = UInt64(max(0, n)) }
    }

    public func sorted(by key: String, descending: Bool = false) -> CatalogQuery {
        with { p in
            p.rows.sortBy = key
            p.rows.descending = descending
        }
    }

    /// A seeded random sample of the rows (the same rows whatever the sharding).
    public func sample(fraction: Double, seed: UInt64 = 0) -> CatalogQuery {
        with { p in
            p.rows.sampleFraction = fraction
            p.rows.sampleSeed = seed
        }
    }

    /// The most rows a collect may return before it fails (default 1,000,000).
    public func maxRows(_ n: Int) -> CatalogQuery {
        with { p in p.rows.maxRows = UInt64(max(0, n)) }
    }

    /// A cutout of an image dataset around the region's centre, in `bands` (empty: all), of
    /// `width × height` pixels (0: the region's extent).
    public func cutout(bands: [String] = [], width: Int = 0, height: Int = 0) -> CatalogQuery {
        var q = self
        q.plan.cutout.bands = bands
        q.plan.cutout.width = UInt32(clamping: max(0, width))
        q.plan.cutout.height = UInt32(clamping: max(0, height))
        return q
    }

    /// Forced aperture photometry of each row on an image dataset, in `bands` (empty: all): the
    /// rows gain `BAND_apFlux`, `BAND_apFluxErr`, `BAND_apBackground` and `BAND_apFlag`, which
    /// the filter, aggregates and selected columns may read. The annulus defaults to 2 to 3.5
    /// times the aperture.
    public func forcedPhotometry(on images: String, bands: [String] = [], apertureArcsec: Double,
                                 annulusArcsec: ClosedRange<Double>? = nil) -> CatalogQuery {
        var q = self
        q.plan.forcedPhotometry.images = images
        q.plan.forcedPhotometry.bands = bands
        q.plan.forcedPhotometry.apertureArcsec = apertureArcsec
        q.plan.forcedPhotometry.annulusInnerArcsec = annulusArcsec?.lowerBound ?? 0
        q.plan.forcedPhotometry.annulusOuterArcsec = annulusArcsec?.upperBound ?? 0
        return q
    }

    /// A stack of `size` × `size` pixel cutouts of `band` of an image dataset, centred on every
    /// row of the question (`size` odd). A median needs its histogram's range, nJy.
    public func stack(on images: String, band: String, size: Int, kind: StackKind = .stackMean, medianRange: ClosedRange<Double>? = nil) -> CatalogQuery {
        var q = self
        q.plan.stack.images = images
        q.plan.stack.band = band
        q.plan.stack.size = UInt32(clamping: max(0, size))
        q.plan.stack.kind = kind
        q.plan.stack.medianMin = medianRange?.lowerBound ?? 0
        q.plan.stack.medianMax = medianRange?.upperBound ?? 0
        return q
    }

    /// Pixel statistics of an image dataset, per band (empty: all): quantiles, the masked
    /// fraction, and a depth map at HEALPix `mapOrder` (0: 10).
    public func imageStatistics(bands: [String] = [], mapOrder: Int = 0) -> CatalogQuery {
        var q = self
        q.plan.imageStatistics.bands = bands
        q.plan.imageStatistics.mapOrder = UInt32(clamping: max(0, mapOrder))
        return q
    }

    /// An all-sky HiPS of one band of an image dataset: tiles of `tileWidth` pixels from `order`
    /// (0: the coadd's own resolution) up to order 3, PNG tiles stretched (arcsinh) from `cut`
    /// (nJy). Each tile is an answer of its own as it is made: ``SchedulerConnection/makeHiPS``
    /// writes them into a HiPS tree.
    public func hips(band: String, tileWidth: Int = 512, order: Int = 0, cut: ClosedRange<Double>) -> CatalogQuery {
        var q = self
        q.plan.hips.band = band
        q.plan.hips.tileWidth = UInt32(clamping: max(0, tileWidth))
        q.plan.hips.order = UInt32(clamping: max(0, order))
        q.plan.hips.cutLow = cut.lowerBound
        q.plan.hips.cutHigh = cut.upperBound
        return q
    }

    /// Runs it in class `c`: interactive questions go first and must fit the cluster's
    /// interactive budget; batch ones run in what the others leave.
    public func priority(_ c: PriorityClass) -> CatalogQuery {
        var q = self
        q.priority = c
        return q
    }

    /// Partial answers while the job runs, at most one per `seconds` (at least 0.1).
    public func progressive(every seconds: Double = 0.1) -> CatalogQuery {
        with { p in
            p.progressive = true
            p.progressInterval = seconds
        }
    }

    /// The plan as submitted.
    public var wirePlan: Tessera_V1_Plan {
        var p = Tessera_V1_Plan()
        p.catalog = plan
        return p
    }
}

/// One aggregate of a catalog question.
public struct Aggregate: Sendable {
    public let spec: AggregateSpec

    init(_ f: AggregateFunction, _ e: String, q: Double = 0) {
        var s = AggregateSpec()
        s.function = f
        s.expression = e
        s.quantile = q
        spec = s
    }

    /// Rows, or non-NaN values of an expression.
    public static func count(_ expression: String = "") -> Aggregate { Aggregate(.aggCount, expression) }
    public static func sum(_ e: String) -> Aggregate { Aggregate(.aggSum, e) }
    public static func mean(_ e: String) -> Aggregate { Aggregate(.aggMean, e) }
    public static func min(_ e: String) -> Aggregate { Aggregate(.aggMin, e) }
    public static func max(_ e: String) -> Aggregate { Aggregate(.aggMax, e) }
    /// Sample variance (ddof = 1, as pandas).
    public static func variance(_ e: String) -> Aggregate { Aggregate(.aggVar, e) }
    public static func std(_ e: String) -> Aggregate { Aggregate(.aggStd, e) }
    /// Within 0.5% relative of the exact quantile (DDSketch).
    public static func quantile(_ q: Double, _ e: String) -> Aggregate { Aggregate(.aggQuantile, e, q: q) }
    public static func median(_ e: String) -> Aggregate { quantile(0.5, e) }

    /// Parses the command line's form: `count`, `count:EXPR`, `mean:EXPR`, `std:EXPR`,
    /// `var:EXPR`, `sum:EXPR`, `min:EXPR`, `max:EXPR`, `median:EXPR`, `q0.9:EXPR`.
    public init(parsing text: String) throws(CatalogQueryError) {
        let parts = text.split(separator: ":", maxSplits: 1).map(String.init)
        let name = parts.first ?? ""
        let e = parts.count > 1 ? parts[1] : ""
        switch name {
        case "count": self = .count(e)
        case "sum": self = .sum(e)
        case "mean": self = .mean(e)
        case "min": self = .min(e)
        case "max": self = .max(e)
        case "var": self = .variance(e)
        case "std": self = .std(e)
        case "median": self = .median(e)
        default:
            if name.hasPrefix("q"), let q = Double(name.dropFirst()) {
                self = .quantile(q, e)
            } else {
                throw CatalogQueryError("unknown aggregate `\(text)`: use count, count:EXPR, sum:, mean:, min:, max:, var:, std:, median: or qP: (e.g. q0.9:EXPR)")
            }
        }
        if name != "count" && e.isEmpty { throw CatalogQueryError("the aggregate `\(name)` needs an expression: `\(name):EXPR`") }
    }
}

/// A partial or final answer of a running catalog question.
public struct CatalogUpdate: Sendable {
    public let result: CatalogResult
    /// The last update: the complete answer.
    public let isFinal: Bool
    /// Seconds since the question was sent.
    public let seconds: Double
    /// Tasks of the job finished so far, and in all (shard scans and merges).
    public let tasksDone: Int
    public let taskCount: Int
}
