"""The op registry against ONNX's own schemas: names, attribute sets and defaults."""

import inspect

import numpy as np
import onnx.defs
import pytest
from onnx import helper

import convrt  # noqa: F401  (registers ops)
from convrt.ops import registered_ops

CASES = [(dom, op, v, d) for (dom, op), table in sorted(registered_ops().items())
         for v, d in sorted(table.items()) if dom == ""]


@pytest.mark.parametrize("domain,op,version,opdef", CASES,
                         ids=[f"{op}-{v}" for _, op, v, _ in CASES])
def test_signature_matches_schema(domain, op, version, opdef):
    schema = onnx.defs.get_schema(op, version, domain)
    assert schema.since_version == version, f"{op}: {version} is not a schema version"
    attrs = schema.attributes
    assert set(attrs) <= set(opdef.attrs), f"spec attributes {set(attrs) - set(opdef.attrs)} " \
        "are not parameters"
    every = {a for s in onnx.defs.get_all_schemas_with_history() if s.name == op and
             s.domain == domain for a in s.attributes}
    assert set(opdef.attrs) <= every, f"invented attributes {set(opdef.attrs) - every}"
    for name, default in opdef.attrs.items():
        if name not in attrs:
            continue  # an attribute of another version; the loader rejects it for this one
        a = attrs[name]
        if a.required:
            # required: no default, or None where the op itself demands one of several
            assert default is inspect.Parameter.empty or default is None, name
        elif a.default_value.type != 0:
            want = helper.get_attribute_value(a.default_value)
            if isinstance(want, bytes):
                want = want.decode()
            if isinstance(want, float):
                assert default == pytest.approx(want, rel=1e-6), name
            else:
                assert default == want, name
    n_formal = len(schema.inputs)
    variadic = schema.inputs and schema.inputs[-1].option == \
        onnx.defs.OpSchema.FormalParameterOption.Variadic
    if opdef.n_inputs is not None and not variadic:
        assert opdef.n_inputs == n_formal, f"{op}-{version}: {opdef.n_inputs} inputs vs spec " \
            f"{n_formal}"
    assert opdef.n_required <= sum(
        p.option == onnx.defs.OpSchema.FormalParameterOption.Single for p in schema.inputs)


def test_attribute_of_another_version_is_rejected():
    from oracle import node_model

    model = node_model("Reshape", {"x": np.zeros((2, 3), np.float32),
                                   "s": np.array([3, 2], np.int64)}, {"allowzero": 1},
                       opset=13, const=("s",))
    with pytest.raises(convrt.ShapeError, match="allowzero"):
        convrt.load(model)


def test_duplicate_registration_raises():
    """Two functions for one (domain, op, version) are an error at import, not an overwrite."""
    from convrt.ops.registry import register_op

    scratch: dict = {}

    @register_op("Twice", since=(1, 5), registry=scratch)
    def first(ctx, X):
        return None

    @register_op("Twice", since=7, registry=scratch)  # another version: fine
    def other(ctx, X):
        return None

    with pytest.raises(ValueError, match=r"Twice version\(s\) \[5\] registered twice"):
        @register_op("Twice", since=(5, 9), registry=scratch)
        def second(ctx, X):
            return None

    assert scratch[("", "Twice")][5].fn is first and 9 not in scratch[("", "Twice")]
    with pytest.raises(ValueError, match="registered twice"):  # convrt's own table too
        register_op("Relu", since=14)(lambda ctx, X: None)
