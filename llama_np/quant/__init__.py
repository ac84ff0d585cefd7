"""Block quantization: the weight formats (one table), quantizers bit-identical to llama.cpp's
reference ones, the NumPy references of the quantized products, and `QuantizedMatrix`, a
weight kept as blocks.

    formats.py        the table of formats (GGML ids, block sizes, kernel numbers), block layouts
    codec.py          quantize / dequantize any format, and what it costs
    rtn.py            the 32-weight formats Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (round to nearest)
    kquants.py        the K-quants Q2_K … Q6_K: 256-weight super-blocks with integer sub-scales
    kquant_search.py  how the K-quants choose each sub-block's scale and min
    matmul.py    x @ W.T on blocks, its transpose, llama.cpp's int8-activation arithmetic
    matrix.py    QuantizedMatrix
    kv_rows.py   how the KV cache stores keys and values (f32, f16, q8_0): writing and reading a row

Imports: NumPy only. Which code multiplies by a QuantizedMatrix in a model, NumPy or C, is
decided by `llama_np.kernels` (its backend), not here.
"""
from llama_np.quant.formats import (BLOCK_BYTES, BLOCK_DTYPES, FORMATS, GGML_TYPE_IDS, QK, QK_K, TensorFormat,
                                    ggml_type_name, tensor_nbytes)
from llama_np.quant.matmul import quant_matmul, quant_matmul_int8, quant_matmul_t, quantize_activations_int8
from llama_np.quant.matrix import QuantizedMatrix, dense
from llama_np.quant.codec import dequantize, quantization_error, quantize
from llama_np.quant.kv_rows import KV_FORMATS, KVFormat
