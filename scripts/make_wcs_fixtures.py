#!/usr/bin/env python3
"""Generate Tests/TesseraSkyTests/Fixtures/wcs.json: TAN WCS reference values from astropy.wcs.

    .venv/bin/python scripts/make_wcs_fixtures.py

Each case is a FITS header (cards as text, as a file holds them) that astropy.wcs.WCS reads, and
two lists of points: 0-based pixels with the sky positions astropy gives (`wcs_pix2world(.., 0)`)
and sky positions with the 0-based pixels astropy gives (`wcs_world2pix(.., 0)`). Cases cover a
tract-like north-up 0.2" grid, tangent points near both poles and at RA 0 (points on both sides
of RA = 0/360), a rotated and skewed CD matrix, PC + CDELT, CDELT + CROTA2, an explicit LONPOLE
and a tangent point at the pole itself. Floats are written as repr strings (the Swift tests parse
them with Double(String), which is exact). Deterministic: one seeded numpy Generator.
"""
import json
import pathlib

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

rng = np.random.default_rng(20261206)
OUT = pathlib.Path(__file__).resolve().parent.parent / "Tests/TesseraSkyTests/Fixtures/wcs.json"


def tan(crval, crpix, cd=None, extra=None):
    h = {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CUNIT1": "deg", "CUNIT2": "deg",
         "CRVAL1": repr(float(crval[0])), "CRVAL2": repr(float(crval[1])),
         "CRPIX1": repr(float(crpix[0])), "CRPIX2": repr(float(crpix[1])), "RADESYS": "ICRS"}
    if cd is not None:
        for (i, j), v in np.ndenumerate(np.asarray(cd, dtype=float)):
            h[f"CD{i + 1}_{j + 1}"] = repr(float(v))
    h.update(extra or {})
    return h


def header_of(cards):
    hdr = fits.Header()
    for k, v in cards.items():
        try:
            hdr[k] = float(v) if k not in ("CTYPE1", "CTYPE2", "CUNIT1", "CUNIT2", "RADESYS") else v
        except ValueError:
            hdr[k] = v
    return hdr


s02 = 0.2 / 3600
cases = {
    "tract_like_0.2": tan((62.578125, -33.5595), (9100.0, 9100.0), [[-s02, 0], [0, s02]]),
    "near_north_pole": tan((45.0, 88.5380), (9100.0, 9100.0), [[-s02, 0], [0, s02]]),
    "near_south_pole": tan((315.0, -89.2), (9100.0, 9100.0), [[-s02, 0], [0, s02]]),
    "across_ra_zero": tan((0.3, 4.78), (9100.0, 9100.0), [[-s02, 0], [0, s02]]),
    "rotated_skewed_1arcsec": tan((150.1, 2.2), (1024.5, 980.25),
                                  [[-2.5e-4, 6.0e-5], [5.5e-5, 2.7e-4]]),
    "pc_cdelt": tan((210.0, -60.0), (400.0, 300.0), None,
                    {"CDELT1": repr(-1.1e-4), "CDELT2": repr(1.1e-4),
                     "PC1_1": repr(0.8660254037844387), "PC1_2": repr(-0.5),
                     "PC2_1": repr(0.5), "PC2_2": repr(0.8660254037844387)}),
    "cdelt_crota2": tan((10.0, 40.0), (512.0, 512.0), None,
                        {"CDELT1": repr(-2.0e-4), "CDELT2": repr(2.0e-4), "CROTA2": repr(30.0)}),
    "lonpole_170": tan((100.0, 30.0), (200.0, 200.0), [[-1e-3, 0], [0, 1e-3]], {"LONPOLE": repr(170.0)}),
    "tangent_at_pole": tan((0.0, 90.0), (1000.0, 1000.0), [[-1e-3, 0], [0, 1e-3]]),
}

out = {"cases": []}
for name, cards in cases.items():
    w = WCS(header_of(cards))
    span = 20000.0 if "0.2" in name or "pole" in name or "zero" in name else 3000.0
    cx, cy = float(cards["CRPIX1"]) - 1, float(cards["CRPIX2"]) - 1
    px = np.concatenate([[cx, cx + 0.5, 0.0], cx + rng.uniform(-span, span, 60)])
    py = np.concatenate([[cy, cy - 0.25, 0.0], cy + rng.uniform(-span, span, 60)])
    ra, dec = w.wcs_pix2world(px, py, 0)
    # Sky points: around the tangent point, within about the same span.
    ra0, dec0 = w.wcs_pix2world([cx], [cy], 0)
    rad = span * w.proj_plane_pixel_scales()[0].value
    sra, sdec = w.wcs_pix2world(cx + rng.uniform(-span, span, 60), cy + rng.uniform(-span, span, 60), 0)
    # Perturb off the exact pixel-grid images so the inverse is exercised on fresh positions.
    sdec = np.clip(sdec + rng.uniform(-1e-3, 1e-3, sdec.size) * rad, -90, 90)
    sra = np.mod(sra + rng.uniform(-1e-3, 1e-3, sra.size) * rad, 360)
    sx, sy = w.wcs_world2pix(sra, sdec, 0)
    out["cases"].append({
        "name": name,
        "cards": cards,
        # The side of a square pixel of the same area.
        "pixel_scale_arcsec": repr(float(np.sqrt(w.proj_plane_pixel_area().value) * 3600)),
        "pix2world": [[repr(float(a)) for a in t] for t in zip(px, py, ra, dec)],
        "world2pix": [[repr(float(a)) for a in t] for t in zip(sra, sdec, sx, sy)],
    })
OUT.write_text(json.dumps(out, indent=1) + "\n")
print(f"wrote {OUT}: {len(out['cases'])} cases")
