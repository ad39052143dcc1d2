"""Training for convrt models: backprop through the IR, losses, optimizers, export to ONNX.

    from convrt.train import Trainer, SGD, Adam, AdamW, CosineAnnealingLR
    opt = SGD(lr=0.05, momentum=0.9)
    tr = Trainer("model.onnx", loss="cross_entropy", optimizer=opt,
                 param_groups=[{"params": ["fc.*"], "lr": 0.5}],
                 scheduler=CosineAnnealingLR(opt, T_max=10))
    loss = tr.step({"input": x}, y)     # or tr.fit(x, y, epochs=10): steps the scheduler too
    tr.export("trained.onnx")
"""

from .. import ops as _ops  # noqa: F401  (registers convrt's ops)
from . import grads  # noqa: F401  (registers the backward rules)
from .autodiff import Program, Tape, unbroadcast
from .grads import register_forward, register_grad, registered_grads
from .losses import CrossEntropyLoss, cross_entropy, get_loss, mse
from .optim import SGD, Adam, AdamW, Optimizer
from .schedulers import (CosineAnnealingLR, ExponentialLR, LinearLR, LRScheduler, MultiStepLR,
                         SequentialLR, StepLR)
from .trainer import Trainer

__all__ = ["SGD", "Adam", "AdamW", "CosineAnnealingLR", "CrossEntropyLoss", "ExponentialLR",
           "LRScheduler", "LinearLR", "MultiStepLR", "Optimizer", "Program", "SequentialLR",
           "StepLR", "Tape", "Trainer",
           "cross_entropy", "get_loss", "mse", "register_forward", "register_grad",
           "registered_grads", "unbroadcast"]
