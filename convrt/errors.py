"""convrt's exception types: everything the public API raises for bad models or feeds.

Each message is one line naming the model, node or input at fault, so the CLI can print it
without a traceback.
"""


class ConvrtError(Exception):
    """Base of every error convrt raises on purpose."""

    MAX_LEN = 1000

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], str):  # one line, whatever names a model holds
            msg = " ".join(args[0].splitlines())
            if len(msg) > self.MAX_LEN:
                msg = msg[:self.MAX_LEN - 3] + "..."
            args = (msg,)
        super().__init__(*args)


class ModelLoadError(ConvrtError):
    """The file is missing, is not ONNX, is truncated, or its graph is malformed."""


class UnsupportedOpError(ConvrtError):
    """An op, opset or attribute value convrt has no kernel for."""


class ShapeError(ConvrtError):
    """Shapes, dtypes or attribute values that are inconsistent (found at load time)."""


class InputError(ConvrtError):
    """A feed with a wrong name, dtype, rank or dimension."""


class TrainingError(ConvrtError):
    """Bad labels, unknown loss, an op without a backward rule, a NaN loss."""
