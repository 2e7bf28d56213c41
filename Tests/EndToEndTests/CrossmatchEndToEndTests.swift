import Foundation
import Testing
import TesseraClient
import TesseraCluster
import TesseraCompute
import TesseraProtocol
import TesseraSecurity
import TesseraStorage
import TesseraSky
import TesseraTestKit

/// Cross-matches over real scheduler and worker processes, checked pair for pair against
/// astropy (`search_around_sky`, `match_to_catalog_sky`) on the same rows: the fixtures in
/// Fixtures/crossmatch, written by scripts/make_crossmatch_fixtures.py, hold the poles,
/// RA = 0, dense patches and a left patch in pixels where the right catalog has no shard.
@Suite(.serialized)
struct CrossmatchEndToEndTests {
    static let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/crossmatch").path

    struct Pair: Hashable { let left: Int64, right: Int64 }

    /// astropy's pairs, with their separations (arcsec).
    static func pairs(_ file: String) throws -> [Pair: Double] {
        let text = try String(contentsOfFile: folder + "/" + file, encoding: .utf8)
        var out: [Pair: Double] = [:]
        for line in text.split(separator: "\n").dropFirst() {
            let f = line.split(separator: ",")
            guard f.count == 3, let l = Int64(f[0]), let r = Int64(f[1]), let s = Double(f[2]) else { continue }
            out[Pair(left: l, right: r)] = s
        }
        return out
    }

    /// The catalog's ids and magnitudes, as the CSV has them.
    static func table(_ file: String) throws -> (ids: [Int64], ra: [Double], dec: [Double], mag: [Int64: Double]) {
        let text = try String(contentsOfFile: folder + "/" + file, encoding: .utf8)
        var ids: [Int64] = [], ra: [Double] = [], dec: [Double] = [], mag: [Int64: Double] = [:]
        for line in text.split(separator: "\n").dropFirst() {
            let f = line.split(separator: ",")
            guard f.count == 4, let i = Int64(f[0]), let a = Double(f[1]), let d = Double(f[2]), let m = Double(f[3]) else { continue }
            ids.append(i); ra.append(a); dec.append(d); mag[i] = m
        }
        return (ids, ra, dec, mag)
    }

    /// The pairs of a collected answer (`left_id`, `right_id`, `sep_arcsec`).
    static func collected(_ t: ResultTable) -> [Pair: Double] {
        guard let l = t.names.firstIndex(of: "left_id"), let r = t.names.firstIndex(of: "right_id"),
              case .int64s(let li) = t.columns[l], case .int64s(let ri) = t.columns[r], let sep = t.numbers("sep_arcsec") else { return [:] }
        var out: [Pair: Double] = [:]
        for k in li.indices { out[Pair(left: li[k], right: ri[k])] = sep[k] }
        return out
    }

    /// Whether two pair lists are the same pairs, separations equal to 1e-6″.
    static func same(_ a: [Pair: Double], _ b: [Pair: Double]) -> Bool {
        a.count == b.count && a.allSatisfy { p, s in b[p].map { abs($0 - s) <= 1e-6 } ?? false }
    }

    func ingest(_ conn: SchedulerConnection, _ name: String, _ file: String, shardRows: Int, replicas: Int) throws {
        var o = IngestOptions(dataset: name, files: [Self.folder + "/" + file])
        o.raColumn = "ra"
        o.decColumn = "dec"
        o.maxRowsPerShard = shardRows
        o.replicas = replicas
        _ = try CatalogIngest.run(o, connection: conn)
    }

    @Test func pairsAreAstropysOnOneTwoOrThreeWorkersAndAnyShardSizes() throws {
        let all = try Self.pairs("pairs_all.csv")
        let nearest = try Self.pairs("pairs_nearest.csv")
        let nearest3 = try Self.pairs("pairs_nearest3.csv")
        let left = try Self.table("left.csv"), right = try Self.table("right.csv")
        #expect(all.count > 10_000 && nearest.count > 4_000 && nearest3.count > nearest.count)
        // The filtered question's reference: astropy's pairs, filtered here.
        let cone = ConeRegion(ra: 45, dec: 20, radius: 30)
        var leftPosition: [Int64: (Double, Double)] = [:]
        for (k, i) in left.ids.enumerated() { leftPosition[i] = (left.ra[k], left.dec[k]) }
        let filtered = all.filter { p, s in
            let (a, d) = leftPosition[p.left]!
            return cone.contains(ra: a, dec: d) && left.mag[p.left]! < 22 && right.mag[p.right]! > 18 && s < 1.5
        }
        #expect(filtered.count > 50)
        // A histogram of separations, from astropy's pairs.
        var histogram = [Double](repeating: 0, count: 8)
        for s in all.values { histogram[min(7, Int(s / 0.25))] += 1 }

        for (workers, leftRows, rightRows) in [(1, 100_000, 100_000), (2, 700, 250), (3, 200, 900)] {
            let cluster = try TestCluster.start(workers: workers, dataDirectory: temporaryFolder("xmatch-data"))
            defer { cluster.stop() }
            let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
            try ingest(conn, "mine", "left.csv", shardRows: leftRows, replicas: min(2, workers))
            try ingest(conn, "survey", "right.csv", shardRows: rightRows, replicas: 1)
            let mine = CatalogQuery(dataset: "mine")
            let what = "on \(workers) workers, shards of \(leftRows) and \(rightRows) rows"

            let pairsAll = try conn.run(mine.crossmatch("survey", radiusArcsec: 2, .all).select(["left_id", "right_id", "sep_arcsec"])).result.table
            #expect(Self.same(Self.collected(pairsAll), all), "every pair \(what): \(Self.collected(pairsAll).count) vs astropy's \(all.count)")
            let pairsNearest = try conn.run(mine.crossmatch("survey", radiusArcsec: 2).select(["left_id", "right_id", "sep_arcsec"])).result.table
            #expect(Self.same(Self.collected(pairsNearest), nearest), "nearest \(what): \(Self.collected(pairsNearest).count) vs astropy's \(nearest.count)")
            let pairs3 = try conn.run(mine.crossmatch("survey", radiusArcsec: 2, .nearest(k: 3)).select(["left_id", "right_id", "sep_arcsec"])).result.table
            #expect(Self.same(Self.collected(pairs3), nearest3), "nearest 3 \(what): \(Self.collected(pairs3).count) vs astropy's \(nearest3.count)")
            // A region, a filter on both sides and on the separation.
            let some = try conn.run(mine.region(.cone(ra: 45, dec: 20, radius: 30)).filter("left_mag < 22 and right_mag > 18 and sep_arcsec < 1.5")
                .crossmatch("survey", radiusArcsec: 2, .all).select(["left_id", "right_id", "sep_arcsec"])).result.table
            #expect(Self.same(Self.collected(some), filtered), "filtered \(what): \(Self.collected(some).count) vs \(filtered.count)")
            // Aggregates over the pairs.
            let h = try conn.run(mine.crossmatch("survey", radiusArcsec: 2, .all).histogram("sep_arcsec", bins: 8, range: 0...2)).result.table
            #expect(h.numbers("count") == histogram, "histogram \(what)")
            let counted = try conn.run(mine.crossmatch("survey", radiusArcsec: 2).count()).result.table
            #expect(counted.numbers("count") == [Double(nearest.count)], "count \(what)")
        }
    }

    /// A left catalog far sparser than the right one: each right shard sends only its rows near
    /// the left rows (their covers), and the pairs are still astropy's.
    @Test func aSparseLeftSideReadsOnlyTheRightRowsNearIt() throws {
        let all = try Self.pairs("pairs_all.csv")
        let text = try String(contentsOfFile: Self.folder + "/left.csv", encoding: .utf8)
        let lines = text.split(separator: "\n")
        // Every 40th row, and the rows beside the pixel where the right catalog has no shard.
        var kept: Set<Int64> = []
        var sparse = String(lines[0]) + "\n"
        for line in lines.dropFirst() {
            guard let id = Int64(line.split(separator: ",")[0]) else { continue }
            if (id / 10) % 40 == 0 || id / 10 > 4_900 { kept.insert(id); sparse += line + "\n" }
        }
        let dir = temporaryFolder("xmatch-sparse")
        try sparse.write(toFile: dir + "/sparse.csv", atomically: true, encoding: .utf8)
        let cluster = try TestCluster.start(workers: 2, dataDirectory: temporaryFolder("xmatch-sparse-data"))
        defer { cluster.stop() }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        var o = IngestOptions(dataset: "few", files: [dir + "/sparse.csv"])
        (o.raColumn, o.decColumn, o.maxRowsPerShard, o.replicas) = ("ra", "dec", 100_000, 1)
        _ = try CatalogIngest.run(o, connection: conn)
        try ingest(conn, "survey", "right.csv", shardRows: 1_000, replicas: 1)
        let u = try conn.run(CatalogQuery(dataset: "few").crossmatch("survey", radiusArcsec: 2, .all).select(["left_id", "right_id", "sep_arcsec"]))
        let expected = all.filter { kept.contains($0.key.left) }
        #expect(expected.count > 150)
        #expect(Self.same(Self.collected(u.result.table), expected), "\(Self.collected(u.result.table).count) pairs vs \(expected.count)")
        // Nearest over the same covers: astropy's nearest for each kept row.
        let nearest = try Self.pairs("pairs_nearest.csv").filter { kept.contains($0.key.left) }
        let counted = try conn.run(CatalogQuery(dataset: "few").crossmatch("survey", radiusArcsec: 2).count())
        #expect(counted.result.table.numbers("count") == [Double(nearest.count)])
    }

    @Test func badCrossmatchesAreRefusedClearly() throws {
        let cluster = try TestCluster.start(workers: 2, dataDirectory: temporaryFolder("xmatch-bad"))
        defer { cluster.stop() }
        let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        try ingest(conn, "mine", "left.csv", shardRows: 2_000, replicas: 1)
        try ingest(conn, "survey", "right.csv", shardRows: 2_000, replicas: 1)
        func refusal(_ q: CatalogQuery) -> String {
            do { _ = try conn.run(q); return "accepted" } catch { return "\(error)" }
        }
        let mine = CatalogQuery(dataset: "mine")
        #expect(refusal(mine.crossmatch("survey", radiusArcsec: 0)).contains("must be a positive number of arcseconds"))
        #expect(refusal(mine.crossmatch("survey", radiusArcsec: -.infinity)).contains("must be a positive number of arcseconds"))
        #expect(refusal(mine.crossmatch("survey", radiusArcsec: 1e7)).contains("over the limit of 3600.0″"))
        let wide = refusal(mine.crossmatch("survey", radiusArcsec: 30))
        #expect(wide.contains("over `survey`'s margin of 10.0″") && wide.contains("--margin-arcsec"), "\(wide)")
        #expect(refusal(mine.crossmatch("nothing", radiusArcsec: 1)).contains("no dataset named `nothing` to cross-match with"))
        #expect(refusal(mine.crossmatch("survey", radiusArcsec: 1, .nearest(k: 5_000))).contains("at most 1000 nearest neighbours"))
        #expect(refusal(mine.crossmatch("survey", radiusArcsec: 1).filter("right_mgg < 3")).contains("unknown column `right_mgg`"))
        // The cluster keeps serving.
        #expect(try conn.run(mine.crossmatch("survey", radiusArcsec: 1).count()).result.table.numbers("count")?.first ?? 0 > 1_000)

        // The command line: astropy's pairs as CSV, and a refusal that says why.
        let ep = ["--scheduler", cluster.clientEndpoint, "--key", try #require(cluster.keys).userKeyPath(LocalKeys.userName)]
        let cli = QueryCommandLineTests()
        let out = try cli.tessera(["crossmatch", "mine", "survey", "--radius-arcsec", "2", "--all", "--select", "left_id,right_id,sep_arcsec", "--format", "csv"] + ep)
        #expect(out.status == 0, "\(out.err)")
        var pairs: [Pair: Double] = [:]
        for line in out.out.split(separator: "\n").dropFirst() {
            let f = line.split(separator: ",")
            if f.count == 3, let l = Int64(f[0]), let r = Int64(f[1]), let d = Double(f[2]) { pairs[Pair(left: l, right: r)] = d }
        }
        #expect(Self.same(pairs, try Self.pairs("pairs_all.csv")), "\(pairs.count) pairs from the command line")
        // The nearest pairs kept as a table, then asked a question of.
        let stored = try cli.tessera(["crossmatch", "mine", "survey", "--radius-arcsec", "2", "--select", "left_id,left_ra,left_dec,right_id,sep_arcsec",
                                      "--store", "pairs"] + ep)
        #expect(stored.status == 0 && stored.err.contains("stored `pairs`"), "\(stored.err)")
        let nearest = try Self.pairs("pairs_nearest.csv")
        let close = try cli.tessera(["query", "--dataset", "pairs", "--where", "sep_arcsec < 0.5", "--agg", "count", "--format", "csv"] + ep)
        #expect(close.out.split(separator: "\n").last.flatMap { Double($0) } == Double(nearest.values.filter { $0 < 0.5 }.count), "\(close.out)\(close.err)")
        let noPositions = try cli.tessera(["crossmatch", "mine", "survey", "--radius-arcsec", "2", "--select", "left_id", "--store", "p2"] + ep)
        #expect(noPositions.status != 0 && noPositions.err.contains("add left_ra and left_dec to --select"), "\(noPositions.err)")
        // No rows to keep: refused as such (it was an ingest error naming a temporary file).
        let nothing = try cli.tessera(["query", "--dataset", "mine", "--select", "id,ra,dec", "--where", "ra < -1", "--store", "p3"] + ep)
        #expect(nothing.status != 0 && nothing.err.contains("the question matched no rows, so there is no table to store"), "\(nothing.err)")
        #expect(try !conn.status().datasets.contains { $0.name == "p3" })
        let tooWide = try cli.tessera(["crossmatch", "mine", "survey", "--radius-arcsec", "11"] + ep)
        #expect(tooWide.status != 0 && tooWide.err.contains("margin of 10.0″"), "\(tooWide.err)")
    }
}

/// Users' own tables: uploaded into a workspace, cross-matched against the survey, seen by
/// their owner alone (unless shared), refused where they would clash, overrun the quota or
/// carry no usable positions, and dropped when their lifetime ends.
@Suite(.serialized)
struct UploadEndToEndTests {
    func upload(_ conn: SchedulerConnection, _ name: String, _ file: String, lifetime: Double? = nil, shared: Bool = false,
                ra: String = "ra", dec: String = "dec") throws -> Tessera_V1_IngestCommitted {
        var o = IngestOptions(dataset: name, files: [file])
        o.raColumn = ra
        o.decColumn = dec
        o.workspace = true
        o.shared = shared
        o.lifetimeSeconds = lifetime
        return try CatalogIngest.run(o, connection: conn)
    }

    func failure(_ body: () throws -> Any) -> String {
        do { _ = try body(); return "accepted" } catch { return "\(error)" }
    }

    /// A connection as a new (not admin) user, once the scheduler has read the users list again.
    func connect(_ cluster: LocalCluster, as user: String) throws -> SchedulerConnection {
        let key = try #require(cluster.keys).add(.user, name: user)
        let deadline = Date().addingTimeInterval(10)
        while true {
            let conn = try SchedulerConnection(endpoint: cluster.clientEndpoint, timeout: 2, credentials: .curve(key))
            if (try? conn.status(timeout: 1)) != nil { return conn }
            if Date() > deadline { throw ClientError.timedOut("the scheduler never admitted \(user)") }
            Thread.sleep(forTimeInterval: 0.2)
        }
    }

    /// A key taken off the users' list is refused within seconds, on the connection it already
    /// has open too (the lists were read again only when an unknown key connected).
    @Test func aKeyTakenOffTheListIsRefusedOnItsOpenConnection() throws {
        let cluster = try TestCluster.start(workers: 1, dataDirectory: temporaryFolder("revoke-data"))
        defer { cluster.stop() }
        let dave = try connect(cluster, as: "dave")
        #expect((try? dave.status(timeout: 2)) != nil)
        let keys = try #require(cluster.keys)
        let lines = try String(contentsOfFile: keys.usersListPath, encoding: .utf8).split(separator: "\n")
        #expect(lines.contains { $0.hasPrefix("dave ") })
        try (lines.filter { !$0.hasPrefix("dave ") }.joined(separator: "\n") + "\n").write(toFile: keys.usersListPath, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: keys.usersListPath)
        let deadline = Date().addingTimeInterval(10)
        var refused = false
        while !refused, Date() < deadline {
            refused = (try? dave.status(timeout: 1)) == nil
            if !refused { Thread.sleep(forTimeInterval: 0.2) }
        }
        #expect(refused)
        // The others are served as before.
        #expect((try? SchedulerConnection(endpoint: cluster.clientEndpoint).status(timeout: 2)) != nil)
    }

    @Test func aUsersTableIsTheirsAndMeetsTheSurvey() throws {
        let folder = CrossmatchEndToEndTests.folder
        let cluster = try TestCluster.start(workers: 2, dataDirectory: temporaryFolder("upload-data"), schedulerArguments: ["--workspace-quota-mb", "2"])
        defer { cluster.stop() }
        let admin = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        var survey = IngestOptions(dataset: "survey", files: [folder + "/right.csv"])
        (survey.raColumn, survey.decColumn, survey.maxRowsPerShard, survey.replicas) = ("ra", "dec", 1_000, 1)
        _ = try CatalogIngest.run(survey, connection: admin)
        let alice = try connect(cluster, as: "alice"), bob = try connect(cluster, as: "bob")

        // Alice's table meets the survey: astropy's pairs.
        let done = try upload(alice, "mine", folder + "/left.csv")
        #expect(done.dataset == "mine" && done.rows == 4_940)
        let pairs = try alice.run(CatalogQuery(dataset: "mine").crossmatch("survey", radiusArcsec: 2, .all).select(["left_id", "right_id", "sep_arcsec"])).result.table
        #expect(CrossmatchEndToEndTests.same(CrossmatchEndToEndTests.collected(pairs), try CrossmatchEndToEndTests.pairs("pairs_all.csv")))
        let listed = try alice.status().datasets.first { $0.name == "mine" }
        #expect(listed?.owner == "alice" && listed?.shared == false && (listed?.expiresInS ?? 0) > 80_000)

        // Bob sees neither it nor its name.
        #expect(failure { try bob.run(CatalogQuery(dataset: "mine")) }.contains("no dataset named `mine`"))
        #expect(failure { try bob.run(CatalogQuery(dataset: "alice..mine")) }.contains("no dataset named `alice..mine`"))
        #expect(failure { try bob.run(CatalogQuery(dataset: "survey").crossmatch("alice..mine", radiusArcsec: 1)) }.contains("no dataset named `alice..mine` to cross-match with"))
        #expect(try bob.status().datasets.map(\.name) == ["survey"])
        // Bob's table of the same name is his own.
        _ = try upload(bob, "mine", folder + "/left.csv")
        #expect(try bob.run(CatalogQuery(dataset: "mine").count()).result.table.numbers("count") == [4_940])
        // A shared table is read by its full name.
        _ = try upload(alice, "public", folder + "/left.csv", shared: true)
        #expect(try bob.run(CatalogQuery(dataset: "alice..public").count()).result.table.numbers("count") == [4_940])

        // A user loads tables into their workspace, never survey datasets.
        var notMine = IngestOptions(dataset: "mysurvey", files: [folder + "/left.csv"])
        (notMine.raColumn, notMine.decColumn) = ("ra", "dec")
        #expect(failure { try CatalogIngest.run(notMine, connection: alice) }.contains("only an admin key may load survey datasets"))
        // A gateway (an admin key) uploads into the workspace of the user it acts for, only
        // there; a user's key acts for nobody else.
        alice.onBehalfOf = "bob"
        #expect(failure { try upload(alice, "forbob", folder + "/left.csv") }.contains("only an admin key may upload on behalf of another user; this key is user `alice`"))
        alice.onBehalfOf = ""
        let gateway = try SchedulerConnection(endpoint: cluster.clientEndpoint)
        gateway.onBehalfOf = "carol"
        #expect(try upload(gateway, "tapupload-t-1", folder + "/left.csv").rows == 4_940)
        #expect(failure { try CatalogIngest.run(notMine, connection: gateway) }.contains("only an admin key may load survey datasets; this key is user `carol`"))
        let carol = try connect(cluster, as: "carol")
        #expect(try carol.run(CatalogQuery(dataset: "tapupload-t-1").count()).result.table.numbers("count") == [4_940])
        #expect(try carol.status().datasets.first { $0.name == "tapupload-t-1" }?.owner == "carol")
        #expect(failure { try alice.run(CatalogQuery(dataset: "tapupload-t-1")) }.contains("no dataset named"))

        // A task graph naming a shard of Alice's table is Alice's to run, not Bob's.
        let data = try #require(cluster.options.dataDirectory)
        let files = FileManager.default.enumerator(atPath: data)?.compactMap { $0 as? String } ?? []
        let shardPath = try #require(files.first { $0.contains("/catalogs/alice..mine/") && $0.hasSuffix(".shard") })
        let key = try #require(ShardKey(String(shardPath[shardPath.range(of: "/catalogs/")!.upperBound...]))).description
        var graph = TaskGraph(operators: ["noop"], params: [], dataKeys: [key])
        graph.add(operatorIndex: 0)
        graph.dataKey = [1]
        #expect(failure { try bob.submit(.graph(graph)) }.contains("no live worker holds data `\(key)`"))
        #expect(failure { try alice.submit(.graph(graph)) } == "accepted")
        // The scan itself only from a plan the scheduler checks, whoever asks.
        var scan = graph
        scan.operators = ["catalog_scan"]
        #expect(failure { try alice.submit(.graph(scan)) }.contains("operator `catalog_scan` is placed only from a plan"))

        // Refused: a survey dataset's name, `..`, a table over the quota, no positions, NaN positions.
        #expect(failure { try upload(alice, "survey", folder + "/left.csv") }.contains("`survey` is a survey dataset"))
        #expect(failure { try upload(alice, "a..b", folder + "/left.csv") }.contains("may not contain `..`"))
        let dir = temporaryFolder("upload-input")
        var big = "id,ra,dec,mag\n"
        for i in 0..<40_000 { big += "\(i),\(Double(i % 3600) / 10),\(Double(i / 3600) - 20.5),20\n" }
        try big.write(toFile: dir + "/big.csv", atomically: true, encoding: .utf8)
        let quota = failure { try upload(alice, "big", dir + "/big.csv") }
        #expect(quota.contains("over its quota of 2 MiB"), "\(quota)")
        try "id,x,y\n1,2,3\n".write(toFile: dir + "/nopos.csv", atomically: true, encoding: .utf8)
        let noPositions = failure { try upload(alice, "nopos", dir + "/nopos.csv") }
        #expect(noPositions.contains("`ra`"), "\(noPositions)")
        try "id,ra,dec\n1,10,20\n2,11,nan\n".write(toFile: dir + "/nan.csv", atomically: true, encoding: .utf8)
        let nan = failure { try upload(alice, "nan", dir + "/nan.csv") }
        #expect(nan.contains("dec") && nan.lowercased().contains("nan"), "\(nan)")
        // Nothing refused was recorded.
        #expect(Set(try alice.status().datasets.map(\.name)) == ["mine", "public", "survey"])

        // A table whose lifetime ends is dropped.
        _ = try upload(alice, "brief", folder + "/left.csv", lifetime: 1)
        #expect(try alice.status().datasets.contains { $0.name == "brief" })
        let deadline = Date().addingTimeInterval(10)
        while try alice.status().datasets.contains(where: { $0.name == "brief" }) && Date() < deadline { Thread.sleep(forTimeInterval: 0.2) }
        #expect(failure { try alice.run(CatalogQuery(dataset: "brief")) }.contains("no dataset named `brief`"))

        // An upload begun and not yet committed counts against the quota too: one claiming 1
        // MiB leaves no room for another table.
        var begin = Tessera_V1_IngestBegin()
        (begin.clientTag, begin.dataset, begin.replicas, begin.workspace) = (alice.makeTag(), "pending", 1, true)
        var spec = Tessera_V1_ShardSpec()
        (spec.order, spec.pixel, spec.rows, spec.bytes) = (0, 3, 25_000, 1_000_000)
        begin.shards = [spec]
        var envelope = Envelope()
        envelope.ingestBegin = begin
        guard case .ingestPlan = try alice.request(envelope, tag: begin.clientTag).body else { Issue.record("the pending upload was refused"); return }
        #expect(failure { try upload(alice, "second", folder + "/left.csv") }.contains("over its quota of 2 MiB"))
    }
}
