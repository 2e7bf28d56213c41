import Foundation
import TesseraProtocol
import TesseraSky
import TesseraStorage

public typealias ImageStatisticsPartial = Tessera_V1_ImageStatistics

/// Statistics of coadd pixels as mergeable sums: per band, a quantile sketch of the unmasked
/// values (median, and the robust σ from the quartiles), the masked fraction, and a HEALPix map of
/// the mean variance, from which the 5σ point-source depth follows.
public enum ImageStatistics {
    public static let defaultMapOrder = 10
    /// The most pixels one question's depth map may hold (four numbers each, 128 MB): order 10
    /// over some 14,000 square degrees, order 16 over a few.
    public static let maxMapPixels = 4 << 20

    /// One patch's own pixels (those whose centres lie in its HEALPix pixel; every pixel of an
    /// image on its own grid) added up.
    public static func measure(_ file: ImagePatchFile, mapOrder: Int) -> ImageStatisticsPartial {
        let h = file.header
        var sketch = QuantileSketch()
        var pixels: UInt64 = 0, masked: UInt64 = 0
        var depth: [Int64: (count: UInt64, variance: Double)] = [:]
        let bad = ImageMask.noData | ImageMask.bad | ImageMask.saturated
        for y in 0..<h.height {
            let row = PixelBox(x0: 0, y0: y, width: h.width, height: 1)
            let img = file.floats(.image, box: row), vari = file.floats(.variance, box: row), msk = file.mask(box: row)
            for x in 0..<h.width {
                let (ra, dec) = h.wcs.sky(x: Double(x), y: Double(y))
                if h.tract >= 0, HEALPix.pixel(order: h.patchOrder, ra: ra, dec: dec) != h.patch { continue }
                pixels += 1
                let v = Double(img[x])
                guard v.isFinite, msk[x] & bad == 0 else { masked += 1; continue }
                sketch.add(v)
                let s2 = Double(vari[x])
                if s2.isFinite {
                    let p = HEALPix.pixel(order: mapOrder, ra: ra, dec: dec)
                    depth[p, default: (0, 0)].count += 1
                    depth[p, default: (0, 0)].variance += s2
                }
            }
        }
        var out = ImageStatisticsPartial()
        out.band = h.band
        out.values = sketch.proto
        out.pixels = pixels
        out.masked = masked
        out.pixelScaleArcsec = h.wcs.pixelScaleArcsec
        out.depth.order = UInt32(mapOrder)
        for p in depth.keys.sorted() {
            out.depth.pixels.append(UInt64(p))
            out.depth.counts.append(depth[p]!.count)
            out.depth.sums.append(depth[p]!.variance)
            out.depth.valueCounts.append(depth[p]!.count)
        }
        return out
    }

    /// Partials merged per band (in order of first appearance).
    public static func merge(_ a: [ImageStatisticsPartial], _ b: [ImageStatisticsPartial]) -> [ImageStatisticsPartial] {
        var out = a
        for s in b {
            guard let k = out.firstIndex(where: { $0.band == s.band }) else { out.append(s); continue }
            var sketch = QuantileSketch(out[k].values)
            sketch.merge(QuantileSketch(s.values))
            out[k].values = sketch.proto
            out[k].pixels &+= s.pixels
            out[k].masked &+= s.masked
            out[k].depth = CatalogMerge.mergeMaps(out[k].depth, s.depth)
            if out[k].pixelScaleArcsec == 0 { out[k].pixelScaleArcsec = s.pixelScaleArcsec }
        }
        return out
    }

    /// The median, the robust σ ((q75 − q25) / 1.349, σ for Gaussian noise) and the masked fraction.
    public static func summary(_ s: ImageStatisticsPartial) -> (median: Double, robustSigma: Double, maskedFraction: Double) {
        let sketch = QuantileSketch(s.values)
        return (sketch.quantile(0.5), (sketch.quantile(0.75) - sketch.quantile(0.25)) / 1.349,
                s.pixels == 0 ? .nan : Double(s.masked) / Double(s.pixels))
    }

    /// The 5σ depth (AB, zero point 31.4) of a point source in a 1″-radius aperture, from a mean
    /// variance per pixel of `scale`″ pixels.
    public static func depth(meanVariance: Double, pixelScaleArcsec scale: Double) -> Double {
        let pixels = Double.pi / (scale * scale)
        return 31.4 - 2.5 * log10(5 * (meanVariance * pixels).squareRoot())
    }
}
