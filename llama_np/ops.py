"""The operations a LLaMA is made of, as pure NumPy functions (the reference implementation).

Each `*_forward` returns its output and a `cache`: exactly what the matching `*_backward`
needs to compute gradients. Inference ignores the cache; training keeps it. The C kernels in
`llama_np.kernels` are checked against these functions.

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


# -------------------------------------------------------------------------- embedding
def embedding_forward(ids, table):
    """Row lookup: h[t] = table[ids[t]]. `table` [V, D] may be quantized (rows dequantized
    one by one)."""
    # ids: [T] -> h: [T, D]
    h = table[ids] if isinstance(table, np.ndarray) else table.rows(ids)
    return h.astype(np.float32, copy=False), (ids, table.shape)


# ---------------------------------------------------------------------------- RMSNorm
def rmsnorm_forward(x, weight, eps):
    """RMSNorm (Zhang & Sennrich 2019): y = x / sqrt(mean(x²) + eps) * weight.

    Unlike LayerNorm there is no mean subtraction and no bias."""
    # x: [T, D], weight: [D]
    inv_rms = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)  # [T, 1]
    x_hat = x * inv_rms                                                      # [T, D]
    return (x_hat * weight).astype(x.dtype, copy=False), (x_hat, inv_rms, weight)


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
    scores = (qg @ kg[:, None]) * np.float32(1.0 / np.sqrt(head_dim))           # [H_kv, rep, T, S]
    query_pos = np.arange(n_keys - n_tokens, n_keys)[:, None]                    # [T, 1]
    future = np.arange(n_keys)[None, :] > query_pos                              # [T, S]
    scores = np.where(future, np.float32(-np.inf), scores)
    probs = softmax(scores).astype(np.float32)                                  # [H_kv, rep, T, S]
    out = probs @ vg[:, None]                                                    # [H_kv, rep, T, hd]
    out = out.transpose(2, 0, 1, 3).reshape(n_tokens, n_heads * head_dim)       # [T, H*hd]
    return out, (qg, kg, vg, probs)


# ----------------------------------------------------------------------------- SwiGLU
def silu(x):
    """SiLU (swish): x · σ(x)."""
    return x / (1.0 + np.exp(-x))


def swiglu_forward(gate, up):
    """SwiGLU (Shazeer 2020): silu(gate) ⊙ up, the gated hidden layer of LLaMA's MLP."""
    # gate, up: [T, F]
    return (silu(gate) * up).astype(gate.dtype, copy=False), (gate, up)


# ---------------------------------------------------------------------- cross-entropy
IGNORE_INDEX = -100  # the label of positions that do not count (Hugging Face convention)


def cross_entropy_forward(logits, targets):
    """Mean negative log-likelihood of `targets` under softmax(logits), over the positions
    whose target is not IGNORE_INDEX. Returns (loss, cache)."""
    # logits: [N, V], targets: [N]
    keep = targets != IGNORE_INDEX                                   # [N]
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=-1, keepdims=True))      # [N, 1]
    log_probs = shifted - log_z                                      # [N, V]
    n_kept = max(int(keep.sum()), 1)
    picked = log_probs[np.arange(len(targets)), np.where(keep, targets, 0)]
    loss = -np.sum(np.where(keep, picked, 0.0)) / n_kept
    return float(loss), (log_probs, targets, keep, n_kept)
