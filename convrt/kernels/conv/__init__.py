"""2-D convolution (ONNX ``Conv``) with a fused epilogue: bias, residual add, activation.

One module per algorithm, peers that never import one another (oneDNN's pattern):

* ``dw3x3.py``      3x3 depthwise, padding 1, stride 1 or 2 (MobileNet);
* ``depthwise.py``  other depthwise / narrow-group layers (< 8 output channels per group);
* ``pixel.py``      vectorised along output pixels: 1x1 layers, short reductions;
* ``winograd.py``   F(2x2, 3x3) for deep 3x3 stride-1 layers;
* ``direct.py``     the blocked kernel, everything else; ``conv_pool.py`` adds a fused 2x2 pool.

``select.py`` holds the ordered list, ``select()`` and ``Conv2d`` (the bound layer every caller
uses).  Shared pieces, imported by the algorithms and re-exported by none: ``_base.py`` (the
layer's named geometry and the algorithm interface), ``_schedule.py`` (dynamic work claims),
``_epilogue.py`` (residual, activation and border stores), ``_layout.py`` (the zero-bordered
input copy the direct and pixel kernels read), ``_microkernel.py`` (the register-tiled tile
the direct kernel and Winograd share) and ``_ir.py`` (LLVM vocabulary of the intrinsics).
"""

from .select import ALGORITHMS, Conv2d, select

__all__ = ["ALGORITHMS", "Conv2d", "select"]
