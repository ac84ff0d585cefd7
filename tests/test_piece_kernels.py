"""The C kernels of the newer block formats — Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K
(kernels/internal/block_pieces.h, piece_rows.h) — against the weights gguf.quants.dequantize
gives for the same bytes: x @ W.T for one row (decode) and many (prefill GEMM), with fp32
and int8 activations; the batched product equal to the one-row product bit for bit; the
same sums in the AVX-512 (this build, where the CPU has it), AVX2 and plain C builds.

The blocks are random bytes with sensible fp16 scales: every bit of every field is read, so a
wrong shift or offset anywhere shows."""
import glob
import importlib.util
import os

import numpy as np
import pytest

gguf_quants = pytest.importorskip("gguf.quants")
from gguf import GGMLQuantizationType  # noqa: E402

from llama_np import kernels, quant  # noqa: E402
from llama_np.kernels import native  # noqa: E402
from llama_np.kernels.cpu import cpu_flags  # noqa: E402
from llama_np.llama.batch import decode_step  # noqa: E402
from llama_np.llama.config import LlamaConfig  # noqa: E402
from llama_np.llama.model import Llama  # noqa: E402
from llama_np.llama.weights import expected_shapes  # noqa: E402
from llama_np.quant import QuantizedMatrix  # noqa: E402
from llama_np.quant.formats import FORMATS  # noqa: E402

from test_serve_batch import check_batch_equals_alone  # noqa: E402

pytestmark = pytest.mark.skipif(not native.AVAILABLE, reason="C kernels not built")

PIECE_FORMATS = ["Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
# byte offsets of each block's fp16 fields (d, and m or dmin): ggml-common.h
HALF_FIELDS = {"Q5_0": (0,), "Q5_1": (0, 2), "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2),
               "Q6_K": (208,)}
KERNELS_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "kernels")


def in_sizes(qtype):
    """Row lengths: one block, a few, and the default model's widths where the format fits."""
    return [32, 96, 576] if FORMATS[qtype].block_weights == 32 else [256, 512, 1536]


def random_blocks(qtype, rows, cols, seed=0, scale=0.05):
    """uint8 [rows, row_bytes]: random bytes, the fp16 fields replaced by small scales (d > 0,
    the second field of either sign: Q5_1's m, the K-quants' dmin), up to `scale`."""
    fmt = FORMATS[qtype]
    rng = np.random.default_rng([rows, cols, seed, fmt.ggml_type])
    n_blocks = cols // fmt.block_weights
    data = rng.integers(0, 256, (rows, n_blocks, fmt.block_bytes), dtype=np.uint8)
    for i, offset in enumerate(HALF_FIELDS[qtype]):
        low = 0.04 * scale if i == 0 else -scale
        values = rng.uniform(low, scale, (rows, n_blocks))
        data[:, :, offset:offset + 2] = values.astype("<f2").view(np.uint8).reshape(rows, n_blocks, 2)
    data = data.reshape(rows, -1)
    data.flags.writeable = False                  # as a memory map of a GGUF file gives it
    return data


def dequantized(data, qtype):
    """The float weights [rows, cols] of the blocks, as gguf.quants reads them (float64)."""
    return gguf_quants.dequantize(data, GGMLQuantizationType[qtype]).astype(np.float64)


def activations(n_rows, cols, seed=1):
    return np.random.default_rng(seed).standard_normal((n_rows, cols)).astype(np.float32)


def reference(data, qtype, x, int8_activations):
    """x @ W.T in float64; with int8 activations, x first rounded per 32 as the kernels round
    it (quant.quantize_activations_int8: the Q8_0 rule)."""
    if int8_activations:
        dx, qx = quant.quantize_activations_int8(x)                          # [T, nb], [T, nb, 32]
        x = (dx[..., None].astype(np.float64) * qx).reshape(x.shape)
    return x.astype(np.float64) @ dequantized(data, qtype).T


def assert_close(y, expected, rtol=2e-5):
    """Within rtol of the largest output: sums of up to 1536 fp32 products."""
    np.testing.assert_allclose(y, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


def c_matmul(lib, ffi, qtype, data, x, int8_activations=False, batch=False, threads=2):
    """quant_matmul_f32 (or, batch=True, quant_matvec_batch_f32) of one build, called directly."""
    out = np.empty((x.shape[0], data.shape[0]), dtype=np.float32)
    kernel = lib.quant_matvec_batch_f32 if batch else lib.quant_matmul_f32
    status = kernel(native.FORMATS[qtype], ffi.from_buffer("float[]", out, require_writable=True),
                    ffi.from_buffer("uint8_t[]", data), ffi.from_buffer("float[]", x), x.shape[0],
                    data.shape[0], x.shape[1], int(int8_activations), threads)
    assert status == 0
    return out


def native_matmul(qtype, data, x, int8_activations=False, batch=False, threads=2):
    return c_matmul(native.lib, native.ffi, qtype, data, x, int8_activations, batch, threads)


# ---------------------------------------------------------------------------------------
# This build (-march=native: AVX-512 on the machine the kernels were written on)

@pytest.mark.parametrize("int8_activations", [False, True], ids=["fp32_x", "int8_x"])
@pytest.mark.parametrize("n_tokens", [1, 3, 17])
@pytest.mark.parametrize("out_features", [1, 7, 33])
@pytest.mark.parametrize("qtype", PIECE_FORMATS)
def test_c_matches_the_dequantized_product(qtype, out_features, n_tokens, int8_activations):
    for cols in in_sizes(qtype):
        data, x = random_blocks(qtype, out_features, cols), activations(n_tokens, cols)
        y = native_matmul(qtype, data, x, int8_activations)
        assert_close(y, reference(data, qtype, x, int8_activations))


@pytest.mark.parametrize("qtype", PIECE_FORMATS)
def test_numpy_int8_reference_is_the_rounded_activations_product(qtype):
    """quant.quant_matmul_int8, the NumPy reference of the int8 path (and the NumPy model's
    --int8-activations), against gguf.quants' weights times the rounded activations, and so
    against the C kernel's int8 product."""
    for cols in in_sizes(qtype):
        data, x = random_blocks(qtype, 7, cols), activations(3, cols)
        y = quant.quant_matmul_int8(data, qtype, x)
        assert_close(y, reference(data, qtype, x, int8_activations=True))
        assert_close(native_matmul(qtype, data, x, int8_activations=True), y)
        assert not np.allclose(y, reference(data, qtype, x, int8_activations=False), rtol=1e-6)


@pytest.mark.parametrize("qtype", PIECE_FORMATS)
def test_gemm_decodes_the_same_weights_as_the_dequantizer(qtype):
    """x = the identity: the GEMM's decoded tile (decode_row_pieces) is W.T itself, to fp32
    rounding of d · q + m."""
    cols = in_sizes(qtype)[1]
    data = random_blocks(qtype, 13, cols)
    y = native_matmul(qtype, data, np.eye(cols, dtype=np.float32))
    np.testing.assert_allclose(y, dequantized(data, qtype).T, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("int8_activations", [False, True], ids=["fp32_x", "int8_x"])
@pytest.mark.parametrize("n_rows", [1, 2, 5, 9])
@pytest.mark.parametrize("qtype", PIECE_FORMATS)
def test_batched_rows_equal_the_one_row_product_bit_for_bit(qtype, n_rows, int8_activations):
    cols = in_sizes(qtype)[-1]
    data, x = random_blocks(qtype, 37, cols), activations(n_rows, cols)
    batched = native_matmul(qtype, data, x, int8_activations, batch=True)
    alone = np.concatenate([native_matmul(qtype, data, x[b:b + 1], int8_activations) for b in range(n_rows)])
    np.testing.assert_array_equal(batched, alone)


@pytest.mark.parametrize("int8_activations", [False, True], ids=["fp32_x", "int8_x"])
@pytest.mark.parametrize("n_tokens", [1, 7])
@pytest.mark.parametrize("qtype", PIECE_FORMATS)
def test_results_do_not_depend_on_thread_count(qtype, n_tokens, int8_activations):
    cols = in_sizes(qtype)[1]
    data, x = random_blocks(qtype, 35, cols), activations(n_tokens, cols)
    one = native_matmul(qtype, data, x, int8_activations, threads=1)
    np.testing.assert_array_equal(native_matmul(qtype, data, x, int8_activations, threads=3), one)


# ---------------------------------------------------------------------------------------
# The other instruction sets: AVX2 + FMA + F16C without AVX-512, and plain C

BUILDS = {
    "avx2": ["-O3", "-mavx2", "-mfma", "-mf16c", "-ffp-contract=fast"],
    "plain_c": ["-O2"],
}


def build_kernels(build_dir, name, flags):
    """Every kernel built as kernels/build.py builds it, with `flags` instead of -march=native."""
    cffi = pytest.importorskip("cffi")
    kernels_dir = os.path.abspath(KERNELS_DIR)
    sources = sorted(glob.glob(os.path.join(kernels_dir, "*.c")))
    declarations = "\n".join(open(h).read() for h in sorted(glob.glob(os.path.join(kernels_dir, "*.h"))))
    ffi = cffi.FFI()
    ffi.cdef(declarations)
    module = f"_kernels_{name}"
    ffi.set_source(module, "#include <stdint.h>\n" + declarations, sources=sources, include_dirs=[kernels_dir],
                   extra_compile_args=flags + ["-fopenmp", "-std=c11"], extra_link_args=["-fopenmp"],
                   libraries=["m"])
    try:
        library_path = ffi.compile(tmpdir=str(build_dir))
    except Exception as exc:  # no C compiler here: nothing to test
        pytest.skip(f"cannot compile the {name} kernels: {exc}")
    spec = importlib.util.spec_from_file_location(module, library_path)
    built = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(built)
    return built


@pytest.fixture(scope="module", params=sorted(BUILDS))
def other_build(request, tmp_path_factory):
    return build_kernels(tmp_path_factory.mktemp(request.param), request.param, BUILDS[request.param])


@pytest.mark.parametrize("int8_activations", [False, True], ids=["fp32_x", "int8_x"])
@pytest.mark.parametrize("qtype", PIECE_FORMATS)
def test_other_builds_match_the_dequantized_product(other_build, qtype, int8_activations):
    for cols in in_sizes(qtype)[1:]:
        for n_tokens in (1, 3, 17):
            data, x = random_blocks(qtype, 15, cols), activations(n_tokens, cols)
            y = c_matmul(other_build.lib, other_build.ffi, qtype, data, x, int8_activations)
            assert_close(y, reference(data, qtype, x, int8_activations))


@pytest.mark.parametrize("int8_activations", [False, True], ids=["fp32_x", "int8_x"])
@pytest.mark.parametrize("qtype", PIECE_FORMATS)
def test_other_builds_batch_bit_for_bit(other_build, qtype, int8_activations):
    cols = in_sizes(qtype)[-1]
    data, x = random_blocks(qtype, 21, cols), activations(5, cols)
    batched = c_matmul(other_build.lib, other_build.ffi, qtype, data, x, int8_activations, batch=True)
    alone = np.concatenate([c_matmul(other_build.lib, other_build.ffi, qtype, data, x[b:b + 1], int8_activations)
                            for b in range(5)])
    np.testing.assert_array_equal(batched, alone)


def test_avx512_build_decodes_as_the_avx2_build(other_build, monkeypatch):
    """On an AVX-512 CPU the two Q4_0 / Q4_1 rows of a decode step's products share one
    16-lane register (kernels/internal/quant_rows.h, dot_two_rows_avx512), and the prefill
    micro-kernel holds a row's 16 tokens in one (kernels/quant_matmul.c, gemm_tile): lane by
    lane the arithmetic of the AVX2 loops' 8-lane registers, so prompts (of 9 and of 1 to 29
    tokens, every panel shape), one-token decoding and the batched step give the AVX2
    build's logits bit for bit."""
    if other_build.__name__ != "_kernels_avx2" or "avx512f" not in cpu_flags():
        pytest.skip("compares the native AVX-512 build with the AVX2 build")
    from test_decode_kernels import decode_config, decode_weights

    config = decode_config()
    weights = decode_weights(config, ("Q4_0", "Q4_1", "Q8_0", "F32"))

    def decoded():
        model = Llama(config, weights)
        rng = np.random.default_rng(11)
        cache = model.new_cache(40)
        logits = [model.forward(list(rng.integers(0, 50, 9)), cache)]
        logits += [model.forward([t], cache) for t in rng.integers(0, 50, 3)]
        caches = [model.new_cache(40) for _ in range(5)]
        for c in caches:
            model.forward(list(rng.integers(0, 50, int(rng.integers(1, 30)))), c)
        logits += [decode_step(model, rng.integers(0, 50, 5), caches) for _ in range(2)]
        return logits

    native_logits = decoded()
    monkeypatch.setattr(native, "ffi", other_build.ffi)
    monkeypatch.setattr(native, "lib", other_build.lib)
    for ours, avx2 in zip(native_logits, decoded(), strict=True):
        np.testing.assert_array_equal(ours, avx2)


# ---------------------------------------------------------------------------------------
# The fused decode layer with a different format for every matrix, as in a K-quant file

# Q4_K_M-like layers: K-quants where rows are multiples of 256, their fall-backs elsewhere
MIXES = {
    "layer_0": {"q_proj": "Q5_0", "k_proj": "Q2_K", "v_proj": "Q6_K", "o_proj": "Q4_K",
                "gate_proj": "Q5_1", "up_proj": "Q5_K", "down_proj": "Q6_K"},
    "layer_1": {"q_proj": "Q4_K", "k_proj": "Q5_K", "v_proj": "Q3_K", "o_proj": "Q4_1",
                "gate_proj": "Q8_0", "up_proj": "Q4_0", "down_proj": "Q4_K"},
}


def mixed_config():
    """Widths that K-quants can hold (256, 512), GQA with 4 query heads on 2 key/value heads."""
    return LlamaConfig(vocab_size=64, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=64, rms_norm_eps=1e-5,
                       rope_theta=10000.0)


def mixed_weights(config, head="Q6_K"):
    rng = np.random.default_rng(3)
    weights = {}
    for i, (name, shape) in enumerate(expected_shapes(config).items()):
        if len(shape) == 1:                                               # norms near 1
            weights[name] = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        elif "embed" in name:
            weights[name] = (0.5 * rng.standard_normal(shape)).astype(np.float32)
        else:
            layer = "layer_1" if ".layers.1." in name else "layer_0"
            qtype = head if name == "lm_head.weight" else MIXES[layer][name.split(".")[-2]]
            if qtype in PIECE_FORMATS:
                data = random_blocks(qtype, *shape, seed=i, scale=0.001)
            else:
                data = quant.quantize((0.1 * rng.standard_normal(shape)).astype(np.float32), qtype)
            weights[name] = QuantizedMatrix(data, qtype, shape)
    return weights


def test_fused_decode_of_mixed_formats_matches_the_numpy_block():
    config = mixed_config()
    weights = mixed_weights(config)
    fused, reference = Llama(config, weights), Llama(config, weights, use_kernels=False)
    assert fused._fused_decoders()
    ids = [3, 14, 15, 9, 26, 5, 35, 8]
    caches = [fused.new_cache(16), reference.new_cache(16)]
    for model, cache in zip((fused, reference), caches):
        model.forward(ids[:5], cache)                                     # prefill: the GEMM
    for token in ids[5:]:
        ours, expected = (m.forward([token], c) for m, c in zip((fused, reference), caches))
        assert_close(ours, expected, rtol=1e-4)


@pytest.mark.parametrize("int8_activations", [False, True], ids=["fp32_x", "int8_x"])
@pytest.mark.parametrize("n_sequences", [1, 2, 5])
def test_batched_step_of_mixed_formats_equals_each_sequence_alone(n_sequences, int8_activations):
    config = mixed_config()
    model = Llama(config, mixed_weights(config))
    model.set_int8_activations(int8_activations)
    assert model._fused_decoders()
    check_batch_equals_alone(model, n_sequences)


def test_other_builds_run_the_mixed_model_like_numpy(other_build, monkeypatch):
    """The fused decode layer and the prefill GEMM of the AVX2 and plain-C builds on the
    mixed-format model, against the NumPy path."""
    monkeypatch.setattr(native, "ffi", other_build.ffi)
    monkeypatch.setattr(native, "lib", other_build.lib)
    config = mixed_config()
    weights = mixed_weights(config)
    built, reference = Llama(config, weights), Llama(config, weights, use_kernels=False)
    assert built._fused_decoders()
    caches = [built.new_cache(16), reference.new_cache(16)]
    for ids in ([3, 14, 15, 9, 26, 5], [35], [8]):                        # prefill, then decode
        ours, expected = (m.forward(ids, c) for m, c in zip((built, reference), caches))
        assert_close(ours, expected, rtol=1e-4)
