import Testing
import TesseraSky

/// MOCs against brute force: the cells cover exactly the pixels given, in normal form.
struct CoverageMOCTests {
    /// A seeded generator (SplitMix64), for the same trials on every run.
    struct Generator {
        var state: UInt64
        mutating func nextUnit() -> Double {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return Double((z ^ (z >> 31)) >> 11) / Double(1 << 53)
        }
    }

    /// The order-`order` pixels the MOC covers, by expanding every cell.
    func expanded(_ moc: CoverageMOC) -> Set<Int64> {
        var out: Set<Int64> = []
        for (o, list) in moc.cells {
            let shift = 2 * Int64(moc.maxOrder - o)
            for p in list { for q in (p << shift)..<((p + 1) << shift) { out.insert(q) } }
        }
        return out
    }

    @Test func coversExactlyThePixelsInNormalForm() {
        var rng = Generator(state: 9)
        for trial in 0..<50 {
            let order = 1 + trial % 6
            let n = HEALPix.pixelCount(order)
            // Clumps of neighbouring pixels, so that whole sibling groups occur.
            var pixels: [Int64] = []
            for _ in 0..<(1 + trial * 3) {
                let start = Int64(rng.nextUnit() * Double(n))
                let run = Int64(rng.nextUnit() * 64)
                pixels += (start..<min(n, start + run)).map { $0 }
            }
            let moc = CoverageMOC(order: order, pixels: pixels + pixels.prefix(5))
            #expect(expanded(moc) == Set(pixels))
            for (o, list) in moc.cells {
                #expect(list == list.sorted() && Set(list).count == list.count)
                // Normal form: no complete group of four siblings left at any order but 0.
                if o > 0 { #expect(!list.contains { $0 & 3 == 0 && Set(list).isSuperset(of: [$0 + 1, $0 + 2, $0 + 3]) }) }
            }
            for p in pixels.prefix(20) { #expect(moc.contains(pixel: p)) }
        }
    }

    @Test func nuniqAndJSONAreTheStandardsEncodings() {
        // MOC 2.0 §4.3.1: uniq = 4 × 4^order + pixel.
        let whole = CoverageMOC(order: 3, pixels: 0..<HEALPix.pixelCount(3))
        #expect(whole.cells.keys.sorted() == [0] && whole.nuniq == (4...15).map { Int64($0) })
        let one = CoverageMOC(order: 2, pixels: [5, 6, 7, 4, 100])
        #expect(one.nuniq == [16 + 1, 64 + 100])
        #expect(one.json == #"{"1":[1],"2":[100]}"#)
        #expect(CoverageMOC(order: 4, pixels: []).json == "{}")
    }
}
