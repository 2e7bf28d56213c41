import TesseraProtocol

/// A catalog question: rows of `dataset` in a cone that pass `filter`, counted, or the moments
/// (count, mean, spread, min, max, sum) of a numeric expression over them.
public struct CatalogQuery: Sendable {
    public var dataset: String
    public var filter = ""
    /// RA, Dec and radius in degrees.
    public var cone: (ra: Double, dec: Double, radius: Double)?
    /// Aggregate this expression's moments instead of counting.
    public var moments: String?

    public init(dataset: String, filter: String = "", cone: (ra: Double, dec: Double, radius: Double)? = nil, moments: String? = nil) {
        self.dataset = dataset
        self.filter = filter
        self.cone = cone
        self.moments = moments
    }

    /// The plan the scheduler expands against its registry.
    public var plan: Tessera_V1_Plan {
        var q = Tessera_V1_CatalogQueryPlan()
        q.dataset = dataset
        q.filter = filter
        if let cone { (q.coneRa, q.coneDec, q.coneRadius) = cone }
        if let moments {
            q.aggregate = .aggregateMoments
            q.expression = moments
        }
        var p = Tessera_V1_Plan()
        p.catalog = q
        return p
    }
}
