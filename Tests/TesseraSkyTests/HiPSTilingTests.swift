import Foundation
import Testing
@testable import TesseraSky

/// HiPS tile geometry against brute force on nested indices (the layout itself is checked
/// against Aladin's Hipsgen and astropy_healpix in the Python suite, test_images.py).
struct HiPSTilingTests {
    /// The nested index of tile pixel (row, column), spelled out bit by bit: x = width − 1 − row
    /// in the even bits, y = column in the odd bits, under the tile's own index.
    static func bruteIndex(npix: Int64, width: Int, row: Int, column: Int) -> Int64 {
        let x = width - 1 - row, y = column
        var sub: Int64 = 0
        for b in 0..<16 {
            sub |= Int64((x >> b) & 1) << (2 * b)
            sub |= Int64((y >> b) & 1) << (2 * b + 1)
        }
        return npix * Int64(width * width) + sub
    }

    /// Each tile pixel's centre is the centre of the nested pixel the layout names.
    @Test(arguments: [64, 256])
    func centresFollowTheLayout(width: Int) throws {
        let t = try #require(HiPSTiling(width: width))
        var rng = SystemRandomNumberGenerator()
        for order in [3, 7, 11] {
            for _ in 0..<20 {
                let npix = Int64.random(in: 0..<HEALPix.pixelCount(order), using: &rng)
                let o = t.origin(order: order, npix: npix)
                for _ in 0..<20 {
                    let (row, column) = (Int.random(in: 0..<width, using: &rng), Int.random(in: 0..<width, using: &rng))
                    let i = Self.bruteIndex(npix: npix, width: width, row: row, column: column)
                    let c = t.centreVector(order: order, face: o.face, ix: o.ix, iy: o.iy, row: row, column: column)
                    #expect(c.angle(to: HEALPix.centerVector(order: order + t.widthShift, pixel: i)) < 1e-13)
                    #expect(HEALPix.pixel(order: order + t.widthShift, vector: c) == i)
                }
            }
        }
    }

    /// Each parent pixel is the mean of the finite values among its four nested children.
    @Test func binningMeansTheFourChildren() throws {
        let w = 64
        let t = try #require(HiPSTiling(width: w))
        let parent: Int64 = 4321
        var byIndex: [Int64: Float] = [:]
        var out = [Float](repeating: .nan, count: w * w)
        for q in 0..<4 {
            let child = parent * 4 + Int64(q)
            // Values with NaN holes (a whole 2×2 block NaN in places) and one child missing.
            if q == 2 { continue }
            var pixels = [Float](repeating: 0, count: w * w)
            for r in 0..<w {
                for c in 0..<w {
                    let v: Float = (r * 7 + c * 3 + q) % 11 == 0 || (r / 2 + c / 2) % 9 == 0 ? .nan : Float(r * w + c) * 0.25 + Float(q)
                    pixels[r * w + c] = v
                    byIndex[Self.bruteIndex(npix: child, width: w, row: r, column: c)] = v
                }
            }
            pixels.withUnsafeBufferPointer { src in out.withUnsafeMutableBufferPointer { t.bin(child: child, pixels: src, into: $0) } }
        }
        var finite = 0
        for r in 0..<w {
            for c in 0..<w {
                let i = Self.bruteIndex(npix: parent, width: w, row: r, column: c)
                let kids = (0..<4).compactMap { byIndex[4 * i + Int64($0)] }.filter(\.isFinite)
                let got = out[r * w + c]
                if kids.isEmpty {
                    #expect(got.isNaN)
                } else {
                    finite += 1
                    let want = kids.reduce(0, +) / Float(kids.count)
                    #expect(abs(got - want) <= 1e-6 * max(1, abs(want)), "row \(r) column \(c)")
                }
            }
        }
        #expect(finite > w * w / 2 && finite < w * w * 3 / 4)
    }

    @Test func ordersPathsAndWidths() throws {
        #expect(HiPSTiling(width: 100) == nil && HiPSTiling(width: 1024) == nil)
        let t512 = try #require(HiPSTiling(width: 512)), t256 = try #require(HiPSTiling(width: 256))
        // 0.2″ is nearest order-20 pixels (0.201″); 1″ nearest order 18 (0.805″).
        #expect(t512.nativeOrder(pixelScaleArcsec: 0.2) == 11)
        #expect(t256.nativeOrder(pixelScaleArcsec: 1) == 10)
        #expect(abs(t512.pixelSizeArcsec(order: 11) - 0.2012) < 1e-4)
        #expect(HiPSTiling.path(order: 9, npix: 2_209_212, ext: "fits") == "Norder9/Dir2200000/Npix2209212.fits")
        #expect(HiPSTiling.path(order: 3, npix: 539, ext: "png") == "Norder3/Dir0/Npix539.png")
        #expect(HiPSTiling.allskyColumns * HiPSTiling.allskyRows >= 768 && (HiPSTiling.allskyColumns - 1) * HiPSTiling.allskyRows < 768)
    }
}
