"""LLaMA (Touvron et al. 2023) as a composition of the ops in `llama_np.ops.ops`.

    ids ─ embed_tokens ─► h ─┬─ N × block ─► norm ─► lm_head ─► logits
    block(h):  h += o_proj(attention(rope(q_proj(rmsnorm(h))), rope(k_proj(·)), v_proj(·)))
               h += down_proj(silu(gate_proj(rmsnorm(h))) ⊙ up_proj(rmsnorm(h)))

Weights are kept under their Hugging Face names (`model.layers.{i}.self_attn.q_proj.weight`,
layout [out, in]); each is a float32 array or a `quant.QuantizedMatrix`, or anything with
`.matmul(x)` and `.shape` (LoRA wraps a weight that way). The KV cache is preallocated, so
generation is a prefill of the prompt followed by one-token decode steps.

`block` is the model as NumPy reads it, and what prefill runs (its matrix products and
attention in C when the kernels are built). A one-token decode step spends its time in
Python overhead around small products, so there each block is instead one C call
(`kernels.DecodeLayer`, kernels/decode_layer.c) doing exactly what `block` does.
"""
import numpy as np

from llama_np.kernels import native as kernels
from llama_np.ops import ops
from llama_np.llama.config import LlamaConfig
from llama_np.quant.quant import QuantizedMatrix


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
        self._decoders = None  # (the layers' weights, a kernels.DecodeLayer per layer or None)

    @property
    def lm_head(self):
        """The output projection [V, D]; with tied embeddings it is the embedding table."""
        if self.config.tie_word_embeddings:
            return self.weights["model.embed_tokens.weight"]
        return self.weights["lm_head.weight"]

    def set_int8_activations(self, on=True):
        """Round activations to 8 bits (per block of 32) before every product with quantized
        weights: llama.cpp's arithmetic, integer dot products (`QuantizedMatrix`,
        `quant.quant_matmul_int8`). The logits move a little; on the machine of the README it
        decodes no faster than the fp32 kernels and fills prompts 2.5× slower."""
        for weight in self.weights.values():
            while hasattr(weight, "base"):          # under LoRA wrappers, the frozen weight
                weight = weight.base
            if isinstance(weight, QuantizedMatrix):
                weight.int8_activations = bool(on)
        self._decoders = None                       # the fused kernels read the flag once

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

    def _fused_decoders(self):
        """A `kernels.DecodeLayer` per block (one C call per block for a one-token step),
        made on first use and remade when the weights were replaced (LoRA swaps them);
        None when the kernels are off or some block's weights are of a kind the fused
        kernel does not take (e.g. a LoRA wrapper): decoding then runs `block`."""
        if not self.use_kernels:
            return None
        layers = [tuple(layer.values()) for layer in self.layers]
        if self._decoders is None or any(a is not b for old, new in zip(self._decoders[0], layers)
                                         for a, b in zip(old, new)):
            try:
                decoders = [kernels.DecodeLayer(layer, self.config) for layer in self.layers]
            except (TypeError, ValueError):
                decoders = None
            self._decoders = (layers, decoders)
        return self._decoders[1]

    def block(self, h, layer_index, positions, cache):
        """One transformer block on h [T, D]: attention then MLP, each a residual branch."""
        cfg, w = self.config, self.layers[layer_index]
        n_tokens = h.shape[0]
        start = cache.length

        x = self._rmsnorm(h, w["attn_norm"])                                               # [T, D]
        q = ops.linear_forward(x, w["q"])[0].reshape(n_tokens, cfg.num_attention_heads, cfg.head_dim)
        k = ops.linear_forward(x, w["k"])[0].reshape(n_tokens, cfg.num_key_value_heads, cfg.head_dim)
        v = ops.linear_forward(x, w["v"])[0].reshape(n_tokens, cfg.num_key_value_heads, cfg.head_dim)
        q = self._rope(q, positions)                                                       # [T, H, hd]
        k = self._rope(k, positions)                                                       # [T, H_kv, hd]
        cache.k[layer_index, start:start + n_tokens] = k
        cache.v[layer_index, start:start + n_tokens] = v
        keys = cache.k[layer_index, :start + n_tokens]                                     # [S, H_kv, hd]
        values = cache.v[layer_index, :start + n_tokens]                                   # [S, H_kv, hd]
        attn = self._attention(q, keys, values)                                            # [T, H*hd]
        h = h + ops.linear_forward(attn, w["o"])[0]                                        # [T, D]

        x = self._rmsnorm(h, w["mlp_norm"])                                                # [T, D]
        gate, up = ops.linear_forward(x, w["gate"])[0], ops.linear_forward(x, w["up"])[0]  # [T, F] each
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
        decoders = self._fused_decoders() if len(ids) == 1 else None
        for i in range(self.config.num_hidden_layers):
            if decoders:   # one new token: the same block as one C call (kernels/decode_layer.c)
                decoders[i](h, cache.k[i], cache.v[i], cache.length)
            else:
                h = self.block(h, i, positions, cache)
        cache.length += len(ids)
        if last_only:
            h = h[-1:]
        h = self._rmsnorm(np.ascontiguousarray(h), self.weights["model.norm.weight"])      # [T, D]
        return ops.linear_forward(h, self.lm_head)[0]                                     # [T, V]
