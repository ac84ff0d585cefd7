"""The KV cache: the keys and values of every position seen so far, so that a decode step
attends to the past without recomputing it."""
import numpy as np

from llama_np.llama.config import LlamaConfig
from llama_np.quant import kv_rows


# Positions a new cache has room for; when a write needs more, room for twice the positions
# it needs (up to max_len).
FIRST_CAPACITY = 256


class KVCache:
    """Keys and values of every position seen so far, for each layer, for up to `max_len`
    positions.

    The arrays grow with use instead of being made for `max_len` at once. Untouched pages
    cost no memory, but the first write to each costs the operating system a page clear
    (a 2 MiB one where it backs large arrays with huge pages), and a short first prompt
    writes position 0 of every layer — one place in each of the L layers' slabs, i.e. in
    nearly every page of a [L, max_len, …] array. Room for FIRST_CAPACITY positions, grown
    as needed (the filled rows copied over), keeps a short chat's first reply from clearing
    the whole cache; `reserve` is called before each call that writes.

    `kv_cache` is the row format (`llama_np.quant.kv_rows`): "f32" (the default here) keeps
    keys and values exact; "f16" (the tools' default, `--kv-cache`) rounds each to a half
    once, when it is written, for half the memory and memory traffic; "q8_0" stores blocks
    of 32 at 8 bits. `k` and `v` hold the rows as stored,
    [L, capacity, H_kv, width] (width = hd, or the bytes of hd values' Q8_0 blocks)."""

    def __init__(self, config: LlamaConfig, max_len, kv_cache="f32"):
        self.format = kv_rows.kv_format(kv_cache)
        kv_rows.check_head_dim(self.format, config.head_dim)
        self.head_dim = config.head_dim
        self.row_shape = (config.num_key_value_heads, self.format.row_width(config.head_dim))
        self.max_len = max_len
        self.length = 0                                    # positions filled
        self.k = self.v = None                             # [L, capacity, H_kv, width] each
        self._layers = config.num_hidden_layers
        self._allocate(min(max_len, FIRST_CAPACITY))

    def _allocate(self, capacity):
        """Arrays for `capacity` positions, holding the filled ones."""
        shape = (self._layers, capacity) + self.row_shape
        k, v = np.zeros(shape, dtype=self.format.dtype), np.zeros(shape, dtype=self.format.dtype)
        if self.k is not None:
            k[:, :self.length], v[:, :self.length] = self.k[:, :self.length], self.v[:, :self.length]
        self.k, self.v = k, v

    @property
    def capacity(self):
        """Positions the arrays have room for now (≤ max_len)."""
        return self.k.shape[1]

    def reserve(self, n_positions):
        """Make room for positions 0 … n_positions - 1 (n_positions ≤ max_len)."""
        if n_positions > self.max_len:
            raise ValueError(f"context overflow: {n_positions} positions > {self.max_len}")
        if n_positions > self.capacity:   # with as much room again, so growing stays rare
            self._allocate(min(self.max_len, 2 * n_positions))

    def write(self, layer, start, k, v):
        """Store k, v [T, H_kv, hd] float32 as positions start … start + T - 1 of `layer`."""
        self.reserve(start + len(k))
        self.k[layer, start:start + len(k)] = kv_rows.encode(k, self.format)
        self.v[layer, start:start + len(v)] = kv_rows.encode(v, self.format)

    def rows(self, layer, stop):
        """The stored keys and values of positions 0 … stop - 1: [S, H_kv, width] each."""
        return self.k[layer, :stop], self.v[layer, :stop]

    def reset(self):
        self.length = 0
