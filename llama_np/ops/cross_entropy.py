"""The causal language-model loss: next-token targets and cross-entropy, forward and backward."""
import numpy as np


IGNORE_INDEX = -100  # the label of positions that do not count (Hugging Face convention)


def causal_lm_targets(labels):
    """The target of position t is the label of position t + 1: a causal LM predicts the
    next token. The last position has no next token and is ignored (as in transformers'
    ForCausalLMLoss, which pads the labels with IGNORE_INDEX and shifts them left)."""
    # labels: [..., T] -> targets: [..., T]
    targets = np.full_like(labels, IGNORE_INDEX)
    targets[..., :-1] = labels[..., 1:]
    return targets


def count_targets(labels):
    """How many positions of `labels` [..., T] have a target (`causal_lm_targets`): what a
    batch's mean loss divides by, and what the gradients of the micro-batches and shards of
    one optimizer step are scaled by, so that they add up to the gradient of that mean."""
    return int(np.count_nonzero(causal_lm_targets(labels) != IGNORE_INDEX))


def cross_entropy_forward(logits, targets, overwrite=False):
    """Mean negative log-likelihood of `targets` under softmax(logits), over the positions
    whose target is not IGNORE_INDEX. Returns (loss, cache).

    With the largest logit m of a row subtracted first (so that exp cannot overflow),
    log softmax(z)_t = (z_t - m) - log Σ_v exp(z_v - m). The cache keeps the probabilities,
    which are all the backward pass needs. `overwrite=True` computes them in the logits'
    own array: the output head's logits are [N, V], hundreds of MB for a long batch, and
    every new array that size is memory the operating system must clear first."""
    # logits: [N, V], targets: [N]
    keep = targets != IGNORE_INDEX                                   # [N]
    probs = logits if overwrite else logits.copy()                   # [N, V]
    probs -= probs.max(axis=-1, keepdims=True)                       # z - m
    picked = probs[np.arange(len(targets)), np.where(keep, targets, 0)]   # [N] z_t - m
    np.exp(probs, out=probs)
    z = probs.sum(axis=-1, keepdims=True)                            # [N, 1]
    probs /= z                                                       # softmax
    n_kept = max(int(keep.sum()), 1)
    loss = -np.sum(np.where(keep, picked - np.log(z[:, 0]), 0.0)) / n_kept
    return float(loss), (probs, targets, keep, n_kept)


def cross_entropy_backward(cache, dloss=1.0):
    """Gradient of the mean cross-entropy with respect to the logits:
    (softmax(logits) - onehot(target)) / n_kept on kept rows, zero on ignored rows.
    Consumes the cache: the gradient is computed in the probabilities' array."""
    probs, targets, keep, n_kept = cache
    dlogits = probs                                                  # [N, V], in place
    rows = np.flatnonzero(keep)
    dlogits[rows, targets[rows]] -= 1.0
    dlogits[~keep] = 0.0
    dlogits *= dlogits.dtype.type(dloss / n_kept)
    return dlogits
