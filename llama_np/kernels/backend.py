"""The one switch between NumPy and C: a backend is the set of ops a model runs with.

    backend = kernels.backend(use_c=True)      # C where the extension was built, else NumPy
    y = backend.matmul(x, weight)              # float32 or QuantizedMatrix weight
    y = backend.rmsnorm(x, weight, eps); backend.rope(x, positions, theta); backend.attention(q, k, v)
    a = backend.swiglu(gate, up)               # silu(gate) ⊙ up, the MLP's gate
    w = backend.dequantize(data, qtype)        # quantized rows → float32 (training's frozen base)

`NUMPY` runs every op as its reference (`llama_np.ops`, `llama_np.quant`); `C` runs the
kernels of `kernels/` (each behind the argument checks of `llama_np.kernels.native`),
quantized products included, and offers the fused one-token decode layer. A model holds
one backend and calls every op through it, so `Llama(use_kernels=False)` really is NumPy
from the embedding to the logits. Plain float32 products are NumPy's (BLAS) in both.
"""
import numpy as np

from llama_np import ops, quant
from llama_np.quant import kv_rows
from llama_np.kernels import native
from llama_np.kernels.decode_layer import DecodeLayer


class NumpyBackend:
    """Every op as its NumPy reference."""
    name = "numpy"

    def rmsnorm(self, x, weight, eps):
        return ops.rmsnorm_forward(x, weight, eps)[0]                     # [T, D]

    def rope(self, x, positions, theta, inv_freq=None, attention_factor=1.0):
        return ops.rope_forward(x, positions, theta, inv_freq, attention_factor)[0]  # [T, H, hd]

    def swiglu(self, gate, up):
        return ops.swiglu_forward(gate, up)[0]                            # [T, F]

    def attention(self, q, k, v):
        """q [T, H, hd] over KV cache rows k, v [S, H_kv, width] as stored (`quant.kv_rows`):
        the textbook attention over the dequantized rows."""
        head_dim = q.shape[-1]
        return ops.attention_forward(q, kv_rows.decode(k, head_dim), kv_rows.decode(v, head_dim))[0]  # [T, H·hd]

    def matmul(self, x, weight, int8_activations=False):
        """x @ W.T: x [..., in] float32, W a float32 [out, in] array or a QuantizedMatrix →
        [..., out]. `int8_activations` rounds x to 8 bits per block before a quantized
        product (llama.cpp's arithmetic)."""
        if isinstance(weight, np.ndarray):
            return x @ weight.T
        return weight.matmul(x, int8_activations)

    def dequantize(self, data, qtype):
        """Quantized rows data uint8 [rows, row_bytes] of `qtype` → float32 [rows, cols]."""
        return quant.dequantize(data, qtype)

    def decode_layers(self, layers, config, int8_activations=False):
        """The fused one-token block for each layer, or None where there is none."""
        return None


class CBackend(NumpyBackend):
    """The C kernels."""
    name = "c"

    def rmsnorm(self, x, weight, eps):
        return native.rmsnorm(x, weight, eps)

    def rope(self, x, positions, theta, inv_freq=None, attention_factor=1.0):
        return native.rope_(x, positions, theta, inv_freq, attention_factor)  # in place

    def swiglu(self, gate, up):
        return native.swiglu(gate, up)

    def attention(self, q, k, v):
        return native.attention_forward(q, k, v)

    def matmul(self, x, weight, int8_activations=False):
        """As NumPy's, in C for every block format that has a kernel (`native.BLOCK_FORMATS`);
        a format without one (Q2_K, Q3_K) runs its NumPy product."""
        if isinstance(weight, np.ndarray):
            return x @ weight.T
        if weight.qtype not in native.BLOCK_FORMATS:
            return weight.matmul(x, int8_activations)
        x_rows = weight.check_input(x, weight.shape[1], "x")              # [T, in]
        y = native.quant_matmul(weight.data, weight.qtype, x_rows, int8_activations)
        return y.reshape(*x.shape[:-1], weight.shape[0])                  # [..., out]

    def dequantize(self, data, qtype):
        """As NumPy's (bit for bit), in C for every block format with a kernel, over all threads."""
        if qtype not in native.BLOCK_FORMATS:
            return quant.dequantize(data, qtype)
        return native.dequantize(np.ascontiguousarray(data), qtype)

    def decode_layers(self, layers, config, int8_activations=False):
        """A `DecodeLayer` per layer, or None when some layer's weights are of a kind the
        fused kernel does not take (the model then runs `block_forward`)."""
        try:
            return [DecodeLayer(layer, config, int8_activations) for layer in layers]
        except (TypeError, ValueError):
            return None


NUMPY = NumpyBackend()
C = CBackend() if native.AVAILABLE else None


def backend(use_c=True):
    """The C backend when asked for and built, else NumPy."""
    return C if use_c and C is not None else NUMPY
