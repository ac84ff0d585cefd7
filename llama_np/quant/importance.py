"""Importance-weighted rounding (the idea of llama.cpp's importance matrix, "imatrix"): choose
each block's scale to keep the weights that meet large inputs most exact.

RTN sets a block's scale from its largest weight alone. The output error of a row w on an
input x is Σ_j x_j (w_j − ŵ_j); over calibration inputs its expected square is, ignoring the
correlations between inputs that GPTQ (`quant.gptq`) uses,

    Σ_j  E[x_j²] · (w_j − ŵ_j)²          importance_j = E[x_j²] = H_jj / N

so an input column that is large on average (and LLaMA's activations have a few very large
ones) makes its weight matter more. For every 32-weight block this module tries a range of
scales around RTN's — d = extreme / (−zero + t) for t in CANDIDATES, for the symmetric
formats; the span (max − min) · (1 + t / levels) with m = min, for the ones with a minimum —
rounds the block on each grid, refits the scale (and minimum) by weighted least squares for
the integers it got, and keeps the one with the least weighted error. The blocks are the
format's ordinary bytes. Nothing moves between columns, so unlike GPTQ it cannot overfit the
calibration text's correlations; it only needs the diagonal of H.
"""
import numpy as np

from llama_np.quant.gptq import GRIDS, check_gptq_type, encode_blocks, grid_integers, grid_levels
from llama_np.quant.formats import QK, check_cols

CANDIDATES = np.linspace(-1.0, 1.0, 21)    # offsets of the grid's end, in steps of a level


def importance_quantize(w, importance, qtype):
    """w [rows, cols] float32 to `qtype` with importance [cols] ≥ 0 (E[x²] of each input).
    Returns (uint8 [rows, row_bytes] blocks, the float32 weights they decode to)."""
    check_gptq_type(qtype)
    kind, bits = GRIDS[qtype]
    w = np.asarray(w, dtype=np.float32)
    rows, cols = w.shape
    check_cols(cols, qtype)
    x = w.reshape(rows, cols // QK, QK).astype(np.float64)                       # [rows, n_blocks, 32]
    imp = np.broadcast_to(np.asarray(importance, np.float64).reshape(cols // QK, QK), x.shape)
    imp = imp + 1e-12 * imp.mean(axis=-1, keepdims=True) + 1e-30                 # no all-zero weights
    best_err = np.full(x.shape[:2], np.inf)
    best = None
    for t in CANDIDATES:
        q, d, m, zero = _round(x, kind, bits, t)
        d, m = _refit(x, imp, q - zero, d, m, kind)
        d, m = _as_stored(d), _as_stored(m)
        q = _requantize(x, d, m, zero, kind, bits)
        err = np.sum(imp * np.square(x - ((q - zero) * d[..., None] + m[..., None])), axis=-1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best = (q, d, m) if best is None else tuple(np.where(better[..., None] if a.ndim == 3 else better, a, b)
                                                   for a, b in zip((q, d, m), best))
    q, d, m = best
    zero = 0 if kind != "extreme" else 2 ** (bits - 1)
    w_hat = ((q - zero) * d[..., None] + m[..., None]).astype(np.float32).reshape(rows, cols)
    return encode_blocks(qtype, q.reshape(rows, cols).astype(np.int32), d.astype(np.float32),
                         m.astype(np.float32)), w_hat


def _round(x, kind, bits, t):
    """The grid of offset t and the integers on it: (q, d, m, zero)."""
    levels = 2 ** bits - 1
    if kind == "min":
        low, high = x.min(axis=-1), x.max(axis=-1)
        d = (high - low) * (1.0 + t / levels) / levels
        return _requantize(x, d, low, 0, kind, bits), d, low, 0
    if kind == "absmax":
        d = np.abs(x).max(axis=-1) / (127.0 + t)
        return _requantize(x, d, np.zeros_like(d), 0, kind, bits), d, np.zeros_like(d), 0
    zero = 2 ** (bits - 1)
    extreme = np.take_along_axis(x, np.abs(x).argmax(axis=-1)[..., None], axis=-1)[..., 0]
    d = extreme / (-zero + t)
    return _requantize(x, d, np.zeros_like(d), zero, kind, bits), d, np.zeros_like(d), zero


def _requantize(x, d, m, zero, kind, bits):
    lowest, highest, _ = grid_levels(kind, bits)
    return grid_integers(x, d[..., None], m[..., None], lowest, highest, zero)


def _refit(x, imp, k, d, m, kind):
    """Weighted least squares for the block's scale (and minimum) given integers k = q − zero."""
    if kind != "min":
        den = np.sum(imp * k * k, axis=-1)
        fit = np.sum(imp * k * x, axis=-1) / np.where(den == 0, 1.0, den)
        return np.where(den == 0, d, fit), m
    s_w, s_k, s_kk = imp.sum(-1), (imp * k).sum(-1), (imp * k * k).sum(-1)
    s_x, s_kx = (imp * x).sum(-1), (imp * k * x).sum(-1)
    det = s_w * s_kk - s_k * s_k
    ok = np.abs(det) > 1e-30 * np.maximum(s_w * s_kk, 1e-300)
    safe = np.where(ok, det, 1.0)
    return np.where(ok, (s_w * s_kx - s_k * s_x) / safe, d), np.where(ok, (s_kk * s_x - s_k * s_kx) / safe, m)


def _as_stored(v):
    """A scale or minimum as the block stores it (fp16), back in float64."""
    return v.astype(np.float16).astype(np.float64)
