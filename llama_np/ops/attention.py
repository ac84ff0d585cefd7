"""Causal grouped-query attention, forward and backward."""
import numpy as np


def softmax(scores, axis=-1):
    """Numerically stable softmax of a copy of `scores` (see softmax_)."""
    return softmax_(np.array(scores, copy=True), axis)


def softmax_(scores, axis=-1):
    """Numerically stable softmax, in place: subtracting the row maximum changes nothing
    mathematically and keeps exp() from overflowing. The scores' own array becomes the
    probabilities (attention's [H, T, S] arrays are the largest of a training step)."""
    scores -= scores.max(axis=axis, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=axis, keepdims=True)
    return scores


def attention_forward(q, k, v):
    """Causal grouped-query attention.

    The T queries are the *last* T of the S positions (earlier ones come from the KV
    cache), so query t may look at keys 0 … S-T+t. Each group of H/H_kv query heads shares
    one key/value head (GQA, Ainslie et al. 2023; H_kv = H is ordinary multi-head attention).

        out = softmax(q kᵀ / √hd + causal_mask) v
    """
    # q: [T, H, hd], k, v: [S, H_kv, hd]
    n_tokens, n_heads, head_dim = q.shape
    n_keys, n_kv_heads, _ = k.shape
    n_rep = n_heads // n_kv_heads
    qg = q.reshape(n_tokens, n_kv_heads, n_rep, head_dim).transpose(1, 2, 0, 3)  # [H_kv, rep, T, hd]
    kg = k.transpose(1, 2, 0)                                                    # [H_kv, hd, S]
    vg = v.transpose(1, 0, 2)                                                    # [H_kv, S, hd]
    # The rep query heads of a group meet the same keys: stacking their rows makes one
    # matrix product per group ([rep·T, hd] @ [hd, S]) instead of rep small ones.
    q_rows = qg.reshape(n_kv_heads, n_rep * n_tokens, head_dim)                  # [H_kv, rep*T, hd]
    qg = q_rows.reshape(qg.shape)
    scores = (q_rows @ kg).reshape(n_kv_heads, n_rep, n_tokens, n_keys)
    scores *= np.float32(1.0 / np.sqrt(head_dim))                                # [H_kv, rep, T, S]
    query_pos = np.arange(n_keys - n_tokens, n_keys)[:, None]                    # [T, 1]
    future = np.arange(n_keys)[None, :] > query_pos                              # [T, S]
    np.copyto(scores, np.float32(-np.inf), where=future)                         # masked in place
    probs = softmax_(scores)                                                     # [H_kv, rep, T, S]
    out_rows = probs.reshape(n_kv_heads, n_rep * n_tokens, n_keys) @ vg          # [H_kv, rep*T, hd]
    out = out_rows.reshape(n_kv_heads, n_rep, n_tokens, head_dim)                # [H_kv, rep, T, hd]
    out = out.transpose(2, 0, 1, 3).reshape(n_tokens, n_heads * head_dim)       # [T, H*hd]
    return out, (qg, kg, vg, probs, out_rows)


def attention_backward(dout, cache):
    """Gradients of attention_forward with respect to q, k and v.

    With P = softmax(Z), Z = q kᵀ/√hd (masked) and out = P v:
        dv = Pᵀ dout                     dP = dout vᵀ
        dZ = P ⊙ (dP - rowsum(dP ⊙ P))   (softmax backward; masked entries have P = 0)
        dq = dZ k / √hd                  dk = dZᵀ q / √hd
    rowsum(dP ⊙ P) is Σ_j P_ij (dout_i · v_j) = dout_i · out_i, so it is taken from the
    [T, hd] output instead of the [T, S] product (FlashAttention's D).
    The query heads of a group share their key/value head; with their rows stacked
    ([rep·T, ·], as in the forward) the products Pᵀ dout and dZᵀ q add up their dk and dv."""
    qg, kg, vg, probs, out_rows = cache
    n_kv_heads, n_rep, n_tokens, head_dim = qg.shape
    n_keys = kg.shape[-1]
    rows = n_rep * n_tokens
    q_rows = qg.reshape(n_kv_heads, rows, head_dim)                              # [H_kv, rep*T, hd]
    p_rows = probs.reshape(n_kv_heads, rows, n_keys)                             # [H_kv, rep*T, S]
    # dout: [T, H*hd] -> the layout of q_rows
    dout_rows = (dout.reshape(n_tokens, n_kv_heads, n_rep, head_dim).transpose(1, 2, 0, 3)
                 .reshape(n_kv_heads, rows, head_dim))                           # [H_kv, rep*T, hd]
    dvg = p_rows.swapaxes(-1, -2) @ dout_rows                                    # [H_kv, S, hd]
    dscores = dout_rows @ vg.swapaxes(-1, -2)                                    # dP: [H_kv, rep*T, S]
    dscores -= np.sum(dout_rows * out_rows, axis=-1, keepdims=True)              # - rowsum(dP ⊙ P)
    dscores *= p_rows
    dscores *= dscores.dtype.type(1.0 / np.sqrt(head_dim))                       # dZ / √hd
    dq_rows = dscores @ kg.swapaxes(-1, -2)                                      # [H_kv, rep*T, hd]
    dkg = dscores.swapaxes(-1, -2) @ q_rows                                      # [H_kv, S, hd]
    dq = (dq_rows.reshape(n_kv_heads, n_rep, n_tokens, head_dim).transpose(2, 0, 1, 3)
          .reshape(n_tokens, n_kv_heads * n_rep, head_dim))                      # [T, H, hd]
    dk = dkg.transpose(1, 0, 2)                                                  # [S, H_kv, hd]
    dv = dvg.transpose(1, 0, 2)                                                  # [S, H_kv, hd]
    return dq, dk, dv
