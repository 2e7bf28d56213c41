"""Cross-matches from Python against astropy, computed here on the same rows (the catalogs of
Tests/EndToEndTests/Fixtures/crossmatch: the poles, RA 0, dense patches, and left rows in
pixels where the right catalog has no shard)."""
import os

import numpy as np
import pandas as pd
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord, search_around_sky

import tessera

from conftest import ROOT

FIXTURES = os.path.join(ROOT, "Tests", "EndToEndTests", "Fixtures", "crossmatch")


@pytest.fixture(scope="module")
def tables(bins, cluster):
    import subprocess
    env = dict(os.environ, TESSERA_KEY=cluster.key_path or "")
    for name, shard_rows in (("xm_left", 500), ("xm_right", 300)):
        subprocess.run([os.path.join(bins, "tessera"), "ingest", name, os.path.join(FIXTURES, name[3:] + ".csv"),
                        "--ra", "ra", "--dec", "dec", "--max-rows-per-shard", str(shard_rows), "--replace",
                        "--scheduler", cluster.endpoint], env=env, check=True, capture_output=True)
    return pd.read_csv(os.path.join(FIXTURES, "left.csv")), pd.read_csv(os.path.join(FIXTURES, "right.csv"))


def pairs(df):
    return {(int(a), int(b)): s for a, b, s in zip(df["left_id"], df["right_id"], df["sep_arcsec"])}


def test_every_pair_is_astropys(client, tables):
    left, right = tables
    lc = SkyCoord(left["ra"].to_numpy() * u.deg, left["dec"].to_numpy() * u.deg)
    rc = SkyCoord(right["ra"].to_numpy() * u.deg, right["dec"].to_numpy() * u.deg)
    i, j, sep, _ = search_around_sky(lc, rc, 2 * u.arcsec)
    expected = {(int(left["id"][a]), int(right["id"][b])): s for a, b, s in zip(i, j, sep.to(u.arcsec).value)}
    got = pairs(client.catalog("xm_left").crossmatch("xm_right", 2, kind="all")
                .select("left_id", "right_id", "sep_arcsec").to_pandas())
    assert len(expected) > 10_000
    assert got.keys() == expected.keys()
    assert max(abs(got[p] - expected[p]) for p in got) < 1e-6


def test_nearest_is_astropys_match_to_catalog_sky(client, tables):
    left, right = tables
    lc = SkyCoord(left["ra"].to_numpy() * u.deg, left["dec"].to_numpy() * u.deg)
    rc = SkyCoord(right["ra"].to_numpy() * u.deg, right["dec"].to_numpy() * u.deg)
    idx, sep, _ = lc.match_to_catalog_sky(rc)
    within = sep <= 2 * u.arcsec
    expected = {(int(left["id"][a]), int(right["id"][idx[a]])) for a in np.nonzero(within)[0]}
    q = client.catalog("xm_left").crossmatch(client.catalog("xm_right"), 2)
    assert set(pairs(q.select("left_id", "right_id", "sep_arcsec").to_pandas())) == expected
    # Aggregates over the pairs: a magnitude difference, and a count in a region.
    d = left.set_index("id")["mag"]
    r = right.set_index("id")["mag"]
    diffs = np.array([d[a] - r[b] for a, b in expected])
    assert q.agg(mean="mean(left_mag - right_mag)")["mean"].iloc[0] == pytest.approx(diffs.mean(), rel=1e-12)
    assert q.count() == len(expected)


def test_a_radius_over_the_margin_says_why(client, tables):
    with pytest.raises(tessera.QueryError, match="margin"):
        client.catalog("xm_left").crossmatch("xm_right", 60).count()
    with pytest.raises(tessera.QueryError, match="nearest` or `all"):
        client.catalog("xm_left").crossmatch("xm_right", 1, kind="closest")


def test_an_uploaded_table_meets_the_survey(client, tables):
    left, right = tables
    rows = left.rename(columns={"ra": "RA", "dec": "DEC"})
    mine = client.upload(rows, "my_sources", ra="RA", dec="DEC", replace=True)
    assert mine.count() == len(left)
    # Stored as given: every value back, in any order.
    back = mine.select("id", "RA", "DEC", "mag").to_pandas().sort_values("id").reset_index(drop=True)
    expected = rows.sort_values("id").reset_index(drop=True)
    for c in ("id", "RA", "DEC", "mag"):
        assert np.array_equal(back[c].to_numpy(), expected[c].to_numpy())
    # Against the survey: astropy's pairs.
    lc = SkyCoord(left["ra"].to_numpy() * u.deg, left["dec"].to_numpy() * u.deg)
    rc = SkyCoord(right["ra"].to_numpy() * u.deg, right["dec"].to_numpy() * u.deg)
    i, j, sep, _ = search_around_sky(lc, rc, 2 * u.arcsec)
    expected_pairs = {(int(left["id"][a]), int(right["id"][b])) for a, b in zip(i, j)}
    got = mine.crossmatch("xm_right", 2, kind="all").select("left_id", "right_id", "sep_arcsec").to_pandas()
    assert set(pairs(got)) == expected_pairs
    listed = client.datasets().set_index("name")
    assert listed.loc["my_sources", "owner"] == client.user and 23 < listed.loc["my_sources", "expires_in_hours"] <= 24
    assert listed.loc["xm_right", "owner"] == ""


def test_a_cross_match_is_stored_as_a_table_of_its_own(client, tables):
    q = client.catalog("xm_left").crossmatch("xm_right", 2).select("left_id", "left_ra", "left_dec", "right_id", "sep_arcsec")
    pairs_now = pairs(q.to_pandas())
    kept = q.store("xm_pairs", replace=True)
    assert kept.count() == len(pairs_now)
    # A question of the stored table: the pairs closer than 0.5", as the first answer has them.
    close = kept.where("sep_arcsec < 0.5").select("left_id", "right_id", "sep_arcsec").to_pandas()
    assert set(pairs(close)) == {p for p, s in pairs_now.items() if s < 0.5}


def test_uploads_refuse_what_cannot_be_stored(client, tables):
    left, _ = tables
    with pytest.raises(tessera.QueryError, match="no position column `ra`"):
        client.upload(left.drop(columns=["ra"]), "t1")
    bad = left.copy()
    bad.loc[3, "dec"] = np.nan
    with pytest.raises(tessera.QueryError, match="row 3 has no position on the sky"):
        client.upload(bad, "t2")
    with pytest.raises(tessera.QueryError, match="is a survey dataset"):
        client.upload(left, "xm_right")
    text = left.assign(label="x")
    with pytest.raises(tessera.QueryError, match="column `label` is object"):
        client.upload(text, "t3")


def test_ctrl_c_during_an_upload_removes_what_it_stored(client, cluster):
    """Ctrl-C while an upload's shards are being stored: the scheduler is told the upload
    stopped, and the copies already on the workers are removed within seconds (they stayed for
    its idle limit and the orphans' grace, over an hour, counting against the user's quota)."""
    import glob
    import signal
    import threading
    import time

    n = 1_000_000
    rng = np.random.default_rng(5)
    df = pd.DataFrame({"ra": rng.uniform(0, 360, n), "dec": np.degrees(np.arcsin(rng.uniform(-1, 1, n))), "flux": rng.normal(size=n)})
    stored = os.path.join(cluster.data, "worker-*", "catalogs", f"{client.user}..stopped_upload", "*", "*.shard")
    main = threading.main_thread().ident

    def interrupt_once_stored():
        deadline = time.monotonic() + 60
        while not glob.glob(stored) and time.monotonic() < deadline:
            time.sleep(0.002)
        signal.pthread_kill(main, signal.SIGINT)  # what Ctrl-C does

    threading.Thread(target=interrupt_once_stored, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        client.upload(df, "stopped_upload", max_rows_per_shard=2_000)
        time.sleep(60)  # finished before the interrupt came: it lands here, and the check below fails
    t0 = time.monotonic()
    while left := glob.glob(stored):
        assert time.monotonic() - t0 < 15, f"{len(left)} copies of the stopped upload are still on the workers"
        time.sleep(0.05)
    print(f"the stopped upload's copies were removed {time.monotonic() - t0:.3f} s after the interrupt")
    assert "stopped_upload" not in set(client.datasets()["name"])
