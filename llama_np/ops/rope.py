"""Rotary position embedding (RoPE), forward and backward."""
import numpy as np


def rope_inverse_frequencies(head_dim, theta):
    """The unscaled frequencies θ^(-2i/hd), i < hd/2, in float32 as Hugging Face computes
    them. Returns [hd/2]."""
    exponents = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    return (1.0 / (np.float32(theta) ** exponents)).astype(np.float32)


def rope_cos_sin(positions, head_dim, theta, inv_freq=None, attention_factor=1.0):
    """cos and sin of the rotation angles pos · ω_i, i < hd/2, computed in float32 as Hugging
    Face does: ω_i = θ^(-2i/hd), or the scaled `inv_freq` [hd/2] of `llama.rope_scaling`, and
    both times `attention_factor` (YaRN's; 1 leaves them as they are). Returns two [T, hd/2]."""
    if inv_freq is None:
        inv_freq = rope_inverse_frequencies(head_dim, theta)                   # [hd/2]
    angles = np.asarray(positions, dtype=np.float32)[:, None] * inv_freq[None]  # [T, hd/2]
    if attention_factor == 1.0:
        return np.cos(angles), np.sin(angles)
    factor = np.float32(attention_factor)
    return np.cos(angles) * factor, np.sin(angles) * factor


def rope_forward(x, positions, theta, inv_freq=None, attention_factor=1.0):
    """Rotary position embedding (Su et al. 2021), "rotate-half" layout of Hugging Face:
    the pairs rotated together are (x[i], x[i + hd/2]), by angle pos · θ^(-2i/hd).

        x1' = x1 cos - x2 sin,   x2' = x2 cos + x1 sin

    A rotation by an angle proportional to the position makes q·k depend only on the
    distance between the two tokens. A scaled RoPE (`llama.rope_scaling`) passes its own
    frequencies `inv_freq` [hd/2] and `attention_factor`, which multiplies cos and sin."""
    # x: [T, H, hd], positions: [T]
    half = x.shape[-1] // 2
    cos, sin = rope_cos_sin(positions, x.shape[-1], theta, inv_freq, attention_factor)  # [T, hd/2] each
    cos, sin = cos[:, None, :], sin[:, None, :]              # [T, 1, hd/2]: same for every head
    x1, x2 = x[..., :half], x[..., half:]
    y = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return y, (cos, sin)


def rope_backward(dy, cache):
    """Gradient of rope_forward. A rotation is orthogonal, so its transpose — the rotation
    by the opposite angle — carries the gradient back (an attention factor is already in
    the cached cos and sin, and a scaled rotation's transpose is the same formula):

        dx1 = dy1 cos + dy2 sin,   dx2 = dy2 cos - dy1 sin"""
    cos, sin = cache                                         # [T, 1, hd/2]
    # dy: [T, H, hd]
    half = dy.shape[-1] // 2
    dy1, dy2 = dy[..., :half], dy[..., half:]
    return np.concatenate([dy1 * cos + dy2 * sin, dy2 * cos - dy1 * sin], axis=-1)
