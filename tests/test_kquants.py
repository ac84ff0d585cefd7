"""The K-quants Q2_K … Q6_K (and the 5-bit Q5_0/Q5_1) against two independent oracles:
`gguf.quants.dequantize` for the floats a block holds, and llama.cpp's own quantizer
(`ggml_quantize_chunk` in libggml-base, as shipped with llama-cpp-python) for the bytes a
weight matrix becomes; then QuantizedMatrix's products over super-blocks."""
import ctypes
import os

import numpy as np
import pytest

from llama_np import quant
from llama_np.quant import QK_K, QuantizedMatrix
from llama_np.quant.formats import FORMATS

gguf = pytest.importorskip("gguf")

KQUANTS = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
NEW_TYPES = ["Q5_0", "Q5_1"] + KQUANTS


def same_bits(a, b):
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.fixture(scope="module")
def ggml_quantize():
    """llama.cpp's quantizer for whole rows: w [rows, cols] float32 → the bytes it writes
    (no importance matrix, as `llama_model_quantize` without one)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]

    def run(w, qtype):
        w = np.ascontiguousarray(w, dtype=np.float32)
        out = np.zeros((w.shape[0], quant.formats.row_bytes(w.shape[1], qtype)), dtype=np.uint8)
        written = lib.ggml_quantize_chunk(FORMATS[qtype].ggml_type, w.ctypes.data, out.ctypes.data,
                                          0, w.shape[0], w.shape[1], None)
        assert written == out.nbytes
        return out
    return run


def edge_case_rows(cols=2 * QK_K):
    """Rows that exercise the corners of the scale searches, one case per row."""
    rng = np.random.default_rng(5)
    gauss = lambda: rng.standard_normal(cols)
    rows = [
        np.zeros(cols),                                          # all zero: d = dmin = 0
        np.r_[np.zeros(16), gauss()[16:]],                       # one zero sub-block of 16
        np.r_[np.zeros(32), gauss()[32:]],                       # one zero sub-block of 32
        np.full(cols, 0.75), np.full(cols, -3.0),                # constant: flat sub-blocks
        np.abs(gauss()), -np.abs(gauss()),                       # one-signed: the min at 0 / the max at 0
        np.r_[1e4, gauss()[1:]],                                 # a huge outlier
        gauss() * 1e-6, gauss() * 1e-9, gauss() * 1e4,           # fp16-subnormal and large scales
        np.where(rng.random(cols) < 0.9, 0.0, gauss()),          # sparse
        np.round(gauss() * 3) / 3,                               # on a grid: ties in the rounding
        gauss() * np.repeat(rng.uniform(0.01, 10, cols // 16), 16),  # sub-blocks of very different sizes
    ]
    return np.stack(rows).astype(np.float32)


CASES = {
    "gaussian": lambda: np.random.default_rng(0).standard_normal((24, 3 * QK_K)).astype(np.float32),
    "heavy_tails": lambda: np.random.default_rng(1).standard_t(2, (24, 2 * QK_K)).astype(np.float32),
    "edges": edge_case_rows,
    "one_row": lambda: np.random.default_rng(2).standard_normal((1, QK_K)).astype(np.float32),
}


@pytest.mark.parametrize("qtype", NEW_TYPES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_quantize_is_byte_identical_to_llama_cpp(ggml_quantize, qtype, case):
    w = CASES[case]()
    ours = quant.quantize(w, qtype)
    assert ours.shape == (w.shape[0], w.shape[1] // FORMATS[qtype].block_weights * FORMATS[qtype].block_bytes)
    np.testing.assert_array_equal(ours, ggml_quantize(w, qtype))


@pytest.mark.parametrize("qtype", KQUANTS)
def test_dequantize_arbitrary_blocks_is_bit_identical_to_gguf(qtype):
    """Random bytes cover every packed scale and quant; the fp16 fields are made finite."""
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, (6, 3 * FORMATS[qtype].block_bytes), dtype=np.uint8)
    blocks = data.view(quant.BLOCK_DTYPES[qtype])                          # [6, 3]
    for field in ("d", "dmin"):
        if field in blocks.dtype.names:
            blocks[field] = rng.standard_normal(blocks.shape).astype(np.float16)
    assert same_bits(quant.dequantize(data, qtype),
                     gguf.quants.dequantize(data, getattr(gguf.GGMLQuantizationType, qtype)))


@pytest.mark.parametrize("qtype", KQUANTS)
def test_block_layouts_match_gguf(qtype):
    gguf_type = getattr(gguf.GGMLQuantizationType, qtype)
    assert (QK_K, FORMATS[qtype].block_bytes) == gguf.GGML_QUANT_SIZES[gguf_type]
    assert FORMATS[qtype].ggml_type == int(gguf_type)
    assert quant.BLOCK_DTYPES[qtype].itemsize == FORMATS[qtype].block_bytes


@pytest.mark.parametrize("qtype", KQUANTS)
def test_more_bits_less_error(qtype):
    """Each extra bit of a K-quant buys ~6 dB; Q2_K on Gaussian weights still keeps ~9 dB."""
    w = np.random.default_rng(4).standard_normal((16, 2 * QK_K)).astype(np.float32)
    bits = {"Q2_K": 2, "Q3_K": 3, "Q4_K": 4, "Q5_K": 5, "Q6_K": 6}[qtype]
    assert quant.quantization_error(w, qtype)["snr_db"] > 6 * bits - 4


def test_rows_that_are_not_whole_super_blocks_are_refused():
    with pytest.raises(ValueError, match="multiple of the block size 256"):
        quant.quantize(np.ones((2, 576), dtype=np.float32), "Q4_K")
    with pytest.raises(ValueError, match="needs"):
        QuantizedMatrix(np.zeros((2, 144), dtype=np.uint8), "Q4_K", (2, 512))


@pytest.mark.parametrize("qtype", KQUANTS)
def test_quantized_matrix_products_over_super_blocks(qtype):
    """matmul (float and int8 activations), matmul_t and rows against the dequantized matrix in
    float64; 300 rows span two NumPy tiles, so the tiling is exercised too."""
    rng = np.random.default_rng(6)
    qm = QuantizedMatrix.from_float(rng.standard_normal((300, 2 * QK_K)), qtype)
    w = qm.dequantize().astype(np.float64)                                 # [300, 512]
    x = rng.standard_normal((3, 2 * QK_K)).astype(np.float32)
    dy = rng.standard_normal((3, 300)).astype(np.float32)
    np.testing.assert_allclose(qm.matmul(x), x @ w.T, rtol=1e-4, atol=1e-3)
    dx, qx = quant.quantize_activations_int8(x)                            # the int8 path rounds x per 32
    rounded = (dx[..., None].astype(np.float64) * qx).reshape(x.shape)
    np.testing.assert_allclose(qm.matmul(x, int8_activations=True), rounded @ w.T, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(qm.matmul_t(dy), dy @ w, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(qm.rows(np.array([[0, 299]])), w[[0, 299]][None].astype(np.float32))
