"""Writes the VOTables the gateway's upload reader is tested on (Tests/TesseraGatewayTests/Fixtures),
with astropy: one table in TABLEDATA, BINARY and BINARY2, and the values it holds as JSON (the
test's reference, written from the same astropy Table, not by Tessera).

    .venv/bin/python scripts/make_votable_fixtures.py
"""
import json
import os

import numpy as np
from astropy.io.votable import from_table
from astropy.table import MaskedColumn, Table

out = os.path.join(os.path.dirname(__file__), "..", "Tests", "TesseraGatewayTests", "Fixtures")
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(3)
n = 37
t = Table()
t["id"] = np.arange(n, dtype=np.int64) * 1_000_000_007
t["ra"] = rng.uniform(0, 360, n)
t["dec"] = rng.uniform(-90, 90, n)
t["mag"] = MaskedColumn(rng.uniform(15, 25, n).astype(np.float32), mask=np.arange(n) % 7 == 3)
t["flag"] = MaskedColumn(rng.integers(-500, 500, n).astype(np.int16), mask=np.arange(n) % 5 == 1)
t["good"] = rng.random(n) < 0.5
t["band"] = rng.integers(0, 255, n).astype(np.uint8)
t["name"] = [f"src {i} é" if i % 9 else "" for i in range(n)]
t["ra"].unit = "deg"
t["mag"].unit = "mag"
for fmt in ("tabledata", "binary", "binary2"):
    doc = from_table(t)
    if fmt == "binary":
        for field in doc.get_first_table().fields:
            if field.datatype == "short":
                field.values.null = -32768
    doc.to_xml(os.path.join(out, f"upload_{fmt}.xml"), tabledata_format=fmt)
expected = {
    "id": [int(v) for v in t["id"]],
    "ra": [float(v) for v in t["ra"]],
    "dec": [float(v) for v in t["dec"]],
    "mag": [None if m else float(v) for v, m in zip(t["mag"].data, t["mag"].mask)],
    "flag": [None if m else int(v) for v, m in zip(t["flag"].data, t["flag"].mask)],
    "good": [bool(v) for v in t["good"]],
    "band": [int(v) for v in t["band"]],
    # An empty text is NULL (DALI), in every serialization.
    "name": [str(v) or None for v in t["name"]],
}
with open(os.path.join(out, "upload_expected.json"), "w") as f:
    json.dump(expected, f, indent=0)
print("wrote", out)
