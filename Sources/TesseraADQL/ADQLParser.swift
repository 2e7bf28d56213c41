/// A recursive-descent parser for Tessera's ADQL subset.
///
/// The text comes from anyone on the web, so the parser is linear in its length, refuses text
/// over ``maxCharacters``, and refuses nesting deeper than ``maxDepth`` (each level is a stack
/// frame here and in the translator). Anything outside the subset gets an error naming the
/// construct and its place: the grammar knows the whole of ADQL's keywords, so `UNION`,
/// `HAVING` or `OFFSET` are refused as unsupported, not reported as a syntax error.
public struct ADQLParser {
    /// The longest query text accepted, in characters.
    public static let maxCharacters = 65_536
    /// The deepest nesting of parentheses, calls and operators accepted.
    public static let maxDepth = 64
    /// The longest `IN (...)` list accepted (it becomes a chain of comparisons, which the
    /// engine takes at most 256 deep).
    public static let maxInList = 250

    enum Token: Equatable {
        case identifier(String, delimited: Bool)
        case keyword(String)
        case number(Double, String)
        case string(String)
        case symbol(String)
        case end
    }

    /// ADQL's reserved words this parser knows (a name that is one must be written in double quotes).
    public static let keywords: Set<String> = [
        "SELECT", "TOP", "DISTINCT", "ALL", "FROM", "WHERE", "GROUP", "BY", "HAVING", "ORDER", "ASC", "DESC",
        "AS", "AND", "OR", "NOT", "BETWEEN", "IN", "IS", "NULL", "JOIN", "INNER", "LEFT", "RIGHT", "FULL",
        "OUTER", "NATURAL", "CROSS", "ON", "USING", "OFFSET", "UNION", "INTERSECT", "EXCEPT", "LIKE", "ILIKE",
        "CASE", "WHEN", "THEN", "ELSE", "END", "EXISTS", "WITH", "LIMIT", "COUNT", "SUM", "AVG", "MIN", "MAX",
    ]

    /// ADQL 2.0's reserved words (SQL-92's and ADQL's own, §2.1.2): a table or column named
    /// one of these, or not a regular identifier, is written in double quotes.
    public static let reservedWords: Set<String> = [
        "ABSOLUTE", "ACTION", "ADD", "ALL", "ALLOCATE", "ALTER", "AND", "ANY", "ARE", "AS", "ASC",
        "ASSERTION", "AT", "AUTHORIZATION", "AVG", "BEGIN", "BETWEEN", "BIT", "BIT_LENGTH", "BOTH", "BY",
        "CASCADE", "CASCADED", "CASE", "CAST", "CATALOG", "CHAR", "CHARACTER", "CHAR_LENGTH",
        "CHARACTER_LENGTH", "CHECK", "CLOSE", "COALESCE", "COLLATE", "COLLATION", "COLUMN", "COMMIT",
        "CONNECT", "CONNECTION", "CONSTRAINT", "CONSTRAINTS", "CONTINUE", "CONVERT", "CORRESPONDING",
        "COUNT", "CREATE", "CROSS", "CURRENT", "CURRENT_DATE", "CURRENT_TIME", "CURRENT_TIMESTAMP",
        "CURRENT_USER", "CURSOR", "DATE", "DAY", "DEALLOCATE", "DECIMAL", "DECLARE", "DEFAULT", "DEFERRABLE",
        "DEFERRED", "DELETE", "DESC", "DESCRIBE", "DESCRIPTOR", "DIAGNOSTICS", "DISCONNECT", "DISTINCT",
        "DOMAIN", "DOUBLE", "DROP", "ELSE", "END", "END-EXEC", "ESCAPE", "EXCEPT", "EXCEPTION", "EXEC",
        "EXECUTE", "EXISTS", "EXTERNAL", "EXTRACT", "FALSE", "FETCH", "FIRST", "FLOAT", "FOR", "FOREIGN",
        "FOUND", "FROM", "FULL", "GET", "GLOBAL", "GO", "GOTO", "GRANT", "GROUP", "HAVING", "HOUR",
        "IDENTITY", "IMMEDIATE", "IN", "INDICATOR", "INITIALLY", "INNER", "INPUT", "INSENSITIVE", "INSERT",
        "INT", "INTEGER", "INTERSECT", "INTERVAL", "INTO", "IS", "ISOLATION", "JOIN", "KEY", "LANGUAGE",
        "LAST", "LEADING", "LEFT", "LEVEL", "LIKE", "LOCAL", "LOWER", "MATCH", "MAX", "MIN", "MINUTE",
        "MODULE", "MONTH", "NAMES", "NATIONAL", "NATURAL", "NCHAR", "NEXT", "NO", "NOT", "NULL", "NULLIF",
        "NUMERIC", "OCTET_LENGTH", "OF", "ON", "ONLY", "OPEN", "OPTION", "OR", "ORDER", "OUTER", "OUTPUT",
        "OVERLAPS", "PAD", "PARTIAL", "POSITION", "PRECISION", "PREPARE", "PRESERVE", "PRIMARY", "PRIOR",
        "PRIVILEGES", "PROCEDURE", "PUBLIC", "READ", "REAL", "REFERENCES", "RELATIVE", "RESTRICT", "REVOKE",
        "RIGHT", "ROLLBACK", "ROWS", "SCHEMA", "SCROLL", "SECOND", "SECTION", "SELECT", "SESSION",
        "SESSION_USER", "SET", "SIZE", "SMALLINT", "SOME", "SPACE", "SQL", "SQLCODE", "SQLERROR", "SQLSTATE",
        "SUBSTRING", "SUM", "SYSTEM_USER", "TABLE", "TEMPORARY", "THEN", "TIME", "TIMESTAMP",
        "TIMEZONE_HOUR", "TIMEZONE_MINUTE", "TO", "TRAILING", "TRANSACTION", "TRANSLATE", "TRANSLATION",
        "TRIM", "TRUE", "UNION", "UNIQUE", "UNKNOWN", "UPDATE", "UPPER", "USAGE", "USER", "USING", "VALUE",
        "VALUES", "VARCHAR", "VARYING", "VIEW", "WHEN", "WHENEVER", "WHERE", "WITH", "WORK", "WRITE", "YEAR",
        "ZONE", "ABS", "ACOS", "AREA", "ASIN", "ATAN", "ATAN2", "BOX", "CEILING", "CENTROID", "CIRCLE",
        "CONTAINS", "COORD1", "COORD2", "COORDSYS", "COS", "COT", "DEGREES", "DISTANCE", "EXP", "FLOOR",
        "INTERSECTS", "LOG", "LOG10", "MOD", "PI", "POINT", "POLYGON", "POWER", "RADIANS", "REGION", "RAND",
        "ROUND", "SIN", "SQRT", "TOP", "TAN", "TRUNCATE",
    ]

    /// `name` as ADQL must write it: as it is when a regular identifier, else in double quotes.
    public static func delimited(_ name: String) -> String {
        let regular = name.first.map { $0.isASCII && $0.isLetter } == true
            && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") }
            && !reservedWords.contains(name.uppercased()) && !keywords.contains(name.uppercased())
        return regular ? name : "\"" + name.split(separator: "\"", omittingEmptySubsequences: false).joined(separator: "\"\"") + "\""
    }

    /// The text's Unicode scalars (positions count them).
    let characters: [Unicode.Scalar]
    var tokens: [(Token, Int)] = []
    var index = 0
    var depth = 0

    /// Parses one `SELECT` statement (a trailing `;` allowed).
    public static func parse(_ text: String) throws(ADQLError) -> ADQLQuery {
        guard text.utf8.count <= 4 * maxCharacters, text.unicodeScalars.count <= maxCharacters else {
            throw ADQLError("the query is \(text.unicodeScalars.count) characters long, over the limit of \(maxCharacters)")
        }
        var p = ADQLParser(characters: Array(text.unicodeScalars))
        try p.tokenize()
        let q = try p.parseQuery()
        if p.current == .symbol(";") { p.index += 1 }
        guard p.current == .end else { throw p.unexpected("after the end of the query") }
        return q
    }

    /// Where each line starts (offsets of the characters after each newline).
    let lineStarts: [Int]

    init(characters: [Unicode.Scalar]) {
        self.characters = characters
        lineStarts = [0] + characters.indices.filter { characters[$0] == "\n" }.map { $0 + 1 }
    }

    // MARK: Tokens

    /// A place's line and column, by binary search of the lines' starts (every node records
    /// its place, so a scan from the start each time would make parsing quadratic).
    func position(_ offset: Int) -> ADQLPosition {
        var lo = 0, hi = lineStarts.count
        while hi - lo > 1 {
            let mid = (lo + hi) / 2
            if lineStarts[mid] <= offset { lo = mid } else { hi = mid }
        }
        return ADQLPosition(offset: offset, line: lo + 1, column: offset - lineStarts[lo] + 1)
    }

    func fail(_ message: String, at offset: Int) -> ADQLError { ADQLError(message, at: position(offset)) }

    static func isDigit(_ c: Unicode.Scalar) -> Bool { c.value >= 48 && c.value <= 57 }

    /// A letter (ASCII at once; others by their Unicode properties).
    static func isLetter(_ c: Unicode.Scalar) -> Bool {
        let v = c.value | 0x20
        if v >= 97 && v <= 122 { return true }
        return c.value >= 128 && c.properties.isAlphabetic
    }

    /// Combining marks and other scripts' digits may continue a name (not start one).
    static func continuesName(_ c: Unicode.Scalar) -> Bool {
        guard c.value >= 128 else { return false }
        switch c.properties.generalCategory {
        case .nonspacingMark, .spacingMark, .decimalNumber: return true
        default: return false
        }
    }

    static func text(_ s: ArraySlice<Unicode.Scalar>) -> String {
        // Names and numbers are nearly always ASCII: their bytes at once, without the generic
        // append of scalars (a tenth of a small query's parse).
        if s.allSatisfy(\.isASCII) {
            return String(unsafeUninitializedCapacity: s.count) { bytes in
                for (k, scalar) in zip(bytes.indices, s) { bytes[k] = UInt8(truncatingIfNeeded: scalar.value) }
                return s.count
            }
        }
        var out = ""
        out.unicodeScalars.append(contentsOf: s)
        return out
    }

    /// Cuts the text into tokens, one pass over its Unicode scalars.
    mutating func tokenize() throws(ADQLError) {
        let c = characters
        var i = 0
        while i < c.count {
            let ch = c[i]
            if ch.value < 128 ? (ch == " " || (9...13).contains(ch.value)) : ch.properties.isWhitespace { i += 1; continue }
            if ch == "-" && i + 1 < c.count && c[i + 1] == "-" {
                while i < c.count && c[i] != "\n" { i += 1 }
                continue
            }
            let start = i
            if Self.isDigit(ch) || (ch == "." && i + 1 < c.count && Self.isDigit(c[i + 1])) {
                while i < c.count && (Self.isDigit(c[i]) || c[i] == ".") { i += 1 }
                if i < c.count && (c[i] == "e" || c[i] == "E") {
                    var j = i + 1
                    if j < c.count && (c[j] == "+" || c[j] == "-") { j += 1 }
                    if j < c.count && Self.isDigit(c[j]) {
                        i = j
                        while i < c.count && Self.isDigit(c[i]) { i += 1 }
                    }
                }
                let text = Self.text(c[start..<i])
                guard let v = Double(text), v.isFinite else { throw fail("`\(text.prefix(40))` is not a number", at: start) }
                tokens.append((.number(v, text), start))
                continue
            }
            if Self.isLetter(ch) || ch == "_" {
                while i < c.count && (Self.isLetter(c[i]) || Self.isDigit(c[i]) || c[i] == "_" || Self.continuesName(c[i])) { i += 1 }
                guard i - start <= 256 else { throw fail("a name of \(i - start) characters is over the limit of 256", at: start) }
                let word = Self.text(c[start..<i])
                let upper = word.uppercased()
                tokens.append((Self.keywords.contains(upper) ? .keyword(upper) : .identifier(word, delimited: false), start))
                continue
            }
            if ch == "\"" || ch == "'" {
                // A delimited name ("...") or a string ('...'); a doubled quote stands for itself.
                var s = String.UnicodeScalarView()
                i += 1
                var closed = false
                while i < c.count {
                    if c[i] == ch {
                        if i + 1 < c.count && c[i + 1] == ch { s.append(ch); i += 2; continue }
                        closed = true
                        i += 1
                        break
                    }
                    s.append(c[i])
                    i += 1
                }
                guard closed else {
                    throw fail(ch == "'" ? "a string is not closed: a `'` is missing" : "a delimited name is not closed: a `\"` is missing", at: start)
                }
                if ch == "'" {
                    tokens.append((.string(String(s)), start))
                } else {
                    guard !s.isEmpty, s.count <= 256 else { throw fail("a delimited name must have 1 to 256 characters", at: start) }
                    tokens.append((.identifier(String(s), delimited: true), start))
                }
                continue
            }
            let two = i + 1 < c.count ? Self.text(c[i...(i + 1)]) : ""
            if ["<=", ">=", "<>", "!=", "||"].contains(two) {
                tokens.append((.symbol(two == "!=" ? "<>" : two), i))
                i += 2
                continue
            }
            guard "(),.*+-/=<>;".unicodeScalars.contains(ch) else {
                throw fail("unexpected character `\(ch)`", at: i)
            }
            tokens.append((.symbol(String(ch)), i))
            i += 1
        }
        tokens.append((.end, c.count))
    }

    var current: Token { tokens[index].0 }
    var offset: Int { tokens[index].1 }
    var here: ADQLPosition { position(offset) }

    func describe(_ t: Token) -> String {
        switch t {
        case .identifier(let s, _): "`\(s)`"
        case .keyword(let k): "`\(k)`"
        case .number(_, let text): "`\(text)`"
        case .string(let s): "'\(s.prefix(40))'"
        case .symbol(let s): "`\(s)`"
        case .end: "the end of the query"
        }
    }

    func unexpected(_ context: String) -> ADQLError {
        fail("unexpected \(describe(current)) \(context)", at: offset)
    }

    mutating func accept(_ keyword: String) -> Bool {
        if current == .keyword(keyword) { index += 1; return true }
        return false
    }

    mutating func acceptSymbol(_ s: String) -> Bool {
        if current == .symbol(s) { index += 1; return true }
        return false
    }

    mutating func expect(_ keyword: String, _ context: String) throws(ADQLError) {
        guard accept(keyword) else { throw unexpected("\(context): expected `\(keyword)`") }
    }

    mutating func expectSymbol(_ s: String, _ context: String) throws(ADQLError) {
        guard acceptSymbol(s) else { throw unexpected("\(context): expected `\(s)`") }
    }

    func unsupported(_ what: String, _ hint: String = "") -> ADQLError {
        fail("\(what) is not supported by this service\(hint.isEmpty ? "" : ": \(hint)")", at: offset)
    }

    mutating func identifier(_ context: String) throws(ADQLError) -> String {
        if case .identifier(let s, _) = current {
            index += 1
            return s
        }
        if case .keyword(let k) = current {
            throw fail("`\(k)` is a reserved word \(context); write it in double quotes to use it as a name", at: offset)
        }
        throw unexpected(context)
    }

    // MARK: Statement

    mutating func parseQuery() throws(ADQLError) -> ADQLQuery {
        if case .keyword("WITH") = current { throw unsupported("`WITH` (common table expressions)") }
        try expect("SELECT", "at the start of the query")
        if current == .keyword("DISTINCT") { throw unsupported("`SELECT DISTINCT`", "use GROUP BY on the column") }
        _ = accept("ALL")
        var top: Int?
        if accept("TOP") {
            guard case .number(let v, let text) = current, v == v.rounded(), v >= 0, v <= 1e15 else {
                throw unexpected("after `TOP`: expected a whole number of rows")
            }
            top = Int(v)
            _ = text
            index += 1
        }
        var items: [ADQLSelectItem] = []
        repeat {
            items.append(try parseSelectItem())
        } while acceptSymbol(",")
        try expect("FROM", "after the select list")
        let from = try parseTable()
        var join: ADQLJoin?
        switch current {
        case .keyword("NATURAL"), .keyword("LEFT"), .keyword("RIGHT"), .keyword("FULL"), .keyword("OUTER"), .keyword("CROSS"):
            throw unsupported("this kind of join", "only `[INNER] JOIN table ON` a positional condition (a cross-match) is")
        case .symbol(","):
            throw unsupported("a list of tables in FROM", "join two tables with `JOIN table ON DISTANCE(...) < r`")
        case .keyword("INNER"), .keyword("JOIN"):
            _ = accept("INNER")
            try expect("JOIN", "after `INNER`")
            let right = try parseTable()
            if current == .keyword("USING") { throw unsupported("`JOIN ... USING`", "join on a positional condition with `ON`") }
            try expect("ON", "after the joined table")
            join = ADQLJoin(table: right, condition: try parseCondition())
        default:
            break
        }
        if case .keyword("JOIN") = current { throw unsupported("a join of more than two tables") }
        var whereClause: ADQLExpression?
        if accept("WHERE") { whereClause = try parseCondition() }
        var groupBy: [ADQLExpression] = []
        if accept("GROUP") {
            try expect("BY", "after `GROUP`")
            repeat { groupBy.append(try parseValue()) } while acceptSymbol(",")
        }
        if current == .keyword("HAVING") { throw unsupported("`HAVING`", "filter rows with WHERE before grouping") }
        var orderBy: [ADQLOrderItem] = []
        if accept("ORDER") {
            try expect("BY", "after `ORDER`")
            repeat {
                let key = try parseValue()
                var descending = false
                if accept("DESC") { descending = true } else { _ = accept("ASC") }
                orderBy.append(ADQLOrderItem(key: key, descending: descending))
            } while acceptSymbol(",")
        }
        switch current {
        case .keyword("OFFSET"): throw unsupported("`OFFSET`")
        case .keyword("LIMIT"): throw unsupported("`LIMIT` (it is not ADQL)", "use `SELECT TOP n`")
        case .keyword("UNION"), .keyword("INTERSECT"), .keyword("EXCEPT"): throw unsupported("set operations (`UNION`, `INTERSECT`, `EXCEPT`)")
        default: break
        }
        return ADQLQuery(top: top, items: items, from: from, join: join, whereClause: whereClause, groupBy: groupBy, orderBy: orderBy)
    }

    mutating func parseSelectItem() throws(ADQLError) -> ADQLSelectItem {
        let start = here
        if acceptSymbol("*") { return .all(table: nil, start) }
        if case .identifier(let t, _) = current, tokens[index + 1].0 == .symbol("."), tokens.count > index + 2, tokens[index + 2].0 == .symbol("*") {
            index += 3
            return .all(table: t, start)
        }
        let e = try parseValue()
        return .expression(e, alias: try parseAlias("an alias"))
    }

    /// `[AS] name` after a select item or a table, if there.
    mutating func parseAlias(_ what: String) throws(ADQLError) -> String? {
        if accept("AS") { return try identifier("as \(what) after `AS`") }
        if case .identifier(let a, _) = current {
            index += 1
            return a
        }
        return nil
    }

    mutating func parseTable() throws(ADQLError) -> ADQLTableReference {
        let start = here
        if current == .symbol("(") { throw unsupported("a subquery in FROM") }
        var name = try identifier("where a table name belongs")
        var schema: String?
        if acceptSymbol(".") {
            schema = name
            name = try identifier("after `\(schema ?? "")`: expected a table name")
            if current == .symbol(".") { throw unsupported("a catalog name before the schema") }
        }
        return ADQLTableReference(schema: schema, name: name, alias: try parseAlias("a table alias"), position: start)
    }

    // MARK: Expressions

    mutating func nested<T>(_ body: (inout ADQLParser) throws(ADQLError) -> T) throws(ADQLError) -> T {
        depth += 1
        defer { depth -= 1 }
        guard depth <= Self.maxDepth else {
            throw fail("the query nests deeper than the limit of \(Self.maxDepth) (parentheses, calls and operators all count)", at: offset)
        }
        return try body(&self)
    }

    /// A node, refused when the tree under it is deeper than ``maxDepth`` (a chain of a
    /// thousand `+` is as deep as a thousand parentheses).
    func node(_ kind: ADQLExpression.Kind, at: ADQLPosition) throws(ADQLError) -> ADQLExpression {
        let e = ADQLExpression(kind, at: at)
        guard e.depth <= Self.maxDepth else {
            throw ADQLError("the query nests deeper than the limit of \(Self.maxDepth) (parentheses, calls and chained operators all count)", at: at)
        }
        return e
    }

    mutating func parseCondition() throws(ADQLError) -> ADQLExpression {
        try nested { p throws(ADQLError) in
            var left = try p.parseAnd()
            while p.current == .keyword("OR") {
                let at = p.here
                p.index += 1
                let right = try p.parseAnd()
                left = try p.node(.or(left, right), at: at)
            }
            return left
        }
    }

    mutating func parseAnd() throws(ADQLError) -> ADQLExpression {
        var left = try parseNot()
        while current == .keyword("AND") {
            let at = here
            index += 1
            let right = try parseNot()
            left = try node(.and(left, right), at: at)
        }
        return left
    }

    mutating func parseNot() throws(ADQLError) -> ADQLExpression {
        if current == .keyword("NOT") {
            let at = here
            index += 1
            let inner = try nested { p throws(ADQLError) in try p.parseNot() }
            return try node(.not(inner), at: at)
        }
        if current == .keyword("EXISTS") { throw unsupported("`EXISTS` (subqueries)") }
        return try parsePredicate()
    }

    mutating func parsePredicate() throws(ADQLError) -> ADQLExpression {
        let left = try parseValue()
        let at = here
        switch current {
        case .symbol(let s) where ["=", "<>", "<", ">", "<=", ">="].contains(s):
            index += 1
            return try node(.binary(s, left, try parseValue()), at: at)
        case .keyword("IS"):
            index += 1
            let negated = accept("NOT")
            try expect("NULL", "after `IS`")
            return try node(.isNull(left, negated: negated), at: at)
        case .keyword("NOT"), .keyword("BETWEEN"), .keyword("IN"), .keyword("LIKE"), .keyword("ILIKE"):
            let negated = accept("NOT")
            if accept("BETWEEN") {
                let low = try parseValue()
                try expect("AND", "in `BETWEEN low AND high`")
                let high = try parseValue()
                return try node(.between(left, low: low, high: high, negated: negated), at: at)
            }
            if accept("IN") {
                try expectSymbol("(", "after `IN`")
                if current == .keyword("SELECT") { throw unsupported("a subquery in `IN`") }
                var list: [ADQLExpression] = []
                repeat {
                    list.append(try parseValue())
                    guard list.count <= Self.maxInList else { throw fail("an `IN` list longer than the limit of \(Self.maxInList) values", at: at.offset) }
                } while acceptSymbol(",")
                try expectSymbol(")", "to close the `IN` list")
                return try node(.inList(left, list, negated: negated), at: at)
            }
            if current == .keyword("LIKE") || current == .keyword("ILIKE") {
                let insensitive = current == .keyword("ILIKE")
                index += 1
                return try node(.like(left, pattern: try parseValue(), negated: negated, caseInsensitive: insensitive), at: at)
            }
            throw unexpected("after `NOT`: expected `BETWEEN`, `IN` or `LIKE`")
        default:
            return left
        }
    }

    mutating func parseValue() throws(ADQLError) -> ADQLExpression {
        try nested { p throws(ADQLError) in
            var left = try p.parseTerm()
            while case .symbol(let s) = p.current, s == "+" || s == "-" || s == "||" {
                if s == "||" { throw p.unsupported("string concatenation `||`") }
                let at = p.here
                p.index += 1
                left = try p.node(.binary(s, left, try p.parseTerm()), at: at)
            }
            return left
        }
    }

    mutating func parseTerm() throws(ADQLError) -> ADQLExpression {
        var left = try parseFactor()
        while case .symbol(let s) = current, s == "*" || s == "/" {
            let at = here
            index += 1
            left = try node(.binary(s, left, try parseFactor()), at: at)
        }
        return left
    }

    mutating func parseFactor() throws(ADQLError) -> ADQLExpression {
        let at = here
        if acceptSymbol("-") {
            let inner = try nested { p throws(ADQLError) in try p.parseFactor() }
            if case .number(let v, let text) = inner.kind { return ADQLExpression(.number(-v, text: "-" + text), at: at) }
            return try node(.negate(inner), at: at)
        }
        if acceptSymbol("+") { return try nested { p throws(ADQLError) in try p.parseFactor() } }
        return try parsePrimary()
    }

    static let aggregates: Set<String> = ["COUNT", "SUM", "AVG", "MIN", "MAX"]

    mutating func parsePrimary() throws(ADQLError) -> ADQLExpression {
        let at = here
        switch current {
        case .number(let v, let text):
            index += 1
            return ADQLExpression(.number(v, text: text), at: at)
        case .string(let s):
            index += 1
            return ADQLExpression(.string(s), at: at)
        case .keyword("NULL"):
            index += 1
            return ADQLExpression(.null, at: at)
        case .symbol("("):
            index += 1
            if current == .keyword("SELECT") { throw unsupported("a subquery") }
            let inner = try parseCondition()
            try expectSymbol(")", "to close the parenthesis")
            return inner
        case .keyword(let k) where Self.aggregates.contains(k):
            index += 1
            try expectSymbol("(", "after `\(k)`")
            if k == "COUNT" && acceptSymbol("*") {
                try expectSymbol(")", "after `COUNT(*`")
                return ADQLExpression(.countAll, at: at)
            }
            let distinct = accept("DISTINCT")
            if !distinct { _ = accept("ALL") }
            let arg = try parseValue()
            if arg.containsAggregate { throw fail("an aggregate inside an aggregate", at: arg.position.offset) }
            try expectSymbol(")", "to close `\(k)(`")
            return try node(.aggregate(k, arg, distinct: distinct), at: at)
        case .keyword("CASE"):
            throw unsupported("`CASE`")
        case .identifier(let name, let delimited):
            index += 1
            if current == .symbol("(") && !delimited {
                index += 1
                var args: [ADQLExpression] = []
                if !acceptSymbol(")") {
                    try nested { p throws(ADQLError) in
                        repeat { args.append(try p.parseValue()) } while p.acceptSymbol(",")
                    }
                    try expectSymbol(")", "to close the arguments of `\(name)`")
                }
                return try node(.call(name.uppercased(), args), at: at)
            }
            if acceptSymbol(".") {
                let column = try identifier("after `\(name).`: expected a column name")
                if current == .symbol(".") { throw unsupported("a column name qualified by a schema and a table", "qualify it by the table's alias") }
                return ADQLExpression(.column(table: name, name: column), at: at)
            }
            return ADQLExpression(.column(table: nil, name: name), at: at)
        case .keyword(let k):
            throw fail("`\(k)` is a reserved word and cannot start a value; write it in double quotes to use it as a name", at: offset)
        default:
            throw unexpected("where a value belongs")
        }
    }
}
