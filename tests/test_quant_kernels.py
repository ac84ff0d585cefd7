"""The C quantized-matmul kernels (kernels/quant_matmul.c) against their NumPy reference
llama_np.quant.quant_matmul, on odd sizes that exercise every tail of the tiling, and the
checks that keep bad arguments away from C."""
import functools
import glob
import importlib.util
import os

import numpy as np
import pytest

from llama_np.kernels import native as kernels
from llama_np.kernels.backend import C, NUMPY
from llama_np import quant
from llama_np.quant import QK, QuantizedMatrix

pytestmark = pytest.mark.skipif(not kernels.AVAILABLE, reason="C kernels not built")

QTYPES = ["Q4_0", "Q4_1", "Q8_0"]
KERNELS_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "kernels")


@functools.lru_cache(maxsize=None)
def quantized(qtype, out_features, in_features):
    w = np.random.default_rng(out_features * 1000 + in_features).standard_normal(
        (out_features, in_features)).astype(np.float32)
    data = quant.quantize(w, qtype)
    data.flags.writeable = False                    # as a memory-mapped GGUF file gives it
    return data


def activations(n_tokens, in_features, seed=0):
    return np.random.default_rng(seed).standard_normal((n_tokens, in_features)).astype(np.float32)


def assert_close_to_reference(y, reference):
    """Within 1e-4 relative, measured against the largest output (sums of 600 products
    cancel, so single entries near zero carry the whole sum's rounding)."""
    np.testing.assert_allclose(y, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


@pytest.fixture
def threads():
    """Set the kernel thread count for one test and restore it afterwards."""
    saved = kernels.get_num_threads()
    yield kernels.set_num_threads
    kernels.set_num_threads(saved)


def reference(data, qtype, x, int8_activations):
    if int8_activations:
        return quant.quant_matmul_int8(data, qtype, x)
    return quant.quant_matmul(data, qtype, x)


@pytest.mark.parametrize("int8_activations", [False, True], ids=["fp32_x", "int8_x"])
@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("in_features", [32, 96, 576 + 32])
@pytest.mark.parametrize("out_features", [1, 7, 33, 577])
@pytest.mark.parametrize("n_tokens", [1, 3, 17])
def test_c_matches_numpy_reference(qtype, in_features, out_features, n_tokens, int8_activations):
    data = quantized(qtype, out_features, in_features)
    x = activations(n_tokens, in_features)
    y = kernels.quant_matmul(data, qtype, x, int8_activations)
    assert y.dtype == np.float32 and y.shape == (n_tokens, out_features)
    assert_close_to_reference(y, reference(data, qtype, x, int8_activations))


@pytest.mark.parametrize("qtype", QTYPES)
def test_int8_path_with_zero_and_tiny_activation_blocks(qtype):
    """A block of zeros has dx = 0 (its qx are all 0); tiny blocks keep their own scale."""
    data, x = quantized(qtype, 7, 96), activations(4, 96)
    x[0, :QK] = 0
    x[1] = 0
    x[2, QK:2 * QK] *= 1e-30
    y = kernels.quant_matmul(data, qtype, x, int8_activations=True)
    assert np.all(np.isfinite(y)) and not np.any(y[1])
    assert_close_to_reference(y, quant.quant_matmul_int8(data, qtype, x))


@pytest.mark.parametrize("int8_activations", [False, True], ids=["fp32_x", "int8_x"])
@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("n_tokens", [1, 2, 4, 9])
def test_results_do_not_depend_on_thread_count(qtype, n_tokens, int8_activations, threads):
    data, x = quantized(qtype, 33, 96), activations(n_tokens, 96)
    threads(1)
    one = kernels.quant_matmul(data, qtype, x, int8_activations)
    threads(2)
    np.testing.assert_array_equal(kernels.quant_matmul(data, qtype, x, int8_activations), one)


def test_gemv_and_gemm_paths_agree():
    """One token at a time (decode) and all tokens at once (prefill) give the same rows."""
    data, x = quantized("Q4_1", 33, 96), activations(9, 96)
    one_by_one = np.concatenate([kernels.quant_matmul(data, "Q4_1", x[t:t + 1]) for t in range(9)])
    assert_close_to_reference(kernels.quant_matmul(data, "Q4_1", x), one_by_one)


@pytest.mark.parametrize("int8_activations", [False, True], ids=["fp32_x", "int8_x"])
def test_empty_batch(int8_activations):
    y = kernels.quant_matmul(quantized("Q8_0", 7, 32), "Q8_0", activations(0, 32), int8_activations)
    assert y.shape == (0, 7)


def fp16_probe(n_tokens):
    """Q8_0 rows whose only nonzero weight is q = 1 with scale d, and x = e₀, so that
    (x @ W.T)[t, r] is the scale d of row r: one row per finite fp16 bit pattern (normal,
    subnormal, ±0). Returns data, x and the expected product."""
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    scales = bits.view(np.float16)[np.isfinite(bits.view(np.float16))]      # [n]
    blocks = np.zeros(len(scales), dtype=quant.BLOCK_DTYPES["Q8_0"])        # [n] blocks
    blocks["d"] = scales
    blocks["qs"][:, 0] = 1
    x = np.zeros((n_tokens, QK), dtype=np.float32)
    x[:, 0] = 1
    expected = np.tile(scales.astype(np.float32), (n_tokens, 1))           # [T, n]
    return blocks.view(np.uint8).reshape(len(scales), -1), x, expected


@pytest.mark.parametrize("n_tokens", [1, 4])
def test_every_finite_fp16_scale_is_decoded_exactly(n_tokens):
    data, x, expected = fp16_probe(n_tokens)
    np.testing.assert_array_equal(kernels.quant_matmul(data, "Q8_0", x), expected)


@pytest.mark.parametrize("int8_activations", [False, True], ids=["fp32_x", "int8_x"])
@pytest.mark.parametrize("qtype", QTYPES)
def test_the_backends_multiply_a_quantized_matrix_in_c_and_in_numpy(qtype, int8_activations):
    data = quantized(qtype, 33, 96)
    x = activations(2, 96).reshape(2, 1, 96)
    matrix = QuantizedMatrix(data, qtype, (33, 96))
    expected = kernels.quant_matmul(data, qtype, x.reshape(2, 96), int8_activations)
    np.testing.assert_array_equal(C.matmul(x, matrix, int8_activations), expected.reshape(2, 1, 33))
    assert_close_to_reference(NUMPY.matmul(x, matrix, int8_activations), expected.reshape(2, 1, 33))


def test_the_numpy_backend_never_reaches_c(monkeypatch):
    """Llama(use_kernels=False) runs every op in NumPy, quantized products included."""
    from test_decode_kernels import decode_config, decode_weights
    from llama_np.llama.model import Llama

    config = decode_config()
    model = Llama(config, decode_weights(config, ("Q4_0", "Q8_0", "F32", "Q4_1")), use_kernels=False)
    monkeypatch.setattr(kernels, "lib", Unreachable())
    cache = model.new_cache(8)
    model.forward([3, 14, 15], cache)
    assert np.isfinite(model.forward([9], cache)).all()


# ---------------------------------------------------------------------------------------
# Bad arguments are refused in Python, before C could read or write out of bounds

class Unreachable:
    """Stands in for the compiled library: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"C kernel {name} was reached with bad arguments")


@pytest.mark.parametrize("make_args, error", [
    (lambda d, x: (d, "Q4_1", x.astype(np.float64)), TypeError),            # wrong x dtype
    (lambda d, x: (d.view(np.int8), "Q4_1", x), TypeError),                 # wrong data dtype
    (lambda d, x: (d, "Q4_1", list(x)), TypeError),                         # not an array
    (lambda d, x: (d, "Q4_1", np.asfortranarray(x)), ValueError),           # non-contiguous x
    (lambda d, x: (d, "Q4_1", np.repeat(x, 2, axis=1)[:, ::2]), ValueError),  # strided x
    (lambda d, x: (np.asfortranarray(d), "Q4_1", x), ValueError),           # non-contiguous data
    (lambda d, x: (d, "Q4_1", x[0]), ValueError),                           # x must be 2-D
    (lambda d, x: (d.reshape(-1), "Q4_1", x), ValueError),                  # data must be 2-D
    (lambda d, x: (d, "Q4_1", x[:, :64]), ValueError),                      # in_features too small
    (lambda d, x: (d, "Q4_1", np.ones((3, 95), np.float32)), ValueError),   # not whole blocks
    (lambda d, x: (d[:, :-1], "Q4_1", x), ValueError),                      # short rows
    (lambda d, x: (d, "Q4_0", x), ValueError),                              # bytes of another format
    (lambda d, x: (d, "IQ4_NL", x), ValueError),                            # unknown format
], ids=["x_float64", "data_int8", "x_list", "x_fortran", "x_strided", "data_fortran",
        "x_1d", "data_1d", "x_narrow", "x_ragged", "data_short_rows", "wrong_format",
        "unknown_format"])
def test_bad_arguments_raise_before_c(make_args, error, monkeypatch):
    data, x = quantized("Q4_1", 7, 96), activations(3, 96)
    args = make_args(data, x)
    monkeypatch.setattr(kernels, "lib", Unreachable())
    with pytest.raises(error):
        kernels.quant_matmul(*args)


def test_odd_address_is_refused(monkeypatch):
    buffer = np.zeros(2 * 18 + 1, dtype=np.uint8)
    misaligned = buffer[1:].reshape(2, 18)                                   # C-contiguous, odd start
    monkeypatch.setattr(kernels, "lib", Unreachable())
    with pytest.raises(ValueError, match="even address"):
        kernels.quant_matmul(misaligned, "Q4_0", activations(1, QK))


@pytest.mark.parametrize("qtype", sorted(kernels.BLOCK_FORMATS))
@pytest.mark.parametrize("n_rows", [1, 7, 33])
def test_dequantize_equals_numpy_bit_for_bit(qtype, n_rows, threads):
    """Every block format, rows split over 1 to 3 threads: the same floats as NumPy's
    (d · q is exact in float32, so fusing the offset's add changes no rounding)."""
    block_weights = kernels.BLOCK_FORMATS[qtype].block_weights
    data = quantized(qtype, n_rows, 3 * block_weights)
    expected = quant.dequantize(data, qtype)
    for n in (1, 2, 3):
        threads(n)
        np.testing.assert_array_equal(kernels.dequantize(data, qtype), expected)
        np.testing.assert_array_equal(C.dequantize(data, qtype), NUMPY.dequantize(data, qtype))


def test_dequantize_refuses_what_it_cannot_read(monkeypatch):
    monkeypatch.setattr(kernels, "lib", Unreachable())
    with pytest.raises(ValueError, match="no dequantize kernel for 'F16'"):
        kernels.dequantize(np.zeros((2, 8), np.uint8), "F16")
    with pytest.raises(ValueError, match="not whole 20-byte blocks"):
        kernels.dequantize(np.zeros((2, 30), np.uint8), "Q4_1")
    with pytest.raises(TypeError, match="dtype uint8"):
        kernels.dequantize(np.zeros((2, 20), np.float32), "Q4_1")


# ---------------------------------------------------------------------------------------
# The portable build: plain C without AVX2/F16C (what LLAMA_NP_PORTABLE=1 compiles on x86)

@pytest.fixture(scope="module")
def portable_lib(tmp_path_factory):
    """Every kernel built as kernels/build.py does, but without -march=native."""
    cffi = pytest.importorskip("cffi")
    build_dir = tmp_path_factory.mktemp("portable")
    kernels_dir = os.path.abspath(KERNELS_DIR)
    sources = sorted(glob.glob(os.path.join(kernels_dir, "*.c")))
    declarations = "\n".join(open(h).read() for h in sorted(glob.glob(os.path.join(kernels_dir, "*.h"))))
    ffi = cffi.FFI()
    ffi.cdef(declarations)
    ffi.set_source("_kernels_portable", "#include <stdint.h>\n" + declarations, sources=sources,
                   include_dirs=[kernels_dir], extra_compile_args=["-O2", "-fopenmp", "-std=c11"],
                   extra_link_args=["-fopenmp"], libraries=["m"])
    try:
        library_path = ffi.compile(tmpdir=str(build_dir))
    except Exception as exc:  # no C compiler here: nothing to test
        pytest.skip(f"cannot compile the portable kernels: {exc}")
    spec = importlib.util.spec_from_file_location("_kernels_portable", library_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_portable_build_runs_the_model_like_numpy(portable_lib, monkeypatch):
    """The whole model on the portable kernels (prefill GEMM, fused decode block, attention,
    RMSNorm, RoPE in plain C) against the NumPy path."""
    from test_decode_kernels import decode_config, decode_weights
    from llama_np.llama.model import Llama

    monkeypatch.setattr(kernels, "ffi", portable_lib.ffi)
    monkeypatch.setattr(kernels, "lib", portable_lib.lib)
    config = decode_config()
    weights = decode_weights(config, ("Q4_0", "Q8_0", "F32", "Q4_1"))
    portable, reference = Llama(config, weights), Llama(config, weights, use_kernels=False)
    assert portable._fused_decoders()
    caches = [portable.new_cache(16), reference.new_cache(16)]
    for ids in ([3, 14, 15, 9, 26, 5, 35, 8, 9, 7, 1], [2], [4]):             # prefill, then decode
        ours, expected = (m.forward(ids, c) for m, c in zip((portable, reference), caches))
        np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kv_cache", ["f32", "f16"])
def test_portable_batched_step_equals_each_sequence_alone(portable_lib, kv_cache, monkeypatch):
    """Continuous batching's step in plain C (the batched products without AVX2, the f16 cache
    through half.h's conversions) gives each sequence the logits it gets alone, bit for bit."""
    from test_decode_kernels import decode_config, decode_weights
    from test_serve_batch import check_batch_equals_alone
    from llama_np.llama.model import Llama

    monkeypatch.setattr(kernels, "ffi", portable_lib.ffi)
    monkeypatch.setattr(kernels, "lib", portable_lib.lib)
    config = decode_config()
    model = Llama(config, decode_weights(config, ("Q4_0", "Q8_0", "F32", "Q4_1")))
    check_batch_equals_alone(model, 5, kv_cache=kv_cache)


@pytest.mark.parametrize("int8_activations", [False, True], ids=["fp32_x", "int8_x"])
@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("n_tokens", [1, 5])
def test_portable_c_matches_numpy_reference(portable_lib, qtype, n_tokens, int8_activations):
    ffi, lib = portable_lib.ffi, portable_lib.lib
    data, x = quantized(qtype, 33, 96), activations(n_tokens, 96)
    y = np.empty((n_tokens, 33), dtype=np.float32)
    lib.quant_matmul_f32(
        kernels.FORMATS[qtype], ffi.from_buffer("float[]", y, require_writable=True),
        ffi.from_buffer("uint8_t[]", data), ffi.from_buffer("float[]", x), n_tokens, 33, 96,
        int8_activations, 2)
    assert_close_to_reference(y, reference(data, qtype, x, int8_activations))


def test_portable_fp16_decoder_is_exact(portable_lib):
    ffi, lib = portable_lib.ffi, portable_lib.lib
    data, x, expected = fp16_probe(1)
    y = np.empty_like(expected)
    lib.quant_matmul_f32(kernels.FORMATS["Q8_0"], ffi.from_buffer("float[]", y, require_writable=True),
                         ffi.from_buffer("uint8_t[]", data), ffi.from_buffer("float[]", x),
                         1, data.shape[0], QK, 0, 1)
    np.testing.assert_array_equal(y, expected)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")   # 70000 → inf, on purpose
@pytest.mark.parametrize("name", ["f16", "q8_0"])
def test_portable_kv_cache_rows_and_attention_match_numpy(portable_lib, name, monkeypatch):
    """Without F16C the halves are rounded and widened in plain C (kernels/internal/half.h):
    the same bytes as NumPy's astype(float16) / Q8_0, and attention over them agrees."""
    from test_kv_cache import half_rounding_cases, hard_values
    from llama_np.quant import kv_rows

    ffi, lib = portable_lib.ffi, portable_lib.lib
    fmt = kv_rows.KV_FORMATS[name]
    x = half_rounding_cases() if name == "f16" else np.clip(hard_values(32 * 9), -100, 100)
    expected = kv_rows.encode(x, fmt)
    stored = np.zeros_like(expected)
    lib.kv_rows_store(fmt.kernel_format, ffi.from_buffer("uint8_t[]", stored, require_writable=True),
                      ffi.from_buffer("float[]", x), len(x))
    np.testing.assert_array_equal(stored.view(np.uint8), expected.view(np.uint8))
    monkeypatch.setattr(kernels, "ffi", ffi)
    monkeypatch.setattr(kernels, "lib", lib)
    rng = np.random.default_rng(7)
    q = rng.standard_normal((5, 6, 32)).astype(np.float32)
    k, v = (kv_rows.encode(rng.standard_normal((300, 3, 32)).astype(np.float32), fmt) for _ in range(2))
    reference_out = NUMPY.attention(q, k, v)                              # over the dequantized rows
    np.testing.assert_allclose(kernels.attention_forward(q, k, v), reference_out, rtol=1e-5, atol=2e-6)
