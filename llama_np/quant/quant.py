"""Round-to-nearest (RTN) block quantization: the llama.cpp formats Q4_0, Q4_1 and Q8_0.

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

QK = 32  # weights per block: QK4_0 = QK4_1 = QK8_0 = 32 in llama.cpp's ggml-common.h

# One block of each format as a NumPy structured dtype: the byte layout of ggml-common.h's
# block_q4_0 / block_q4_1 / block_q8_0 (fp16 scales, little-endian, no padding).
# Nibbles: byte j of `qs` holds weight j in its low 4 bits and weight j + 16 in its high 4.
BLOCK_DTYPES = {
    "Q4_0": np.dtype([("d", "<f2"), ("qs", "u1", QK // 2)]),                # 18 bytes
    "Q4_1": np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", QK // 2)]),  # 20 bytes
    "Q8_0": np.dtype([("d", "<f2"), ("qs", "i1", QK)]),                     # 34 bytes
}
BLOCK_BYTES = {qtype: block.itemsize for qtype, block in BLOCK_DTYPES.items()}

# The tensor type ids a GGUF file stores for these formats (enum ggml_type in ggml.h).
GGML_TYPE_IDS = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 8}

QUANTIZE_CHUNK_ROWS = 1024  # rows quantized at once: bounds the fp32 temporaries
MATMUL_TILE_ROWS = 256      # weight rows dequantized at once by the NumPy matmul


def _check_qtype(qtype):
    if qtype not in BLOCK_DTYPES:
        raise ValueError(f"unknown quantization type {qtype!r}; expected one of {sorted(BLOCK_DTYPES)}")


def _check_cols(cols, qtype):
    if cols % QK:
        raise ValueError(f"cannot use {qtype} for rows of {cols} weights: "
                         f"the row length must be a multiple of the block size {QK}")


# ---------------------------------------------------------------------------------------
# Small pieces shared by the three formats

def _reciprocal(d):
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


def _pack_nibbles(q):
    """q [..., 32] uint8 in 0..15 → [..., 16]: byte j = q[j] | q[j + 16] << 4."""
    return q[..., : QK // 2] | (q[..., QK // 2:] << np.uint8(4))


def _unpack_nibbles(qs):
    """qs [..., 16] uint8 → q [..., 32]: low nibbles are weights 0..15, high ones 16..31."""
    return np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=-1)


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
    q = np.minimum(np.trunc(x * _reciprocal(d) + np.float32(8.5)), 15)    # [..., n_blocks, 32]
    blocks["d"] = d[..., 0]                                               # fp32 → fp16, nearest-even
    blocks["qs"] = _pack_nibbles(q.astype(np.uint8))


def _quantize_blocks_q4_1(x, blocks):
    """Q4_1: asymmetric 4-bit. The 16 levels span [min, max] of the block: m = min,
    d = (max - min) / 15, q = int((x - min)/d + 0.5), i.e. rounded to the nearest level."""
    low = x.min(axis=-1, keepdims=True)                                   # [..., n_blocks, 1]
    high = x.max(axis=-1, keepdims=True)                                  # [..., n_blocks, 1]
    d = (high - low) / np.float32(15)                                     # [..., n_blocks, 1]
    q = np.minimum(np.trunc((x - low) * _reciprocal(d) + np.float32(0.5)), 15)  # [..., n_blocks, 32]
    blocks["d"] = d[..., 0]
    blocks["m"] = low[..., 0]
    blocks["qs"] = _pack_nibbles(q.astype(np.uint8))


def _quantize_blocks_q8_0(x, blocks):
    """Q8_0: symmetric 8-bit, d = max|x| / 127 and q = roundf(x / d) in -127..127."""
    d = np.abs(x).max(axis=-1, keepdims=True) / np.float32(127)          # [..., n_blocks, 1]
    q = _round_half_away(x * _reciprocal(d))                              # [..., n_blocks, 32]
    blocks["d"] = d[..., 0]
    blocks["qs"] = q.astype(np.int8)


_QUANTIZE_BLOCKS = {"Q4_0": _quantize_blocks_q4_0, "Q4_1": _quantize_blocks_q4_1,
                    "Q8_0": _quantize_blocks_q8_0}


def quantize(w, qtype):
    """Quantize a weight matrix w [rows, cols] (cols a multiple of 32) to `qtype`.

    Returns uint8 [rows, cols // 32 * BLOCK_BYTES[qtype]]: each row is its blocks back to
    back, exactly the bytes a GGUF file stores for that tensor.
    """
    _check_qtype(qtype)
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"quantize expects a 2-D weight matrix [rows, cols], got shape {w.shape}")
    rows, cols = w.shape
    _check_cols(cols, qtype)
    n_blocks = cols // QK
    blocks = np.empty((rows, n_blocks), dtype=BLOCK_DTYPES[qtype])        # [rows, n_blocks]
    for start in range(0, rows, QUANTIZE_CHUNK_ROWS):
        stop = min(start + QUANTIZE_CHUNK_ROWS, rows)
        x = w[start:stop].reshape(stop - start, n_blocks, QK)            # [chunk, n_blocks, 32]
        _QUANTIZE_BLOCKS[qtype](x, blocks[start:stop])
    return blocks.view(np.uint8)                                          # [rows, row_bytes]


def _as_blocks(data, qtype):
    """View uint8 data [rows, row_bytes] as structured blocks [rows, n_blocks] (no copy
    when data is C-contiguous, e.g. a memory map of a GGUF tensor)."""
    _check_qtype(qtype)
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2:
        raise ValueError(f"{qtype} data must be uint8 [rows, row_bytes], got {data.dtype} {data.shape}")
    if data.shape[1] % BLOCK_BYTES[qtype]:
        raise ValueError(f"{qtype} rows of {data.shape[1]} bytes are not whole "
                         f"{BLOCK_BYTES[qtype]}-byte blocks")
    return np.ascontiguousarray(data).view(BLOCK_DTYPES[qtype])


def dequantize(data, qtype):
    """Expand quantized rows data uint8 [rows, row_bytes] back to float32 [rows, cols]."""
    blocks = _as_blocks(data, qtype)                                      # [rows, n_blocks]
    d = blocks["d"].astype(np.float32)[..., None]                         # [rows, n_blocks, 1]
    if qtype == "Q8_0":
        w = d * blocks["qs"].astype(np.float32)                           # [rows, n_blocks, 32]
    else:
        q = _unpack_nibbles(blocks["qs"]).astype(np.float32)              # [rows, n_blocks, 32]
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
    in_features = data.shape[1] // BLOCK_BYTES[qtype] * QK
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
    qx = np.rint(blocks * _reciprocal(dx)[..., None]).astype(np.int8)     # [T, n_blocks, 32]
    return dx, qx


def quant_matmul_int8(data, qtype, x):
    """x @ W.T the way llama.cpp computes it: activations rounded to int8 per 32-block
    (`quantize_activations_int8`), so each block product is an integer dot product.
    NumPy reference of the C kernel quant_matmul_f32 with int8_activations.

    With sx = dx·Σqx per activation block, one block contributes
        Q8_0  dw·dx·Σ qw qx          Q4_1  dw·dx·Σ qw qx + m·sx       Q4_0  dw·dx·Σ qw qx - 8·dw·sx

    Faster on CPUs with byte dot products (AVX2 maddubs, VNNI), but each activation now
    carries an error of up to dx/2 (1/254 of its block's largest |x|) on top of the
    weights' own. Measured: outputs move by about 0.5% of their spread on Gaussian data;
    SmolLM2-135M Q4_1 on a 19-token prompt: logits move by up to 0.94 (mean 0.16, against
    a logit spread of 5.5), the same greedy tokens — the "up to ~1 logit" of DESIGN.md §5.
    """
    dx, qx = quantize_activations_int8(x)                                 # [T, nb], [T, nb, 32]
    sx = dx * qx.sum(axis=-1, dtype=np.int32).astype(np.float32)          # [T, nb]
    qx_by_block = qx.transpose(1, 0, 2).astype(np.float32)                # [nb, T, 32]
    out_features = data.shape[0]
    y = np.empty((x.shape[0], out_features), dtype=np.float32)            # [T, out]
    for start in range(0, out_features, MATMUL_TILE_ROWS):
        stop = min(start + MATMUL_TILE_ROWS, out_features)
        blocks = _as_blocks(data[start:stop], qtype)                      # [tile, nb]
        dw = blocks["d"].astype(np.float32)                               # [tile, nb]
        qw = blocks["qs"] if qtype == "Q8_0" else _unpack_nibbles(blocks["qs"])  # [tile, nb, 32]
        # Σ qw·qx per (block, token, row): integers below 2^24, so exact in float32.
        int_dots = qx_by_block @ qw.transpose(1, 2, 0).astype(np.float32)  # [nb, T, tile]
        y_tile = np.einsum("btr,rb,tb->tr", int_dots, dw, dx)             # [T, tile]
        if qtype == "Q4_1":
            y_tile += sx @ blocks["m"].astype(np.float32).T
        elif qtype == "Q4_0":
            y_tile -= np.float32(8) * (sx @ dw.T)
        y[:, start:stop] = y_tile
    return y


# ---------------------------------------------------------------------------------------

class QuantizedMatrix:
    """A weight matrix W [out_features, in_features] (Hugging Face layout) kept as blocks.

    `data` is uint8 [out_features, row_bytes], e.g. the bytes of one tensor straight out of
    a GGUF file (mapped or read); it is never copied and never dequantized as a whole. Products:

        matmul(x)    x [..., in]  → x @ W.T  [..., out]   (a Linear layer's forward)
        matmul_t(dy) dy [..., out] → dy @ W  [..., in]    (its input gradient)
        rows(ids)    ids [...]    → W[ids]   [..., in]    (an embedding lookup)

    matmul runs the C kernels of `llama_np.kernels.native` when they were built, else NumPy. With
    int8_activations=True it rounds activations to 8 bits first, as llama.cpp does
    (`quant_matmul_int8`: integer arithmetic, less exact); the default keeps them fp32.

    """

    def __init__(self, data, qtype, shape, int8_activations=False):
        _check_qtype(qtype)
        out_features, in_features = (int(n) for n in shape)
        _check_cols(in_features, qtype)
        row_bytes = in_features // QK * BLOCK_BYTES[qtype]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
            raise TypeError(f"quantized data must be a uint8 numpy array, got "
                            f"{getattr(data, 'dtype', type(data).__name__)}")
        if data.size != out_features * row_bytes:
            raise ValueError(f"{qtype} matrix of shape {(out_features, in_features)} needs "
                             f"{out_features * row_bytes} bytes, got {data.size}")
        if not data.flags.c_contiguous:
            raise ValueError("quantized data must be C-contiguous")
        self.data = data.reshape(out_features, row_bytes)                 # [out, row_bytes], a view
        self.qtype = qtype
        self.shape = (out_features, in_features)
        self.int8_activations = bool(int8_activations)

    @classmethod
    def from_float(cls, w, qtype, int8_activations=False):
        """Quantize a float matrix w [out_features, in_features]."""
        w = np.asarray(w, dtype=np.float32)
        return cls(quantize(w, qtype), qtype, w.shape, int8_activations)

    @property
    def nbytes(self):
        return self.data.nbytes

    def __repr__(self):
        return f"QuantizedMatrix({self.qtype}, shape={self.shape}, {self.nbytes:,} bytes)"

    def dequantize(self):
        """The whole matrix as float32 [out, in] — for tests and tools, not for inference."""
        return dequantize(self.data, self.qtype)

    def rows(self, ids):
        """Dequantize only the rows `ids` (any shape of integers) → [*ids.shape, in]."""
        ids = np.asarray(ids)
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"row ids must be integers, got {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.shape[0]):
            raise IndexError(f"row ids must lie in [0, {self.shape[0]}), "
                             f"got {ids.min()}..{ids.max()}")
        picked = dequantize(self.data[ids.reshape(-1)], self.qtype)       # [n_ids, in]
        return picked.reshape(*ids.shape, self.shape[1])

    def _check_input(self, x, features, name):
        if not isinstance(x, np.ndarray) or x.dtype != np.float32:
            raise TypeError(f"{name} must be a float32 numpy array, got "
                            f"{getattr(x, 'dtype', type(x).__name__)} (use .astype(np.float32))")
        if x.ndim == 0 or x.shape[-1] != features:
            raise ValueError(f"{name} must have shape [..., {features}] for a {self.shape} "
                             f"matrix, got {x.shape}")
        return np.ascontiguousarray(x.reshape(-1, features))             # [T, features]

    def matmul(self, x):
        """y = x @ W.T: x [..., in] float32 → [..., out]."""
        from llama_np.kernels import native as kernels  # imported here because kernels imports this module
        out_features, in_features = self.shape
        x2 = self._check_input(x, in_features, "x")                       # [T, in]
        if kernels.AVAILABLE:
            y = kernels.quant_matmul(self.data, self.qtype, x2, self.int8_activations)  # C
        elif self.int8_activations:
            y = quant_matmul_int8(self.data, self.qtype, x2)              # [T, out], NumPy
        else:
            y = quant_matmul(self.data, self.qtype, x2)                   # [T, out], NumPy
        return y.reshape(*x.shape[:-1], out_features)

    def matmul_t(self, dy):
        """dx = dy @ W: dy [..., out] float32 → [..., in] (NumPy, tile by tile)."""
        out_features, in_features = self.shape
        dy2 = self._check_input(dy, out_features, "dy")                   # [T, out]
        return quant_matmul_t(self.data, self.qtype, dy2).reshape(*dy.shape[:-1], in_features)
