import Foundation
import Testing
import TesseraProtocol

/// The limits a user meets are written down in one place, the README, from the same values the
/// daemons enforce; and the shared checks of names and endpoints refuse what they should.
struct LimitsTests {
    static var readme: String {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return (try? String(contentsOf: root.appendingPathComponent("README.md"), encoding: .utf8)) ?? ""
    }

    @Test func theReadmeTableIsTheEnforcedLimits() throws {
        let text = Self.readme
        let begin = try #require(text.range(of: "<!-- limits:begin (written by `tessera limits`; a test keeps them equal) -->\n"))
        let end = try #require(text.range(of: "<!-- limits:end -->"))
        let table = String(text[begin.upperBound..<end.lowerBound]).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(table == Limits.markdownTable, "regenerate the README's limits table from Limits.markdownTable")
    }

    @Test func endpointsMustReadTcpHostPort() {
        for good in ["tcp://127.0.0.1:7800", "tcp://host-b.example.org:1", "tcp://[::1]:65535", "tcp://[fe80::1]:7800"] {
            #expect(Validate.tcpEndpoint(good) == nil, "\(good)")
        }
        for bad in ["bogus://x", "tcp://127.0.0.1", "tcp://127.0.0.1:0", "tcp://127.0.0.1:65536", "tcp://*:7800", "tcp://:7800",
                    "tcp://a b:1", "tcp://h:+1", "ipc:///tmp/x", "tcp://[zz]:1", "tcp://" + String(repeating: "a", count: 300) + ":1"] {
            #expect(Validate.tcpEndpoint(bad) != nil, "\(bad)")
        }
    }

    @Test func namesAreSafeAsFileNames() {
        for good in ["object", "dp1.object", "local-0", "A_b-9"] { #expect(Validate.name(good, what: "x", limit: 64) == nil) }
        for bad in ["", ".hidden", "..", "a/b", "../etc", "a b", "é", "a\u{0}b", String(repeating: "a", count: 65)] {
            #expect(Validate.name(bad, what: "x", limit: 64) != nil, "\(bad)")
        }
    }

    /// An ingest's options are refused where the client starts, before it reads a file, with the
    /// words the scheduler's commit uses.
    @Test func ingestOptionsAreCheckedWithTheirLimits() {
        #expect(IngestOptionsCheck.problem(marginArcsec: 10, maxRowsPerShard: 1_000_000) == nil)
        #expect(IngestOptionsCheck.problem(marginArcsec: .infinity, maxRowsPerShard: 1)?.contains("outside 0…3600″") == true)
        #expect(IngestOptionsCheck.problem(marginArcsec: 1e9, maxRowsPerShard: 1)?.contains("outside 0…3600″") == true)
        #expect(IngestOptionsCheck.problem(marginArcsec: .nan, maxRowsPerShard: 1) != nil)
        #expect(IngestOptionsCheck.problem(marginArcsec: -1, maxRowsPerShard: 1) != nil)
        #expect(IngestOptionsCheck.problem(marginArcsec: 0, maxRowsPerShard: UInt64(Limits.shardRows) + 1)?.contains("over the limit of \(Limits.shardRows) rows per shard") == true)
    }

    /// Seconds in messages: whole ones without ".0", others as they are, and no trap on values
    /// no `Int` holds.
    @Test func shortTextDropsOnlyANeedlessFraction() {
        #expect(30.0.shortText == "30")
        #expect(0.5.shortText == "0.5")
        #expect(2.25.shortText == "2.25")
        #expect((-4.0).shortText == "-4")
        #expect(1e300.shortText == "1e+300")
        #expect(Double.nan.shortText == "nan")
        #expect(Double.infinity.shortText == "inf")
    }
}
