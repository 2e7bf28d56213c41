/// The syntax tree of the ADQL subset Tessera answers (ADQL 2.1, IVOA Recommendation 2023).
///
/// Every node keeps where it starts in the query text, so that the translator's errors (an
/// unknown column, an unsupported function) point at the place as the parser's do.

/// A place in the query text: a character offset, and its line and column (from 1).
public struct ADQLPosition: Sendable, Equatable, CustomStringConvertible {
    public var offset: Int
    public var line: Int
    public var column: Int

    public init(offset: Int, line: Int, column: Int) {
        (self.offset, self.line, self.column) = (offset, line, column)
    }

    public var description: String { "line \(line), column \(column)" }
}

/// A query that cannot be answered: malformed, outside the subset, or naming what does not
/// exist. TAP reports it as an ERROR VOTable with this message.
public struct ADQLError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public var position: ADQLPosition?

    public init(_ message: String, at position: ADQLPosition? = nil) {
        self.message = message
        self.position = position
    }

    public var description: String {
        guard let position else { return message }
        return "\(message) (at \(position))"
    }
}

/// One `SELECT` statement.
public struct ADQLQuery: Sendable {
    public var top: Int?
    public var items: [ADQLSelectItem]
    public var from: ADQLTableReference
    /// The second table of a `JOIN`, with its `ON` condition (the cross-match form).
    public var join: ADQLJoin?
    public var whereClause: ADQLExpression?
    public var groupBy: [ADQLExpression]
    public var orderBy: [ADQLOrderItem]
}

public enum ADQLSelectItem: Sendable {
    /// `*` or `alias.*`.
    case all(table: String?, ADQLPosition)
    case expression(ADQLExpression, alias: String?)
}

public struct ADQLTableReference: Sendable {
    public var schema: String?
    public var name: String
    public var alias: String?
    public var position: ADQLPosition

    /// `schema.name` as written (without the alias).
    public var qualifiedName: String { schema.map { "\($0).\(name)" } ?? name }
}

public struct ADQLJoin: Sendable {
    public var table: ADQLTableReference
    public var condition: ADQLExpression
}

public struct ADQLOrderItem: Sendable {
    public var key: ADQLExpression
    public var descending: Bool
}

/// An expression: a value, or a condition (ADQL keeps them apart in its grammar; the parser
/// takes both in one precedence ladder and the translator checks which is which).
public struct ADQLExpression: Sendable {
    public var kind: Kind
    public var position: ADQLPosition
    /// Levels of the tree under and including this node (a leaf is 1): the translator and the
    /// engine recurse over it, so the parser bounds it.
    public let depth: Int

    public init(_ kind: Kind, at position: ADQLPosition) {
        self.kind = kind
        self.position = position
        depth = 1 + Self.children(of: kind).reduce(0) { max($0, $1.depth) }
    }

    static func children(of kind: Kind) -> [ADQLExpression] {
        switch kind {
        case .number, .string, .null, .column, .countAll: []
        case .negate(let e), .not(let e), .isNull(let e, _), .aggregate(_, let e, _): [e]
        case .binary(_, let a, let b), .and(let a, let b), .or(let a, let b), .like(let a, let b, _, _): [a, b]
        case .between(let a, let b, let c, _): [a, b, c]
        case .inList(let a, let l, _): [a] + l
        case .call(_, let args): args
        }
    }

    public indirect enum Kind: Sendable {
        /// A numeric literal, with its text as written (so that it reaches the plan unrounded).
        case number(Double, text: String)
        case string(String)
        case null
        /// `name` or `table.name` (delimited names keep their case).
        case column(table: String?, name: String)
        case negate(ADQLExpression)
        /// `+ - * /` and the comparisons `= <> < > <= >=` (`!=` reads as `<>`).
        case binary(String, ADQLExpression, ADQLExpression)
        case and(ADQLExpression, ADQLExpression)
        case or(ADQLExpression, ADQLExpression)
        case not(ADQLExpression)
        case between(ADQLExpression, low: ADQLExpression, high: ADQLExpression, negated: Bool)
        case inList(ADQLExpression, [ADQLExpression], negated: Bool)
        case isNull(ADQLExpression, negated: Bool)
        case like(ADQLExpression, pattern: ADQLExpression, negated: Bool, caseInsensitive: Bool)
        /// A function call; the name upper-cased (`CONTAINS`, `POINT`, `ABS`, a UDF).
        case call(String, [ADQLExpression])
        /// `COUNT(*)`.
        case countAll
        /// `COUNT`, `SUM`, `AVG`, `MIN` or `MAX` of an expression.
        case aggregate(String, ADQLExpression, distinct: Bool)
    }

    /// Whether an aggregate appears anywhere in it.
    public var containsAggregate: Bool {
        switch kind {
        case .countAll, .aggregate: return true
        case .number, .string, .null, .column: return false
        case .negate(let e), .not(let e), .isNull(let e, _): return e.containsAggregate
        case .binary(_, let a, let b), .and(let a, let b), .or(let a, let b): return a.containsAggregate || b.containsAggregate
        case .like(let a, let b, _, _): return a.containsAggregate || b.containsAggregate
        case .between(let a, let b, let c, _): return a.containsAggregate || b.containsAggregate || c.containsAggregate
        case .inList(let a, let l, _): return a.containsAggregate || l.contains { $0.containsAggregate }
        case .call(_, let args): return args.contains { $0.containsAggregate }
        }
    }
}
