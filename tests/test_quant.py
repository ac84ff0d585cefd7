"""llama_np.quant against gguf.quants (the Python mirror of llama.cpp's reference
quantizers): the same bytes for every block, the same floats back, and QuantizedMatrix
products equal to products with the dequantized matrix."""
import os

import numpy as np
import pytest

from llama_np import quant
from llama_np.quant import QK, QuantizedMatrix

gguf = pytest.importorskip("gguf")

QTYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]   # the 32-weight formats (K-quants: test_kquants.py)
MODEL_PATH = os.path.expanduser("~/.cache/llama_np/models/SmolLM2-135M-Instruct.Q4_1.gguf")


def gguf_type(qtype):
    return getattr(gguf.GGMLQuantizationType, qtype)


def same_bits(a, b):
    """Equal as bit patterns (so -0.0 != +0.0 and the comparison is exact)."""
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def edge_case_matrix():
    """Rows of 32-weight blocks that exercise the corners of the quantizers."""
    rng = np.random.default_rng(1)
    blocks = [
        np.zeros(QK),                                      # all zeros: d = 0
        np.full(QK, -0.0),                                 # all negative zeros
        np.where(rng.random(QK) < 0.5, 0.0, -0.0),         # mixed ±0.0
        np.full(QK, 0.75),                                 # constant positive block
        np.full(QK, -3.0),                                 # constant negative block
        np.r_[1e4, rng.standard_normal(QK - 1)],           # one huge outlier first
        np.r_[rng.standard_normal(QK - 1), -1e4],          # one huge negative outlier last
        np.r_[2.0, -2.0, rng.uniform(-1, 1, QK - 2)],      # tie for largest |x|: first wins
        np.r_[127.0, np.arange(-15, 16) + 0.5],            # Q8_0: d = 1, every x/d a .5 tie
        rng.standard_normal(QK) * 1e-6,                    # tiny scale (fp16 subnormal d)
        rng.standard_normal(QK) * 1e4,                     # large values
        -rng.uniform(0.5, 1.0, QK),                        # all negative: min is the extreme
    ]
    return np.stack(blocks).reshape(6, 2 * QK).astype(np.float32)    # [6, 64]


CASES = {
    "normal": lambda: np.random.default_rng(0).standard_normal((7, 5 * QK)).astype(np.float32),
    "one_row": lambda: np.random.default_rng(2).standard_normal((1, QK)).astype(np.float32),
    "edges": edge_case_matrix,
}


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_quantize_is_bit_identical_to_gguf(qtype, case):
    w = CASES[case]()
    ours = quant.quantize(w, qtype)
    reference = gguf.quants.quantize(w, gguf_type(qtype))
    assert ours.dtype == np.uint8
    assert ours.shape == (w.shape[0], w.shape[1] // QK * quant.BLOCK_BYTES[qtype])
    np.testing.assert_array_equal(ours, reference)


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_dequantize_is_bit_identical_to_gguf(qtype, case):
    data = gguf.quants.quantize(CASES[case](), gguf_type(qtype))
    assert same_bits(quant.dequantize(data, qtype),
                     gguf.quants.dequantize(data, gguf_type(qtype)))


@pytest.mark.parametrize("qtype", QTYPES)
def test_dequantize_arbitrary_blocks_is_bit_identical_to_gguf(qtype):
    """Random bytes cover every nibble / int8 value; scales are made finite fp16."""
    rng = np.random.default_rng(3)
    blocks = rng.integers(0, 256, (6, 4 * quant.BLOCK_BYTES[qtype]), dtype=np.uint8)
    view = blocks.view(quant.BLOCK_DTYPES[qtype])                          # [6, 4]
    view["d"] = rng.standard_normal(view.shape).astype(np.float16)
    if "m" in view.dtype.names:
        view["m"] = rng.standard_normal(view.shape).astype(np.float16)
    assert same_bits(quant.dequantize(blocks, qtype),
                     gguf.quants.dequantize(blocks, gguf_type(qtype)))


def test_block_sizes_and_type_ids_match_gguf():
    for qtype in QTYPES:
        assert (QK, quant.BLOCK_BYTES[qtype]) == gguf.GGML_QUANT_SIZES[gguf_type(qtype)]
        assert quant.GGML_TYPE_IDS[qtype] == int(gguf_type(qtype))


@pytest.mark.parametrize("qtype", QTYPES)
def test_quantization_error_shrinks_with_more_bits(qtype):
    w = np.random.default_rng(4).standard_normal((16, 4 * QK)).astype(np.float32)
    error = quant.quantization_error(w, qtype)
    assert set(error) == {"rmse", "max_abs", "snr_db"}
    assert 0 < error["rmse"] <= error["max_abs"]
    # RTN noise is about d/√12 per weight: roughly 20 dB for 4 bits and 45 dB for 8 bits.
    assert error["snr_db"] > (40 if qtype == "Q8_0" else 17)


def test_quantization_error_of_exactly_representable_matrix_is_zero():
    w = np.tile(np.arange(-8, 8, dtype=np.float32), (3, 2 * QK // 16))     # q - 8 with d = -1
    assert quant.quantization_error(w, "Q4_0") == dict(rmse=0.0, max_abs=0.0, snr_db=np.inf)


@pytest.mark.parametrize("bad_cols", [1, 31, 33, 48])
def test_row_length_must_be_whole_blocks(bad_cols):
    w = np.ones((2, bad_cols), dtype=np.float32)
    with pytest.raises(ValueError, match="multiple of the block size 32"):
        quant.quantize(w, "Q4_1")
    with pytest.raises(ValueError, match="multiple of the block size 32"):
        QuantizedMatrix(np.zeros(0, dtype=np.uint8), "Q4_0", (0, bad_cols))


def test_unknown_qtype_and_bad_inputs_raise():
    w = np.ones((2, QK), dtype=np.float32)
    with pytest.raises(ValueError, match="unknown quantization type 'IQ2_XXS'"):
        quant.quantize(w, "IQ2_XXS")
    with pytest.raises(ValueError, match="unknown quantization type"):
        quant.dequantize(np.zeros((1, 18), dtype=np.uint8), "q4_0")
    with pytest.raises(ValueError, match="2-D"):
        quant.quantize(np.ones(QK, dtype=np.float32), "Q8_0")
    with pytest.raises(ValueError, match="whole 20-byte blocks"):
        quant.dequantize(np.zeros((1, 30), dtype=np.uint8), "Q4_1")
    with pytest.raises(ValueError, match="needs 36 bytes"):
        QuantizedMatrix(np.zeros((2, 17), dtype=np.uint8), "Q4_0", (2, QK))
    with pytest.raises(TypeError, match="uint8"):
        QuantizedMatrix(np.zeros((2, 18), dtype=np.int8), "Q4_0", (2, QK))


# ---------------------------------------------------------------------------------------
# QuantizedMatrix: products against the dequantized matrix, computed in float64

@pytest.fixture(params=QTYPES)
def matrix(request):
    """A 300 × 96 quantized matrix (300 rows: more than one 256-row tile) and its floats."""
    rng = np.random.default_rng(5)
    qm = QuantizedMatrix.from_float(rng.standard_normal((300, 3 * QK)), request.param)
    return qm, qm.dequantize().astype(np.float64)


def test_quantized_matrix_attributes(matrix):
    qm, w = matrix
    assert qm.shape == (300, 96) and w.shape == (300, 96)
    assert qm.data.shape == (300, 3 * quant.BLOCK_BYTES[qm.qtype])
    assert qm.nbytes == 300 * 3 * quant.BLOCK_BYTES[qm.qtype]
    assert qm.qtype in repr(qm)


@pytest.mark.parametrize("batch_shape", [(), (1,), (5,), (2, 3)])
def test_matmul_is_x_times_w_transposed(matrix, batch_shape):
    qm, w = matrix
    x = np.random.default_rng(6).standard_normal((*batch_shape, 96)).astype(np.float32)
    y = qm.matmul(x)
    assert y.dtype == np.float32 and y.shape == (*batch_shape, 300)
    np.testing.assert_allclose(y, x.astype(np.float64) @ w.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch_shape", [(), (4,), (2, 3)])
def test_matmul_t_is_dy_times_w(matrix, batch_shape):
    qm, w = matrix
    dy = np.random.default_rng(7).standard_normal((*batch_shape, 300)).astype(np.float32)
    dx = qm.matmul_t(dy)
    assert dx.dtype == np.float32 and dx.shape == (*batch_shape, 96)
    np.testing.assert_allclose(dx, dy.astype(np.float64) @ w, rtol=1e-5, atol=1e-4)


def test_rows_is_an_embedding_lookup(matrix):
    qm, w = matrix
    ids = np.array([[0, 299, 5], [5, 17, 256]])
    picked = qm.rows(ids)
    assert picked.dtype == np.float32 and picked.shape == (2, 3, 96)
    np.testing.assert_array_equal(picked, w[ids])
    for bad in ([300], [-1]):
        with pytest.raises(IndexError):
            qm.rows(bad)
    with pytest.raises(TypeError):
        qm.rows([0.5])


def test_products_reject_wrong_dtype_or_width(matrix):
    qm, _ = matrix
    with pytest.raises(TypeError, match="float32"):
        qm.matmul(np.ones(96))
    with pytest.raises(ValueError, match=r"\[\.\.\., 96\]"):
        qm.matmul(np.ones((2, 95), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\[\.\.\., 300\]"):
        qm.matmul_t(np.ones((2, 96), dtype=np.float32))


def test_quantized_matrix_keeps_a_read_only_buffer_without_copying():
    data = quant.quantize(np.random.default_rng(8).standard_normal((4, 2 * QK)), "Q8_0")
    data.flags.writeable = False
    qm = QuantizedMatrix(data.reshape(-1), "Q8_0", (4, 2 * QK))            # flat bytes are fine
    assert np.shares_memory(qm.data, data)
    np.testing.assert_array_equal(qm.rows([3]), quant.dequantize(data, "Q8_0")[3:])


# ---------------------------------------------------------------------------------------
# llama.cpp's arithmetic: activations rounded to int8 per block

def test_activation_rounding_error_is_at_most_half_a_step():
    x = np.random.default_rng(9).standard_normal((3, 4 * QK)).astype(np.float32)
    x[0, :QK] = 0                                                          # a block of zeros
    dx, qx = quant.quantize_activations_int8(x)
    assert dx.shape == (3, 4) and qx.shape == (3, 4, QK) and qx.dtype == np.int8
    assert dx[0, 0] == 0 and not qx[0, 0].any()
    assert np.abs(qx).max() == 127                                         # the largest |x| → ±127
    error = np.abs(qx * dx[..., None] - x.reshape(3, 4, QK))
    assert np.all(error <= dx[..., None] / 2 * (1 + 1e-6))


def test_int8_activations_cost_about_half_a_percent(matrix):
    """The int8 path is the float path up to the activations' rounding: its error is a
    small fraction of the outputs' spread (≈ 0.5% rms on Gaussian data)."""
    qm, w = matrix
    if qm.qtype not in quant.matmul.INT8_PRODUCT_FORMATS:
        pytest.skip(f"no int8-activation product for {qm.qtype}")
    x = np.random.default_rng(10).standard_normal((8, 96)).astype(np.float32)
    exact = x.astype(np.float64) @ w.T                                     # [8, 300]
    y = quant.quant_matmul_int8(qm.data, qm.qtype, x)
    relative_rms = np.sqrt(np.mean((y - exact) ** 2)) / np.std(exact)
    assert 1e-4 < relative_rms < 0.02


# ---------------------------------------------------------------------------------------
# The real model: SmolLM2-135M-Instruct, Q4_1 (Q8_0 token embeddings)

@pytest.fixture(scope="module")
def model_tensors():
    if not os.path.exists(MODEL_PATH):
        pytest.skip(f"model not downloaded: {MODEL_PATH}")
    reader = gguf.GGUFReader(MODEL_PATH)
    return {tensor.name: tensor for tensor in reader.tensors}


def gguf_matrix(tensor):
    """A GGUF tensor as QuantizedMatrix; GGUF lists dimensions innermost first."""
    in_features, out_features = (int(n) for n in tensor.shape)
    return QuantizedMatrix(tensor.data, tensor.tensor_type.name, (out_features, in_features))


@pytest.mark.parametrize("name", ["blk.0.ffn_gate.weight", "blk.29.ffn_down.weight"])
def test_real_q4_1_tensor_round_trips_like_gguf(model_tensors, name):
    tensor = model_tensors[name]
    assert tensor.tensor_type.name == "Q4_1"
    qm = gguf_matrix(tensor)
    assert np.shares_memory(qm.data, tensor.data)                          # the memory map itself
    w = qm.dequantize()
    assert same_bits(w, gguf.quants.dequantize(tensor.data, gguf_type("Q4_1")))
    np.testing.assert_array_equal(quant.quantize(w, "Q4_1"),
                                  gguf.quants.quantize(w, gguf_type("Q4_1")))


def test_real_q8_0_embedding_rows(model_tensors):
    tensor = model_tensors["token_embd.weight"]
    qm = gguf_matrix(tensor)
    assert qm.qtype == "Q8_0" and qm.shape == (49152, 576)
    ids = np.array([0, 2, 1000, 49151])
    expected = gguf.quants.dequantize(np.asarray(tensor.data[ids]), gguf_type("Q8_0"))
    assert same_bits(qm.rows(ids), expected)
