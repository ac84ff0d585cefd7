"""The KV cache: the keys and values of every position seen so far, so that a decode step
attends to the past without recomputing it."""
import mmap

import numpy as np

from llama_np.llama.config import LlamaConfig
from llama_np.quant import kv_rows


class KVCache:
    """Keys and values of every position seen so far, for each layer, preallocated for
    `max_len` positions (pages the OS has not been asked to touch cost no memory).

    `kv_cache` is the row format (`llama_np.quant.kv_rows`): "f32" (the default here) keeps
    keys and values exact; "f16" (the tools' default, `--kv-cache`) rounds each to a half
    once, when it is written, for half the memory and memory traffic; "q8_0" stores blocks
    of 32 at 8 bits. `k` and `v` hold the rows as stored,
    [L, max_len, H_kv, width] (width = hd, or the bytes of hd values' Q8_0 blocks)."""

    def __init__(self, config: LlamaConfig, max_len, kv_cache="f32"):
        self.format = kv_rows.kv_format(kv_cache)
        kv_rows.check_head_dim(self.format, config.head_dim)
        self.head_dim = config.head_dim
        shape = (config.num_hidden_layers, max_len, config.num_key_value_heads,
                 self.format.row_width(config.head_dim))
        self.k = zeros_in_small_pages(shape, self.format.dtype)  # [L, max_len, H_kv, width]
        self.v = zeros_in_small_pages(shape, self.format.dtype)  # [L, max_len, H_kv, width]
        self.max_len = max_len
        self.length = 0                                    # positions filled

    def write(self, layer, start, k, v):
        """Store k, v [T, H_kv, hd] float32 as positions start … start + T - 1 of `layer`."""
        self.k[layer, start:start + len(k)] = kv_rows.encode(k, self.format)
        self.v[layer, start:start + len(v)] = kv_rows.encode(v, self.format)

    def rows(self, layer, stop):
        """The stored keys and values of positions 0 … stop - 1: [S, H_kv, width] each."""
        return self.k[layer, :stop], self.v[layer, :stop]

    def reset(self):
        self.length = 0


def zeros_in_small_pages(shape, dtype):
    """A zero array in memory the OS maps 4 KiB at a time, as it is first written.

    NumPy asks Linux for 2 MiB pages for every large array, and the first write into such a
    page makes the kernel clear all 2 MiB of it. A cache holds each layer's positions in one
    slab, so the first prompt — a few positions in every layer's slab — touches every huge
    page of the cache, and clearing them cost a chat's first reply ~0.1 s for a 2,048-position
    cache it had barely begun to fill. In small pages a position costs only what it uses.
    (Streaming the filled cache is no slower in small pages; where the OS has no such advice,
    plain np.zeros.)"""
    n_bytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if n_bytes == 0 or not hasattr(mmap, "MADV_NOHUGEPAGE"):
        return np.zeros(shape, dtype=dtype)
    pages = mmap.mmap(-1, n_bytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    pages.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(pages, dtype=dtype).reshape(shape)          # zero until written
