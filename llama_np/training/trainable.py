"""The LLaMA forward pass for training, which keeps what backward needs, and that backward.

Inference (`llama_np.llama.model.Llama`) runs one sequence and forgets everything but the KV cache.
Training runs a batch of B sequences of T tokens at once and, block by block, keeps the
cache of every op; the backward pass then walks the same blocks in reverse, each op's
backward taking its own cache, and frees each block's caches as soon as it is done:

    forward:  ids ─ embed ─► h ─► block 0 ─► … ─► block L-1 ─► norm ─► lm_head ─► loss
    backward: dh ◄─ block 0 ◄─ … ◄─ block L-1 ◄─ norm ◄─ lm_head ◄─ dlogits

    block(h):   x = rmsnorm(h);  q, k, v = x Wqᵀ, x Wkᵀ, x Wvᵀ;  q, k = rope(q), rope(k)
                h = h + attention(q, k, v) Woᵀ
                x = rmsnorm(h);  h = h + (silu(x Wgateᵀ) ⊙ x Wupᵀ) Wdownᵀ
    backward:   the residual stream passes dh through unchanged, each branch adds its dx.

Every matrix product works on all B·T tokens at once ([B·T, D] against [D, out]): a few
large BLAS calls per layer, no Python loop over tokens. Attention alone goes sequence by
sequence (each has its own causal mask). Sequences are right-padded: under a causal mask
a real token never looks at the padding after it, and padded positions carry no target,
so padding needs no attention mask at all.

The base model is frozen; what trains is an `llama_np.llama.adapter.Adapter`: LoRA matrices on the
targeted projections and full copies of embed_tokens / lm_head (modules_to_save). Frozen
weights may be float32 or quantized (`QuantizedMatrix`): gradients flow through their
dequantized values block by block (QLoRA), and no fp32 copy of the model is made.
"""
import threading

import numpy as np

from llama_np.ops import ops
from llama_np.llama.adapter import EMBED, LM_HEAD, dense, lora_backward, lora_forward, lora_names
from llama_np.llama.model import layer_weight_names
from llama_np.quant.quant import QuantizedMatrix, dequantize

# Positions whose logits are computed at once by the output head: the logits and their
# gradient for HEAD_CHUNK × V (1024 × 49,152 × 4 bytes = 200 MB) exist at a time.
HEAD_CHUNK = 1024


class TrainableLlama:
    """A frozen LLaMA base plus a trainable adapter.

        loss, n_targets, tape = model.forward(ids, labels, rng)   # ids, labels: [B, T]
        grads = model.backward(tape)              # {name: gradient}, names of adapter.params
        loss, n_targets, grads = model.loss_and_grads(ids, labels, rng, threads=2)  # both, in 2 shards

    `labels` are the token ids to learn, IGNORE_INDEX (-100) where nothing is learned
    (prompt, padding); the target of position t is labels[t + 1]. `rng` drives LoRA dropout
    (None: no dropout, as in evaluation). `trainable_rows` limits the gradients of the
    embedding and output-head copies to some rows (the paper's stage 1 can train only the
    new tokens' embeddings)."""

    def __init__(self, config, weights, adapter, trainable_rows=None):
        self.config = config
        self.weights = weights          # frozen base, HF names
        self.adapter = adapter
        self.params = adapter.params    # trainable, float32, PEFT names
        self.trainable_rows = trainable_rows
        self.lora = {}                  # base weight name -> (A name, B name, scaling)
        for name, lora_a, _, scaling in adapter.lora_pairs():
            self.lora[name] = (*lora_names(name), scaling)
        self.dropout = adapter.config.lora_dropout
        self._shared = None             # a SharedOnce while shards run in threads

    # -------------------------------------------------------------- the parameters
    def row_masks(self):
        """{params name: bool [rows]} for the embedding/head copies limited to `trainable_rows`."""
        if self.trainable_rows is None:
            return {}
        masks = {}
        for array in (self.adapter.embedding, self.adapter.output_head):
            name = None if array is None else self._trained_name(array)
            if name is not None:
                masks[name] = np.zeros(len(array), dtype=bool)
                masks[name][self.trainable_rows] = True
        return masks

    @property
    def embedding(self):
        copy = self.adapter.embedding
        return copy if copy is not None else self.weights[EMBED]

    @property
    def output_head(self):
        copy = self.adapter.output_head
        if copy is not None:
            return copy
        return self.weights[EMBED] if self.config.tie_word_embeddings else self.weights[LM_HEAD]

    def _trained_name(self, array):
        """The params name of a trained array (embedding or head copy), or None if frozen."""
        for name, p in self.params.items():
            if p is array:
                return name
        return None

    # ----------------------------------------------------------- the projections
    def group_weight(self, layer, keys, phase="forward"):
        """The frozen weights of the projections `keys` of block `layer` as one float32
        matrix, their rows stacked ([Wq; Wk; Wv] is [H·hd + 2·H_kv·hd, D]): projections that
        read the same input are then one large BLAS product instead of several small ones.
        Quantized weights are dequantized here, for one block at a time, and dropped when
        the block is done (and dequantized again in backward): no fp32 copy of the model.
        Shards running at once share each such matrix (see `SharedOnce`)."""
        if self._shared is not None:
            return self._shared.get((phase, layer, keys), lambda: self._stacked(layer, keys))
        return self._stacked(layer, keys)

    def _stacked(self, layer, keys):
        names = layer_weight_names(layer)
        ws = [self.weights[names[k]] for k in keys]
        if all(isinstance(w, QuantizedMatrix) for w in ws) and len({w.qtype for w in ws}) == 1:
            return dequantize(np.concatenate([w.data for w in ws]), ws[0].qtype)   # [Σout, in]
        return np.concatenate([dense(w) for w in ws]) if len(ws) > 1 else dense(ws[0])

    def _project(self, x, layer, keys, rng):
        """x times the frozen weights of `keys` (one product), plus the LoRA branch of each
        targeted projection. Returns one output per key (views of one [N, Σout] array)
        and the tape entry; the tape keeps inputs, not weights."""
        names = layer_weight_names(layer)
        y, _ = ops.linear_forward(x, self.group_weight(layer, keys))              # [N, Σout]
        outputs, branches, start = [], {}, 0
        for key in keys:
            width = self.weights[names[key]].shape[0]
            out = y[:, start:start + width]                                       # [N, out]
            start += width
            if names[key] in self.lora:
                a_name, b_name, scaling = self.lora[names[key]]
                delta, branches[key] = lora_forward(x, self.params[a_name].astype(x.dtype, copy=False),
                                                    self.params[b_name].astype(x.dtype, copy=False),
                                                    scaling, self.dropout, rng)
                out += delta
            outputs.append(out)
        return outputs, (layer, keys, x, branches)

    def _project_backward(self, douts, entry, grads, input_grad=True):
        """Backward of _project: LoRA gradients into `grads`; returns dx [N, in] (or None)."""
        layer, keys, x, branches = entry
        names = layer_weight_names(layer)
        lora_dx = []
        for key, dout in zip(keys, douts):
            if key in branches:
                a_name, b_name, _ = self.lora[names[key]]
                dx, dlora_a, dlora_b = lora_backward(dout, branches[key], input_grad)
                _accumulate(grads, a_name, dlora_a)
                _accumulate(grads, b_name, dlora_b)
                lora_dx.append(dx)
        if not input_grad:
            return None
        dy = douts[0] if len(douts) == 1 else np.concatenate(douts, axis=1)       # [N, Σout]
        dx, _ = ops.linear_backward(dy, (x, self.group_weight(layer, keys, "backward")), weight_grad=False)
        for d in lora_dx:
            dx += d
        return dx                                                                 # [N, in]

    # ------------------------------------------------------------------ a block
    def block_forward(self, h, layer, batch, positions, rng):
        """One transformer block on h [B·T, D]; returns the new h and the block's tape."""
        cfg = self.config
        names = layer_weight_names(layer)
        n_tokens, n_heads, n_kv, hd = h.shape[0], cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        seq_len = n_tokens // batch
        eps, theta = cfg.rms_norm_eps, cfg.rope_theta
        tape = {}

        x, tape["attn_norm"] = ops.rmsnorm_forward(h, self.weights[names["attn_norm"]], eps)   # [N, D]
        (q, k, v), tape["qkv"] = self._project(x, layer, ("q", "k", "v"), rng)  # [N, H*hd], [N, H_kv*hd] x 2
        q, tape["rope"] = ops.rope_forward(q.reshape(n_tokens, n_heads, hd), positions, theta)
        k, _ = ops.rope_forward(k.reshape(n_tokens, n_kv, hd), positions, theta)       # same angles
        q = q.reshape(batch, seq_len, n_heads, hd)
        k = k.reshape(batch, seq_len, n_kv, hd)
        v = v.reshape(batch, seq_len, n_kv, hd)
        attn = np.empty((batch, seq_len, n_heads * hd), dtype=h.dtype)                   # [B, T, H*hd]
        tape["attention"] = []
        for b in range(batch):  # each sequence has its own causal attention
            attn[b], cache = ops.attention_forward(q[b], k[b], v[b])
            tape["attention"].append(cache)
        (o,), tape["o"] = self._project(attn.reshape(n_tokens, -1), layer, ("o",), rng)  # [N, D]
        h = h + o

        x, tape["mlp_norm"] = ops.rmsnorm_forward(h, self.weights[names["mlp_norm"]], eps)     # [N, D]
        (gate, up), tape["gate_up"] = self._project(x, layer, ("gate", "up"), rng)       # [N, F] x 2
        hidden, tape["swiglu"] = ops.swiglu_forward(gate, up)                            # [N, F]
        (down,), tape["down"] = self._project(hidden, layer, ("down",), rng)             # [N, D]
        return h + down, tape

    def block_backward(self, dh, tape, grads, input_grad=True):
        """Backward of one block: dh [N, D] at its output → dh at its input (None when
        `input_grad` is False: nothing below this block needs it)."""
        cfg = self.config
        n_tokens, hd = dh.shape[0], cfg.head_dim
        # MLP branch: h_out = h_mid + down(swiglu(gate(x), up(x))), x = rmsnorm(h_mid)
        dhidden = self._project_backward([dh], tape.pop("down"), grads)                  # [N, F]
        dgate, dup = ops.swiglu_backward(dhidden, tape.pop("swiglu"))                    # [N, F]
        dx = self._project_backward([dgate, dup], tape.pop("gate_up"), grads)            # [N, D]
        dh = dh + ops.rmsnorm_backward(dx, tape.pop("mlp_norm"))[0]                     # [N, D]

        # attention branch: h_mid = h_in + o(attention(rope(q(x)), rope(k(x)), v(x)))
        dattn = self._project_backward([dh], tape.pop("o"), grads)                       # [N, H*hd]
        caches = tape.pop("attention")
        batch = len(caches)
        seq_len = n_tokens // batch
        dattn = dattn.reshape(batch, seq_len, -1)
        dq = np.empty((batch, seq_len, cfg.num_attention_heads, hd), dtype=dh.dtype)
        dk = np.empty((batch, seq_len, cfg.num_key_value_heads, hd), dtype=dh.dtype)
        dv = np.empty_like(dk)
        for b in range(batch):
            dq[b], dk[b], dv[b] = ops.attention_backward(dattn[b], caches[b])
        del caches
        rope_cache = tape.pop("rope")
        dq = ops.rope_backward(dq.reshape(n_tokens, -1, hd), rope_cache).reshape(n_tokens, -1)
        dk = ops.rope_backward(dk.reshape(n_tokens, -1, hd), rope_cache).reshape(n_tokens, -1)
        dx = self._project_backward([dq, dk, dv.reshape(n_tokens, -1)], tape.pop("qkv"), grads, input_grad)
        if not input_grad:
            return None
        return dh + ops.rmsnorm_backward(dx, tape.pop("attn_norm"))[0]                 # [N, D]

    # ------------------------------------------------------------ whole model
    def forward(self, ids, labels, rng=None, n_targets_total=None, need_grads=True):
        """Loss (mean cross-entropy over the positions with a target) of a batch.

        ids, labels: [B, T] integers. `n_targets_total`: the number of targets in the whole
        accumulated batch when this is one micro-batch of several; gradients are then scaled
        so that their sum over the micro-batches is the gradient of the mean over all
        targets. Returns (loss of this micro-batch, n_targets, tape for backward)."""
        ids = np.asarray(ids, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        if ids.ndim == 1:
            ids, labels = ids[None], labels[None]
        batch, seq_len = ids.shape
        if labels.shape != ids.shape:
            raise ValueError(f"labels {labels.shape} and ids {ids.shape} differ in shape")
        cfg = self.config
        if ids.size and (ids.min() < 0 or ids.max() >= cfg.vocab_size):
            raise ValueError(f"token id out of range [0, {cfg.vocab_size})")
        targets = ops.causal_lm_targets(labels).reshape(-1)                            # [N]
        rows = np.flatnonzero(targets != ops.IGNORE_INDEX)                             # [K]
        n_targets = len(rows)
        n_targets_total = n_targets_total or n_targets
        positions = np.tile(np.arange(seq_len), batch)                                  # [N]

        dtype = np.float64 if getattr(self.embedding, "dtype", None) == np.float64 else np.float32
        h, embed_cache = ops.embedding_forward(ids.reshape(-1), self.embedding)         # [N, D]
        h = h.astype(dtype, copy=False)
        tapes = []
        for layer in range(cfg.num_hidden_layers):
            h, tape = self.block_forward(h, layer, batch, positions, rng)
            tapes.append(tape)
        h_norm, norm_cache = ops.rmsnorm_forward(h, self.weights["model.norm.weight"], cfg.rms_norm_eps)
        del h

        # Output head and loss, chunk by chunk, forward and backward together: the gradient
        # of the loss with respect to the logits is known as soon as they are
        # (softmax - onehot), so the [K, V] logits never need to be kept for later.
        head = self.output_head
        head_name = self._trained_name(head)
        if self._shared is not None and not isinstance(head, np.ndarray):  # a quantized head:
            head = self._shared.get("head", lambda: dense(head))              # dequantized for
        head = dense(head).astype(dtype, copy=False)                          # this step only
        total_nll = 0.0
        dh_norm = np.zeros_like(h_norm) if need_grads else None                         # [N, D]
        dhead = None
        for start in range(0, n_targets, HEAD_CHUNK):
            chunk = rows[start:start + HEAD_CHUNK]                                      # [C]
            x = h_norm[chunk]                                                           # [C, D]
            logits, head_cache = ops.linear_forward(x, head)                          # [C, V]
            loss, ce_cache = ops.cross_entropy_forward(logits, targets[chunk])
            del logits
            total_nll += loss * len(chunk)
            if need_grads:
                dlogits = ops.cross_entropy_backward(ce_cache, dloss=len(chunk) / n_targets_total)
                dx, dw = ops.linear_backward(dlogits, head_cache, weight_grad=head_name is not None)
                dh_norm[chunk] = dx
                if dw is not None:
                    dhead = dw if dhead is None else dhead + dw
            del ce_cache, head_cache
        loss = total_nll / max(n_targets, 1)
        tape = dict(layers=tapes, embed=embed_cache, norm=norm_cache, dh_norm=dh_norm,
                    head=(head_name, dhead)) if need_grads else None
        return loss, n_targets, tape

    def backward(self, tape):
        """Gradients of every trainable parameter (a dict by params name; parameters that
        got no gradient are absent). Consumes the tape."""
        grads = {}
        head_name, dhead = tape.pop("head")
        if head_name is not None:
            _accumulate(grads, head_name, dhead)
        dh = ops.rmsnorm_backward(tape.pop("dh_norm"), tape.pop("norm"))[0]            # [N, D]
        embed_name = self._trained_name(self.embedding)
        layers = tape.pop("layers")
        for layer in reversed(range(len(layers))):
            needs_input = layer > 0 or embed_name is not None
            dh = self.block_backward(dh, layers.pop(), grads, input_grad=needs_input)
        if embed_name is not None:
            dtable = ops.embedding_backward(dh, tape.pop("embed"), self.trainable_rows)
            _accumulate(grads, embed_name, dtable)
        if self.trainable_rows is not None and head_name is not None:  # the head's rows too
            frozen = np.ones(len(grads[head_name]), dtype=bool)
            frozen[self.trainable_rows] = False
            grads[head_name][frozen] = 0
        return grads

    def loss_and_grads(self, ids, labels, rng=None, n_targets_total=None, threads=1):
        """forward + backward of a batch: (loss, n_targets, grads).

        With threads > 1 the batch is split by rows into that many shards, each run in its
        own thread with a single-threaded BLAS (NumPy releases the GIL inside its loops and
        BLAS calls, so the shards really run at once, element-wise work included), and the
        gradients are summed. Each shard draws its dropout masks from its own generator,
        seeded from `rng`: the masks depend on the number of shards, like on a seed."""
        return self._in_shards(ids, labels, rng, n_targets_total, threads, need_grads=True)

    def loss(self, ids, labels, threads=1):
        """Evaluation loss (no dropout, no gradients): (mean loss, number of targets)."""
        loss, n_targets, _ = self._in_shards(ids, labels, None, None, threads, need_grads=False)
        return loss, n_targets

    def _in_shards(self, ids, labels, rng, n_targets_total, threads, need_grads):
        ids = np.atleast_2d(np.asarray(ids, dtype=np.int64))
        labels = np.atleast_2d(np.asarray(labels, dtype=np.int64))

        def run(rows, shard_rng):
            loss, n, tape = self.forward(ids[rows], labels[rows], shard_rng, n_targets_total, need_grads)
            return loss, n, self.backward(tape) if need_grads else {}

        n_shards = min(threads, len(ids))
        if n_shards <= 1:
            return run(slice(None), rng)
        n_targets_total = n_targets_total or int(np.sum(ops.causal_lm_targets(labels) != ops.IGNORE_INDEX))
        seeds = rng.integers(0, 2 ** 63, n_shards) if rng is not None else [None] * n_shards

        def run_shard(shard):
            rows, seed = shard
            rows = trim_padding_columns(labels[rows], rows)
            return run(rows, None if seed is None else np.random.Generator(np.random.SFC64(seed)))

        shards = zip(np.array_split(np.arange(len(ids)), n_shards), seeds)
        self._shared = SharedOnce(n_shards)
        try:
            results = list(_thread_pool(n_shards).map(run_shard, shards))
        finally:
            self._shared = None
        grads = {}
        for _, _, shard_grads in results:
            for name, g in shard_grads.items():
                _accumulate(grads, name, g)
        n_targets = sum(n for _, n, _ in results)
        loss = sum(loss * n for loss, n, _ in results) / max(n_targets, 1)
        return loss, n_targets, grads


def trim_padding_columns(labels, rows):
    """An index (rows, :length) of the batch without the trailing positions after the
    last label of every row (padding): under a causal mask they influence nothing before."""
    has_label = np.any(labels != ops.IGNORE_INDEX, axis=0)                       # [T]
    length = int(np.flatnonzero(has_label)[-1]) + 1 if has_label.any() else labels.shape[1]
    return np.s_[rows[0]:rows[-1] + 1, :length]   # the last kept label is the last target


# ------------------------------------------------------------- worker threads
class SharedOnce:
    """What the shards of one batch all need, made once: the first shard to ask for a key
    makes the value (e.g. dequantizes a block's weights), the others take it, and it is
    dropped when all `n_users` have — so shards in step share, and nothing outlives its use."""

    def __init__(self, n_users):
        self.n_users = n_users
        self.entries = {}                 # key -> [lock, value, users left]
        self.lock = threading.Lock()

    def get(self, key, make):
        with self.lock:
            entry = self.entries.setdefault(key, [threading.Lock(), None, self.n_users])
        with entry[0]:                    # one shard makes it; one arriving meanwhile waits
            if entry[1] is None:
                entry[1] = make()
            value = entry[1]
        with self.lock:
            entry[2] -= 1
            if entry[2] == 0:
                del self.entries[key]
        return value


_pool = {"size": 0, "executor": None}


def _thread_pool(size):
    """A pool of `size` worker threads, each with a single-threaded BLAS."""
    if _pool["size"] != size:
        from concurrent.futures import ThreadPoolExecutor
        if _pool["executor"] is not None:
            _pool["executor"].shutdown(wait=True)
        _pool["executor"] = ThreadPoolExecutor(size, thread_name_prefix="llama_np-shard",
                                               initializer=set_blas_threads_here, initargs=(1,))
        _pool["size"] = size
    return _pool["executor"]


def set_blas_threads_here(n):
    """Set the BLAS thread count of the calling thread only (OpenBLAS >= 0.3.27,
    `openblas_set_num_threads_local`, found among the loaded libraries). Where that is not
    available nothing happens: shards then share the cores with BLAS's own threads."""
    setter = _local_thread_setter()
    if setter is not None:
        setter(int(n))


def _local_thread_setter():
    if "setter" not in _pool:
        _pool["setter"] = None
        try:
            import ctypes
            with open("/proc/self/maps") as maps:
                paths = {line.split()[-1] for line in maps if "openblas" in line and ".so" in line}
            for path in sorted(paths):
                setter = getattr(ctypes.CDLL(path), "openblas_set_num_threads_local", None)
                if setter is not None:
                    setter.argtypes, setter.restype = [ctypes.c_int], ctypes.c_int
                    _pool["setter"] = setter
                    break
        except (OSError, AttributeError):
            pass
    return _pool["setter"]


def _accumulate(grads, name, g):
    if name in grads:
        grads[name] += g
    else:
        grads[name] = g
