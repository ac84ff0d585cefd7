"""LLaMA (Touvron et al. 2023): the block, written once with its backward beside it, and the model.

    ids ─ embed_tokens ─► h ─► block 0 ─► … ─► block L-1 ─► norm ─► lm_head ─► logits
    block(h):  h += o_proj(attention(rope(q_proj(x)), rope(k_proj(x)), v_proj(x))),  x = rmsnorm(h)
               h += down_proj(silu(gate_proj(x)) ⊙ up_proj(x)),                        x = rmsnorm(h)

`block_forward` is LLaMA's block and nothing else. What differs between the uses of the
block is handed to it as `layer`, one layer's weights together with the way this use
computes with them:

    inference  (`llama.inference_layer.InferenceLayer`): plain, quantized or LoRA products
               through the model's backend (NumPy or C), attention over the KV cache
    training   (`training.training_layer.TrainingLayer`): stacked products with the LoRA
               branch, attention within each sequence, and a tape for `block_backward`
    decoding   one new token: kernels/decode_layer.c, this block compiled into one C call
               (`kernels.DecodeLayer`), tested against `block_forward`; all of them in one
               call (`kernels.DecodeStack`)

Weights keep their Hugging Face names and layout [out, in] (`llama.weights`).
"""
import numpy as np

from llama_np import kernels, ops
from llama_np.llama.adapter import with_copies
from llama_np.llama.config import LlamaConfig
from llama_np.llama.inference_layer import InferenceLayer
from llama_np.llama.kv_cache import KVCache
from llama_np.llama.rope_scaling import rotation
from llama_np.llama.weights import layer_weight_names

# A long prompt is filled this many positions at a time, so that what one step holds — the
# activations [512, F] and the attention scores [H, 512, S] — stays bounded however long the
# prompt is. Prompts up to this length are one step, exactly as before.
PREFILL_CHUNK = 512


def block_forward(h, layer):
    """One LLaMA block on the residual stream h [N, D]: an attention branch, then a SwiGLU
    MLP branch, each reading its rmsnorm'd input and adding its output back to h."""
    x = layer.norm(h, "attn_norm")                                     # [N, D]
    q, k, v = layer.project(x, "q", "k", "v")                          # [N, H·hd], [N, H_kv·hd] ×2
    q, k = layer.rope(q, k)                                            # [N, H, hd], [N, H_kv, hd]
    h = h + layer.project(layer.attend(q, k, v), "o")                  # [N, D]

    x = layer.norm(h, "mlp_norm")                                      # [N, D]
    gate, up = layer.project(x, "gate", "up")                          # [N, F] ×2
    return h + layer.project(layer.swiglu(gate, up), "down")           # [N, D]


def block_backward(dh, layer):
    """The gradient of block_forward, its steps in reverse, from what the forward left on the
    layer's tape: dh [N, D] at the block's output → dh at its input (None when nothing
    below the block needs it). The residual stream passes dh through; each branch adds the
    gradient of its input."""
    dhidden = layer.project_backward(dh, "down")                       # [N, F]
    dgate, dup = layer.swiglu_backward(dhidden)                        # [N, F] ×2
    dx = layer.project_backward((dgate, dup), "gate", "up")            # [N, D]
    dh = dh + layer.norm_backward(dx, "mlp_norm")                      # [N, D]

    dattn = layer.project_backward(dh, "o")                            # [N, H·hd]
    dq, dk, dv = layer.attend_backward(dattn)                          # [N, H, hd], [N, H_kv, hd] ×2
    dq, dk = layer.rope_backward(dq, dk)                               # [N, H·hd], [N, H_kv·hd]
    dx = layer.project_backward((dq, dk, dv), "q", "k", "v")           # [N, D] or None
    return None if dx is None else dh + layer.norm_backward(dx, "attn_norm")


class Llama:
    """A LLaMA decoder for inference: `forward(ids, cache)` → logits.

    `use_kernels` picks the backend that runs every op (`kernels.backend`: C where built,
    else NumPy). LoRA adapters run beside the weights, unmerged, after `apply_adapter`."""

    def __init__(self, config: LlamaConfig, weights, use_kernels=True):
        self.config = config
        self.weights = weights
        self.backend = kernels.backend(use_kernels)
        self.lora = {}                    # weight name -> [(A [r, in], B [out, r], scaling), …]
        self.int8_activations = False
        self.kv_cache_format = "f32"   # of the caches new_cache makes; the tools' --kv-cache sets it
        self._layers_from_weights()

    @property
    def use_kernels(self):
        return self.backend is not kernels.NUMPY

    @property
    def lm_head(self):
        """The output projection [V, D]; with tied embeddings it is the embedding table."""
        if self.config.tie_word_embeddings:
            return self.weights["model.embed_tokens.weight"]
        return self.weights["lm_head.weight"]

    def new_cache(self, max_len=None, kv_cache=None):
        """An empty KV cache for `max_len` positions (default: the model's context) in the
        format `kv_cache` ("f16", "f32", "q8_0"; default: `kv_cache_format`, which is "f32"
        unless set: exact, the reference arithmetic; the tools default to "f16")."""
        return KVCache(self.config, max_len or self.config.max_context, kv_cache or self.kv_cache_format)

    def forward(self, ids, cache=None, last_only=False):
        """Logits for the tokens `ids` [T], which follow the `cache.length` tokens already in
        the cache (a fresh cache is used when none is given). Prefill passes the whole
        prompt (filled PREFILL_CHUNK positions at a time); decode passes one token.
        `last_only` computes the logits of the last position only (all generation needs).
        Returns [T, V] (or [1, V])."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if cache is None:
            cache = self.new_cache(len(ids))
        self._check_ids(ids, cache)
        cache.reserve(cache.length + len(ids))
        # RoPE's frequencies, one set for the whole call (dynamic NTK's depend on its length)
        rope = rotation(self.config, cache.length + len(ids))
        logits = []                                                                     # [t, V] per chunk
        for start in range(0, max(len(ids), 1), PREFILL_CHUNK):
            h = self._fill(ids[start:start + PREFILL_CHUNK], cache, rope)               # [t, D]
            if start + PREFILL_CHUNK >= len(ids) or not last_only:
                logits.append(self._head(h[-1:] if last_only else h))
        return logits[0] if len(logits) == 1 else np.concatenate(logits)                # [T, V]

    def _fill(self, ids, cache, rope):
        """Run the blocks on the tokens `ids` [t] after the cache's positions, adding their
        keys and values to it. Returns the residual stream h [t, D] after the last block."""
        positions = np.arange(cache.length, cache.length + len(ids), dtype=np.int64)  # [t]
        h = ops.embedding_forward(ids, self.weights["model.embed_tokens.weight"])[0]   # [t, D]
        h = np.ascontiguousarray(h, dtype=np.float32)
        if len(ids) == 1 and self._fused_decoders():   # one new token: every block in one C call
            self._decode_stack(h, cache.k, cache.v, cache.length, rope.inv_freq, rope.attention_factor)
        else:
            for i in range(self.config.num_hidden_layers):
                h = block_forward(h, InferenceLayer(self, i, cache, positions, rope))
        cache.length += len(ids)
        return h

    def _head(self, h):
        """The final norm and lm_head: h [t, D] → logits [t, V]."""
        h = self.backend.rmsnorm(np.ascontiguousarray(h), self.weights["model.norm.weight"],
                                 self.config.rms_norm_eps)                               # [t, D]
        return self.project(h, self.lm_head)                                            # [t, V]

    def block(self, h, layer_index, positions, cache):
        """Block `layer_index` alone on h [T, D] at `positions` (its keys and values go to
        `cache` from `cache.length` on): what `forward` runs for each layer."""
        rope = rotation(self.config, int(positions[-1]) + 1)
        return block_forward(h, InferenceLayer(self, layer_index, cache, positions, rope))

    def project(self, x, weight, lora=()):
        """x [..., in] @ Wᵀ through the backend, plus scaling · (x Aᵀ) Bᵀ for each LoRA pair."""
        y = self.backend.matmul(x, weight, self.int8_activations)                  # [..., out]
        for lora_a, lora_b, scaling in lora:
            y = y + ops.lora_forward(x, lora_a, lora_b, scaling)[0]
        return y

    # -- changing how the model runs --------------------------------------------------
    def apply_adapter(self, adapter, source="adapter"):
        """Run with a LoRA adapter (`llama.adapter.Adapter`) beside the weights, unmerged:
        every adapted projection then adds scaling · (x Aᵀ) Bᵀ (adapters stack, in the order
        applied), and the adapter's embed_tokens / lm_head copies replace the model's.
        Raises AdapterError (naming `source`) if it does not fit this model."""
        adapter.check_compatible(self.config, self.weights, source=source)
        for name, lora_a, lora_b, scaling in adapter.lora_pairs():
            self.lora.setdefault(name, []).append((lora_a, lora_b, scaling))
        weights = dict(self.weights)
        self.config = with_copies(self.config, weights, adapter)
        self.weights = weights
        self._layers_from_weights()

    def set_int8_activations(self, on=True):
        """Round activations to 8 bits (per block of 32) before every product with quantized
        weights: llama.cpp's arithmetic, integer dot products (`quant.quant_matmul_int8`).
        The logits move a little (README, Results)."""
        self.int8_activations = bool(on)
        self._decoders = None                       # the fused kernels read the flag once

    # -- plumbing ------------------------------------------------------------------
    def _layers_from_weights(self):
        self.layers = [{key: self.weights[name] for key, name in layer_weight_names(i).items()}
                       for i in range(self.config.num_hidden_layers)]
        self._decoders = None

    def _fused_decoders(self):
        """A `kernels.DecodeLayer` per block, made on first use; None when the backend has
        none or a block's products are not plain weights (LoRA beside them)."""
        if self._decoders is None:
            fused = None if self.lora else self.backend.decode_layers(self.layers, self.config,
                                                                      self.int8_activations)
            self._decoders = fused or []
            self._decode_stack = kernels.DecodeStack(fused) if fused else None
        return self._decoders

    def _check_ids(self, ids, cache):
        if cache.length + len(ids) > cache.max_len:
            raise ValueError(f"context overflow: {cache.length} cached + {len(ids)} new tokens "
                             f"> {cache.max_len} positions")
        if len(ids) and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise ValueError(f"token id out of range [0, {self.config.vocab_size})")
