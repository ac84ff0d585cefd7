"""How the KV cache stores keys and values: one table of row formats, and the NumPy
reference of writing a row (rounding it once) and reading it back.

    f32    float32, exact                              4 bytes a value
    f16    IEEE half, rounded to nearest even          2 bytes a value   (the default)
    q8_0   Q8_0 blocks of 32 values along a position   34 bytes per 32   (quant.rtn)

A cache holds, per layer, rows [max_len, H_kv, hd] of keys and of values; in f32 and f16
they are arrays of that shape, in q8_0 uint8 [max_len, H_kv, hd // 32 · 34] (each head's
hd values whole blocks, so hd must be a multiple of 32). The C kernels read the same bytes
(kernels/internal/kv_rows.h); `decode` is what the NumPy backend attends over.
"""
from dataclasses import dataclass

import numpy as np

from llama_np.quant.formats import BLOCK_BYTES, FORMATS, QK
from llama_np.quant.codec import dequantize, quantize


@dataclass(frozen=True)
class KVFormat:
    name: str                  # as --kv-cache spells it
    dtype: np.dtype            # what the cache arrays hold
    tensor_format: str         # the entry of quant.formats.FORMATS, whose kernel number C uses

    @property
    def kernel_format(self):
        return FORMATS[self.tensor_format].kernel_format

    def row_width(self, head_dim):
        """Array elements per head: hd values, or the bytes of their Q8_0 blocks."""
        return head_dim // QK * BLOCK_BYTES["Q8_0"] if self.name == "q8_0" else head_dim


KV_FORMATS = {f.name: f for f in [
    KVFormat("f32", np.dtype(np.float32), "F32"),
    KVFormat("f16", np.dtype(np.float16), "F16"),
    KVFormat("q8_0", np.dtype(np.uint8), "Q8_0"),
]}
_BY_DTYPE = {f.dtype: f for f in KV_FORMATS.values()}


def kv_format(name):
    """The KVFormat called `name`; ValueError naming the choices otherwise."""
    if name not in KV_FORMATS:
        raise ValueError(f"unknown KV cache format {name!r}; expected one of {', '.join(KV_FORMATS)}")
    return KV_FORMATS[name]


def check_head_dim(fmt, head_dim):
    if fmt.name == "q8_0" and head_dim % QK:
        raise ValueError(f"a q8_0 KV cache needs a head size that is a multiple of {QK}, "
                         f"this model's is {head_dim}; use --kv-cache f16 or f32")


def format_of(rows):
    """The KVFormat of stored rows, from their dtype."""
    if rows.dtype not in _BY_DTYPE:
        raise TypeError(f"KV cache rows must be float32, float16 or uint8 (Q8_0), not {rows.dtype}")
    return _BY_DTYPE[rows.dtype]


def encode(x, fmt):
    """x [..., hd] float32 → the stored rows [..., row_width(hd)]: rounded once, here."""
    if fmt.name == "f32":
        return np.asarray(x, dtype=np.float32)
    if fmt.name == "f16":
        return np.asarray(x, dtype=np.float32).astype(np.float16)               # nearest even
    head_dim = x.shape[-1]
    blocks = quantize(np.asarray(x, dtype=np.float32).reshape(-1, head_dim), "Q8_0")  # [rows, bytes]
    return blocks.reshape(*x.shape[:-1], fmt.row_width(head_dim))


def decode(rows, head_dim):
    """Stored rows [..., row_width] (format from their dtype) → float32 [..., hd]."""
    fmt = format_of(rows)
    if fmt.name != "q8_0":
        return rows.astype(np.float32, copy=False)
    flat = np.ascontiguousarray(rows).reshape(-1, rows.shape[-1])                  # [rows, bytes]
    return dequantize(flat, "Q8_0").reshape(*rows.shape[:-1], head_dim)
