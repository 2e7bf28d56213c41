#!/usr/bin/env python3
"""Generate Tests/TesseraComputeTests/Fixtures/image.fits and image.json: an image written by
astropy in Tessera's patch layout, with astropy Cutout2D and photutils reference values.

    .venv/bin/python scripts/make_image_fixtures.py

image.fits: an empty primary HDU (BAND = 'r') and IMAGE (float32), MASK (int32) and VARIANCE
(float32) extensions, each with the same rotated TAN WCS (astropy writes the header). The image is
a sky of 100 nJy with Gaussian noise (sigma 5), Gaussian sources, and hot pixels (so the sigma
clip matters).

image.json:
  cutouts     Cutout2D(IMAGE, SkyCoord(ra, dec), (ny, nx), wcs, mode="partial", fill_value=nan)
              for sky positions inside, across the edge and at a corner: the position's pixel
              (astropy's skycoord_to_pixel), the cutout's origin in the image (origin_original
              less the leading fill), its CRPIX, and its pixels as big-endian float32 hex.
  photometry  at pixel positions: photutils aperture_photometry(data, CircularAperture(r),
              error=sqrt(variance), method="exact") sum and sum_err, and ApertureStats(data,
              CircularAnnulus(r_in, r_out), sigma_clip=SigmaClip(sigma=3, maxiters=10)).median,
              with data as float64 (the float32 values exactly) and the BAD mask bit as
              photutils' mask.
Floats are repr strings. Deterministic: one seeded numpy Generator.
"""
import json
import pathlib

import numpy as np
import photutils
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.nddata import Cutout2D
from astropy.stats import SigmaClip
from astropy.wcs import WCS
from photutils.aperture import ApertureStats, CircularAnnulus, CircularAperture, aperture_photometry

rng = np.random.default_rng(12)
HERE = pathlib.Path(__file__).resolve().parent.parent / "Tests/TesseraComputeTests/Fixtures"
NX, NY = 200, 160

w = WCS(naxis=2)
w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
w.wcs.crval = [150.2, 2.3]
w.wcs.crpix = [101.5, 77.25]
ang = np.radians(17.0)
s = 0.4 / 3600
w.wcs.cd = [[-s * np.cos(ang), s * np.sin(ang)], [s * np.sin(ang), s * np.cos(ang)]]
w.wcs.radesys = "ICRS"

yy, xx = np.mgrid[0:NY, 0:NX]
image = 100.0 + rng.normal(0, 5.0, (NY, NX))
for _ in range(40):
    x0, y0 = rng.uniform(0, NX), rng.uniform(0, NY)
    flux, sig = rng.uniform(200, 5000), rng.uniform(1.0, 2.5)
    image += flux / (2 * np.pi * sig**2) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sig**2))
hot = rng.integers(0, NX * NY, 60)
image.flat[hot] += rng.uniform(200, 2000, hot.size)
image = image.astype(np.float32)
variance = (25.0 + 0.05 * np.clip(image - 100.0, 0, None)).astype(np.float32)
mask = np.zeros((NY, NX), dtype=np.int32)
mask.flat[hot[:10]] |= 1  # BAD on a few of the hot pixels

hdr = w.to_header()
primary = fits.PrimaryHDU()
primary.header["BAND"] = "r"
hdus = [primary]
for name, data in (("IMAGE", image), ("MASK", mask), ("VARIANCE", variance)):
    h = fits.ImageHDU(data=data, header=hdr, name=name)
    hdus.append(h)
fits.HDUList(hdus).writeto(HERE / "image.fits", overwrite=True, checksum=True)

data64 = image.astype(np.float64)
bad = (mask & 1) != 0  # pixels masked BAD are left out of sums and statistics
out = {"photutils": photutils.__version__, "width": NX, "height": NY, "cutouts": [], "photometry": []}

positions = [(100.3, 80.7, 31, 31), (5.2, 60.0, 21, 25), (198.6, 158.9, 17, 17), (50.0, 2.5, 20, 12)]
for (px, py, nx, ny) in positions:
    ra, dec = w.wcs_pix2world([[px, py]], 0)[0]
    c = SkyCoord(ra, dec, unit="deg")
    cut = Cutout2D(image, c, (ny, nx), wcs=w, mode="partial", fill_value=np.nan)
    ox = cut.origin_original[0] - cut.slices_cutout[1].start
    oy = cut.origin_original[1] - cut.slices_cutout[0].start
    x, y = w.world_to_pixel(c)
    out["cutouts"].append({
        "ra": repr(float(ra)), "dec": repr(float(dec)), "x": repr(float(x)), "y": repr(float(y)),
        "width": nx, "height": ny, "x0": int(ox), "y0": int(oy),
        "crpix1": repr(float(cut.wcs.wcs.crpix[0])), "crpix2": repr(float(cut.wcs.wcs.crpix[1])),
        "pixels": cut.data.astype(">f4").tobytes().hex(),
    })

r, rin, rout = 4.0, 8.0, 14.0
pts = [(rng.uniform(20, NX - 20), rng.uniform(20, NY - 20)) for _ in range(60)]
pts += [(100.0, 80.0), (100.5, 80.5), (33.0, 41.5)]
for (x, y) in pts:
    ap = CircularAperture((x, y), r)
    t = aperture_photometry(data64, ap, error=np.sqrt(variance.astype(np.float64)), mask=bad, method="exact")
    st = ApertureStats(data64, CircularAnnulus((x, y), rin, rout), mask=bad, sigma_clip=SigmaClip(sigma=3.0, maxiters=10))
    out["photometry"].append({
        "x": repr(float(x)), "y": repr(float(y)),
        "sum": repr(float(t["aperture_sum"][0])), "sum_err": repr(float(t["aperture_sum_err"][0])),
        "annulus_median": repr(float(st.median)),
    })
out["radius"], out["annulus_inner"], out["annulus_outer"] = repr(r), repr(rin), repr(rout)
(HERE / "image.json").write_text(json.dumps(out, indent=1) + "\n")
print(f"wrote {HERE}/image.fits and image.json")
