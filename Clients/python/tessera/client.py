"""The notebook interface: a `Client`, its catalogs, and questions built on them.

A `Query` is an immutable description (dataset, region, filter); each terminal call —
`count`, `agg`, `histogram`, `to_pandas`, `map_partitions`, ... — turns it into one
`CatalogQueryPlan`, which the scheduler expands into a task per shard on the workers that hold
the shard, and waits for the answer. Every terminal call shows a progress bar of shards done
once it has run for half a second (`progress=False` turns that off), and a KeyboardInterrupt
cancels the job on the cluster before it propagates.
"""
from __future__ import annotations

import math
import pickle
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import numpy as np
import pandas as pd

from . import _wire
from ._connection import Connection, find_credentials, find_endpoint
from ._memory import tune_allocator
from .errors import JobCancelled, JobFailed, PythonFunctionError, QueryError, TesseraError, from_reply
from .v1 import catalog_pb2, storage_pb2, tessera_pb2

#: Seconds without news of a job before the client gives up on it.
IDLE_TIMEOUT_SECONDS = 300.0
#: How often progressive snapshots come while a progress bar is shown.
PROGRESS_INTERVAL_SECONDS = 0.25
#: A collect may return at most this many rows unless `max_rows` says otherwise (as the engine).
DEFAULT_MAX_ROWS = 1_000_000

_AGGREGATES = {
    "count": catalog_pb2.AGG_COUNT, "sum": catalog_pb2.AGG_SUM, "mean": catalog_pb2.AGG_MEAN,
    "min": catalog_pb2.AGG_MIN, "max": catalog_pb2.AGG_MAX, "var": catalog_pb2.AGG_VAR,
    "std": catalog_pb2.AGG_STD, "median": catalog_pb2.AGG_QUANTILE, "quantile": catalog_pb2.AGG_QUANTILE,
}
_CALL = re.compile(r"^\s*([A-Za-z_]\w*)\s*\((.*)\)\s*$", re.S)
_COLUMN_TYPES = {v: k.removeprefix("COLUMN_").lower() for k, v in storage_pb2.ColumnType.items()}


def _aggregate(text: str) -> catalog_pb2.AggregateSpec:
    """`count`, `count(*)`, `count(EXPR)`, `sum|mean|min|max|var|std|median(EXPR)`, `quantile(Q, EXPR)`."""
    spec = catalog_pb2.AggregateSpec()
    t = text.strip()
    if t in ("count", "count()", "count(*)"):
        spec.function = catalog_pb2.AGG_COUNT
        return spec
    m = _CALL.match(t)
    if not m or m.group(1) not in _AGGREGATES:
        raise QueryError(
            f"unknown aggregate `{text}`: use count, count(EXPR), sum(EXPR), mean(EXPR), min(EXPR), max(EXPR), "
            "var(EXPR), std(EXPR), median(EXPR) or quantile(Q, EXPR)")
    func, arg = m.group(1), m.group(2).strip()
    spec.function = _AGGREGATES[func]
    if func == "median":
        spec.quantile = 0.5
    elif func == "quantile":
        q, _, expr = arg.partition(",")
        try:
            spec.quantile = float(q)
        except ValueError:
            raise QueryError(f"`{text}`: quantile takes the quantile first, e.g. quantile(0.9, mag(r_psfFlux))") from None
        if not 0 <= spec.quantile <= 1:
            raise QueryError(f"`{text}`: the quantile {spec.quantile} is outside [0, 1]")
        arg = expr.strip()
    if not arg:
        raise QueryError(f"`{text}` needs an expression inside the parentheses")
    spec.expression = arg
    return spec


def _quantile(sketch: catalog_pb2.QuantileSketch, q: float) -> float:
    """DDSketch quantile, exactly as the engine's `QuantileSketch.quantile`."""
    rel = 0.005
    gamma = (1 + rel) / (1 - rel)

    def value(i: int) -> float:
        return 2 * gamma ** i / (gamma + 1)

    n = sum(sketch.positive) + sum(sketch.negative) + sketch.zeros
    if n == 0 or not 0 <= q <= 1:
        return math.nan
    rank = math.floor(q * (n - 1))
    seen = 0
    for k in range(len(sketch.negative) - 1, -1, -1):
        seen += sketch.negative[k]
        if seen > rank:
            return -value(sketch.negative_offset + k)
    seen += sketch.zeros
    if seen > rank:
        return 0.0
    for k, c in enumerate(sketch.positive):
        seen += c
        if seen > rank:
            return value(sketch.positive_offset + k)
    return value(sketch.positive_offset + len(sketch.positive) - 1)


@dataclass(frozen=True)
class Partial:
    """One progressive answer of `Query.stream`: the value so far and how much it covers."""
    value: Any
    shards_done: int
    shards_total: int
    final: bool

    @property
    def fraction(self) -> float:
        return 1.0 if self.shards_total == 0 else min(1.0, self.shards_done / self.shards_total)


# The wire's PriorityClass values by name.
_PRIORITIES = {"interactive": tessera_pb2.PRIORITY_INTERACTIVE, "normal": tessera_pb2.PRIORITY_NORMAL,
               "batch": tessera_pb2.PRIORITY_BATCH}


class Client:
    """A connection to a Tessera cluster.

    `Client()` finds the scheduler and key as the `tessera` command does: the address given,
    else `$TESSERA_SCHEDULER`, else `tcp://127.0.0.1:7700`; the key given, else `$TESSERA_KEY`,
    else `./tessera-data/keys/user-local.key` (made by `tessera local`). `Client(cluster)` takes
    both from a `LocalCluster`. Use it as a context manager, or call `close()`.
    """

    def __init__(self, address=None, *, key: Optional[str] = None, timeout: float = 5.0, progress: bool = True,
                 direct_results: bool = True, same_host_results: bool = True, priority: str = "normal",
                 on_behalf_of: str = ""):
        credentials = ...
        if hasattr(address, "endpoint") and hasattr(address, "key_path"):
            if getattr(address, "insecure", False) and key is None:
                credentials = None  # a cluster without keys: none, whatever the environment says
            key = key or address.key_path
            address = address.endpoint
        self.endpoint = find_endpoint(address)
        self.progress = progress
        # Megabyte batches arrive on every call: their buffers are kept for the next (see _memory).
        tune_allocator()
        # Rows and Python values are taken straight from the workers (their peer endpoints must
        # be reachable from here); False sends them through the scheduler instead.
        self.direct_results = direct_results
        # The class of this client's jobs: "interactive" (first, within the cluster's interactive
        # budget), "normal", or "batch" (runs in what the others leave). `on_behalf_of` names the
        # user jobs run for: admin keys only (a gateway), or a cluster without keys (a tag).
        if priority not in _PRIORITIES:
            raise ValueError(f"priority must be one of {', '.join(_PRIORITIES)}, not {priority!r}")
        self.priority = priority
        self.on_behalf_of = on_behalf_of
        self._conn = Connection(self.endpoint, find_credentials(key) if credentials is ... else credentials, timeout)
        # A worker on this host running as this user hands results over its own ipc:// socket
        # (no encryption to pay); False takes them over CURVE like a remote client.
        self._conn.same_host_results = same_host_results

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self._conn.close()

    def __repr__(self) -> str:
        return f"tessera.Client({self.endpoint!r})"

    @property
    def user(self) -> str:
        """The user this client's key names ("local" without one)."""
        return self._conn.credentials.name if self._conn.credentials else "local"

    def status(self) -> tessera_pb2.StatusReply:
        """The scheduler's view of workers, jobs and datasets (the `tessera status` message)."""
        return self._conn.status()

    def workers(self) -> pd.DataFrame:
        rows = [dict(name=w.name, endpoint=w.peer_endpoint, threads=w.threads, in_flight=w.in_flight,
                     tasks_done=w.tasks_done, rss_bytes=w.rss_bytes, stored_bytes=w.stored_bytes)
                for w in self.status().workers]
        return pd.DataFrame(rows, columns=["name", "endpoint", "threads", "in_flight", "tasks_done", "rss_bytes", "stored_bytes"])

    def datasets(self) -> pd.DataFrame:
        """One row per dataset you may read: name, kind, rows, shards, bytes, columns (their
        names); for a user's table its owner, whether shared, and the hours until it is removed."""
        rows = [dict(name=d.name, kind=d.kind, rows=d.rows, shards=d.shards, bytes=d.bytes,
                     columns=[c.name for c in d.columns], owner=d.owner, shared=d.shared,
                     expires_in_hours=d.expires_in_s / 3600 if d.owner else None) for d in self.status().datasets]
        return pd.DataFrame(rows, columns=["name", "kind", "rows", "shards", "bytes", "columns", "owner", "shared", "expires_in_hours"])

    def upload(self, table, name: str, *, ra: str = "ra", dec: str = "dec", lifetime_hours: float = 24.0,
               shared: bool = False, replace: bool = False, max_rows_per_shard: int = 1_000_000) -> "Catalog":
        """Stores a table of yours (a pandas DataFrame or an astropy Table of numbers and
        booleans, positions in degrees) in your workspace on the cluster, and returns it as a
        catalog: `client.upload(df, "xray").crossmatch("object", 1)`. It is yours alone unless
        `shared` (others then read it as ``USER..NAME``), is removed after `lifetime_hours`, and
        counts against your workspace's quota; its name may not be a survey dataset's. It has no
        margin: cross-match it as the left side."""
        from . import _upload
        if not (lifetime_hours > 0):
            raise QueryError("lifetime_hours must be positive")
        _upload.upload(self._conn, table, name, ra, dec, lifetime_s=float(lifetime_hours) * 3600, shared=shared,
                       replace=replace, max_rows_per_shard=int(max_rows_per_shard))
        return self.catalog(name)

    def catalog(self, name: str) -> "Catalog":
        """A catalog by name; nothing runs until a question is asked of it."""
        return Catalog(self, name)

    # -- running plans ---------------------------------------------------------------------------

    def _values(self, plan: catalog_pb2.CatalogQueryPlan, *, progress: Optional[bool] = None,
                name: str = "", task_timeout: float = 0.0, direct: bool = False) -> Iterator:
        """Submits `plan` and yields (task, value bytes, is_snapshot, accepted) for each value
        until the job is done; raises if it fails. Stopping early, or Ctrl-C while waiting,
        cancels the job on the cluster.

        With `direct` (for per-shard outputs: rows, Python values), the values stay on the
        workers and the I/O thread takes each straight from its worker, one hop instead of two."""
        show = self.progress if progress is None else progress
        direct = direct and self.direct_results
        if self.priority not in _PRIORITIES:
            raise ValueError(f"priority must be one of {', '.join(_PRIORITIES)}, not {self.priority!r}")
        accepted = self._conn.submit(plan, name=name or f"python {plan.dataset}", task_timeout=task_timeout, direct=direct,
                                     priority=_PRIORITIES[self.priority], on_behalf_of=self.on_behalf_of)
        job = accepted.job_id
        total = accepted.data_tasks or accepted.output_count
        bar = None
        if show:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, unit="shard", delay=0.5, desc=plan.dataset, leave=False)
        finished = False
        done_ok = False
        outputs = 0
        untaken = 0  # direct results announced and not yet received
        try:
            while not (done_ok and untaken == 0):
                event = self._conn.next_event(job, IDLE_TIMEOUT_SECONDS)
                if event is None:
                    what = f"{untaken} results of job {job} from its workers" if done_ok else f"news of job {job}"
                    raise TesseraError(f"no {what} for {IDLE_TIMEOUT_SECONDS:g} s")
                env, parts = event
                body = env.WhichOneof("body")
                if body == "error":
                    finished = True
                    raise from_reply(tessera_pb2.ErrorCode.Name(env.error.code), env.error.message)
                if body in ("job_results", "fetch_reply"):
                    _, frames = _wire.decode(parts)
                    message = getattr(env, body)
                    if body == "job_results":
                        untaken += len(message.locations)
                    else:
                        untaken -= len(message.values) + len(message.missing)
                        if message.missing:
                            finished = done_ok
                            raise JobFailed(f"{len(message.missing)} results of job {job} were lost with the worker that held them "
                                            "(it restarted or left before they were taken): ask again", "DATA_LOST")
                    done = None
                    for task, view, snapshot in _wire.values(message.values, frames):
                        if snapshot:
                            done = _wire.read_counters(view)[0]
                        else:
                            outputs += 1
                            done = outputs if outputs < total else None
                        yield task, view, snapshot, accepted
                    if bar is not None and done is not None and done > bar.n:
                        bar.update(min(done, total) - bar.n)
                    continue
                finished = True
                f = env.job_finished
                if f.state == tessera_pb2.JOB_DONE:
                    done_ok = True  # direct results may still be on their way
                    continue
                if f.state == tessera_pb2.JOB_CANCELLED:
                    raise JobCancelled(f"job {job} was cancelled: {f.error}" if f.error else f"job {job} was cancelled")
                if "Python function" in f.error or "Python executor" in f.error:
                    raise PythonFunctionError(f.error, "JOB_FAILED")
                raise JobFailed(f.error, "JOB_FAILED")
            if bar is not None and bar.n < total:
                bar.update(total - bar.n)
        finally:
            if not finished:
                # Ctrl-C, an exception in the consumer, or a loop that stopped early.
                try:
                    self._conn.cancel(job)
                except TesseraError:
                    pass
            if bar is not None:
                bar.close()
            self._conn.forget(job)


class _RowSink:
    """A collect's columns, allocated once for the most rows the shards can return, each
    shard's batch copied to its place as it arrives. Pages never written cost nothing."""

    def __init__(self, bounds, first_columns):
        self.offsets = np.concatenate(([0], np.cumsum(np.asarray(bounds, dtype=np.int64))))
        total = int(self.offsets[-1])
        self.columns_ = [np.empty(total, dtype=c.dtype) for c in first_columns]
        self.filled = {}  # task -> rows placed

    #: With a filter, a region or a sample the bounds may be far above the answer: room is
    #: made for at most this many rows then (or the row cap, if lower).
    LOOSE_BOUND_ROWS = 16_000_000

    @classmethod
    def for_collect(cls, bounds, first_columns, plan):
        """A sink for a collect whose shards return at most `bounds` rows each, or None when
        the bounds are missing or too loose to allocate."""
        total = sum(bounds)
        if total == 0:
            return None
        exact = not (plan.filter or plan.WhichOneof("region") or plan.rows.sample_fraction > 0)
        if not exact and total > min(plan.rows.max_rows or DEFAULT_MAX_ROWS, cls.LOOSE_BOUND_ROWS):
            return None
        return cls(bounds, first_columns)

    def put(self, task, cols) -> bool:
        """Copies a batch into place; False when it does not fit (nothing is placed then)."""
        n = len(cols[0])
        if task < 0 or task + 1 >= len(self.offsets) or task in self.filled or len(cols) != len(self.columns_):
            return False
        start = int(self.offsets[task])
        if n > int(self.offsets[task + 1]) - start or any(c.dtype != d.dtype for c, d in zip(cols, self.columns_)):
            return False
        for c, d in zip(cols, self.columns_):
            d[start:start + n] = c
        self.filled[task] = n
        return True

    def batches(self):
        """What was placed, as (task, columns) batches of views."""
        out = []
        for task, n in self.filled.items():
            start = int(self.offsets[task])
            out.append((task, [d[start:start + n] for d in self.columns_]))
        return out

    def columns(self):
        """The rows in shard order: views when every shard filled its place, else moved down
        over the gaps (rows a filter or region left out)."""
        at = 0
        for task in sorted(self.filled):
            n, start = self.filled[task], int(self.offsets[task])
            if start != at:
                for d in self.columns_:
                    d[at:at + n] = d[start:start + n]  # numpy copies overlapping ranges safely
            at += n
        return [d[:at] for d in self.columns_]


@dataclass(frozen=True)
class Query:
    """A question of one catalog: region and filter so far. Each method returns a new Query."""

    client: Client
    dataset: str
    region: tuple = ()
    filter: str = ""
    selection: tuple = ()     # (expression, output name) pairs; empty = every column
    fan_in: int = 0
    match: tuple = ()         # a cross-match: (right dataset, radius in arcsec, kind, k)

    # -- narrowing -------------------------------------------------------------------------------

    def _with(self, **changes) -> "Query":
        fields = dict(client=self.client, dataset=self.dataset, region=self.region, filter=self.filter,
                      selection=self.selection, fan_in=self.fan_in, match=self.match)
        fields.update(changes)
        return Query(**fields)

    def cone(self, ra: float, dec: float, radius: float) -> "Query":
        """Rows within `radius` degrees of (ra, dec) (degrees, ICRS)."""
        return self._with(region=("cone", float(ra), float(dec), float(radius)))

    def box(self, ra_min: float, ra_max: float, dec_min: float, dec_max: float) -> "Query":
        """Rows in an RA/Dec box (degrees); ra_min > ra_max wraps through RA 0."""
        return self._with(region=("box", float(ra_min), float(ra_max), float(dec_min), float(dec_max)))

    def polygon(self, vertices) -> "Query":
        """Rows inside a convex polygon of (ra, dec) vertices, counter-clockwise seen from inside."""
        v = [(float(a), float(b)) for a, b in vertices]
        return self._with(region=("polygon", tuple(v)))

    def where(self, condition: str) -> "Query":
        """Keeps rows meeting an expression (`and`, `or`, `not`, comparisons, `mag()`, ...)."""
        f = condition if not self.filter else f"({self.filter}) and ({condition})"
        return self._with(filter=f)

    def select(self, *columns: str, **expressions: str) -> "Query":
        """Which columns (or expressions, named by keyword) rows come back with."""
        sel = tuple((c, c) for c in columns) + tuple((e, n) for n, e in expressions.items())
        return self._with(selection=sel)

    def crossmatch(self, right, radius_arcsec: float, kind: str = "nearest", k: int = 1) -> "Query":
        """Pairs this question's rows with `right`'s (a catalog or its name) within
        `radius_arcsec`: each row's nearest `k` right rows (``kind="nearest"``), or every right row
        (``kind="all"``), as astropy's ``match_to_catalog_sky`` and ``search_around_sky`` pair
        them. The question's rows are then the pairs, with columns ``left_NAME``, ``right_NAME``
        and ``sep_arcsec``: ``where``, ``select`` and every result read those, and a region set
        before or after selects left rows. The radius is at most the right catalog's margin."""
        if kind not in ("nearest", "all"):
            raise QueryError(f"a cross-match's kind is `nearest` or `all`, not `{kind}`")
        name = right.dataset if isinstance(right, Query) else str(right)
        return self._with(match=(name, float(radius_arcsec), kind, int(k)))

    def group_by(self, key: str, max_groups: int = 0) -> "GroupBy":
        """Groups rows by a numeric key expression (NaN keys dropped, as pandas does)."""
        return GroupBy(self, key, max_groups)

    # -- plans -----------------------------------------------------------------------------------

    def _plan(self) -> catalog_pb2.CatalogQueryPlan:
        p = catalog_pb2.CatalogQueryPlan(dataset=self.dataset, filter=self.filter, fan_in=self.fan_in)
        if self.match:
            right, radius, kind, k = self.match
            p.crossmatch.right = right
            p.crossmatch.radius_arcsec = radius
            if kind == "all":
                p.crossmatch.kind = catalog_pb2.CROSSMATCH_ALL
            else:
                p.crossmatch.kind = catalog_pb2.CROSSMATCH_NEAREST
                p.crossmatch.k = max(1, k)
        if self.region:
            kind = self.region[0]
            if kind == "cone":
                p.cone.ra, p.cone.dec, p.cone.radius = self.region[1:]
            elif kind == "box":
                p.box.ra_min, p.box.ra_max, p.box.dec_min, p.box.dec_max = self.region[1:]
            else:
                p.polygon.ra.extend(a for a, _ in self.region[1])
                p.polygon.dec.extend(b for _, b in self.region[1])
        return p

    def _rows_plan(self, limit: int = 0, max_rows: int = 0) -> catalog_pb2.CatalogQueryPlan:
        p = self._plan()
        p.rows.select.extend(e for e, _ in self.selection)
        p.rows.limit = limit
        p.rows.max_rows = max_rows
        p.rows.SetInParent()
        return p

    def _answers(self, plan, progress, stream=False) -> Iterator:
        """Runs a plan whose answer is one merged partial. Yields (partial, shards done, shards
        total, final): with `stream`, each progressive snapshot, then the final answer; else only
        the final answer."""
        show = self.client.progress if progress is None else progress
        if (stream or show) and not plan.HasField("python"):
            plan.progressive = True
            plan.progress_interval = PROGRESS_INTERVAL_SECONDS
        for task, view, snapshot, accepted in self.client._values(plan, progress=False if stream else progress):
            if snapshot and not stream:
                continue
            p = _wire.parse_partial(view)
            total = accepted.data_tasks
            yield p, (p.shards if snapshot else total), total, not snapshot

    def _answer(self, plan, progress):
        final = [p for p, _, _, is_final in self._answers(plan, progress) if is_final]
        return final[-1] if final else catalog_pb2.CatalogPartial()

    # -- answers ---------------------------------------------------------------------------------

    def count(self, *, progress: Optional[bool] = None) -> int:
        """Rows in the region passing the filter."""
        p = self._plan()
        p.aggregates.add().function = catalog_pb2.AGG_COUNT
        partial = self._answer(p, progress)
        return int(partial.group_rows[0]) if partial.group_rows else 0

    def agg(self, *, progress: Optional[bool] = None, **aggregates: str) -> pd.DataFrame:
        """Aggregates as a one-row DataFrame: `agg(n="count", m="mean(mag(r_psfFlux))")`."""
        if not aggregates:
            raise QueryError("agg needs at least one aggregate, e.g. agg(n='count')")
        p = self._plan()
        specs = [_aggregate(a) for a in aggregates.values()]
        p.aggregates.extend(specs)
        partial = self._answer(p, progress)
        return _aggregate_frame(partial, specs, list(aggregates), None)

    def histogram(self, x: str, bins: int = 10, range=None, *, progress: Optional[bool] = None):
        """(counts, edges) as `numpy.histogram(values, bins, range)` gives them (NaN dropped)."""
        p = self._histogram_plan(x, bins, range)
        partial = self._answer(p, progress)
        return _histogram1d(partial, p.histogram)

    def histogram2d(self, x: str, y: str, bins=(10, 10), range=None, *, progress: Optional[bool] = None):
        """(counts, xedges, yedges) as `numpy.histogram2d(x, y, bins, range)` gives them."""
        p = self._histogram2d_plan(x, y, bins, range)
        partial = self._answer(p, progress)
        return _histogram2d(partial, p.histogram)

    def sky_map(self, order: int = 6, mean: Optional[str] = None, *, progress: Optional[bool] = None) -> np.ndarray:
        """Rows per HEALPix pixel of `order` (NESTED, 12·4^order pixels, as healpy reads it); with
        `mean`, the mean of that expression per pixel instead (NaN where empty)."""
        p = self._sky_map_plan(order, mean)
        partial = self._answer(p, progress)
        return _sky_map(partial, p.sky_map)

    def stream(self, kind: str = "count", *args, **kwargs) -> Iterator[Partial]:
        """Progressive answers: `stream()` counts, `stream("histogram", x, bins=, range=)`,
        `stream("agg", n="count")`, `stream("sky_map", order=6)`, `stream("histogram2d", ...)`;
        on a `select`, each shard's rows as a DataFrame; `stream("map_partitions", fn, columns=[...])`,
        each shard's value of `fn` as it comes. Each is a `Partial` with the value over
        the shards done so far; the last is final. Ending the loop early cancels the job."""
        if kind == "rows" or (kind == "count" and self.selection and not args and not kwargs):
            yield from self._stream_rows()
            return
        if kind == "map_partitions":
            yield from self._stream_python(*args, **kwargs)
            return
        if kind == "count":
            p = self._plan()
            p.aggregates.add().function = catalog_pb2.AGG_COUNT
            convert = lambda part: int(part.group_rows[0]) if part.group_rows else 0  # noqa: E731
        elif kind == "agg":
            specs = [_aggregate(a) for a in kwargs.values()]
            p = self._plan()
            p.aggregates.extend(specs)
            names = list(kwargs)
            convert = lambda part: _aggregate_frame(part, specs, names, None)  # noqa: E731
        elif kind == "histogram":
            p = self._histogram_plan(*args, **kwargs)
            convert = lambda part: _histogram1d(part, p.histogram)  # noqa: E731
        elif kind == "histogram2d":
            p = self._histogram2d_plan(*args, **kwargs)
            convert = lambda part: _histogram2d(part, p.histogram)  # noqa: E731
        elif kind == "sky_map":
            p = self._sky_map_plan(*args, **kwargs)
            convert = lambda part: _sky_map(part, p.sky_map)  # noqa: E731
        else:
            raise QueryError(f"stream() of `{kind}`: use count, agg, histogram, histogram2d, sky_map or rows")
        for part, done, total, final in self._answers(p, False, stream=True):
            yield Partial(convert(part), done, total, final)

    def _histogram_plan(self, x, bins=10, range=None):
        if range is None:
            raise QueryError("histogram needs a range=(min, max): the engine bins while it scans")
        p = self._plan()
        p.histogram.x, p.histogram.x_bins = x, int(bins)
        p.histogram.x_min, p.histogram.x_max = map(float, range)
        return p

    def _histogram2d_plan(self, x, y, bins=(10, 10), range=None):
        if range is None:
            raise QueryError("histogram2d needs range=((xmin, xmax), (ymin, ymax)): the engine bins while it scans")
        xb, yb = (bins, bins) if np.isscalar(bins) else bins
        p = self._plan()
        h = p.histogram
        h.x, h.x_bins, h.y, h.y_bins = x, int(xb), y, int(yb)
        (h.x_min, h.x_max), (h.y_min, h.y_max) = [tuple(map(float, r)) for r in range]
        return p

    def _sky_map_plan(self, order=6, mean=None):
        p = self._plan()
        p.sky_map.order = int(order)
        p.sky_map.expression = mean or ""
        return p

    # -- rows ------------------------------------------------------------------------------------

    def to_pandas(self, *, max_rows: int = 0, progress: Optional[bool] = None) -> pd.DataFrame:
        """Every matching row (the selected columns) as a DataFrame. More than `max_rows`
        (default 1,000,000) is an error that says so, rather than a surprise download."""
        return self._collect(self._rows_plan(max_rows=max_rows), progress)

    def _collect(self, plan, progress) -> pd.DataFrame:
        """Each shard's rows arrive as a batch of their own: numpy views of the received
        frames. When the scheduler says how many rows each shard can return at most, and
        together they fit under the row cap, each batch is copied into place as it arrives
        (while later shards are still being read); otherwise the batches are concatenated
        once at the end. Either way the rows come in shard order."""
        names, batches = None, []
        sink = None
        for task, view, _, accepted in self.client._values(plan, progress=progress, direct=True):
            _, _, _, n, cols = _wire.read_rows(view)
            if not cols:
                continue
            names = n
            if sink is None and not batches:
                sink = _RowSink.for_collect(accepted.data_task_rows, cols, plan)
            if sink is not None and sink.put(task, cols):
                continue
            if sink is not None:
                # More rows than the shard was said to hold: place nothing more, concatenate.
                batches.extend(sink.batches())
                sink = None
            batches.append((task, cols))
        if sink is not None:
            return self._frame(names, [sink.columns()])
        batches.sort(key=lambda b: b[0])
        return self._frame(names, [c for _, c in batches])

    def _frame(self, names, batches) -> pd.DataFrame:
        labels = [n for _, n in self.selection] if self.selection else names
        if not batches:
            return pd.DataFrame({n: np.empty(0) for n in (labels or [])})
        if len(batches) == 1:
            cols = batches[0]
        else:
            cols = [np.concatenate([b[k] for b in batches]) for k in range(len(batches[0]))]
        return pd.DataFrame(dict(zip(labels, cols)), copy=False)

    def store(self, name: str, *, ra: Optional[str] = None, dec: Optional[str] = None, lifetime_hours: float = 24.0,
              shared: bool = False, replace: bool = False, max_rows: int = 0, progress: Optional[bool] = None) -> "Catalog":
        """Keeps this question's rows (the selected columns) as a table in your workspace, to
        ask further questions of: `client.catalog("xray").crossmatch("object", 1).store("xray_matched")`.
        The rows come to this client and go back as an upload (`Client.upload`). Positions are
        `ra`/`dec`, by default the dataset's own position columns (`left_` ones for a cross-match)."""
        if ra is None or dec is None:
            d = next((d for d in self.client.status().datasets if d.name == self.dataset), None)
            if d is None:
                raise QueryError(f"no dataset named `{self.dataset}`")
            prefix = "left_" if self.match else ""
            ra = ra or prefix + d.ra_column
            dec = dec or prefix + d.dec_column
        df = self.to_pandas(max_rows=max_rows, progress=progress)
        return self.client.upload(df, name, ra=ra, dec=dec, lifetime_hours=lifetime_hours, shared=shared, replace=replace)

    def to_astropy(self, *, max_rows: int = 0, progress: Optional[bool] = None):
        """As `to_pandas`, as an astropy Table with each stored column's unit and description."""
        from astropy.table import Table

        df = self.to_pandas(max_rows=max_rows, progress=progress)
        t = Table.from_pandas(df)
        schema = {c.name: c for c in self.client._schema(self.dataset)}
        for label, (expr, _) in zip(df.columns, self.selection or [(c, c) for c in df.columns]):
            c = schema.get(expr)
            if c is not None:
                if c.unit:
                    try:
                        t[label].unit = c.unit
                    except ValueError:
                        t[label].meta["unit"] = c.unit
                t[label].description = c.description
        return t

    def _limited(self, plan, progress) -> pd.DataFrame:
        partial = self._answer(plan, progress)
        buf = memoryview(partial.SerializeToString())
        _, _, _, names, cols = _wire.read_rows(buf)
        return self._frame(names, [cols] if cols else [])

    def head(self, n: int = 5, *, progress: Optional[bool] = None) -> pd.DataFrame:
        """The first `n` rows in spatial-index order."""
        return self._limited(self._rows_plan(limit=int(n)), progress)

    def top(self, n: int, by: str, descending: bool = False, *, progress: Optional[bool] = None) -> pd.DataFrame:
        """The `n` rows with the smallest (or, descending, largest) `by` expression."""
        p = self._rows_plan(limit=int(n))
        p.rows.sort_by = by
        p.rows.descending = descending
        return self._limited(p, progress)

    def sample(self, fraction: float, seed: int = 0, *, max_rows: int = 0, progress: Optional[bool] = None) -> pd.DataFrame:
        """A seeded Bernoulli sample of the rows: the same rows whatever the sharding."""
        p = self._rows_plan(max_rows=max_rows)
        p.rows.sample_fraction = float(fraction)
        p.rows.sample_seed = int(seed)
        return self._collect(p, progress)

    def _stream_rows(self) -> Iterator[Partial]:
        done = 0
        for _, view, _, accepted in self.client._values(self._rows_plan(), progress=False, direct=True):
            _, _, _, names, cols = _wire.read_rows(view)
            done += 1
            yield Partial(self._frame(names, [cols] if cols else []), done, accepted.data_tasks, done >= accepted.data_tasks)

    # -- the user's own Python -------------------------------------------------------------------

    def map_partitions(self, fn: Callable, columns=None, *, timeout: float = 300.0, progress: Optional[bool] = None):
        """Runs `fn(pandas.DataFrame)` on each shard's rows (the `columns`, else the selection,
        else every column) on the worker holding the shard. DataFrame results come back
        concatenated; anything else as a list in shard order."""
        results = self._python(fn, None, columns, timeout, progress)
        values = [v for _, v in sorted(results)]
        if values and all(isinstance(v, pd.DataFrame) for v in values):
            return pd.concat(values, ignore_index=True)
        return values

    def reduce(self, map_fn: Callable, combine_fn: Callable, columns=None, *, timeout: float = 300.0,
               progress: Optional[bool] = None):
        """`map_fn(DataFrame) -> partial` on each shard, then `combine_fn(a, b) -> partial` in the
        cluster's reduction tree: the user's own mergeable aggregate. None for an empty region."""
        results = self._python(map_fn, combine_fn, columns, timeout, progress)
        return results[-1][1] if results else None

    def _stream_python(self, fn, columns=None, timeout: float = 300.0) -> Iterator[Partial]:
        done = 0
        for task, view, _, accepted in self.client._values(self._python_plan(fn, None, columns, timeout), progress=False,
                                                           task_timeout=float(timeout) + 30, direct=True):
            part = _wire.parse_partial(view)
            done += 1
            yield Partial(pickle.loads(part.python) if part.python else None, done, accepted.data_tasks, done >= accepted.data_tasks)

    def _python_plan(self, fn, combine, columns, timeout):
        import cloudpickle

        q = self.select(*columns) if columns is not None else self
        p = q._rows_plan(max_rows=(1 << 31) - 1)
        p.python.function = cloudpickle.dumps(fn)
        if combine is not None:
            p.python.combine = cloudpickle.dumps(combine)
        p.python.timeout_s = float(timeout)
        p.python.client_python = "%d.%d" % sys.version_info[:2]
        return p

    def _python(self, fn, combine, columns, timeout, progress):

        p = self._python_plan(fn, combine, columns, timeout)
        results = []
        for task, view, _, _ in self.client._values(p, progress=progress, task_timeout=float(timeout) + 30, direct=combine is None):
            part = _wire.parse_partial(view)
            results.append((task, pickle.loads(part.python) if part.python else None))
        return results


class Catalog(Query):
    """A whole catalog: a `Query` with no region or filter yet, and its schema."""

    def __init__(self, client: Client, name: str):
        super().__init__(client, name)

    @property
    def columns(self) -> pd.DataFrame:
        """Its columns: name, type, unit, description."""
        cols = self.client._schema(self.dataset)
        return pd.DataFrame([(c.name, _COLUMN_TYPES.get(c.type, str(c.type)), c.unit, c.description) for c in cols],
                            columns=["name", "type", "unit", "description"])

    def __repr__(self) -> str:
        return f"tessera.Catalog({self.dataset!r})"


def _schema(self: Client, name: str):
    for d in self.status().datasets:
        if d.name == name:
            return list(d.columns)
    names = sorted(d.name for d in self.status().datasets)
    raise QueryError(f"no dataset named `{name}`" + (f"; there are: {', '.join(names)}" if names else " (none ingested yet)"))


Client._schema = _schema


@dataclass(frozen=True)
class GroupBy:
    query: Query
    key: str
    max_groups: int = 0

    def agg(self, *, progress: Optional[bool] = None, **aggregates: str) -> pd.DataFrame:
        """Aggregates per group, as a DataFrame indexed by the key (ascending)."""
        if not aggregates:
            raise QueryError("agg needs at least one aggregate, e.g. agg(n='count')")
        p = self.query._plan()
        p.group_by = self.key
        p.max_groups = int(self.max_groups)
        specs = [_aggregate(a) for a in aggregates.values()]
        p.aggregates.extend(specs)
        partial = self.query._answer(p, progress)
        return _aggregate_frame(partial, specs, list(aggregates), self.key)

    def count(self, *, progress: Optional[bool] = None) -> pd.Series:
        return self.agg(count="count", progress=progress)["count"]


# ---------------------------------------------------------------------------------------------
# Partials to numpy and pandas (as the engine's CatalogResult)

def _moments(col):
    return (np.asarray(col.count, dtype=np.float64), np.asarray(col.mean, dtype=np.float64),
            np.asarray(col.m2, dtype=np.float64), np.asarray(col.min, dtype=np.float64),
            np.asarray(col.max, dtype=np.float64), np.asarray(col.sum, dtype=np.float64))


def _aggregate_frame(partial, specs, names, key) -> pd.DataFrame:
    groups = len(partial.group_rows) if key else max(1, len(partial.group_rows))
    moment_exprs, sketch_exprs = [], []
    for a in specs:
        if a.function == catalog_pb2.AGG_COUNT and not a.expression:
            continue
        target = sketch_exprs if a.function == catalog_pb2.AGG_QUANTILE else moment_exprs
        if a.expression not in target:
            target.append(a.expression)
    out = {}
    nan = np.full(groups, np.nan)
    for name, a in zip(names, specs):
        if a.function == catalog_pb2.AGG_COUNT and not a.expression:
            c = np.zeros(groups, dtype=np.int64)
            c[:len(partial.group_rows)] = np.asarray(partial.group_rows, dtype=np.int64)
            out[name] = c
            continue
        if a.function == catalog_pb2.AGG_QUANTILE:
            k = sketch_exprs.index(a.expression)
            sk = partial.sketches[k].groups if k < len(partial.sketches) else []
            out[name] = np.array([_quantile(sk[g], a.quantile) if g < len(sk) else np.nan for g in range(groups)])
            continue
        k = moment_exprs.index(a.expression)
        if k >= len(partial.moments):
            out[name] = np.zeros(groups, dtype=np.int64) if a.function == catalog_pb2.AGG_COUNT else nan.copy()
            continue
        n, mean, m2, lo, hi, s = _moments(partial.moments[k])
        pad = lambda v: np.pad(v, (0, groups - len(v)), constant_values=np.nan) if len(v) < groups else v  # noqa: E731
        n, mean, m2, lo, hi, s = map(pad, (n, mean, m2, lo, hi, s))
        n0 = np.nan_to_num(n)
        with np.errstate(invalid="ignore", divide="ignore"):
            if a.function == catalog_pb2.AGG_COUNT:
                out[name] = n0.astype(np.int64)
            elif a.function == catalog_pb2.AGG_SUM:
                out[name] = np.where(n0 > 0, s, 0.0)
            elif a.function == catalog_pb2.AGG_MEAN:
                out[name] = np.where(n0 > 0, mean, np.nan)
            elif a.function == catalog_pb2.AGG_MIN:
                out[name] = np.where(n0 > 0, lo, np.nan)
            elif a.function == catalog_pb2.AGG_MAX:
                out[name] = np.where(n0 > 0, hi, np.nan)
            elif a.function in (catalog_pb2.AGG_VAR, catalog_pb2.AGG_STD):
                var = np.where(n0 > 1, m2 / (n0 - 1), np.nan)
                out[name] = var if a.function == catalog_pb2.AGG_VAR else np.sqrt(var)
    if key is None:
        return pd.DataFrame(out, index=[0])
    if partial.int_group_keys:
        index = np.asarray(partial.int_group_keys, dtype=np.int64)
    else:
        keys = np.asarray(partial.group_keys, dtype=np.float64)
        integral = len(keys) and np.all(np.isfinite(keys)) and np.all(keys == np.round(keys)) and np.all(np.abs(keys) < 9e15)
        index = keys.astype(np.int64) if integral else keys
    return pd.DataFrame(out, index=pd.Index(index, name=key))


def _edges(n, lo, hi):
    return np.linspace(lo, hi, n + 1)


def _histogram1d(partial, h):
    counts = np.zeros(h.x_bins, dtype=np.int64)
    if partial.histogram:
        counts[:] = np.asarray(partial.histogram, dtype=np.int64)
    return counts, _edges(h.x_bins, h.x_min, h.x_max)


def _histogram2d(partial, h):
    counts = np.zeros((h.x_bins, h.y_bins), dtype=np.int64)
    if partial.histogram:
        counts[:] = np.asarray(partial.histogram, dtype=np.int64).reshape(h.x_bins, h.y_bins)
    return counts, _edges(h.x_bins, h.x_min, h.x_max), _edges(h.y_bins, h.y_min, h.y_max)


def _sky_map(partial, spec):
    npix = 12 * 4 ** spec.order
    m = partial.sky_map
    pixels = np.asarray(m.pixels, dtype=np.int64)
    if not spec.expression:
        out = np.zeros(npix, dtype=np.int64)
        out[pixels] = np.asarray(m.counts, dtype=np.int64)
        return out
    out = np.full(npix, np.nan)
    if len(m.sums):
        n = np.asarray(m.value_counts, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[pixels] = np.where(n > 0, np.asarray(m.sums) / n, np.nan)
    return out
