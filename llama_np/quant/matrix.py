"""`QuantizedMatrix`: a weight matrix kept as quantized blocks, never dequantized whole."""
import numpy as np

from llama_np.quant.formats import check_cols, check_qtype, row_bytes
from llama_np.quant.matmul import INT8_PRODUCT_FORMATS, quant_matmul, quant_matmul_int8, quant_matmul_t
from llama_np.quant.codec import dequantize, quantize


class QuantizedMatrix:
    """A weight matrix W [out_features, in_features] (Hugging Face layout) kept as blocks.

    `data` is uint8 [out_features, row_bytes], e.g. the bytes of one tensor straight out of
    a GGUF file (mapped or read); it is never copied and never dequantized as a whole. Products:

        matmul(x)    x [..., in]  → x @ W.T  [..., out]   (a Linear layer's forward)
        matmul_t(dy) dy [..., out] → dy @ W  [..., in]    (its input gradient)
        rows(ids)    ids [...]    → W[ids]   [..., in]    (an embedding lookup)

    These are the NumPy references; a model multiplies through its backend
    (`llama_np.kernels.backend`), which runs the C kernel on the same blocks.
    """

    def __init__(self, data, qtype, shape):
        check_qtype(qtype)
        out_features, in_features = (int(n) for n in shape)
        check_cols(in_features, qtype)
        bytes_per_row = row_bytes(in_features, qtype)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
            raise TypeError(f"quantized data must be a uint8 numpy array, got "
                            f"{getattr(data, 'dtype', type(data).__name__)}")
        if data.size != out_features * bytes_per_row:
            raise ValueError(f"{qtype} matrix of shape {(out_features, in_features)} needs "
                             f"{out_features * bytes_per_row} bytes, got {data.size}")
        if not data.flags.c_contiguous:
            raise ValueError("quantized data must be C-contiguous")
        self.data = data.reshape(out_features, bytes_per_row)             # [out, row_bytes], a view
        self.qtype = qtype
        self.shape = (out_features, in_features)

    @classmethod
    def from_float(cls, w, qtype):
        """Quantize a float matrix w [out_features, in_features]."""
        w = np.asarray(w, dtype=np.float32)
        return cls(quantize(w, qtype), qtype, w.shape)

    @property
    def nbytes(self):
        return self.data.nbytes

    def __repr__(self):
        return f"QuantizedMatrix({self.qtype}, shape={self.shape}, {self.nbytes:,} bytes)"

    def dequantize(self):
        """The whole matrix as float32 [out, in] — for tests and tools, not for inference."""
        return dequantize(self.data, self.qtype)

    def rows(self, ids):
        """Dequantize only the rows `ids` (any shape of integers) → [*ids.shape, in]."""
        ids = np.asarray(ids)
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"row ids must be integers, got {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.shape[0]):
            raise IndexError(f"row ids must lie in [0, {self.shape[0]}), "
                             f"got {ids.min()}..{ids.max()}")
        picked = dequantize(self.data[ids.reshape(-1)], self.qtype)       # [n_ids, in]
        return picked.reshape(*ids.shape, self.shape[1])

    def check_input(self, x, features, name):
        if not isinstance(x, np.ndarray) or x.dtype != np.float32:
            raise TypeError(f"{name} must be a float32 numpy array, got "
                            f"{getattr(x, 'dtype', type(x).__name__)} (use .astype(np.float32))")
        if x.ndim == 0 or x.shape[-1] != features:
            raise ValueError(f"{name} must have shape [..., {features}] for a {self.shape} "
                             f"matrix, got {x.shape}")
        return np.ascontiguousarray(x.reshape(-1, features))             # [T, features]

    def matmul(self, x, int8_activations=False):
        """y = x @ W.T: x [..., in] float32 → [..., out]; with int8_activations, x is rounded
        to 8 bits per block first, as llama.cpp does (`quant_matmul_int8`), for the formats
        that have that product (INT8_PRODUCT_FORMATS); the others multiply in float32."""
        out_features, in_features = self.shape
        x2 = self.check_input(x, in_features, "x")                        # [T, in]
        int8 = int8_activations and self.qtype in INT8_PRODUCT_FORMATS
        product = quant_matmul_int8 if int8 else quant_matmul
        return product(self.data, self.qtype, x2).reshape(*x.shape[:-1], out_features)

    def matmul_t(self, dy):
        """dx = dy @ W: dy [..., out] float32 → [..., in] (NumPy, tile by tile)."""
        out_features, in_features = self.shape
        dy2 = self.check_input(dy, out_features, "dy")                   # [T, out]
        return quant_matmul_t(self.data, self.qtype, dy2).reshape(*dy.shape[:-1], in_features)


def dense(weight):
    """A weight as a float array: float arrays as they are (float64 stays float64, for
    gradient checks), a QuantizedMatrix dequantized — one matrix at a time, for tools and
    training, never a whole model for inference."""
    if isinstance(weight, np.ndarray):
        return weight if weight.dtype == np.float64 else weight.astype(np.float32, copy=False)
    return weight.dequantize()
