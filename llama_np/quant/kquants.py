"""llama.cpp's K-quants Q2_K, Q3_K, Q4_K, Q5_K and Q6_K: super-blocks of QK_K = 256 weights.

A 32-weight block spends 16 bits on each fp16 scale: half a bit per weight for Q4_0. A
K-quant super-block instead has one or two fp16 numbers (d, dmin) for 256 weights and
gives each sub-block of 16 or 32 weights a small integer scale (4, 6 or 8 bits) that
multiplies them, so the scales cost less and the sub-blocks can be shorter:

    type  sub-blocks  weight                          q       sub-scale, min      bytes  bits/w
    Q2_K  16 × 16     d·sc·q − dmin·m                 0..3    4 + 4 bits          84     2.625
    Q3_K  16 × 16     d·(sc − 32)·q                   −4..3   6 bits              110    3.4375
    Q4_K   8 × 32     d·sc·q − dmin·m                 0..15   6 + 6 bits          144    4.5
    Q5_K   8 × 32     d·sc·q − dmin·m                 0..31   6 + 6 bits          176    5.5
    Q6_K  16 × 16     d·sc·(q − 32)                   0..63   int8                210    6.5625

Weight i of a super-block belongs to sub-block i // 16 (or i // 32). The byte layouts:

    Q2_K  scales[16]: byte j = sc_j | m_j << 4; qs[64]: per half h (128 weights, 32 bytes)
          byte l holds weights 128h + l + 32k (k = 0..3) in bits 2k, 2k+1; then d, dmin
    Q3_K  hmask[32]: bit k of byte l is the third bit of weight l + 32k (clear: subtract 4);
          qs[64]: the low two bits as Q2_K's; scales[12]: sixteen 6-bit sc, low nibbles
          in bytes 0..7 (sub-block j: byte j % 8, high nibble from j ≥ 8), top two bits in
          bytes 8..11 (sub-block j: byte 8 + j % 4, bits 2(j // 4)); then d
    Q4_K  d, dmin; scales[12]: eight 6-bit sc and m (`pack_scales_k4`); qs[128]: four chunks
          of 32 bytes, chunk c = sub-block 2c in the low nibbles, 2c + 1 in the high ones
    Q5_K  as Q4_K, plus qh[32] after the scales: bit s of qh[l] is the fifth bit of weight
          l of sub-block s
    Q6_K  ql[128]: per half, bytes 0..31 hold weights l (low nibble) and l + 64 (high),
          bytes 32..63 weights l + 32 and l + 96; qh[64]: per half, byte l holds the top two
          bits of weights l + 32k in bits 2k, 2k+1; scales: int8[16]; then d

Quantizing (no importance matrix: llama.cpp's quantize_row_*_ref): each sub-block's scale
(and min) comes from a search over candidate grids (`quant.kquant_search`); the sub-scales
are then rounded to their few bits against the super-block's largest, d and dmin to fp16,
and finally every weight is rounded again against the scale it will really be read with.
These functions are bit-identical to llama.cpp's; the dequantizers to `gguf.quants`.
"""
import numpy as np

from llama_np.quant.formats import QK_K
from llama_np.quant.kquant_search import (GROUP_MAX_EPS, first_largest_magnitude, make_q3_quants,
                                          make_qkx2_quants, make_qx_quants, nearest_int, ordered_sum)

f32 = np.float32
HALF = QK_K // 2  # 128: the 2-bit and 6-bit layouts pack each half of a super-block alike


def fp16_round(v):
    """v float32 → the float32 value of its fp16 rounding (how the block stores d)."""
    return np.asarray(v, dtype=np.float32).astype(np.float16).astype(np.float32)


def largest(values, initial=0.0):
    """max(initial, values...) over the last axis: C's `if (v > best) best = v` from 0."""
    return np.maximum(values.max(axis=-1), f32(initial))


# ---------------------------------------------------------------------------------------
# Bit packing shared by several formats.

def pack_2bit(q):
    """q [..., 256] uint8 in 0..3 → [..., 64]: byte 32h + l = Σ_k q[128h + 32k + l] << 2k."""
    groups = q.reshape(*q.shape[:-1], 2, 4, 32).astype(np.uint8)           # [..., half, k, l]
    shifts = (2 * np.arange(4, dtype=np.uint8))[:, None]                  # [4, 1]
    return np.bitwise_or.reduce(groups << shifts, axis=-2).reshape(*q.shape[:-1], QK_K // 4)


def unpack_2bit(qs):
    """qs [..., 64] → [..., 256] uint8 in 0..3, the inverse of pack_2bit."""
    shifts = (2 * np.arange(4, dtype=np.uint8))[:, None]                  # [4, 1]
    groups = (qs.reshape(*qs.shape[:-1], 2, 1, 32) >> shifts) & np.uint8(3)  # [..., half, k, l]
    return groups.reshape(*qs.shape[:-1], QK_K)


def pack_bit_planes(bits, n_planes):
    """bits [..., n_planes · 32] in {0, 1} → [..., 32]: bit p of byte l is bits[32p + l]."""
    planes = bits.reshape(*bits.shape[:-1], n_planes, 32).astype(np.uint8)
    shifts = np.arange(n_planes, dtype=np.uint8)[:, None]                 # [n_planes, 1]
    return np.bitwise_or.reduce(planes << shifts, axis=-2)


def unpack_bit_planes(packed, n_planes):
    """packed [..., 32] → [..., n_planes · 32] uint8 in {0, 1}, the inverse."""
    shifts = np.arange(n_planes, dtype=np.uint8)[:, None]
    planes = (packed[..., None, :] >> shifts) & np.uint8(1)               # [..., n_planes, 32]
    return planes.reshape(*packed.shape[:-1], n_planes * 32)


def pack_nibble_chunks(q):
    """q [..., 256] uint8 in 0..15 → [..., 128] (Q4_K, Q5_K): four chunks of 32 bytes, chunk c
    holding sub-block 2c in its low nibbles and sub-block 2c + 1 in its high ones."""
    chunks = q.reshape(*q.shape[:-1], 4, 2, 32)                           # [..., c, low/high, l]
    return (chunks[..., 0, :] | chunks[..., 1, :] << 4).reshape(*q.shape[:-1], HALF)


def unpack_nibble_chunks(qs):
    """qs [..., 128] → [..., 256] uint8 in 0..15, the inverse of pack_nibble_chunks."""
    chunks = qs.reshape(*qs.shape[:-1], 4, 1, 32) >> np.array([0, 4], dtype=np.uint8)[:, None]
    return (chunks & 0x0F).reshape(*qs.shape[:-1], QK_K)


def pack_scales_k4(sc, m):
    """Eight 6-bit scales sc and mins m [..., 8] → scales [..., 12] (Q4_K, Q5_K):
    bytes 0..3 = sc[0..3] | (top 2 bits of sc[4..7]) << 6, bytes 4..7 the same for m,
    bytes 8..11 = low nibbles of sc[4..7] | low nibbles of m[4..7] << 4."""
    sc, m = sc.astype(np.uint8), m.astype(np.uint8)
    low_sc, high_sc, low_m, high_m = sc[..., :4], sc[..., 4:], m[..., :4], m[..., 4:]
    return np.concatenate([low_sc | (high_sc >> 4) << 6, low_m | (high_m >> 4) << 6,
                           (high_sc & 0x0F) | (high_m & 0x0F) << 4], axis=-1)


def unpack_scales_k4(scales):
    """scales [..., 12] → (sc, m), each [..., 8] uint8 in 0..63 (llama.cpp's get_scale_min_k4)."""
    head_sc, head_m, tail = scales[..., :4], scales[..., 4:8], scales[..., 8:]
    sc = np.concatenate([head_sc & 63, (tail & 0x0F) | (head_sc >> 6) << 4], axis=-1)
    m = np.concatenate([head_m & 63, (tail >> 4) | (head_m >> 6) << 4], axis=-1)
    return sc, m


def pack_scales_q3(levels):
    """Sixteen 6-bit values [..., 16] → Q3_K's scales [..., 12] (see the module docstring)."""
    levels = levels.astype(np.uint8)
    low = levels & 0x0F                                                   # [..., 16]
    low_bytes = low[..., :8] | low[..., 8:] << 4                          # [..., 8]
    top = (levels >> 4).reshape(*levels.shape[:-1], 4, 4)                 # [..., j // 4, j % 4]
    shifts = (2 * np.arange(4, dtype=np.uint8))[:, None]
    top_bytes = np.bitwise_or.reduce(top << shifts, axis=-2)              # [..., 4]
    return np.concatenate([low_bytes, top_bytes], axis=-1)


def unpack_scales_q3(scales):
    """Q3_K's scales [..., 12] → the sixteen 6-bit values [..., 16] uint8."""
    low = np.concatenate([scales[..., :8] & 0x0F, scales[..., :8] >> 4], axis=-1)  # [..., 16]
    shifts = (2 * np.arange(4, dtype=np.uint8))[:, None]
    top = (scales[..., None, 8:] >> shifts) & 3                           # [..., j // 4, j % 4]
    return low | top.reshape(*scales.shape[:-1], 16) << 4


def sub_blocks(x, size):
    """[..., 256] → [..., 256 // size, size]."""
    return x.reshape(*x.shape[:-1], QK_K // size, size)


def requantize(x, step, offset, lowest, highest, keep):
    """Round every weight of x [..., n_sub, size] against the scale it is stored with:
    q = clamp(nearest_int((x + offset) / step), lowest, highest), where step [..., n_sub] is
    the fp16 d times the integer sub-scale and offset the min (or 0). Sub-blocks whose step
    is 0 keep the integers `keep` the search gave them (llama.cpp skips them)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.clip(nearest_int((x + offset[..., None]) / step[..., None]), lowest, highest)
    return np.where((step == 0)[..., None], keep.astype(np.int32), q - lowest)


# ---------------------------------------------------------------------------------------
# The quantizers: x [..., n_super, 256] float32 → blocks [..., n_super] of the format.

def _quantize_blocks_with_min(x, blocks, size, nmax, rmin, nstep, use_mad, scale_levels, weights):
    """Q2_K, Q4_K and Q5_K: per sub-block `make_qkx2_quants`, then sub-scales and mins as
    integers 0..scale_levels of d = max(scale) / scale_levels and dmin = max(min) / scale_levels.
    Returns the integers q [..., n_super, 256] in 0..nmax and the integer sub-scales and
    mins [..., n_super, n_sub]; the caller packs them."""
    x = sub_blocks(x, size)                                               # [..., S, n_sub, size]
    q, scale, the_min = make_qkx2_quants(x, weights(x), nmax, rmin, f32(0.1), nstep, use_mad)
    max_scale, max_min = largest(scale), largest(the_min)                 # [..., S]
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, f32(scale_levels) / max_scale, f32(0))
        inv_min = np.where(max_min > 0, f32(scale_levels) / max_min, f32(0))
    # nearest_int stored into a uint8: wraps like C, then Q4_K/Q5_K clamp to 6 bits
    sc = nearest_int(inv_scale[..., None] * scale).astype(np.uint8)       # [..., S, n_sub]
    m = nearest_int(inv_min[..., None] * the_min).astype(np.uint8)
    if scale_levels == 63:
        sc, m = np.minimum(sc, 63), np.minimum(m, 63)
    else:                 # Q2_K: both share one byte, and the weights are rounded against it
        packed = sc | m << 4
        sc, m = packed & 0x0F, packed >> 4
    blocks["d"] = max_scale / f32(scale_levels)
    blocks["dmin"] = max_min / f32(scale_levels)
    step = fp16_round(blocks["d"])[..., None] * sc.astype(f32)            # [..., S, n_sub]
    offset = fp16_round(blocks["dmin"])[..., None] * m.astype(f32)
    q = requantize(x, step, offset, 0, nmax, q).astype(np.uint8)          # [..., S, n_sub, size]
    return q.reshape(*q.shape[:-2], QK_K), sc, m


def _rms_plus_abs(x):
    """Q4_K/Q5_K's weights for the search: the sub-block's RMS plus each |x|."""
    rms = np.sqrt(ordered_sum(x * x) / f32(32))                           # [...]
    return rms[..., None] + np.abs(x)


def _quantize_blocks_q2_k(x, blocks):
    """Q2_K: 16 sub-blocks of 16, q in 0..3, sub-scales and mins 4 bits, weights |x|,
    absolute error."""
    q, sc, m = _quantize_blocks_with_min(x, blocks, 16, 3, f32(-0.5), 15, True, 15, np.abs)
    blocks["scales"] = sc | m << 4
    blocks["qs"] = pack_2bit(q)


def _quantize_blocks_q4_k(x, blocks):
    """Q4_K: 8 sub-blocks of 32, q in 0..15, sub-scales and mins 6 bits."""
    q, sc, m = _quantize_blocks_with_min(x, blocks, 32, 15, f32(-1), 20, False, 63, _rms_plus_abs)
    blocks["scales"] = pack_scales_k4(sc, m)
    blocks["qs"] = pack_nibble_chunks(q)


def _quantize_blocks_q5_k(x, blocks):
    """Q5_K: Q4_K with q in 0..31, the fifth bits in qh."""
    q, sc, m = _quantize_blocks_with_min(x, blocks, 32, 31, f32(-0.5), 15, False, 63, _rms_plus_abs)
    blocks["scales"] = pack_scales_k4(sc, m)
    blocks["qh"] = pack_bit_planes(q >> 4, 8)
    blocks["qs"] = pack_nibble_chunks(q & 0x0F)


def _quantize_blocks_q3_k(x, blocks):
    """Q3_K: 16 sub-blocks of 16 from `make_q3_quants`; signed sub-scales as 6-bit
    integers -32..31 (stored + 32) of d = −max_scale / 32, the scale of largest magnitude."""
    x = sub_blocks(x, 16)                                                 # [..., S, 16, 16]
    q, scale = make_q3_quants(x, 4)
    max_scale = first_largest_magnitude(scale)                            # [..., S]
    has_scale = max_scale != 0
    with np.errstate(divide="ignore", invalid="ignore"):        # no scale: masked below
        iscale = f32(-32) / max_scale
        # nearest_int stored into an int8, then clamped and offset
        levels = np.clip(nearest_int(iscale[..., None] * scale).astype(np.int8), -32, 31) + 32
    levels = np.where(has_scale[..., None], levels, 0).astype(np.uint8)   # [..., S, 16]
    with np.errstate(divide="ignore"):
        blocks["d"] = np.where(has_scale, f32(1) / iscale, f32(0))
    blocks["scales"] = pack_scales_q3(levels)
    step = fp16_round(blocks["d"])[..., None] * (levels.astype(f32) - f32(32))
    q = requantize(x, step, np.zeros_like(step), -4, 3, q).astype(np.uint8)
    q = q.reshape(*q.shape[:-2], QK_K)                                    # [..., S, 256] in 0..7
    blocks["hmask"] = pack_bit_planes(q >> 2, 8)
    blocks["qs"] = pack_2bit(q & 3)


def _quantize_blocks_q6_k(x, blocks):
    """Q6_K: 16 sub-blocks of 16 from `make_qx_quants`; int8 sub-scales of d = −max / 128."""
    x = sub_blocks(x, 16)                                                 # [..., S, 16, 16]
    q, scale = make_qx_quants(x, 32)
    max_scale = first_largest_magnitude(scale)                            # [..., S]
    zero = np.abs(max_scale) < GROUP_MAX_EPS    # the whole super-block is stored as zeros
    with np.errstate(divide="ignore", invalid="ignore"):        # zero blocks: masked below
        iscale = f32(-128) / max_scale
        blocks["d"] = np.where(zero, f32(0), f32(1) / iscale)
        levels = np.minimum(127, nearest_int(iscale[..., None] * scale))
    levels = np.where(zero[..., None], 0, levels).astype(np.int8)         # [..., S, 16]
    blocks["scales"] = levels
    step = fp16_round(blocks["d"])[..., None] * levels.astype(f32)
    q = requantize(x, step, np.zeros_like(step), -32, 31, q)
    q = np.where(zero[..., None, None], 0, q).astype(np.uint8).reshape(*q.shape[:-2], QK_K)
    halves = q.reshape(*q.shape[:-1], 2, 4, 32)                           # [..., S, half, k, l]
    low, high = halves & 0x0F, halves >> 4
    blocks["ql"] = (low[..., :2, :] | low[..., 2:, :] << 4).reshape(*q.shape[:-1], HALF)
    shifts = (2 * np.arange(4, dtype=np.uint8))[:, None]
    blocks["qh"] = np.bitwise_or.reduce(high << shifts, axis=-2).reshape(*q.shape[:-1], HALF // 2)


QUANTIZE_BLOCKS = {"Q2_K": _quantize_blocks_q2_k, "Q3_K": _quantize_blocks_q3_k,
                   "Q4_K": _quantize_blocks_q4_k, "Q5_K": _quantize_blocks_q5_k,
                   "Q6_K": _quantize_blocks_q6_k}


# ---------------------------------------------------------------------------------------
# The dequantizers: blocks [..., n_super] → float32 [..., n_super, 256].

def _field(blocks, name):
    return blocks[name].astype(f32)[..., None]                            # [..., S, 1]


def _with_min(q, d, dmin, sc, m, size):
    """d·sc·q − dmin·m per sub-block of `size`: q [..., S, 256], sc and m [..., S, n_sub]."""
    step = d * sc.astype(f32)                                             # [..., S, n_sub]
    offset = dmin * m.astype(f32)
    w = step[..., None] * sub_blocks(q.astype(f32), size) - offset[..., None]
    return w.reshape(*q.shape)


def _dequantize_blocks_q2_k(blocks):
    return _with_min(unpack_2bit(blocks["qs"]), _field(blocks, "d"), _field(blocks, "dmin"),
                     blocks["scales"] & 0x0F, blocks["scales"] >> 4, 16)


def _dequantize_blocks_q3_k(blocks):
    q = unpack_2bit(blocks["qs"]).astype(np.int8) - 4 * (1 - unpack_bit_planes(blocks["hmask"], 8)).astype(np.int8)
    step = _field(blocks, "d") * (unpack_scales_q3(blocks["scales"]).astype(np.int8) - 32).astype(f32)
    return (step[..., None] * sub_blocks(q.astype(f32), 16)).reshape(*q.shape)


def _dequantize_blocks_q4_k(blocks):
    sc, m = unpack_scales_k4(blocks["scales"])
    return _with_min(unpack_nibble_chunks(blocks["qs"]), _field(blocks, "d"), _field(blocks, "dmin"), sc, m, 32)


def _dequantize_blocks_q5_k(blocks):
    sc, m = unpack_scales_k4(blocks["scales"])
    q = unpack_nibble_chunks(blocks["qs"]) | unpack_bit_planes(blocks["qh"], 8) << 4
    return _with_min(q, _field(blocks, "d"), _field(blocks, "dmin"), sc, m, 32)


def _dequantize_blocks_q6_k(blocks):
    ql = blocks["ql"].reshape(*blocks.shape, 2, 1, 2, 32)                 # [..., S, half, ·, pair, l]
    low = (ql >> np.array([0, 4], dtype=np.uint8)[:, None, None]) & 0x0F  # [..., S, half, 2, 2, 32]
    qh = blocks["qh"].reshape(*blocks.shape, 2, 1, 32)
    high = (qh >> (2 * np.arange(4, dtype=np.uint8))[:, None]) & 3       # [..., S, half, k, l]
    q = low.reshape(*blocks.shape, 2, 4, 32) | high << 4                  # k = 2·nibble + pair
    q = q.reshape(*blocks.shape, QK_K).astype(np.int8) - 32
    step = _field(blocks, "d") * blocks["scales"].astype(f32)             # [..., S, 16]
    return (step[..., None] * sub_blocks(q.astype(f32), 16)).reshape(*q.shape)


DEQUANTIZE_BLOCKS = {"Q2_K": _dequantize_blocks_q2_k, "Q3_K": _dequantize_blocks_q3_k,
                     "Q4_K": _dequantize_blocks_q4_k, "Q5_K": _dequantize_blocks_q5_k,
                     "Q6_K": _dequantize_blocks_q6_k}
