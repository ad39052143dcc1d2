"""An ``onnx.backend.base.Backend`` over :class:`convrt.InferenceSession`.

This is what ONNX's own backend test runner (and any code written against the ONNX backend API)
drives::

    import convrt.backend as backend
    rep = backend.prepare(model)          # load + validate + optimize once
    outputs = rep.run([x])                # positional inputs, in get_inputs() order

convrt plans every graph statically: the values that decide output shapes (a Reshape's target, a
Pad's pads, Slice's starts...) and a few attribute-like inputs (Clip bounds, Dropout's
training_mode) must be known when a plan is built.  ONNX's node tests feed such values as graph
inputs.  When a plan cannot be built for that reason, the rep *specializes*: it binds the small
and integer-typed inputs of that run as constants (one specialized session per distinct set of
those values, cached) and plans again.  ``prepare(model, specialize=False)`` turns this off.

Initializers that IR < 4 models must list as graph inputs are taken as the constants they are
(the backend API never feeds them).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.backend.base import Backend, BackendRep

from .errors import InputError, UnsupportedOpError
from .runtime import InferenceSession, SessionOptions

SPECIALIZE_MAX_ELEMENTS = 64  # a float input this small may be bound as a constant
MAX_SPECIALIZED = 8


def _is_shape_like(arr: np.ndarray) -> bool:
    """Inputs a static plan may need as constants: integer/bool tensors and tiny ones."""
    return arr.dtype.kind in "iub" or arr.size <= SPECIALIZE_MAX_ELEMENTS


def _constant_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """IR < 4 models must list every initializer as a graph input; the ONNX backend API feeds
    only the other inputs, so there those initializers are weights, not overridable defaults.
    Drop them from the inputs (IR 4 semantics) so the planner sees constants."""
    inits = {t.name for t in model.graph.initializer}
    if model.ir_version >= 4 or not any(vi.name in inits for vi in model.graph.input):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = [vi for vi in out.graph.input if vi.name not in inits]
    del out.graph.input[:]
    out.graph.input.extend(keep)
    out.ir_version = 4
    return out


class ConvrtRep(BackendRep):
    """A prepared model: ``run(inputs)`` returns the outputs in graph-output order."""

    def __init__(self, model: onnx.ModelProto, session: InferenceSession, options,
                 specialize: bool = True):
        self.model = model
        self.session = session
        self.options = options
        self.specialize = specialize
        self.input_names = [a.name for a in session.get_inputs()]
        self.output_names = [a.name for a in session.get_outputs()]
        self._specialized: OrderedDict = OrderedDict()

    def _feeds(self, inputs) -> dict[str, np.ndarray]:
        if isinstance(inputs, dict):
            return {k: np.asarray(v) for k, v in inputs.items()}
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        inputs = list(inputs)
        names = self.input_names
        if len(inputs) > len(names):
            # ONNX test data may also list inputs that carry an initializer (IR < 4 models).
            names = [v.name for v in self.model.graph.input]
        if len(inputs) > len(names):
            raise InputError(f"{len(inputs)} inputs given, the model takes {len(names)}")
        return {n: np.asarray(v) for n, v in zip(names, inputs)}

    def run(self, inputs, **kwargs):  # noqa: ARG002 (BackendRep's signature)
        feeds = self._feeds(inputs)
        try:
            return tuple(self.session.run(None, feeds))
        except UnsupportedOpError:
            if not self.specialize:
                raise
            bound = {k: v for k, v in feeds.items() if _is_shape_like(v)}
            if not bound:
                raise
            sess = self._session_for(bound)
            rest = {k: v for k, v in feeds.items() if k not in bound}
            return tuple(sess.run(None, rest))

    def _session_for(self, bound: dict[str, np.ndarray]) -> InferenceSession:
        key = tuple((k, v.dtype.str, v.shape, v.tobytes()) for k, v in sorted(bound.items()))
        sess = self._specialized.get(key)
        if sess is None:
            model = onnx.ModelProto()
            model.CopyFrom(self.model)
            g = model.graph
            keep = [vi for vi in g.input if vi.name not in bound]
            del g.input[:]
            g.input.extend(keep)
            kept_inits = [t for t in g.initializer if t.name not in bound]
            del g.initializer[:]
            g.initializer.extend(kept_inits)
            for name, arr in bound.items():
                g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
            if model.ir_version < 4:
                model.ir_version = 4  # initializers need not be graph inputs any more
            sess = InferenceSession(model, self.options)
            if len(self._specialized) >= MAX_SPECIALIZED:
                self._specialized.popitem(last=False)
            self._specialized[key] = sess
        return sess


class ConvrtBackend(Backend):
    """convrt as an ONNX backend (CPU only)."""

    @classmethod
    def is_compatible(cls, model, device: str = "CPU", **kwargs) -> bool:  # noqa: ARG003
        return cls.supports_device(device)

    @classmethod
    def prepare(cls, model, device: str = "CPU", **kwargs) -> ConvrtRep:
        """Load, validate and optimize ``model`` (a ModelProto, path or bytes).

        Keyword args: ``sess_options`` (a SessionOptions), ``specialize`` (default True; see the
        module docstring).  Other keywords (the runner's rtol/atol...) are ignored.
        """
        if not cls.supports_device(device):
            raise UnsupportedOpError(f"device {device!r} is not supported; convrt runs on CPU")
        options = kwargs.get("sess_options") or SessionOptions()
        if not isinstance(model, onnx.ModelProto):
            from .onnx_io import read_model
            model = read_model(model)[0]
        model = _constant_initializers(model)
        session = InferenceSession(model, options)
        return ConvrtRep(model, session, options, bool(kwargs.get("specialize", True)))

    @classmethod
    def run_model(cls, model, inputs, device: str = "CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node, inputs, device: str = "CPU", outputs_info=None, **kwargs):
        """Run one NodeProto on ``inputs`` (a list in the node's input order, or a dict)."""
        if isinstance(inputs, dict):
            names = list(inputs)
            arrays = [np.asarray(inputs[n]) for n in names]
        else:
            arrays = [np.asarray(a) for a in inputs]
            names = [n for n in node.input if n][:len(arrays)]
        ins = [onnx.helper.make_tensor_value_info(
            n, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
            for n, a in zip(names, arrays)]
        out_names = [n for n in node.output if n]
        if outputs_info:
            outs = [onnx.helper.make_tensor_value_info(
                n, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dt)), shape)
                for n, (dt, shape) in zip(out_names, outputs_info)]
        else:  # element type and shape left to convrt's inference
            outs = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None)
                    for n in out_names]
        graph = onnx.helper.make_graph([node], "run_node", ins, outs)
        opset = kwargs.pop("opset_version", onnx.defs.onnx_opset_version())
        imports = [onnx.helper.make_opsetid(node.domain or "", opset)]
        model = onnx.helper.make_model(graph, opset_imports=imports)
        return cls.prepare(model, device, **kwargs).run(dict(zip(names, arrays)))

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return str(device).upper().split(":")[0] == "CPU"


prepare = ConvrtBackend.prepare
run_model = ConvrtBackend.run_model
run_node = ConvrtBackend.run_node
supports_device = ConvrtBackend.supports_device
is_compatible = ConvrtBackend.is_compatible
