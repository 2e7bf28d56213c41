"""Coadd images on the cluster against astropy: `tessera generate coadd` patches (rendered from the
test catalog), ingested beside the catalog, cut out by the workers that hold them, and checked
pixel for pixel, WCS included, against astropy's Cutout2D reading the same patch files; images
astropy writes with any TAN WCS; and the errors a user meets (no coverage, unknown band, too
large, a corrupt tile, a FITS file without a TAN WCS)."""
import glob
import os
import subprocess

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.nddata import Cutout2D
from astropy.wcs import WCS

# A small piece of sky at 1" pixels: a few patches of about 900 pixels square per band.
REGION = "60.0,60.1,-35.0,-34.9"
BANDS = ["g", "r"]


def tessera(bins, cluster, *args, check=True):
    env = dict(os.environ, TESSERA_KEY=cluster.key_path or "")
    r = subprocess.run([os.path.join(bins, "tessera"), *args, "--scheduler", cluster.endpoint], env=env, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"tessera {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture(scope="module")
def patch_files(tmp_path_factory, bins, catalog_files):
    out = tmp_path_factory.mktemp("coadd")
    subprocess.run([os.path.join(bins, "tessera"), "generate", "coadd", "--catalog", *catalog_files, "--bands", ",".join(BANDS),
                    "--region", REGION, "--pixel-scale", "1", "--border", "32", "--seed", "3", "--out", str(out)],
                   check=True, capture_output=True)
    files = sorted(glob.glob(str(out / "*.fits")))
    assert len(files) >= 2 * len(BANDS)
    return files


@pytest.fixture(scope="module")
def coadd(bins, cluster, patch_files):
    tessera(bins, cluster, "ingest", "coadd", *patch_files, "--images", "--beside", "object", "--replace")
    return "coadd"


def reference_cutout(patch_files, band, ra, dec, size):
    """Cutout2D on every patch file of the band in the position's tract (patches of a tract share
    one grid, so where two cover a pixel they agree): the first that covers each pixel."""
    pos = SkyCoord(ra, dec, unit="deg")
    out, wcs, tract = None, None, None
    for path in patch_files:
        with fits.open(path) as f:
            if f[0].header["BAND"] != band:
                continue
            w = WCS(f["IMAGE"].header)
            x, y = w.world_to_pixel(pos)
            # Only the tract whose grid the cutout is in: the patch holding the position decides.
            inside = -0.5 <= x < f["IMAGE"].data.shape[1] - 0.5 and -0.5 <= y < f["IMAGE"].data.shape[0] - 0.5
            if tract is None and inside and abs(x) < 1e6:
                tract = f[0].header["TRACT"]
    assert tract is not None
    for path in patch_files:
        with fits.open(path) as f:
            if f[0].header["BAND"] != band or f[0].header["TRACT"] != tract:
                continue
            w = WCS(f["IMAGE"].header)
            try:
                c = Cutout2D(f["IMAGE"].data, pos, size, wcs=w, mode="partial", fill_value=np.nan)
            except Exception:  # no overlap with this patch
                continue
            if out is None:
                out, wcs = c.data.copy(), c.wcs
            else:
                take = np.isnan(out) & ~np.isnan(c.data)
                out[take] = c.data[take]
    return out, wcs


@pytest.mark.parametrize("ra,dec,size", [
    (60.05, -34.95, (73, 73)),       # inside one patch
    (60.031, -34.983, (301, 257)),   # larger than the border: spans patches
    (60.0, -35.0, (121, 121)),       # a corner of the region
])
def test_cutouts_match_cutout2d(bins, cluster, coadd, patch_files, tmp_path, ra, dec, size):
    ny, nx = size
    out = tmp_path / "cut.fits"
    tessera(bins, cluster, "cutout", "--dataset", coadd, "--cone", f"{ra},{dec},0.001", "--size", f"{nx}x{ny}", "--band", "g,r", "-o", str(out))
    with fits.open(out, checksum=True) as f:
        for k, band in enumerate(BANDS, start=1):
            img = f["IMAGE", k]
            assert img.header["BAND"] == band
            assert img.data.shape == (ny, nx)
            ref, ref_wcs = reference_cutout(patch_files, band, ra, dec, (ny, nx))
            np.testing.assert_array_equal(np.isnan(img.data), np.isnan(ref))
            np.testing.assert_array_equal(img.data[~np.isnan(ref)], ref[~np.isnan(ref)])  # bit for bit
            mask = f["MASK", k].data
            assert ((mask & (1 << 8)) != 0).sum() == np.isnan(ref).sum()
            w = WCS(img.header)
            np.testing.assert_allclose(w.wcs.crpix, ref_wcs.wcs.crpix, rtol=0, atol=1e-9)
            np.testing.assert_allclose(w.wcs.crval, ref_wcs.wcs.crval, rtol=0, atol=1e-12)
            yy, xx = np.mgrid[0:ny:17, 0:nx:13]
            a = w.pixel_to_world_values(xx.ravel(), yy.ravel())
            b = ref_wcs.pixel_to_world_values(xx.ravel(), yy.ravel())
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)
            var = f["VARIANCE", k].data
            assert np.all(np.isnan(var) == np.isnan(ref))


def test_cutouts_taken_over_the_network_are_the_same(bins, cluster, coadd, tmp_path):
    """A cutout is taken straight from its worker: over the worker's same-host socket by default,
    over its CURVE peer endpoint as a client on another machine takes it; the same bytes."""
    a, b = tmp_path / "local.fits", tmp_path / "network.fits"
    tessera(bins, cluster, "cutout", "--dataset", coadd, "--cone", "60.05,-34.95,0.01", "--band", "g,r", "-o", str(a))
    tessera(bins, cluster, "cutout", "--dataset", coadd, "--cone", "60.05,-34.95,0.01", "--band", "g,r", "-o", str(b), "--results-over-network")
    assert a.read_bytes() == b.read_bytes()


def test_cone_cutout_is_its_diameter(bins, cluster, coadd, tmp_path):
    out = tmp_path / "cone.fits"
    r = tessera(bins, cluster, "cutout", "--dataset", coadd, "--cone", "60.05,-34.95,0.01", "--band", "r", "-o", str(out))
    with fits.open(out) as f:
        # 36" at 1" pixels: 2 * 36 + 1 pixels, the centre's pixel in the middle.
        assert f["IMAGE"].data.shape == (73, 73)
        x, y = WCS(f["IMAGE"].header).world_to_pixel(SkyCoord(60.05, -34.95, unit="deg"))
        assert abs(x - 36) <= 0.5 and abs(y - 36) <= 0.5
    assert "73 × 73" in r.stdout


def test_cutout_errors(bins, cluster, coadd):
    r = tessera(bins, cluster, "cutout", "--dataset", coadd, "--cone", "65,-30,0.01", "-o", "/dev/null", check=False)
    assert r.returncode != 0 and "no coverage here" in r.stderr
    r = tessera(bins, cluster, "cutout", "--dataset", coadd, "--cone", "60.05,-34.95,0.01", "--band", "y", "-o", "/dev/null", check=False)
    assert r.returncode != 0 and "has no band `y`" in r.stderr and "g, r" in r.stderr
    r = tessera(bins, cluster, "cutout", "--dataset", coadd, "--cone", "60.05,-34.95,2", "-o", "/dev/null", check=False)
    assert r.returncode != 0 and "larger than the limit of 4096" in r.stderr
    r = tessera(bins, cluster, "cutout", "--dataset", "object", "--cone", "60.05,-34.95,0.01", "-o", "/dev/null", check=False)
    assert r.returncode != 0 and "is a catalog, not an image dataset" in r.stderr


def test_images_astropy_wrote_with_any_tan_wcs(bins, cluster, tmp_path):
    """A rotated 0.5" TAN image with a FILTER keyword, written by astropy (one HDU), and one
    more with a variance extension: stored on their own grids, cut out exactly."""
    rng = np.random.default_rng(5)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [120.0, 90.0]
    ang = np.radians(25.0)
    s = 0.5 / 3600
    w.wcs.cd = [[-s * np.cos(ang), s * np.sin(ang)], [s * np.sin(ang), s * np.cos(ang)]]
    data = rng.normal(100, 5, (180, 240)).astype(np.float32)
    hdr = w.to_header()
    hdr["FILTER"] = "i"
    path = tmp_path / "astropy.fits"
    fits.PrimaryHDU(data=data, header=hdr).writeto(path)
    tessera(bins, cluster, "ingest", "field", str(path), "--images", "--replace")
    out = tmp_path / "cut.fits"
    ra, dec = w.pixel_to_world_values(100.3, 60.8)
    tessera(bins, cluster, "cutout", "--dataset", "field", "--cone", f"{ra},{dec},0.001", "--size", "41x33", "-o", str(out))
    # The WCS as the file holds it (astropy writes its header's numbers to 14 digits).
    ref = Cutout2D(data, SkyCoord(ra, dec, unit="deg"), (33, 41), wcs=WCS(fits.getheader(path)), mode="partial", fill_value=np.nan)
    with fits.open(out) as f:
        np.testing.assert_array_equal(f["IMAGE"].data, ref.data)
        np.testing.assert_allclose(WCS(f["IMAGE"].header).wcs.crpix, ref.wcs.wcs.crpix, atol=1e-9)
        np.testing.assert_allclose(WCS(f["IMAGE"].header).pixel_scale_matrix, ref.wcs.pixel_scale_matrix, rtol=1e-15)
        assert f["IMAGE"].header["BAND"] == "i"


def test_ingest_refuses_images_without_a_tan_wcs(bins, cluster, tmp_path):
    data = np.zeros((20, 30), dtype=np.float32)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    w.wcs.crval = [10, 20]
    w.wcs.cdelt = [-1e-4, 1e-4]
    sin = tmp_path / "sin.fits"
    h = w.to_header()
    h["BAND"] = "r"
    fits.PrimaryHDU(data=data, header=h).writeto(sin)
    r = tessera(bins, cluster, "ingest", "bad", str(sin), "--images", check=False)
    assert r.returncode != 0 and "sin.fits" in r.stderr and "only the TAN (gnomonic) projection" in r.stderr
    bare = tmp_path / "bare.fits"
    fits.PrimaryHDU(data=data).writeto(bare)
    r = tessera(bins, cluster, "ingest", "bad", str(bare), "--images", "--band", "r", check=False)
    assert r.returncode != 0 and "bare.fits" in r.stderr and "no celestial WCS" in r.stderr
    # Nothing was committed.
    assert "bad" not in tessera(bins, cluster, "status").stdout


def test_corrupt_tile_is_named(bins, cluster, patch_files, tmp_path):
    """Every copy of a patch damaged on disk: the cutout fails naming the file and its checksum,
    and the other datasets are untouched."""
    tessera(bins, cluster, "ingest", "damaged", *patch_files, "--images", "--replace")
    copies = glob.glob(os.path.join(cluster.data, "worker-*", "catalogs", "damaged", "*", "*.shard"))
    assert copies
    for p in copies:
        with open(p, "r+b") as f:
            f.seek(2880 * 3 + 100)  # inside the IMAGE data
            f.write(b"\x7f\x7f\x7f\x7f")
    r = tessera(bins, cluster, "cutout", "--dataset", "damaged", "--cone", "60.05,-34.95,0.01", "-o", str(tmp_path / "x.fits"), check=False)
    assert r.returncode != 0 and "is corrupt" in r.stderr and "damaged/" in r.stderr
    tessera(bins, cluster, "cutout", "--dataset", "coadd", "--cone", "60.05,-34.95,0.01", "-o", str(tmp_path / "ok.fits"))


# Forced photometry: a dense catalog on a small field, its coadd, and photutils on the same
# pixels at the same positions.
FIELD = "60.0,60.2,-35.0,-34.8"
APERTURE = 3.0  # arcsec: 3 pixels at 1"; the annulus is 6"-10.5"


@pytest.fixture(scope="module")
def dense(tmp_path_factory, bins, cluster):
    """4,000 rows on 0.04 deg² (about 28 per arcmin²), ingested in shards of at most 400 rows,
    and their coadd in g and r: once beside the catalog (2 copies), once on single workers
    (so some rows' patches are on the other worker, measured there)."""
    cat = tmp_path_factory.mktemp("dense")
    subprocess.run([os.path.join(bins, "tessera"), "generate", "catalog", "--rows", "4000", "--field", FIELD, "--seed", "11",
                    "--out", str(cat)], check=True, capture_output=True)
    cat_files = sorted(glob.glob(str(cat / "*.fits")))
    img = tmp_path_factory.mktemp("dense_coadd")
    subprocess.run([os.path.join(bins, "tessera"), "generate", "coadd", "--catalog", *cat_files, "--bands", "g,r",
                    "--region", FIELD, "--pixel-scale", "1", "--border", "32", "--seed", "4", "--out", str(img)],
                   check=True, capture_output=True)
    patches = sorted(glob.glob(str(img / "*.fits")))
    tessera(bins, cluster, "ingest", "dense", *cat_files, "--max-rows-per-shard", "400", "--replace")
    tessera(bins, cluster, "ingest", "dense_coadd", *patches, "--images", "--beside", "dense", "--replace")
    tessera(bins, cluster, "ingest", "dense_coadd1", *patches, "--images", "--replicas", "1", "--replace")
    return cat_files, patches


def measured(bins, cluster, tmp_path, images, *extra):
    import pandas as pd
    out = tmp_path / f"{images}.csv"
    cols = ["objectId", "coord_ra", "coord_dec", "g_psfFlux", "r_psfFlux"]
    for b in ("g", "r"):
        cols += [f"{b}_apFlux", f"{b}_apFluxErr", f"{b}_apBackground", f"{b}_apFlag"]
    tessera(bins, cluster, "query", "--dataset", "dense", "--forced-phot", images, "--aperture-arcsec", str(APERTURE),
            "--select", ",".join(cols), *extra, "--format", "csv", "-o", str(out))
    return pd.read_csv(out).sort_values("objectId").reset_index(drop=True)


def photutils_reference(patches, band, ra, dec):
    """photutils on the patch of each position's own HEALPix pixel (order 8), as Tessera measures."""
    from astropy.stats import SigmaClip
    from astropy_healpix import HEALPix
    import astropy.units as u
    from photutils.aperture import ApertureStats, CircularAnnulus, CircularAperture, aperture_photometry

    hp = HEALPix(nside=256, order="nested")
    pix = hp.lonlat_to_healpix(np.asarray(ra) * u.deg, np.asarray(dec) * u.deg)
    files = {}
    for path in patches:
        h = fits.getheader(path)
        if h["BAND"] == band:
            files[h["PATCH"]] = path
    out = []
    for k in range(len(ra)):
        with fits.open(files[int(pix[k])]) as f:
            data = f["IMAGE"].data.astype(np.float64)
            var = f["VARIANCE"].data.astype(np.float64)
            x, y = WCS(f["IMAGE"].header).world_to_pixel_values(ra[k], dec[k])
        ap = CircularAperture((x, y), APERTURE)
        t = aperture_photometry(data, ap, error=np.sqrt(var), method="exact")
        st = ApertureStats(data, CircularAnnulus((x, y), 2 * APERTURE, 3.5 * APERTURE), sigma_clip=SigmaClip(sigma=3.0, maxiters=10))
        out.append((float(t["aperture_sum"][0]), float(t["aperture_sum_err"][0]), float(st.median)))
    return np.array(out)


def test_forced_photometry_matches_photutils(bins, cluster, dense, tmp_path):
    _, patches = dense
    got = measured(bins, cluster, tmp_path, "dense_coadd")
    assert len(got) == 4000
    inside = got[(got.g_apFlag == 0) & (got.r_apFlag == 0)]
    assert len(inside) > 3000
    sample = inside.iloc[::20]  # photutils is slow: every 20th row
    area = np.pi * APERTURE ** 2
    for b in ("g", "r"):
        ref = photutils_reference(patches, b, sample.coord_ra.values, sample.coord_dec.values)
        total = sample[f"{b}_apFlux"].values + area * sample[f"{b}_apBackground"].values
        np.testing.assert_allclose(total, ref[:, 0], rtol=1e-6)
        np.testing.assert_allclose(sample[f"{b}_apBackground"].values, ref[:, 2], rtol=1e-6)
        # The error: photutils' aperture error and the background median's.
        assert np.all(sample[f"{b}_apFluxErr"].values >= ref[:, 1] * (1 - 1e-9))


def test_forced_photometry_recovers_the_catalog(bins, cluster, dense, tmp_path):
    """Pulls (measured − catalog flux) / error of rows no other source's light reaches: none
    within 5" (the aperture), no bright one (> 1000 nJy) within 14" (the annulus): mean ≈ 0,
    σ ≈ 1."""
    got = measured(bins, cluster, tmp_path, "dense_coadd")
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    c = SkyCoord(got.coord_ra.values, got.coord_dec.values, unit="deg")
    _, d2d, _ = c.match_to_catalog_sky(c, nthneighbor=2)
    bright = got[(got.r_psfFlux > 1000) | (got.g_psfFlux > 1000)]
    cb = SkyCoord(bright.coord_ra.values, bright.coord_dec.values, unit="deg")
    # search_around_sky gives (index into cb, index into c, separation, distance).
    _, near_bright, sep, _ = c.search_around_sky(cb, 14 * u.arcsec)
    crowded = np.zeros(len(got), dtype=bool)
    crowded[near_bright[sep.arcsec > 0]] = True
    iso = got[(d2d.arcsec > 5) & ~crowded & (got.r_apFlag == 0) & (got.g_apFlag == 0)]
    assert len(iso) > 500
    for b in ("g", "r"):
        pull = (iso[f"{b}_apFlux"] - iso[f"{b}_psfFlux"]) / iso[f"{b}_apFluxErr"]
        assert abs(pull.mean()) < 0.1 and abs(pull.std() - 1) < 0.1, (b, pull.mean(), pull.std(), len(pull))


def test_forced_photometry_reads_other_workers_patches(bins, cluster, dense, tmp_path):
    """Patches stored once each (not beside the catalog): rows whose patch is on the other worker
    are measured there, and the answer is the same, value for value."""
    a = measured(bins, cluster, tmp_path, "dense_coadd")
    b = measured(bins, cluster, tmp_path, "dense_coadd1")
    pd_cols = [c for c in a.columns if "_ap" in c]
    np.testing.assert_array_equal(a[pd_cols].values, b[pd_cols].values)


def test_forced_photometry_feeds_aggregates_and_flags_rows_off_the_images(bins, cluster, dense):
    """A histogram of pulls computed on the workers, and rows of the main catalog (no images
    where they are) measured as NaN with the outside flag, not a failure."""
    r = tessera(bins, cluster, "query", "--dataset", "dense", "--forced-phot", "dense_coadd", "--aperture-arcsec", str(APERTURE),
                "--bands", "r", "--where", "r_apFlag == 0", "--hist", "(r_apFlux - r_psfFlux) / r_apFluxErr:10:-5:5", "--format", "csv")
    counts = [int(line.split(",")[-1]) for line in r.stdout.strip().splitlines()[1:]]
    assert sum(counts) > 3000 and max(counts[4], counts[5]) == max(counts)
    r = tessera(bins, cluster, "query", "--dataset", "object", "--cone", "65,-30,0.5", "--forced-phot", "dense_coadd",
                "--aperture-arcsec", str(APERTURE), "--select", "objectId,r_apFlux,r_apFlag", "--format", "csv")
    lines = r.stdout.strip().splitlines()[1:]
    assert lines and all(l.split(",")[1] == "nan" and l.split(",")[2] == "8" for l in lines)
    r = tessera(bins, cluster, "query", "--dataset", "dense", "--forced-phot", "dense_coadd", "--aperture-arcsec", "20", check=False)
    assert r.returncode != 0 and "patches overlap by only 32 pixels" in r.stderr
    r = tessera(bins, cluster, "query", "--dataset", "dense", "--forced-phot", "dense_coadd", "--bands", "u", check=False)
    assert r.returncode != 0 and "has no band `u`" in r.stderr


def stack_reference(patches, band, ra, dec, size):
    """The cutouts a stack adds, made here: for each row the SIZE x SIZE pixels around the pixel
    its position falls in, on the patch of its own HEALPix pixel (image and variance)."""
    from astropy_healpix import HEALPix
    import astropy.units as u

    hp = HEALPix(nside=256, order="nested")
    pix = hp.lonlat_to_healpix(np.asarray(ra) * u.deg, np.asarray(dec) * u.deg)
    files = {fits.getheader(p)["PATCH"]: p for p in patches if fits.getheader(p)["BAND"] == band}
    h = size // 2
    imgs, vars_ = [], []
    for k in range(len(ra)):
        with fits.open(files[int(pix[k])]) as f:
            x, y = WCS(f["IMAGE"].header).world_to_pixel_values(ra[k], dec[k])
            cx, cy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
            imgs.append(f["IMAGE"].data[cy - h:cy + h + 1, cx - h:cx + h + 1].astype(np.float64))
            vars_.append(f["VARIANCE"].data[cy - h:cy + h + 1, cx - h:cx + h + 1].astype(np.float64))
    return np.array(imgs), np.array(vars_)


def test_stacks_match_numpy(bins, cluster, dense, tmp_path):
    """Mean, weighted-mean and median stacks of faint rows against numpy over cutouts made here;
    the same mean when the patches are on other workers."""
    import pandas as pd

    _, patches = dense
    where = ["--box", "60.03,60.17,-34.97,-34.83", "--where", "mag(r_psfFlux) > 24"]
    rows = tmp_path / "rows.csv"
    tessera(bins, cluster, "query", "--dataset", "dense", *where, "--select", "coord_ra,coord_dec", "--format", "csv", "-o", str(rows))
    t = pd.read_csv(rows)
    assert len(t) > 500
    cut, var = stack_reference(patches, "r", t.coord_ra.values, t.coord_dec.values, 15)
    expect = {"mean": cut.mean(axis=0), "weighted": (cut / var).sum(axis=0) / (1 / var).sum(axis=0), "median": np.median(cut, axis=0)}
    lo, hi = -100.0, 300.0
    for kind, ref in expect.items():
        out = tmp_path / f"{kind}.fits"
        extra = [f"--median-range={lo},{hi}"] if kind == "median" else []
        r = tessera(bins, cluster, "stack", "--dataset", "dense", *where, "--images", "dense_coadd", "--band", "r", "--size", "15",
                    "--kind", kind, *extra, "-o", str(out))
        with fits.open(out) as f:
            assert f[0].header["SOURCES"] == len(t)
            got = f["IMAGE"].data.astype(np.float64)
            if kind == "median":
                assert np.all(np.abs(got - ref) <= (hi - lo) / 128), np.abs(got - ref).max()
            else:
                np.testing.assert_allclose(got, ref, rtol=2e-6, atol=1e-5)
            if kind == "mean":
                np.testing.assert_allclose(f["VARIANCE"].data, var.sum(axis=0) / len(t) ** 2, rtol=2e-6)
                # The stacked faint sources show: the centre stands above the edge.
                assert got[7, 7] > got[0, :].mean() + 5 * np.sqrt(f["VARIANCE"].data[7, 7])
        assert f"stacked {len(t)} cutouts" in r.stdout
    other = tmp_path / "mean1.fits"
    tessera(bins, cluster, "stack", "--dataset", "dense", *where, "--images", "dense_coadd1", "--band", "r", "--size", "15", "-o", str(other))
    with fits.open(other) as f, fits.open(tmp_path / "mean.fits") as g:
        np.testing.assert_allclose(f["IMAGE"].data, g["IMAGE"].data, rtol=1e-6)
    r = tessera(bins, cluster, "stack", "--dataset", "dense", "--images", "dense_coadd", "--band", "r", "--size", "101", "-o", "/dev/null", check=False)
    assert r.returncode != 0 and "patches overlap by only 32 pixels" in r.stderr


def test_image_statistics_match_numpy(bins, cluster, coadd, patch_files, tmp_path):
    """Per band, over each patch's own pixels (centres in its HEALPix pixel, counted once):
    pixel count, median and robust σ ((q75 − q25) / 1.349, from a DDSketch of 0.5% relative
    error) against numpy, and the depth map against the variance plane."""
    from astropy_healpix import HEALPix
    import astropy.units as u

    out = tmp_path / "depth.csv"
    r = tessera(bins, cluster, "image-stats", "--dataset", coadd, "--map-order", "10", "--map-out", str(out))
    lines = {l.split()[0]: l.split() for l in r.stdout.splitlines()[1:] if l.split() and l.split()[0] in BANDS}
    hp8, hp10 = HEALPix(nside=256, order="nested"), HEALPix(nside=1024, order="nested")
    import pandas as pd
    depth = pd.read_csv(out)
    for band in BANDS:
        values, variance, mapix = [], [], []
        for path in patch_files:
            with fits.open(path) as f:
                if f[0].header["BAND"] != band:
                    continue
                w = WCS(f["IMAGE"].header)
                yy, xx = np.mgrid[0:f["IMAGE"].data.shape[0], 0:f["IMAGE"].data.shape[1]]
                ra, dec = w.pixel_to_world_values(xx.ravel(), yy.ravel())
                own = hp8.lonlat_to_healpix(ra * u.deg, dec * u.deg) == f[0].header["PATCH"]
                values.append(f["IMAGE"].data.ravel()[own].astype(np.float64))
                variance.append(f["VARIANCE"].data.ravel()[own].astype(np.float64))
                mapix.append(hp10.lonlat_to_healpix(ra[own] * u.deg, dec[own] * u.deg))
        v, var, mp = np.concatenate(values), np.concatenate(variance), np.concatenate(mapix)
        got = lines[band]
        assert abs(int(got[1]) - v.size) <= max(2, v.size // 100_000), (got, v.size)
        q25, q50, q75 = np.quantile(v, [0.25, 0.5, 0.75])
        assert abs(float(got[3]) - q50) <= 0.01 * abs(q50) + 0.02 * (q75 - q25) / 1.349
        assert abs(float(got[4]) - (q75 - q25) / 1.349) <= 0.02 * (q75 - q25) / 1.349
        # The depth of the map pixel holding the most pixels, from the variance plane.
        d = depth[depth.band == band].sort_values("pixels").iloc[-1]
        sel = mp == int(d.pixel)
        assert abs(int(d.pixels) - sel.sum()) <= 2
        np.testing.assert_allclose(d.mean_variance, var[sel].mean(), rtol=1e-6)
        np.testing.assert_allclose(d.depth5, 31.4 - 2.5 * np.log10(5 * np.sqrt(var[sel].mean() * np.pi / 1.0 ** 2)), rtol=1e-9)


# HiPS: the tree `tessera hips` writes, against the patch files read by astropy (the deepest
# tiles), numpy (the coarser orders and Allsky), mocpy (the MOC), Pillow (the PNG tiles), the
# HiPS 1.0 list of required properties, and Aladin's own Hipsgen on the same files (tile layout).
HIPS_WIDTH, HIPS_ORDER = 256, 9


def deinterleave(v):
    """The even bits (x) and odd bits (y) of nested sub-indices."""
    x = np.zeros_like(v)
    y = np.zeros_like(v)
    for b in range(32):
        x |= ((v >> (2 * b)) & 1) << b
        y |= ((v >> (2 * b + 1)) & 1) << b
    return x, y


def tile_pixel_indices(npix, width):
    """The HEALPix nested index of each FITS tile pixel [row, column], as the HiPS standard (and
    Aladin's Hipsgen, checked below) lays a tile out: x = width - 1 - row, y = column."""
    sub = np.arange(width * width, dtype=np.int64)
    x, y = deinterleave(sub)
    idx = np.empty((width, width), dtype=np.int64)
    idx[width - 1 - x, y] = npix * width * width + sub
    return idx


def read_tiles(root, order):
    tiles = {}
    for path in glob.glob(os.path.join(root, f"Norder{order}", "Dir*", "Npix*.fits")):
        npix = int(os.path.basename(path)[4:-5])
        assert os.path.dirname(path).endswith(f"Dir{npix // 10000 * 10000}")
        with fits.open(path) as f:
            assert f[0].header["ORDER"] == order and f[0].header["NPIX"] == npix
            tiles[npix] = f[0].data.astype(np.float64)
    return tiles


@pytest.fixture(scope="module")
def hips_tree(bins, cluster, coadd):
    # Where the gateway serves HiPS trees from (`tessera local`: DATA/hips).
    out = os.path.join(cluster.data, "hips", "coadd_r")
    r = tessera(bins, cluster, "hips", "--dataset", coadd, "--band", "r", "--tile-width", str(HIPS_WIDTH),
                "--order", str(HIPS_ORDER), "-o", str(out))
    assert "HiPS of coadd band r" in r.stdout
    return str(out)


def test_hips_deepest_tiles_are_the_coadd_pixels(hips_tree, patch_files):
    """Each deepest tile pixel is the pixel of the patch of its own order-8 HEALPix pixel nearest
    the HEALPix pixel's centre (astropy_healpix for the centre, astropy.wcs for the pixel)."""
    from astropy_healpix import HEALPix
    import astropy.units as u

    patches = {}
    for path in patch_files:
        with fits.open(path) as f:
            if f[0].header["BAND"] == "r":
                patches[f[0].header["PATCH"]] = (WCS(f["IMAGE"].header), f["IMAGE"].data.astype(np.float64))
    shift = int(np.log2(HIPS_WIDTH))
    level = HIPS_ORDER + shift
    hp = HEALPix(nside=2 ** level, order="nested")
    tiles = read_tiles(hips_tree, HIPS_ORDER)
    # Every patch's own pixel is covered by its four order-9 tiles, and nothing else is.
    assert set(tiles) == {p * 4 + k for p in patches for k in range(4)}
    compared = 0
    for npix, tile in tiles.items():
        idx = tile_pixel_indices(npix, HIPS_WIDTH)
        wcs, data = patches[npix >> 2]
        lon, lat = hp.healpix_to_lonlat(idx.ravel())
        x, y = wcs.world_to_pixel_values(lon.to_value(u.deg), lat.to_value(u.deg))
        xi, yi = np.floor(x + 0.5).astype(int), np.floor(y + 0.5).astype(int)
        assert xi.min() >= 0 and yi.min() >= 0 and xi.max() < data.shape[1] and yi.max() < data.shape[0]
        np.testing.assert_array_equal(tile.ravel(), data[yi, xi])
        compared += tile.size
    assert compared == len(patches) * 4 * HIPS_WIDTH ** 2


def test_hips_coarser_tiles_allsky_moc_png_and_properties(hips_tree):
    """Each coarser tile is the mean of the finite values of its pixels' four children (found
    through nested indices, not quadrants), down to order 3; Allsky holds each order-3 tile
    shrunk 8× in the standard's layout; the MOC (mocpy) is the deepest tiles; PNG tiles are the
    FITS ones upside down, transparent where NaN; properties has HiPS 1.0's required keys."""
    import warnings
    warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of all-NaN blocks: NaN, as wanted
    below = read_tiles(hips_tree, HIPS_ORDER)
    for order in range(HIPS_ORDER - 1, 2, -1):
        tiles = read_tiles(hips_tree, order)
        assert set(tiles) == {n >> 2 for n in below}
        # The children of every deepest-level pixel, as flat arrays by nested index.
        values = {}
        for n, t in below.items():
            idx = tile_pixel_indices(n, HIPS_WIDTH)
            values.update(zip(idx.ravel().tolist(), t.ravel().tolist()))
        for npix, tile in tiles.items():
            idx = tile_pixel_indices(npix, HIPS_WIDTH).ravel()
            kids = np.array([[values.get(4 * i + k, np.nan) for k in range(4)] for i in idx])
            want = np.nanmean(kids, axis=1).reshape(HIPS_WIDTH, HIPS_WIDTH)
            # float32 sums: rounding relative to the largest child, not the mean.
            scale = np.nanmax(np.abs(kids), axis=1).reshape(HIPS_WIDTH, HIPS_WIDTH)
            np.testing.assert_array_equal(np.isnan(tile), np.isnan(want))
            ok = ~np.isnan(want)
            assert np.all(np.abs(tile[ok] - want[ok]) <= 1e-6 * scale[ok])
        below = tiles
    assert not os.path.exists(os.path.join(hips_tree, "Norder2"))

    # Allsky: order-3 tile n at column n % 27, row n // 27 from the top (FITS's last rows).
    with fits.open(os.path.join(hips_tree, "Norder3", "Allsky.fits")) as f:
        sky = f[0].data.astype(np.float64)
    side = HIPS_WIDTH // 8
    assert sky.shape == (29 * side, 27 * side)
    for n, t in below.items():
        r, c = n // 27, n % 27
        block = sky[sky.shape[0] - (r + 1) * side: sky.shape[0] - r * side, c * side:(c + 1) * side]
        want = np.nanmean(t.reshape(side, 8, side, 8), axis=(1, 3))
        scale = np.nanmax(np.abs(t.reshape(side, 8, side, 8)), axis=(1, 3))
        np.testing.assert_array_equal(np.isnan(block), np.isnan(want))
        ok = ~np.isnan(want)
        assert np.all(np.abs(block[ok] - want[ok]) <= 1e-5 * scale[ok])
    assert np.isfinite(sky).sum() == sum(np.isfinite(np.nanmean(t.reshape(side, 8, side, 8), axis=(1, 3))).sum() for t in below.values())

    from mocpy import MOC
    moc = MOC.from_fits(os.path.join(hips_tree, "Moc.fits"))
    deepest = read_tiles(hips_tree, HIPS_ORDER)
    assert moc.max_order == HIPS_ORDER
    np.testing.assert_array_equal(np.sort(moc.flatten()), np.sort(list(deepest)))

    from PIL import Image
    for npix, t in list(deepest.items())[:4]:
        png = np.asarray(Image.open(os.path.join(hips_tree, f"Norder{HIPS_ORDER}", f"Dir{npix // 10000 * 10000}", f"Npix{npix}.png")))
        assert png.shape == (HIPS_WIDTH, HIPS_WIDTH, 2)  # grey and alpha
        flipped = t[::-1]
        np.testing.assert_array_equal(png[..., 1] == 0, np.isnan(flipped))
        # The grey levels rise with the pixel values (one stretch for all tiles).
        ok = np.isfinite(flipped)
        order_of_values = np.argsort(flipped[ok], kind="stable")
        assert np.all(np.diff(png[..., 0][ok][order_of_values].astype(int)) >= 0)

    props = {}
    with open(os.path.join(hips_tree, "properties")) as f:
        for line in f:
            if "=" in line and not line.startswith("#"):
                k, v = line.split("=", 1)
                props[k.strip()] = v.strip()
    for key in ["creator_did", "obs_title", "dataproduct_type", "hips_version", "hips_release_date", "hips_status",
                "hips_tile_format", "hips_order", "hips_frame"]:
        assert props.get(key), key
    assert props["dataproduct_type"] == "image" and props["hips_frame"] == "equatorial"
    assert int(props["hips_order"]) == HIPS_ORDER and int(props["hips_tile_width"]) == HIPS_WIDTH
    assert set(props["hips_tile_format"].split()) == {"png", "fits"} and props["hips_pixel_bitpix"] == "-32"
    assert props["creator_did"].startswith("ivo://")
    import re
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\dZ", props["hips_release_date"])
    lo, hi = map(float, props["hips_data_range"].split())
    assert np.float32(lo) == min(np.nanmin(t) for t in deepest.values()) and np.float32(hi) == max(np.nanmax(t) for t in deepest.values())


def test_hips_tiles_lie_where_aladin_puts_them(hips_tree, patch_files, tmp_path):
    """Aladin's Hipsgen (CDS's reference HiPS builder) on the same r-band patch files: its
    deepest tiles of the same pixels hold the same sky. It interpolates bilinearly and we take
    the nearest pixel, so the noise differs; the layout is checked by correlation, against the
    same tiles transposed (a wrong layout) as a control."""
    src = tmp_path / "r"
    src.mkdir()
    for p in patch_files:
        if os.path.basename(p).startswith("r-"):
            os.symlink(p, src / os.path.basename(p))
    out = tmp_path / "aladin"
    subprocess.run(["aladin", "-hipsgen", f"in={src}", f"out={out}", "creator_did=ivo://tessera.test/r", f"hips_order={HIPS_ORDER}",
                    f"hips_tile_width={HIPS_WIDTH}", "hdu=1"], check=True, capture_output=True, timeout=600)
    ours = read_tiles(hips_tree, HIPS_ORDER)
    theirs = {}
    for path in glob.glob(str(out / f"Norder{HIPS_ORDER}" / "Dir*" / "Npix*.fits")):
        theirs[int(os.path.basename(path)[4:-5])] = fits.getdata(path).astype(np.float64)
    assert set(ours) <= set(theirs)
    for npix, t in ours.items():
        a = theirs[npix]
        both = np.isfinite(t) & np.isfinite(a)
        assert both.sum() > 0.9 * t.size
        assert np.corrcoef(t[both], a[both])[0, 1] > 0.4, npix
        assert abs(np.corrcoef(t.T[both], a[both])[0, 1]) < 0.1, npix


def test_hips_errors(bins, cluster, coadd, tmp_path):
    def fails(*args):
        r = tessera(bins, cluster, "hips", *args, "-o", str(tmp_path / "x"), check=False)
        assert r.returncode != 0
        assert not os.path.exists(tmp_path / "x")
        return r.stderr
    assert "band" in fails("--dataset", coadd, "--band", "z", "--cut", "0,1")
    assert "at least the patch order 8" in fails("--dataset", coadd, "--band", "r", "--order", "7", "--cut", "0,1")
    assert "over the limit" in fails("--dataset", coadd, "--band", "r", "--order", "13", "--cut", "0,1")
    assert "not an image dataset" in fails("--dataset", "object", "--band", "r", "--cut", "0,1")
    assert "--tile-width must be one of" in fails("--dataset", coadd, "--band", "r", "--tile-width", "100")


def test_ctrl_c_stops_a_hips_job_on_the_cluster(bins, cluster, client, coadd, tmp_path):
    """Ctrl-C while `tessera hips` takes its tiles straight from the workers: the job is
    cancelled on the cluster (the scheduler confirms it), the staging folder is removed, no tree
    is left, and the command exits with 130."""
    import re
    import signal
    import time
    env = dict(os.environ, TESSERA_KEY=cluster.key_path or "")
    # Order 10 at 512 pixels: many tiles a patch, long enough to be caught while they come.
    p = subprocess.Popen([os.path.join(bins, "tessera"), "hips", "--dataset", coadd, "--band", "r", "--order", "10", "--tile-width", "512",
                          "--cut", "0,1", "-o", str(tmp_path / "deep"), "--scheduler", cluster.endpoint],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and p.poll() is None and not glob.glob(str(tmp_path / "deep.partial-*" / "Norder*" / "Dir*" / "*")):
            time.sleep(0.02)
        assert p.poll() is None, f"the HiPS job ended before it was interrupted: {p.communicate()[1]}"
        job = next(j for j in client.status().jobs if j.name == f"HiPS {coadd} r" and j.state == 0)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=15)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, err
    assert re.search(rf"interrupted: job {job.job_id} cancelled on the cluster", err), err
    assert os.listdir(tmp_path) == []
    ended = next(j for j in client.status().jobs if j.job_id == job.job_id)
    assert ended.state == 3, ended  # JOB_CANCELLED


# SODA, DataLink and the HiPS trees over HTTP, with pyvo as the client.
def http_session(cluster, user="soda_user"):
    import requests
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {cluster.create_token(user)}"
    return s


def gateway(cluster):
    return cluster.tap_url[: -len("/tap")]


@pytest.mark.parametrize("cli,soda", [
    (["--cone", "60.05,-34.95,0.01", "--band", "r"], {"circle": (60.05, -34.95, 0.01), "band": (5.6e-7, 6.8e-7)}),
    (["--box", "60.02,60.06,-34.99,-34.96"], {"range": (60.02, 60.06, -34.99, -34.96)}),
    (["--cone", "60.08,-34.93,0.004", "--band", "g,r"], {"circle": (60.08, -34.93, 0.004), "band": (4.5e-7, 6e-7)}),
])
def test_soda_cutouts_are_tessera_cutouts_bytes(bins, cluster, coadd, tmp_path, cli, soda):
    """pyvo's SodaQuery against /soda/sync: the same bytes as `tessera cutout` for the same
    region (CIRCLE, RANGE; BAND as a wavelength interval picks the filters it meets)."""
    from pyvo.dal.adhoc import SodaQuery
    out = tmp_path / "cli.fits"
    tessera(bins, cluster, "cutout", "--dataset", coadd, *cli, "-o", str(out))
    q = SodaQuery(gateway(cluster) + "/soda/sync", id="ivo://tessera/coadd", session=http_session(cluster), **soda)
    got = q.execute_stream().read()
    assert got == out.read_bytes()
    with fits.open(out, checksum=True) as f:
        assert f["IMAGE"].header["BAND"] in ("g", "r")


def semantics(dl, term):
    """Rows of one semantics (pyvo's bysemantics would fetch the IVOA vocabulary online)."""
    return [r for r in dl if r["semantics"] == term]


def test_datalink_lists_patches_and_their_links(bins, cluster, coadd, patch_files, hips_tree):
    """DataLink {links} for the dataset (pyvo's DatalinkResults): a #this per patch whose file,
    fetched through SODA, is the patch's pixels and WCS; the #cutout service descriptor that
    pyvo runs; the HiPS preview and coverage of band r; a patch's own links with its HiPS tile."""
    from pyvo.dal.adhoc import DatalinkResults
    s = http_session(cluster)
    dl = DatalinkResults.from_result_url(gateway(cluster) + "/soda/links?ID=ivo://tessera/coadd", session=s)
    this = semantics(dl, "#this")
    assert len(this) == len(patch_files)
    assert all(r["error_message"] in ("", None) for r in this)
    by_name = {}
    for path in patch_files:
        with fits.open(path) as f:
            by_name[(f[0].header["BAND"], f[0].header["PATCH"])] = path
    row = this[0]
    band, patch = row["access_url"].split("%3F")[1].split("%2F")
    data = s.get(row["access_url"]).content
    with fits.open(__import__("io").BytesIO(data), checksum=True) as got, fits.open(by_name[(band, int(patch))]) as want:
        np.testing.assert_array_equal(got["IMAGE"].data, want["IMAGE"].data)
        np.testing.assert_array_equal(got["VARIANCE"].data, want["VARIANCE"].data)
        g, w = WCS(got["IMAGE"].header), WCS(want["IMAGE"].header)
        np.testing.assert_allclose(g.wcs.crpix, w.wcs.crpix, atol=1e-9)
        np.testing.assert_allclose(g.wcs.crval, w.wcs.crval, atol=1e-12)
    # The cutout service, as pyvo finds and runs it.
    proc = dl.get_first_proc()
    cut = proc.process(session=s, circle=(60.05, -34.95, 0.01), band=(5.6e-7, 6.8e-7)).read()
    with fits.open(__import__("io").BytesIO(cut)) as f:
        assert f["IMAGE"].header["BAND"] == "r" and len(f) == 4
    assert cut == s.get(gateway(cluster) + "/soda/sync", params={"ID": "ivo://tessera/coadd", "CIRCLE": "60.05 -34.95 0.01", "BAND": "5.6e-7 6.8e-7"}).content
    previews = {r["description"].split()[1]: r["access_url"] for r in semantics(dl, "#preview")}
    assert set(previews) == {"r"}
    r = s.get(previews["r"])
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/png"
    cov = [x["access_url"] for x in semantics(dl, "#coverage")]
    assert len(cov) == 1 and s.get(cov[0]).content[:6] == b"SIMPLE"
    # One patch's links: its #this and its HiPS tile at the patch order.
    band, patch = "r", next(p for (b, p) in by_name if b == "r")
    one = DatalinkResults.from_result_url(gateway(cluster) + f"/soda/links?ID=ivo://tessera/coadd?r/{patch}", session=s)
    assert len(semantics(one, "#this")) == 1
    tile = semantics(one, "#preview")[0]["access_url"]
    assert tile.endswith(f"/Norder8/Dir{patch // 10000 * 10000}/Npix{patch}.png") and s.get(tile).status_code == 200
    # An unknown ID is a row with an error, not a failed request.
    bad = DatalinkResults.from_result_url(gateway(cluster) + "/soda/links?ID=ivo://tessera/nothing", session=s)
    assert next(iter(bad))["error_message"].startswith("NotFoundFault")


def test_hips_trees_are_served_with_caching(cluster, hips_tree):
    s = http_session(cluster)
    base = gateway(cluster) + "/hips/coadd_r"
    r = s.get(base + "/properties")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain") and "hips_order" in r.text
    tile = sorted(glob.glob(os.path.join(hips_tree, f"Norder{HIPS_ORDER}", "Dir*", "Npix*.fits")))[0]
    rel = os.path.relpath(tile, hips_tree)
    r = s.get(f"{base}/{rel}")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/fits"
    assert r.content == open(tile, "rb").read()
    assert "max-age" in r.headers["Cache-Control"] and r.headers["Last-Modified"].endswith("GMT")
    again = s.get(f"{base}/{rel}", headers={"If-None-Match": r.headers["ETag"]})
    assert again.status_code == 304 and again.content == b""
    assert "hips_service_url" in s.get(gateway(cluster) + "/hips/list").text
    import requests
    assert requests.get(base + "/properties").status_code == 401  # a token is needed
    assert s.get(gateway(cluster) + "/hips/coadd_r/../gateway-tokens").status_code in (400, 404)
    assert s.get(gateway(cluster) + "/hips/coadd_r/Norder9/Dir0/Npix1.fits").status_code == 404


def test_a_hips_file_and_its_etag_come_from_one_version_of_a_replaced_tree(cluster):
    """A tree replaced by renaming folders (as `tessera hips` does) while its file is fetched:
    every answer's bytes are one version's whole file, under that version's ETag (time and size).
    The gateway once took the tag from a stat by path and the bytes from a later open, so a swap
    between them sent one version's bytes under the other's tag, which a browser then keeps."""
    import threading
    root = os.path.join(cluster.data, "hips")
    live = os.path.join(root, "swapped")
    versions = {}
    for name, fill, size in (("a", b"A", 300_000), ("b", b"B", 500_000)):
        d = os.path.join(root, f"swapped.v{name}")
        os.makedirs(os.path.join(d, "Norder3", "Dir0"), exist_ok=True)
        with open(os.path.join(d, "properties"), "w") as f:
            f.write("hips_order = 3\n")
        with open(os.path.join(d, "Norder3", "Dir0", "Npix7.fits"), "wb") as f:
            f.write(fill * size)
        versions[size] = (fill, d)
    spare = {d for (_, d) in versions.values()}
    first = spare.pop()
    os.rename(first, live)
    stop = threading.Event()

    def swap():
        current = first
        while not stop.is_set():
            nxt = next(iter(spare))
            os.rename(live, current)
            os.rename(nxt, live)
            spare.discard(nxt)
            spare.add(current)
            current = nxt
    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    s = http_session(cluster)
    url = gateway(cluster) + "/hips/swapped/Norder3/Dir0/Npix7.fits"
    seen = {}
    try:
        for _ in range(400):
            r = s.get(url)
            if r.status_code == 404:  # between the two renames
                continue
            assert r.status_code == 200, r.text
            size = int(r.headers["ETag"].strip('"').split("-")[1], 16)
            assert size in versions, r.headers["ETag"]
            fill, _ = versions[size]
            assert r.content == fill * size, (r.headers["ETag"], len(r.content), r.content[:1])
            seen[size] = seen.get(size, 0) + 1
    finally:
        stop.set()
        swapper.join()
        import shutil
        for d in [live] + sorted(spare):
            shutil.rmtree(d, ignore_errors=True)
    assert len(seen) == 2, seen  # both versions were served


def test_soda_errors(cluster, coadd):
    s = http_session(cluster)
    url = gateway(cluster) + "/soda/sync"

    def err(params, status, label):
        r = s.get(url, params=params)
        assert r.status_code == status, r.text
        assert r.headers["Content-Type"].startswith("text/plain") and r.text.startswith(label + ":"), r.text
        return r.text
    err({"ID": "ivo://tessera/nothing", "CIRCLE": "60 -35 0.01"}, 404, "NotFoundFault")
    err({"ID": "ivo://tessera/coadd"}, 400, "UsageError")
    assert "a circle needs" in err({"ID": "ivo://tessera/coadd", "CIRCLE": "60 -35 -1"}, 400, "UsageError")
    err([("ID", "ivo://tessera/coadd"), ("POS", "CIRCLE 60 -35 0.01"), ("POS", "CIRCLE 61 -35 0.01")], 400, "MultiValuedParamNotSupported")
    err({"ID": "ivo://tessera/coadd", "POS": "RANGE -Inf +Inf -35 -34.9"}, 400, "UsageError")
    # A box from pole to pole projects onto its tract's plane ~1e22 pixels tall: its refusal once
    # trapped the scheduler (the size became an Int); the cluster answers on after it.
    assert "larger than the limit" in err({"ID": "ivo://tessera/coadd", "POS": "RANGE 10 12 -90 90"}, 400, "UsageError")
    assert "no band" in err({"ID": "ivo://tessera/coadd", "CIRCLE": "60.05 -34.95 0.01", "BAND": "1e-3 1e-2"}, 404, "NotFoundFault")
    assert "no coverage" in err({"ID": "ivo://tessera/coadd", "CIRCLE": "120 30 0.01"}, 404, "NotFoundFault")
    assert "larger than the limit" in err({"ID": "ivo://tessera/coadd", "CIRCLE": "60.05 -34.95 5"}, 400, "UsageError")
    err({"ID": "ivo://tessera/coadd", "CIRCLE": "60.05 -34.95 0.01", "TIME": "55000 56000"}, 400, "UsageError")
    import requests
    r = requests.get(url, params={"ID": "ivo://tessera/coadd", "CIRCLE": "60.05 -34.95 0.01"}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
