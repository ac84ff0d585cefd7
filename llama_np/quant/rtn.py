"""Round-to-nearest (RTN) block quantization into the 32-weight llama.cpp formats Q4_0, Q4_1,
Q5_0, Q5_1 and Q8_0.

The idea (used by the paper for its 4-bit Chinese-LLaMA/Alpaca models via llama.cpp):
cut every weight row into blocks of QK = 32 consecutive weights, give each block its own
scale `d` (and, for Q4_1/Q5_1, its own offset `m`), and store every weight as a small
integer `q` — the nearest grid point, no calibration data, no error feedback. A block of 32
fp32 weights (128 bytes) becomes 18 (Q4_0), 20 (Q4_1), 22 (Q5_0), 24 (Q5_1) or 34 (Q8_0) bytes:

    Q4_0   w ≈ (q - 8) · d        q ∈ 0..15     d chosen so the largest |w| lands on q = 0
    Q4_1   w ≈ q · d + m          q ∈ 0..15     m = min(w), d = (max(w) - min(w)) / 15
    Q5_0   w ≈ (q - 16) · d       q ∈ 0..31     as Q4_0 with twice the levels
    Q5_1   w ≈ q · d + m          q ∈ 0..31     as Q4_1, d = (max - min) / 31
    Q8_0   w ≈ q · d              q ∈ -127..127 d = max|w| / 127

The 5-bit formats store the low four bits of q as Q4's nibbles do and the fifth bits of the
block's 32 weights in one little-endian u32 `qh` (bit j: weight j).

Because blocks run along the input dimension of a weight matrix [out_features, in_features],
each row is quantized independently: permuting rows (as GGUF does for attn_q/attn_k) is
exact, and `x @ W.T` needs one block of weights against 32 consecutive activations.

These are the NumPy references, bit-identical to llama.cpp's reference quantizers
(ggml-quants.c, `quantize_row_q4_0_ref` etc., which its quantizer runs when no importance
matrix is given) and to its dequantizers as mirrored by `gguf.quants`. `quant.codec` applies
them to whole matrices.
"""
import numpy as np

from llama_np.quant.formats import QK, pack_nibbles, unpack_nibbles


def reciprocal(d):
    """1/d, and 0 where d == 0 (an all-zero block then quantizes to q = 0 or the midpoint)."""
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d)


def round_half_away(v):
    """C's roundf: round to nearest, ties away from zero (np.round would tie to even).

    Computed as floor(|v|) + [frac(|v|) >= 0.5], which is exact in float32; the shortcut
    floor(|v| + 0.5) is not (0.49999997 + 0.5 rounds up to 1.0 in float32).
    """
    magnitude = np.abs(v)
    whole = np.floor(magnitude)
    rounded = whole + (magnitude - whole >= np.float32(0.5))
    return np.copysign(rounded, v)


def pack_fifth_bits(q):
    """q [..., 32] uint8 in 0..31 → qh [...] uint32: bit j is bit 4 of q[j]."""
    bits = (q >> np.uint8(4)).astype(np.uint32) << np.arange(QK, dtype=np.uint32)  # [..., 32]
    return np.bitwise_or.reduce(bits, axis=-1)


def unpack_fifth_bits(qh):
    """qh [...] uint32 → [..., 32] uint8 holding 16 where bit j of qh is set, else 0."""
    bits = (qh[..., None] >> np.arange(QK, dtype=np.uint32)) & np.uint32(1)    # [..., 32]
    return bits.astype(np.uint8) << np.uint8(4)


# ---------------------------------------------------------------------------------------
# The reference quantizers, one block at a time (vectorised over many blocks).
# Each takes x [..., n_blocks, 32] float32 and fills `blocks` [..., n_blocks] of its dtype.
# The float32 order of operations follows ggml-quants.c, so the bytes are identical.

def _quantize_blocks_q4_0(x, blocks):
    """Q4_0: symmetric 4-bit. The weight of largest magnitude, with its sign, is `extreme`;
    d = extreme / -8 puts it exactly on q = 0 (value -8·d = extreme), so the asymmetric
    grid -8..7 spends its extra step on the side where the outlier is."""
    largest_at = np.abs(x).argmax(axis=-1)[..., None]                     # [..., n_blocks, 1]
    extreme = np.take_along_axis(x, largest_at, axis=-1)                  # [..., n_blocks, 1]
    d = extreme / np.float32(-8)                                          # [..., n_blocks, 1]
    # int(x/d + 8.5) rounds x/d to nearest and shifts it to 0..16; 16 is clamped to 15.
    q = np.minimum(np.trunc(x * reciprocal(d) + np.float32(8.5)), 15)    # [..., n_blocks, 32]
    blocks["d"] = d[..., 0]                                               # fp32 → fp16, nearest-even
    blocks["qs"] = pack_nibbles(q.astype(np.uint8))


def _quantize_blocks_q4_1(x, blocks):
    """Q4_1: asymmetric 4-bit. The 16 levels span [min, max] of the block: m = min,
    d = (max - min) / 15, q = int((x - min)/d + 0.5), i.e. rounded to the nearest level."""
    low = x.min(axis=-1, keepdims=True)                                   # [..., n_blocks, 1]
    high = x.max(axis=-1, keepdims=True)                                  # [..., n_blocks, 1]
    d = (high - low) / np.float32(15)                                     # [..., n_blocks, 1]
    q = np.minimum(np.trunc((x - low) * reciprocal(d) + np.float32(0.5)), 15)  # [..., n_blocks, 32]
    blocks["d"] = d[..., 0]
    blocks["m"] = low[..., 0]
    blocks["qs"] = pack_nibbles(q.astype(np.uint8))


def _quantize_blocks_q8_0(x, blocks):
    """Q8_0: symmetric 8-bit, d = max|x| / 127 and q = roundf(x / d) in -127..127."""
    d = np.abs(x).max(axis=-1, keepdims=True) / np.float32(127)          # [..., n_blocks, 1]
    q = round_half_away(x * reciprocal(d))                              # [..., n_blocks, 32]
    blocks["d"] = d[..., 0]
    blocks["qs"] = q.astype(np.int8)


def _quantize_blocks_q5_0(x, blocks):
    """Q5_0: Q4_0's rule on 32 levels: d = extreme / -16, q = min(31, int(x/d + 16.5))."""
    largest_at = np.abs(x).argmax(axis=-1)[..., None]                     # [..., n_blocks, 1]
    extreme = np.take_along_axis(x, largest_at, axis=-1)                  # [..., n_blocks, 1]
    d = extreme / np.float32(-16)                                         # [..., n_blocks, 1]
    q = np.minimum(np.trunc(x * reciprocal(d) + np.float32(16.5)), 31).astype(np.uint8)  # [..., n_blocks, 32]
    blocks["d"] = d[..., 0]
    blocks["qh"] = pack_fifth_bits(q)
    blocks["qs"] = pack_nibbles(q & np.uint8(0x0F))


def _quantize_blocks_q5_1(x, blocks):
    """Q5_1: Q4_1's rule on 32 levels: m = min, d = (max - min) / 31."""
    low = x.min(axis=-1, keepdims=True)                                   # [..., n_blocks, 1]
    high = x.max(axis=-1, keepdims=True)                                  # [..., n_blocks, 1]
    d = (high - low) / np.float32(31)                                     # [..., n_blocks, 1]
    q = np.minimum(np.trunc((x - low) * reciprocal(d) + np.float32(0.5)), 31).astype(np.uint8)
    blocks["d"] = d[..., 0]
    blocks["m"] = low[..., 0]
    blocks["qh"] = pack_fifth_bits(q)
    blocks["qs"] = pack_nibbles(q & np.uint8(0x0F))


QUANTIZE_BLOCKS = {"Q4_0": _quantize_blocks_q4_0, "Q4_1": _quantize_blocks_q4_1,
                   "Q5_0": _quantize_blocks_q5_0, "Q5_1": _quantize_blocks_q5_1,
                   "Q8_0": _quantize_blocks_q8_0}


# ---------------------------------------------------------------------------------------
# The dequantizers: blocks [..., n_blocks] of a format → float32 [..., n_blocks, 32].

def _scale(blocks, field="d"):
    return blocks[field].astype(np.float32)[..., None]                   # [..., n_blocks, 1]


def _five_bit_q(blocks):
    return (unpack_nibbles(blocks["qs"]) | unpack_fifth_bits(blocks["qh"])).astype(np.float32)


DEQUANTIZE_BLOCKS = {
    "Q4_0": lambda b: _scale(b) * (unpack_nibbles(b["qs"]).astype(np.float32) - np.float32(8)),
    "Q4_1": lambda b: _scale(b) * unpack_nibbles(b["qs"]).astype(np.float32) + _scale(b, "m"),
    "Q5_0": lambda b: _scale(b) * (_five_bit_q(b) - np.float32(16)),
    "Q5_1": lambda b: _scale(b) * _five_bit_q(b) + _scale(b, "m"),
    "Q8_0": lambda b: _scale(b) * b["qs"].astype(np.float32),
}
