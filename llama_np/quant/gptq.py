"""GPTQ (Frantar et al. 2022): quantize a weight matrix so that its *outputs* on real inputs
change least, not its weights — into the ordinary blocks of Q4_0, Q4_1, Q5_0, Q5_1 or Q8_0.

Round-to-nearest (`quant.rtn`) rounds every weight on its own. But what the model sees is
y = x Wᵀ, and over calibration inputs X [N, in] the damage of a quantized Ŵ is

    ‖X Wᵀ − X Ŵᵀ‖²  =  Σ_rows (w − ŵ) H (w − ŵ)ᵀ,      H = Xᵀ X   [in, in]

Inputs are correlated (H is far from diagonal), so the error of one rounded weight can be
partly cancelled by moving the weights of the same row that are still to be rounded. GPTQ
rounds the columns in order, and after rounding column j spreads its error over the columns
after it, with the weights that minimise the output error given H (the optimal brain
surgeon update):

    e = (w_j − ŵ_j) / U_jj          w_{j+1:} −= e · U_{j, j+1:}

where U is the upper Cholesky factor of H⁻¹ (H⁻¹ = Uᵀ U), computed once. Rows are
independent and share H, so every row is done at once, one column at a time; the updates of
a run of BLOCK_COLUMNS columns are kept in the run and applied to the rest of the matrix in
one product afterwards (GPTQ's "lazy batch", the same numbers with fewer passes over W).

Block formats need one scale (and, for Q4_1 / Q5_1, one minimum) per 32 consecutive weights
of a row. Each 32-column group's scale is set, by the format's own RTN rule, from the group's
weights as they stand when GPTQ reaches its first column (already moved by the errors of the
columns before); its columns are then rounded on that grid. The result is stored in the
format's usual bytes, so llama.cpp reads the file unchanged.

`damp` adds damp × mean(diag H) to the diagonal: H from a few thousand tokens is often
singular (and some inputs are never non-zero), and the damping keeps U well defined.
"""
import numpy as np

from llama_np.quant.formats import BLOCK_DTYPES, QK, check_cols, pack_nibbles
from llama_np.quant.rtn import pack_fifth_bits

BLOCK_COLUMNS = 128     # columns whose updates stay inside the run (a multiple of QK)
DAMP = 0.01             # the paper's default dampening, a fraction of the mean diagonal

# The formats GPTQ writes, by how one 32-weight group's grid is set (as their RTN rules):
#   "extreme": symmetric, d = (the weight of largest |w|, with its sign) / -zero,
#              w ≈ (q - zero) d, q ∈ 0 … 2^bits - 1
#   "absmax":  symmetric, d = max|w| / 127, w ≈ q d, q ∈ -127 … 127
#   "min":     asymmetric, m = min w, d = (max w - min w) / (2^bits - 1), w ≈ q d + m
GRIDS = {"Q4_0": ("extreme", 4), "Q5_0": ("extreme", 5), "Q8_0": ("absmax", 8),
         "Q4_1": ("min", 4), "Q5_1": ("min", 5)}


def check_gptq_type(qtype):
    if qtype not in GRIDS:
        raise ValueError(f"calibrated quantization (GPTQ) writes {', '.join(GRIDS)}, not {qtype}")


def inverse_cholesky(hessian, damp=DAMP):
    """U, upper triangular with H⁻¹ = Uᵀ U, of the damped H (float64 [in, in]), and the mask
    of the columns that never saw an input (H_jj = 0: their weights cannot matter)."""
    h = np.array(hessian, dtype=np.float64)                                   # [in, in]
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h[np.diag_indices_from(h)] += damp * np.mean(np.diag(h))
    return np.linalg.cholesky(np.linalg.inv(h)).T, dead                      # H⁻¹ = L Lᵀ = Uᵀ U


def grid_levels(kind, bits):
    """(lowest q, highest q, zero) of a grid kind: ŵ = (q - zero) d + m."""
    if kind == "absmax":
        return -127, 127, 0
    return 0, 2 ** bits - 1, 2 ** (bits - 1) if kind == "extreme" else 0


def group_grid(w, kind, bits):
    """The grid of 32-weight groups w [rows, 32] by the format's RTN rule: (d, m, lowest q,
    highest q, zero), d and m rounded to fp16 as the file stores them; ŵ = (q - zero) d + m."""
    lowest, highest, zero = grid_levels(kind, bits)
    if kind == "min":
        low, high = w.min(axis=1), w.max(axis=1)
        d = ((high - low) / np.float32(highest)).astype(np.float16).astype(np.float32)
        return d, low.astype(np.float16).astype(np.float32), lowest, highest, zero
    if kind == "absmax":
        d = (np.abs(w).max(axis=1) / np.float32(127)).astype(np.float16).astype(np.float32)
        return d, np.zeros_like(d), lowest, highest, zero
    extreme = np.take_along_axis(w, np.abs(w).argmax(axis=1)[:, None], axis=1)[:, 0]
    d = (extreme / np.float32(-zero)).astype(np.float16).astype(np.float32)
    return d, np.zeros_like(d), lowest, highest, zero


def grid_integers(values, d, m, lowest, highest, zero):
    """The integers q of `values` on the grid ŵ = (q - zero) d + m (d, m broadcast against
    them): the nearest level, clipped to lowest … highest; where d = 0 every weight is m."""
    safe = np.where(d == 0, np.float32(1), d)
    q = np.clip(np.floor((values - m) / safe + np.float32(0.5)) + zero, lowest, highest)
    return np.where(d == 0, zero, q)


def round_to_grid(column, grid):
    """One column [rows] on its groups' grids → (q [rows] int, ŵ [rows] float32)."""
    d, m, lowest, highest, zero = grid
    q = grid_integers(column, d, m, lowest, highest, zero)
    return q.astype(np.int32), ((q - zero) * d + m).astype(np.float32)


def gptq_quantize(w, hessian, qtype, damp=DAMP):
    """w [rows, cols] float32 quantized to `qtype` against H = Xᵀ X [cols, cols] of its
    inputs. Returns (uint8 [rows, row_bytes] blocks, the float32 weights they decode to)."""
    check_gptq_type(qtype)
    kind, bits = GRIDS[qtype]
    w = np.array(w, dtype=np.float64)                                         # [rows, cols], updated
    rows, cols = w.shape
    check_cols(cols, qtype)
    if hessian.shape != (cols, cols):
        raise ValueError(f"a Hessian of shape {hessian.shape} for weights of {cols} columns")
    u, dead = inverse_cholesky(hessian, damp)                                 # [cols, cols]
    w[:, dead] = 0.0
    q = np.empty((rows, cols), dtype=np.int32)
    scales = np.empty((rows, cols // QK), dtype=np.float32)
    mins = np.empty((rows, cols // QK), dtype=np.float32)
    rounded = np.empty((rows, cols), dtype=np.float32)
    for start in range(0, cols, BLOCK_COLUMNS):
        stop = min(start + BLOCK_COLUMNS, cols)
        run = w[:, start:stop].copy()                                        # [rows, run]
        errors = np.empty_like(run)
        for j in range(stop - start):
            col = start + j
            if col % QK == 0:                        # a new group: its grid from where it stands
                grid = group_grid(run[:, j:j + QK].astype(np.float32), kind, bits)
                scales[:, col // QK], mins[:, col // QK] = grid[0], grid[1]
            q[:, col], rounded[:, col] = round_to_grid(run[:, j].astype(np.float32), grid)
            errors[:, j] = (run[:, j] - rounded[:, col]) / u[col, col]
            run[:, j + 1:] -= np.outer(errors[:, j], u[col, col + 1:stop])
        w[:, stop:] -= errors @ u[start:stop, stop:]                         # the run's updates, at once
    return encode_blocks(qtype, q, scales, mins), rounded


def encode_blocks(qtype, q, scales, mins):
    """Integers q [rows, cols] and each group's d, m [rows, cols / 32] as `qtype`'s bytes."""
    rows, cols = q.shape
    blocks = np.empty((rows, cols // QK), dtype=BLOCK_DTYPES[qtype])
    q = q.reshape(rows, cols // QK, QK)
    blocks["d"] = scales
    if qtype == "Q8_0":
        blocks["qs"] = q.astype(np.int8)
        return blocks.view(np.uint8)
    q = q.astype(np.uint8)
    if "m" in BLOCK_DTYPES[qtype].names:
        blocks["m"] = mins
    if "qh" in BLOCK_DTYPES[qtype].names:
        blocks["qh"] = pack_fifth_bits(q)
    blocks["qs"] = pack_nibbles(q & np.uint8(0x0F))
    return blocks.view(np.uint8)
