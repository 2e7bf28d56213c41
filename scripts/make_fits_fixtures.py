#!/usr/bin/env python3
"""Writes the FITS fixture the storage tests read: a binary table written by astropy, with one
column of every type Tessera reads, plus columns it must skip (strings, arrays) and nulls.

  python3 scripts/make_fits_fixtures.py     # needs numpy and astropy

Values follow simple formulas of the row number i, repeated in the Swift test.
"""
import os
import numpy as np
from astropy.table import Table, MaskedColumn

n = 1000
i = np.arange(n)
flux = (i * 1.5).astype(np.float32)
flux[i % 10 == 0] = np.nan
t = Table()
t["coord_ra"] = i * 0.36
t["coord_dec"] = -45 + i * 0.09
t["r_psfFlux"] = flux
t["r_psfFlux"].unit = "nJy"
t["objectId"] = (np.int64(1) << 40) + i
t["cell"] = (i % 400).astype(np.int32)
t["band"] = (i % 6 - 3).astype(np.int16)
t["ext"] = (i % 2).astype(np.uint8)
t["detect_isPrimary"] = i % 3 != 0
t["name"] = [f"obj{k}" for k in i]
t["shape"] = np.stack([i * 1.0, i * 2.0, i * 3.0], axis=1)
t["visits"] = MaskedColumn((i % 50).astype(np.int32), mask=(i % 7 == 0), fill_value=-999)
out = os.path.join(os.path.dirname(__file__), "..", "Tests", "TesseraStorageTests", "Fixtures", "astropy_table.fits")
t.write(out, overwrite=True)
print(f"wrote {out}: {n} rows, {len(t.columns)} columns")
