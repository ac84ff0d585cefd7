"""The block's inference use: one layer of a `Llama`, computing with its backend and its KV cache.

`block_forward(h, InferenceLayer(model, i, cache, positions, rope))` runs block i on the T new
tokens h [T, D]: every product goes through the model's backend (NumPy or C; float32 or
quantized weights), with the LoRA branch of an applied adapter beside it, and attention
writes the new keys and values into the cache, then attends over all S = cached + T
positions. Nothing is kept for a backward pass.
"""
from llama_np.llama.weights import layer_weight_names


class InferenceLayer:
    def __init__(self, model, layer_index, cache, positions, rope):
        self.model = model
        self.config = model.config
        self.index = layer_index
        self.weights = model.layers[layer_index]     # key ("q", "attn_norm", …) -> weight
        self.cache = cache
        self.positions = positions                   # [T] int64
        self.rope_rotation = rope                    # llama.rope_scaling.Rotation of this pass

    def norm(self, x, key):
        return self.model.backend.rmsnorm(x, self.weights[key], self.config.rms_norm_eps)

    def project(self, x, *keys):
        """x [T, in] times the weights `keys` → one [T, out] array per key (one array for one key)."""
        outputs = [self.model.project(x, self.weights[key], self._lora(key)) for key in keys]
        return outputs[0] if len(outputs) == 1 else outputs

    def rope(self, q, k):
        cfg, backend = self.config, self.model.backend
        n_tokens = q.shape[0]
        q = q.reshape(n_tokens, cfg.num_attention_heads, cfg.head_dim)                   # [T, H, hd]
        k = k.reshape(n_tokens, cfg.num_key_value_heads, cfg.head_dim)                   # [T, H_kv, hd]
        return (backend.rope(q, self.positions, *self.rope_rotation),
                backend.rope(k, self.positions, *self.rope_rotation))

    def attend(self, q, k, v):
        """Causal attention of the T new queries over the cache, after appending k and v."""
        cache, i = self.cache, self.index
        start, n_tokens = cache.length, q.shape[0]
        cache.write(i, start, k, v.reshape(k.shape))                 # rounded to the cache's format
        keys, values = cache.rows(i, start + n_tokens)               # [S, H_kv, width] as stored
        return self.model.backend.attention(q, keys, values)                              # [T, H·hd]

    def swiglu(self, gate, up):
        return self.model.backend.swiglu(gate, up)                                        # [T, F]

    def _lora(self, key):
        """The LoRA pairs beside weight `key` of this layer (none without an adapter)."""
        if not self.model.lora:
            return ()
        return self.model.lora.get(layer_weight_names(self.index)[key], ())
