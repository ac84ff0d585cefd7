"""The block's training use: one layer of a `TrainableLlama` over a batch, keeping a tape.

`block_forward(h, layer)` with a `TrainingLayer` runs the block on all B·T tokens of the
batch at once, h [N = B·T, D], and every op leaves on `layer.tape` what its backward
needs; `block_backward(dh, layer)` then takes those entries off again, in reverse.

- Products: the frozen weights of projections that read the same input are stacked
  ([Wq; Wk; Wv] is [H·hd + 2·H_kv·hd, D]), so each is one large BLAS product, and the LoRA
  branch of each adapted projection is added beside it (`ops.lora_forward`). A float base
  is stacked once, when the model is made (`trainable.stack_float_weights`); quantized
  weights are dequantized for this layer only, and again in backward: no fp32 copy of the
  model (QLoRA's idea). The tape keeps inputs, not weights.
- Attention: each sequence of the batch has its own causal attention. Sequences are
  right-padded; under a causal mask no real token sees the padding after it, and padded
  positions carry no target, so padding needs no mask.
- Gradients of the LoRA matrices go into `grads` as the backward passes each projection.
"""
import numpy as np

from llama_np import ops
from llama_np.llama.rope_scaling import rotation
from llama_np.llama.weights import layer_weight_names
from llama_np.quant import QuantizedMatrix


class TrainingLayer:
    def __init__(self, model, layer_index, batch, positions, rng, grads, needs_input_grad=True):
        self.model = model                      # the TrainableLlama
        self.config = model.config
        self.index = layer_index
        self.names = layer_weight_names(layer_index)
        self.batch = batch                      # B sequences of T tokens
        self.positions = positions              # [N] position of each token in its sequence
        self.rng = rng                          # LoRA dropout; None: no dropout
        self.grads = grads                      # {params name: gradient}, filled by backward
        self.needs_input_grad = needs_input_grad  # False: nothing below this layer trains
        self.tape = {}

    # ---------------------------------------------------------------- norms
    def norm(self, x, key):
        y, self.tape[key] = ops.rmsnorm_forward(x, self.model.weights[self.names[key]], self.config.rms_norm_eps)
        return y

    def norm_backward(self, dy, key):
        return ops.rmsnorm_backward(dy, self.tape.pop(key))[0]       # the norm weight is frozen

    # ------------------------------------------------------------- products
    def project(self, x, *keys):
        """x [N, in] times the frozen weights of `keys` (one stacked product), plus the LoRA
        branch of each adapted one. One [N, out] array per key (views of one [N, Σout])."""
        y, _ = ops.linear_forward(x, self.stacked_weight(keys, "forward"))          # [N, Σout]
        outputs, branches, start = [], {}, 0
        for key in keys:
            width = self.model.weights[self.names[key]].shape[0]
            out = y[:, start:start + width]                                         # [N, out]
            start += width
            if self.names[key] in self.model.lora:
                lora_a, lora_b, scaling = self._lora_params(key, x.dtype)
                delta, branches[key] = ops.lora_forward(x, lora_a, lora_b, scaling,
                                                        self.model.dropout, self.rng)
                out += delta
            outputs.append(out)
        self.tape[keys] = (x, branches)
        return outputs[0] if len(outputs) == 1 else outputs

    def project_backward(self, douts, *keys):
        """Backward of `project`: the LoRA gradients into `grads`; returns dx [N, in], or None
        for the first layer's q, k, v when nothing below needs it."""
        douts = (douts,) if isinstance(douts, np.ndarray) else douts
        x, branches = self.tape.pop(keys)
        input_grad = self.needs_input_grad or keys[0] != "q"
        lora_dx = []
        for key, dout in zip(keys, douts):
            if key in branches:
                a_name, b_name, _ = self.model.lora[self.names[key]]
                dx, dlora_a, dlora_b = ops.lora_backward(dout, branches[key], input_grad)
                accumulate(self.grads, a_name, dlora_a)
                accumulate(self.grads, b_name, dlora_b)
                lora_dx.append(dx)
        if not input_grad:
            return None
        dy = douts[0] if len(douts) == 1 else np.concatenate(douts, axis=1)        # [N, Σout]
        dx, _ = ops.linear_backward(dy, (x, self.stacked_weight(keys, "backward")), weight_grad=False)
        for d in lora_dx:
            dx += d
        return dx                                                                   # [N, in]

    def stacked_weight(self, keys, phase):
        """The frozen weights of `keys` as one float matrix, their rows stacked ([Σout, in]).
        Shards of a batch running at once share it (`shards.SharedOnce`)."""
        shared = self.model.shared
        if shared is not None:
            return shared.get((phase, self.index, keys), lambda: self._stack(keys))
        return self._stack(keys)

    def _stack(self, keys):
        if (self.index, keys) in self.model.stacked:                     # a float base, stacked once
            return self.model.stacked[self.index, keys]
        ws = [self.model.weights[self.names[k]] for k in keys]
        if all(isinstance(w, QuantizedMatrix) for w in ws) and len({w.qtype for w in ws}) == 1:
            return self.model.backend.dequantize(np.concatenate([w.data for w in ws]), ws[0].qtype)  # [Σout, in]
        floats = [self.model.as_float(w) for w in ws]
        return np.concatenate(floats) if len(floats) > 1 else floats[0]

    def _lora_params(self, key, dtype):
        a_name, b_name, scaling = self.model.lora[self.names[key]]
        params = self.model.params
        return params[a_name].astype(dtype, copy=False), params[b_name].astype(dtype, copy=False), scaling

    # ------------------------------------------------------- RoPE, attention
    def rope(self, q, k):
        cfg = self.config
        n_tokens, hd = q.shape[0], cfg.head_dim
        rope = rotation(cfg, int(self.positions.max()) + 1)                         # scaled or not
        q, self.tape["rope"] = ops.rope_forward(q.reshape(n_tokens, cfg.num_attention_heads, hd),
                                                self.positions, *rope)              # [N, H, hd]
        k, _ = ops.rope_forward(k.reshape(n_tokens, cfg.num_key_value_heads, hd),
                                self.positions, *rope)                              # same angles
        return q, k

    def rope_backward(self, dq, dk):
        n_tokens = dq.shape[0]
        cache = self.tape.pop("rope")
        return (ops.rope_backward(dq, cache).reshape(n_tokens, -1),                 # [N, H·hd]
                ops.rope_backward(dk, cache).reshape(n_tokens, -1))                 # [N, H_kv·hd]

    def attend(self, q, k, v):
        """Causal attention within each of the B sequences: q [N, H, hd], k [N, H_kv, hd],
        v [N, H_kv·hd] → [N, H·hd]."""
        batch, (n_tokens, n_heads, hd) = self.batch, q.shape
        seq_len = n_tokens // batch
        q = q.reshape(batch, seq_len, n_heads, hd)
        k = k.reshape(batch, seq_len, -1, hd)
        v = v.reshape(batch, seq_len, -1, hd)
        out = np.empty((batch, seq_len, n_heads * hd), dtype=q.dtype)              # [B, T, H·hd]
        caches = []
        for b in range(batch):
            out[b], cache = ops.attention_forward(q[b], k[b], v[b])
            caches.append(cache)
        self.tape["attention"] = caches
        return out.reshape(n_tokens, -1)

    def attend_backward(self, dout):
        """dout [N, H·hd] → dq [N, H, hd], dk [N, H_kv, hd], dv [N, H_kv·hd]."""
        cfg, caches = self.config, self.tape.pop("attention")
        batch, hd = len(caches), cfg.head_dim
        n_tokens = dout.shape[0]
        seq_len = n_tokens // batch
        dout = dout.reshape(batch, seq_len, -1)
        dq = np.empty((batch, seq_len, cfg.num_attention_heads, hd), dtype=dout.dtype)
        dk = np.empty((batch, seq_len, cfg.num_key_value_heads, hd), dtype=dout.dtype)
        dv = np.empty_like(dk)
        for b in range(batch):
            dq[b], dk[b], dv[b] = ops.attention_backward(dout[b], caches[b])
        return dq.reshape(n_tokens, -1, hd), dk.reshape(n_tokens, -1, hd), dv.reshape(n_tokens, -1)

    # ---------------------------------------------------------------- SwiGLU
    def swiglu(self, gate, up):
        hidden, self.tape["swiglu"] = ops.swiglu_forward(gate, up)
        return hidden

    def swiglu_backward(self, dhidden):
        return ops.swiglu_backward(dhidden, self.tape.pop("swiglu"))


def accumulate(grads, name, g):
    """grads[name] += g, or = g for the first contribution."""
    if name in grads:
        grads[name] += g
    else:
        grads[name] = g
