#!/usr/bin/env python3
"""Generate Tests/TesseraSkyTests/Fixtures/healpix.json: HEALPix (NESTED) reference values from healpy.

Run with the anchor venv (healpy, numpy):

    /work/venv-anchor/bin/python scripts/make_healpix_fixtures.py

Deterministic: every random choice comes from one seeded numpy Generator. Every call passes
nest=True. Floats are written as JSON *strings* holding Python's repr (the shortest text that
round-trips): Foundation's JSONSerialization on Linux parses JSON numbers 1-2 ulp off (see the
float_check section), whereas Swift's Double(String) is correctly rounded, so the tests read back
exactly the doubles healpy saw. Integers (pixel indices, up to 12*4^29) are plain JSON numbers;
JSONSerialization parses those exactly.

Sections (see the Swift tests in Tests/TesseraSkyTests/ for how each is checked):
  float_check   doubles as repr strings ("x"), as raw JSON numbers ("n") and as IEEE bit patterns,
                and large int64 values as numbers and strings, so the tests can confirm the
                parsing paths they rely on are exact.
  ang2pix       per order 0..29: random points (must match exactly) and adversarial points. An
                adversarial point is flagged "edge" when healpy itself gives a different pixel for a
                point 1e-12 rad away in some direction (32 directions); then "near" lists those pixels
                (healpy's, including the expected one).
  pix2ang       pixel centres (theta, phi).
  neighbours    get_all_neighbours, incl. face-corner pixels.
  boundaries    healpy.boundaries, step 1 and 3, as unit vectors.
  max_pixrad    healpy.max_pixrad per order.
  query_disc    exact and inclusive results, orders 3..10.
  query_polygon exact results, orders 4..8.
"""

import json
import math
import os
import struct
import sys

import healpy as hp
import numpy as np

SEED = 20240611
rng = np.random.default_rng(SEED)

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "Tests", "TesseraSkyTests", "Fixtures", "healpix.json")

ORDERS = list(range(0, 30))
EDGE_EPS = 1e-12  # rad: a point is "edge" if healpy's pixel changes within this distance


def nside_of(order):
    return 1 << order


def npix_of(order):
    return 12 << (2 * order)


def f(x):
    """A float as its repr string (round-trips exactly through Swift's Double(String))."""
    x = float(x)
    assert math.isfinite(x)
    assert float(repr(x)) == x
    return repr(x)


def random_radec(n):
    ra = rng.uniform(0.0, 360.0, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    return ra, dec


def random_pixels(order, n):
    return [int(p) for p in rng.integers(0, npix_of(order), size=n, dtype=np.int64)]


def ang2pix_lonlat(nside, ra, dec):
    return int(hp.ang2pix(nside, ra, dec, nest=True, lonlat=True))


def radec_to_vec(ra, dec):
    r, d = math.radians(ra), math.radians(dec)
    return np.array([math.cos(d) * math.cos(r), math.cos(d) * math.sin(r), math.sin(d)])


def pixels_near(nside, ra, dec, eps=EDGE_EPS, ndir=32):
    """healpy's pixels at points eps radians from (ra, dec) in ndir directions."""
    p = radec_to_vec(ra, dec)
    # A tangent basis at p.
    a = np.array([0.0, 0.0, 1.0]) if abs(p[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    e1 = np.cross(p, a)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(p, e1)
    out = set()
    for k in range(ndir):
        al = 2 * math.pi * k / ndir
        q = p * math.cos(eps) + (e1 * math.cos(al) + e2 * math.sin(al)) * math.sin(eps)
        out.add(int(hp.vec2pix(nside, q[0], q[1], q[2], nest=True)))
    return out


def adversarial_points(order):
    nside = nside_of(order)
    pts = []
    zdec = math.degrees(math.asin(2.0 / 3.0))
    # Poles and just off them.
    for ra in (0.0, 123.4, 270.0):
        pts += [(ra, 90.0), (ra, -90.0), (ra, 90.0 - 1e-9), (ra, -(90.0 - 1e-9))]
    # ra = 0, just below 360, exactly 360 (same pixel as 0 expected).
    for dec in (-75.0, -zdec, -1e-7, 0.0, 12.5, zdec, 89.0):
        pts += [(0.0, dec), (360.0 - 1e-12, dec), (360.0, dec)]
    # The polar-cap boundary z = +-2/3.
    for ra in list(rng.uniform(0.0, 360.0, 3)) + [0.0, 10.0, 45.0, 200.0]:
        pts += [(float(ra), zdec), (float(ra), -zdec)]
    # The equator.
    for ra in list(rng.uniform(0.0, 360.0, 3)) + [0.0, 22.5, 180.0]:
        pts.append((float(ra), 0.0))
    # Multiples of 45 degrees in RA at assorted declinations.
    for k in range(8):
        for dec in (-zdec, 0.0, 30.0, 80.0):
            pts.append((45.0 * k, dec))
    # Pixel corners and edge midpoints, with tiny perturbations.
    pix = random_pixels(order, 1) + [0, 4 * (nside * nside) + nside * nside // 2, npix_of(order) - 1]
    for p in pix:
        b = hp.boundaries(nside, p, step=2, nest=True)  # (3, 8): corners and edge midpoints
        lon, lat = hp.vec2ang(b.T, lonlat=True)
        for i in range(len(lon)):
            ra, dec = float(lon[i]), float(lat[i])
            pts.append((ra, dec))
            if i % 2 == 0:  # perturb the corners only, to keep the file small
                for dra, ddec in ((1e-13, 0.0), (-1e-13, 0.0), (0.0, 1e-13), (0.0, -1e-13)):
                    d2 = max(-90.0, min(90.0, dec + ddec))
                    pts.append((ra + dra, d2))
    return pts


def section_ang2pix():
    out = []
    nrand = nedge = 0
    for order in ORDERS:
        nside = nside_of(order)
        ra, dec = random_radec(40)
        for a, d in zip(ra, dec):
            out.append({"o": order, "ra": f(a), "dec": f(d), "pix": ang2pix_lonlat(nside, a, d)})
            nrand += 1
        for a, d in adversarial_points(order):
            pix = ang2pix_lonlat(nside, a, d)
            rec = {"o": order, "ra": f(a), "dec": f(d), "pix": pix, "adv": True}
            near = pixels_near(nside, a, d) | {pix}
            if len(near) > 1:
                rec["edge"] = True
                rec["near"] = sorted(near)
                nedge += 1
            out.append(rec)
    # ra = 360 must give the same pixel as ra = 0.
    for r in out:
        if float(r["ra"]) == 360.0:
            assert r["pix"] == ang2pix_lonlat(nside_of(r["o"]), 0.0, float(r["dec"])), r
    return out, nrand, nedge


def section_pix2ang():
    out = []
    for order in ORDERS:
        nside = nside_of(order)
        pix = [0, npix_of(order) - 1] + random_pixels(order, 20)
        th, ph = hp.pix2ang(nside, np.array(pix, dtype=np.int64), nest=True)
        for p, t, q in zip(pix, th, ph):
            out.append({"o": order, "pix": p, "theta": f(t), "phi": f(q)})
    return out


def face_corner_pixels(order):
    nside = nside_of(order)
    out = []
    for face in range(12):
        for x, y in ((0, 0), (nside - 1, 0), (0, nside - 1), (nside - 1, nside - 1)):
            out.append(int(hp.xyf2pix(nside, x, y, face, nest=True)))
    return sorted(set(out))


def section_neighbours():
    out = []
    for order in ORDERS:
        nside = nside_of(order)
        pix = random_pixels(order, 15)
        if order in (0, 1, 2, 5, 29):
            pix += face_corner_pixels(order)
        for p in pix:
            nb = hp.get_all_neighbours(nside, p, nest=True)
            out.append({"o": order, "pix": p, "nb": [int(x) for x in nb]})
    return out


def section_boundaries():
    out = []
    for order in ORDERS:
        nside = nside_of(order)
        pix = [0, npix_of(order) - 1] + random_pixels(order, 2)
        for p in pix:
            for step in (1, 3):
                b = hp.boundaries(nside, p, step=step, nest=True)  # (3, 4*step)
                out.append({"o": order, "pix": p, "step": step,
                            "v": [[f(b[0, i]), f(b[1, i]), f(b[2, i])] for i in range(b.shape[1])]})
    return out


def section_max_pixrad():
    return [{"o": order, "r": f(hp.max_pixrad(nside_of(order)))} for order in ORDERS]


def disc_radius_cap(order):
    """Largest radius (rad) keeping a disc to roughly 1500 pixels at this order, at most 20 deg."""
    return min(math.radians(20.0), math.sqrt(1500.0 / (3.0 * 4.0 ** order)))


def section_query_disc():
    out = []
    for order in range(3, 11):
        nside = nside_of(order)
        rmin, rmax = math.radians(0.1), disc_radius_cap(order)
        radii = list(np.exp(rng.uniform(math.log(rmin), math.log(rmax), 6)))
        radii[0] = rmax  # one big disc per order
        ra, dec = random_radec(6)
        centres = [(float(a), float(d)) for a, d in zip(ra, dec)]
        centres[0] = (0.0, 90.0) if order % 2 else (137.0, -90.0)  # a pole
        centres[1] = (359.8, float(dec[1]) * 0.5)  # straddles ra = 0 (radius enlarged below)
        radii[1] = max(radii[1], math.radians(0.5))
        centres[2] = (float(ra[2]), math.degrees(math.asin(2.0 / 3.0)))  # on the cap boundary
        for (a, d), r in zip(centres, radii):
            v = radec_to_vec(a, d)
            exact = sorted(int(x) for x in hp.query_disc(nside, v, r, inclusive=False, nest=True))
            incl = sorted(int(x) for x in hp.query_disc(nside, v, r, inclusive=True, nest=True))
            assert set(exact) <= set(incl)
            out.append({"o": order, "v": [f(x) for x in v], "ra": f(a), "dec": f(d), "r": f(r),
                        "exact": exact, "inclusive": incl})
    return out


def polygons():
    """Convex polygons as (name, [(ra, dec)...]) in degrees, counter-clockwise seen from outside."""
    return [
        ("triangle", [(40.0, 10.0), (52.0, 14.0), (44.0, 22.0)]),
        ("quadrilateral", [(200.0, -35.0), (212.0, -33.0), (214.0, -24.0), (199.0, -26.0)]),
        ("north_pole", [(0.0, 82.0), (90.0, 82.0), (180.0, 82.0), (270.0, 82.0)]),
        ("ra_zero", [(354.0, -5.0), (6.0, -4.0), (7.0, 6.0), (355.0, 5.0)]),
        ("pentagon_cap_boundary", [(100.0, 38.0), (108.0, 39.0), (110.0, 45.0), (104.0, 49.0), (98.0, 44.0)]),
    ]


def section_query_polygon():
    out = []
    for name, verts in polygons():
        vecs = np.array([radec_to_vec(a, d) for a, d in verts])
        for order in range(4, 9):
            nside = nside_of(order)
            exact = sorted(int(x) for x in hp.query_polygon(nside, vecs, inclusive=False, nest=True))
            rev = sorted(int(x) for x in hp.query_polygon(nside, vecs[::-1], inclusive=False, nest=True))
            assert exact == rev, name  # healpy accepts either orientation
            out.append({"o": order, "name": name, "v": [[f(x) for x in row] for row in vecs], "exact": exact})
    return out


def section_float_check():
    vals = [0.1, 1.0 / 3.0, math.pi, 5e-324, 1e-300, 2.0 ** -1074 * 3, 0.5497787143782138,
            float(np.nextafter(1.0, 2.0)), 359.99999999999903]
    vals += [float(x) for x in rng.uniform(-400.0, 400.0, 5)]
    floats = [{"x": f(v), "n": v, "bits": str(struct.unpack("<Q", struct.pack("<d", v))[0])} for v in vals]
    ints = [12 * 4 ** 29 - 1, 2 ** 53 + 1, 3458764513820540927, 1152921504606846977]
    return {"floats": floats, "ints": [{"x": i, "s": str(i)} for i in ints]}


def main():
    ang, nrand, nedge = section_ang2pix()
    data = {
        "generator": "scripts/make_healpix_fixtures.py",
        "healpy": hp.__version__,
        "numpy": np.__version__,
        "seed": SEED,
        "edge_eps": EDGE_EPS,
        "float_check": section_float_check(),
        "ang2pix": ang,
        "pix2ang": section_pix2ang(),
        "neighbours": section_neighbours(),
        "boundaries": section_boundaries(),
        "max_pixrad": section_max_pixrad(),
        "query_disc": section_query_disc(),
        "query_polygon": section_query_polygon(),
    }
    text = json.dumps(data, separators=(",", ":"))
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as fh:
        fh.write(text)
        fh.write("\n")
    qd = data["query_disc"]
    qp = data["query_polygon"]
    print(f"wrote {os.path.relpath(OUT)} ({len(text) / 1024:.0f} KiB), healpy {hp.__version__}, seed {SEED}")
    print(f"  ang2pix      {len(ang)} points, orders 0-29 ({nrand} random, {len(ang) - nrand} adversarial, {nedge} flagged edge)")
    print(f"  pix2ang      {len(data['pix2ang'])} pixels")
    print(f"  neighbours   {len(data['neighbours'])} pixels")
    print(f"  boundaries   {len(data['boundaries'])} pixel/step cases")
    print(f"  query_disc   {len(qd)} discs, orders 3-10, {sum(len(d['exact']) for d in qd)} exact / "
          f"{sum(len(d['inclusive']) for d in qd)} inclusive pixels")
    print(f"  query_polygon {len(qp)} cases, orders 4-8, {sum(len(d['exact']) for d in qp)} pixels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
