"""An ``onnx.backend.base.Backend`` over :class:`convrt.InferenceSession`.

This is what ONNX's own backend test runner (and any code written against the ONNX backend API)
drives::

    import convrt.backend as backend
    rep = backend.prepare(model)          # load + validate + optimize once
    outputs = rep.run([x])                # positional inputs, in get_inputs() order

Graph inputs that carry shapes (a Reshape's target, Slice's starts, Pad's pads...) need nothing
here: the session plans per value of such small integer inputs.  Initializers that IR < 4 models
list as graph inputs are constants, as the importer reads them; test data that lists them too is
matched by position and those entries are dropped.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

from .errors import InputError, UnsupportedOpError
from .api import InferenceSession, SessionOptions


class ConvrtRep(BackendRep):
    """A prepared model: ``run(inputs)`` returns the outputs in graph-output order."""

    def __init__(self, model: onnx.ModelProto, session: InferenceSession):
        self.model = model
        self.session = session
        self.input_names = [a.name for a in session.get_inputs()]
        self.output_names = [a.name for a in session.get_outputs()]

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
        takes = {a.name for a in self.session.get_inputs()} | \
            {v.name for v in self.session.graph.inputs}
        return {n: np.asarray(v) for n, v in zip(names, inputs) if n in takes}

    def run(self, inputs, **kwargs):  # noqa: ARG002 (BackendRep's signature)
        return tuple(self.session.run(None, self._feeds(inputs)))


class ConvrtBackend(Backend):
    """convrt as an ONNX backend (CPU only)."""

    @classmethod
    def is_compatible(cls, model, device: str = "CPU", **kwargs) -> bool:  # noqa: ARG003
        return cls.supports_device(device)

    @classmethod
    def prepare(cls, model, device: str = "CPU", **kwargs) -> ConvrtRep:
        """Load, validate and optimize ``model`` (a ModelProto, path or bytes).

        Keyword args: ``sess_options`` (a SessionOptions).  Other keywords (the runner's
        rtol/atol...) are ignored.
        """
        if not cls.supports_device(device):
            raise UnsupportedOpError(f"device {device!r} is not supported; convrt runs on CPU")
        options = kwargs.get("sess_options") or SessionOptions()
        if not isinstance(model, onnx.ModelProto):
            from .onnx_io import read_model
            model = read_model(model)[0]
        return ConvrtRep(model, InferenceSession(model, options))

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
