"""onnx's protobuf message classes, without importing the onnx package.

Why: ``import onnx`` costs about half a second on every process start, nearly all of it in
ml_dtypes (onnx imports it at the top; its extension registers hundreds of numpy loops and each
registration scans the ones before it).  Reading a model needs none of that: only the generated
message classes, which depend on protobuf alone.  So onnx's generated module
(``onnx/onnx_ml_pb2.py``, located without running ``onnx/__init__``) is executed here under a
private name.

When onnx itself is imported later (writing a model, the version converter, the exotic element
types), its own copy of that module registers the same descriptor file again; protobuf's pool
accepts an identical file and returns the classes it already built, so ``onnx.ModelProto`` is
this module's ``ModelProto`` (``tests/test_onnx_light.py`` checks it against the installed
protobuf).  Where onnx is already imported, or its layout is not the expected one, this is
simply onnx's own module.
"""

from __future__ import annotations

import importlib.util
import os
import sys


def _generated_module():
    loaded = sys.modules.get("onnx.onnx_ml_pb2")
    if loaded is not None:
        return loaded
    try:
        spec = importlib.util.find_spec("onnx")  # locates the package; runs none of it
        path = os.path.join(list(spec.submodule_search_locations)[0], "onnx_ml_pb2.py")
        gen = importlib.util.spec_from_file_location(f"{__name__}._onnx_ml_pb2", path)
        mod = importlib.util.module_from_spec(gen)
        gen.loader.exec_module(mod)
        mod.ModelProto, mod.FunctionProto  # noqa: B018 - what the readers need
        return mod
    except Exception:  # another onnx layout: its own import, whatever it costs
        import onnx.onnx_ml_pb2
        return onnx.onnx_ml_pb2


_pb2 = _generated_module()
ModelProto = _pb2.ModelProto
TensorProto = _pb2.TensorProto
AttributeProto = _pb2.AttributeProto
FunctionProto = _pb2.FunctionProto
NodeProto = _pb2.NodeProto
