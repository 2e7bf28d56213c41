import TesseraProtocol

/// Parses expression text: `or` < `and` < `not` < comparisons < `+ -` < `* /` < unary minus <
/// calls, columns, numbers and parentheses.
///
/// The text comes from outside, so parsing is linear in its length and the tree it builds is at
/// most `Limits.expressionDepth` deep: the checker and evaluator recurse over the tree, and a
/// deeper one (ten thousand parentheses, or a chain of ten thousand `+`) would overflow a stack.
public struct ExpressionParser {
    enum Token: Equatable {
        case number(Double), integer(Int64), identifier(String), op(String), lparen, rparen, comma, end
    }

    let source: String
    var tokens: [(Token, SourceRange)] = []
    var pos = 0
    /// Open parentheses, calls and prefix operators around the cursor.
    var nesting = 0

    /// A subtree and its depth (a leaf is 1 deep).
    typealias Node = (tree: ExpressionTree, depth: Int)

    public static func parse(_ text: String) throws(ExpressionError) -> ExpressionTree {
        guard text.utf8.count <= Limits.expressionCharacters else {
            throw ExpressionError(
                message: "the expression is \(text.utf8.count) bytes long, over the limit of \(Limits.expressionCharacters)",
                source: "", range: SourceRange(0, 0))
        }
        var p = ExpressionParser(source: text)
        try p.tokenize()
        let e = try p.parseOr().tree
        guard case .end = p.tokens[p.pos].0 else {
            throw p.error("unexpected `\(p.text(p.tokens[p.pos].1))` after a complete expression", p.tokens[p.pos].1)
        }
        return e
    }

    init(source: String) { self.source = source }

    func error(_ m: String, _ r: SourceRange) -> ExpressionError { ExpressionError(message: m, source: source, range: r) }

    func text(_ r: SourceRange) -> String {
        let chars = Array(source)
        return String(chars[max(0, r.start)..<min(chars.count, r.end)])
    }

    mutating func tokenize() throws(ExpressionError) {
        let c = Array(source)
        var i = 0
        while i < c.count {
            let ch = c[i]
            if ch == " " || ch == "\t" || ch == "\n" { i += 1; continue }
            let start = i
            if ch.isNumber || (ch == "." && i + 1 < c.count && c[i + 1].isNumber) {
                while i < c.count && (c[i].isNumber || c[i] == ".") { i += 1 }
                if i < c.count && (c[i] == "e" || c[i] == "E") {
                    var j = i + 1
                    if j < c.count && (c[j] == "+" || c[j] == "-") { j += 1 }
                    if j < c.count && c[j].isNumber {
                        i = j
                        while i < c.count && c[i].isNumber { i += 1 }
                    }
                }
                let s = String(c[start..<i])
                guard let v = Double(s) else { throw error("`\(s)` is not a number", SourceRange(start, i)) }
                // An integer a Double cannot hold exactly (an object id) stays an integer.
                if let k = Int64(s), abs(v) > ExpressionTree.exactDoubleIntegers {
                    tokens.append((.integer(k), SourceRange(start, i)))
                } else {
                    tokens.append((.number(v), SourceRange(start, i)))
                }
                continue
            }
            if ch.isLetter || ch == "_" {
                while i < c.count && (c[i].isLetter || c[i].isNumber || c[i] == "_") { i += 1 }
                guard i - start <= Limits.identifierCharacters else {
                    throw error("a name of \(i - start) characters is over the limit of \(Limits.identifierCharacters)", SourceRange(start, min(i, start + 40)))
                }
                tokens.append((.identifier(String(c[start..<i])), SourceRange(start, i)))
                continue
            }
            let two = i + 1 < c.count ? String(c[i...(i + 1)]) : ""
            if ["<=", ">=", "==", "!=", "&&", "||"].contains(two) {
                tokens.append((.op(two == "&&" ? "and" : two == "||" ? "or" : two), SourceRange(i, i + 2)))
                i += 2
                continue
            }
            switch ch {
            case "+", "-", "*", "/", "<", ">", "!": tokens.append((.op(ch == "!" ? "not" : String(ch)), SourceRange(i, i + 1)))
            case "(": tokens.append((.lparen, SourceRange(i, i + 1)))
            case ")": tokens.append((.rparen, SourceRange(i, i + 1)))
            case ",": tokens.append((.comma, SourceRange(i, i + 1)))
            case "=": throw error("`=` is not an operator: compare with `==`", SourceRange(i, i + 1))
            default: throw error("unexpected character `\(ch)`", SourceRange(i, i + 1))
            }
            i += 1
        }
        tokens.append((.end, SourceRange(c.count, c.count)))
    }

    var current: Token { tokens[pos].0 }

    /// The keyword or symbol operator at the cursor, if any.
    var currentOp: String? {
        switch current {
        case .op(let o): o
        case .identifier(let w) where ["and", "or", "not"].contains(w): w
        default: nil
        }
    }

    /// `tree` as a node one deeper than its deepest child, refused past the depth limit.
    func node(_ tree: ExpressionTree, over children: Int) throws(ExpressionError) -> Node {
        let depth = children + 1
        guard depth <= Limits.expressionDepth else {
            throw error("the expression nests deeper than the limit of \(Limits.expressionDepth) (parentheses, calls and chained operators all count)", tree.range)
        }
        return (tree, depth)
    }

    mutating func parseOr() throws(ExpressionError) -> Node {
        var l = try parseAnd()
        while currentOp == "or" {
            pos += 1
            let r = try parseAnd()
            l = try node(.binary(.or, l.tree, r.tree, l.tree.range.union(r.tree.range)), over: max(l.depth, r.depth))
        }
        return l
    }

    mutating func parseAnd() throws(ExpressionError) -> Node {
        var l = try parseNot()
        while currentOp == "and" {
            pos += 1
            let r = try parseNot()
            l = try node(.binary(.and, l.tree, r.tree, l.tree.range.union(r.tree.range)), over: max(l.depth, r.depth))
        }
        return l
    }

    mutating func parseNot() throws(ExpressionError) -> Node {
        if currentOp == "not" {
            let start = tokens[pos].1
            pos += 1
            try enter(start)
            defer { nesting -= 1 }
            let x = try parseNot()
            return try node(.unary(.not, x.tree, start.union(x.tree.range)), over: x.depth)
        }
        return try parseComparison()
    }

    mutating func parseComparison() throws(ExpressionError) -> Node {
        let l = try parseAdditive()
        if let o = currentOp, let op = BinaryOperator(rawValue: o), op.isComparison {
            pos += 1
            let r = try parseAdditive()
            if let o2 = currentOp, let op2 = BinaryOperator(rawValue: o2), op2.isComparison {
                throw error("comparisons do not chain: write `a < b and b < c`", tokens[pos].1)
            }
            return try node(.binary(op, l.tree, r.tree, l.tree.range.union(r.tree.range)), over: max(l.depth, r.depth))
        }
        return l
    }

    mutating func parseAdditive() throws(ExpressionError) -> Node {
        var l = try parseMultiplicative()
        while let o = currentOp, o == "+" || o == "-" {
            pos += 1
            let r = try parseMultiplicative()
            l = try node(.binary(o == "+" ? .add : .subtract, l.tree, r.tree, l.tree.range.union(r.tree.range)), over: max(l.depth, r.depth))
        }
        return l
    }

    mutating func parseMultiplicative() throws(ExpressionError) -> Node {
        var l = try parseUnary()
        while let o = currentOp, o == "*" || o == "/" {
            pos += 1
            let r = try parseUnary()
            l = try node(.binary(o == "*" ? .multiply : .divide, l.tree, r.tree, l.tree.range.union(r.tree.range)), over: max(l.depth, r.depth))
        }
        return l
    }

    mutating func parseUnary() throws(ExpressionError) -> Node {
        if currentOp == "-" {
            let start = tokens[pos].1
            pos += 1
            try enter(start)
            defer { nesting -= 1 }
            let x = try parseUnary()
            if case .number(let v, let r) = x.tree { return (.number(-v, start.union(r)), x.depth) }
            if case .integer(let k, let r) = x.tree { return (.integer(-k, start.union(r)), x.depth) }
            return try node(.unary(.negate, x.tree, start.union(x.tree.range)), over: x.depth)
        }
        if currentOp == "+" {
            let start = tokens[pos].1
            pos += 1
            try enter(start)
            defer { nesting -= 1 }
            return try parseUnary()
        }
        return try parsePrimary()
    }

    /// The parser's own recursion (parentheses, calls, prefix operators), bounded before it can
    /// exhaust the stack even where it builds no deeper tree (`((((x))))`, `- - - 1`).
    mutating func enter(_ at: SourceRange) throws(ExpressionError) {
        nesting += 1
        guard nesting <= Limits.expressionDepth else {
            throw error("the expression nests deeper than the limit of \(Limits.expressionDepth) (parentheses, calls and chained operators all count)", at)
        }
    }

    mutating func parsePrimary() throws(ExpressionError) -> Node {
        let (t, r) = tokens[pos]
        switch t {
        case .number(let v):
            pos += 1
            return (.number(v, r), 1)
        case .integer(let k):
            pos += 1
            return (.integer(k, r), 1)
        case .identifier(let name):
            pos += 1
            guard case .lparen = current else { return (.column(name, r), 1) }
            pos += 1
            try enter(r)
            defer { nesting -= 1 }
            var args: [ExpressionTree] = []
            var depth = 0
            if case .rparen = current {
                // no arguments
            } else {
                let a = try parseOr()
                args.append(a.tree)
                depth = a.depth
                while case .comma = current {
                    pos += 1
                    let b = try parseOr()
                    args.append(b.tree)
                    depth = max(depth, b.depth)
                }
            }
            guard case .rparen = current else { throw error("expected `)` to close the call of `\(name)`", tokens[pos].1) }
            let close = tokens[pos].1
            pos += 1
            return try node(.call(name, args, r.union(close)), over: depth)
        case .lparen:
            pos += 1
            try enter(r)
            defer { nesting -= 1 }
            let e = try parseOr()
            guard case .rparen = current else { throw error("expected `)`", tokens[pos].1) }
            pos += 1
            return e
        case .end:
            throw error("the expression ends too early", r)
        default:
            throw error("unexpected `\(text(r))`", r)
        }
    }
}
