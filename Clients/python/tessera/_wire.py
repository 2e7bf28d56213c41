"""The wire: multipart ZeroMQ messages of a protobuf `Envelope` header and bulk frames.

Frame 0 is the `Envelope`; frames 1..n are raw little-endian arrays, or LZ4 blocks of them, as
`Envelope.frames` says (the same encoding as the Swift side's `WireProtocol`).

Row results are read without a per-row Python loop: a `CatalogPartial`'s row columns are packed
protobuf fields, whose payload *is* a little-endian array, so `read_rows` walks the few field
tags of the message and hands each column's bytes to `numpy.frombuffer` in place.
"""
from __future__ import annotations

import numpy as np

from .errors import ProtocolError
from .v1 import catalog_pb2, tessera_pb2

VERSION = 1
#: Largest bulk frame accepted once decoded (as the Swift side).
MAX_FRAME_BYTES = 1 << 31

Envelope = tessera_pb2.Envelope


def encode(envelope: tessera_pb2.Envelope, frames=()) -> list:
    """The parts of one message, header first (bulk frames are sent raw)."""
    envelope.version = VERSION
    del envelope.frames[:]
    parts = [b""]
    for f in frames:
        info = envelope.frames.add()
        info.codec = tessera_pb2.CODEC_RAW
        info.raw_length = len(f)
        parts.append(f)
    parts[0] = envelope.SerializeToString()
    return parts


def decode_header(header) -> tessera_pb2.Envelope:
    env = tessera_pb2.Envelope()
    try:
        env.ParseFromString(bytes(header))
    except Exception as e:  # noqa: BLE001 - protobuf raises its own DecodeError
        raise ProtocolError(f"a message header that is not a Tessera envelope: {e}") from None
    if env.version != VERSION:
        raise ProtocolError(f"the scheduler speaks protocol version {env.version}; this client speaks {VERSION}")
    if env.WhichOneof("body") is None:
        raise ProtocolError("a message with no body")
    return env


def decode(parts):
    """Header and bulk frames (memoryviews, decompressed where the header says LZ4).

    `parts` are pyzmq frames (received with copy=False) or bytes; raw frames stay in the
    received buffer, uncopied."""
    if not parts:
        raise ProtocolError("an empty message")
    env = decode_header(_view(parts[0]))
    bulk = parts[1:]
    if len(env.frames) != len(bulk):
        raise ProtocolError(f"the header declares {len(env.frames)} bulk frames, {len(bulk)} came")
    frames = []
    for i, (info, part) in enumerate(zip(env.frames, bulk)):
        view = _view(part)
        if info.raw_length > MAX_FRAME_BYTES:
            raise ProtocolError(f"frame {i} declares {info.raw_length} bytes, over the limit of {MAX_FRAME_BYTES}")
        if info.codec == tessera_pb2.CODEC_RAW:
            if len(view) != info.raw_length:
                raise ProtocolError(f"raw frame {i} has {len(view)} bytes, its header says {info.raw_length}")
            frames.append(view)
        elif info.codec == tessera_pb2.CODEC_LZ4:
            import lz4.block

            try:
                data = lz4.block.decompress(view, uncompressed_size=info.raw_length)
            except Exception as e:  # noqa: BLE001 - lz4 raises LZ4BlockError
                raise ProtocolError(f"frame {i} is not a valid LZ4 block: {e}") from None
            if len(data) != info.raw_length:
                raise ProtocolError(f"frame {i} decompressed to {len(data)} bytes, its header says {info.raw_length}")
            frames.append(memoryview(data))
        else:
            raise ProtocolError(f"frame {i} has an unknown codec {info.codec}")
    return env, frames


def _view(part) -> memoryview:
    buf = getattr(part, "buffer", None)
    return buf if buf is not None else memoryview(part)


def values(infos, frames):
    """The (task index, bytes view, partial) of each value described by `infos` (a JobResults'
    or a FetchReply's `values`)."""
    out = []
    for v in infos:
        if v.frame >= len(frames):
            raise ProtocolError(f"a value in frame {v.frame} of a message of {len(frames)} frames")
        f = frames[v.frame]
        if v.offset + v.length > len(f):
            raise ProtocolError(f"a value at {v.offset}+{v.length} past the end of its {len(f)}-byte frame")
        out.append((v.key & 0xFFFFFFFF, f[v.offset: v.offset + v.length], v.partial))
    return out


# ---------------------------------------------------------------------------------------------
# Reading a CatalogPartial's rows in place

_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5


def _varint(buf, pos: int):
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtocolError("a truncated varint in a catalog answer")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtocolError("an over-long varint in a catalog answer")


def _fields(buf, start: int, end: int):
    """(field number, wire type, value or (start, end)) of each field in buf[start:end]."""
    pos = start
    while pos < end:
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == _WIRE_VARINT:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire == _WIRE_LEN:
            n, pos = _varint(buf, pos)
            if pos + n > end:
                raise ProtocolError("a field runs past the end of its catalog answer")
            yield number, wire, (pos, pos + n)
            pos += n
        elif wire == _WIRE_I64:
            pos += 8
        elif wire == _WIRE_I32:
            pos += 4
        else:
            raise ProtocolError(f"wire type {wire} in a catalog answer")
    if pos != end:
        raise ProtocolError("a field runs past the end of its catalog answer")


#: RowColumn's oneof fields: 1 doubles (packed double), 2 int64s (packed sfixed64), 3 bools,
#: 4 floats (packed float: a stored Float32 column).
_COLUMN_DTYPES = {1: np.dtype("<f8"), 2: np.dtype("<i8"), 3: np.dtype("u1"), 4: np.dtype("<f4")}


def _column(buf, start: int, end: int) -> np.ndarray:
    for number, wire, span in _fields(buf, start, end):
        if wire != _WIRE_LEN or number not in _COLUMN_DTYPES:
            continue
        dtype = _COLUMN_DTYPES[number]
        chunks = [np.frombuffer(buf[a:b], dtype=dtype) for n, w, (a, b) in _fields(buf, *span) if n == 1 and w == _WIRE_LEN]
        if len(chunks) > 1:  # a writer may split a packed field; the Swift side never does
            arr = np.concatenate(chunks)
        else:
            arr = chunks[0] if chunks else np.empty(0, dtype=dtype)
        return arr.view(np.bool_) if number == 3 else arr
    return np.empty(0, dtype="<f8")


def read_rows(buf: memoryview):
    """A `CatalogPartial`'s counters and its rows as numpy arrays viewing `buf` (no copy).

    Returns (shards, rows_scanned, rows_matched, names, columns)."""
    counters = {1: 0, 2: 0, 3: 0}
    names, columns = [], []
    for number, wire, value in _fields(buf, 0, len(buf)):
        if wire == _WIRE_VARINT and number in counters:
            counters[number] = value
        elif number == 10 and wire == _WIRE_LEN:
            for n, w, span in _fields(buf, *value):
                if n == 1 and w == _WIRE_LEN:
                    names.append(bytes(buf[span[0]:span[1]]).decode("utf-8"))
                elif n == 2 and w == _WIRE_LEN:
                    columns.append(_column(buf, *span))
    if len(names) != len(columns) or len({len(c) for c in columns}) > 1:
        raise ProtocolError("a row batch whose columns differ in number or length")
    return counters[1], counters[2], counters[3], names, columns


def parse_partial(buf) -> catalog_pb2.CatalogPartial:
    p = catalog_pb2.CatalogPartial()
    try:
        p.ParseFromString(bytes(buf))
    except Exception as e:  # noqa: BLE001
        raise ProtocolError(f"a value that is not a catalog answer: {e}") from None
    return p


def read_counters(buf: memoryview):
    """A `CatalogPartial`'s (shards, rows_scanned, rows_matched), skipping everything else."""
    counters = {1: 0, 2: 0, 3: 0}
    for number, wire, value in _fields(buf, 0, len(buf)):
        if wire == _WIRE_VARINT and number in counters:
            counters[number] = value
    return counters[1], counters[2], counters[3]
