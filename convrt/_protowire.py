"""Protobuf wire-format walking for ONNX models: find the large ``raw_data`` of graph initializers.

``strip_model(reader)`` walks ModelProto -> graph (field 7) -> initializer (GraphProto field 5)
-> raw_data (TensorProto field 9) and returns a serialized *reduced* model with every large
raw_data field removed (enclosing length prefixes re-encoded) plus, per initializer in order,
``(offset, length)`` of its removed payload (or None where the tensor was left alone).  The
reduced message is small, so protobuf parses it quickly and the weights are read once, straight
into their final arrays.

Everything is bounds-checked against the enclosing message; anything the walker does not fully
understand (groups, field 0, a truncated varint, a length past the end, the graph given twice,
an initializer field with a non-length wire type) raises :class:`Malformed`, and the caller falls
back to the ordinary full parse, which then says what is wrong.  Only raw_data's framing is
interpreted; all other bytes are copied through verbatim, so the reduced message parses iff the
original does (raw_data is an opaque ``bytes`` field).
"""

from __future__ import annotations

import os

# field numbers (onnx.proto3 / onnx-ml.proto; checked by tests/test_loading.py)
MODEL_GRAPH = 7
GRAPH_INITIALIZER = 5
TENSOR_RAW_DATA = 9

WIRE_VARINT, WIRE_FIXED64, WIRE_LEN, WIRE_FIXED32 = 0, 1, 2, 5
STRIP_MIN = 1024  # raw_data shorter than this stays in the protobuf


class Malformed(Exception):
    """The bytes are not what the walker can vouch for; use the ordinary parse."""


class BytesReader:
    """Random access to an in-memory serialized model (no copy of the whole)."""

    def __init__(self, data):
        self.mv = memoryview(data).cast("B")
        self.size = len(self.mv)

    def get(self, a: int, b: int):
        return self.mv[a:b]

    def readinto(self, buf, offset: int) -> None:
        buf[:] = self.mv[offset:offset + len(buf)]


class FileReader:
    """Random access to a model file through pread, with a small read-ahead window.

    No mmap: a model file rewritten in place while a session lives must neither change its
    weights nor kill the process with SIGBUS.  A short read (the file shrank) is Malformed.
    """

    WINDOW = 1 << 20

    def __init__(self, fd: int, size: int):
        self.fd, self.size = fd, size
        self.base, self.win = 0, b""

    def _pread(self, offset: int, n: int) -> bytes:
        parts, got = [], 0
        while got < n:
            chunk = os.pread(self.fd, min(n - got, 1 << 30), offset + got)
            if not chunk:
                raise Malformed("file is shorter than when it was opened")
            parts.append(chunk)
            got += len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def get(self, a: int, b: int):
        base, win = self.base, self.win
        if base <= a and b <= base + len(win):
            return win[a - base:b - base]
        if b - a > self.WINDOW // 2:  # a big verbatim range: read it on its own
            return self._pread(a, b - a)
        self.base, self.win = a, self._pread(a, min(self.WINDOW, self.size - a))
        return self.win[:b - a]

    def readinto(self, buf, offset: int) -> None:
        """Fill ``buf`` (a writable byte memoryview) from ``offset``; OSError/Malformed."""
        done, n = 0, len(buf)
        while done < n:
            got = os.preadv(self.fd, [buf[done:min(n, done + (1 << 30))]], offset + done)
            if got <= 0:
                raise Malformed("file is shorter than when it was opened")
            done += got


def _varint(r, i: int, end: int) -> tuple[int, int]:
    chunk = r.get(i, min(i + 10, end))
    result = shift = 0
    for k, c in enumerate(chunk):
        result |= (c & 0x7F) << shift
        if c < 0x80:
            return result, i + k + 1
        shift += 7
    raise Malformed(f"bad varint at {i}")


def encode_varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def fields(r, start: int, end: int):
    """Yield (field number, wire type, key offset, payload start, payload end) in [start, end)."""
    i = start
    while i < end:
        key_at = i
        key, i = _varint(r, i, end)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise Malformed(f"field number 0 at {key_at}")
        if wt == WIRE_VARINT:
            a = i
            _, j = _varint(r, i, end)
        elif wt == WIRE_LEN:
            n, a = _varint(r, i, end)
            j = a + n
        elif wt == WIRE_FIXED64:
            a, j = i, i + 8
        elif wt == WIRE_FIXED32:
            a, j = i, i + 4
        else:  # groups (3, 4) and the invalid 6, 7
            raise Malformed(f"wire type {wt} at {key_at}")
        if j > end:
            raise Malformed(f"field {num} at {key_at} runs past its message")
        yield num, wt, key_at, a, j
        i = j


def _strip_tensor(r, a: int, b: int, out: list, min_len: int):
    """Append the tensor's bytes to ``out`` minus a large raw_data; return its (offset, len)."""
    raw = None
    for num, wt, key_at, pa, pb in fields(r, a, b):
        if num == TENSOR_RAW_DATA:
            if raw is not None or wt != WIRE_LEN:  # merged/odd: let protobuf decide
                raw = False
                break
            raw = (key_at, pa, pb)
    if not raw or raw[2] - raw[1] < min_len:
        out.append(encode_varint(b - a))
        out.append(r.get(a, b))
        return None
    key_at, pa, pb = raw
    out.append(encode_varint((b - a) - (pb - key_at)))
    out.append(r.get(a, key_at))
    out.append(r.get(pb, b))
    return pa, pb - pa


def strip_model(r, min_len: int = STRIP_MIN):
    """-> (reduced serialized ModelProto, [(offset, length) | None per graph initializer])."""
    graph = None
    for num, wt, key_at, a, b in fields(r, 0, r.size):
        if num == MODEL_GRAPH:
            if wt != WIRE_LEN or graph is not None:
                raise Malformed("graph field repeated or not length-delimited")
            graph = (key_at, a, b)
    if graph is None:
        raise Malformed("no graph")
    key_at, ga, gb = graph
    body: list = []
    spans: list = []
    run = ga  # start of the current verbatim run inside the graph
    for num, wt, fkey, a, b in fields(r, ga, gb):
        if num != GRAPH_INITIALIZER:
            continue
        if wt != WIRE_LEN:
            raise Malformed("initializer field is not length-delimited")
        body.append(r.get(run, fkey))
        tensor: list = []
        span = _strip_tensor(r, a, b, tensor, min_len)
        body.append(encode_varint((GRAPH_INITIALIZER << 3) | WIRE_LEN))
        body.extend(tensor)
        spans.append(span)
        run = b
    body.append(r.get(run, gb))
    graph_len = sum(len(p) for p in body)
    head = [r.get(0, key_at), encode_varint((MODEL_GRAPH << 3) | WIRE_LEN),
            encode_varint(graph_len)]
    return b"".join(head + body + [r.get(gb, r.size)]), spans

