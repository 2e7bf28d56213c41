"""A user's own table, uploaded into their workspace on the cluster: `Client.upload`.

The rows are grouped into HEALPix pixels here (numpy), the way `tessera ingest` cuts a catalog,
and each pixel's rows go straight to the workers the scheduler chose, over CURVE. The workers
compute every row's spatial index from its position themselves (the grouping here only has to
agree with theirs at pixel edges; a row it put on the wrong side would be refused by number,
never stored wrongly), and the scheduler records the table only once every copy is reported
stored. A table uploaded from Python has no margin, so it is the left side of a cross-match.
"""
from __future__ import annotations

import time

import numpy as np
import zmq

from . import _wire
from .errors import QueryError, TesseraError, from_reply
from .v1 import storage_pb2, tessera_pb2

INDEX_COLUMN = "_healpix_29"
#: Shards are no finer than this order (the `tessera ingest` client's histogram order).
PARTITION_ORDER = 11
STORE_TIMEOUT_SECONDS = 120.0

_TYPES = {
    np.dtype("float64"): storage_pb2.COLUMN_FLOAT64, np.dtype("float32"): storage_pb2.COLUMN_FLOAT32,
    np.dtype("int64"): storage_pb2.COLUMN_INT64, np.dtype("int32"): storage_pb2.COLUMN_INT32,
    np.dtype("int16"): storage_pb2.COLUMN_INT16, np.dtype("uint8"): storage_pb2.COLUMN_UINT8,
    np.dtype("bool"): storage_pb2.COLUMN_BOOL,
}


def _spread(v: np.ndarray) -> np.ndarray:
    x = v.astype(np.uint64) & np.uint64(0xFFFFFFFF)
    for shift, mask in ((16, 0x0000FFFF0000FFFF), (8, 0x00FF00FF00FF00FF), (4, 0x0F0F0F0F0F0F0F0F),
                        (2, 0x3333333333333333), (1, 0x5555555555555555)):
        x = (x | (x << np.uint64(shift))) & np.uint64(mask)
    return x.astype(np.int64)


def spatial_index(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Each position's order-29 HEALPix (nested) index, by the same steps as the engine's
    `HEALPix.pixel` (healpy's ang2pix)."""
    order = 29
    ns = 1 << order
    theta = np.pi / 2 - dec * (np.pi / 180)
    phi = ra * (np.pi / 180)
    z = np.cos(theta)
    za = np.abs(z)
    tt = np.mod(phi * (2 / np.pi), 4.0)
    tt = np.where(tt >= 4.0, 0.0, tt)
    # Equatorial region.
    t1 = ns * (0.5 + tt)
    t2 = ns * (z * 0.75)
    jp = (t1 - t2).astype(np.int64)
    jm = (t1 + t2).astype(np.int64)
    ifp, ifm = jp >> order, jm >> order
    face_eq = np.where(ifp == ifm, ifp | 4, np.where(ifp < ifm, ifp, ifm + 8))
    ix_eq = jm & (ns - 1)
    iy_eq = ns - (jp & (ns - 1)) - 1
    # Polar caps.
    ntt = np.minimum(3, tt.astype(np.int64))
    tp = tt - ntt
    near_pole = (theta < 0.01) | (theta > 3.14159 - 0.01)
    with np.errstate(invalid="ignore"):
        tmp = np.where((za < 0.99) | ~near_pole, ns * np.sqrt(3 * (1 - za)), ns * np.sin(theta) / np.sqrt((1 + za) / 3))
    jpp = np.minimum(ns - 1, (tp * tmp).astype(np.int64))
    jmp = np.minimum(ns - 1, ((1 - tp) * tmp).astype(np.int64))
    north = z >= 0
    face_p = np.where(north, ntt, ntt + 8)
    ix_p = np.where(north, ns - jmp - 1, jpp)
    iy_p = np.where(north, ns - jpp - 1, jmp)
    eq = za <= 2.0 / 3.0
    face = np.where(eq, face_eq, face_p)
    ix = np.where(eq, ix_eq, ix_p)
    iy = np.where(eq, iy_eq, iy_p)
    return (face << (2 * order)) + _spread(ix) + (_spread(iy) << 1)


def partition(index: np.ndarray, max_rows: int):
    """(order, pixel, start, end) of each shard over `index` (ascending): a pixel with more than
    `max_rows` rows splits into its four children, down to `PARTITION_ORDER`."""
    out = []

    def visit(order, pixel, lo, hi):
        if lo == hi:
            return
        if hi - lo <= max_rows or order == PARTITION_ORDER:
            out.append((order, pixel, lo, hi))
            return
        shift = 2 * (29 - order - 1)
        for child in range(4 * pixel, 4 * pixel + 4):
            a = lo + int(np.searchsorted(index[lo:hi], child << shift, "left"))
            b = lo + int(np.searchsorted(index[lo:hi], (child + 1) << shift, "left"))
            visit(order + 1, child, a, b)

    for base in range(12):
        a = int(np.searchsorted(index, base << 58, "left"))
        b = int(np.searchsorted(index, (base + 1) << 58, "left"))
        visit(0, base, a, b)
    return out


def columns_of(table, ra: str, dec: str):
    """(names, numpy arrays) of a pandas DataFrame or an astropy Table, checked."""
    if hasattr(table, "to_pandas") and not hasattr(table, "iloc"):
        table = table.to_pandas()
    names = [str(c) for c in table.columns]
    for c in (ra, dec):
        if c not in names:
            raise QueryError(f"the table has no position column `{c}` (it has {', '.join(names[:20])}): "
                             "name them with ra=..., dec=...")
    if INDEX_COLUMN in names:
        raise QueryError(f"`{INDEX_COLUMN}` is the spatial index Tessera adds: rename that column")
    arrays = []
    for n in names:
        a = np.ascontiguousarray(table[n].to_numpy())
        if a.dtype.byteorder not in ("=", "|"):
            a = a.astype(a.dtype.newbyteorder("="))
        if a.dtype not in _TYPES:
            raise QueryError(f"column `{n}` is {a.dtype}: a table holds numbers and booleans "
                             "(float64/32, int64/32/16, uint8, bool); drop or convert it")
        arrays.append(a.astype(a.dtype.newbyteorder("<"), copy=False))
    r, d = arrays[names.index(ra)].astype(np.float64), arrays[names.index(dec)].astype(np.float64)
    bad = ~(np.isfinite(r) & np.isfinite(d) & (d >= -90) & (d <= 90))
    if bad.any():
        k = int(np.argmax(bad))
        raise QueryError(f"row {k} has no position on the sky ({ra} {r[k]}, {dec} {d[k]}); "
                         f"{int(bad.sum())} rows have none: drop them first")
    return names, arrays, r, d


def _abort(conn, ingest_id: str, dataset: str) -> None:
    """Tells the scheduler an upload stopped before its commit: it forgets it at once, and the
    copies already stored leave their workers (they stayed for its idle limit and the orphans'
    grace, over an hour, holding the user's quota meanwhile). Waited for briefly; if it is lost,
    the scheduler abandons the upload by itself once it has been idle too long."""
    tag = next(conn._tags)
    env = tessera_pb2.Envelope()
    a = env.ingest_abort
    a.client_tag, a.ingest_id, a.dataset = tag, ingest_id, dataset
    try:
        conn._request(env, tag, 1.5, "the scheduler did not confirm the upload's stop")
    except Exception:
        pass


def upload(conn, table, name: str, ra: str, dec: str, *, lifetime_s: float, shared: bool, replace: bool,
           max_rows_per_shard: int):
    names, arrays, r, d = columns_of(table, ra, dec)
    if len(r) == 0:
        raise QueryError("the table has no rows")
    index = spatial_index(r, d)
    order = np.argsort(index, kind="stable")
    index = index[order]
    arrays = [a[order] for a in arrays] + [index]
    schema = []
    for n, a in zip(names + [INDEX_COLUMN], arrays):
        c = storage_pb2.ColumnSchema(name=n, type=_TYPES[a.dtype])
        if n == INDEX_COLUMN:
            c.description = "HEALPix order-29 nested index"
        schema.append(c)
    row_bytes = sum(a.dtype.itemsize for a in arrays)
    shards = partition(index, max_rows_per_shard)
    workers_live = len(conn.status().workers)

    tag = next(conn._tags)
    env = tessera_pb2.Envelope()
    b = env.ingest_begin
    b.client_tag, b.dataset, b.replace = tag, name, replace
    b.replicas = max(1, min(16, workers_live))
    b.workspace, b.shared, b.lifetime_s = True, shared, lifetime_s
    for order_, pixel, lo, hi in shards:
        b.shards.add(order=order_, pixel=pixel, rows=hi - lo, bytes=(hi - lo) * row_bytes)
    reply = conn._request(env, tag, 30.0, "the scheduler did not answer the upload")
    if reply.WhichOneof("body") == "error":
        raise from_reply(tessera_pb2.ErrorCode.Name(reply.error.code), reply.error.message)
    plan = reply.ingest_plan
    stored_as = plan.dataset or name
    peers = {w.worker_id: w for w in plan.workers}
    names_by_id = dict(zip((w.worker_id for w in plan.workers), plan.worker_names))

    # Every copy straight to its worker; each worker answers each shard once it is on disk.
    sockets = {}
    poller = zmq.Poller()
    pending = {}
    try:
        for k, ((order_, pixel, lo, hi), placement) in enumerate(zip(shards, plan.placements)):
            for wid in placement.workers:
                peer = peers.get(wid)
                if peer is None:
                    raise TesseraError(f"the upload's plan names worker {wid}, which it does not describe")
                sock = sockets.get(wid)
                if sock is None:
                    sock = conn._ctx.socket(zmq.DEALER)
                    sock.linger = 0
                    if conn.credentials is not None and peer.public_key:
                        sock.curve_serverkey = peer.public_key.encode()
                        sock.curve_publickey = conn.credentials.public_key
                        sock.curve_secretkey = conn.credentials.secret_key
                    sock.connect(peer.endpoint)
                    sockets[wid] = sock
                    poller.register(sock, zmq.POLLIN)
                request = len(pending) + 1
                m = tessera_pb2.Envelope()
                s = m.store_shard
                s.request_id, s.ingest_id, s.dataset = request, plan.ingest_id, stored_as
                s.order, s.pixel, s.rows, s.margin_rows = order_, pixel, hi - lo, 0
                s.columns.extend(schema)
                s.index_column, s.ra_column, s.dec_column = INDEX_COLUMN, ra, dec
                frames = [np.ascontiguousarray(a[lo:hi]).view(np.uint8).tobytes() for a in arrays]
                sock.send_multipart(_wire.encode(m, frames))
                pending[request] = (k, wid)
        stored = [dict() for _ in shards]
        deadline = time.monotonic() + STORE_TIMEOUT_SECONDS
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TesseraError(f"{len(pending)} shard copies were not confirmed stored within {STORE_TIMEOUT_SECONDS:g} s")
            for sock, _ in poller.poll(timeout=min(left, 1.0) * 1000):
                env_r, _ = _wire.decode(sock.recv_multipart())
                if env_r.WhichOneof("body") != "shard_stored":
                    continue
                rep = env_r.shard_stored
                if rep.error:
                    raise QueryError(f"a worker refused the upload: {rep.error}")
                k, wid = pending.pop(rep.request_id, (None, None))
                if k is not None:
                    stored[k][names_by_id.get(wid, str(wid))] = rep
    except BaseException:  # a failure, or Ctrl-C
        _abort(conn, plan.ingest_id, stored_as)
        raise
    finally:
        for sock in sockets.values():
            sock.close(0)

    tag = next(conn._tags)
    env = tessera_pb2.Envelope()
    c = env.ingest_commit
    c.client_tag, c.ingest_id, c.dataset, c.replace = tag, plan.ingest_id, stored_as, replace
    c.columns.extend(schema)
    c.ra_column, c.dec_column = ra, dec
    c.max_rows_per_shard, c.margin_arcsec = max_rows_per_shard, 0.0
    for (order_, pixel, lo, hi), copies in zip(shards, stored):
        first = next(iter(copies.values()))
        c.shards.add(order=order_, pixel=pixel, rows=first.rows, bytes=first.bytes, checksum=first.checksum,
                     workers=sorted(copies), footer=first.footer)
    reply = conn._request(env, tag, 60.0, "the scheduler did not confirm the upload")
    if reply.WhichOneof("body") == "error":
        raise from_reply(tessera_pb2.ErrorCode.Name(reply.error.code), reply.error.message)
    return reply.ingest_committed
