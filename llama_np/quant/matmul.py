"""NumPy references of the quantized matrix products the C kernels compute
(kernels/quant_matmul.c): x @ W.T with W kept as blocks, dequantized a tile of rows at a
time so that at most one fp32 tile exists at once (any block format, 32-weight blocks or
256-weight K-quant super-blocks); its transpose for gradients; and llama.cpp's arithmetic
with activations rounded to 8 bits (every block format).
"""
import numpy as np

from llama_np.quant.formats import FORMATS, QK, as_blocks, unpack_nibbles
from llama_np.quant.codec import dequantize
from llama_np.quant.rtn import reciprocal

MATMUL_TILE_ROWS = 256      # weight rows dequantized at once by the NumPy matmul
# what quant_matmul_int8 multiplies: every block format (the float ones take float activations)
INT8_PRODUCT_FORMATS = tuple(name for name, fmt in FORMATS.items() if fmt.block_weights > 1)
# the ones whose block products it writes out as integer dot products (the others: see there)
INTEGER_DOT_FORMATS = ("Q4_0", "Q4_1", "Q8_0")


def quant_matmul(data, qtype, x):
    """NumPy reference of the C kernel quant_matmul_f32 (kernels/quant_matmul.c):
    x [T, in] float32 @ W.T → [T, out], W given as quantized rows data [out, row_bytes].

    Dequantizes MATMUL_TILE_ROWS weight rows at a time and lets BLAS multiply them, so at
    most one fp32 tile of W exists at any moment.
    """
    out_features = data.shape[0]
    y = np.empty((x.shape[0], out_features), dtype=np.float32)            # [T, out]
    for start in range(0, out_features, MATMUL_TILE_ROWS):
        stop = min(start + MATMUL_TILE_ROWS, out_features)
        w_tile = dequantize(data[start:stop], qtype)                      # [tile, in]
        y[:, start:stop] = x @ w_tile.T                                   # [T, tile]
    return y


def quant_matmul_t(data, qtype, dy):
    """dy [T, out] float32 @ W → [T, in]: the input gradient of y = x @ W.T, tile by tile."""
    out_features = data.shape[0]
    in_features = data.shape[1] // FORMATS[qtype].block_bytes * FORMATS[qtype].block_weights
    dx = np.zeros((dy.shape[0], in_features), dtype=np.float32)           # [T, in]
    for start in range(0, out_features, MATMUL_TILE_ROWS):
        stop = min(start + MATMUL_TILE_ROWS, out_features)
        w_tile = dequantize(data[start:stop], qtype)                      # [tile, in]
        dx += dy[:, start:stop] @ w_tile                                  # [T, in]
    return dx


def quantize_activations_int8(x):
    """Activations x [T, in] rounded to int8 per 32-block, the Q8_0 rule: dx = max|x| / 127
    and qx = round(x / dx), ties to even (C's nearbyintf). Returns dx [T, n_blocks] float32
    and qx [T, n_blocks, 32] int8."""
    blocks = x.reshape(x.shape[0], -1, QK)                                # [T, n_blocks, 32]
    dx = np.abs(blocks).max(axis=-1) / np.float32(127)                    # [T, n_blocks]
    qx = np.rint(blocks * reciprocal(dx)[..., None]).astype(np.int8)     # [T, n_blocks, 32]
    return dx, qx


def quant_matmul_int8(data, qtype, x):
    """x @ W.T the way llama.cpp computes it: activations rounded to int8 per 32-block
    (`quantize_activations_int8`), so each block product is an integer dot product.
    NumPy reference of the C kernel quant_matmul_f32 with int8_activations.

    With sx = dx·Σqx per activation block, one block contributes
        Q8_0  dw·dx·Σ qw qx          Q4_1  dw·dx·Σ qw qx + m·sx       Q4_0  dw·dx·Σ qw qx - 8·dw·sx

    Faster on CPUs with byte dot products (AVX2 maddubs, VNNI), but each activation now
    carries an error of up to dx/2 (1/254 of its block's largest |x|) on top of the
    weights' own. The logits move by up to about one, which is also how far llama.cpp's
    are from float32 ones (docs/benchmarks.md#agreement-between-engines); the measurements
    are in docs/benchmarks.md#int8-activations.

    Q5_0, Q5_1 and the K-quants: each 32-weight piece of a block meets one activation block
    too (kernels/internal/piece_rows.h writes its integer form); here, the same value
    written plainly, the weights dequantized times the rounded activations dx·qx.
    """
    if qtype not in INT8_PRODUCT_FORMATS:
        raise ValueError(f"no int8-activation product for {qtype}; expected one of {', '.join(INT8_PRODUCT_FORMATS)}")
    dx, qx = quantize_activations_int8(x)                                 # [T, nb], [T, nb, 32]
    if qtype not in INTEGER_DOT_FORMATS:
        rounded = (qx.astype(np.float32) * dx[..., None]).reshape(x.shape)  # [T, in]
        return quant_matmul(data, qtype, rounded)
    sx = dx * qx.sum(axis=-1, dtype=np.int32).astype(np.float32)          # [T, nb]
    qx_by_block = qx.transpose(1, 0, 2).astype(np.float32)                # [nb, T, 32]
    out_features = data.shape[0]
    y = np.empty((x.shape[0], out_features), dtype=np.float32)            # [T, out]
    for start in range(0, out_features, MATMUL_TILE_ROWS):
        stop = min(start + MATMUL_TILE_ROWS, out_features)
        blocks = as_blocks(data[start:stop], qtype)                      # [tile, nb]
        dw = blocks["d"].astype(np.float32)                               # [tile, nb]
        qw = blocks["qs"] if qtype == "Q8_0" else unpack_nibbles(blocks["qs"])  # [tile, nb, 32]
        # Σ qw·qx per (block, token, row): integers below 2^24, so exact in float32.
        int_dots = qx_by_block @ qw.transpose(1, 2, 0).astype(np.float32)  # [nb, T, tile]
        y_tile = np.einsum("btr,rb,tb->tr", int_dots, dw, dx)             # [T, tile]
        if qtype == "Q4_1":
            y_tile += sx @ blocks["m"].astype(np.float32).T
        elif qtype == "Q4_0":
            y_tile -= np.float32(8) * (sx @ dw.T)
        y[:, start:stop] = y_tile
    return y
