"""The weight formats of GGUF files that llama_np reads, writes and multiplies: one table.

Every fact about a format lives in `FORMATS`: its GGML type id (what a GGUF tensor record
stores), the weights and bytes of one block, the `general.file_type` of a file made mostly
of it, and the number the C kernels know it by (kernels/internal/formats.h; a test holds
the C side to this table; None: no kernel, the NumPy product runs). The block formats are
llama.cpp's (ggml-common.h), fp16 scales, little-endian; see docs/formats.md:

    Q4_0   w ≈ (q - 8) · d        q ∈ 0..15       32 weights, 18 bytes   (quant.rtn)
    Q4_1   w ≈ q · d + m          q ∈ 0..15       32 weights, 20 bytes
    Q5_0   w ≈ (q - 16) · d       q ∈ 0..31       32 weights, 22 bytes
    Q5_1   w ≈ q · d + m          q ∈ 0..31       32 weights, 24 bytes
    Q8_0   w ≈ q · d              q ∈ -127..127   32 weights, 34 bytes
    Q2_K … Q6_K  super-blocks of 256 weights in sub-blocks of 16 or 32, each with a
           small integer scale (and min) times the super-block's fp16 d (and dmin)
           84 / 110 / 144 / 176 / 210 bytes                               (quant.kquants)

Nibbles: byte j of a 32-weight 4-bit block holds weight j in its low 4 bits and weight
j + 16 in its high 4 bits.
"""
from dataclasses import dataclass

import numpy as np

QK = 32     # weights per block: QK4_0 = QK4_1 = QK5_0 = QK5_1 = QK8_0 = 32 in ggml-common.h
QK_K = 256  # weights per K-quant super-block: QK_K in ggml-common.h


@dataclass(frozen=True)
class TensorFormat:
    """How one GGUF tensor type stores its weights."""
    name: str
    ggml_type: int            # enum ggml_type (ggml.h), as a GGUF tensor record stores it
    block_weights: int        # weights per block (1 for plain floats)
    block_bytes: int          # bytes per block
    file_type: int | None     # llama_ftype of a file whose weights are mostly this type (None: see the rows)
    kernel_format: int | None  # the C kernels' number for it (kernels/internal/formats.h)


FORMATS = {f.name: f for f in [
    TensorFormat("F32", ggml_type=0, block_weights=1, block_bytes=4, file_type=0, kernel_format=3),
    TensorFormat("F16", ggml_type=1, block_weights=1, block_bytes=2, file_type=1, kernel_format=4),
    TensorFormat("Q4_0", ggml_type=2, block_weights=QK, block_bytes=18, file_type=2, kernel_format=0),
    TensorFormat("Q4_1", ggml_type=3, block_weights=QK, block_bytes=20, file_type=3, kernel_format=1),
    TensorFormat("Q8_0", ggml_type=8, block_weights=QK, block_bytes=34, file_type=7, kernel_format=2),
    TensorFormat("Q5_0", ggml_type=6, block_weights=QK, block_bytes=22, file_type=None, kernel_format=5),
    TensorFormat("Q5_1", ggml_type=7, block_weights=QK, block_bytes=24, file_type=None, kernel_format=6),
    # files of these are llama.cpp's mixes (Q5_0, Q4_K_M, …): their llama_ftype numbers are
    # llama_np.checkpoint.type_mix.MIXES
    TensorFormat("Q2_K", ggml_type=10, block_weights=QK_K, block_bytes=84, file_type=None, kernel_format=10),
    TensorFormat("Q3_K", ggml_type=11, block_weights=QK_K, block_bytes=110, file_type=None, kernel_format=11),
    TensorFormat("Q4_K", ggml_type=12, block_weights=QK_K, block_bytes=144, file_type=None, kernel_format=7),
    TensorFormat("Q5_K", ggml_type=13, block_weights=QK_K, block_bytes=176, file_type=None, kernel_format=8),
    TensorFormat("Q6_K", ggml_type=14, block_weights=QK_K, block_bytes=210, file_type=None, kernel_format=9),
    TensorFormat("BF16", ggml_type=30, block_weights=1, block_bytes=2, file_type=None, kernel_format=None),
]}
FORMATS_BY_GGML_TYPE = {f.ggml_type: f for f in FORMATS.values()}
# Other ggml types, only to name them when a file holds one llama_np cannot read.
OTHER_GGML_TYPE_NAMES = {
    9: "Q8_1", 15: "Q8_K", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S",
    22: "IQ2_S", 23: "IQ4_XS", 16: "IQ2_XXS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64",
}

# One block of each quantized format as a NumPy structured dtype: the byte layout of
# ggml-common.h's block_q4_0, block_q4_K, … (fields in file order, no padding).
BLOCK_DTYPES = {
    "Q4_0": np.dtype([("d", "<f2"), ("qs", "u1", QK // 2)]),                # 18 bytes
    "Q4_1": np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", QK // 2)]),  # 20 bytes
    "Q8_0": np.dtype([("d", "<f2"), ("qs", "i1", QK)]),                     # 34 bytes
    # qh: the fifth bit of weight j is bit j of the little-endian u32
    "Q5_0": np.dtype([("d", "<f2"), ("qh", "<u4"), ("qs", "u1", QK // 2)]),                # 22 bytes
    "Q5_1": np.dtype([("d", "<f2"), ("m", "<f2"), ("qh", "<u4"), ("qs", "u1", QK // 2)]),  # 24 bytes
    "Q2_K": np.dtype([("scales", "u1", QK_K // 16), ("qs", "u1", QK_K // 4),
                      ("d", "<f2"), ("dmin", "<f2")]),                                     # 84 bytes
    "Q3_K": np.dtype([("hmask", "u1", QK_K // 8), ("qs", "u1", QK_K // 4),
                      ("scales", "u1", 12), ("d", "<f2")]),                                # 110 bytes
    "Q4_K": np.dtype([("d", "<f2"), ("dmin", "<f2"), ("scales", "u1", 12),
                      ("qs", "u1", QK_K // 2)]),                                           # 144 bytes
    "Q5_K": np.dtype([("d", "<f2"), ("dmin", "<f2"), ("scales", "u1", 12),
                      ("qh", "u1", QK_K // 8), ("qs", "u1", QK_K // 2)]),                  # 176 bytes
    "Q6_K": np.dtype([("ql", "u1", QK_K // 2), ("qh", "u1", QK_K // 4),
                      ("scales", "i1", QK_K // 16), ("d", "<f2")]),                        # 210 bytes
}
BLOCK_BYTES = {qtype: FORMATS[qtype].block_bytes for qtype in BLOCK_DTYPES}
GGML_TYPE_IDS = {qtype: FORMATS[qtype].ggml_type for qtype in BLOCK_DTYPES}


def ggml_type_name(ggml_type):
    """The name of a ggml type id, known to llama_np or not."""
    if ggml_type in FORMATS_BY_GGML_TYPE:
        return FORMATS_BY_GGML_TYPE[ggml_type].name
    return OTHER_GGML_TYPE_NAMES.get(ggml_type, f"type {ggml_type}")


def tensor_nbytes(n_weights, type_name):
    """Bytes that `n_weights` weights take in format `type_name` (whole blocks)."""
    fmt = FORMATS[type_name]
    return n_weights // fmt.block_weights * fmt.block_bytes


def check_qtype(qtype):
    if qtype not in BLOCK_DTYPES:
        raise ValueError(f"unknown quantization type {qtype!r}; expected one of {sorted(BLOCK_DTYPES)}")


def check_cols(cols, qtype):
    block_weights = FORMATS[qtype].block_weights
    if cols % block_weights:
        raise ValueError(f"cannot use {qtype} for rows of {cols} weights: "
                         f"the row length must be a multiple of the block size {block_weights}")


def row_bytes(cols, qtype):
    """Bytes of one row of `cols` weights in block format `qtype`."""
    return cols // FORMATS[qtype].block_weights * FORMATS[qtype].block_bytes


def pack_nibbles(q):
    """q [..., 32] uint8 in 0..15 → [..., 16]: byte j = q[j] | q[j + 16] << 4."""
    return q[..., : QK // 2] | (q[..., QK // 2:] << np.uint8(4))


def unpack_nibbles(qs):
    """qs [..., 16] uint8 → q [..., 32]: low nibbles are weights 0..15, high ones 16..31."""
    return np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=-1)


def as_blocks(data, qtype):
    """View uint8 data [rows, row_bytes] as structured blocks [rows, n_blocks] (no copy
    when data is C-contiguous, e.g. a memory map of a GGUF tensor)."""
    check_qtype(qtype)
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2:
        raise ValueError(f"{qtype} data must be uint8 [rows, row_bytes], got {data.dtype} {data.shape}")
    if data.shape[1] % BLOCK_BYTES[qtype]:
        raise ValueError(f"{qtype} rows of {data.shape[1]} bytes are not whole "
                         f"{BLOCK_BYTES[qtype]}-byte blocks")
    return np.ascontiguousarray(data).view(BLOCK_DTYPES[qtype])
