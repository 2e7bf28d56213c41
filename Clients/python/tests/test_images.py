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
