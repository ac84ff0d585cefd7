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


def cross_entropy_forward(logits, targets):
    """Mean negative log-likelihood of `targets` under softmax(logits), over the positions
    whose target is not IGNORE_INDEX. Returns (loss, cache)."""
    # logits: [N, V], targets: [N]
    keep = targets != IGNORE_INDEX                                   # [N]
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=-1, keepdims=True))      # [N, 1]
    log_probs = shifted
    log_probs -= log_z                                               # [N, V], in place
    n_kept = max(int(keep.sum()), 1)
    picked = log_probs[np.arange(len(targets)), np.where(keep, targets, 0)]
    loss = -np.sum(np.where(keep, picked, 0.0)) / n_kept
    return float(loss), (log_probs, targets, keep, n_kept)


def cross_entropy_backward(cache, dloss=1.0):
    """Gradient of the mean cross-entropy with respect to the logits:
    (softmax(logits) - onehot(target)) / n_kept on kept rows, zero on ignored rows."""
    log_probs, targets, keep, n_kept = cache
    # log_probs: [N, V]
    dlogits = np.exp(log_probs)                                      # softmax, [N, V]
    rows = np.flatnonzero(keep)
    dlogits[rows, targets[rows]] -= 1.0
    dlogits[~keep] = 0.0
    dlogits *= dlogits.dtype.type(dloss / n_kept)
    return dlogits
