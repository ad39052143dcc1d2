"""numba kernels for training: convolution gradients (im2col/col2im), pooling gradients,
batch-normalization statistics and gradients, activation gradients."""
