"""The KV cache: the keys and values of every position seen so far, so that a decode step
attends to the past without recomputing it."""
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
        self.k = np.zeros(shape, dtype=self.format.dtype)  # [L, max_len, H_kv, width]
        self.v = np.zeros(shape, dtype=self.format.dtype)  # [L, max_len, H_kv, width]
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
