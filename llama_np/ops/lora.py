"""The LoRA branch (Hu et al. 2021) beside a frozen linear layer, forward and backward.

A LoRA linear layer is the frozen product plus a low-rank branch:

    y = linear_forward(x, W) + lora_forward(x, A, B, scaling, dropout)

so only the branch needs code of its own; the frozen product (and its input gradient
dy W) is the ordinary linear op. `llama_np.llama.adapter` holds the adapters built from it.
"""
import numpy as np

DROPOUT_LEVELS = 1 << 16  # dropout masks come from uint16 draws: p in steps of 1/65536


def lora_forward(x, lora_a, lora_b, scaling, dropout=0.0, rng=None):
    """The LoRA branch: scaling · (dropout(x) Aᵀ) Bᵀ, never forming B A [out, in].

    Dropout (only when `rng` is given, i.e. in training) zeroes each input of the branch
    with probability p, as PEFT's `lora_dropout`, and scales the survivors by 1/(1 - p).
    That factor, like `scaling`, multiplies the r-wide product x Aᵀ rather than the
    [N, in] input: the same numbers, N·r multiplications instead of N·in. The mask compares
    16-bit random integers with a threshold (half the random bits of float draws, and
    training draws millions per step), so p is taken to the nearest multiple of 1/65536."""
    # x: [N, in], lora_a: [r, in], lora_b: [out, r]
    keep = None
    factor = scaling
    x_kept = x
    if rng is not None and dropout > 0:
        threshold = round(dropout * DROPOUT_LEVELS)
        keep = _uint16_draws(rng, x.shape) >= threshold                   # [N, in] bool
        x_kept = x * keep                                              # [N, in]
        factor = scaling / (1.0 - threshold / DROPOUT_LEVELS)
    u = x_kept @ lora_a.T                                              # [N, r]
    u *= u.dtype.type(factor)
    delta = u @ lora_b.T                                               # [N, out]
    return delta, (x_kept, keep, u, lora_a, lora_b, factor)


# bit generators whose raw outputs are 64 bits wide (MT19937's are 32)
_RAW_64 = (np.random.SFC64, np.random.PCG64, np.random.PCG64DXSM, np.random.Philox)


def _uint16_draws(rng, shape):
    """Uniform 16-bit integers: rng.integers(0, 65536, shape, dtype=uint16). NumPy makes those
    by cutting each 64-bit output of the bit generator into four 16-bit numbers, low bits
    first; where the count is a multiple of four and no half of an output is left over from an
    earlier 32-bit draw, taking the 64-bit outputs directly gives the same numbers without the
    per-number bookkeeping (about 40% less time)."""
    count = int(np.prod(shape))
    bits = rng.bit_generator
    if count % 4 or not isinstance(bits, _RAW_64) or bits.state.get("has_uint32"):
        return rng.integers(0, DROPOUT_LEVELS, shape, dtype=np.uint16)
    return rng.bit_generator.random_raw(count // 4).astype("<u8", copy=False).view("<u2").reshape(shape)


def lora_backward(ddelta, cache, input_grad=True):
    """Gradients of lora_forward. With c = scaling / (1 - p), m the dropout mask and
    u = c · (m ⊙ x) Aᵀ:

        dB = dyᵀ u                 [out, r]
        g  = c · dy B              [N, r]
        dA = gᵀ (m ⊙ x)            [r, in]
        dx = m ⊙ (g A)             [N, in]   (added to the frozen product's dy W)

    `input_grad=False` skips dx (the first layer, when nothing below it is trained)."""
    x_kept, keep, u, lora_a, lora_b, factor = cache
    # ddelta: [N, out]
    dlora_b = ddelta.T @ u                                              # [out, r]
    g = ddelta @ lora_b                                                 # [N, r]
    g *= g.dtype.type(factor)
    dlora_a = g.T @ x_kept                                              # [r, in]
    dx = None
    if input_grad:
        dx = g @ lora_a                                                 # [N, in]
        if keep is not None:
            dx *= keep
    return dx, dlora_a, dlora_b
