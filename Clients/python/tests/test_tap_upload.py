"""TAP UPLOAD as VO clients send it: pyvo (sync and async, inline TABLEDATA), plain HTTP with
astropy-written BINARY and BINARY2, by URL, and stilts tapquery; every answer checked against
astropy's search_around_sky on the same rows, and every refusal against its message."""
import http.server
import io
import os
import shutil
import subprocess
import threading

import astropy.units as u
import numpy as np
import pytest
import pyvo
import requests
from astropy.coordinates import SkyCoord, search_around_sky
from astropy.io.votable import from_table, parse_single_table
from astropy.table import MaskedColumn, Table

from test_tap import anonymous_gateway, error_of, session, within  # noqa: F401 (a fixture)

RADIUS_ARCSEC = 1.0


@pytest.fixture(scope="module")
def carol(cluster):
    return cluster.create_token("carol")


@pytest.fixture(scope="module")
def sources(reference):
    """"My sources": 300 survey rows near the middle of the sky covered, each moved by up to
    0.8″, and 100 positions anywhere in the region; a name each, a flux with NULLs, a short
    integer with NULLs."""
    rng = np.random.default_rng(11)
    ra0, dec0 = float(reference["coord_ra"].median()), float(reference["coord_dec"].median())
    near = within(reference, ra0, dec0, 1.0).sample(300, random_state=11)
    step = rng.uniform(0, 0.8, len(near)) / 3600
    angle = rng.uniform(0, 2 * np.pi, len(near))
    ra = np.concatenate([near["coord_ra"].to_numpy() + step * np.cos(angle) / np.cos(np.radians(dec0)),
                         rng.uniform(ra0 - 1, ra0 + 1, 100)])
    dec = np.concatenate([near["coord_dec"].to_numpy() + step * np.sin(angle), rng.uniform(dec0 - 1, dec0 + 1, 100)])
    n = len(ra)
    t = Table()
    t["src_id"] = np.arange(n, dtype=np.int32)
    t["name"] = [f"X-{i:05d}" for i in range(n)]
    t["ra"] = ra * u.deg
    t["dec"] = dec * u.deg
    t["flux"] = MaskedColumn(rng.lognormal(3, 1, n), mask=rng.random(n) < 0.1, unit="mJy")
    t["flag"] = MaskedColumn(rng.integers(0, 100, n).astype(np.int16), mask=rng.random(n) < 0.1)
    return t


def votable_bytes(table, fmt):
    out = io.BytesIO()
    doc = from_table(table)
    if fmt == "binary":
        # BINARY has no NULL flags: an integer's NULL is the value its VALUES element names.
        for field in doc.get_first_table().fields:
            if field.datatype in ("short", "int", "long"):
                field.values.null = -32768
    doc.to_xml(out, tabledata_format=fmt)
    return out.getvalue()


def expected_pairs(sources, reference):
    s = SkyCoord(np.asarray(sources["ra"]) * u.deg, np.asarray(sources["dec"]) * u.deg)
    r = SkyCoord(reference["coord_ra"].to_numpy() * u.deg, reference["coord_dec"].to_numpy() * u.deg)
    i, j, sep, _ = search_around_sky(s, r, RADIUS_ARCSEC * u.arcsec)
    return {(int(sources["src_id"][a]), int(reference["objectId"].iloc[b])): d for a, b, d in zip(i, j, sep.deg)}


JOIN = f"""SELECT u.src_id, u.name, o.objectId, DISTANCE(POINT(u.ra, u.dec), POINT(o.coord_ra, o.coord_dec)) AS d
           FROM TAP_UPLOAD.mine AS u JOIN tessera.object AS o
             ON DISTANCE(POINT('ICRS', u.ra, u.dec), POINT('ICRS', o.coord_ra, o.coord_dec)) < {RADIUS_ARCSEC} / 3600.0"""


def check_join(got, sources, reference):
    expected = expected_pairs(sources, reference)
    assert len(expected) >= 300  # every moved row meets its own
    pairs = {(int(a), int(b)): float(d) for a, b, d in zip(got["src_id"], got["objectId"], got["d"])}
    assert set(pairs) == set(expected)
    assert max(abs(pairs[k] - expected[k]) for k in pairs) * 3600 < 1e-6
    # The text kept by the gateway comes back with its own row.
    assert all(str(n) == f"X-{int(i):05d}" for i, n in zip(got["src_id"], got["name"]))


def test_pyvo_uploads_a_table_and_cross_matches_it_with_the_survey(cluster, carol, sources, reference):
    tap = pyvo.dal.TAPService(cluster.tap_url, session=session(carol))
    got = tap.run_sync(JOIN, uploads={"mine": sources}, maxrec=100_000).to_table()
    check_join(got, sources, reference)
    # Async: the same answer (the job keeps the upload until it runs).
    job = tap.run_async(JOIN, uploads={"mine": sources}, maxrec=100_000).to_table()
    check_join(job, sources, reference)
    # The stored upload is the query's alone: not among the user's tables.
    assert "tapupload" not in session(carol).get(cluster.tap_url + "/tables").text


@pytest.mark.parametrize("fmt", ["binary2", "binary", "tabledata"])
def test_each_votable_serialization_round_trips(cluster, carol, sources, fmt):
    r = session(carol).post(cluster.tap_url + "/sync",
                            data={"LANG": "ADQL", "QUERY": "SELECT src_id, name, flux, flag, ra FROM TAP_UPLOAD.t", "UPLOAD": "t,param:table1"},
                            files={"table1": ("t.xml", votable_bytes(sources, fmt))})
    assert r.status_code == 200, r.text[:500]
    got = parse_single_table(io.BytesIO(r.content)).to_table()
    got.sort("src_id")
    assert list(got["src_id"]) == list(sources["src_id"])
    assert [str(n) for n in got["name"]] == list(sources["name"])
    np.testing.assert_array_equal(np.asarray(got["ra"], dtype="f8"), np.asarray(sources["ra"]))
    assert got["flux"].unit == u.mJy
    flux = np.ma.filled(np.ma.asarray(got["flux"], dtype="f8"), np.nan)
    np.testing.assert_array_equal(np.isnan(flux), sources["flux"].mask)
    np.testing.assert_array_equal(flux[~sources["flux"].mask], sources["flux"].data[~sources["flux"].mask])
    # An integer with NULLs is stored as a double (NULL is NaN), as every ingest stores it.
    flag = np.ma.filled(np.ma.asarray(got["flag"], dtype="f8"), np.nan)
    np.testing.assert_array_equal(np.isnan(flag), sources["flag"].mask)
    np.testing.assert_array_equal(flag[~sources["flag"].mask], sources["flag"].data[~sources["flag"].mask])


def test_an_upload_by_url_is_fetched(anonymous_gateway, cluster, carol, sources, reference, tmp_path):  # noqa: F811
    """From this machine's HTTP server: fetched by the gateway allowed to reach private
    addresses, refused by the one that is not (the default, even listening on loopback)."""
    (tmp_path / "mine.xml").write_bytes(votable_bytes(sources, "binary2"))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(tmp_path), **k)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/mine.xml"
        r = requests.post(anonymous_gateway + "/sync", data={"LANG": "ADQL", "QUERY": JOIN, "UPLOAD": f"mine,{url}", "MAXREC": "100000"})
        assert r.status_code == 200, r.text[:500]
        check_join(parse_single_table(io.BytesIO(r.content)).to_table(), sources, reference)
        missing = requests.post(anonymous_gateway + "/sync", data={"LANG": "ADQL", "QUERY": JOIN, "UPLOAD": f"mine,{url}.nothing"})
        assert missing.status_code == 400 and "the server answered 404" in error_of(missing)
        for where in (url, "http://169.254.169.254/latest/meta-data", "http://[::1]:1/x"):
            refused = session(carol).post(cluster.tap_url + "/sync", data={"LANG": "ADQL", "QUERY": JOIN, "UPLOAD": f"mine,{where}"})
            assert refused.status_code == 400 and "an address that is not public" in error_of(refused), where
    finally:
        server.shutdown()


def test_stilts_tapquery_uploads_a_table(anonymous_gateway, sources, reference, tmp_path):  # noqa: F811
    stilts = shutil.which("stilts")
    assert stilts, "stilts is needed (Debian: apt-get install stilts)"
    up = tmp_path / "mine.vot"
    up.write_bytes(votable_bytes(sources, "tabledata"))
    out = tmp_path / "matched.csv"
    r = subprocess.run([stilts, "tapquery", f"tapurl={anonymous_gateway}", f"adql={JOIN}", "nupload=1", f"upload1={up}", "upname1=mine",
                        "maxrec=100000", "ofmt=csv", f"out={out}"], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    got = Table.read(out, format="ascii.csv")
    check_join(got, sources, reference)


def test_an_upload_without_positions_is_queried_alone(cluster, carol):
    t = Table({"k": np.arange(5, dtype=np.int64), "label": ["a", "b", "c", "d", "e"], "x": np.array([0.5, 1.5, 2.5, 3.5, 4.5])})
    tap = pyvo.dal.TAPService(cluster.tap_url, session=session(carol))
    got = tap.run_sync("SELECT label, x FROM TAP_UPLOAD.plain WHERE x > 1 ORDER BY x DESC", uploads={"plain": t}).to_table()
    assert [str(s) for s in got["label"]] == ["e", "d", "c", "b"]
    assert list(got["x"]) == [4.5, 3.5, 2.5, 1.5]


def post_upload(cluster, token, query, body, upload="t,param:t"):
    return session(token).post(cluster.tap_url + "/sync", data={"LANG": "ADQL", "QUERY": query, "UPLOAD": upload},
                               files={"t": ("t.xml", body)})


def test_bad_uploads_say_what_is_wrong(cluster, carol, sources):
    survey_join = JOIN.replace("TAP_UPLOAD.mine", "TAP_UPLOAD.t")
    no_positions = sources.copy()
    no_positions.rename_columns(["ra", "dec"], ["x", "y"])
    r = post_upload(cluster, carol, survey_join.replace("u.ra", "u.x").replace("u.dec", "u.y"), votable_bytes(no_positions, "binary2"))
    assert r.status_code == 400 and "no position columns" in error_of(r)

    nan = sources.copy()
    nan["dec"][7] = np.nan
    r = post_upload(cluster, carol, survey_join, votable_bytes(nan, "tabledata"))
    assert r.status_code == 400 and "row 8: dec is nan" in error_of(r)

    r = post_upload(cluster, carol, survey_join, votable_bytes(sources, "binary2"), upload="t,param:elsewhere")
    assert r.status_code == 400 and "names the part `elsewhere`, which the request does not have" in error_of(r)

    r = post_upload(cluster, carol, "SELECT src_id FROM TAP_UPLOAD.t WHERE name = 'X-00001'", votable_bytes(sources, "binary2"))
    assert r.status_code == 400 and "is text: it can be selected, but not computed with" in error_of(r)

    r = post_upload(cluster, carol, "SELECT * FROM TAP_UPLOAD.t", b'<?xml version="1.0"?><!DOCTYPE v [<!ENTITY a "aaaa">]><VOTABLE/>')
    assert r.status_code == 400 and "document type declaration" in error_of(r)

    r = post_upload(cluster, carol, "SELECT * FROM TAP_UPLOAD.t", b"<VOTABLE><RESOURCE><TABLE><FIELD name='a' datatype='int'/><DATA><TABLEDATA><TR><TD>1</TD>")
    assert r.status_code == 400 and "not well-formed XML" in error_of(r)

    r = post_upload(cluster, carol, "SELECT * FROM TAP_UPLOAD.t", votable_bytes(sources, "binary2"), upload="t,file:///etc/passwd")
    assert r.status_code == 400 and "an http(s) URL" in error_of(r)

    r = post_upload(cluster, carol, "SELECT * FROM TAP_UPLOAD.other", votable_bytes(sources, "binary2"))
    assert r.status_code == 400 and "no table named `TAP_UPLOAD.other`: the request's UPLOAD has `t`" in error_of(r)
