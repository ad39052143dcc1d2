"""BatchNormalization exported in training mode, read as the trainer runs it.

``torch.onnx.export(..., training=TrainingMode.TRAINING)`` writes every BatchNormalization with
``training_mode=1`` and two more outputs, the updated running mean and variance.  The inference
ops refuse such a node (its result depends on the batch, not only on the model); the trainer
runs each BN in train or eval mode itself (``Trainer(batchnorm=...)``) and updates the running
statistics as its own state.  So for training such a node is an ordinary BatchNormalization:
the attribute is cleared and the statistics outputs dropped, provided nothing reads them (a
reader would see values the trainer does not compute: a ``TrainingError`` names it).  What
``Trainer.export`` writes is then the eval-mode model, ready for inference.

    Before:  X --> BatchNormalization(training_mode=1) --> Y, running_mean_out, running_var_out
    After:   X --> BatchNormalization --> Y
"""

from __future__ import annotations

from ..errors import TrainingError
from ..ir import Graph


def clear_training_mode(graph: Graph) -> int:
    """Rewrite ``graph``'s training-mode BatchNormalization nodes in place; returns how many."""
    done = 0
    for node in graph.nodes:
        if node.op_type != "BatchNormalization" or node.domain not in ("", "ai.onnx") or \
                not node.attrs.get("training_mode", 0):
            continue
        for v in node.outputs[1:]:
            if v.name and (v.uses or v in graph.outputs):
                raise TrainingError(
                    f"{graph.source}: node '{node.name or node.op_type}' (BatchNormalization, "
                    f"training_mode=1): its running-statistics output '{v.name}' is read; the "
                    "trainer keeps the running statistics itself")
        for v in node.outputs[1:]:
            v.producer = None
            graph.values.pop(v.name, None)
        del node.outputs[1:]
        del node.attrs["training_mode"]
        done += 1
    return done
