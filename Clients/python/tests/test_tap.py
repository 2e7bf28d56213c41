"""The HTTP gateway as VO clients use it: pyvo's TAPService (sync, async, tables) and plain HTTP,
against a real cluster. Every answer is checked against the same rows read with astropy."""
import contextlib
import io
import json
import os
import threading
import time

import astropy.units as u
import numpy as np
import pandas as pd
import pytest
import pyvo
import requests
from astropy.coordinates import SkyCoord, search_around_sky
from astropy.io.votable import parse_single_table

from conftest import alive, mag


def session(token):
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {token}"
    return s


@pytest.fixture(scope="module")
def alice(cluster):
    return cluster.create_token("alice")


@pytest.fixture(scope="module")
def tap(cluster, alice):
    return pyvo.dal.TAPService(cluster.tap_url, session=session(alice))


@pytest.fixture(scope="module")
def centre(reference):
    return float(reference["coord_ra"].median()), float(reference["coord_dec"].median())


def within(reference, ra, dec, radius_deg):
    sep = SkyCoord(reference["coord_ra"].to_numpy() * u.deg, reference["coord_dec"].to_numpy() * u.deg).separation(
        SkyCoord(ra * u.deg, dec * u.deg)).deg
    return reference[sep <= radius_deg]


def test_a_cone_with_contains_matches_astropy(tap, reference, centre):
    ra, dec = centre
    t = tap.run_sync(f"""SELECT objectId, coord_ra, coord_dec, mag(r_psfFlux) AS rmag
                        FROM tessera.object
                        WHERE CONTAINS(POINT('ICRS', coord_ra, coord_dec), CIRCLE('ICRS', {ra}, {dec}, 0.5)) = 1""").to_table()
    expected = within(reference, ra, dec, 0.5).set_index("objectId")
    assert len(expected) > 100
    got = t.to_pandas().set_index("objectId")
    assert sorted(got.index) == sorted(expected.index)
    assert t["coord_ra"].unit == u.deg
    np.testing.assert_array_equal(got["coord_ra"].to_numpy(), expected.loc[got.index, "coord_ra"].to_numpy())
    np.testing.assert_allclose(got["rmag"].to_numpy(), mag(expected.loc[got.index, "r_psfFlux"]), rtol=1e-9, equal_nan=True)


def test_group_by_matches_pandas(tap, reference):
    t = tap.run_sync("""SELECT cell, COUNT(*) AS n, AVG(r_psfFlux) AS mean_r, MIN(g_psfFlux) AS gmin, SUM(i_psfFlux) AS isum
                        FROM tessera.object WHERE refExtendedness = 0 AND r_psfFlux > 100
                        GROUP BY cell ORDER BY n DESC""").to_table().to_pandas()
    ref = reference[(reference["refExtendedness"] == 0) & (reference["r_psfFlux"] > 100)].astype({"r_psfFlux": "f8", "i_psfFlux": "f8"})
    exp = ref.groupby("cell").agg(n=("objectId", "size"), mean_r=("r_psfFlux", "mean"), gmin=("g_psfFlux", "min"), isum=("i_psfFlux", "sum"))
    assert list(t["n"]) == sorted(t["n"], reverse=True)
    got = t.set_index("cell").sort_index()
    exp = exp.sort_index()
    assert list(got.index) == list(exp.index)
    assert list(got["n"]) == list(exp["n"])
    np.testing.assert_allclose(got["mean_r"], exp["mean_r"], rtol=1e-12)
    np.testing.assert_allclose(got["gmin"], exp["gmin"], rtol=1e-7)
    np.testing.assert_allclose(got["isum"], exp["isum"], rtol=1e-9)


def test_async_gives_the_sync_answer(tap, reference):
    q = "SELECT COUNT(*) AS n, MAX(mag(g_psfFlux)) AS faintest FROM tessera.object WHERE detect_isPrimary = 1"
    t = tap.run_async(q).to_table()
    prim = reference[reference["detect_isPrimary"]]
    assert int(t["n"][0]) == len(prim)
    assert float(t["faintest"][0]) == pytest.approx(np.nanmax(mag(prim["g_psfFlux"])), rel=1e-12)
    assert tap.run_sync(q).to_table()["n"][0] == t["n"][0]


def test_tables_describe_the_catalog(tap, reference):
    tables = {t.name: t for t in tap.tables}
    assert "tessera.object" in tables and "TAP_SCHEMA.columns" in tables
    columns = {c.name: c for c in tables["tessera.object"].columns}
    assert set(reference.columns) <= {c.strip('"') for c in columns}
    assert columns["coord_ra"].unit == "deg" and "pos.eq.ra" in columns["coord_ra"].ucd
    # TAP_SCHEMA is a table like any other.
    t = tap.run_sync("SELECT column_name, unit FROM TAP_SCHEMA.columns WHERE table_name = 'tessera.object' AND unit = 'nJy'").to_table()
    assert {str(n) for n in t["column_name"]} == {c for c in reference.columns if c.endswith("Flux") or c.endswith("FluxErr")}


def test_a_join_on_distance_is_astropys_cross_match(tap, reference, centre):
    ra, dec = centre
    t = tap.run_sync(f"""SELECT a.objectId AS left_id, b.objectId AS right_id, DISTANCE(POINT(a.coord_ra, a.coord_dec), POINT(b.coord_ra, b.coord_dec)) AS d
                        FROM tessera.object AS a JOIN tessera.object_coarse AS b
                          ON DISTANCE(POINT('ICRS', a.coord_ra, a.coord_dec), POINT('ICRS', b.coord_ra, b.coord_dec)) < 2.0 / 3600
                        WHERE CONTAINS(POINT('ICRS', a.coord_ra, a.coord_dec), CIRCLE('ICRS', {ra}, {dec}, 1)) = 1""", maxrec=1_000_000).to_table()
    left = within(reference, ra, dec, 1)
    lc = SkyCoord(left["coord_ra"].to_numpy() * u.deg, left["coord_dec"].to_numpy() * u.deg)
    rc = SkyCoord(reference["coord_ra"].to_numpy() * u.deg, reference["coord_dec"].to_numpy() * u.deg)
    i, j, sep, _ = search_around_sky(lc, rc, 2 * u.arcsec)
    expected = {(int(left["objectId"].iloc[a]), int(reference["objectId"].iloc[b])): s for a, b, s in zip(i, j, sep.deg)}
    got = {(int(a), int(b)): float(d) for a, b, d in zip(t["left_id"], t["right_id"], t["d"])}
    assert len(expected) >= len(left) > 100  # every row meets itself (sharded two ways), and any neighbour
    assert set(got) == set(expected)
    assert max(abs(got[k] - expected[k]) for k in got) * 3600 < 1e-6


def test_response_formats_carry_the_same_values(cluster, alice, reference):
    q = "SELECT TOP 50 objectId, coord_dec, g_psfFlux, detect_isPrimary FROM tessera.object ORDER BY coord_dec"
    http = session(alice)
    answers = {}
    for fmt in ("votable", "votable/td", "csv", "json"):
        r = http.get(cluster.tap_url + "/sync", params={"LANG": "ADQL", "QUERY": q, "RESPONSEFORMAT": fmt})
        assert r.status_code == 200, r.text
        if fmt.startswith("votable"):
            t = parse_single_table(io.BytesIO(r.content)).to_table()
            answers[fmt] = pd.DataFrame({c: np.asarray(t[c]) for c in t.colnames})
        elif fmt == "csv":
            answers[fmt] = pd.read_csv(io.StringIO(r.text)).assign(detect_isPrimary=lambda d: d["detect_isPrimary"] == "T")
        else:
            doc = json.loads(r.text)
            answers[fmt] = pd.DataFrame(doc["data"], columns=[m["name"] for m in doc["metadata"]])
    expected = reference.sort_values("coord_dec").head(50).reset_index(drop=True)
    for fmt, got in answers.items():
        assert list(got["objectId"]) == list(expected["objectId"]), fmt
        np.testing.assert_array_equal(got["coord_dec"].to_numpy(dtype="f8"), expected["coord_dec"].to_numpy(), err_msg=fmt)
        np.testing.assert_array_equal(got["g_psfFlux"].to_numpy(dtype="f4"), expected["g_psfFlux"].to_numpy(dtype="f4"), err_msg=fmt)
        assert list(got["detect_isPrimary"].astype(bool)) == list(expected["detect_isPrimary"]), fmt


def test_maxrec_cuts_and_flags_an_overflow(tap, cluster, alice):
    r = tap.run_sync("SELECT objectId FROM tessera.object", maxrec=10)
    assert len(r) == 10
    assert r.query_status == "OVERFLOW"
    # MAXREC=0: the columns, no rows.
    z = session(alice).get(cluster.tap_url + "/sync", params={"LANG": "ADQL", "QUERY": "SELECT objectId, coord_ra FROM tessera.object", "MAXREC": "0"})
    t = parse_single_table(io.BytesIO(z.content)).to_table()
    assert z.status_code == 200 and len(t) == 0 and t.colnames == ["objectId", "coord_ra"]
    # TOP within MAXREC is no overflow.
    assert tap.run_sync("SELECT TOP 5 objectId FROM tessera.object", maxrec=10).query_status == "OK"


def error_of(response):
    assert 'value="ERROR"' in response.text, response.text[:300]
    return response.text


@pytest.mark.parametrize("query,status,message", [
    ("SELECT objectId FROM tessera.object WHERE", 400, "where a value belongs (at line 1, column 42)"),
    ("SELECT objectId FROM tessera.object UNION SELECT objectId FROM tessera.object", 400, "set operations"),
    ("SELECT objectId FROM tessera.nowhere", 400, "no table named `tessera.nowhere`"),
    ("SELECT nothing FROM tessera.object", 400, "no column `nothing` in `object`"),
    ("SELECT objectId FROM tessera.object WHERE COS(coord_dec) > 0", 400, "the function `COS` is not supported"),
    ("SELECT objectId FROM tessera.object WHERE objectId > " + "1" * 20_000, 400, "over this service's limit of 16384"),
])
def test_bad_queries_say_what_and_where(cluster, alice, query, status, message):
    r = session(alice).post(cluster.tap_url + "/sync", data={"LANG": "ADQL", "REQUEST": "doQuery", "QUERY": query})
    assert r.status_code == status
    assert message in error_of(r)


def test_bad_parameters_and_tokens_are_refused(cluster, alice):
    url = cluster.tap_url + "/sync"
    q = {"LANG": "ADQL", "QUERY": "SELECT TOP 1 objectId FROM tessera.object"}
    r = session(alice).get(url, params={**q, "MAXREC": "-1"})
    assert r.status_code == 400 and "negative" in error_of(r)
    r = session(alice).get(url, params={**q, "RESPONSEFORMAT": "parquet"})
    assert r.status_code == 400 and "RESPONSEFORMAT=parquet is not supported" in error_of(r)
    r = session(alice).get(url, params={**q, "LANG": "SQL"})
    assert r.status_code == 400 and "LANG=SQL" in error_of(r)
    r = session("tsr_" + "0" * 64).get(url, params=q)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer") and "not valid" in error_of(r)
    r = requests.get(url, params=q)
    assert r.status_code == 401 and "needs a bearer token" in error_of(r)
    # Discovery stays open to anyone.
    assert requests.get(cluster.tap_url + "/capabilities").status_code == 200


def test_async_jobs_are_their_owners_alone(cluster, alice):
    bob = session(cluster.create_token("bob"))
    r = bob.post(cluster.tap_url + "/async", data={"LANG": "ADQL", "QUERY": "SELECT COUNT(*) FROM tessera.object"}, allow_redirects=False)
    assert r.status_code == 303
    job = r.headers["Location"]
    assert bob.get(job + "/phase").text == "PENDING"
    mine = session(alice)
    assert mine.get(job).status_code == 404
    assert mine.delete(job, allow_redirects=False).status_code == 404
    assert mine.post(job + "/phase", data={"PHASE": "RUN"}, allow_redirects=False).status_code == 404
    assert bob.get(job + "/phase").text == "PENDING"
    bob.post(job + "/phase", data={"PHASE": "RUN"})
    done = bob.get(job, params={"WAIT": "30"}).text
    assert "<uws:phase>COMPLETED</uws:phase>" in done
    assert bob.delete(job, allow_redirects=False).status_code == 303
    assert bob.get(job).status_code == 404


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_a_slow_reader_does_not_grow_the_gateway(cluster, alice):
    """The answer is written in 64 KiB chunks, each when the client has taken the last: a
    client that stops reading holds the gateway to the answer and one chunk, not the whole
    encoded document. A boolean is 1 byte in the answer and `<TD>T</TD>` in TABLEDATA, so 40 of
    them make a document ten times the answer: one held whole would show."""
    columns = ", ".join(f"detect_isPrimary AS b{k}" for k in range(40))
    q = {"LANG": "ADQL", "QUERY": f"SELECT {columns} FROM tessera.object", "RESPONSEFORMAT": "votable/td", "MAXREC": "1000000"}
    pid = cluster._process.pid
    before = rss_kb(pid)
    with session(alice).get(cluster.tap_url + "/sync", params=q, stream=True) as r:
        assert r.status_code == 200
        chunks = r.iter_content(1 << 16)
        first = next(chunks)
        assert first.startswith(b"<?xml")
        time.sleep(3)  # the client stalls; the gateway must wait for it
        peak = rss_kb(pid)
        size = len(first) + sum(len(c) for c in chunks)
    grew = (peak - before) * 1024
    print(f"stalled on a {size / 1e6:.1f} MB answer: the gateway grew by {grew / 1e6:.1f} MB")
    assert size > 10e6
    assert grew < size / 2, f"the gateway grew by {grew / 1e6:.1f} MB while a client stalled on a {size / 1e6:.1f} MB answer"


@pytest.fixture(scope="module")
def anonymous_gateway(cluster, bins):
    """A second gateway, `tessera gateway --anonymous`, on the same scheduler: for clients that
    send no token (Debian's stilts 3.4 has no authentication). Its TAP UPLOAD may fetch from
    this machine (`--uploads-from-private-addresses`)."""
    with standalone_gateway(bins, cluster, "--anonymous", "--tokens", os.path.join(cluster.data, "gateway-tokens"),
                            "--uploads-from-private-addresses") as (url, _):
        yield url + "/tap"


@contextlib.contextmanager
def standalone_gateway(bins, cluster, *options):
    """`tessera gateway OPTIONS` on the cluster's scheduler, at a free loopback port: yields its
    base URL and its process once it answers, and stops it at the end (SIGTERM: a graceful
    shutdown, exit 0)."""
    import subprocess
    import urllib.request

    from tessera.cluster import _free_port

    port = _free_port()
    p = subprocess.Popen([os.path.join(bins, "tessera"), "gateway", "--scheduler", cluster.endpoint, "--key", cluster.key_path,
                          "--listen", f"127.0.0.1:{port}", *options],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/tap/availability", timeout=1):
                    break
            except OSError:
                assert p.poll() is None and time.monotonic() < deadline, p.stdout.read() if p.poll() is not None else "no answer"
                time.sleep(0.1)
        yield url, p
    finally:
        p.terminate()
        try:
            code = p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            code = p.wait()
        log = p.stdout.read()
        print(log)  # pytest shows it when the test fails
    assert code == 0, log


def test_stilts_tapquery_fetches_the_same_answer(anonymous_gateway, reference, centre, tmp_path):
    """TOPCAT's command line (stilts tapquery) as a client, sync and async."""
    import shutil
    import subprocess

    stilts = shutil.which("stilts")
    assert stilts, "stilts is needed (Debian: apt-get install stilts)"
    ra, dec = centre
    adql = (f"SELECT objectId, coord_ra FROM tessera.object "
            f"WHERE CONTAINS(POINT('ICRS', coord_ra, coord_dec), CIRCLE('ICRS', {ra}, {dec}, 0.3)) = 1")
    expected = sorted(within(reference, ra, dec, 0.3)["objectId"])
    for sync in ("true", "false"):
        out = tmp_path / f"cone-{sync}.csv"
        r = subprocess.run([stilts, "tapquery", f"tapurl={anonymous_gateway}", f"adql={adql}", f"sync={sync}", "ofmt=csv", f"out={out}"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        got = pd.read_csv(out)
        assert sorted(got["objectId"]) == expected


def test_anonymous_users_see_survey_data_only(anonymous_gateway, cluster, alice):
    tables = requests.get(anonymous_gateway + "/tables").text
    assert "tessera.object" in tables
    # A bad token is refused even where anonymous requests are let in.
    r = session("tsr_nonsense").get(anonymous_gateway + "/tables")
    assert r.status_code == 401


def test_anonymous_access_is_for_loopback_only(cluster, bins):
    import subprocess

    r = subprocess.run([os.path.join(bins, "tessera"), "gateway", "--scheduler", cluster.endpoint, "--listen", "0.0.0.0:0", "--anonymous"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "--anonymous is allowed on loopback addresses only" in r.stdout + r.stderr


def test_coverage_mocs_hold_exactly_the_rows_cells(cluster, alice, reference, tmp_path):
    """The catalog's coverage MOC, read by mocpy (FITS and JSON), against the order-6 HEALPix
    cells of every row as astropy-healpix computes them."""
    from astropy_healpix import HEALPix
    from mocpy import MOC

    order = 6
    hp = HEALPix(nside=2 ** order, order="nested")
    expected = set(hp.lonlat_to_healpix(reference["coord_ra"].to_numpy() * u.deg, reference["coord_dec"].to_numpy() * u.deg).tolist())
    base = cluster.tap_url[: -len("/tap")]
    http = session(alice)
    r = http.get(base + "/moc/object.fits", params={"ORDER": order})
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/fits"
    assert "max-age" in r.headers["Cache-Control"] and r.headers["ETag"]
    path = tmp_path / "object.fits"
    path.write_bytes(r.content)
    moc = MOC.from_fits(str(path))
    assert moc.max_order == order
    assert set(moc.flatten().tolist()) == expected
    j = http.get(base + "/moc/object.json", params={"ORDER": order})
    assert j.status_code == 200 and j.headers["Content-Type"] == "application/json"
    from_json = MOC.from_json(j.json())
    assert set(from_json.flatten().tolist()) == expected
    # Already normal: mocpy's own normal form has the same cells.
    assert j.json() == {k: v for k, v in from_json.serialize(format="json").items() if v}
    # Unchanged: 304 to a client that has it.
    assert http.get(base + "/moc/object.fits", params={"ORDER": order}, headers={"If-None-Match": r.headers["ETag"]}).status_code == 304
    assert http.get(base + "/moc/nowhere.json").status_code == 404
    assert http.get(base + "/moc/object.json", params={"ORDER": 13}).status_code == 400
    assert http.get(base + "/moc/object.png").status_code == 404


def test_open_streams_count_against_their_users_requests(cluster):
    """A request holds its user's slot until its body is written: eight event streams open
    are a user's eight requests; the ninth is refused (429) until one of them ends."""
    carol = session(cluster.create_token("carol"))
    base = cluster.tap_url[: -len("/tap")]
    streams = [carol.get(base + "/api/events", stream=True, timeout=30) for _ in range(8)]
    try:
        assert all(s.status_code == 200 for s in streams)
        refused = carol.get(cluster.tap_url + "/tables")
        assert refused.status_code == 429 and "8 requests in progress" in error_of(refused)
        # Others are not held up by carol's streams.
        assert session(cluster.create_token("dave")).get(cluster.tap_url + "/tables").status_code == 200
    finally:
        for s in streams:
            s.close()
    # The streams' slots come back once the gateway sees the clients gone (its next write).
    deadline = time.monotonic() + 15
    while carol.get(cluster.tap_url + "/tables").status_code != 200:
        assert time.monotonic() < deadline, "the closed streams still hold carol's slots"
        time.sleep(0.2)


def test_the_gateway_serves_at_most_its_requests_at_once(cluster, bins):
    """`--max-requests` bounds the requests in progress from everyone together: each user's
    share bounds one user, and this the many (each request waiting on the cluster holds a thread
    of the gateway's, and its answer is held whole)."""
    with standalone_gateway(bins, cluster, "--tokens", os.path.join(cluster.data, "gateway-tokens"), "--max-requests", "2") as (url, _):
        streams = [session(cluster.create_token(u)).get(url + "/api/events", stream=True, timeout=30) for u in ("gus", "hal")]
        ida = session(cluster.create_token("ida"))
        try:
            assert all(s.status_code == 200 for s in streams)
            refused = ida.get(url + "/tap/tables")
            assert refused.status_code == 429 and "the gateway has 2 requests in progress" in error_of(refused), refused.text
            assert refused.headers["Retry-After"] == "1"
            # A health check is still answered.
            assert requests.get(url + "/tap/availability", timeout=10).status_code == 200
        finally:
            for s in streams:
                s.close()
        deadline = time.monotonic() + 15
        while ida.get(url + "/tap/tables").status_code != 200:
            assert time.monotonic() < deadline, "the closed streams still hold the gateway's places"
            time.sleep(0.2)


def test_sync_answers_held_at_once_are_bounded(cluster, bins):
    """The gateway holds a sync answer whole until it is written: all of them together are held
    to `--max-answer-cells`. One that would pass it is stopped and refused (503, worth asking
    again), and the cells of an answer come back once it has been written or dropped."""
    import urllib.parse

    def sync(rows):  # rows × the catalog's 15 columns, as TABLEDATA (18 MB for 40,000 rows: more than the sockets hold)
        query = f"SELECT TOP {rows} * FROM tessera.object"
        return "/tap/sync?" + urllib.parse.urlencode({"LANG": "ADQL", "RESPONSEFORMAT": "votable/td", "QUERY": query})

    with standalone_gateway(bins, cluster, "--anonymous", "--max-answer-cells", "750000") as (url, _):
        # Alone, over the whole budget (the catalog's 60,000 rows): refused.
        r = requests.get(url + sync(60_000), timeout=30)
        assert r.status_code == 503 and "750000 cells" in error_of(r), r.text
        # 600,000 cells held by a client that stops reading; a second such answer does not fit.
        stalled = stalled_download(int(url.rsplit(":", 1)[1]), sync(40_000))
        try:
            r = requests.get(url + sync(40_000), timeout=30)
            assert r.status_code == 503 and "ask for fewer rows" in error_of(r), r.text[:2000]
            small = requests.get(url + sync(10), timeout=30)
            assert small.status_code == 200 and small.text.count("<TR>") == 10
        finally:
            stalled.close()
        # Its cells come back once its answer is dropped.
        deadline = time.monotonic() + 15
        while (r := requests.get(url + sync(40_000), timeout=30)).status_code != 200:
            assert time.monotonic() < deadline, "the dropped answer still holds its cells"
            time.sleep(0.2)
        assert r.text.count("<TR>") == 40_000


def test_a_blocking_wait_ends_when_its_client_leaves(cluster):
    """UWS's blocking GET (`WAIT=60`) holds its user's slot while it waits; a client that leaves
    gives it back at once, not a minute later."""
    import socket
    import urllib.parse

    token = cluster.create_token("erin")
    erin = session(token)
    created = erin.post(cluster.tap_url + "/async", data={"LANG": "ADQL", "QUERY": "SELECT COUNT(*) FROM tessera.object"},
                        allow_redirects=False)
    assert created.status_code == 303
    path = urllib.parse.urlsplit(created.headers["Location"]).path
    port = urllib.parse.urlsplit(cluster.tap_url).port
    waits = []
    for _ in range(8):  # the user's eight places, each waiting while the job is PENDING
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(f"GET {path}?WAIT=60&PHASE=PENDING HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        waits.append(s)
    time.sleep(0.5)  # all eight in (a request asked sooner could take a place first)
    r = erin.get(cluster.tap_url + "/tables")
    assert r.status_code == 429 and "8 requests in progress" in error_of(r), r.text
    for s in waits:
        s.close()
    left = time.monotonic()
    while erin.get(cluster.tap_url + "/tables").status_code != 200:
        assert time.monotonic() - left < 10, "the waits of clients that left still hold erin's places"
        time.sleep(0.05)
    print(f"places back {time.monotonic() - left:.3f} s after the clients left")


def big_hips_tree(tmp_path):
    """A HiPS folder with one tree, `big`: its properties and a 64 MiB Allsky, far more than
    loopback's socket buffers hold."""
    tree = tmp_path / "hips" / "big"
    (tree / "Norder3").mkdir(parents=True)
    (tree / "properties").write_text("hips_order = 3\n")
    with open(tree / "Norder3" / "Allsky.fits", "wb") as f:
        f.truncate(64 << 20)
    return str(tmp_path / "hips")


def stalled_download(port, path, source="127.0.0.1", forwarded=None):
    """Asks the gateway at `port` for `path` from `source`, and once it is being sent reads no
    more of it: the socket, its answer stuck in the gateway's writer. (The place of a request
    just answered is given back a moment after its client has read it all: a 429 is tried again.)"""
    import socket

    deadline = time.monotonic() + 10
    while True:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        extra = f"X-Forwarded-For: {forwarded}\r\n" if forwarded else ""
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode())
        status = s.recv(12)
        if status == b"HTTP/1.1 200":
            return s
        s.close()
        assert status == b"HTTP/1.1 429" and time.monotonic() < deadline, status
        time.sleep(0.05)


def test_requests_without_a_token_are_shared_by_client_address(cluster, bins, tmp_path):
    """Public HiPS trees (`--public-hips`) and VOSI are served without a token. Each client
    address gets a share of its own (here one request at a time), all addresses together a bound
    (here three), and `X-Forwarded-For` names the client only when a trusted proxy sends it. A
    client holds its place while its answer is being sent: here it stops reading a 64 MiB file."""
    import http.client

    token = cluster.create_token("alice")
    with standalone_gateway(bins, cluster, "--hips-dir", big_hips_tree(tmp_path), "--public-hips",
                            "--tokens", os.path.join(cluster.data, "gateway-tokens"), "--max-requests-per-user", "1",
                            "--max-requests-without-token", "3", "--trusted-proxy", "127.0.0.1") as (url, _):
        port = int(url.rsplit(":", 1)[1])

        def stall(source="127.0.0.1", forwarded=None):
            return stalled_download(port, "/hips/big/Norder3/Allsky.fits", source, forwarded)

        def ask(source="127.0.0.1", forwarded=None, token=None):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
            headers = {"X-Forwarded-For": forwarded} if forwarded else {}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            c.request("GET", "/hips/big/properties", headers=headers)
            r = c.getresponse()
            body = r.read().decode()
            c.close()
            return r.status, body, r.headers.get("Retry-After")

        def until(status, **who):
            deadline = time.monotonic() + 10
            while (got := ask(**who))[0] != status:
                assert time.monotonic() < deadline, f"{who}: still {got[0]}, not {status}: {got[1]}"
                time.sleep(0.05)
            return got

        assert ask(forwarded="203.0.113.5")[0] == 200
        held = []
        try:
            held.append(stall(forwarded="203.0.113.5"))
            _, body, retry = until(429, forwarded="203.0.113.5")
            assert "the address 203.0.113.5 has 1 requests without a token in progress" in body and retry == "1"
            # Another client behind the proxy has its own place; one that writes a client of its
            # own to the left of the proxy's entry is still the client the proxy saw.
            assert ask(forwarded="203.0.113.6")[0] == 200
            assert ask(forwarded="203.0.113.6, 203.0.113.5")[0] == 429
            # Not from the trusted proxy, the header is ignored: the client is its address.
            held.append(stall(source="127.0.0.2", forwarded="203.0.113.9"))
            _, body, _ = until(429, source="127.0.0.2", forwarded="203.0.113.7")
            assert "the address 127.0.0.2 has 1" in body
            assert ask(source="127.0.0.3")[0] == 200
            # Three held: every address without a token now waits; a user with a token does not.
            held.append(stall(source="127.0.0.3"))
            status, body, retry = until(429, source="127.0.0.4")
            assert "the gateway has 3 requests without a token in progress" in body and retry == "1"
            # VOSI availability (a load balancer's health check) takes no place.
            assert requests.get(url + "/tap/availability", timeout=10).status_code == 200
            assert ask(source="127.0.0.4", token=token)[0] == 200
        finally:
            # A client that goes away gives its place back.
            for s in held:
                s.close()
        until(200, source="127.0.0.4")
        until(200, forwarded="203.0.113.5")


def test_a_sync_query_whose_client_leaves_is_cancelled(cluster, client, alice, function_dir):
    """A sync request's question is cancelled on the cluster once its client closes the
    connection. (It ran to its end, however long, holding the user's places and the workers; one
    over the interactive budget was even asked again as normal.) Here every worker thread is kept
    busy, so the question waits on the cluster while its client leaves."""
    import socket
    import urllib.parse

    marks = function_dir / "pids"
    marks.mkdir()

    def slow(df, marks=str(marks)):
        open(os.path.join(marks, str(os.getpid())), "w").close()
        time.sleep(120)

    busy = client._conn.submit(client.catalog("object")._python_plan(slow, None, ["coord_ra"], 300), name="busy",
                               task_timeout=330, direct=True)
    try:
        deadline = time.monotonic() + 60
        while len(os.listdir(marks)) < 4:  # the session's cluster: 2 workers of 2 threads
            assert time.monotonic() < deadline, "the workers never all ran the busy function"
            time.sleep(0.02)

        def running_tap_job():
            return next((j for j in client.status().jobs if j.name == "tap alice" and j.state == 0), None)

        port = int(urllib.parse.urlsplit(cluster.tap_url).port)
        s = socket.create_connection(("127.0.0.1", port))
        query = urllib.parse.quote("SELECT AVG(coord_ra) FROM tessera.object")
        s.sendall(f"GET /tap/sync?LANG=ADQL&QUERY={query} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {alice}\r\n\r\n".encode())
        deadline = time.monotonic() + 30
        while (job := running_tap_job()) is None:
            assert time.monotonic() < deadline, "the sync query's job never showed as running"
            time.sleep(0.02)
        left = time.monotonic()
        s.close()
        while (ended := next(j for j in client.status().jobs if j.job_id == job.job_id)).state == 0:
            assert time.monotonic() - left < 10, "the job of a client that left still runs 10 s later"
            time.sleep(0.02)
        print(f"job {job.job_id} ended {time.monotonic() - left:.3f} s after its client left")
        assert ended.state == 3, ended  # JOB_CANCELLED
        assert client.status().jobs_abandoned == 0
        # The gateway's access log tells it from its own failures: 499, as nginx logs a client that left.
        deadline = time.monotonic() + 5
        while not any("path=/tap/sync" in line and "status=499" in line and "user=alice" in line for line in cluster.log):
            assert time.monotonic() < deadline, "\n".join(cluster.log[-20:])
            time.sleep(0.05)
    finally:
        client._conn.cancel(busy.job_id)
    # The busy function's executors are killed and the workers free again.
    pids = [int(p) for p in os.listdir(marks)]
    deadline = time.monotonic() + 30
    while any(alive(p) for p in pids) or any(j.state == 0 for j in client.status().jobs):
        assert time.monotonic() < deadline, "the workers were still busy 30 s after the busy job was cancelled"
        time.sleep(0.05)


def test_a_client_that_stops_reading_is_cut_off(cluster, bins, tmp_path):
    """A client that leaves part of an answer untaken for `--send-timeout-seconds` has its
    connection closed and its request's place given back. (Hummingbird's idle timeout does not
    run while an answer is being sent: such a client held its place for good.)"""
    with standalone_gateway(bins, cluster, "--hips-dir", big_hips_tree(tmp_path), "--public-hips",
                            "--max-requests-per-user", "1", "--send-timeout-seconds", "2") as (url, _):
        stalled = stalled_download(int(url.rsplit(":", 1)[1]), "/hips/big/Norder3/Allsky.fits")
        try:
            assert requests.get(url + "/hips/big/properties", timeout=10).status_code == 429
            deadline = time.monotonic() + 30
            while requests.get(url + "/hips/big/properties", timeout=10).status_code != 200:
                assert time.monotonic() < deadline, "the stalled download still holds its place"
                time.sleep(0.2)
            # Its connection was closed: what it can still read ends well before the 64 MiB.
            stalled.settimeout(10)
            got = 0
            try:
                while chunk := stalled.recv(1 << 20):
                    got += len(chunk)
            except ConnectionResetError:
                pass
            assert got < 64 << 20
        finally:
            stalled.close()


def test_a_stopping_gateway_waits_no_longer_than_its_grace(cluster, bins, tmp_path):
    """SIGTERM lets the requests in progress finish for `--shutdown-grace-seconds`, then closes
    them: a client that stopped reading does not hold the gateway up (it did until the idle
    timeout, a minute, past a Kubernetes pod's 30 s)."""
    import signal

    with standalone_gateway(bins, cluster, "--hips-dir", big_hips_tree(tmp_path), "--public-hips",
                            "--shutdown-grace-seconds", "2") as (url, p):
        stalled = stalled_download(int(url.rsplit(":", 1)[1]), "/hips/big/Norder3/Allsky.fits")
        start = time.monotonic()
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=50)
        took = time.monotonic() - start
        stalled.close()
    assert took < 20, f"the gateway took {took:.1f} s to stop with a stalled client, past its 2 s grace and 5 s to cancel"


def test_a_public_url_is_what_links_name(cluster, bins):
    """Behind a proxy, `--public-url` is the address in capabilities and in UWS redirects; a
    request's Host never is, unless it is a plain host[:port]."""
    with standalone_gateway(bins, cluster, "--anonymous", "--public-url", "https://archive.example/tessera/") as (url, _):
        caps = requests.get(url + "/tap/capabilities", timeout=10)
        assert "<accessURL use=\"base\">https://archive.example/tessera/tap</accessURL>" in caps.text
        r = requests.post(url + "/tap/async", data={"LANG": "ADQL", "QUERY": "SELECT COUNT(*) FROM tessera.object"}, allow_redirects=False)
        assert r.status_code == 303 and r.headers["Location"].startswith("https://archive.example/tessera/tap/async/")
    # Without one, a Host that is not a plain host[:port] never reaches a link.
    evil = requests.get(cluster.tap_url + "/capabilities", headers={"Host": "evil.example/x\"><y"})
    assert "evil.example" not in evil.text
