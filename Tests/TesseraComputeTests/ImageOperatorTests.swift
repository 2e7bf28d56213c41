import Foundation
import Testing
import TesseraCompute
import TesseraProtocol
import TesseraSky
import TesseraStorage

/// Cutouts and forced photometry against astropy's Cutout2D and photutils, on an image astropy
/// wrote (Fixtures/image.fits and image.json, from scripts/make_image_fixtures.py).
struct ImageOperatorTests {
    static let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")
    /// Parsed on each use: `[String: Any]` cannot be a shared static under strict concurrency.
    static var reference: [String: Any] {
        guard let d = try? Data(contentsOf: folder.appendingPathComponent("image.json")),
              let o = try? JSONSerialization.jsonObject(with: d) as? [String: Any] else { return [:] }
        return o
    }

    static func number(_ o: [String: Any], _ k: String) -> Double { Double(o[k] as? String ?? "") ?? .nan }

    func open() throws -> ImagePatchFile { try ImagePatchFile(path: Self.folder.appendingPathComponent("image.fits").path) }

    @Test func readsAstropysFile() throws {
        let f = try open()
        #expect(f.header.width == 200 && f.header.height == 160 && f.header.band == "r")
        #expect(f.header.tract == -1)
        #expect(abs(f.header.wcs.pixelScaleArcsec - 0.4) < 1e-12)
    }

    /// Pixel for pixel (bit for bit, NaN where outside) and CRPIX, inside, across an edge and at
    /// a corner.
    @Test func cutoutsMatchCutout2D() throws {
        let f = try open()
        let cases = try #require(Self.reference["cutouts"] as? [[String: Any]])
        #expect(cases.count == 4)
        for c in cases {
            let (ra, dec) = (Self.number(c, "ra"), Self.number(c, "dec"))
            let p = try #require(f.header.wcs.pixel(ra: ra, dec: dec))
            #expect(abs(p.x - Self.number(c, "x")) < 1e-9 && abs(p.y - Self.number(c, "y")) < 1e-9)
            let (w, h) = (c["width"] as? Int ?? 0, c["height"] as? Int ?? 0)
            let box = PixelBox.centred(x: p.x, y: p.y, width: w, height: h)
            #expect(box.x0 == c["x0"] as? Int && box.y0 == c["y0"] as? Int, "origin \(box) for \(c)")
            var cut = ImageCutout(band: "r", box: box, gridWCS: f.header.wcs, tract: -1)
            cut.paste(f)
            #expect(abs(cut.wcs.crpix1 - Self.number(c, "crpix1")) < 1e-12 && abs(cut.wcs.crpix2 - Self.number(c, "crpix2")) < 1e-12)
            let hex = c["pixels"] as? String ?? ""
            var expected: [UInt32] = []
            var i = hex.startIndex
            while i < hex.endIndex {
                let j = hex.index(i, offsetBy: 8)
                expected.append(UInt32(hex[i..<j], radix: 16) ?? 0)
                i = j
            }
            #expect(expected.count == w * h)
            let got = cut.image.map(\.bitPattern)
            // NaN fill: any NaN matches NaN; every other pixel bit for bit.
            let mismatches = zip(got, expected).filter { g, e in
                Float(bitPattern: g).isNaN ? !Float(bitPattern: e).isNaN : g != e
            }.count
            #expect(mismatches == 0, "\(mismatches) pixels differ for \(c["width"] ?? 0)×\(c["height"] ?? 0) at \(ra), \(dec)")
            // Outside the image: no data in the mask; inside: the file's mask.
            let outside = cut.mask.filter { $0 & ImageMask.noData != 0 }.count
            #expect(outside == got.filter { Float(bitPattern: $0).isNaN }.count)
        }
    }

    @Test func photometryMatchesPhotutils() throws {
        let f = try open()
        let rows = try #require(Self.reference["photometry"] as? [[String: Any]])
        let fp = ForcedPhotometry(apertureRadius: Self.number(Self.reference, "radius"),
                                  annulusInner: Self.number(Self.reference, "annulus_inner"),
                                  annulusOuter: Self.number(Self.reference, "annulus_outer"),
                                  clip: SigmaClippedMedian(sigma: 3, maxIterations: 10))
        var worst = (sum: 0.0, err: 0.0, median: 0.0)
        var inPlace = 0
        for r in rows {
            let (x, y) = (Self.number(r, "x"), Self.number(r, "y"))
            var stamp = ImageCutout(band: "r", box: fp.stampBox(x: x, y: y), gridWCS: f.header.wcs, tract: -1)
            stamp.paste(f)
            let m = fp.measure(x: x, y: y, on: stamp)
            // On the file's planes where they lie (big-endian, as a worker measures when the
            // stamp is inside the file): the same measurement to the bit.
            if f.header.box.contains(stamp.box) {
                var scratch = SigmaClippedMedian.Scratch()
                let direct = f.withPlanes { image, variance, mask in
                    fp.measure(x: x, y: y, in: PixelPlanes<BigEndianByteOrder>(image: image, variance: variance, mask: mask, box: f.header.box),
                               scratch: &scratch)
                }
                #expect(direct.sum.bitPattern == m.sum.bitPattern && direct.sumVariance.bitPattern == m.sumVariance.bitPattern
                        && direct.area == m.area && direct.background.bitPattern == m.background.bitPattern
                        && direct.backgroundPixels == m.backgroundPixels && direct.flags == m.flags
                        && direct.backgroundPixelVariance.bitPattern == m.backgroundPixelVariance.bitPattern, "at \(x), \(y): \(direct) on the file, \(m) on a stamp")
                inPlace += 1
            }
            // NaN counts as the worst (Swift's max would drop it).
            func rel(_ a: Double, _ b: Double) -> Double { let d = abs(a - b) / max(abs(b), 1e-300); return d.isNaN ? .infinity : d }
            worst.sum = max(worst.sum, rel(m.sum, Self.number(r, "sum")))
            worst.err = max(worst.err, rel(m.sumVariance.squareRoot(), Self.number(r, "sum_err")))
            worst.median = max(worst.median, rel(m.background, Self.number(r, "annulus_median")))
        }
        #expect(rows.count == 63)
        #expect(inPlace >= 40, "only \(inPlace) positions measured in place")
        #expect(worst.sum < 1e-6 && worst.err < 1e-6 && worst.median < 1e-6, "relative differences \(worst)")
    }

    /// Astropy's SigmaClip the plain way: sort, then filter and recompute until nothing changes.
    static func sortAndClip(_ input: [Double], sigma: Double, iterations: Int) -> (Double, Int) {
        var kept = input.sorted()
        func med(_ a: [Double]) -> Double { a.count % 2 == 1 ? a[a.count / 2] : 0.5 * (a[a.count / 2 - 1] + a[a.count / 2]) }
        for _ in 0..<iterations where !kept.isEmpty {
            let c = med(kept), m = kept.reduce(0, +) / Double(kept.count)
            let sd = (kept.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(kept.count)).squareRoot()
            let next = kept.filter { $0 >= c - sigma * sd && $0 <= c + sigma * sd }
            if next.count == kept.count { break }
            kept = next
        }
        return kept.isEmpty ? (.nan, 0) : (med(kept), kept.count)
    }

    /// The selection-based clipped median against a plain sort-and-clip, on random samples with
    /// outliers (odd and even counts, ties).
    @Test func clippedMedianMatchesSorting() {
        var state: UInt64 = 3
        func unit() -> Double {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Double(state >> 11) / Double(1 << 53)
        }
        for trial in 0..<300 {
            let n = 1 + trial % 97
            var v = (0..<n).map { _ in (unit() * 10).rounded() / 2 + (unit() < 0.05 ? 500 * unit() : 0) }
            let want = Self.sortAndClip(v, sigma: 3, iterations: 10)
            let got = SigmaClippedMedian(sigma: 3, maxIterations: 10).median(&v)
            #expect(zip(v, v.dropFirst()).allSatisfy { $0 <= $1 } && v.count == n, "trial \(trial): not sorted")
            #expect(got.kept == want.1 && (got.median == want.0 || abs(got.median - want.0) < 1e-12), "trial \(trial): \(got) vs \(want)")
        }
    }

    /// The annulus's Float32 path (values counted into buckets, a bucket sorted when a median
    /// needs it) gives the clipped median of a plain sort of the same values as doubles:
    /// negative and positive values, ±0, ties, subnormals, outliers of both signs, a bright
    /// source on one side, outliers where the first estimate samples, a sample far narrower than
    /// the values (the medians then in the buckets outside), one value and many; working space
    /// reused throughout.
    @Test func selectedPixelsGiveTheSameClippedMedian() {
        var state: UInt64 = 11
        func unit() -> Double {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Double(state >> 11) / Double(1 << 53)
        }
        let clip = SigmaClippedMedian(sigma: 3, maxIterations: 10)
        var scratch = SigmaClippedMedian.Scratch()
        for trial in 0..<400 {
            let n = trial < 20 ? 1 + trial : 1 + Int(unit() * 900)
            var pixels: [Float] = (0..<n).map { _ in
                switch unit() {
                case ..<0.03: return unit() < 0.5 ? 0 : -0.0
                case ..<0.05: return Float(unit() < 0.5 ? 1 : -1) * Float.leastNonzeroMagnitude * Float(1 + Int(unit() * 5))
                case ..<0.10: return Float((unit() - 0.3) * 2e5)  // outliers
                default: return Float(((unit() - 0.5) * 40).rounded() / 4)  // ties
                }
            }
            if trial % 7 == 0 { pixels = pixels.map { $0 + 1e4 } }  // all positive, one exponent byte
            if trial % 5 == 1 {
                // Smooth noise with a bright source over a quarter of the ring: the clip moves
                // the median many ranks from the first one.
                pixels = pixels.indices.map { k in
                    Float((unit() + unit() + unit() - 1.5) * 8) + (k % 4 == 0 ? Float(40 + unit() * 400) : 0)
                }
            }
            if trial % 11 == 2 { pixels = pixels.map { _ in 7 } + [1e6] }  // one value many times
            if trial % 13 == 3, n >= 15 {
                // Outliers at every fifteenth value, where the first estimate samples: it lands on
                // one, far from the values the clip keeps (a spread from a difference of squares
                // around it would be rounding noise).
                pixels = pixels.map { Float((Double($0) * 0.01).rounded()) }
                for k in 0..<15 { pixels[k * n / 15] = trial % 2 == 0 ? 1e30 : -3e38 }
            }
            if trial % 17 == 4, n >= 15 {
                // The sampled values nearly equal, the rest spread a thousand times wider.
                pixels = pixels.indices.map { _ in Float((unit() - 0.5) * 2000) }
                for k in 0..<15 { pixels[k * n / 15] = Float(unit() * 1e-3) }
            }
            let want = Self.sortAndClip(pixels.map(Double.init), sigma: 3, iterations: 10)
            let got = clip.median(float32: pixels, scratch: &scratch)
            #expect(got.kept == want.1 && (got.median == want.0 || abs(got.median - want.0) <= 1e-12 * max(1, abs(want.0))),
                    "trial \(trial), \(n) pixels: \(got) vs \(want)")
        }
        #expect(clip.median(float32: [], scratch: &scratch).kept == 0)
    }

    /// The overlap is the circle's area in total, and a quarter in a quadrant; against a
    /// brute-force count of sub-pixel centres.
    @Test func circleOverlapIsExact() {
        let r = 3.7
        var total = 0.0
        for j in -5...5 { for i in -5...5 {
            total += CircleOverlap.area(x0: Double(i) - 0.5 + 0.13, y0: Double(j) - 0.5 - 0.21, x1: Double(i) + 0.5 + 0.13, y1: Double(j) + 0.5 - 0.21, radius: r)
        } }
        #expect(abs(total - .pi * r * r) < 1e-12)
        #expect(abs(CircleOverlap.area(x0: 0, y0: 0, x1: 10, y1: 10, radius: r) - .pi * r * r / 4) < 1e-12)
        // One pixel straddling the edge, by 2000 × 2000 sub-pixel centres.
        let (x0, y0) = (2.6, 1.1)
        let n = 2000
        var inside = 0
        for a in 0..<n { for b in 0..<n {
            let x = x0 + (Double(a) + 0.5) / Double(n), y = y0 + (Double(b) + 0.5) / Double(n)
            if x * x + y * y < r * r { inside += 1 }
        } }
        #expect(abs(CircleOverlap.area(x0: x0, y0: y0, x1: x0 + 1, y1: y0 + 1, radius: r) - Double(inside) / Double(n * n)) < 1e-5)
    }

    /// A patch written by Tessera reads back with the same pixels, header and WCS.
    @Test func patchFileRoundTrips() throws {
        let wcs = TanWCS.northUp(ra: 10, dec: -30, x: 40, y: 30, scaleArcsec: 0.5)
        let h = ImagePatchHeader(band: "g", tract: 1234, patch: 1234 * 64 + 5, tractOrder: 5, patchOrder: 8, x0: 700, y0: 800, width: 37, height: 23, wcs: wcs)
        let n = 37 * 23
        let img = (0..<n).map { Float($0) * 0.5 - 3 }, vari = (0..<n).map { Float($0 % 7) + 1 }, msk = (0..<n).map { Int32($0 % 3) }
        let bytes = try ImagePatchWriter.encode(header: h, image: img, variance: vari, mask: msk)
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("patch-\(getpid()).fits").path
        defer { unlink(path) }
        try DurableFile.write(bytes, to: path)
        let f = try ImagePatchFile(path: path)
        #expect(f.header == h)
        #expect(f.checksum() == XXHash64.hash(bytes))
        let all = PixelBox(x0: 0, y0: 0, width: 37, height: 23)
        #expect(f.floats(.image, box: all) == img)
        #expect(f.floats(.variance, box: all) == vari)
        #expect(f.mask(box: all) == msk)
        // A box hanging over the edge: the part inside, fill outside.
        let part = f.floats(.image, box: PixelBox(x0: 35, y0: 21, width: 4, height: 3))
        #expect(part[0] == img[21 * 37 + 35] && part[1] == img[21 * 37 + 36] && part[2].isNaN && part[8].isNaN)
    }

    /// Patches encoded one after another each hold only their own extensions (cfitsio's memory
    /// driver once read a reused buffer's old bytes as extensions of the next file).
    @Test func patchesEncodedInTurnStayApart() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("turns-\(getpid()).fits").path
        defer { unlink(path) }
        for (k, side) in [300, 120, 290, 60, 310].enumerated() {
            let h = ImagePatchHeader(band: "i", tract: 1, patch: Int64(k), tractOrder: 5, patchOrder: 8, x0: 0, y0: 0, width: side, height: side + 3,
                                     wcs: .northUp(ra: 1, dec: 2, x: 3, y: 4, scaleArcsec: 1))
            let n = side * (side + 3)
            let bytes = try ImagePatchWriter.encode(header: h, image: [Float](repeating: Float(k), count: n), variance: [Float](repeating: 1, count: n),
                                                    mask: [Int32](repeating: 0, count: n))
            #expect(bytes.count % 2880 == 0)
            try DurableFile.write(bytes, to: path)
            let f = try ImagePatchFile(path: path)
            #expect(f.header == h)
            #expect(f.floats(.image, box: PixelBox(x0: 0, y0: 0, width: side, height: side + 3)).allSatisfy { $0 == Float(k) })
            // Exactly the four headers: the file ends where the VARIANCE data ends.
            #expect(f.byteCount == ((2880 + 3 * (2880 + (4 * n + 2879) / 2880 * 2880))))
        }
    }

    /// Tiling cards and grid offsets the registry and the scheduler compute with are checked
    /// when a file is opened (a patch with GRID_X0 = Int64.min put the scheduler in a crash
    /// loop; PAORDER = Int64.max trapped a worker), and a registry record is read without trapping.
    @Test func refusesTilingCardsThatNameNoPatch() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("cards-\(getpid()).fits").path
        defer { unlink(path) }
        let good = ImagePatchHeader(band: "r", tract: 100, patch: 100 * 64 + 7, tractOrder: 5, patchOrder: 8, x0: 10, y0: 20, width: 8, height: 6,
                                    wcs: .northUp(ra: 1, dec: 2, x: 3, y: 4, scaleArcsec: 1))
        func opened(_ change: (inout ImagePatchHeader) -> Void) throws -> String {
            var h = good
            change(&h)
            let n = h.width * h.height
            try DurableFile.write(try ImagePatchWriter.encode(header: h, image: [Float](repeating: 1, count: n), variance: [Float](repeating: 1, count: n),
                                                              mask: [Int32](repeating: 0, count: n)), to: path)
            do { _ = try ImagePatchFile(path: path); return "opened" } catch { return "\(error)" }
        }
        #expect(try opened { _ in } == "opened")
        #expect(try opened { ($0.tract, $0.patch, $0.tractOrder, $0.patchOrder, $0.x0, $0.y0) = (-1, -1, -1, -1, 0, 0) } == "opened")
        #expect(try opened { $0.x0 = .min }.contains("GRID_X0"))
        #expect(try opened { $0.y0 = 1 << 40 }.contains("GRID_Y0"))
        #expect(try opened { $0.patchOrder = .max }.contains("tiling cards"))
        #expect(try opened { $0.tractOrder = 1 << 32 }.contains("tiling cards"))
        #expect(try opened { $0.patchOrder = 4 }.contains("tiling cards"))
        #expect(try opened { $0.tract = 12 << 10 }.contains("tiling cards"))
        #expect(try opened { $0.patch = -2 }.contains("tiling cards"))
        var record = ImageDataset.info(good)
        record.x0 = .min
        #expect(ImageDataset.header(record) == nil)
        #expect(ImageDataset.header(ImageDataset.info(good)) == good)
    }

    /// A region reaching almost 90° from the tract's tangent point projects to ~1e22 pixels: the
    /// refusal's message once made that an Int and trapped the scheduler (SODA `POS=RANGE 10 12
    /// -90 90`). So did a forced-photometry annulus of 1e300″.
    @Test func hugeCutoutsAndAnnuliAreRefusedInWords() throws {
        let tiling = SkyTiling()
        var box = Tessera_V1_BoxSpec()
        (box.raMin, box.raMax, box.decMin, box.decMax) = (10, 12, -90, 90)
        let region = CatalogQueryPlan.OneOf_Region.box(box)
        let centre = try #require(CutoutGeometry.centre(region))
        let wcs = tiling.tractWCS(tiling.tract(ra: centre.ra, dec: centre.dec))
        let refusal = #expect(throws: CatalogQueryError.self) { try CutoutGeometry.box(region: region, width: 0, height: 0, wcs: wcs) }
        #expect(refusal?.message.contains("pixels is larger than the limit") == true, "\(String(describing: refusal))")
        var images = Tessera_V1_ImageDatasetInfo()
        images.bands = ["r"]
        images.pixelScaleArcsec = 0.2
        images.borderPixels = 100
        var spec = ForcedPhotometrySpec()
        spec.images = "coadd"
        spec.apertureArcsec = 1
        spec.annulusOuterArcsec = 1e300
        let annulus = #expect(throws: CatalogQueryError.self) { try ForcedPhotometryQuestion.check(spec, images: images) }
        #expect(annulus?.message.contains("reaches 5e+300") == true, "\(String(describing: annulus))")
        spec.annulusOuterArcsec = 0
        #expect(try ForcedPhotometryQuestion.check(spec, images: images).photometry.annulusOuter == 17.5)
        #expect((1e300).wholeText == "1e+300" && Double.nan.wholeText == "nan" && (4096.4).wholeText == "4096")
    }

    /// A median stack's histogram range must cut into bins of ordinary width: 0…1e-322 made
    /// every pixel's bin NaN, which trapped the worker as an index.
    @Test func medianStackBinsHaveOrdinaryWidth() throws {
        var images = Tessera_V1_ImageDatasetInfo()
        images.bands = ["g"]
        images.borderPixels = 100
        var s = StackSpec()
        (s.images, s.band, s.size, s.kind) = ("coadd", "g", 1, .stackMedian)
        for (lo, hi) in [(0.0, 1e-322), (-1e308, 1e308)] {
            (s.medianMin, s.medianMax) = (lo, hi)
            #expect(throws: CatalogQueryError.self, "\(lo)…\(hi)") { try ImageStack.check(s, images: images) }
        }
        (s.medianMin, s.medianMax) = (-10, 100)
        try ImageStack.check(s, images: images)
    }

    /// A box's centre is that of the checked region, whatever the plan's numbers: a SODA RANGE
    /// of ±1e308 once made it ∞ and trapped the scheduler's tiling.
    @Test func aCutoutBoxCentreIsOnTheSky() {
        func box(_ a: Double, _ b: Double) -> CatalogQueryPlan.OneOf_Region {
            var x = Tessera_V1_BoxSpec()
            (x.raMin, x.raMax, x.decMin, x.decMax) = (a, b, -1, 1)
            return .box(x)
        }
        let wide = CutoutGeometry.centre(box(-1e308, 1e308))
        #expect(wide.map { (0..<360).contains($0.ra) && $0.dec == 0 } == true)
        #expect(CutoutGeometry.centre(box(350, 10))?.ra == 0)
        #expect(CutoutGeometry.centre(box(10, 20))?.ra == 15)
        #expect(CutoutGeometry.centre(box(.infinity, 20)) == nil)
    }

    @Test func refusesFilesThatAreNotPatches() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("notpatch-\(getpid()).fits").path
        defer { unlink(path) }
        try FITSTableWriter.write(to: path, columns: [ColumnSpec("a", .columnFloat64)], data: [.float64([1, 2])])
        #expect(throws: ImageFileError.notAPatch(path: path, reason: "it has no IMAGE extension")) { try ImagePatchFile(path: path) }
    }
}

extension ImageOperatorTests {
    /// A value swept across the clip's bound, one step of about half a billionth at a time,
    /// where the first estimate samples values far from the rest (900 among values of spread
    /// 1): the kept values and median are the sort's at every step. A spread from a difference
    /// of squares around that estimate (900 deviations off) moved the bound by about a
    /// ten-billionth and kept the value on the wrong side of it.
    @Test func clipBoundIsExactNearAValue() {
        var state: UInt64 = 29
        func unit() -> Double {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Double(state >> 11) / Double(1 << 53)
        }
        func med(_ a: [Double]) -> Double { a.count % 2 == 1 ? a[a.count / 2] : 0.5 * (a[a.count / 2 - 1] + a[a.count / 2]) }
        func deviation(_ a: [Double]) -> Double {
            let m = a.reduce(0, +) / Double(a.count)
            return (a.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(a.count)).squareRoot()
        }
        /// The sort's second upper bound: its first clip, then the median plus three deviations.
        func secondUpper(_ p: [Float]) -> Double {
            let v = p.map(Double.init).sorted()
            let (c1, s1) = (med(v), deviation(v))
            let kept = v.filter { $0 >= c1 - 3 * s1 && $0 <= c1 + 3 * s1 }
            return med(kept) + 3 * deviation(kept)
        }
        let clip = SigmaClippedMedian(sigma: 3, maxIterations: 10)
        var scratch = SigmaClippedMedian.Scratch()
        var crossed = 0, differing: [String] = []
        for base in 0..<16 {
            let n = 650
            var p = (0..<n).map { _ in Float((0..<12).reduce(0.0) { a, _ in a + unit() } - 6) }
            for k in 0..<15 { p[k * n / 15] = 900 }
            p[2] = 1
            // The value at index 1 on the bound it moves itself (a few rounds settle it).
            for _ in 0..<6 { p[1] = Float(secondUpper(p)) }
            func moved(_ step: Int) -> [Float] {
                var q = p
                q[2] = Float(bitPattern: UInt32(Int(Float(1).bitPattern) + step))
                return q
            }
            func kept(_ step: Int) -> Int { Self.sortAndClip(moved(step).map(Double.init), sigma: 3, iterations: 10).1 }
            // Where the sort's kept count changes, by bisection, then every step around it.
            var (lo, hi) = (-2000, 2000)
            let first = kept(lo)
            guard kept(hi) != first else { continue }
            crossed += 1
            while hi - lo > 1 {
                let mid = (lo + hi) / 2
                if kept(mid) == first { lo = mid } else { hi = mid }
            }
            for step in (lo - 30)...(hi + 30) {
                let q = moved(step)
                let want = Self.sortAndClip(q.map(Double.init), sigma: 3, iterations: 10)
                let got = clip.median(float32: q, scratch: &scratch)
                if got.kept != want.1 || got.median != want.0 { differing.append("base \(base), step \(step): \(got) vs \(want)") }
            }
        }
        // The sweeps do cross the bound (or the test would show nothing).
        #expect(crossed >= 4, "only \(crossed) sweeps crossed the bound")
        #expect(differing.isEmpty, "\(differing.count) steps differ: \(differing.prefix(5))")
    }
}

extension ImageOperatorTests {
    /// The annulus's background against a brute force over every pixel of the planes (centre
    /// at r_in ≤ d < r_out, not masked bad, image and variance finite, then a plain sort and
    /// clip): at random positions with the ring cut by the planes' edges (a box with negative
    /// coordinates, or beyond 32 bits), at whole and half pixels, radii whole (pixel centres exactly on a circle)
    /// and not, a hole of less than a pixel; with masked pixels, NaN images or variances, an
    /// infinity, in some trials, which the vectorised copy must hand to the careful one. The
    /// aperture likewise, against every pixel's exact overlap.
    @Test func annulusMatchesBruteForce() {
        var rng = SplitMix64(seed: 41)
        func unit() -> Double { rng.nextUnit() }
        let near = PixelBox(x0: -7, y0: 5, width: 61, height: 47)
        // A grid's numbers beyond 32 bits (runs are counted from the box's first column).
        let far = PixelBox(x0: 3_000_000_007, y0: -2_500_000_000, width: 61, height: 47)
        let radii: [(Double, Double, Double)] = [(2, 4, 7), (1.5, 3, 5), (1, 5, 5.0000001), (0.5, 0.3, 1.2), (3, 6.5, 11.25), (5, 10, 17.5)]
        var scratch = SigmaClippedMedian.Scratch()
        var spoiled = 0, checked = 0
        for trial in 0..<600 {
            let box = trial % 4 == 3 ? far : near
            let n = box.width * box.height
            var image = (0..<n).map { _ in Float((unit() + unit() + unit() - 1.5) * 10 + (unit() < 0.03 ? 400 * unit() : 0)) }
            var variance = (0..<n).map { _ in Float(1 + unit()) }
            var mask = [Int32](repeating: 0, count: n)
            if trial % 3 == 1 {
                for _ in 0..<40 {
                    let k = Int(unit() * Double(n))
                    switch Int(unit() * 5) {
                    case 0: mask[k] |= ImageMask.bad
                    case 1: mask[k] |= ImageMask.edge   // not a bad bit: kept
                    case 2: image[k] = .nan
                    case 3: variance[k] = .nan
                    default: image[k] = -.infinity
                    }
                }
            }
            let (r, inner, outer) = radii[trial % radii.count]
            var x = Double(box.x0) - 3 + unit() * Double(box.width + 6), y = Double(box.y0) - 3 + unit() * Double(box.height + 6)
            if trial % 5 == 2 { (x, y) = (x.rounded(), y.rounded()) }
            if trial % 5 == 3 { (x, y) = (x.rounded() + 0.5, y.rounded() - 0.5) }
            let fp = ForcedPhotometry(apertureRadius: r, annulusInner: inner, annulusOuter: outer)
            let got = image.withUnsafeBytes { im in
                variance.withUnsafeBytes { va in
                    mask.withUnsafeBytes { ma in
                        fp.measure(x: x, y: y, in: PixelPlanes<HostByteOrder>(image: im.baseAddress!, variance: va.baseAddress!, mask: ma.baseAddress!, box: box),
                                   scratch: &scratch)
                    }
                }
            }
            var values: [Double] = [], varianceSum = 0.0, variancePixels = 0, left = 0
            for j in box.y0..<box.y1 {
                for i in box.x0..<box.x1 {
                    let dx = Double(i) - x, dy = Double(j) - y
                    let d2 = dx * dx + dy * dy
                    guard d2 >= inner * inner, d2 < outer * outer else { continue }
                    let k = (j - box.y0) * box.width + (i - box.x0)
                    // As photutils: left out when masked or not finite; the noise from the
                    // finite variances among the rest.
                    guard mask[k] & (ImageMask.bad | ImageMask.saturated | ImageMask.noData) == 0, image[k].isFinite else {
                        left += 1
                        continue
                    }
                    values.append(Double(image[k]))
                    if variance[k].isFinite {
                        varianceSum += Double(variance[k])
                        variancePixels += 1
                    } else {
                        left += 1
                    }
                }
            }
            if left > 0 { spoiled += 1 }
            // The aperture: every pixel of the box weighed by its exact overlap.
            var apertureSum = 0.0, apertureArea = 0.0
            for j in box.y0..<box.y1 {
                for i in box.x0..<box.x1 {
                    let (dx, dy) = (Double(i) - x, Double(j) - y)
                    let weight = CircleOverlap.area(x0: dx - 0.5, y0: dy - 0.5, x1: dx + 0.5, y1: dy + 0.5, radius: r)
                    let k = (j - box.y0) * box.width + (i - box.x0)
                    guard weight > 1e-13, mask[k] & ImageMask.bad == 0, image[k].isFinite, variance[k].isFinite else { continue }
                    apertureSum += weight * Double(image[k])
                    apertureArea += weight
                }
            }
            if apertureArea > 0 {
                #expect(abs(got.area - apertureArea) <= 1e-9 && abs(got.sum - apertureSum) <= 1e-9 * max(1, abs(apertureSum)),
                        "trial \(trial) at \(x), \(y), r \(r): aperture \(got.sum) over \(got.area) pixels against \(apertureSum) over \(apertureArea)")
            } else {
                #expect(got.area == 0, "trial \(trial) at \(x), \(y), r \(r): aperture of \(got.area) pixels where none meets the planes")
            }
            let want = Self.sortAndClip(values, sigma: 3, iterations: 10)
            let wantVariance = variancePixels == 0 ? Double.nan : varianceSum / Double(variancePixels)
            if values.isEmpty {
                #expect(got.backgroundPixels == 0, "trial \(trial): \(got)")
                continue
            }
            checked += 1
            #expect(got.backgroundPixels == want.1 && abs(got.background - want.0) <= 1e-12 * max(1, abs(want.0))
                    && abs(got.backgroundPixelVariance - wantVariance) <= 1e-12 * wantVariance,
                    "trial \(trial) at \(x), \(y), ring \(inner)…\(outer): \(got.background), \(got.backgroundPixels), \(got.backgroundPixelVariance) against \(want), \(wantVariance)")
        }
        // Rings with pixels left out, and rings measured, in numbers (or the test shows nothing).
        #expect(spoiled >= 100 && checked >= 400, "\(spoiled) rings with pixels left out, \(checked) compared")
    }
}
