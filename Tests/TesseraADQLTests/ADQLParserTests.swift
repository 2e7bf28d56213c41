import Foundation
import Testing
import TesseraADQL
import TesseraCompute
import TesseraProtocol

/// The ADQL subset: what it translates to, and the errors that name what is wrong and where.
struct ADQLParserTests {
    static let object = ADQLTable(
        schema: "tessera", name: "object",
        columns: [
            ADQLColumn(name: "objectId", type: .columnInt64),
            ADQLColumn(name: "coord_ra", type: .columnFloat64, unit: "deg"),
            ADQLColumn(name: "coord_dec", type: .columnFloat64, unit: "deg"),
            ADQLColumn(name: "r_psfFlux", type: .columnFloat32, unit: "nJy"),
            ADQLColumn(name: "g_psfFlux", type: .columnFloat32, unit: "nJy"),
            ADQLColumn(name: "cell", type: .columnInt64),
        ],
        raColumn: "coord_ra", decColumn: "coord_dec")
    static let sources = ADQLTable(
        schema: "tessera", name: "sources",
        columns: [ADQLColumn(name: "id", type: .columnInt64), ADQLColumn(name: "ra", type: .columnFloat64), ADQLColumn(name: "dec", type: .columnFloat64)],
        raColumn: "ra", decColumn: "dec")

    func plan(_ q: String, maxrec: Int = 1000) throws -> ADQLPlan {
        var t = ADQLTranslator(tables: [Self.object, Self.sources])
        return try t.translate(try ADQLParser.parse(q), maxrec: maxrec)
    }

    func error(_ q: String) -> ADQLError? {
        do {
            _ = try plan(q)
            return nil
        } catch let e as ADQLError {
            return e
        } catch {
            return nil
        }
    }

    /// Names and numbers read the same whether ASCII (a fast path) or not, and every kind of
    /// whitespace separates tokens.
    @Test func namesNumbersAndWhitespaceOfEveryKind() throws {
        let q = try ADQLParser.parse("SELECT\tTOP\r\n5 Ångström_2, r_psfFlux\u{000B}AS\u{000C}flux, x\u{00A0}FROM\u{2003}object WHERE r_psfFlux > 1.5e3")
        #expect(q.top == 5)
        let names = q.items.compactMap { item -> String? in
            guard case .expression(let e, let alias) = item else { return nil }
            if case .column(_, let name) = e.kind { return alias ?? name }
            return nil
        }
        #expect(names == ["Ångström_2", "flux", "x"])
        #expect(q.from.name == "object")
        #expect(ADQLTranslator.isEngineName("r_psfFlux") && ADQLTranslator.isEngineName("_x9"))
        #expect(!ADQLTranslator.isEngineName("Ångström") && !ADQLTranslator.isEngineName("9x") && !ADQLTranslator.isEngineName("g-mag")
                && !ADQLTranslator.isEngineName("AND") && !ADQLTranslator.isEngineName(""))
    }

    /// The translated filter must mean what the ADQL means: evaluated on rows by the engine's
    /// own evaluator, it keeps exactly the rows a direct Swift predicate keeps.
    @Test func conditionsKeepTheRowsTheyDescribe() throws {
        let flux: [Double] = [-5, 0, .nan, 10, 100, 1000, 1e4, 1e5]
        let cell: [Double] = [1, 2, 3, 4, 5, 6, 7, 8]
        let cases: [(String, (Double, Double) -> Bool)] = [
            ("r_psfFlux BETWEEN 10 AND 1000", { f, _ in f >= 10 && f <= 1000 }),
            // SQL's three-valued logic: a NULL (NaN) row is in neither a condition nor its negation.
            ("r_psfFlux NOT BETWEEN 10 AND 1000", { f, _ in !f.isNaN && !(f >= 10 && f <= 1000) }),
            ("r_psfFlux <> 10", { f, _ in !f.isNaN && f != 10 }),
            ("NOT (r_psfFlux > 100)", { f, _ in !f.isNaN && f <= 100 }),
            // FALSE AND unknown is FALSE, so its negation keeps a NaN row whose other term is false.
            ("NOT (r_psfFlux > 100 AND cell > 4)", { f, c in (!f.isNaN && f <= 100) || c <= 4 }),
            ("NOT (r_psfFlux > 100 OR cell > 4)", { f, c in !f.isNaN && f <= 100 && c <= 4 }),
            ("r_psfFlux NOT IN (10, 100)", { f, _ in !f.isNaN && f != 10 && f != 100 }),
            ("NOT (r_psfFlux IS NULL)", { f, _ in !f.isNaN }),
            ("ROUND(r_psfFlux / 20) = 1", { f, _ in (f / 20).rounded(.toNearestOrAwayFromZero) == 1 }),
            ("ROUND(-cell / 2) = -2", { _, c in (-c / 2).rounded(.toNearestOrAwayFromZero) == -2 }),
            ("cell IN (2, 4, 8)", { _, c in [2, 4, 8].contains(c) }),
            ("cell NOT IN (2, 4, 8)", { _, c in ![2, 4, 8].contains(c) }),
            ("r_psfFlux IS NULL", { f, _ in f.isNaN }),
            ("r_psfFlux IS NOT NULL AND cell <> 5", { f, c in !f.isNaN && c != 5 }),
            ("NOT (cell = 3 OR cell >= 7)", { _, c in !(c == 3 || c >= 7) }),
            ("r_psfFlux * 2 + 1 > 21 AND -cell < -2", { f, c in f * 2 + 1 > 21 && -c < -2 }),
            ("NOT NOT (cell = 3)", { _, c in c == 3 }),
            ("mag(r_psfFlux) < 24", { f, _ in f > 0 && 31.4 - 2.5 * log10(f) < 24 }),
            ("ABS(r_psfFlux) >= POWER(10, 2)", { f, _ in abs(f) >= 100 }),
        ]
        for (adql, expected) in cases {
            let p = try plan("SELECT objectId FROM object WHERE \(adql)")
            let checked = try ExpressionChecker.check(p.plan.filter, schema: ["r_psfFlux": .number, "cell": .number], expecting: .boolean)
            let kept = ExpressionEvaluator.evaluate(checked, columns: ["r_psfFlux": .numbers(flux), "cell": .numbers(cell)], rows: flux.count)
            let want = zip(flux, cell).map { expected($0, $1) }
            #expect(kept == .booleans(want), "\(adql) → \(p.plan.filter)")
        }
    }

    @Test func aContainsOnTheTablesPositionIsItsRegion() throws {
        let cone = try plan("SELECT * FROM object WHERE CONTAINS(POINT('ICRS', coord_ra, coord_dec), CIRCLE('ICRS', 60, -35, 0.5)) = 1 AND cell > 3")
        #expect(cone.plan.cone.ra == 60 && cone.plan.cone.dec == -35 && cone.plan.cone.radius == 0.5)
        #expect(cone.plan.filter == "(cell > 3)")
        let flipped = try plan("SELECT * FROM object WHERE 1 = CONTAINS(POINT(coord_ra, coord_dec), CIRCLE(10, 20, 1.0/60))")
        #expect(flipped.plan.cone.radius == 1.0 / 60)
        let poly = try plan("SELECT * FROM object WHERE CONTAINS(POINT('ICRS', coord_ra, coord_dec), POLYGON('ICRS', 10, 10, 12, 10, 11, 12)) = 1")
        #expect(poly.plan.polygon.ra == [10, 12, 11] && poly.plan.polygon.dec == [10, 10, 12])
        let box = try plan("SELECT * FROM object WHERE CONTAINS(POINT('ICRS', coord_ra, coord_dec), BOX('ICRS', 0.5, 5, 2, 4)) = 1")
        #expect(box.plan.box.raMin == 359.5 && box.plan.box.raMax == 1.5 && box.plan.box.decMin == 3 && box.plan.box.decMax == 7)
        // A negative width once became the rest of the circle (raMin 10.5, raMax 9.5: 359°).
        #expect(throws: ADQLError.self) { try plan("SELECT * FROM object WHERE CONTAINS(POINT(coord_ra, coord_dec), BOX('ICRS', 10, 20, -1, 1)) = 1") }
        // A second circle, or one inside an OR, is a per-row distance test.
        let two = try plan("SELECT * FROM object WHERE CONTAINS(POINT(coord_ra, coord_dec), CIRCLE(60, -35, 1)) = 1 AND CONTAINS(POINT(coord_ra, coord_dec), CIRCLE(61, -35, 1)) = 1")
        #expect(two.plan.cone.ra == 60)
        #expect(two.plan.filter == "(distance(coord_ra, coord_dec, 61, -35) <= 1)")
        let outside = try plan("SELECT * FROM object WHERE CONTAINS(POINT(coord_ra, coord_dec), CIRCLE(60, -35, 1)) = 0")
        #expect(outside.plan.region == nil && outside.plan.filter == "(distance(coord_ra, coord_dec, 60, -35) > 1)")
    }

    @Test func rowsAggregatesAndOrder() throws {
        let rows = try plan("SELECT TOP 5 objectId AS id, mag(r_psfFlux) - mag(g_psfFlux) AS colour FROM object ORDER BY colour DESC")
        #expect(rows.plan.rows.select == ["objectId", "(mag(r_psfFlux) - mag(g_psfFlux))"])
        #expect(rows.plan.rows.sortBy == "(mag(r_psfFlux) - mag(g_psfFlux))" && rows.plan.rows.descending && rows.plan.rows.limit == 5)
        #expect(rows.fields.map(\.name) == ["id", "colour"])
        // Without TOP, MAXREC + 1 rows are asked for, so that an overflow shows.
        #expect(try plan("SELECT objectId FROM object", maxrec: 10).plan.rows.limit == 11)
        let star = try plan("SELECT * FROM object")
        #expect(star.plan.rows.select == Self.object.columns.map(\.name))

        let grouped = try plan("SELECT cell, COUNT(*) AS n, AVG(r_psfFlux), MAX(cell) FROM object WHERE cell > 0 GROUP BY cell ORDER BY n DESC")
        #expect(grouped.plan.groupBy == "cell")
        #expect(grouped.plan.aggregates.map(\.function) == [.aggCount, .aggMean, .aggMax])
        #expect(grouped.plan.aggregates.map(\.expression) == ["", "r_psfFlux", "cell"])
        #expect(grouped.fields.map(\.name) == ["cell", "n", "avg_r_psfFlux", "max_cell"])
        #expect(grouped.fields.map(\.source) == [0, 1, 2, 3])
        #expect(grouped.localOrder.map(\.field) == [1] && grouped.localOrder[0].descending)
    }

    @Test func aJoinOnDistanceIsACrossmatch() throws {
        let p = try plan("""
            SELECT s.id, o.objectId, DISTANCE(POINT(s.ra, s.dec), POINT(o.coord_ra, o.coord_dec)) AS d
            FROM sources AS s JOIN object AS o ON DISTANCE(POINT('ICRS', s.ra, s.dec), POINT('ICRS', o.coord_ra, o.coord_dec)) < 2.0/3600
            WHERE o.r_psfFlux > 100
            """)
        #expect(p.plan.dataset == "sources" && p.plan.crossmatch.right == "object" && p.plan.crossmatch.kind == .crossmatchAll)
        #expect(abs(p.plan.crossmatch.radiusArcsec - 2) < 1e-12)
        #expect(p.plan.rows.select == ["left_id", "right_objectId", "(sep_arcsec / 3600)"])
        #expect(p.fields.map(\.name) == ["id", "objectId", "d"])
        let both = try plan("SELECT s.id, o.id FROM sources AS s JOIN sources AS o ON DISTANCE(POINT(s.ra, s.dec), POINT(o.ra, o.dec)) < 0.001")
        #expect(both.fields.map(\.name) == ["id", "id_2"] && both.plan.rows.select == ["left_id", "right_id"])
        #expect(p.plan.filter == "(right_r_psfFlux > 100)")
        let contains = try plan("SELECT * FROM sources s JOIN object o ON 1 = CONTAINS(POINT(s.ra, s.dec), CIRCLE(o.coord_ra, o.coord_dec, 0.001))")
        #expect(contains.plan.crossmatch.radiusArcsec == 3.6)
        #expect(contains.fields.first?.name == "left_id")
    }

    @Test func errorsSayWhatAndWhere() throws {
        let cases: [(String, String, Int?)] = [
            ("SELECT objectId FROM object WHERE", "unexpected the end of the query where a value belongs", 34),
            ("SELECT objectId FORM object", "unexpected `object`", 22),
            ("SELECT objectId FROM object WHERE cell = 'x", "a string is not closed", 42),
            ("SELECT objectId FROM object UNION SELECT objectId FROM object", "set operations", 29),
            ("SELECT DISTINCT cell FROM object", "`SELECT DISTINCT` is not supported", 8),
            ("SELECT objectId FROM object GROUP BY cell HAVING COUNT(*) > 1", "`HAVING` is not supported", 43),
            ("SELECT objectId FROM nowhere", "no table named `nowhere`", 22),
            ("SELECT flux FROM object", "no column `flux` in `object`", 8),
            ("SELECT objectId FROM object WHERE SIN(coord_ra) > 0", "the function `SIN` is not supported", 35),
            ("SELECT objectId FROM object, sources", "a list of tables in FROM", 28),
            ("SELECT * FROM object LEFT JOIN sources ON 1 = 1", "this kind of join", 22),
            ("SELECT * FROM object JOIN sources ON objectId = id", "a join needs a positional condition", 47),
            ("SELECT COUNT(*) + 1 FROM object", "an aggregate must be a whole select item", 17),
            ("SELECT objectId FROM object WHERE CONTAINS(POINT('GALACTIC', coord_ra, coord_dec), CIRCLE(1, 2, 3)) = 1", "coordinate system 'GALACTIC'", 50),
            ("SELECT objectId FROM object WHERE cell", "a value where a condition belongs", 35),
        ]
        for (q, message, column) in cases {
            let e = error(q)
            #expect(e?.message.contains(message) == true, "\(q): \(e.map { "\($0)" } ?? "no error")")
            if let column { #expect(e?.position?.column == column, "\(q): \(e.map { "\($0)" } ?? "no error")") }
        }
        // Rows are sorted as a top-n: by TOP, or by MAXREC when there is one.
        #expect(throws: ADQLError.self) { try self.plan("SELECT objectId FROM object ORDER BY cell", maxrec: Int.max) }
        #expect(try plan("SELECT objectId FROM object ORDER BY cell", maxrec: 10).plan.rows.limit == 11)
        // Positions count lines too.
        let multi = error("SELECT objectId\nFROM object\nWHERE nonsense > 1")
        #expect(multi?.position?.line == 3 && multi?.position?.column == 7)
    }

    @Test func hostileTextIsRefusedCheaply() throws {
        let deep = "SELECT objectId FROM object WHERE " + String(repeating: "(", count: 10_000) + "cell > 1" + String(repeating: ")", count: 10_000)
        #expect(error(deep)?.message.contains("nests deeper than the limit of \(ADQLParser.maxDepth)") == true)
        // Nested ROUNDs once doubled their text at each level (2^31 × 50 bytes at 31 levels).
        let rounds = "SELECT " + String(repeating: "ROUND(", count: 31) + "cell" + String(repeating: ")", count: 31) + " AS r FROM object"
        #expect(try plan(rounds).plan.rows.select[0].utf8.count < 600)
        let wide = "SELECT objectId FROM object WHERE cell NOT IN (" + (0..<250).map { "\(1_000_000 + $0) + cell * 2 - r_psfFlux" }.joined(separator: ",") + ")"
        #expect(error(wide)?.message.contains("over the engine's limit") == true)
        // The longest IN list accepted, under ten more conditions: within the engine's depth
        // (its terms, and the conditions, are joined as balanced trees, not chains).
        let conditions = (0..<10).map { "cell > \(-$0 - 1)" }.joined(separator: " AND ")
        let listed = try plan("SELECT objectId FROM object WHERE " + conditions + " AND cell IN (" + (0..<250).map(String.init).joined(separator: ",") + ")")
        let checked = try ExpressionChecker.check(listed.plan.filter, schema: ["cell": .number], expecting: .boolean)
        #expect(ExpressionEvaluator.evaluate(checked, columns: ["cell": .numbers([-1, 0, 7, 249, 250, 3.5])], rows: 6)
                == .booleans([false, true, true, true, false, false]))
        let long = "SELECT objectId FROM object WHERE cell IN (" + (0..<2000).map(String.init).joined(separator: ",") + ")"
        #expect(error(long)?.message.contains("longer than the limit of \(ADQLParser.maxInList)") == true)
        let huge = "SELECT objectId FROM object WHERE cell > " + String(repeating: "1", count: ADQLParser.maxCharacters)
        #expect(error(huge)?.message.contains("over the limit of \(ADQLParser.maxCharacters)") == true)
        #expect(error("SELECT objectId FROM object WHERE cell > 1e999")?.message.contains("is not a number") == true)
        #expect(error("SELECT \"\" FROM object")?.message.contains("1 to 256 characters") == true)
    }

    @Test func orderByPositionsAndHugeNumbersAreRefusedNotTrapped() {
        for q in ["SELECT TOP 1 objectId FROM object ORDER BY 1e19", "SELECT TOP 1 objectId FROM object ORDER BY -1e300",
                  "SELECT cell, COUNT(*) FROM object GROUP BY cell ORDER BY 9e18", "SELECT TOP 1 objectId FROM object ORDER BY 2"] {
            #expect(error(q)?.message.contains("ORDER BY") == true, "\(q)")
        }
        let t = LocalTable(schema: "TAP_SCHEMA", name: "t", description: "", columns: [.init("a", "char", "")], rows: [[.text("x")]])
        #expect(throws: ADQLError.self) { try t.run(try ADQLParser.parse("SELECT a FROM TAP_SCHEMA.t ORDER BY 1e19"), maxrec: 10) }
        // A chain of operators is as deep as nested parentheses.
        let chain = "SELECT objectId FROM object WHERE cell > " + Array(repeating: "cell", count: 2000).joined(separator: " + ")
        #expect(error(chain)?.message.contains("nests deeper") == true)
        let ors = "SELECT objectId FROM object WHERE " + Array(repeating: "cell = 1", count: 2000).joined(separator: " OR ")
        #expect(error(ors)?.message.contains("nests deeper") == true)
    }

    @Test func columnsTheEngineCannotNameAreRefused() throws {
        let odd = ADQLTable(schema: "tessera", name: "odd", columns: [ADQLColumn(name: "ra", type: .columnFloat64), ADQLColumn(name: "dec", type: .columnFloat64),
                                                                     ADQLColumn(name: "g-mag", type: .columnFloat64)], raColumn: "ra", decColumn: "dec")
        var t = ADQLTranslator(tables: [odd])
        #expect(throws: ADQLError.self) { try t.translate(try ADQLParser.parse("SELECT \"g-mag\" FROM odd"), maxrec: 10) }
        #expect(throws: ADQLError.self) { try t.translate(try ADQLParser.parse("SELECT * FROM odd"), maxrec: 10) }
        #expect(try t.translate(try ADQLParser.parse("SELECT ra, dec FROM odd"), maxrec: 10).plan.rows.select == ["ra", "dec"])
    }

    @Test func namesAreDelimitedWhereADQLNeedsIt() {
        #expect(ADQLParser.delimited("coord_ra") == "coord_ra")
        #expect(ADQLParser.delimited("_healpix_29") == "\"_healpix_29\"")
        #expect(ADQLParser.delimited("size") == "\"size\"")
        #expect(ADQLParser.delimited("alice..objs") == "\"alice..objs\"")
        #expect(ADQLParser.delimited("a\"b") == "\"a\"\"b\"")
        #expect(ADQLParser.delimited("offset") == "\"offset\"" && ADQLParser.delimited("ilike") == "\"ilike\"")
    }

    /// TAP_SCHEMA's tables are answered in the gateway, with LIKE and NULLs on text.
    @Test func localTablesAnswerTheSameSubset() throws {
        let t = LocalTable(schema: "TAP_SCHEMA", name: "tables", description: "",
                           columns: [.init("table_name", "char", ""), .init("table_index", "int", ""), .init("utype", "char", "")],
                           rows: [[.text("tessera.object"), .integer(2), .null], [.text("tessera.sources"), .integer(1), .text("x")],
                                  [.text("TAP_SCHEMA.tables"), .integer(3), .null]])
        func run(_ q: String, maxrec: Int = 100) throws -> (columns: [LocalTable.Column], rows: [[LocalCell]], overflow: Bool) {
            try t.run(try ADQLParser.parse(q), maxrec: maxrec)
        }
        #expect(try run("SELECT table_name FROM TAP_SCHEMA.tables WHERE table_name LIKE 'tessera.%' ORDER BY table_index").rows
                == [[.text("tessera.sources")], [.text("tessera.object")]])
        #expect(try run("SELECT COUNT(*) AS n FROM TAP_SCHEMA.tables WHERE utype IS NULL").rows == [[.integer(2)]])
        #expect(try run("SELECT TOP 1 * FROM TAP_SCHEMA.tables ORDER BY table_index DESC").rows == [[.text("TAP_SCHEMA.tables"), .integer(3), .null]])
        let cut = try run("SELECT table_name FROM TAP_SCHEMA.tables", maxrec: 2)
        #expect(cut.rows.count == 2 && cut.overflow)
        #expect(try run("SELECT table_name FROM TAP_SCHEMA.tables WHERE table_name ILIKE '%OBJECT'").rows == [[.text("tessera.object")]])
        #expect(throws: ADQLError.self) { try run("SELECT nope FROM TAP_SCHEMA.tables") }
        #expect(throws: ADQLError.self) { try run("SELECT table_name FROM TAP_SCHEMA.tables WHERE table_name LIKE '\(String(repeating: "%a", count: 200))'") }
    }

    /// 64-bit ids compare exactly in the gateway, as on the cluster: through Double every id
    /// within 512 of the literal matched it.
    @Test func localTablesCompareLargeIntegersExactly() throws {
        let ids: [Int64] = [5_853_498_713_190_525_696, 5_853_498_713_190_525_697, 5_853_498_713_190_525_698, .max, .min]
        let t = LocalTable(schema: "TAP_UPLOAD", name: "t", description: "", columns: [.init("id", "long", "")], rows: ids.map { [.integer($0)] })
        func kept(_ condition: String) throws -> [Int64] {
            try t.run(try ADQLParser.parse("SELECT id FROM TAP_UPLOAD.t WHERE \(condition)"), maxrec: 100).rows.map {
                guard case .integer(let v) = $0[0] else { return 0 }
                return v
            }
        }
        #expect(try kept("id = 5853498713190525697") == [5_853_498_713_190_525_697])
        #expect(try kept("id > 5853498713190525697") == [5_853_498_713_190_525_698, .max])
        #expect(try kept("id BETWEEN 5853498713190525696 AND 5853498713190525697") == [5_853_498_713_190_525_696, 5_853_498_713_190_525_697])
        #expect(try kept("id IN (5853498713190525698)") == [5_853_498_713_190_525_698])
        // Against reals, exactly too: 2^63 is above every id, 1.5 between 1 and 2.
        #expect(try kept("id < 9.3e18") == ids)
        #expect(LocalCell.integer(1) < .real(1.5) && LocalCell.real(1.5) < .integer(2) && LocalCell.integer(.max) < .real(0x1p63) && LocalCell.integer(.min) == .real(-0x1p63))
        #expect(LocalCell.integer(5_853_498_713_190_525_697) != .real(5_853_498_713_190_525_697))   // the Double is ...696
    }

    /// LIKE costs up to text × pattern a row: a query's LIKEs share a budget of steps, and
    /// one past it is refused in words (a 33-million-character text against sixty patterns
    /// once took minutes of the gateway's shared threads).
    @Test func localLikeHasABudget() throws {
        let long = String(repeating: "a", count: 30_000)
        let t = LocalTable(schema: "TAP_UPLOAD", name: "t", description: "", columns: [.init("s", "char", "")], rows: [[.text(long)], [.text("ab")]])
        let pattern = "'%" + String(repeating: "a", count: 200) + "b'"
        let q = "SELECT s FROM TAP_UPLOAD.t WHERE " + Array(repeating: "s LIKE \(pattern)", count: 3).joined(separator: " OR ")
        // 30,000 characters × 200 a pattern, three times: 18M steps, against a budget of 2M.
        let refusal = #expect(throws: ADQLError.self) { try t.run(try ADQLParser.parse(q), maxrec: 10, likeSteps: 2_000_000) }
        #expect(refusal?.message.contains("ran past") == true)
        #expect(try t.run(try ADQLParser.parse(q), maxrec: 10, likeSteps: 40_000_000).rows.isEmpty)
        #expect(try t.run(try ADQLParser.parse("SELECT s FROM TAP_UPLOAD.t WHERE s LIKE '%ab' OR s LIKE 'a_'"), maxrec: 10).rows == [[.text("ab")]])
        #expect(try t.run(try ADQLParser.parse("SELECT s FROM TAP_UPLOAD.t WHERE s LIKE 'a%'"), maxrec: 10).rows.count == 2)
    }

    /// A table answered in the gateway (an upload without positions, TAP_SCHEMA) keeps the
    /// rows the cluster's translation keeps: SQL's three-valued logic, so that a NULL is in
    /// neither a condition nor its negation (it once was in every negation).
    @Test func localTablesFollowThreeValuedLogic() throws {
        let flux: [Double] = [-5, 0, .nan, 10, 100, 1000, 1e4, .nan]
        let t = LocalTable(schema: "TAP_UPLOAD", name: "t", description: "",
                           columns: [.init("r_psfFlux", "double", ""), .init("cell", "long", "")],
                           rows: flux.indices.map { [flux[$0].isNaN ? .null : .real(flux[$0]), .integer(Int64($0 + 1))] })
        let cases: [(String, (Double, Double) -> Bool)] = [
            ("r_psfFlux BETWEEN 10 AND 1000", { f, _ in f >= 10 && f <= 1000 }),
            ("r_psfFlux NOT BETWEEN 10 AND 1000", { f, _ in !f.isNaN && !(f >= 10 && f <= 1000) }),
            ("r_psfFlux <> 10", { f, _ in !f.isNaN && f != 10 }),
            ("NOT (r_psfFlux > 100)", { f, _ in !f.isNaN && f <= 100 }),
            ("NOT (r_psfFlux > 100 AND cell > 4)", { f, c in (!f.isNaN && f <= 100) || c <= 4 }),
            ("NOT (r_psfFlux > 100 OR cell > 4)", { f, c in !f.isNaN && f <= 100 && c <= 4 }),
            ("r_psfFlux > 100 OR cell > 7", { f, c in f > 100 || c > 7 }),
            ("r_psfFlux NOT IN (10, 100)", { f, _ in !f.isNaN && f != 10 && f != 100 }),
            ("NOT (r_psfFlux IN (10, NULL))", { _, _ in false }),
            ("r_psfFlux IN (10, NULL)", { f, _ in f == 10 }),
            ("NOT (r_psfFlux IS NULL)", { f, _ in !f.isNaN }),
            ("r_psfFlux IS NULL", { f, _ in f.isNaN }),
            ("cell NOT IN (2, 4, 8)", { _, c in ![2, 4, 8].contains(c) }),
        ]
        for (condition, keeps) in cases {
            let got = try t.run(try ADQLParser.parse("SELECT cell FROM TAP_UPLOAD.t WHERE \(condition)"), maxrec: 100).rows
            let want = flux.indices.filter { keeps(flux[$0], Double($0 + 1)) }.map { [LocalCell.integer(Int64($0 + 1))] }
            #expect(got == want, "\(condition)")
        }
    }
}
