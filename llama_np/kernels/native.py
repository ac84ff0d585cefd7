"""The Python face of the C kernels in `kernels/` (built by cffi as `llama_np.kernels._c`).

Each wrapper checks dtypes, contiguity and shapes first, so that the C code can never be
reached with arguments that would make it read or write out of bounds, then calls C.
Each kernel has a NumPy reference in `llama_np.ops` / `llama_np.quant` with the same name
and a test that the two agree. Where the extension was not built, `AVAILABLE` is False and
callers use the NumPy reference instead.
"""
import os

import numpy as np

from llama_np import quant
from llama_np.quant import kv_rows

# How idle OpenMP threads wait, read once when the C library (libgomp) loads. A waiting
# thread first spins, GOMP_SPINCOUNT times, then sleeps until woken. Decoding meets ~150
# times a token (per block: a team start and 4 barriers), so the choice matters. Sleeping
# at once (OMP_WAIT_POLICY=PASSIVE) pays a wake-up at every one of them; spinning forever
# (ACTIVE) collapses when the cores are busy with other work, because a spinning thread
# keeps its core from the very thread it waits for. A short spin, then sleep, is close to
# the fastest when quiet and the best when busy (docs/benchmarks.md#decode-kernels).
# Either variable set by the user wins.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

try:
    from llama_np.kernels._c import ffi, lib
    AVAILABLE = True
except ImportError:  # the C extension was not built: NumPy references are used
    ffi = lib = None
    AVAILABLE = False

# Large freed blocks stay with the allocator for reuse instead of going back to the OS, so a
# forward pass stops paying page faults for the temporaries of every block (kernels/memory.c;
# docs/benchmarks.md#loading-and-start-up). Either of glibc's variables set by the user wins.
if AVAILABLE and not {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} & set(os.environ):
    lib.keep_freed_memory()

_num_threads = os.cpu_count() or 1
# More threads than this only take turns on the cores; far more (10⁵) and OpenMP cannot start
# its team, and the kernels crash. The tools' --threads has the same bound (cli.max_threads).
MAX_THREADS_PER_CORE = 8


def max_threads():
    return MAX_THREADS_PER_CORE * (os.cpu_count() or 1)


def set_num_threads(n):
    """Threads the C kernels use (OpenMP); default: all cores; at most max_threads()."""
    global _num_threads
    if isinstance(n, bool) or int(n) != n or not 1 <= n <= max_threads():
        raise ValueError(f"threads must be an integer from 1 to {max_threads()} "
                         f"({MAX_THREADS_PER_CORE} per core), got {n!r}")
    _num_threads = int(n)


def get_num_threads():
    return _num_threads


def require_array(arr, name, dtype, ndim=None):
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
    require_array(x, "x", np.float32, 2)
    require_array(weight, "weight", np.float32, 1)
    n_rows, dim = x.shape
    if weight.shape[0] != dim:
        raise ValueError(f"weight has {weight.shape[0]} entries, x rows have {dim}")
    out = np.empty_like(x)
    lib.rmsnorm_f32(_out_ptr(out, "float *"), _ptr(x, "float *"), _ptr(weight, "float *"),
                    n_rows, dim, float(eps))
    return out


def swiglu(gate, up):
    """C SwiGLU: silu(gate) ⊙ up for gate, up [T, F] float32 → [T, F]."""
    require_array(gate, "gate", np.float32, 2)
    require_array(up, "up", np.float32, 2)
    if gate.shape != up.shape:
        raise ValueError(f"gate {gate.shape} and up {up.shape} differ in shape")
    out = np.empty_like(gate)
    lib.swiglu_f32(_out_ptr(out, "float *"), _ptr(gate, "float *"), _ptr(up, "float *"), *gate.shape)
    return out


def rope_(x, positions, theta, inv_freq=None, attention_factor=1.0):
    """C rotate-half RoPE, in place: x [T, H, head_dim] float32, positions [T] int64; a scaled
    RoPE's frequencies inv_freq [head_dim / 2] float32 (None: θ^(-2i/hd)) and attention factor."""
    require_array(x, "x", np.float32, 3)
    require_array(positions, "positions", np.int64, 1)
    n_tokens, n_heads, head_dim = x.shape
    if positions.shape[0] != n_tokens:
        raise ValueError(f"{positions.shape[0]} positions for {n_tokens} tokens")
    if head_dim % 2:
        raise ValueError(f"head_dim must be even, got {head_dim}")
    table = ffi.NULL
    if inv_freq is not None:
        require_array(inv_freq, "inv_freq", np.float32, 1)
        if inv_freq.shape[0] != head_dim // 2:
            raise ValueError(f"inv_freq has {inv_freq.shape[0]} entries, expected head_dim / 2 = {head_dim // 2}")
        table = _ptr(inv_freq, "float *")
    lib.rope_f32(_out_ptr(x, "float *"), _ptr(positions, "int64_t *"),
                 n_tokens, n_heads, head_dim, float(theta), table, float(attention_factor))
    return x


# The kernels' numbers for the weight formats (kernels/internal/formats.h), from the one
# table of formats; F32 only decode_layer.c takes.
FORMATS = {name: fmt.kernel_format for name, fmt in quant.FORMATS.items() if fmt.kernel_format is not None}
# The block formats the quantized products take: every kernel format but the plain floats.
BLOCK_FORMATS = {name: quant.FORMATS[name] for name in FORMATS if quant.FORMATS[name].block_weights > 1}


def check_blocks(data, qtype, in_features, kernel="quantized matmul kernel"):
    """Check quantized rows data uint8 [out, row_bytes] of `qtype` against rows of
    in_features weights, and return the cffi buffer of data."""
    if qtype not in BLOCK_FORMATS:
        raise ValueError(f"no {kernel} for {qtype!r}; expected one of {', '.join(BLOCK_FORMATS)}")
    fmt = BLOCK_FORMATS[qtype]
    require_array(data, "data", np.uint8, 2)
    if in_features % fmt.block_weights:
        raise ValueError(f"x rows have {in_features} features, not a multiple of {qtype}'s "
                         f"{fmt.block_weights}-weight blocks")
    expected = in_features // fmt.block_weights * fmt.block_bytes
    if data.shape[1] != expected:
        raise ValueError(f"{qtype} rows of {data.shape[1]} bytes do not hold {in_features} weights "
                         f"({expected} bytes)")
    buffer = ffi.from_buffer("uint8_t[]", data)
    if int(ffi.cast("uintptr_t", buffer)) % 2:
        raise ValueError("quantized data must start at an even address (its fp16 scales)")
    return buffer


def dequantize(data, qtype, threads=None):
    """C expansion of quantized rows data uint8 [rows, row_bytes] of a block format
    (`BLOCK_FORMATS`) to float32 [rows, cols], over `threads` threads (default: the kernels'
    count). NumPy reference: llama_np.quant.dequantize, equal bit for bit."""
    if qtype not in BLOCK_FORMATS:
        raise ValueError(f"no dequantize kernel for {qtype!r}; expected one of {', '.join(BLOCK_FORMATS)}")
    fmt = BLOCK_FORMATS[qtype]
    require_array(data, "data", np.uint8, 2)
    if data.shape[1] % fmt.block_bytes:
        raise ValueError(f"{qtype} rows of {data.shape[1]} bytes are not whole {fmt.block_bytes}-byte blocks")
    cols = data.shape[1] // fmt.block_bytes * fmt.block_weights
    buffer = check_blocks(data, qtype, cols, kernel="dequantize kernel")
    out = np.empty((data.shape[0], cols), dtype=np.float32)
    lib.dequantize_f32(FORMATS[qtype], ffi.from_buffer("float[]", out, require_writable=True), buffer,
                       data.shape[0], cols, _num_threads if threads is None else int(threads))
    return out


def adamw_(param, grad, m, v, decay, beta1, one_minus_beta1, beta2, one_minus_beta2, sqrt_bias2, eps,
           lr_over_bias1):
    """C AdamW update of one float32 parameter in place (param, m, v), given its gradient:
    one pass, over the kernels' threads. The constants are float32 values computed by the
    caller. NumPy reference: llama_np.training.trainer.AdamW (its NumPy form), equal bit for bit."""
    for name, arr in (("param", param), ("grad", grad), ("m", m), ("v", v)):
        require_array(arr, name, np.float32)
        if arr.shape != param.shape:
            raise ValueError(f"{name} has shape {arr.shape}, param {param.shape}")
    lib.adamw_f32(_out_ptr(param, "float *"), _ptr(grad, "float *"), _out_ptr(m, "float *"), _out_ptr(v, "float *"),
                  param.size, *(float(c) for c in (decay, beta1, one_minus_beta1, beta2, one_minus_beta2,
                                                    sqrt_bias2, eps, lr_over_bias1)), _num_threads)


def quant_matmul(data, qtype, x, int8_activations=False):
    """C x @ W.T with W quantized: data uint8 [out, row_bytes] holding `qtype` blocks
    (read-only memory maps are fine), x float32 [T, in] → [T, out] float32.
    NumPy reference: llama_np.quant.quant_matmul, or with int8_activations=True (x rounded
    to 8 bits per block, llama.cpp's arithmetic) llama_np.quant.quant_matmul_int8.

    Decoding calls this about 200 times per token, so the buffers are passed as typed
    cffi views (`ffi.from_buffer("float[]", ...)`), the cheapest way in
    (docs/benchmarks.md#decode-kernels)."""
    require_array(x, "x", np.float32, 2)
    n_tokens, in_features = x.shape
    w_buffer = check_blocks(data, qtype, in_features)
    out_features = data.shape[0]
    out = np.empty((n_tokens, out_features), dtype=np.float32)            # [T, out]
    if lib.quant_matmul_f32(FORMATS[qtype], ffi.from_buffer("float[]", out, require_writable=True),
                            w_buffer, ffi.from_buffer("float[]", x), n_tokens, out_features,
                            in_features, bool(int8_activations), _num_threads) != 0:
        raise MemoryError(f"no scratch memory for {n_tokens} x {in_features} activations")
    return out


def kv_cache_format(k, v, n_kv_heads, head_dim):
    """Check KV cache rows k and v [S, H_kv, width] as a cache stores them (float32, float16
    or uint8 Q8_0 blocks, `quant.kv_rows`) and return the kernels' number of their format."""
    fmt = kv_rows.format_of(k)
    for name, rows in (("k", k), ("v", v)):
        require_array(rows, name, fmt.dtype, 3)
    kv_rows.check_head_dim(fmt, head_dim)
    width = fmt.row_width(head_dim)
    if k.shape != v.shape:
        raise ValueError(f"KV cache shapes k {k.shape} and v {v.shape} differ")
    if k.shape[1:] != (n_kv_heads, width):
        raise ValueError(f"KV cache shapes {k.shape}, expected [S, {n_kv_heads}, {width}] "
                         f"({n_kv_heads} {fmt.name} heads of {head_dim} dims)")
    return fmt.kernel_format


def attention_forward(q, k, v):
    """C causal grouped-query attention: q [T, H, hd] float32, k and v [S, H_kv, width] the
    cache rows as stored (float32, float16 or Q8_0 bytes; S ≥ T, the queries being the last
    T positions) → [T, H*hd] float32.
    NumPy reference: llama_np.ops.attention_forward over the dequantized rows."""
    require_array(q, "q", np.float32, 3)
    n_tokens, n_heads, head_dim = q.shape
    n_keys, n_kv_heads = k.shape[:2]
    if n_kv_heads == 0 or n_heads % n_kv_heads:
        raise ValueError(f"{n_heads} query heads cannot share {n_kv_heads} key/value heads")
    kv_format = kv_cache_format(k, v, n_kv_heads, head_dim)
    if n_keys < n_tokens:
        raise ValueError(f"{n_tokens} queries need at least as many keys, got {n_keys}")
    out = np.empty((n_tokens, n_heads * head_dim), dtype=np.float32)        # [T, H*hd]
    if n_tokens == 0:
        return out
    if lib.attention_forward(ffi.from_buffer("float[]", out, require_writable=True),
                             ffi.from_buffer("float[]", q), ffi.from_buffer("uint8_t[]", k),
                             ffi.from_buffer("uint8_t[]", v), kv_format,
                             n_tokens, n_heads, n_kv_heads, n_keys, head_dim, _num_threads) != 0:
        raise MemoryError("no scratch memory for attention")
    return out
