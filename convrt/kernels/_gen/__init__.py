"""Generated numba kernels (see convrt/kernels/_gen_conv.py)."""
