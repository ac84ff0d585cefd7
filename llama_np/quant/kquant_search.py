"""How llama.cpp's K-quants choose a sub-block's scale (and min): three searches that try a
few candidate grids and keep the one with the smallest weighted squared (or absolute) error,
rather than the one plain round-to-nearest would take.

    make_qkx2_quants   w ≈ scale · q - min,  q ∈ 0..nmax      Q2_K, Q4_K, Q5_K
    make_q3_quants     w ≈ scale · q,        q ∈ -nmax..nmax-1 Q3_K (coordinate descent)
    make_qx_quants     w ≈ scale · q,        q ∈ -nmax..nmax-1 Q6_K

Each works on many groups at once: x [..., n] float32, one group of n weights per leading
index. They are the NumPy form of the functions of the same name in llama.cpp's
ggml-quants.c (its reference path, no importance matrix) and are bit-identical to them: every
float32 operation happens in the same order, and every sum adds its terms left to right
(`ordered_sum`) as C's loops do — NumPy's own sum regroups them and rounds differently.
"""
import numpy as np

GROUP_MAX_EPS = np.float32(1e-15)  # ggml-quants.c: below this largest |x| a group is all zero


def nearest_int(v):
    """Round float32 v to the nearest integer, ties to even, as int32: llama.cpp's nearest_int
    (adding 1.5·2²³ and reading the mantissa rounds exactly like this for |v| < 2²²)."""
    with np.errstate(invalid="ignore"):          # masked-out groups may hold inf or nan
        return np.rint(v).astype(np.int32)


def ordered_sum(terms):
    """Σ terms [..., n] → [...] in float32, added left to right (C's `sum += term` loop).
    NumPy's own reductions regroup the terms (pairwise, or blocked over an outer axis)."""
    total = terms[..., 0].copy()                                           # [...]
    for i in range(1, terms.shape[-1]):
        total += terms[..., i]
    return total


def first_largest_magnitude(x):
    """The value of largest |x| over the last axis, with its sign; the first one on a tie."""
    return np.take_along_axis(x, np.abs(x).argmax(axis=-1)[..., None], axis=-1)[..., 0]


def make_qkx2_quants(x, weights, nmax, rmin, rdelta, nstep, use_mad):
    """Asymmetric grid: w ≈ scale · q - min with q ∈ 0..nmax, minimising Σ weight · err
    (err = |·| with use_mad, else squared) over x [..., n] with weights [..., n].

    Start from the grid spanning [min(x, 0), max(x)]; then for each of nstep + 1 slightly
    wider or narrower grids (nmax + rmin + rdelta·k levels from the best min so far to
    max(x)) round every weight, solve the weighted least-squares fit of scale and min to
    those integers, and keep it if its error is lower. Returns q [..., n] uint8, scale [...] and min [...]
    (min ≥ 0: the offset subtracted).
    """
    f32 = np.float32
    low = np.minimum(x.min(axis=-1), f32(0))                               # [...]
    high = x.max(axis=-1)                                                  # [...]
    flat = high == low                                                     # [...] all weights equal (and ≤ 0)
    sum_w = ordered_sum(weights)                                           # [...]
    sum_x = ordered_sum(weights * x)                                       # [...]

    def error_of(scale, offset, q):
        diff = (scale[..., None] * q + offset[..., None]) - x              # [..., n]
        return ordered_sum(weights * (np.abs(diff) if use_mad else diff * diff))

    def rounded(iscale, offset):
        return np.clip(nearest_int(iscale[..., None] * (x - offset[..., None])), 0, nmax).astype(f32)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):   # as C: inf, nan, masked
        iscale = f32(nmax) / (high - low)                                  # [...]
        scale, offset = f32(1) / iscale, low
        q = rounded(iscale, offset)                                        # [..., n]
        best_error = error_of(scale, offset, q)
        for step in range(nstep + 1):
            # as in llama.cpp, each grid spans [offset, max] of the best fit so far
            iscale = (f32(rmin) + f32(rdelta) * f32(step) + f32(nmax)) / (high - offset)
            q_try = rounded(iscale, offset)
            sum_l = ordered_sum(weights * q_try)
            sum_l2 = ordered_sum(weights * q_try * q_try)
            sum_xl = ordered_sum(weights * q_try * x)
            det = sum_w * sum_l2 - sum_l * sum_l                           # [...]
            try_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            try_offset = (sum_l2 * sum_x - sum_l * sum_xl) / det
            positive = try_offset > 0                # an offset above 0 is clamped, the scale refit
            try_scale = np.where(positive, sum_xl / sum_l2, try_scale)
            try_offset = np.where(positive, f32(0), try_offset)
            try_error = error_of(try_scale, try_offset, q_try)
            better = (det > 0) & (try_error < best_error)                  # [...]
            q = np.where(better[..., None], q_try, q)
            best_error = np.where(better, try_error, best_error)
            scale = np.where(better, try_scale, scale)
            offset = np.where(better, try_offset, offset)
    q = np.where(flat[..., None], f32(0), q).astype(np.uint8)
    return q, np.where(flat, f32(0), scale), -np.where(flat, low, offset)


def make_qx_quants(x, nmax):
    """Symmetric grid for Q6_K: w ≈ scale · q with q ∈ -nmax..nmax-1, weighted by x², over
    x [..., n]. Start from the grid whose end -nmax meets the largest |x| (RTN), then try 18
    grids of nmax ± 0.1·k levels, each with its least-squares scale Σw·x·q / Σw·q², and keep
    the one with the largest (Σw·x·q)² / Σw·q² (the smallest error). Returns q + nmax
    [..., n] uint8 (0 for an all-zero group) and scale [...]."""
    f32 = np.float32
    extreme = first_largest_magnitude(x)                                   # [...]
    zero = np.abs(extreme) < GROUP_MAX_EPS
    weights = x * x                                                        # [..., n]

    def grid(iscale):
        q = np.clip(nearest_int(iscale[..., None] * x), -nmax, nmax - 1).astype(f32)  # [..., n]
        return q, ordered_sum(weights * x * q), ordered_sum(weights * q * q)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):   # as C: inf, nan, masked
        q, sum_lx, sum_l2 = grid(f32(-nmax) / extreme)
        scale = np.where(sum_l2 != 0, sum_lx / sum_l2, f32(0))
        best = scale * sum_lx
        for step in range(-9, 10):
            if step == 0:
                continue
            q_try, try_lx, try_l2 = grid(-(f32(nmax) + f32(0.1) * f32(step)) / extreme)
            better = (try_l2 > 0) & (try_lx * try_lx > best * try_l2)
            q = np.where(better[..., None], q_try, q)
            scale = np.where(better, try_lx / try_l2, scale)
            best = np.where(better, scale * try_lx, best)
    q = np.where(zero[..., None], 0, q + nmax).astype(np.uint8)
    return q, np.where(zero, f32(0), scale)


def make_q3_quants(x, nmax):
    """Symmetric grid for Q3_K: w ≈ scale · q with q ∈ -nmax..nmax-1, weighted by x², over
    x [..., n]. Start from RTN with the largest |x| on -nmax; then up to 5 passes of
    coordinate descent: for each weight in turn, the integer that the least-squares scale
    of all the others would give it, taken if it raises (Σw·x·q)² / Σw·q². Returns q + nmax
    [..., n] uint8 (0 for an all-zero group) and scale [...]."""
    f32 = np.float32
    extreme = first_largest_magnitude(x)                                   # [...]
    zero = np.abs(extreme) < GROUP_MAX_EPS
    weights = x * x                                                        # [..., n]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):   # as C: inf, nan, masked
        q = np.clip(nearest_int((f32(-nmax) / extreme)[..., None] * x), -nmax, nmax - 1).astype(f32)
        sum_lx = ordered_sum(weights * x * q)                              # [...]
        sum_l2 = ordered_sum(weights * q * q)
        for _ in range(5):
            changed = np.zeros(zero.shape, dtype=bool)
            for i in range(x.shape[-1]):     # in order: each change moves the sums the next one sees
                w, xi, qi = weights[..., i], x[..., i], q[..., i]
                others_lx = sum_lx - w * xi * qi
                others_l2 = sum_l2 - w * qi * qi
                new_q = np.clip(nearest_int(xi * others_l2 / others_lx), -nmax, nmax - 1).astype(f32)
                new_lx = others_lx + w * xi * new_q
                new_l2 = others_l2 + w * new_q * new_q
                take = ((others_lx > 0) & (new_q != qi) & (new_l2 > 0)
                        & (new_lx * new_lx * sum_l2 > sum_lx * sum_lx * new_l2))
                q[..., i] = np.where(take, new_q, qi)
                sum_lx = np.where(take, new_lx, sum_lx)
                sum_l2 = np.where(take, new_l2, sum_l2)
                changed |= take
            if not changed.any():            # a pass that changes nothing would repeat itself
                break
        scale = np.where(sum_l2 > 0, sum_lx / sum_l2, f32(0))
    q = np.where(zero[..., None], 0, q + nmax).astype(np.uint8)
    return q, np.where(zero, f32(0), scale)
