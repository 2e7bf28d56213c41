#!/usr/bin/env python3
"""The cross-match anchor: LSDB on the rows `tessera bench crossmatch` matches.

    .venv/bin/python scripts/anchor_crossmatch_lsdb.py --left L.fits --right R.fits --radius-arcsec 1

Reads both FITS tables (objectId, coord_ra, coord_dec, r_psfFlux) into pandas, partitions them
with `lsdb.from_dataframe` (the right one with a margin wider than the radius, so pairs across
partitions are found), and times `left.crossmatch(right, n_neighbors=1, radius_arcsec=R)
.compute()` on a Dask LocalCluster of 2 worker processes x 1 thread, as the catalog anchors run.
Prints one JSON line: the best of `--repeats` runs, pairs found, Mrows/s (left rows per second)
and the Dask workers' peak resident memory.
"""

import argparse
import json
import resource
import time

import numpy as np
import pandas as pd
from astropy.io import fits


def table(path):
    with fits.open(path, memmap=True) as f:
        d = f[1].data
        return pd.DataFrame({n: np.asarray(d[n]).astype(d[n].dtype.newbyteorder("=")) for n in d.columns.names})


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--left", required=True)
    ap.add_argument("--right", required=True)
    ap.add_argument("--radius-arcsec", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()

    import lsdb
    from dask.distributed import Client, LocalCluster

    left_df, right_df = table(a.left), table(a.right)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl, Client(cl) as client:
        t0 = time.perf_counter()
        left = lsdb.from_dataframe(left_df, ra_column="coord_ra", dec_column="coord_dec", margin_threshold=None)
        right = lsdb.from_dataframe(right_df, ra_column="coord_ra", dec_column="coord_dec",
                                    margin_threshold=max(5.0, 2 * a.radius_arcsec))
        partitioned = time.perf_counter() - t0
        times, pairs = [], 0
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            out = left.crossmatch(right, n_neighbors=1, radius_arcsec=a.radius_arcsec, suffixes=("_left", "_right")).compute()
            times.append(time.perf_counter() - t0)
            pairs = len(out)
        workers = client.run(peak_rss_mb)
        best = min(times)
        print(json.dumps({
            "bench": "crossmatch", "engine": "lsdb", "question": "collect", "left_rows": len(left_df), "right_rows": len(right_df),
            "radius_arcsec": a.radius_arcsec, "pairs": pairs, "seconds": best, "median_seconds": sorted(times)[len(times) // 2],
            "mrows_per_s": len(left_df) / best / 1e6, "from_dataframe_seconds": partitioned,
            "worker_peak_rss_mb": {k.rsplit(":", 1)[-1]: v for k, v in workers.items()}, "client_peak_rss_mb": peak_rss_mb(),
            "lsdb": lsdb.__version__,
        }), flush=True)


if __name__ == "__main__":
    main()
