"""RMSNorm, forward and backward."""
import numpy as np


def rmsnorm_forward(x, weight, eps):
    """RMSNorm (Zhang & Sennrich 2019): y = x / sqrt(mean(x²) + eps) * weight.

    Unlike LayerNorm there is no mean subtraction and no bias."""
    # x: [T, D], weight: [D]
    inv_rms = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)  # [T, 1]
    x_hat = x * inv_rms                                                      # [T, D]
    return (x_hat * weight).astype(x.dtype, copy=False), (x_hat, inv_rms, weight)


def rmsnorm_backward(dy, cache):
    """Gradients of rmsnorm_forward. With x̂ = x·r and r = (mean(x²) + eps)^-½:

        dx = r · (g - x̂ · mean(g·x̂)),   g = dy · weight;     dweight = Σ_t dy · x̂

    (the second term is the path through r, which every element of the row shares)."""
    x_hat, inv_rms, weight = cache
    # dy: [T, D]
    dweight = np.sum(dy * x_hat, axis=tuple(range(dy.ndim - 1)))                # [D]
    g = dy * weight                                                              # [T, D]
    dx = inv_rms * (g - x_hat * np.mean(g * x_hat, axis=-1, keepdims=True))      # [T, D]
    return dx.astype(dy.dtype, copy=False), dweight.astype(dy.dtype, copy=False)
