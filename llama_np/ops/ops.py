"""The operations a LLaMA is made of, as pure NumPy functions (the reference implementation).

Each `*_forward` returns its output and a `cache`: exactly what the matching `*_backward`
needs to compute gradients. Inference ignores the cache; training keeps it. The C kernels in
`llama_np.kernels.native` are checked against these functions.

Shapes: T tokens in this call, S tokens attended to (cached + new), D model width,
H query heads, H_kv key/value heads, hd head dim, F SwiGLU width, V vocabulary.
"""
import numpy as np


# ----------------------------------------------------------------------------- linear
def linear_forward(x, weight):
    """y = x Wᵀ with W in the Hugging Face layout [out, in]. `weight` is a float32 array or a
    `quant.QuantizedMatrix` (multiplied block by block, never dequantized whole)."""
    # x: [..., in] -> y: [..., out]
    y = x @ weight.T if isinstance(weight, np.ndarray) else weight.matmul(x)
    return y, (x, weight)


def linear_backward(dy, cache, weight_grad=True):
    """Gradients of y = x Wᵀ:  dx = dy W  and  dW = dyᵀ x  (summed over all leading axes).

    A frozen weight (the base model under LoRA) needs only dx: pass weight_grad=False and
    the [out, in] product is never formed. A quantized W gives dx through its blocks
    (`matmul_t`), which is how gradients reach a LoRA adapter sitting on a 4-bit base
    (QLoRA, Dettmers et al. 2023) without a dequantized copy of the model."""
    x, weight = cache
    # dy: [..., out], x: [..., in]
    dx = dy @ weight if isinstance(weight, np.ndarray) else weight.matmul_t(dy)  # [..., in]
    if not weight_grad:
        return dx, None
    dweight = dy.reshape(-1, dy.shape[-1]).T @ x.reshape(-1, x.shape[-1])      # [out, in]
    return dx, dweight


# -------------------------------------------------------------------------- embedding
def embedding_forward(ids, table):
    """Row lookup: h[t] = table[ids[t]]. `table` [V, D] may be quantized (rows dequantized
    one by one)."""
    # ids: [T] -> h: [T, D]
    h = table[ids] if isinstance(table, np.ndarray) else table.rows(ids)
    dtype = np.float64 if h.dtype == np.float64 else np.float32  # float64 only in gradient checks
    return h.astype(dtype, copy=False), (ids, table.shape)


def embedding_backward(dh, cache, trainable_rows=None):
    """Gradient of the lookup with respect to the table: every occurrence of a token adds
    its output gradient to that token's row, dtable[v] = Σ_{t: ids[t] = v} dh[t].

    `trainable_rows` (array of row ids, or None for all) keeps the gradient of those rows
    only — the paper's option of training just the embeddings of the newly added tokens."""
    ids, (n_rows, dim) = cache
    # dh: [..., D] -> dtable: [V, D]
    dtable = np.zeros((n_rows, dim), dtype=dh.dtype)
    np.add.at(dtable, ids.reshape(-1), dh.reshape(-1, dim))   # repeated ids accumulate
    if trainable_rows is not None:
        frozen = np.ones(n_rows, dtype=bool)
        frozen[trainable_rows] = False
        dtable[frozen] = 0
    return dtable


# ---------------------------------------------------------------------------- RMSNorm
def rmsnorm_forward(x, weight, eps):
    """RMSNorm (Zhang & Sennrich 2019): y = x / sqrt(mean(x²) + eps) * weight.

    Unlike LayerNorm there is no mean subtraction and no bias."""
    # x: [T, D], weight: [D]
    inv_rms = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)  # [T, 1]
    x_hat = x * inv_rms                                                      # [T, D]
    return (x_hat * weight).astype(x.dtype, copy=False), (x_hat, inv_rms, weight)


def rmsnorm_backward(dy, cache):
    """Gradients of rmsnorm_forward. With x̂ = x·r and r = (mean(x²) + eps)^-½:

        dx = r · (g - x̂ · mean(g·x̂)),   g = dy · weight;     dweight = Σ_t dy · x̂

    (the second term is the path through r, which every element of the row shares)."""
    x_hat, inv_rms, weight = cache
    # dy: [T, D]
    dweight = np.sum(dy * x_hat, axis=tuple(range(dy.ndim - 1)))                # [D]
    g = dy * weight                                                              # [T, D]
    dx = inv_rms * (g - x_hat * np.mean(g * x_hat, axis=-1, keepdims=True))      # [T, D]
    return dx.astype(dy.dtype, copy=False), dweight.astype(dy.dtype, copy=False)


# ------------------------------------------------------------------------------- RoPE
def rope_cos_sin(positions, head_dim, theta):
    """cos and sin of the rotation angles pos · θ^(-2i/hd), i < hd/2, computed in float32
    as Hugging Face does. Returns two [T, hd/2] arrays."""
    exponents = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    inv_freq = (1.0 / (np.float32(theta) ** exponents)).astype(np.float32)     # [hd/2]
    angles = np.asarray(positions, dtype=np.float32)[:, None] * inv_freq[None]  # [T, hd/2]
    return np.cos(angles), np.sin(angles)


def rope_forward(x, positions, theta):
    """Rotary position embedding (Su et al. 2021), "rotate-half" layout of Hugging Face:
    the pairs rotated together are (x[i], x[i + hd/2]), by angle pos · θ^(-2i/hd).

        x1' = x1 cos - x2 sin,   x2' = x2 cos + x1 sin

    A rotation by an angle proportional to the position makes q·k depend only on the
    distance between the two tokens."""
    # x: [T, H, hd], positions: [T]
    half = x.shape[-1] // 2
    cos, sin = rope_cos_sin(positions, x.shape[-1], theta)  # [T, hd/2] each
    cos, sin = cos[:, None, :], sin[:, None, :]              # [T, 1, hd/2]: same for every head
    x1, x2 = x[..., :half], x[..., half:]
    y = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return y, (cos, sin)


def rope_backward(dy, cache):
    """Gradient of rope_forward. A rotation is orthogonal, so its transpose — the rotation
    by the opposite angle — carries the gradient back:

        dx1 = dy1 cos + dy2 sin,   dx2 = dy2 cos - dy1 sin"""
    cos, sin = cache                                         # [T, 1, hd/2]
    # dy: [T, H, hd]
    half = dy.shape[-1] // 2
    dy1, dy2 = dy[..., :half], dy[..., half:]
    return np.concatenate([dy1 * cos + dy2 * sin, dy2 * cos - dy1 * sin], axis=-1)


# -------------------------------------------------------------------------- attention
def softmax(scores, axis=-1):
    """Numerically stable softmax: subtracting the row maximum changes nothing mathematically
    and keeps exp() from overflowing."""
    e = np.exp(scores - scores.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


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
    scores = np.where(future, np.float32(-np.inf), scores)
    probs = softmax(scores).astype(q.dtype, copy=False)                          # [H_kv, rep, T, S]
    out = probs.reshape(n_kv_heads, n_rep * n_tokens, n_keys) @ vg               # [H_kv, rep*T, hd]
    out = out.reshape(n_kv_heads, n_rep, n_tokens, head_dim)                     # [H_kv, rep, T, hd]
    out = out.transpose(2, 0, 1, 3).reshape(n_tokens, n_heads * head_dim)       # [T, H*hd]
    return out, (qg, kg, vg, probs)


def attention_backward(dout, cache):
    """Gradients of attention_forward with respect to q, k and v.

    With P = softmax(Z), Z = q kᵀ/√hd (masked) and out = P v:
        dv = Pᵀ dout                     dP = dout vᵀ
        dZ = P ⊙ (dP - rowsum(dP ⊙ P))   (softmax backward; masked entries have P = 0)
        dq = dZ k / √hd                  dk = dZᵀ q / √hd
    The query heads of a group share their key/value head; with their rows stacked
    ([rep·T, ·], as in the forward) the products Pᵀ dout and dZᵀ q add up their dk and dv."""
    qg, kg, vg, probs = cache
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
    dscores -= np.sum(dscores * p_rows, axis=-1, keepdims=True)
    dscores *= p_rows
    dscores *= dscores.dtype.type(1.0 / np.sqrt(head_dim))                       # dZ / √hd
    dq_rows = dscores @ kg.swapaxes(-1, -2)                                      # [H_kv, rep*T, hd]
    dkg = dscores.swapaxes(-1, -2) @ q_rows                                      # [H_kv, S, hd]
    dq = (dq_rows.reshape(n_kv_heads, n_rep, n_tokens, head_dim).transpose(2, 0, 1, 3)
          .reshape(n_tokens, n_kv_heads * n_rep, head_dim))                      # [T, H, hd]
    dk = dkg.transpose(1, 0, 2)                                                  # [S, H_kv, hd]
    dv = dvg.transpose(1, 0, 2)                                                  # [S, H_kv, hd]
    return dq, dk, dv


# ----------------------------------------------------------------------------- SwiGLU
def silu(x):
    """SiLU (swish): x · σ(x)."""
    return x / (1.0 + np.exp(-x))


def swiglu_forward(gate, up):
    """SwiGLU (Shazeer 2020): silu(gate) ⊙ up, the gated hidden layer of LLaMA's MLP."""
    # gate, up: [T, F]
    return (silu(gate) * up).astype(gate.dtype, copy=False), (gate, up)


def swiglu_backward(dout, cache):
    """Gradients of silu(gate) ⊙ up. With σ the logistic function,
    silu'(g) = σ(g) (1 + g (1 - σ(g))), so

        dgate = dout ⊙ up ⊙ σ(g)(1 + g(1 - σ(g))),   dup = dout ⊙ silu(g)"""
    gate, up = cache
    # dout, gate, up: [T, F]; computed in place, the arrays are large
    sig = np.exp(-gate)
    sig += 1.0
    np.reciprocal(sig, out=sig)                                                  # σ(g), [T, F]
    silu_g = gate * sig                                                          # [T, F]
    dup = dout * silu_g                                                          # [T, F]
    dgate = 1.0 - sig                                                            # σ' / σ
    dgate *= silu_g
    dgate += sig                                                                 # silu'(g) = σ + silu·(1 - σ)
    dgate *= up
    dgate *= dout                                                                # [T, F]
    return dgate.astype(gate.dtype, copy=False), dup.astype(gate.dtype, copy=False)


# ---------------------------------------------------------------------- cross-entropy
IGNORE_INDEX = -100  # the label of positions that do not count (Hugging Face convention)


def causal_lm_targets(labels):
    """The target of position t is the label of position t + 1: a causal LM predicts the
    next token. The last position has no next token and is ignored (as in transformers'
    ForCausalLMLoss, which pads the labels with IGNORE_INDEX and shifts them left)."""
    # labels: [..., T] -> targets: [..., T]
    targets = np.full_like(labels, IGNORE_INDEX)
    targets[..., :-1] = labels[..., 1:]
    return targets


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
