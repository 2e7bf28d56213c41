#!/usr/bin/env python3
"""The image anchors: astropy and photutils on the patch files `tessera bench cutout` and
`tessera bench forced-phot` measure through the cluster, at the same positions.

    .venv/bin/python scripts/anchor_images.py cutout --patches DIR --positions FILE --size 256
    .venv/bin/python scripts/anchor_images.py forced-phot --patches DIR --catalog CAT.fits --rows 20000 --aperture-px 5
    .venv/bin/python scripts/anchor_images.py stack --patches DIR --catalog CAT.fits --rows 200000 --size 41

cutout: for each position (one "RA DEC" per line), open the patch file of the position's own
HEALPix pixel (order 8; memory-mapped), read its WCS and make a Cutout2D of SIZE x SIZE (a copy):
what a script serving cutouts from the files would do per request. Prints p50/p99 in ms.

forced-phot: the first ROWS catalog rows on the patches, grouped by patch; per patch one
photutils aperture_photometry call (exact, r = APERTURE px) over all its positions, then one
ApertureStats call (annulus 2r to 3.5r, sigma-clipped median). Prints sources per second for the
aperture alone and with the annulus, on one core, and peak resident memory.

stack: the first ROWS catalog rows on the patches, grouped by patch; per patch the image read once
and the SIZE x SIZE boxes around each row's pixel (the pixel its position falls in, as Tessera's
stack takes them) summed with one vectorised numpy gather. Prints cutouts per second (one core).
"""
import argparse
import glob
import json
import resource
import time

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.nddata import Cutout2D
from astropy.stats import SigmaClip
from astropy.wcs import WCS
from astropy_healpix import HEALPix


def patches_by_pixel(folder, band="r"):
    out = {}
    for p in glob.glob(f"{folder}/{band}-*.fits"):
        out[fits.getheader(p)["PATCH"]] = p
    return out


def rows_on_patches(a):
    """The patch files by pixel, the catalog's positions and order-8 pixels, and the first ROWS
    rows that lie on a patch."""
    files = patches_by_pixel(a.patches)
    with fits.open(a.catalog, memmap=True) as f:
        ra = np.asarray(f[1].data["coord_ra"], dtype=np.float64)
        dec = np.asarray(f[1].data["coord_dec"], dtype=np.float64)
    hp = HEALPix(nside=256, order="nested")
    pix = hp.lonlat_to_healpix(ra * u.deg, dec * u.deg)
    keep = np.array([int(p) in files for p in pix])
    return files, ra, dec, pix, np.flatnonzero(keep)[: a.rows]


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cutout(a):
    files = patches_by_pixel(a.patches)
    hp = HEALPix(nside=256, order="nested")
    pos = np.loadtxt(a.positions, ndmin=2)
    times = []
    for ra, dec in pos:
        t0 = time.perf_counter()
        path = files[int(hp.lonlat_to_healpix(ra * u.deg, dec * u.deg))]
        with fits.open(path, memmap=True) as f:
            c = Cutout2D(f["IMAGE"].data, SkyCoord(ra, dec, unit="deg"), (a.size, a.size), wcs=WCS(f["IMAGE"].header), copy=True)
            assert c.data.shape == (a.size, a.size)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    print(json.dumps({"bench": "cutout", "engine": "astropy Cutout2D", "cutouts": len(times), "size": a.size,
                      "p50_ms": times[len(times) // 2], "p99_ms": times[min(len(times) - 1, len(times) * 99 // 100)],
                      "mean_ms": sum(times) / len(times), "peak_rss_mb": peak_rss_mb()}), flush=True)


def forced_phot(a):
    from photutils.aperture import ApertureStats, CircularAnnulus, CircularAperture, aperture_photometry

    files, ra, dec, pix, idx = rows_on_patches(a)
    r = a.aperture_px
    t_ap = t_bg = 0.0
    n = 0
    for p in np.unique(pix[idx]):
        sel = idx[pix[idx] == p]
        with fits.open(files[int(p)], memmap=True) as f:
            data = np.asarray(f["IMAGE"].data, dtype=np.float64)
            err = np.sqrt(np.asarray(f["VARIANCE"].data, dtype=np.float64))
            x, y = WCS(f["IMAGE"].header).world_to_pixel_values(ra[sel], dec[sel])
        xy = np.column_stack([x, y])
        t0 = time.perf_counter()
        aperture_photometry(data, CircularAperture(xy, r), error=err, method="exact")
        t1 = time.perf_counter()
        ApertureStats(data, CircularAnnulus(xy, 2 * r, 3.5 * r), sigma_clip=SigmaClip(sigma=3.0, maxiters=10)).median
        t2 = time.perf_counter()
        t_ap += t1 - t0
        t_bg += t2 - t1
        n += len(sel)
    print(json.dumps({"bench": "forced_phot", "engine": "photutils", "sources": n, "aperture_px": r,
                      "aperture_sources_per_s": n / t_ap, "with_annulus_sources_per_s": n / (t_ap + t_bg),
                      "annulus_sources_per_s": n / t_bg, "cores": 1, "peak_rss_mb": peak_rss_mb()}), flush=True)


def stack(a):
    files, ra, dec, pix, idx = rows_on_patches(a)
    h = a.size // 2
    d = np.arange(-h, h + 1)
    total = np.zeros((a.size, a.size))
    n, seconds = 0, 0.0
    for p in np.unique(pix[idx]):
        sel = idx[pix[idx] == p]
        with fits.open(files[int(p)], memmap=True) as f:
            data = np.asarray(f["IMAGE"].data, dtype=np.float32)
            x, y = WCS(f["IMAGE"].header).world_to_pixel_values(ra[sel], dec[sel])
        t0 = time.perf_counter()
        xi, yi = np.floor(x + 0.5).astype(int), np.floor(y + 0.5).astype(int)
        inside = (xi >= h) & (yi >= h) & (xi < data.shape[1] - h) & (yi < data.shape[0] - h)
        xi, yi = xi[inside], yi[inside]
        for k in range(0, len(xi), 4096):  # bounded memory: 4096 boxes at a time
            total += data[yi[k:k + 4096, None, None] + d[None, :, None], xi[k:k + 4096, None, None] + d[None, None, :]].sum(axis=0, dtype=np.float64)
        seconds += time.perf_counter() - t0
        n += len(xi)
    print(json.dumps({"bench": "stack", "engine": "numpy", "cutouts": n, "size": a.size, "seconds": seconds,
                      "cutouts_per_s": n / seconds, "cores": 1, "peak_rss_mb": peak_rss_mb()}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("cutout")
    c.add_argument("--patches", required=True)
    c.add_argument("--positions", required=True)
    c.add_argument("--size", type=int, default=256)
    f = sub.add_parser("forced-phot")
    f.add_argument("--patches", required=True)
    f.add_argument("--catalog", required=True)
    f.add_argument("--rows", type=int, default=20000)
    f.add_argument("--aperture-px", type=float, default=5)
    s = sub.add_parser("stack")
    s.add_argument("--patches", required=True)
    s.add_argument("--catalog", required=True)
    s.add_argument("--rows", type=int, default=200000)
    s.add_argument("--size", type=int, default=41)
    a = ap.parse_args()
    {"cutout": cutout, "forced-phot": forced_phot, "stack": stack}[a.what](a)


if __name__ == "__main__":
    main()
