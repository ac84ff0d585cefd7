"""One decoding step for several sequences at once: continuous batching's step.

B sequences, each with its own KV cache and one new token, go through the model together:

    h = embed(tokens)                          [B, D]   row b: sequence b's new token
    for each block: h = block(h)               each row attends over its own cache only
    logits = lm_head(norm(h))                  [B, V]

Decoding is bound by reading and unpacking the weights, so B rows cost little more than
one: with the C backend all the blocks are one call for all B rows (`kernels.decode_batch`),
each weight block unpacked once for the B rows. Every row is computed exactly as
`Llama.forward([token], cache)` computes it alone, bit for bit, so what one sequence
generates never depends on what else is in the batch. Where there is no batched kernel
(the NumPy backend, LoRA beside the weights, caches of different KV formats), the rows
simply go through `Llama.forward` one by one.
"""
import numpy as np

from llama_np import ops
from llama_np.kernels import decode_batch
from llama_np.llama.rope_scaling import rotation
from llama_np.quant import QuantizedMatrix


def decode_step(model, tokens, caches):
    """Logits [B, V] for the new token tokens[b] of each sequence b, which follows the
    caches[b].length tokens already in caches[b] (each cache then holds one more)."""
    tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)                 # [B]
    if len(tokens) != len(caches):
        raise ValueError(f"{len(tokens)} tokens for {len(caches)} caches")
    fused = model._fused_decoders()
    if not fused or not _batchable(caches):
        return np.concatenate([model.forward([token], cache, last_only=True)
                               for token, cache in zip(tokens, caches)])
    for token, cache in zip(tokens, caches):
        model._check_ids(np.array([token]), cache)
        cache.reserve(cache.length + 1)
    positions = np.array([cache.length for cache in caches], dtype=np.int64)  # [B]
    # each row's RoPE, as Llama.forward makes it for one token after cache.length others
    rotations = [rotation(model.config, cache.length + 1)[1:] for cache in caches]
    h = ops.embedding_forward(tokens, model.weights["model.embed_tokens.weight"])[0]  # [B, D]
    h = np.ascontiguousarray(h, dtype=np.float32)
    decode_batch.BatchStep(fused, [c.k for c in caches], [c.v for c in caches], positions, rotations).run(h)
    for cache in caches:
        cache.length += 1
    head = model.lm_head
    if isinstance(head, QuantizedMatrix):
        h = model.backend.rmsnorm(h, model.weights["model.norm.weight"], model.config.rms_norm_eps)  # [B, D]
        return decode_batch.quant_matvec_batch(head.data, head.qtype, h, model.int8_activations)   # [B, V]
    # otherwise the head one row at a time, as each row alone gets it (BLAS for float32)
    return np.concatenate([model._head(h[b:b + 1]) for b in range(len(h))])


def _batchable(caches):
    """One KV format for all (the kernel takes one), in contiguous arrays."""
    return (len({cache.k.dtype for cache in caches}) == 1
            and all(cache.k.flags.c_contiguous and cache.v.flags.c_contiguous for cache in caches))
