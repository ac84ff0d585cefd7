"""The C kernels' Python face, and the one switch between NumPy and C.

    native.py        each C kernel behind the checks that keep it in bounds (dtypes,
                     contiguity, shapes), and the thread count; `AVAILABLE` says whether
                     the extension (`llama_np.kernels._c`, built by cffi from kernels/)
                     was built
    decode_layer.py  the fused one-token transformer block (kernels/decode_layer.c)
    decode_batch.py  the same block, and the output head's product, for B sequences at once
                     (kernels/decode_layer_batch.c, kernels/quant_matvec_batch.c)
    backend.py       `backend(use_c)`: NUMPY or C, the ops a model runs with
    cpu.py           what the CPU is and which instruction sets it has (/proc/cpuinfo)

Imports: `llama_np.ops` and `llama_np.quant` (the NumPy references the kernels are tested
against, and the format table).
"""
from llama_np.kernels.backend import C, NUMPY, backend
from llama_np.kernels.decode_layer import DecodeLayer, DecodeStack
from llama_np.kernels.native import (AVAILABLE, FORMATS, attention_forward, ffi, get_num_threads, lib,
                                     quant_matmul, rmsnorm, rope_, set_num_threads, swiglu)
