"""Which arithmetic a session's plans use: ``SessionOptions.precision``, one rule for the
session and the CLI.

"fp32" (the default) computes as the model says.  "bf16" is opt-in: float32 Conv and Gemm
layers that a bf16 kernel fits take bf16 weights (rounded once, when packed) and bf16
activations (rounded where they enter the layer) with float32 sums, bias, residual and
activation (kernels/bf16.py); every other layer and every input and output keep the model's
dtype.  On a CPU without AVX512_BF16 (or with ``CONVRT_DISABLE_BF16=1``) "bf16" warns once per
process and runs float32: a model keeps running where it was tuned elsewhere, and the warning
says why it is not faster.
"""

from __future__ import annotations

import warnings

from ..errors import InputError
from ..kernels import bf16

PRECISIONS = bf16.PRECISIONS
_warned = False


def check_precision(value) -> str:
    """``value`` if it names a precision, else a one-line InputError listing the choices."""
    if not isinstance(value, str) or value not in PRECISIONS:
        raise InputError(f"SessionOptions.precision {value!r} is not one of "
                         f"{', '.join(repr(p) for p in PRECISIONS)}")
    return value


def resolve_precision(value) -> str:
    """The precision plans are built with: ``value`` checked, and "bf16" demoted to "fp32",
    with one warning per process, where ``bf16.available()`` says the CPU cannot run it."""
    global _warned
    value = check_precision(value)
    if value == "bf16" and not bf16.available():
        if not _warned:
            _warned = True
            why = ("bf16 is disabled (CONVRT_DISABLE_BF16 / bf16.FORCE_FP32)" if bf16.HOST_BF16
                   else "this CPU has no AVX512_BF16")
            warnings.warn(f"precision='bf16': {why}; running float32", RuntimeWarning,
                          stacklevel=3)
        return "fp32"
    return value
