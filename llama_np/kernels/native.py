"""The Python face of the C kernels in `kernels/` (built by cffi as `llama_np.kernels._c`).

Each wrapper checks dtypes, contiguity and shapes first, so that the C code can never be
reached with arguments that would make it read or write out of bounds, then calls C.
Each kernel has a NumPy reference in `llama_np.ops.ops` / `llama_np.quant.quant` with the same name
and a test that the two agree. Where the extension was not built, `AVAILABLE` is False and
callers use the NumPy reference instead.
"""
import os

import numpy as np

from llama_np.quant.quant import BLOCK_BYTES, QK

# How idle OpenMP threads wait, read once when the C library (libgomp) loads. A waiting
# thread first spins, GOMP_SPINCOUNT times, then sleeps until woken. Decoding meets ~150
# times a token (per block: a team start and 4 barriers), so the choice matters; measured
# with 2 threads on a 2-core Zen 3 (µs per block, quiet / both cores busy with other work):
#   sleep at once (OMP_WAIT_POLICY=PASSIVE)    328 / 1055
#   spin 1,000 then sleep (the setting here)   270 /  656
#   spin forever (OMP_WAIT_POLICY=ACTIVE)      256 / collapses: a spinning thread keeps its
#                                              core from the very thread it waits for
# Either variable set by the user wins.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

try:
    from llama_np.kernels._c import ffi, lib
    AVAILABLE = True
except ImportError:  # the C extension was not built: NumPy references are used
    ffi = lib = None
    AVAILABLE = False

_num_threads = os.cpu_count() or 1


def set_num_threads(n):
    """Threads the C kernels use (OpenMP); default: all cores."""
    global _num_threads
    if int(n) < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    _num_threads = int(n)


def get_num_threads():
    return _num_threads


def _require(arr, name, dtype, ndim=None):
    """Check one array argument: NumPy array, exact dtype, C-contiguous, and its rank."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array, got {type(arr).__name__}")
    if arr.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {np.dtype(dtype)}, got {arr.dtype}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name}: array must be C-contiguous")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {arr.shape}")


def _ptr(arr, ctype):
    return ffi.cast(ctype, ffi.from_buffer(arr, require_writable=False))


def _out_ptr(arr, ctype):
    if not arr.flags.writeable:
        raise ValueError("output array is read-only")
    return ffi.cast(ctype, ffi.from_buffer(arr, require_writable=True))


def rmsnorm(x, weight, eps):
    """C RMSNorm of every row of x: [T, D] float32, weight [D] → [T, D]."""
    _require(x, "x", np.float32, 2)
    _require(weight, "weight", np.float32, 1)
    n_rows, dim = x.shape
    if weight.shape[0] != dim:
        raise ValueError(f"weight has {weight.shape[0]} entries, x rows have {dim}")
    out = np.empty_like(x)
    lib.rmsnorm_f32(_out_ptr(out, "float *"), _ptr(x, "float *"), _ptr(weight, "float *"),
                    n_rows, dim, float(eps))
    return out


def rope_(x, positions, theta):
    """C rotate-half RoPE, in place: x [T, H, head_dim] float32, positions [T] int64."""
    _require(x, "x", np.float32, 3)
    _require(positions, "positions", np.int64, 1)
    n_tokens, n_heads, head_dim = x.shape
    if positions.shape[0] != n_tokens:
        raise ValueError(f"{positions.shape[0]} positions for {n_tokens} tokens")
    if head_dim % 2:
        raise ValueError(f"head_dim must be even, got {head_dim}")
    lib.rope_f32(_out_ptr(x, "float *"), _ptr(positions, "int64_t *"),
                 n_tokens, n_heads, head_dim, float(theta))
    return x


# The kernels' numbers for the weight formats: quant_type's order
# (kernels/internal/quant_rows.h), then F32, which only decode_layer.c takes.
FORMATS = {"Q4_0": 0, "Q4_1": 1, "Q8_0": 2, "F32": 3}


def quant_matmul(data, qtype, x, int8_activations=False):
    """C x @ W.T with W quantized: data uint8 [out, row_bytes] holding `qtype` blocks
    (read-only memory maps are fine), x float32 [T, in] → [T, out] float32.
    NumPy reference: llama_np.quant.quant.quant_matmul, or with int8_activations=True (x rounded
    to 8 bits per block, llama.cpp's arithmetic) llama_np.quant.quant.quant_matmul_int8.

    Decoding calls this about 200 times per token, so the buffers are passed as typed
    cffi views (`ffi.from_buffer("float[]", ...)`), the cheapest way in (≈ 3 µs a call)."""
    if qtype not in BLOCK_BYTES:
        raise ValueError(f"no quantized matmul kernel for {qtype!r}; "
                         f"expected one of {', '.join(BLOCK_BYTES)}")
    _require(data, "data", np.uint8, 2)
    _require(x, "x", np.float32, 2)
    out_features, row_bytes = data.shape
    n_tokens, in_features = x.shape
    if in_features % QK:
        raise ValueError(f"x rows have {in_features} features, not a multiple of {QK}")
    if row_bytes != in_features // QK * BLOCK_BYTES[qtype]:
        raise ValueError(f"{qtype} rows of {row_bytes} bytes do not hold {in_features} weights "
                         f"({in_features // QK * BLOCK_BYTES[qtype]} bytes)")
    w_buffer = ffi.from_buffer("uint8_t[]", data)
    if int(ffi.cast("uintptr_t", w_buffer)) % 2:
        raise ValueError("quantized data must start at an even address (its fp16 scales)")
    out = np.empty((n_tokens, out_features), dtype=np.float32)            # [T, out]
    if lib.quant_matmul_f32(FORMATS[qtype], ffi.from_buffer("float[]", out, require_writable=True),
                            w_buffer, ffi.from_buffer("float[]", x), n_tokens, out_features,
                            in_features, bool(int8_activations), _num_threads) != 0:
        raise MemoryError(f"no scratch memory for {n_tokens} x {in_features} activations")
    return out


def attention_forward(q, k, v):
    """C causal grouped-query attention: q [T, H, hd], k and v [S, H_kv, hd] (S ≥ T, the
    queries being the last T positions), all float32 → [T, H*hd].
    NumPy reference: llama_np.ops.ops.attention_forward (which also returns a backward cache)."""
    _require(q, "q", np.float32, 3)
    _require(k, "k", np.float32, 3)
    _require(v, "v", np.float32, 3)
    n_tokens, n_heads, head_dim = q.shape
    n_keys, n_kv_heads, _ = k.shape
    if k.shape != v.shape:
        raise ValueError(f"k {k.shape} and v {v.shape} differ")
    if k.shape[2] != head_dim:
        raise ValueError(f"q heads have {head_dim} dims, k heads {k.shape[2]}")
    if n_kv_heads == 0 or n_heads % n_kv_heads:
        raise ValueError(f"{n_heads} query heads cannot share {n_kv_heads} key/value heads")
    if n_keys < n_tokens:
        raise ValueError(f"{n_tokens} queries need at least as many keys, got {n_keys}")
    out = np.empty((n_tokens, n_heads * head_dim), dtype=np.float32)        # [T, H*hd]
    scores = np.empty((_num_threads, max(n_keys, 1)), dtype=np.float32)    # scratch per thread
    lib.attention_forward_f32(ffi.from_buffer("float[]", out, require_writable=True),
                              ffi.from_buffer("float[]", q), ffi.from_buffer("float[]", k),
                              ffi.from_buffer("float[]", v),
                              ffi.from_buffer("float[]", scores, require_writable=True),
                              n_tokens, n_heads, n_kv_heads, n_keys, head_dim, _num_threads)
    return out


_DECODE_MATRICES = ("q", "k", "v", "o", "gate", "up", "down")


class DecodeLayer:
    """One transformer block for `decode_layer_f32`: the whole block for one new token in a
    single C call (kernels/decode_layer.c; the NumPy reference is `Llama.block`).

    The weights are checked once, here, and kept as C pointers (with the arrays they point
    into, so that those stay alive); each call then checks only the per-token arguments.
    `layer` maps the keys of `llama_np.llama.model.layer_weight_names` to weights, each a
    QuantizedMatrix or a float32 [out, in] array. Raises TypeError or ValueError for weights
    the kernel cannot take (the model then uses its op-by-op path)."""

    def __init__(self, layer, config):
        from llama_np.quant.quant import QuantizedMatrix

        hd, n_q, n_kv = config.head_dim, config.num_attention_heads, config.num_key_value_heads
        dim, hidden = config.hidden_size, config.intermediate_size   # LlamaConfig checked n_q % n_kv
        expected = {"q": (n_q * hd, dim), "k": (n_kv * hd, dim), "v": (n_kv * hd, dim), "o": (dim, n_q * hd),
                    "gate": (hidden, dim), "up": (hidden, dim), "down": (dim, hidden)}
        self._keep = []                                     # every buffer a pointer points into
        self.weights = ffi.new("block_weights *")
        int8 = set()
        for key in _DECODE_MATRICES:
            w = layer[key]
            if isinstance(w, QuantizedMatrix):
                data, fmt = w.data, w.qtype
                int8.add(w.int8_activations)
            elif isinstance(w, np.ndarray):
                _require(w, key, np.float32, 2)
                data, fmt = w, "F32"
            else:
                raise TypeError(f"{key}: the fused decode kernel takes quantized or float32 weights, "
                                f"not {type(w).__name__}")
            if tuple(w.shape) != expected[key]:
                raise ValueError(f"{key}: shape {tuple(w.shape)}, expected {expected[key]}")
            if w.shape[1] % QK:
                raise ValueError(f"{key}: rows of {w.shape[1]} weights, not a multiple of {QK}")
            buffer = ffi.from_buffer("uint8_t[]", data)
            alignment = 4 if fmt == "F32" else 2                 # floats; fp16 scales
            if int(ffi.cast("uintptr_t", buffer)) % alignment:
                raise ValueError(f"{key}: weights must start at a {alignment}-byte aligned address")
            self._keep.append(buffer)
            matrix = getattr(self.weights, key)
            matrix.data, matrix.format, matrix.rows, matrix.cols = buffer, FORMATS[fmt], *w.shape
        if len(int8) > 1:
            raise ValueError("some matrices use int8 activations and some do not")
        for key in ("attn_norm", "mlp_norm"):
            _require(layer[key], key, np.float32, 1)
            if layer[key].shape != (dim,):
                raise ValueError(f"{key}: shape {layer[key].shape}, expected ({dim},)")
            buffer = ffi.from_buffer("float[]", layer[key])
            self._keep.append(buffer)
            setattr(self.weights, key, buffer)
        self.shape = ffi.new("block_shape *", {
            "dim": dim, "n_heads": n_q, "n_kv_heads": n_kv, "head_dim": hd, "hidden_dim": hidden,
            "norm_eps": config.rms_norm_eps, "rope_theta": config.rope_theta,
            "int8_activations": int(int8 == {True})})
        self.cache_row = (n_kv, hd)

    def __call__(self, h, k_cache, v_cache, position):
        """h [1, D] float32, updated in place; k_cache and v_cache [max_len, H_kv, hd] float32,
        this layer's cache, whose row `position` is written and rows 0 … position read."""
        _require(h, "h", np.float32, 2)
        _require(k_cache, "k_cache", np.float32, 3)
        _require(v_cache, "v_cache", np.float32, 3)
        if h.shape != (1, self.shape.dim):
            raise ValueError(f"h: shape {h.shape}, expected (1, {self.shape.dim})")
        if k_cache.shape != v_cache.shape or k_cache.shape[1:] != self.cache_row:
            raise ValueError(f"cache shapes {k_cache.shape} and {v_cache.shape}, expected "
                             f"[max_len, {self.cache_row[0]}, {self.cache_row[1]}] each")
        if not 0 <= position < k_cache.shape[0]:
            raise ValueError(f"position {position} outside the cache of {k_cache.shape[0]} rows")
        status = lib.decode_layer_f32(ffi.from_buffer("float[]", h, require_writable=True), self.weights,
                                      self.shape, ffi.from_buffer("float[]", k_cache, require_writable=True),
                                      ffi.from_buffer("float[]", v_cache, require_writable=True),
                                      int(position), _num_threads)
        if status != 0:
            raise MemoryError("no scratch memory for the decode step")
