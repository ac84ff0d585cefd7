"""`TrainableLlama`: a frozen LLaMA base with a trainable adapter — the model's training
forward (keeping a tape) and its backward.

    forward:  ids ─ embed ─► h ─► block 0 ─► … ─► block L-1 ─► norm ─► lm_head ─► loss
    backward: dh ◄─ block 0 ◄─ … ◄─ block L-1 ◄─ norm ◄─ lm_head ◄─ dlogits

The blocks are `llama.model.block_forward` / `block_backward`, used through a
`TrainingLayer` per layer (stacked products with LoRA beside them, attention within each
sequence, a tape): forward is the flat list of layers, backward the same list reversed,
each layer dropped as soon as its backward is done. Every product works on all B·T tokens
of the batch at once: a few large BLAS calls per layer, no Python loop over tokens.

The base model is frozen; what trains is a `llama_np.llama.adapter.Adapter`: LoRA matrices
on the targeted projections and full copies of embed_tokens / lm_head (modules_to_save).
Frozen weights may be float32 or quantized (`QuantizedMatrix`): gradients flow through
their dequantized values a layer at a time (QLoRA), and no fp32 copy of the model is made;
`use_kernels` lets the C kernels do that dequantizing (the same floats, bit for bit).
"""
import numpy as np

from llama_np import kernels, ops
from llama_np.llama.adapter import EMBED, LM_HEAD, lora_names
from llama_np.llama.model import block_backward, block_forward
from llama_np.llama.weights import layer_weight_names
from llama_np.quant import QuantizedMatrix, dense
from llama_np.training.memory import keep_freed_memory
from llama_np.training.shards import SharedOnce, thread_pool
from llama_np.training.training_layer import TrainingLayer, accumulate

# Positions whose logits are computed at once by the output head: the logits and their
# gradient for HEAD_CHUNK × V (1024 × 49,152 × 4 bytes = 200 MB) exist at a time.
HEAD_CHUNK = 1024


# Projections that read the same input, multiplied as one stacked matrix (block_forward).
STACKED_GROUPS = (("q", "k", "v"), ("gate", "up"))


def stack_float_weights(config, weights):
    """A float base with each STACKED_GROUPS group of a layer in one array, the single
    weights then views of its rows: ({name: weight}, {(layer, keys): [Σout, in]}). The
    training products multiply by the stacked arrays; made once, not at every step, and no
    bigger than the weights were. Quantized weights are left as they are (they are
    dequantized a layer at a time, TrainingLayer._stack)."""
    weights, stacked = dict(weights), {}
    for i in range(config.num_hidden_layers):
        names = layer_weight_names(i)
        for keys in STACKED_GROUPS:
            parts = [weights[names[key]] for key in keys]
            if not all(isinstance(w, np.ndarray) and w.dtype == np.float32 for w in parts):
                continue
            stacked[i, keys] = np.concatenate(parts)                                 # [Σout, in]
            start = 0
            for key, part in zip(keys, parts):
                weights[names[key]] = stacked[i, keys][start:start + len(part)]      # a view
                start += len(part)
    return weights, stacked


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

    def __init__(self, config, weights, adapter, trainable_rows=None, use_kernels=True):
        self.config = config
        self.backend = kernels.backend(use_kernels)   # dequantizes a quantized base (C if built)
        self.weights, self.stacked = stack_float_weights(config, weights)   # frozen base, HF names
        self.adapter = adapter
        self.params = adapter.params    # trainable, float32, PEFT names
        self.trainable_rows = trainable_rows
        self.lora = {}                  # base weight name -> (A name, B name, scaling)
        for name, lora_a, _, scaling in adapter.lora_pairs():
            self.lora[name] = (*lora_names(name), scaling)
        self.dropout = adapter.config.lora_dropout
        self.shared = None              # a SharedOnce while shards run in threads

    def as_float(self, weight):
        """A frozen weight as a float array: a quantized one dequantized by the backend."""
        if isinstance(weight, QuantizedMatrix):
            return self.backend.dequantize(weight.data, weight.qtype)                # [out, in]
        return dense(weight)

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
        grads = {}
        embed_trained = self._trained_name(self.embedding) is not None
        layers = [TrainingLayer(self, i, batch, positions, rng, grads, needs_input_grad=i > 0 or embed_trained)
                  for i in range(cfg.num_hidden_layers)]
        for layer in layers:
            h = block_forward(h, layer)
        h_norm, norm_cache = ops.rmsnorm_forward(h, self.weights["model.norm.weight"], cfg.rms_norm_eps)
        del h

        # Output head and loss, chunk by chunk, forward and backward together: the gradient
        # of the loss with respect to the logits is known as soon as they are
        # (softmax - onehot), so the [K, V] logits never need to be kept for later.
        head = self.output_head
        head_name = self._trained_name(head)
        if self.shared is not None and not isinstance(head, np.ndarray):  # a quantized head:
            head = self.shared.get("head", lambda: self.as_float(head))       # dequantized for
        head = self.as_float(head).astype(dtype, copy=False)                  # this step only
        total_nll = 0.0
        dh_norm = np.zeros_like(h_norm) if need_grads else None                         # [N, D]
        dhead = None
        for start in range(0, n_targets, HEAD_CHUNK):
            chunk = rows[start:start + HEAD_CHUNK]                                      # [C]
            x = h_norm[chunk]                                                           # [C, D]
            logits, head_cache = ops.linear_forward(x, head)                          # [C, V]
            loss, ce_cache = ops.cross_entropy_forward(logits, targets[chunk], overwrite=True)
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
        tape = dict(layers=layers, grads=grads, embed=embed_cache, norm=norm_cache, dh_norm=dh_norm,
                    head=(head_name, dhead)) if need_grads else None
        return loss, n_targets, tape

    def backward(self, tape):
        """Gradients of every trainable parameter (a dict by params name; parameters that
        got no gradient are absent). Consumes the tape."""
        grads = tape.pop("grads")
        head_name, dhead = tape.pop("head")
        if head_name is not None:
            accumulate(grads, head_name, dhead)
        dh = ops.rmsnorm_backward(tape.pop("dh_norm"), tape.pop("norm"))[0]            # [N, D]
        embed_name = self._trained_name(self.embedding)
        layers = tape.pop("layers")
        while layers:                   # the blocks in reverse, each dropped when done
            dh = block_backward(dh, layers.pop())
        if embed_name is not None:
            # a head tied to the embedding has put its gradient there already: the lookup's
            # rows are added into it, not into a second [V, D] table
            grads[embed_name] = ops.embedding_backward(dh, tape.pop("embed"), self.trainable_rows,
                                                       into=grads.get(embed_name))
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
        keep_freed_memory()          # every batch makes the same large arrays again
        ids = np.atleast_2d(np.asarray(ids, dtype=np.int64))
        labels = np.atleast_2d(np.asarray(labels, dtype=np.int64))

        def run(rows, shard_rng):
            loss, n, tape = self.forward(ids[rows], labels[rows], shard_rng, n_targets_total, need_grads)
            return loss, n, self.backward(tape) if need_grads else {}

        n_shards = min(threads, len(ids))
        if n_shards <= 1:
            return run(slice(None), rng)
        n_targets_total = n_targets_total or ops.count_targets(labels)
        seeds = rng.integers(0, 2 ** 63, n_shards) if rng is not None else [None] * n_shards

        def run_shard(shard):
            rows, seed = shard
            rows = trim_padding_columns(labels[rows], rows)
            return run(rows, None if seed is None else np.random.Generator(np.random.SFC64(seed)))

        shards = zip(np.array_split(np.arange(len(ids)), n_shards), seeds)
        self.shared = SharedOnce(n_shards)
        try:
            results = list(thread_pool(n_shards).map(run_shard, shards))
        finally:
            self.shared = None
        grads = {}
        for _, _, shard_grads in results:
            for name, g in shard_grads.items():
                accumulate(grads, name, g)
        n_targets = sum(n for _, n, _ in results)
        loss = sum(loss * n for loss, n, _ in results) / max(n_targets, 1)
        return loss, n_targets, grads


def trim_padding_columns(labels, rows):
    """An index (rows, :length) of the batch without the trailing positions after the
    last label of every row (padding): under a causal mask they influence nothing before."""
    has_label = np.any(labels != ops.IGNORE_INDEX, axis=0)                       # [T]
    length = int(np.flatnonzero(has_label)[-1]) + 1 if has_label.any() else labels.shape[1]
    return np.s_[rows[0]:rows[-1] + 1, :length]   # the last kept label is the last target
