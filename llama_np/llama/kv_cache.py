"""The KV cache: the keys and values of every position seen so far, so that a decode step
attends to the past without recomputing it."""
import numpy as np

from llama_np.llama.config import LlamaConfig


class KVCache:
    """Keys and values of every position seen so far, for each layer, preallocated for
    `max_len` positions (pages the OS has not been asked to touch cost no memory)."""

    def __init__(self, config: LlamaConfig, max_len):
        shape = (config.num_hidden_layers, max_len, config.num_key_value_heads, config.head_dim)
        self.k = np.zeros(shape, dtype=np.float32)  # [L, max_len, H_kv, hd]
        self.v = np.zeros(shape, dtype=np.float32)  # [L, max_len, H_kv, hd]
        self.max_len = max_len
        self.length = 0                             # positions filled

    def reset(self):
        self.length = 0
