"""Training for convrt models: backprop through the IR, losses, optimizers, export to ONNX.

    from convrt.train import Trainer, SGD, Adam, AdamW
    tr = Trainer("model.onnx", loss="cross_entropy", optimizer=SGD(lr=0.05, momentum=0.9))
    loss = tr.step({"input": x}, y)
    tr.export("trained.onnx")
"""

from .. import ops as _ops  # noqa: F401  (registers convrt's ops)
from . import grads  # noqa: F401  (registers the backward rules)
from .autodiff import Program, Tape, unbroadcast
from .grads import register_forward, register_grad, registered_grads
from .losses import CrossEntropyLoss, cross_entropy, get_loss, mse
from .optim import SGD, Adam, AdamW, Optimizer
from .trainer import Trainer

__all__ = ["SGD", "Adam", "AdamW", "CrossEntropyLoss", "Optimizer", "Program", "Tape", "Trainer",
           "cross_entropy", "get_loss", "mse", "register_forward", "register_grad",
           "registered_grads", "unbroadcast"]
