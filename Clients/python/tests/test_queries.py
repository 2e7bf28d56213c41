"""Catalog questions from Python, each checked against numpy/pandas/astropy on the same rows
(read from the generated FITS files with astropy, not through Tessera)."""
import numpy as np
import pandas as pd
import pytest

import tessera
from conftest import ROWS, mag


def test_datasets_and_columns(client):
    ds = client.datasets().set_index("name")
    assert ds.loc["object", "rows"] == ROWS
    assert ds.loc["object", "shards"] > ds.loc["object_coarse", "shards"] > 1
    cols = client.catalog("object").columns.set_index("name")
    assert cols.loc["coord_ra", "unit"] == "deg"
    assert cols.loc["r_psfFlux", "type"] == "float32"
    assert cols.loc["objectId", "type"] == "int64"


def test_count_with_filter(client, reference):
    r = reference
    want = int(((r.refExtendedness == 0) & (mag(r.r_psfFlux) < 24)).sum())
    q = client.catalog("object").where("refExtendedness == 0 and mag(r_psfFlux) < 24")
    assert q.count() == want
    assert client.catalog("object").count() == ROWS


def _separation_deg(ra, dec, ra0, dec0):
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    return SkyCoord(ra * u.deg, dec * u.deg).separation(SkyCoord(ra0 * u.deg, dec0 * u.deg)).deg


def test_cone_matches_angular_separation(client, reference):
    ra0, dec0, radius = 60.0, -35.0, 2.0
    sep = _separation_deg(reference.coord_ra.values, reference.coord_dec.values, ra0, dec0)
    want = set(reference.objectId[sep <= radius])
    assert len(want) > 100
    got = client.catalog("object").cone(ra0, dec0, radius).select("objectId", "coord_ra").to_pandas()
    assert set(got.objectId) == want
    assert len(got) == len(want)
    assert client.catalog("object").cone(ra0, dec0, radius).count() == len(want)


def test_rows_to_pandas_are_the_stored_values(client, reference):
    df = client.catalog("object").select("objectId", "coord_ra", "coord_dec", "r_psfFlux", r_mag="mag(r_psfFlux)").to_pandas(max_rows=ROWS)
    assert list(df.columns) == ["objectId", "coord_ra", "coord_dec", "r_psfFlux", "r_mag"]
    assert len(df) == ROWS
    a = df.set_index("objectId").sort_index()
    b = reference.set_index("objectId").sort_index()
    np.testing.assert_array_equal(a.coord_ra.values, b.coord_ra.values)
    np.testing.assert_array_equal(a.coord_dec.values, b.coord_dec.values)
    np.testing.assert_allclose(a.r_mag.values, mag(b.r_psfFlux.values), rtol=1e-12, equal_nan=True)
    assert df.objectId.dtype == np.int64
    # A stored Float32 column stays Float32, bit for bit; computed values are Float64.
    assert df.r_psfFlux.dtype == np.float32 and df.r_mag.dtype == np.float64
    np.testing.assert_array_equal(a.r_psfFlux.values, b.r_psfFlux.values.astype(np.float32))


def test_rows_taken_over_curve_equal_those_taken_on_this_host(cluster, client):
    """Direct results taken from the workers' CURVE peer endpoints (as a client on another host
    would) and from their same-host ipc:// sockets are the same rows."""
    q = client.catalog("object").cone(60, -35, 3).select("objectId", "r_psfFlux")
    here = q.to_pandas()
    with tessera.Client(cluster, progress=False, same_host_results=False) as remote:
        there = remote.catalog("object").cone(60, -35, 3).select("objectId", "r_psfFlux").to_pandas()
        assert remote._conn._peers and all(key for _, key in remote._conn._peers)  # CURVE, not ipc
    assert client._conn._peers and any(ep.startswith("ipc://") for ep, _ in client._conn._peers)
    pd.testing.assert_frame_equal(here.sort_values("objectId").reset_index(drop=True),
                                  there.sort_values("objectId").reset_index(drop=True))
    assert len(here) > 1000


def test_a_collect_is_told_each_shards_rows_and_keeps_shard_order(client, monkeypatch):
    """The scheduler tells a collect how many rows each shard holds; the client places each
    batch by it as it arrives. The rows, in order, are those of concatenating the batches."""
    from tessera.client import _RowSink

    q = client.catalog("object").select("objectId", "r_psfFlux")
    accepted = next(iter(client._values(q._rows_plan(max_rows=ROWS), progress=False, direct=True)))[3]
    assert len(accepted.data_task_rows) == accepted.data_tasks > 1
    assert sum(accepted.data_task_rows) == ROWS
    head = next(iter(client._values(q._rows_plan(limit=5), progress=False)))[3]
    assert len(head.data_task_rows) == 0  # only collects are told
    filtered = q.where("mag(r_psfFlux) < 23")
    placed = [q.to_pandas(max_rows=ROWS), filtered.to_pandas(max_rows=ROWS)]
    # The same questions with the batches concatenated at the end instead.
    monkeypatch.setattr(_RowSink, "for_collect", classmethod(lambda cls, *a: None))
    joined = [q.to_pandas(max_rows=ROWS), filtered.to_pandas(max_rows=ROWS)]
    for a, b in zip(placed, joined):
        pd.testing.assert_frame_equal(a, b)
    assert 0 < len(placed[1]) < ROWS


def test_row_cap_is_a_clear_error(client):
    with pytest.raises(tessera.JobFailed, match="row cap"):
        client.catalog("object").select("objectId").to_pandas(max_rows=1000)


def test_to_astropy_has_units(client):
    t = client.catalog("object").cone(60, -35, 1).select("objectId", "coord_ra", "r_psfFlux").to_astropy()
    assert str(t["coord_ra"].unit) == "deg"
    assert str(t["r_psfFlux"].unit) == "nJy"


def test_aggregates(client, reference):
    r = reference
    m = pd.Series(mag(r.r_psfFlux)).where(lambda s: s < 24).dropna()
    got = client.catalog("object").where("mag(r_psfFlux) < 24").agg(
        n="count", mean="mean(mag(r_psfFlux))", std="std(mag(r_psfFlux))", lo="min(mag(r_psfFlux))",
        hi="max(mag(r_psfFlux))", total="sum(mag(r_psfFlux))", med="median(mag(r_psfFlux))")
    assert got.shape == (1, 7)
    row = got.iloc[0]
    assert row.n == len(m)
    assert row["mean"] == pytest.approx(m.mean(), rel=1e-10)
    assert row["std"] == pytest.approx(m.std(), rel=1e-9)  # pandas' ddof=1
    assert row.lo == pytest.approx(m.min(), rel=1e-12)
    assert row.hi == pytest.approx(m.max(), rel=1e-12)
    assert row.total == pytest.approx(m.sum(), rel=1e-10)
    # DDSketch: within 0.5% of the value at rank floor(q (n - 1)).
    exact = np.sort(m.values)[int(np.floor(0.5 * (len(m) - 1)))]
    assert abs(row.med - exact) <= 0.005 * abs(exact)


def test_group_by(client, reference):
    r = reference.assign(m=mag(reference.r_psfFlux))
    want = r.groupby("cell").m.agg(["count", "mean", "std"])
    got = client.catalog("object").group_by("cell").agg(n="count(mag(r_psfFlux))", m="mean(mag(r_psfFlux))",
                                                       s="std(mag(r_psfFlux))", rows="count")
    assert got.index.name == "cell"
    assert list(got.index) == list(want.index)
    np.testing.assert_array_equal(got.n.values, want["count"].values)
    np.testing.assert_allclose(got.m.values, want["mean"].values, rtol=1e-10)
    np.testing.assert_allclose(got.s.values, want["std"].values, rtol=1e-8, equal_nan=True)
    np.testing.assert_array_equal(got.rows.values, r.groupby("cell").size().values)


def test_histogram_is_numpys(client, reference):
    x = mag(reference.r_psfFlux)
    counts, edges = client.catalog("object").histogram("mag(r_psfFlux)", bins=80, range=(16, 24))
    want, want_edges = np.histogram(x[np.isfinite(x)], bins=80, range=(16, 24))
    np.testing.assert_array_equal(counts, want)
    np.testing.assert_allclose(edges, want_edges)


def test_histogram2d_is_numpys(client, reference):
    r = reference
    x = mag(r.g_psfFlux) - mag(r.r_psfFlux)
    y = mag(r.r_psfFlux)
    ok = np.isfinite(x) & np.isfinite(y)
    counts, xe, ye = client.catalog("object").histogram2d(
        "mag(g_psfFlux)-mag(r_psfFlux)", "mag(r_psfFlux)", bins=(60, 80), range=((-1, 2), (16, 24)))
    want, wx, wy = np.histogram2d(x[ok], y[ok], bins=(60, 80), range=((-1, 2), (16, 24)))
    assert counts.shape == (60, 80)
    np.testing.assert_array_equal(counts, want.astype(np.int64))
    np.testing.assert_allclose(xe, wx)
    np.testing.assert_allclose(ye, wy)


def test_sky_map_is_nested_healpix(client, reference):
    from astropy import units as u
    from astropy_healpix import HEALPix

    order = 6
    hp = HEALPix(nside=2 ** order, order="nested")
    pix = hp.lonlat_to_healpix(reference.coord_ra.values * u.deg, reference.coord_dec.values * u.deg)
    want = np.bincount(pix, minlength=12 * 4 ** order)
    got = client.catalog("object").sky_map(order=order)
    assert got.shape == (12 * 4 ** order,)
    np.testing.assert_array_equal(got, want)
    means = client.catalog("object").sky_map(order=order, mean="coord_dec")
    ref = pd.Series(reference.coord_dec.values).groupby(pix).mean()
    np.testing.assert_allclose(means[ref.index.values], ref.values, rtol=1e-12)
    assert np.isnan(means[np.setdiff1d(np.arange(12 * 4 ** order), ref.index.values)]).all()


def test_top_head_and_sample(client, reference):
    r = reference.assign(m=mag(reference.r_psfFlux))
    top = client.catalog("object").top(10, by="mag(r_psfFlux)")
    assert list(top.objectId) == list(r.nsmallest(10, "m").objectId)
    bottom = client.catalog("object").select("objectId").top(5, by="coord_dec", descending=True)
    assert list(bottom.objectId) == list(r.nlargest(5, "coord_dec").objectId)
    head = client.catalog("object").head(5)
    assert len(head) == 5 and set(head.columns) >= {"objectId", "coord_ra"}
    a = client.catalog("object").select("objectId").sample(0.05, seed=3)
    b = client.catalog("object_coarse").select("objectId").sample(0.05, seed=3)
    # The same rows however the catalog is sharded, about 5% of them.
    assert set(a.objectId) == set(b.objectId)
    assert abs(len(a) - 0.05 * ROWS) < 5 * np.sqrt(0.05 * ROWS)
    assert set(client.catalog("object").select("objectId").sample(0.05, seed=4).objectId) != set(a.objectId)


def test_stream_gives_progressive_answers(client, reference):
    x = mag(reference.r_psfFlux)
    parts = list(client.catalog("object").stream("histogram", "mag(r_psfFlux)", bins=20, range=(16, 24)))
    assert parts[-1].final and parts[-1].fraction == 1.0
    want, _ = np.histogram(x[np.isfinite(x)], bins=20, range=(16, 24))
    np.testing.assert_array_equal(parts[-1].value[0], want)
    for p in parts[:-1]:
        assert not p.final and 0 <= p.fraction <= 1
        assert (p.value[0] <= want).all()
    batches = list(client.catalog("object").cone(60, -35, 2).select("objectId").stream())
    assert sum(len(b.value) for b in batches) == client.catalog("object").cone(60, -35, 2).count()


def test_errors_carry_the_engines_message(client):
    with pytest.raises(tessera.QueryError) as e:
        client.catalog("object").where("mag(r_psfFlx) < 24").count()
    msg = str(e.value)
    assert "r_psfFlx" in msg and "did you mean" in msg and "^" in msg
    with pytest.raises(tessera.QueryError, match="no dataset named `nope`"):
        client.catalog("nope").count()
    with pytest.raises(tessera.QueryError, match="unknown aggregate"):
        client.catalog("object").agg(x="mode(coord_ra)")


def test_finds_the_scheduler_and_key_from_the_environment(cluster, monkeypatch):
    monkeypatch.setenv("TESSERA_SCHEDULER", cluster.endpoint)
    monkeypatch.setenv("TESSERA_KEY", cluster.key_path)
    with tessera.Client(progress=False) as c:
        assert c.user == "local"
        assert c.catalog("object").count() == ROWS


def test_a_wrong_key_is_refused(cluster, tmp_path):
    import zmq

    pub, sec = zmq.curve_keypair()
    key = tmp_path / "stranger.key"
    sched = open(cluster.key_path).read().split("scheduler-key = ")[1].split()[0]
    key.write_text(f"name = stranger\nrole = user\npublic-key = {pub.decode()}\nsecret-key = {sec.decode()}\nscheduler-key = {sched}\n")
    with pytest.raises(tessera.SchedulerUnavailable):
        tessera.Client(cluster.endpoint, key=str(key), timeout=1.5)


def test_class_and_user_reach_the_scheduler(cluster):
    from tessera.v1 import tessera_pb2

    # The local key is an admin's, so it may run jobs for another user (as a gateway does).
    with tessera.Client(cluster, priority="batch", on_behalf_of="carol", progress=False) as c:
        assert c.catalog("object").count() == ROWS
        done = [j for j in c.status().jobs if j.user == "carol"]
        assert done and all(j.priority == tessera_pb2.PRIORITY_BATCH for j in done)
        assert any(u.user == "carol" and u.usage_seconds > 0 for u in c.status().users)
    with pytest.raises(ValueError, match="priority must be one of"):
        tessera.Client(cluster, priority="urgent")
    with tessera.Client(cluster, on_behalf_of="not a name", progress=False) as c:
        with pytest.raises(tessera.OverLimit, match="user name"):
            c.catalog("object").count()
