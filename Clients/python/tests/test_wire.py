"""The wire on its own: the committed protobuf modules are current, frames decode as the Swift
side encodes them, and row columns are read in place from the received bytes."""
import filecmp
import os
import shutil
import subprocess

import lz4.block
import numpy as np
import pytest

from tessera import _wire
from tessera.errors import ProtocolError
from tessera.v1 import catalog_pb2, tessera_pb2

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
PROTOS = ["tessera/v1/tessera.proto", "tessera/v1/storage.proto", "tessera/v1/catalog.proto"]


@pytest.mark.skipif(shutil.which("protoc") is None, reason="protoc is not installed (apt-get install protobuf-compiler)")
def test_committed_python_protos_are_current(tmp_path):
    subprocess.run(["protoc", f"--python_out={tmp_path}", "-I", os.path.join(ROOT, "Protos"),
                    *[os.path.join(ROOT, "Protos", p) for p in PROTOS]], check=True)
    committed = os.path.join(ROOT, "Clients", "python", "tessera", "v1")
    for name in ["tessera_pb2.py", "storage_pb2.py", "catalog_pb2.py"]:
        assert filecmp.cmp(tmp_path / "tessera" / "v1" / name, os.path.join(committed, name), shallow=False), (
            f"Clients/python/tessera/v1/{name} is stale: run scripts/generate-protos.sh")


def _rows_partial(n=1000):
    p = catalog_pb2.CatalogPartial(shards=1, rows_scanned=n + 5, rows_matched=n)
    p.rows.names.extend(["x", "id", "flag"])
    rng = np.random.default_rng(1)
    x, ids, flags = rng.normal(size=n), rng.integers(-2**62, 2**62, n), rng.random(n) < 0.3
    p.rows.columns.add().doubles.values.extend(x.tolist())
    p.rows.columns.add().int64s.values.extend(ids.tolist())
    p.rows.columns.add().bools.values.extend(flags.tolist())
    p.rows.index.extend(range(n))
    return p, x, ids, flags


def test_rows_are_read_in_place():
    p, x, ids, flags = _rows_partial()
    buf = memoryview(p.SerializeToString())
    shards, scanned, matched, names, cols = _wire.read_rows(buf)
    assert (shards, scanned, matched) == (1, 1005, 1000)
    assert names == ["x", "id", "flag"]
    np.testing.assert_array_equal(cols[0], x)
    np.testing.assert_array_equal(cols[1], ids)
    np.testing.assert_array_equal(cols[2], flags)
    assert cols[2].dtype == np.bool_
    for c in cols:  # views of the received bytes, not copies
        assert not c.flags.owndata
        assert np.shares_memory(c, np.frombuffer(buf, dtype=np.uint8))


def test_empty_and_missing_columns():
    p = catalog_pb2.CatalogPartial(shards=1)
    p.rows.names.append("x")
    p.rows.columns.add().doubles.SetInParent()
    _, _, _, names, cols = _wire.read_rows(memoryview(p.SerializeToString()))
    assert names == ["x"] and len(cols[0]) == 0


def test_truncated_answers_are_refused():
    p, *_ = _rows_partial(10)
    data = p.SerializeToString()
    with pytest.raises(ProtocolError):
        _wire.read_rows(memoryview(data[:-3]))


def test_frames_decode_raw_and_lz4():
    raw = np.arange(10000, dtype="<i8").tobytes()
    env = tessera_pb2.Envelope(version=1)
    env.ping.nonce = 1
    a = env.frames.add()
    a.codec, a.raw_length = tessera_pb2.CODEC_RAW, len(raw)
    b = env.frames.add()
    b.codec, b.raw_length = tessera_pb2.CODEC_LZ4, len(raw)
    packed = lz4.block.compress(raw, store_size=False)
    _, frames = _wire.decode([env.SerializeToString(), raw, packed])
    assert bytes(frames[0]) == raw and bytes(frames[1]) == raw
    b.raw_length = len(raw) + 1
    with pytest.raises(ProtocolError):
        _wire.decode([env.SerializeToString(), raw, packed])
    b.raw_length = 1 << 40
    with pytest.raises(ProtocolError, match="over the limit"):
        _wire.decode([env.SerializeToString(), raw, packed])


def test_other_versions_are_refused():
    env = tessera_pb2.Envelope(version=2)
    env.ping.nonce = 1
    with pytest.raises(ProtocolError, match="version 2"):
        _wire.decode([env.SerializeToString()])


def test_a_collect_sink_places_batches_in_shard_order_and_closes_gaps():
    from tessera.client import _RowSink

    rng = np.random.default_rng(3)
    bounds = [5, 0, 7, 4]
    # Batches arrive out of order; shard 2 returned fewer rows than it holds (a filter).
    batches = {t: [rng.integers(0, 1 << 60, size=n), rng.random(n).astype(np.float32)]
               for t, n in [(3, 4), (0, 5), (2, 3)]}
    sink = _RowSink(bounds, batches[3])
    for t in (3, 0, 2):
        assert sink.put(t, batches[t])
    got = sink.columns()
    for k in range(2):
        expected = np.concatenate([batches[t][k] for t in (0, 2, 3)])
        assert got[k].dtype == expected.dtype
        assert np.array_equal(got[k], expected)


def test_a_collect_sink_refuses_what_does_not_fit():
    from tessera.client import _RowSink

    sink = _RowSink([2, 2], [np.zeros(2)])
    assert not sink.put(0, [np.zeros(3)])             # more rows than the shard holds
    assert not sink.put(5, [np.zeros(1)])             # no such shard task
    assert not sink.put(1, [np.zeros(1, dtype=np.int64)])  # another type than the first batch
    assert sink.put(1, [np.ones(1)])
    assert not sink.put(1, [np.ones(1)])              # twice
    assert [(t, [c.tolist() for c in cols]) for t, cols in sink.batches()] == [(1, [[1.0]])]


def test_the_allocator_is_tuned_unless_told_not_to():
    import sys

    code = "from tessera._memory import tune_allocator; print(tune_allocator())"
    tuned = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    left = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "TESSERA_MALLOC": "default"}).stdout.strip()
    assert (tuned, left) == ("True", "False")
