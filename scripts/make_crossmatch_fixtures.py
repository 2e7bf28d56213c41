#!/usr/bin/env python3
"""Generate Tests/EndToEndTests/Fixtures/crossmatch/: two small catalogs and astropy's pairs.

Run with the test venv (astropy, astropy-healpix, scipy, numpy):

    .venv/bin/python scripts/make_crossmatch_fixtures.py

Deterministic (one seeded numpy Generator). Positions are written with Python's repr, so the
Swift side reads back exactly the doubles astropy saw.

The catalogs hold the cases a sharded cross-match gets wrong first:
  - random positions over the whole sky, most with a right counterpart 0.8" (sigma) away;
  - dense patches where a left row has many right rows within the radius (`--all`);
  - both poles, where right ascension means little;
  - right ascension 0/360, at the equator and at +60;
  - a left patch beside a dense right patch, overlapping by under the radius: with small right
    shards, the left patch lies in pixels where the right catalog has no shard at all, and its
    pairs are found only from the neighbouring shards' own rows.

Files:
  left.csv, right.csv   id,ra,dec,mag
  pairs_all.csv         left_id,right_id,sep_arcsec   search_around_sky(left, right, 2")
  pairs_nearest.csv     left_id,right_id,sep_arcsec   match_to_catalog_sky, kept within 2"
  pairs_nearest3.csv    the 1st, 2nd and 3rd nearest (nthneighbor=1, 2, 3), each kept within 2"
"""

import os

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord, search_around_sky
from astropy_healpix import HEALPix

SEED = 20261205
RADIUS = 2.0  # arcsec
OUT = os.path.join(os.path.dirname(__file__), "..", "Tests", "EndToEndTests", "Fixtures", "crossmatch")

rng = np.random.default_rng(SEED)


def uniform_sphere(n):
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    return ra, dec


def offset(ra, dec, sigma_arcsec):
    """Moves each position by a Gaussian offset (tangent plane), keeping RA in [0, 360)."""
    c = SkyCoord(ra * u.deg, dec * u.deg)
    pa = rng.uniform(0, 360, len(ra)) * u.deg
    sep = np.abs(rng.normal(0, sigma_arcsec, len(ra))) * u.arcsec
    moved = c.directional_offset_by(pa, sep)
    return moved.ra.wrap_at(360 * u.deg).deg, moved.dec.deg


def patch(n, ra0, dec0, half_arcsec):
    """Positions within a small square around (ra0, dec0), RA wrapped into [0, 360)."""
    d = rng.uniform(-half_arcsec, half_arcsec, n) / 3600
    r = rng.uniform(-half_arcsec, half_arcsec, n) / 3600 / np.cos(np.radians(dec0))
    return np.mod(ra0 + r, 360.0), np.clip(dec0 + d, -90, 90)


def polar_cap(n, north, within_arcsec):
    ra = rng.uniform(0, 360, n)
    colat = np.sqrt(rng.uniform(0, 1, n)) * within_arcsec / 3600
    return ra, (90 - colat) if north else (colat - 90)


left_ra, left_dec, right_ra, right_dec = [], [], [], []


def add(side_ra, side_dec, ra, dec):
    side_ra.append(np.asarray(ra, dtype=float))
    side_dec.append(np.asarray(dec, dtype=float))


# The whole sky: 80% of left rows have a right counterpart; extra right rows have none.
ra, dec = uniform_sphere(4000)
add(left_ra, left_dec, ra, dec)
keep = rng.uniform(size=4000) < 0.8
add(right_ra, right_dec, *offset(ra[keep], dec[keep], 0.8))
add(right_ra, right_dec, *uniform_sphere(2000))
# Dense patches: many pairs per left row.
add(left_ra, left_dec, *patch(200, 150.0, 2.0, 10))
add(right_ra, right_dec, *patch(300, 150.0, 2.0, 10))
add(left_ra, left_dec, *patch(100, 210.0, -45.0, 6))
add(right_ra, right_dec, *patch(200, 210.0, -45.0, 6))
# The poles.
add(left_ra, left_dec, *polar_cap(150, True, 8))
add(right_ra, right_dec, *polar_cap(150, True, 8))
add(left_ra, left_dec, *polar_cap(150, False, 8))
add(right_ra, right_dec, *polar_cap(150, False, 8))
# Right ascension 0/360.
add(left_ra, left_dec, *patch(200, 0.0, 0.0, 10))
add(right_ra, right_dec, *patch(200, 0.0, 0.0, 10))
add(left_ra, left_dec, *patch(100, 0.0, 60.0, 10))
add(right_ra, right_dec, *patch(100, 0.0, 60.0, 10))
# Left rows in a pixel where the right catalog has no shard. The ingest cuts shards no finer than
# HEALPix order 11 (its histogram's): a dense right patch in order-11 pixel A makes its shards
# split down to A itself, so A's sibling B, which holds no right rows, has no right shard at all.
# Left rows in B within the radius of right rows across the A/B edge pair only through the
# neighbouring shards' own rows.
hp = HEALPix(nside=2 ** 11, order="nested")
a = int(hp.lonlat_to_healpix(45.0 * u.deg, 20.0 * u.deg))
b = a ^ 1
ca = SkyCoord(*hp.healpix_to_lonlat(a))
cb = SkyCoord(*hp.healpix_to_lonlat(b))
lo, hi = 0.0, 1.0  # bisect the centres' great circle for the A/B edge
for _ in range(60):
    mid = (lo + hi) / 2
    p = ca.directional_offset_by(ca.position_angle(cb), ca.separation(cb) * mid)
    if int(hp.lonlat_to_healpix(p.ra, p.dec)) == a:
        lo = mid
    else:
        hi = mid
edge = ca.directional_offset_by(ca.position_angle(cb), ca.separation(cb) * lo)
inside_a = edge.directional_offset_by(edge.position_angle(ca), 1.2 * u.arcsec)
inside_b = edge.directional_offset_by(edge.position_angle(cb), 1.2 * u.arcsec)


def disc(centre, n, radius_arcsec):
    pa = rng.uniform(0, 360, n) * u.deg
    r = np.sqrt(rng.uniform(0, 1, n)) * radius_arcsec * u.arcsec
    moved = centre.directional_offset_by(pa, r)
    return moved.ra.deg, moved.dec.deg


bulk = disc(ca, 1500, 20)
near_a = disc(inside_a, 30, 1.0)
near_b = disc(inside_b, 40, 1.0)
assert np.all(hp.lonlat_to_healpix(bulk[0] * u.deg, bulk[1] * u.deg) == a)
assert np.all(hp.lonlat_to_healpix(near_a[0] * u.deg, near_a[1] * u.deg) == a)
assert np.all(hp.lonlat_to_healpix(near_b[0] * u.deg, near_b[1] * u.deg) == b)
add(right_ra, right_dec, *bulk)
add(right_ra, right_dec, *near_a)
add(left_ra, left_dec, *near_b)

lra, ldec = np.concatenate(left_ra), np.concatenate(left_dec)
rra, rdec = np.concatenate(right_ra), np.concatenate(right_dec)
lid = np.arange(1, len(lra) + 1, dtype=np.int64) * 10
rid = np.arange(1, len(rra) + 1, dtype=np.int64) * 10 + 1_000_000
lmag = rng.uniform(16, 25, len(lra))
rmag = rng.uniform(16, 25, len(rra))

left = SkyCoord(lra * u.deg, ldec * u.deg)
right = SkyCoord(rra * u.deg, rdec * u.deg)
i1, i2, d2d, _ = search_around_sky(left, right, RADIUS * u.arcsec)
nearest = []
for nth in (1, 2, 3):
    idx, sep, _ = left.match_to_catalog_sky(right, nthneighbor=nth)
    within = sep <= RADIUS * u.arcsec
    nearest.append((np.nonzero(within)[0], idx[within], sep[within]))
three = tuple(np.concatenate([n[k] for n in nearest]) for k in range(2)) + (
    u.Quantity(np.concatenate([n[2].arcsec for n in nearest]), u.arcsec),)

os.makedirs(OUT, exist_ok=True)


def write_table(name, ids, ra, dec, mag):
    with open(os.path.join(OUT, name), "w") as f:
        f.write("id,ra,dec,mag\n")
        for row in zip(ids, ra, dec, mag):
            f.write(f"{row[0]},{float(row[1])!r},{float(row[2])!r},{float(row[3])!r}\n")


def write_pairs(name, li, ri, sep):
    sep = sep.to(u.arcsec)
    order = np.lexsort((sep.value, rid[ri], lid[li]))
    with open(os.path.join(OUT, name), "w") as f:
        f.write("left_id,right_id,sep_arcsec\n")
        for k in order:
            f.write(f"{lid[li[k]]},{rid[ri[k]]},{float(sep[k].value)!r}\n")


write_table("left.csv", lid, lra, ldec, lmag)
write_table("right.csv", rid, rra, rdec, rmag)
write_pairs("pairs_all.csv", i1, i2, d2d)
write_pairs("pairs_nearest.csv", *nearest[0])
write_pairs("pairs_nearest3.csv", *three)
print(f"left {len(lra)} rows, right {len(rra)} rows, {len(i1)} pairs within {RADIUS}\"; "
      f"nearest {len(nearest[0][0])}, nearest 3: {len(three[0])}")
