"""The op registry: one function per (op, ONNX schema version range).

An op is a function whose signature *is* the ONNX signature (after ``ctx``)::

    @register_op("Relu", since=(6, 13, 14))
    def Relu(ctx, X):
        return ctx.result([X.shape], [X.dtype], kernels.relu)

Inputs arrive positionally as :class:`TensorInfo` (shape, dtype and, when known, the constant
value), attributes as keywords with the spec's defaults.  The function validates, infers output
shapes/dtypes, and, when ``ctx.binding`` is set (all shapes concrete: plan time), returns the
kernel that computes the outputs.  The same function therefore serves load-time shape inference,
constant folding and execution planning.

``since`` lists the ONNX schema versions the function implements.  Lookup asks onnx which schema
version applies at the model's opset and uses the function registered for exactly that version:
convrt never runs an op under the semantics of an older schema than the model asks for.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import ShapeError, UnsupportedOpError
from ..onnx_io import schemas
from ..onnx_io.schemas import attr_type_ok  # noqa: F401  (ops/infer.py asks it here)

CONVRT_DOMAIN = "convrt"


@dataclass(frozen=True)
class TensorInfo:
    """What an op sees of an input: shape, dtype and the value when it is constant.

    ``value`` may be a released weight's stand-in (``convrt.ir.Released``: shape, dtype, and
    the data through ``np.asarray``); ``key`` is the initializer's Value, a stable identity for
    caching what is derived from the data (packed weights) across plans and releases.
    """

    shape: tuple | None
    dtype: np.dtype | None
    value: np.ndarray | None = None
    key: object = None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)


@dataclass
class OpResult:
    """An op's answer: output infos, and at bind time the kernel that computes them.

    ``kernel(*inputs, *outputs)`` writes into preallocated outputs; with ``alias=True`` it is
    ``kernel(*inputs) -> tuple`` returning views (Reshape, Flatten...: no copy, no buffer).
    """

    outputs: list[TensorInfo]
    kernel: Callable | None = None
    alias: bool = False
    flops: int = 0  # multiply-accumulates, for `convrt inspect`
    extra: dict = field(default_factory=dict)


class PackCache:
    """A session's packed weights, shared by all its plans (one per set of input shapes).

    Why: each plan binds its own kernels, and a kernel packs its weights for its inner loop; a
    session that sees batch sizes 1..8 would otherwise hold eight packed copies of every layer.
    Entries are keyed by the identity (``id``) of the constants packed (their Values, where
    ``TensorInfo.key`` gives one, else their arrays) plus the layer's geometry without the batch
    and the packing parameters (so an algorithm chosen differently for another batch gets its
    own entry).  Each entry holds the objects it was keyed by, so an ``id`` cannot be reused
    while its entry lives; holding a Value rather than its array lets the session release the
    unpacked weights (convrt/weights.py).  Thread-safe: two plans
    built at once may both pack a miss; the first stored wins and the other copy is dropped.
    """

    def __init__(self):
        self._entries: dict = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple, keep: tuple, make: Callable):
        """``make()``'s value for ``key``, built once; ``keep``: the arrays ``key`` names."""
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self.hits += 1
                return hit[1]
        value = make()
        with self._lock:
            self.misses += 1
            return self._entries.setdefault(key, (keep, value))[1]

    @property
    def nbytes(self) -> int:
        """Bytes of the packed arrays held (numpy arrays found in each value, one level deep)."""
        with self._lock:
            vals = [v for _, v in self._entries.values()]
        return sum(_nbytes(v) for v in vals)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _nbytes(v) -> int:
    if isinstance(v, np.ndarray):
        return v.nbytes
    if isinstance(v, (tuple, list)):
        return sum(x.nbytes for x in v if isinstance(x, np.ndarray))
    return 0


# The pack cache of the plan being built on this thread (runtime/plan.py sets it around
# binding).  A context variable, because OpContext objects are made by ops/infer.py, which
# should not have to know about caching.
_PACKS: contextvars.ContextVar = contextvars.ContextVar("convrt_packs", default=None)


@contextlib.contextmanager
def _binding(var: contextvars.ContextVar, value):
    """``var`` set to ``value`` inside this block (this thread or task only)."""
    token = var.set(value)
    try:
        yield value
    finally:
        var.reset(token)


def packing_into(cache: PackCache | None):
    """Bind kernels inside this block with ``cache`` as ``OpContext.packs``."""
    return _binding(_PACKS, cache)


# The precision of the plan being built on this thread ("fp32" or "bf16", SessionOptions'
# ``precision`` once the session has checked the CPU can run it); the plan sets it around
# binding, as it does the pack cache.
_PRECISION: contextvars.ContextVar = contextvars.ContextVar("convrt_precision", default="fp32")


def binding_precision(precision: str):
    """Bind kernels inside this block with ``precision`` as ``OpContext.precision``."""
    return _binding(_PRECISION, precision)


# Whether the plan being built on this thread is a first-tier one (runtime/tiers.py): the ops
# that would compile the most (Conv, Gemm, MatMul, the pools, Softmax) then bind numpy kernels
# (kernels/first_tier.py), which compile nothing, instead of numba's.
_FIRST_TIER: contextvars.ContextVar = contextvars.ContextVar("convrt_first_tier", default=False)


def binding_first_tier(first: bool):
    """Bind kernels inside this block as a first-tier plan (``OpContext.first_tier``)."""
    return _binding(_FIRST_TIER, bool(first))


class OpContext:
    """Per-node helpers handed to op functions (names for errors, opset, bind mode)."""

    def __init__(self, node_name: str, op_type: str, opset: int, binding: bool,
                 source: str = "<model>"):
        self.node_name = node_name
        self.op_type = op_type
        self.opset = opset
        self.binding = binding
        self.source = source
        self.n_outputs = 1  # outputs the node lists (set by infer; MaxPool's Indices)

    @property
    def packs(self) -> PackCache | None:
        """The session's pack cache while a plan binds kernels (None: pack privately)."""
        return _PACKS.get()

    @property
    def precision(self) -> str:
        """"bf16" while a bf16 plan binds kernels: float32 Conv and Gemm then take bf16
        kernels where one fits the layer (kernels/bf16.py); else "fp32"."""
        return _PRECISION.get()

    @property
    def first_tier(self) -> bool:
        """True while a first-tier plan binds kernels: an op with a numpy kernel in
        kernels/first_tier.py binds that one (no numba compile; correct, not fast)."""
        return _FIRST_TIER.get()

    def where(self) -> str:
        return f"{self.source}: node '{self.node_name}' ({self.op_type})"

    def fail(self, msg: str) -> ShapeError:
        """Return (for ``raise``) a ShapeError naming this node."""
        return ShapeError(f"{self.where()}: {msg}")

    def unsupported(self, msg: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"{self.where()}: {msg}")

    def check(self, cond: bool, msg: str) -> None:
        if not cond:
            raise self.fail(msg)

    def result(self, shapes, dtypes, kernel=None, alias=False, flops=0, value=None,
               **extra) -> OpResult:
        """Build an OpResult; ``value`` marks a single output known without running anything."""
        outs = [TensorInfo(None if s is None else tuple(s), None if d is None else np.dtype(d))
                for s, d in zip(shapes, dtypes)]
        if value is not None:
            outs[0] = TensorInfo(outs[0].shape, outs[0].dtype, value)
        return OpResult(outs, kernel if self.binding else None, alias, flops, extra)


@dataclass(frozen=True)
class OpDef:
    op_type: str
    domain: str
    versions: tuple[int, ...]
    fn: Callable
    n_required: int
    n_inputs: int | None  # None = variadic
    attrs: dict[str, Any]  # name -> default (inspect.Parameter.empty when required)


_REGISTRY: dict[tuple[str, str], dict[int, OpDef]] = {}


def register_op(op_type: str, since: int | tuple[int, ...], domain: str = "",
                registry: dict | None = None):
    """Register ``fn`` as op ``op_type`` for the listed ONNX schema versions.

    A second function for the same (domain, op, version) raises ValueError at import: a silent
    overwrite would make the op's behaviour depend on module import order.  ``registry`` (tests
    only) registers into a scratch table instead of convrt's.
    """
    versions = (since,) if isinstance(since, int) else tuple(since)
    target = _REGISTRY if registry is None else registry

    def deco(fn: Callable) -> Callable:
        params = list(inspect.signature(fn).parameters.values())[1:]  # drop ctx
        pos = [p for p in params if p.kind == p.POSITIONAL_OR_KEYWORD]
        variadic = any(p.kind == p.VAR_POSITIONAL for p in params)
        kw = {p.name: p.default for p in params if p.kind == p.KEYWORD_ONLY}
        n_req = sum(p.default is p.empty for p in pos)
        opdef = OpDef(op_type, domain, versions, fn, n_req, None if variadic else len(pos), kw)
        table = target.setdefault((domain, op_type), {})
        taken = [v for v in versions if v in table]
        if taken:
            prev = table[taken[0]].fn
            raise ValueError(f"op {domain or 'ai.onnx'}::{op_type} version(s) {taken} registered "
                             f"twice: {prev.__module__}.{prev.__qualname__} and "
                             f"{fn.__module__}.{fn.__qualname__}")
        for v in versions:
            table[v] = opdef
        return fn

    return deco


def schema_version(op_type: str, domain: str, opset: int) -> int | None:
    """The ONNX schema version in force for ``op_type`` at ``opset`` (None when unknown)."""
    if domain == CONVRT_DOMAIN:
        return 1
    return schemas.since_version(op_type, domain, opset)


def schema_attributes(op_type: str, domain: str, opset: int) -> frozenset | None:
    """Attribute names the ONNX schema in force at ``opset`` allows (None: no schema)."""
    if domain == CONVRT_DOMAIN:
        return None
    return schemas.attribute_names(op_type, domain, opset)


def schema_attribute_types(op_type: str, domain: str, opset: int) -> dict | None:
    """Attribute name -> ``AttributeProto.AttributeType`` in the schema in force (None: none)."""
    if domain == CONVRT_DOMAIN:
        return None
    return schemas.attribute_types(op_type, domain, opset)


def lookup(op_type: str, domain: str, opset: int) -> OpDef | None:
    """The OpDef for this op at this opset, or None when convrt does not implement it."""
    domain = "" if domain == "ai.onnx" else domain
    table = _REGISTRY.get((domain, op_type))
    if not table:
        return None
    sv = schema_version(op_type, domain, opset)
    return table.get(sv) if sv is not None else None


def registered_ops() -> dict[tuple[str, str], dict[int, OpDef]]:
    """A read-only view of the registry (for docs, coverage and tests)."""
    return {k: dict(v) for k, v in _REGISTRY.items()}
