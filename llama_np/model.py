"""LLaMA (Touvron et al. 2023) as a composition of the ops in `llama_np.ops`.

    ids ─ embed_tokens ─► h ─┬─ N × block ─► norm ─► lm_head ─► logits
    block(h):  h += o_proj(attention(rope(q_proj(rmsnorm(h))), rope(k_proj(·)), v_proj(·)))
               h += down_proj(silu(gate_proj(rmsnorm(h))) ⊙ up_proj(rmsnorm(h)))

Weights are kept under their Hugging Face names (`model.layers.{i}.self_attn.q_proj.weight`,
layout [out, in]); each is a float32 array or a `quant.QuantizedMatrix`, or anything with
`.matmul(x)` and `.shape` (LoRA wraps a weight that way). The KV cache is preallocated, so
generation is a prefill of the prompt followed by one-token decode steps.
"""
import numpy as np

from llama_np import kernels, ops
from llama_np.config import LlamaConfig
from llama_np.quant import QuantizedMatrix


def layer_weight_names(i):
    """Hugging Face names of the tensors of block i."""
    p = f"model.layers.{i}."
    return {
        "attn_norm": p + "input_layernorm.weight",
        "q": p + "self_attn.q_proj.weight",
        "k": p + "self_attn.k_proj.weight",
        "v": p + "self_attn.v_proj.weight",
        "o": p + "self_attn.o_proj.weight",
        "mlp_norm": p + "post_attention_layernorm.weight",
        "gate": p + "mlp.gate_proj.weight",
        "up": p + "mlp.up_proj.weight",
        "down": p + "mlp.down_proj.weight",
    }


def expected_shapes(config: LlamaConfig):
    """Every tensor a LLaMA checkpoint must hold, with its shape (lm_head only if untied)."""
    D, F, V = config.hidden_size, config.intermediate_size, config.vocab_size
    q_out = config.num_attention_heads * config.head_dim
    kv_out = config.num_key_value_heads * config.head_dim
    shapes = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, D)
    for i in range(config.num_hidden_layers):
        n = layer_weight_names(i)
        shapes.update({
            n["attn_norm"]: (D,), n["mlp_norm"]: (D,),
            n["q"]: (q_out, D), n["k"]: (kv_out, D), n["v"]: (kv_out, D), n["o"]: (D, q_out),
            n["gate"]: (F, D), n["up"]: (F, D), n["down"]: (D, F),
        })
    return shapes


def stack_rows(matrices):
    """One QuantizedMatrix holding the rows of `matrices` one after another, or None when
    they are not all quantized alike.

    x @ [A; B; C]ᵀ = [x Aᵀ, x Bᵀ, x Cᵀ]: each output is still the dot product of one
    weight row with x, so q, k and v (or gate and up) come out of one kernel call instead
    of three (decoding then makes ~120 kernel calls a token instead of ~210; each call
    saved is a few µs of Python and one parallel region fewer). From a GGUF the original
    rows stay memory-mapped and are never read, so the copy takes their place in memory;
    matrices already in memory are held twice."""
    first = matrices[0]
    if not all(isinstance(m, QuantizedMatrix) and m.qtype == first.qtype
               and m.shape[1] == first.shape[1] and m.int8_activations == first.int8_activations
               for m in matrices):
        return None
    data = np.concatenate([m.data for m in matrices])                    # [Σ out, row_bytes]
    return QuantizedMatrix(data, first.qtype, (data.shape[0], first.shape[1]), first.int8_activations)


def check_weights(config, weights, source="checkpoint"):
    """Raise a ValueError naming the first missing or misshapen tensor."""
    for name, shape in expected_shapes(config).items():
        if name not in weights:
            raise ValueError(f"{source}: tensor {name!r} is missing")
        if tuple(weights[name].shape) != shape:
            raise ValueError(f"{source}: tensor {name!r} has shape {tuple(weights[name].shape)}, "
                             f"config says {shape}")


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


class Llama:
    """A LLaMA decoder for inference: `forward(ids, cache)` → logits."""

    def __init__(self, config: LlamaConfig, weights, use_kernels=True):
        self.config = config
        self.weights = weights
        self.use_kernels = use_kernels and kernels.AVAILABLE
        self.layers = [{key: weights[name] for key, name in layer_weight_names(i).items()}
                       for i in range(config.num_hidden_layers)]
        self._stacked = {}  # (layer, keys) → (the matrices stacked, stack_rows of them)

    @property
    def lm_head(self):
        """The output projection [V, D]; with tied embeddings it is the embedding table."""
        if self.config.tie_word_embeddings:
            return self.weights["model.embed_tokens.weight"]
        return self.weights["lm_head.weight"]

    def new_cache(self, max_len=None):
        return KVCache(self.config, max_len or self.config.max_position_embeddings)

    # -- the pieces, each one op, with the C kernel where one exists ------------------
    def _rmsnorm(self, x, weight):
        if self.use_kernels:
            return kernels.rmsnorm(x, weight, self.config.rms_norm_eps)
        return ops.rmsnorm_forward(x, weight, self.config.rms_norm_eps)[0]

    def _rope(self, x, positions):
        if self.use_kernels:
            return kernels.rope_(x, positions, self.config.rope_theta)
        return ops.rope_forward(x, positions, self.config.rope_theta)[0]

    def _attention(self, q, keys, values):
        if self.use_kernels:
            return kernels.attention_forward(q, keys, values)
        return ops.attention_forward(q, keys, values)[0]

    def _linears(self, x, layer_index, keys):
        """x [T, D] through the weights `keys` of one layer (e.g. q, k, v) → one [T, out]
        per key. With the C kernels, matrices quantized alike are multiplied as one stack
        (`stack_rows`), made on first use and remade if a layer's weights were replaced
        (LoRA swaps them); the NumPy path multiplies them one by one, the reference."""
        w = self.layers[layer_index]
        parts = tuple(w[key] for key in keys)
        if self.use_kernels:
            made = self._stacked.get((layer_index, keys))
            if made is None or any(a is not b for a, b in zip(made[0], parts)):
                made = self._stacked[(layer_index, keys)] = (parts, stack_rows(parts))
            if made[1] is not None:
                y = made[1].matmul(x)                                                  # [T, Σ out]
                ends = np.cumsum([part.shape[0] for part in parts])[:-1]
                return np.split(y, ends, axis=1)
        return [ops.linear_forward(x, part)[0] for part in parts]

    def block(self, h, layer_index, positions, cache):
        """One transformer block on h [T, D]: attention then MLP, each a residual branch."""
        cfg, w = self.config, self.layers[layer_index]
        n_tokens = h.shape[0]
        start = cache.length

        x = self._rmsnorm(h, w["attn_norm"])                                               # [T, D]
        q, k, v = self._linears(x, layer_index, ("q", "k", "v"))                          # [T, *]
        q = np.ascontiguousarray(q).reshape(n_tokens, cfg.num_attention_heads, cfg.head_dim)
        k = np.ascontiguousarray(k).reshape(n_tokens, cfg.num_key_value_heads, cfg.head_dim)
        v = v.reshape(n_tokens, cfg.num_key_value_heads, cfg.head_dim)
        q = self._rope(q, positions)                                                       # [T, H, hd]
        k = self._rope(k, positions)                                                       # [T, H_kv, hd]
        cache.k[layer_index, start:start + n_tokens] = k
        cache.v[layer_index, start:start + n_tokens] = v
        keys = cache.k[layer_index, :start + n_tokens]                                     # [S, H_kv, hd]
        values = cache.v[layer_index, :start + n_tokens]                                   # [S, H_kv, hd]
        attn = self._attention(q, keys, values)                                            # [T, H*hd]
        h = h + ops.linear_forward(attn, w["o"])[0]                                        # [T, D]

        x = self._rmsnorm(h, w["mlp_norm"])                                                # [T, D]
        gate, up = self._linears(x, layer_index, ("gate", "up"))                           # [T, F] each
        hidden = ops.swiglu_forward(gate, up)[0]                                           # [T, F]
        return h + ops.linear_forward(hidden, w["down"])[0]                                # [T, D]

    def forward(self, ids, cache=None, last_only=False):
        """Logits for the tokens `ids` [T], which follow the `cache.length` tokens already in
        the cache (a fresh cache is used when none is given). Prefill passes the whole
        prompt; decode passes one token. `last_only` computes the logits of the last
        position only (all generation needs). Returns [T, V] (or [1, V])."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if cache is None:
            cache = self.new_cache(len(ids))
        if cache.length + len(ids) > cache.max_len:
            raise ValueError(f"context overflow: {cache.length} cached + {len(ids)} new tokens "
                             f"> {cache.max_len} positions")
        if len(ids) and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise ValueError(f"token id out of range [0, {self.config.vocab_size})")
        positions = np.arange(cache.length, cache.length + len(ids), dtype=np.int64)    # [T]
        h = ops.embedding_forward(ids, self.weights["model.embed_tokens.weight"])[0]     # [T, D]
        h = np.ascontiguousarray(h, dtype=np.float32)
        for i in range(self.config.num_hidden_layers):
            h = self.block(h, i, positions, cache)
        cache.length += len(ids)
        if last_only:
            h = h[-1:]
        h = self._rmsnorm(np.ascontiguousarray(h), self.weights["model.norm.weight"])      # [T, D]
        return ops.linear_forward(h, self.lm_head)[0]                                     # [T, V]
