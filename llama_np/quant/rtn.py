"""Round-to-nearest (RTN) block quantization into the llama.cpp formats Q4_0, Q4_1 and Q8_0.

The idea (used by the paper for its 4-bit Chinese-LLaMA/Alpaca models via llama.cpp):
cut every weight row into blocks of QK = 32 consecutive weights, give each block its own
scale `d` (and, for Q4_1, its own offset `m`), and store every weight as a small integer
`q` — the nearest grid point, no calibration data, no error feedback. A block of 32 fp32
weights (128 bytes) becomes 18 (Q4_0), 20 (Q4_1) or 34 (Q8_0) bytes:

    Q4_0   w ≈ (q - 8) · d        q ∈ 0..15     d chosen so the largest |w| lands on q = 0
    Q4_1   w ≈ q · d + m          q ∈ 0..15     m = min(w), d = (max(w) - min(w)) / 15
    Q8_0   w ≈ q · d              q ∈ -127..127 d = max|w| / 127

Because blocks run along the input dimension of a weight matrix [out_features, in_features],
each row is quantized independently: permuting rows (as GGUF does for attn_q/attn_k) is
exact, and `x @ W.T` needs one block of weights against 32 consecutive activations.

This module is the NumPy reference: `quantize` / `dequantize` are bit-identical to
llama.cpp's reference quantizer (ggml-quants.c, `quantize_row_q4_0_ref` etc.) as mirrored
by the `gguf` package's `gguf.quants`, and `QuantizedMatrix` keeps the blocks (possibly a
read-only memory map of a GGUF file) and multiplies by them without ever materialising the
whole fp32 matrix. The C kernels in `kernels/quant_matmul.c` compute the same products.
"""
import numpy as np

from llama_np.quant.formats import BLOCK_DTYPES, QK, as_blocks, check_cols, check_qtype, pack_nibbles, unpack_nibbles

QUANTIZE_CHUNK_ROWS = 1024  # rows quantized at once: bounds the fp32 temporaries


def reciprocal(d):
    """1/d, and 0 where d == 0 (an all-zero block then quantizes to q = 0 or the midpoint)."""
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d)


def _round_half_away(v):
    """C's roundf: round to nearest, ties away from zero (np.round would tie to even).

    Computed as floor(|v|) + [frac(|v|) >= 0.5], which is exact in float32; the shortcut
    floor(|v| + 0.5) is not (0.49999997 + 0.5 rounds up to 1.0 in float32).
    """
    magnitude = np.abs(v)
    whole = np.floor(magnitude)
    rounded = whole + (magnitude - whole >= np.float32(0.5))
    return np.copysign(rounded, v)


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
    q = _round_half_away(x * reciprocal(d))                              # [..., n_blocks, 32]
    blocks["d"] = d[..., 0]
    blocks["qs"] = q.astype(np.int8)


_QUANTIZE_BLOCKS = {"Q4_0": _quantize_blocks_q4_0, "Q4_1": _quantize_blocks_q4_1,
                    "Q8_0": _quantize_blocks_q8_0}


def quantize(w, qtype):
    """Quantize a weight matrix w [rows, cols] (cols a multiple of 32) to `qtype`.

    Returns uint8 [rows, cols // 32 * BLOCK_BYTES[qtype]]: each row is its blocks back to
    back, exactly the bytes a GGUF file stores for that tensor.
    """
    check_qtype(qtype)
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"quantize expects a 2-D weight matrix [rows, cols], got shape {w.shape}")
    rows, cols = w.shape
    check_cols(cols, qtype)
    n_blocks = cols // QK
    blocks = np.empty((rows, n_blocks), dtype=BLOCK_DTYPES[qtype])        # [rows, n_blocks]
    for start in range(0, rows, QUANTIZE_CHUNK_ROWS):
        stop = min(start + QUANTIZE_CHUNK_ROWS, rows)
        x = w[start:stop].reshape(stop - start, n_blocks, QK)            # [chunk, n_blocks, 32]
        _QUANTIZE_BLOCKS[qtype](x, blocks[start:stop])
    return blocks.view(np.uint8)                                          # [rows, row_bytes]


def dequantize(data, qtype):
    """Expand quantized rows data uint8 [rows, row_bytes] back to float32 [rows, cols]."""
    blocks = as_blocks(data, qtype)                                      # [rows, n_blocks]
    d = blocks["d"].astype(np.float32)[..., None]                         # [rows, n_blocks, 1]
    if qtype == "Q8_0":
        w = d * blocks["qs"].astype(np.float32)                           # [rows, n_blocks, 32]
    else:
        q = unpack_nibbles(blocks["qs"]).astype(np.float32)              # [rows, n_blocks, 32]
        if qtype == "Q4_0":
            w = d * (q - np.float32(8))
        else:
            w = d * q + blocks["m"].astype(np.float32)[..., None]
    return w.reshape(blocks.shape[0], -1)                                 # [rows, cols]


def quantization_error(w, qtype):
    """How much RTN loses on w [rows, cols]: root-mean-square and largest absolute error,
    and the signal-to-noise ratio 10·log10(Σw² / Σ(w - ŵ)²) in dB (higher is better;
    each extra bit of precision adds about 6 dB)."""
    w = np.asarray(w, dtype=np.float32)
    error = dequantize(quantize(w, qtype), qtype).astype(np.float64) - w  # [rows, cols]
    signal_power = np.sum(np.square(w, dtype=np.float64))
    noise_power = np.sum(error * error)
    snr_db = np.inf if noise_power == 0 else 10 * np.log10(signal_power / noise_power)
    return dict(rmse=float(np.sqrt(np.mean(error * error))),
                max_abs=float(np.max(np.abs(error), initial=0.0)),
                snr_db=float(snr_db))
