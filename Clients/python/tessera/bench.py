"""`python -m tessera.bench` (or `tessera bench python`): the Python client measured beside the
Python tools a notebook user would otherwise use, on the same rows, in the same run. One JSON
line per result.

- collect: rows × 4 columns into a pandas DataFrame (MB/s), beside pyarrow reading the same
  columns from the anchor's Parquet files (`../shared/bench/anchor_catalog.py --only-data`).
- map_partitions: a trivial function (`len`) on every partition, beside Dask's map_partitions
  on a LocalCluster of as many single-thread processes as Tessera has workers; and the same
  call on partitions with no rows selected, whose time is all per-partition overhead.
- cancel: a KeyboardInterrupt during a map_partitions of a function that sleeps: seconds from
  the interrupt until the executors running it are gone and the scheduler runs no job.

Peak resident memory of this process and of each worker is reported with each result.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time


import tessera
from tessera.cluster import find_tessera

COLUMNS = ["objectId", "coord_ra", "coord_dec", "r_psfFlux"]


def emit(**fields):
    fields["client_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(fields), flush=True)


def timed(fn, repeats):
    fn()  # warm
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, times


def timed_fresh(run, repeats):
    """As `timed`, with a new trivial function each run (len of the partition), as a notebook
    user writing one: Dask reuses the results of a graph it has just computed when the same
    one comes again at once (15 ms instead of 0.4 s), which would measure its cache, not the work."""
    def fresh(i):
        def trivial(df, i=i):
            return len(df)
        return trivial

    run(fresh(-1))
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        out = run(fresh(i))
        times.append(time.perf_counter() - t0)
    return out, times


def ensure_dataset(client, cluster, name, fits_dir, max_rows_per_shard):
    if name in set(client.datasets().name):
        return
    files = sorted(glob.glob(os.path.join(fits_dir, "*.fits")))
    if not files:
        sys.exit(f"no FITS files in {fits_dir}: make them with ../shared/bench/anchor_catalog.py --only-data")
    subprocess.run([find_tessera(), "ingest", name, *files, "--scheduler", cluster.endpoint, "--key", cluster.key_path,
                    "--max-rows-per-shard", str(max_rows_per_shard), "--replicas", "1"], check=True, capture_output=True)


def executors_peak_mb():
    """Peak resident memory of each Python executor process on this machine (/proc VmHWM)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"tessera.executor" not in f.read():
                    continue
            with open(f"/proc/{pid}/status") as f:
                hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
            out.append(round(hwm / 1024, 1))
        except (OSError, StopIteration):
            continue
    return sorted(out)


def workers_peak_mb(client):
    return {w.name: round(w.peak_rss_bytes / 2**20, 1) for w in client.status().workers}


def bench_collect(client, collect_dir, repeats):
    import pyarrow.parquet as pq

    q = client.catalog("bench_collect").select(*COLUMNS)
    df, times = timed(lambda: q.to_pandas(max_rows=100_000_000, progress=False), repeats)
    mb = df.memory_usage(index=False, deep=False).sum() / 1e6
    med = statistics.median(times)
    emit(bench="collect", engine="tessera", rows=len(df), columns=len(COLUMNS), mb=round(mb, 1),
         median_s=round(med, 4), best_s=round(min(times), 4), mb_per_s=round(mb / med, 1),
         dtypes={c: str(t) for c, t in df.dtypes.items()}, workers_peak_rss_mb=workers_peak_mb(client))
    files = sorted(glob.glob(os.path.join(collect_dir, "parquet", "*.parquet")))
    table_df, times = timed(lambda: pq.read_table(files, columns=COLUMNS).to_pandas(), repeats)
    mb = table_df.memory_usage(index=False, deep=False).sum() / 1e6
    med = statistics.median(times)
    emit(bench="collect", engine="pyarrow", rows=len(table_df), columns=len(COLUMNS), mb=round(mb, 1),
         median_s=round(med, 4), best_s=round(min(times), 4), mb_per_s=round(mb / med, 1),
         dtypes={c: str(t) for c, t in table_df.dtypes.items()})
    assert len(df) == len(table_df), "both read every row"


def bench_map(client, anchor_dir, repeats, workers, skip_dask):
    obj = client.catalog("bench_map")
    shards = int(client.datasets().set_index("name").loc["bench_map", "shards"])
    lengths, times = timed_fresh(lambda fn: obj.map_partitions(fn, columns=["coord_ra"], progress=False), repeats)
    med = statistics.median(times)
    emit(bench="map_partitions", engine="tessera", rows=int(sum(lengths)), partitions=len(lengths), median_s=round(med, 4),
         best_s=round(min(times), 4), mrows_per_s=round(sum(lengths) / med / 1e6, 1), ms_per_partition=round(1000 * med / len(lengths), 2),
         workers_peak_rss_mb=workers_peak_mb(client), executors_peak_rss_mb=executors_peak_mb())
    empty = obj.where("coord_ra < -1000")
    _, times = timed_fresh(lambda fn: empty.map_partitions(fn, columns=["coord_ra"], progress=False), repeats)
    med = statistics.median(times)
    threads = sum(w.threads for w in client.status().workers)
    emit(bench="map_partitions_overhead", engine="tessera", partitions=shards, median_s=round(med, 4),
         wall_ms_per_partition=round(1000 * med / shards, 2),
         busy_ms_per_partition=round(1000 * med * threads / shards, 2), threads=threads)
    if skip_dask:
        return
    import dask.dataframe as dd
    from dask.distributed import Client as DaskClient, LocalCluster as DaskLocalCluster

    with DaskLocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as dc, DaskClient(dc):
        ddf = dd.read_parquet(os.path.join(anchor_dir, "parquet", "*.parquet"), columns=["coord_ra"])
        lengths, times = timed_fresh(lambda fn: ddf.map_partitions(fn).compute(), repeats)
        med = statistics.median(times)
        emit(bench="map_partitions", engine="dask", rows=int(sum(lengths)), partitions=len(lengths), median_s=round(med, 4),
             best_s=round(min(times), 4), mrows_per_s=round(sum(lengths) / med / 1e6, 1),
             ms_per_partition=round(1000 * med / len(lengths), 2))


def bench_cancel(client, trials):
    seconds = []
    main = threading.main_thread().ident
    for _ in range(trials):
        marks = tempfile.mkdtemp()

        def slow(df, marks=marks):
            open(os.path.join(marks, str(os.getpid())), "w").close()
            time.sleep(300)

        def interrupt():
            while len(os.listdir(marks)) < 2:
                time.sleep(0.01)
            signal.pthread_kill(main, signal.SIGINT)

        threading.Thread(target=interrupt, daemon=True).start()
        try:
            client.catalog("bench_map").map_partitions(slow, columns=["coord_ra"], progress=False, timeout=600)
        except KeyboardInterrupt:
            pass
        t0 = time.perf_counter()
        pids = [int(p) for p in os.listdir(marks)]

        def alive(pid):
            try:
                os.kill(pid, 0)
                return True
            except ProcessLookupError:
                return False

        while any(alive(p) for p in pids) or any(j.state == 0 for j in client.status().jobs):
            time.sleep(0.005)
        seconds.append(time.perf_counter() - t0)
    emit(bench="cancel_on_ctrl_c", trials=trials, median_s=round(statistics.median(seconds), 3), max_s=round(max(seconds), 3))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--anchor", default="/tmp/tessera-anchor", help="anchor_catalog.py's --out for map_partitions (20M rows)")
    ap.add_argument("--collect", default="/tmp/anchor2m", help="anchor_catalog.py's --out for collect (2M rows)")
    ap.add_argument("--data", default=None, help="the local cluster's data folder (default: ANCHOR/tessera-python-bench)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="executor threads per worker")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cancel-trials", type=int, default=5)
    ap.add_argument("--skip-dask", action="store_true")
    ap.add_argument("--only", choices=["collect", "map", "cancel"], action="append")
    args = ap.parse_args(argv)
    only = set(args.only or ["collect", "map", "cancel"])
    data = args.data or os.path.join(args.anchor, "tessera-python-bench")
    with tessera.LocalCluster(workers=args.workers, threads=args.threads, data=data) as cluster, \
            tessera.Client(cluster, progress=False) as client:
        if "collect" in only:
            ensure_dataset(client, cluster, "bench_collect", os.path.join(args.collect, "fits"), 1_000_000)
            bench_collect(client, args.collect, args.repeats)
        if "map" in only or "cancel" in only:
            ensure_dataset(client, cluster, "bench_map", os.path.join(args.anchor, "fits"), 1_000_000)
        if "map" in only:
            bench_map(client, args.anchor, args.repeats, args.workers, args.skip_dask)
        if "cancel" in only:
            bench_cancel(client, args.cancel_trials)


if __name__ == "__main__":
    main()
