"""A structural + byte-level fuzzer for convrt's public API.

Every case is a mutated copy of a seed model (see ``seeds.py``), run in a child process by a
pool of long-lived workers (multiprocessing ``spawn``: GNU OpenMP is not fork-safe).  A worker
loads the bytes with ``convrt.InferenceSession``, feeds random data of the declared shape (now
and then a deliberately wrong feed) and runs it.  Outcomes:

* ``ran``      the model loaded and ran;
* ``convrt``   a ConvrtError (the expected refusal);
* ``other``    any other exception escaped the public API (a bug);
* ``wrapped``  a ConvrtError that wraps an exception raised while a kernel ran (a validation gap);
* ``crash``    the worker died (segfault, abort, OOM kill): detected per case, worker replaced;
* ``hang``     the case exceeded its time limit: the worker is killed and replaced.

Usage::

    python tests/fuzz/fuzzer.py --cases 10000 --seed 1 --workers 2 [--save DIR]
    python tests/fuzz/fuzzer.py --replay 1:1234      # rebuild case 1234 of seed 1, run in-process
    python tests/fuzz/fuzzer.py --boundscheck /tmp/nbc ...  # workers with NUMBA_BOUNDSCHECK=1

Cases are a pure function of (seed, index), so any finding can be replayed.
"""

from __future__ import annotations

import argparse
import collections
import math
import multiprocessing as mp
import os
import random
import sys
import time
import traceback
from multiprocessing.connection import wait
from pathlib import Path

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

OUTCOMES = ("ran", "convrt", "other", "wrapped", "crash", "hang")
BUDGET = 64 << 20  # the memory budget cases run under (bytes)
# what Plan.run, constant folding and the pass pipeline say when they wrap an unexpected error
RUNTIME_MARKS = ("failed at run time", "optimization failed")

INTS = [0, 1, 2, 3, 4, -1, -2, 5, 7, 8, 16, 255, 1 << 31, -(1 << 31), (1 << 31) - 1,
        1 << 32, (1 << 62), -(1 << 63), (1 << 63) - 1, 10 ** 9, 10 ** 12]
FLOATS = [0.0, -1.0, 1.0, 1e-30, 1e30, float("inf"), float("-inf"), float("nan"), 0.5, -0.0]
STRINGS = [b"", b"NOTSET", b"VALID", b"SAME_UPPER", b"SAME_LOWER", b"up", b"\xff\xfe",
           b"x" * 300]
ATTR_NAMES = ["kernel_shape", "strides", "pads", "dilations", "group", "axis", "axes",
              "auto_pad", "ceil_mode", "count_include_pad", "alpha", "beta", "transA", "transB",
              "epsilon", "keepdims", "to", "allowzero", "start", "end", "value", "value_ints",
              "value_float", "storage_order", "training_mode", "noop_with_empty_axes", "bogus"]
OP_TYPES = ["Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Gemm",
            "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip",
            "Softmax", "LogSoftmax", "BatchNormalization", "ReduceMean", "Reshape", "Flatten",
            "Squeeze", "Unsqueeze", "Concat", "Shape", "Gather", "Cast", "Constant", "Identity",
            "Dropout", "ConstantOfShape", "Expand", "Tile", "Transpose", "Slice", "Pad",
            "Resize", "Split", "Where", "Loop", "If", "NoSuchOp", "ConvTranspose", "Range"]
ELEM_TYPES = [1, 2, 3, 5, 6, 7, 9, 10, 11, 12, 13, 0, 8, 16, 17, 40, 999]


# -- structural mutations ---------------------------------------------------------------------
def _value_names(g) -> list[str]:
    names = [v.name for v in g.input] + [t.name for t in g.initializer]
    for n in g.node:
        names.extend(n.output)
    return [n for n in names if n] or ["x"]


def _rand_int(rng: random.Random) -> int:
    return rng.choice(INTS) if rng.random() < 0.4 else rng.randint(-3, 9)


def _rand_ints(rng, base=None) -> list[int]:
    base = list(base or [])
    k = rng.random()
    if base and k < 0.5:
        base[rng.randrange(len(base))] = _rand_int(rng)
        return base
    if base and k < 0.7:
        return base[:rng.randrange(len(base))] + base[rng.randrange(len(base) + 1):]
    return [_rand_int(rng) for _ in range(rng.choice([0, 1, 2, 3, 4, 6, 9]))]


def _rand_tensor(rng) -> TensorProto:
    dims = [rng.choice([0, 1, 2, 3, 5]) for _ in range(rng.randrange(4))]
    dt = rng.choice([np.float32, np.int64, np.int32, np.float64, np.bool_])
    arr = (np.random.default_rng(rng.randrange(1 << 30)).standard_normal(dims) * 4).astype(dt)
    return onnx.numpy_helper.from_array(arr)


def _set_attr_value(rng, a: AttributeProto) -> None:
    t = a.type
    if t == AttributeProto.INT:
        a.i = _rand_int(rng)
    elif t == AttributeProto.INTS:
        new = _rand_ints(rng, a.ints)
        del a.ints[:]
        a.ints.extend(max(-(1 << 63), min((1 << 63) - 1, v)) for v in new)
    elif t == AttributeProto.FLOAT:
        a.f = rng.choice(FLOATS)
    elif t == AttributeProto.FLOATS:
        del a.floats[:]
        a.floats.extend(rng.choice(FLOATS) for _ in range(rng.randrange(5)))
    elif t == AttributeProto.STRING:
        a.s = rng.choice(STRINGS)
    elif t == AttributeProto.TENSOR:
        _mutate_tensor(rng, a.t)
    else:
        a.i = _rand_int(rng)


def _make_attr(rng, name: str) -> AttributeProto:
    kind = rng.choice(["int", "ints", "float", "string", "tensor", "graph", "undefined",
                       "floats", "strings"])
    if kind == "int":
        return helper.make_attribute(name, _rand_int(rng))
    if kind == "ints":
        return helper.make_attribute(name, _rand_ints(rng), attr_type=AttributeProto.INTS)
    if kind == "float":
        return helper.make_attribute(name, rng.choice(FLOATS))
    if kind == "floats":
        return helper.make_attribute(name, [rng.choice(FLOATS)], attr_type=AttributeProto.FLOATS)
    if kind == "string":
        return helper.make_attribute(name, rng.choice(STRINGS))
    if kind == "strings":
        return helper.make_attribute(name, [rng.choice(STRINGS)],
                                     attr_type=AttributeProto.STRINGS)
    if kind == "tensor":
        return helper.make_attribute(name, _rand_tensor(rng))
    if kind == "graph":
        return helper.make_attribute(name, helper.make_graph([], "sub", [], []))
    a = AttributeProto()
    a.name = name
    return a


def _mutate_tensor(rng, t: TensorProto) -> None:
    k = rng.randrange(9)
    dims = list(t.dims)
    if k == 0 and dims:  # dims change, bytes kept (length mismatch)
        dims[rng.randrange(len(dims))] = rng.choice([0, 1, 2, 3, -1, 1 << 40, 1 << 62])
    elif k == 1:  # dims and bytes changed consistently: wrong shape, valid tensor
        dims = [rng.choice([1, 2, 3, 4, 8]) for _ in range(rng.randrange(5))]
        dt = onnx.helper.tensor_dtype_to_np_dtype(t.data_type) if t.data_type in (1, 6, 7, 11) \
            else np.float32
        arr = np.random.default_rng(rng.randrange(1 << 30)).standard_normal(dims).astype(dt)
        new = onnx.numpy_helper.from_array(arr, t.name)
        t.CopyFrom(new)
        return
    elif k == 2:
        t.raw_data = t.raw_data[:rng.randrange(len(t.raw_data) + 1)]
    elif k == 3:
        t.raw_data = t.raw_data + bytes(rng.randrange(1, 64))
    elif k == 4:
        t.data_type = rng.choice(ELEM_TYPES)
    elif k == 5:
        dims = dims + [rng.choice([1, 2, 0])] if rng.random() < 0.5 else dims[:-1]
    elif k == 6:  # external data pointing somewhere
        t.data_location = TensorProto.EXTERNAL
        del t.external_data[:]
        for key, val in (("location", rng.choice(["../../etc/passwd", "/etc/passwd", "w.bin",
                                                  "", "a/../../b", "\\\\srv\\x", "C:x"])),
                         ("offset", str(rng.choice([0, -5, 1 << 40]))),
                         ("length", str(rng.choice([0, 4, -1, 1 << 40])))):
            e = t.external_data.add()
            e.key, e.value = key, val
    elif k == 7:  # values in a typed field instead of raw_data
        n = int(np.prod(dims)) if dims and all(0 <= d < 1 << 20 for d in dims) else 1
        t.ClearField("raw_data")
        t.float_data.extend([1.5] * (n + rng.choice([-1, 0, 1])))
    else:  # flip bytes inside the data
        if t.raw_data:
            b = bytearray(t.raw_data)
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            t.raw_data = bytes(b)
    del t.dims[:]
    t.dims.extend(max(-(1 << 63), min((1 << 63) - 1, d)) for d in dims)


def _mutate_shape(rng, vi) -> None:
    tt = vi.type.tensor_type
    k = rng.randrange(5)
    if k == 0:
        tt.elem_type = rng.choice(ELEM_TYPES)
        return
    if k == 1:
        vi.type.ClearField("tensor_type") if rng.random() < 0.3 else tt.ClearField("shape")
        return
    dims = tt.shape.dim
    if k == 2 or not len(dims):
        d = dims.add()
        if rng.random() < 0.5:
            d.dim_param = rng.choice(["N", "M", "", "x"])
        else:
            d.dim_value = rng.choice([0, 1, 3, 1 << 31, 1 << 40])
    elif k == 3:
        del dims[rng.randrange(len(dims))]
    else:
        d = dims[rng.randrange(len(dims))]
        if rng.random() < 0.3:
            d.dim_param = rng.choice(["N", "M", "S"])
        else:
            d.dim_value = rng.choice([0, 1, 2, 3, 7, -1, -3, 1 << 20, 1 << 33, (1 << 63) - 1])


_KINDS = {"attr_value": 8, "attr_type": 1, "attr_add": 2, "attr_del": 1, "init": 6,
          "init_shape": 5, "shape_in": 3, "shape_vi": 1, "shape_out": 1, "op_type": 2,
          "wire": 2, "cycle": 0.5, "dtype": 1, "opset": 1, "del_node": 1, "dup_node": 0.3,
          "swap_nodes": 0.5, "outputs": 0.5, "ir": 0.3, "const_node": 1}


def _reshape_init(rng, t: TensorProto) -> None:
    """New dims near the old ones with matching data: a valid tensor of the wrong shape."""
    dims = list(t.dims)
    k = rng.randrange(4)
    if k == 0 and dims:
        i = rng.randrange(len(dims))
        dims[i] = max(0, dims[i] + rng.choice([-1, 1, 2, -dims[i], dims[i]]))
    elif k == 1:
        dims.insert(rng.randrange(len(dims) + 1), rng.choice([1, 2]))
    elif k == 2 and dims:
        del dims[rng.randrange(len(dims))]
    else:
        dims = dims[::-1]
    if int(np.prod(dims)) > 1 << 20:
        return
    try:
        dt = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
    except Exception:
        dt = np.float32
    arr = np.asarray(np.random.default_rng(rng.randrange(1 << 30)).standard_normal(dims) * 2,
                     dtype=dt)
    t.CopyFrom(onnx.numpy_helper.from_array(arr, t.name))


def mutate_structure(rng: random.Random, m: onnx.ModelProto) -> str:
    """Apply one structural mutation in place; returns its name."""
    g = m.graph
    nodes = g.node
    kind = rng.choices(list(_KINDS), weights=list(_KINDS.values()))[0]
    if kind.startswith("attr") and nodes:
        with_attrs = [n for n in nodes if len(n.attribute)]
        n = rng.choice(with_attrs if with_attrs and kind != "attr_add" else nodes)
        attrs = n.attribute
        if kind == "attr_add" or not len(attrs):
            attrs.append(_make_attr(rng, rng.choice(ATTR_NAMES)))
        elif kind == "attr_del":
            del attrs[rng.randrange(len(attrs))]
        elif kind == "attr_type":
            i = rng.randrange(len(attrs))
            new = _make_attr(rng, attrs[i].name)
            attrs[i].CopyFrom(new)
        else:
            _set_attr_value(rng, attrs[rng.randrange(len(attrs))])
    elif kind == "init_shape" and len(g.initializer):
        _reshape_init(rng, rng.choice(g.initializer))
    elif kind == "init" and len(g.initializer):
        _mutate_tensor(rng, rng.choice(g.initializer))
    elif kind == "shape_in" and len(g.input):
        _mutate_shape(rng, rng.choice(g.input))
    elif kind == "shape_vi":
        if not len(g.value_info) or rng.random() < 0.5:
            vi = g.value_info.add()
            vi.name = rng.choice(_value_names(g))
            vi.type.tensor_type.elem_type = rng.choice([1, 1, 7, 6])
            for _ in range(rng.randrange(5)):
                vi.type.tensor_type.shape.dim.add().dim_value = rng.choice([1, 2, 4, 8])
        else:
            _mutate_shape(rng, rng.choice(g.value_info))
    elif kind == "shape_out" and len(g.output):
        _mutate_shape(rng, rng.choice(g.output))
    elif kind == "op_type" and nodes:
        rng.choice(nodes).op_type = rng.choice(OP_TYPES)
    elif kind == "wire" and nodes:
        n = rng.choice(nodes)
        names = _value_names(g) + ["", "undefined_value"]
        if len(n.input) and rng.random() < 0.6:
            n.input[rng.randrange(len(n.input))] = rng.choice(names)
        elif len(n.input) and rng.random() < 0.5:
            del n.input[rng.randrange(len(n.input))]
        else:
            n.input.append(rng.choice(names))
    elif kind == "cycle" and nodes:
        a = rng.randrange(len(nodes))
        b = rng.randrange(a, len(nodes))
        if len(nodes[a].input) and len(nodes[b].output):
            nodes[a].input[rng.randrange(len(nodes[a].input))] = nodes[b].output[0]
    elif kind == "dtype":
        cast = [n for n in nodes if n.op_type == "Cast"]
        if cast and rng.random() < 0.5:
            n = rng.choice(cast)
            del n.attribute[:]
            n.attribute.append(helper.make_attribute("to", rng.choice(ELEM_TYPES)))
        elif len(g.input):
            rng.choice(g.input).type.tensor_type.elem_type = rng.choice(ELEM_TYPES)
    elif kind == "opset":
        if rng.random() < 0.8 and len(m.opset_import):
            m.opset_import[0].version = rng.choice([1, 5, 6, 7, 9, 11, 12, 13, 17, 18, 21, 25,
                                                    26, 100, -1])
        else:
            o = m.opset_import.add()
            o.domain, o.version = rng.choice(["convrt", "com.microsoft", "ai.onnx", ""]), 1
    elif kind == "del_node" and nodes:
        del nodes[rng.randrange(len(nodes))]
    elif kind == "dup_node" and nodes:
        nodes.insert(rng.randrange(len(nodes) + 1), rng.choice(nodes))
    elif kind == "swap_nodes" and len(nodes) > 1:
        i, j = rng.randrange(len(nodes)), rng.randrange(len(nodes))
        a, b = onnx.NodeProto(), onnx.NodeProto()
        a.CopyFrom(nodes[i])
        b.CopyFrom(nodes[j])
        nodes[i].CopyFrom(b)
        nodes[j].CopyFrom(a)
    elif kind == "outputs":
        if len(g.output) and rng.random() < 0.4:
            del g.output[rng.randrange(len(g.output))]
        else:
            vi = g.output.add()
            vi.name = rng.choice(_value_names(g) + ["nowhere"])
    elif kind == "ir":
        m.ir_version = rng.choice([0, 1, 2, 3, 4, 7, 8, 10, 11, 99])
    elif kind == "const_node":
        out = rng.choice(_value_names(g))
        n = helper.make_node("Constant", [], [f"c{rng.randrange(99)}"], value=_rand_tensor(rng))
        nodes.insert(rng.randrange(len(nodes) + 1), n)
        if nodes and rng.random() < 0.5:
            t = rng.choice(nodes)
            if len(t.input):
                t.input[rng.randrange(len(t.input))] = n.output[0]
        del out
    return kind


# -- byte mutations ---------------------------------------------------------------------------
def mutate_bytes(rng: random.Random, data: bytes, donor: bytes) -> bytes:
    b = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0:  # bit flips (biased to the head, where the graph structure usually is)
        for _ in range(rng.randint(1, 12)):
            i = rng.randrange(min(len(b), 4096)) if rng.random() < 0.7 else rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == 1:  # truncation
        del b[rng.randrange(len(b)):]
    elif kind == 2:  # splice from the donor
        i, j = rng.randrange(len(b)), rng.randrange(len(donor))
        n = rng.randint(1, 256)
        b[i:i + n] = donor[j:j + n]
    elif kind == 3:  # random bytes inserted
        i = rng.randrange(len(b) + 1)
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
    else:  # overwrite a varint-ish spot with a big value
        i = rng.randrange(min(len(b), 4096))
        b[i:i + 5] = b"\xff\xff\xff\xff\x0f"
    return bytes(b)


_SEEDS = None


def seeds():
    global _SEEDS
    if _SEEDS is None:
        from seeds import all_seeds

        _SEEDS = all_seeds()
    return _SEEDS


def make_case(seed: int, index: int) -> tuple[str, bytes, int]:
    """(description, model bytes, feed seed) for case ``index`` of run ``seed``."""
    rng = random.Random(seed * 1_000_003 + index)
    table = seeds()
    name, data, _ = rng.choices(table, weights=[w for _, _, w in table])[0]
    desc = [name]
    r = rng.random()
    if r < 0.85 or r >= 0.95:
        m = onnx.ModelProto()
        m.ParseFromString(data)
        for _ in range(rng.choice([1, 1, 1, 1, 2, 2, 3, 5])):
            try:
                desc.append(mutate_structure(rng, m))
            except Exception as e:  # a mutation the protobuf refused; the case goes on
                desc.append(f"mutfail:{type(e).__name__}")
        try:
            data = m.SerializeToString()
        except Exception as e:  # an unserialisable mutation: fall back to byte mutation
            desc.append(f"noserial:{type(e).__name__}")
    if r >= 0.85:
        donor = rng.choice(table)[1]
        data = mutate_bytes(rng, data, donor)
        desc.append("bytes")
    return "+".join(desc), data, rng.randrange(1 << 30)


# -- running one case -------------------------------------------------------------------------
def _feeds(sess, feed_seed: int) -> dict:
    rng = np.random.default_rng(feed_seed)
    bad = rng.random() < 0.1
    feeds = {}
    for arg in sess.get_inputs():
        shape = [d if isinstance(d, int) else int(rng.integers(1, 3)) for d in arg.shape]
        dtype = sess.graph.values[arg.name].dtype
        if bad:
            k = int(rng.integers(4))
            if k == 0:
                shape = shape + [1]
            elif k == 1 and shape:
                shape[0] += 1
            elif k == 2:
                dtype = np.float64 if dtype != np.float64 else np.float32
            else:
                feeds["bogus"] = np.zeros(1, np.float32)
        if math.prod(shape) * np.dtype(dtype).itemsize > BUDGET:
            shape = [0] * len(shape)  # a huge declared input: feed an empty one of that rank
        feeds[arg.name] = (rng.standard_normal(shape) * 3).astype(dtype)
    return feeds


def run_case(data: bytes, feed_seed: int) -> tuple[str, str]:
    """Load and run one model in this process; returns (outcome, detail)."""
    import convrt

    try:
        opts = convrt.SessionOptions(memory_budget=BUDGET)
        sess = convrt.InferenceSession(data, opts)
        feeds = _feeds(sess, feed_seed)
        sess.run(None, feeds)
        sess.run(None, feeds)  # a second run reuses the arena
        return "ran", ""
    except convrt.ConvrtError as e:
        msg = str(e)
        if any(mark in msg for mark in RUNTIME_MARKS):
            return "wrapped", f"{type(e).__name__}: {msg}"[:2000]
        if "\n" in msg:
            return "other", f"multi-line {type(e).__name__}: {msg}"[:2000]
        return "convrt", type(e).__name__
    except BaseException as e:  # noqa: BLE001 - everything else is a finding
        tb = traceback.format_exc(limit=-6)
        return "other", f"{type(e).__name__}: {e}\n{tb}"[:4000]


def _limit_memory() -> None:
    try:
        import resource

        lim = 4 << 30  # an allocation the budget missed fails fast instead of swapping
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    except (ImportError, ValueError, OSError):
        pass


def _worker(conn) -> None:
    _limit_memory()
    import convrt  # noqa: F401  (import once, before the first case)

    conn.send(("ready", ""))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        idx, data, feed_seed = msg
        outcome, detail = run_case(data, feed_seed)
        conn.send((idx, outcome, detail))


class Pool:
    """Long-lived spawn workers; one case in flight per worker, per-case crash/hang detection."""

    def __init__(self, n: int, timeout: float):
        self.ctx = mp.get_context("spawn")
        self.timeout = timeout
        self.slots = [self._start() for _ in range(n)]

    def _start(self):
        a, b = self.ctx.Pipe()
        p = self.ctx.Process(target=_worker, args=(b,), daemon=True)
        p.start()
        b.close()
        if not a.poll(300) or a.recv()[0] != "ready":
            raise RuntimeError("fuzz worker failed to start")
        return {"proc": p, "conn": a, "case": None, "t0": 0.0}

    def _replace(self, i):
        s = self.slots[i]
        if s["proc"].is_alive():
            s["proc"].kill()
        s["proc"].join(5)
        s["conn"].close()
        self.slots[i] = self._start()

    def run(self, cases, on_result) -> None:
        """``cases`` yields (index, desc, data, feed_seed); on_result(index, desc, outcome, detail)."""
        it = iter(cases)
        pending = True

        def feed(i):
            nonlocal pending
            try:
                idx, desc, data, fs = next(it)
            except StopIteration:
                pending = False
                return
            s = self.slots[i]
            s["case"], s["t0"] = (idx, desc, data), time.monotonic()
            s["conn"].send((idx, data, fs))

        for i in range(len(self.slots)):
            feed(i)
        while any(s["case"] is not None for s in self.slots):
            busy = [s for s in self.slots if s["case"] is not None]
            now = time.monotonic()
            left = min(s["t0"] + self.timeout - now for s in busy)
            ready = wait([s["conn"] for s in busy] + [s["proc"].sentinel for s in busy],
                         timeout=max(0.0, left))
            for i, s in enumerate(self.slots):
                if s["case"] is None:
                    continue
                idx, desc, data = s["case"]
                if s["conn"] in ready and s["conn"].poll():
                    try:
                        _, outcome, detail = s["conn"].recv()
                    except (EOFError, OSError):
                        outcome, detail = "crash", f"exit {s['proc'].exitcode}"
                        self._replace(i)
                    on_result(idx, desc, data, outcome, detail)
                elif s["proc"].sentinel in ready or not s["proc"].is_alive():
                    s["proc"].join(1)
                    on_result(idx, desc, data, "crash", f"exit code {s['proc'].exitcode}")
                    self._replace(i)
                elif time.monotonic() - s["t0"] > self.timeout:
                    on_result(idx, desc, data, "hang", f"> {self.timeout} s")
                    self._replace(i)
                else:
                    continue
                s = self.slots[i]
                s["case"] = None
                if pending:
                    feed(i)

    def close(self) -> None:
        for s in self.slots:
            try:
                s["conn"].send(None)
            except OSError:
                pass
        for s in self.slots:
            s["proc"].join(5)
            if s["proc"].is_alive():
                s["proc"].kill()


def fuzz(n_cases: int, seed: int = 0, workers: int = 2, timeout: float = 60.0,
         save: str | None = None, log=None, start: int = 0) -> dict:
    """Run ``n_cases`` cases; returns {"counts": Counter, "findings": [(idx, desc, outcome, detail)]}."""
    counts = collections.Counter({k: 0 for k in OUTCOMES})
    findings = []
    save_dir = Path(save) if save else None
    if save_dir:
        save_dir.mkdir(parents=True, exist_ok=True)

    def cases():
        for i in range(start, start + n_cases):
            desc, data, fs = make_case(seed, i)
            yield i, desc, data, fs

    def on_result(idx, desc, data, outcome, detail):
        counts[outcome] += 1
        if outcome in ("other", "wrapped", "crash", "hang"):
            findings.append((idx, desc, outcome, detail))
            if save_dir:
                (save_dir / f"case_{seed}_{idx}_{outcome}.onnx").write_bytes(data)
            if log:
                first = detail.splitlines()[0] if detail else ""
                log(f"[{outcome}] case {seed}:{idx} ({desc}): {first}")
        done = sum(counts.values())
        if log and done % 500 == 0:
            log(f"{done} cases: " + ", ".join(f"{k}={counts[k]}" for k in OUTCOMES))

    pool = Pool(workers, timeout)
    try:
        pool.run(cases(), on_result)
    finally:
        pool.close()
    return {"counts": counts, "findings": findings}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0, help="first case index")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per case")
    ap.add_argument("--save", help="directory for the models of findings")
    ap.add_argument("--replay", help="SEED:INDEX: rebuild one case and run it in-process")
    ap.add_argument("--boundscheck", metavar="CACHE_DIR",
                    help="workers run numba with NUMBA_BOUNDSCHECK=1 (kernels cached in "
                    "CACHE_DIR): an out-of-bounds access becomes a 'wrapped' finding")
    args = ap.parse_args(argv)
    if args.boundscheck:  # spawn children inherit the environment
        os.environ["NUMBA_BOUNDSCHECK"] = "1"
        os.environ["NUMBA_CACHE_DIR"] = os.path.abspath(args.boundscheck)
    if args.replay:
        s, i = (int(v) for v in args.replay.split(":"))
        desc, data, fs = make_case(s, i)
        print(f"case {s}:{i}: {desc} ({len(data)} bytes)")
        if args.save:
            Path(args.save).write_bytes(data)
        outcome, detail = run_case(data, fs)
        print(outcome, detail)
        return 0
    t0 = time.time()
    res = fuzz(args.cases, args.seed, args.workers, args.timeout, args.save,
               log=lambda s: print(s, flush=True), start=args.start)
    c = res["counts"]
    print(f"{sum(c.values())} cases in {time.time() - t0:.0f} s: "
          + ", ".join(f"{k}={c[k]}" for k in OUTCOMES), flush=True)
    return 1 if any(c[k] for k in ("other", "wrapped", "crash", "hang")) else 0


if __name__ == "__main__":
    sys.exit(main())
