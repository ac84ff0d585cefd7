"""Batched decoding: B sequences, one new token each, through the same weights at once —
the fused block (kernels/decode_layer_batch.c) and the quantized products of the output
head (kernels/quant_matvec_batch.c). Each weight block is unpacked once for all B rows,
and every row is computed exactly as the one-token kernels compute it (`DecodeLayer`,
`quant_matmul` of one row), so a sequence's numbers never depend on the others in the
batch (tests/test_serve_batch.py)."""
import numpy as np

from llama_np import quant
from llama_np.kernels import native
from llama_np.kernels.decode_layer import DecodeLayer
from llama_np.kernels.native import FORMATS, check_blocks, get_num_threads, require_array


def decode_layer_batch(layer: DecodeLayer, h, k_caches, v_caches, positions, rotations=None):
    """Block `layer` for B sequences: h [B, D] float32, updated in place, row b the new token
    of sequence b; k_caches[b], v_caches[b] [max_len, H_kv, width] its cache for this layer,
    all in one KV format (`quant.kv_rows`: float32, float16 or Q8_0 bytes), whose row
    positions[b] is written (rounded to the format) and rows 0 … positions[b] read. `rotations`:
    each row's (inv_freq [hd/2] float32 or None, attention_factor), a scaled RoPE's
    (`llama.rope_scaling`); None: every row unscaled."""
    step = BatchStep([layer], [k[None] for k in k_caches], [v[None] for v in v_caches], positions, rotations)
    step.run(h)


class BatchStep:
    """One batched decoding step through every block `layers` (DecodeLayers) in a single C
    call (`decode_layers_batch_f32`): one OpenMP team runs block after block, its threads
    meeting at barriers in between instead of waiting, asleep, for Python's next call.

    k_stacks[b], v_stacks[b]: sequence b's whole cache [n_layers, max_len, H_kv, width]
    (`KVCache.k`, `.v`); `run(h)` steps h [B, D] through all the blocks."""

    def __init__(self, layers, k_stacks, v_stacks, positions, rotations=None):
        self.layers = list(layers)
        layer = self.layers[0]
        self.positions = np.ascontiguousarray(positions, dtype=np.int64).reshape(-1)
        n_rows = self.n_rows = len(self.positions)
        if not len(k_stacks) == len(v_stacks) == n_rows:
            raise ValueError(f"{n_rows} rows need as many caches and positions, got "
                             f"{len(k_stacks)}, {len(v_stacks)}, {n_rows}")
        formats = {native.kv_cache_format(k[0], v[0], *layer.cache_row) for k, v in zip(k_stacks, v_stacks)}
        if len(formats) > 1:
            raise ValueError("the caches of one batched step must share one KV format")
        self.format = formats.pop() if formats else None
        self.keep = []                                   # the buffers the pointers point into
        self.k_bases, self.v_bases = [], []
        for stacks, bases in ((k_stacks, self.k_bases), (v_stacks, self.v_bases)):
            for cache, position in zip(stacks, self.positions):
                if not (cache.flags.c_contiguous and 0 <= position < cache.shape[1]):
                    raise ValueError(f"position {position} outside the cache of {cache.shape[1]} rows"
                                     if cache.flags.c_contiguous else "KV caches must be C-contiguous")
                self.keep.append(native.ffi.from_buffer("uint8_t[]", cache, require_writable=True))
                bases.append(self.keep[-1])
        # each sequence's cache has room for its own number of positions (KVCache grows with
        # use), so each has its own distance between layers; keys and values share it
        for k, v in zip(k_stacks, v_stacks):
            if k.strides[0] != v.strides[0]:
                raise ValueError(f"a sequence's keys and values must have one shape, got {k.shape} and {v.shape}")
        self.layer_bytes = np.array([k.strides[0] for k in k_stacks], dtype=np.int64)      # [B]
        self.n_layers = min(len(k) for k in k_stacks) if n_rows else 0
        self.tables, self.factors = native.ffi.NULL, native.ffi.NULL
        if rotations is not None and any(inv_freq is not None for inv_freq, _ in rotations):
            if len(rotations) != n_rows:
                raise ValueError(f"{n_rows} rows need as many rotations, got {len(rotations)}")
            pointers = []
            for inv_freq, _ in rotations:
                if inv_freq is None:
                    pointers.append(native.ffi.NULL)
                    continue
                require_array(inv_freq, "inv_freq", np.float32, 1)
                if inv_freq.shape != (layer.cache_row[1] // 2,):
                    raise ValueError(f"inv_freq: shape {inv_freq.shape}, expected ({layer.cache_row[1] // 2},)")
                self.keep.append(native.ffi.from_buffer("float[]", inv_freq))
                pointers.append(self.keep[-1])
            self.tables = native.ffi.new("const float *[]", pointers)
            self.factors = native.ffi.new("float[]", [float(factor) for _, factor in rotations])
        self.position_buffer = native.ffi.from_buffer("int64_t[]", self.positions)
        self.layer_bytes_buffer = native.ffi.from_buffer("int64_t[]", self.layer_bytes)
        if self.n_rows and self.n_layers < len(self.layers):
            raise ValueError(f"{len(self.layers)} blocks need as many cache layers, got {self.n_layers}")
        self.weights = native.ffi.new("const block_weights *[]", [layer.weights for layer in self.layers])
        self.k_pointers = native.ffi.new("uint8_t *[]", self.k_bases)
        self.v_pointers = native.ffi.new("uint8_t *[]", self.v_bases)

    def run(self, h):
        """Every block on h [B, D], in place."""
        require_array(h, "h", np.float32, 2)
        layer = self.layers[0]
        if h.shape[0] != self.n_rows:
            raise ValueError(f"{h.shape[0]} rows need as many caches and positions, got {self.n_rows}")
        if h.shape[1] != layer.shape.dim:
            raise ValueError(f"h: shape {h.shape}, expected (B, {layer.shape.dim})")
        if self.n_rows == 0:
            return
        status = native.lib.decode_layers_batch_f32(
            native.ffi.from_buffer("float[]", h, require_writable=True), self.weights, len(self.layers),
            layer.shape, self.k_pointers, self.v_pointers, self.layer_bytes_buffer, self.format, self.position_buffer,
            self.tables, self.factors, self.n_rows, get_num_threads())
        if status != 0:
            raise MemoryError(f"no scratch memory for a decode step of {self.n_rows} sequences")


def quant_matvec_batch(data, qtype, x, int8_activations=False):
    """x @ W.T for B rows x [B, in] float32, W quantized (data uint8 [out, row_bytes] of
    `qtype` blocks) → [B, out], each row exactly `native.quant_matmul(data, qtype, x[b:b+1],
    int8_activations)`. A format without a kernel (`native.BLOCK_FORMATS`) runs the NumPy
    product one row at a time, as the C backend multiplies one row by it."""
    if qtype not in native.BLOCK_FORMATS and isinstance(x, np.ndarray) and x.ndim == 2:
        product = quant.quant_matmul_int8 if int8_activations else quant.quant_matmul
        return np.concatenate([product(data, qtype, x[b:b + 1]) for b in range(x.shape[0])]
                              ).reshape(x.shape[0], data.shape[0])
    require_array(x, "x", np.float32, 2)
    n_rows, in_features = x.shape
    w_buffer = check_blocks(data, qtype, in_features, "quantized kernel")
    out_features = data.shape[0]
    out = np.empty((n_rows, out_features), dtype=np.float32)                  # [B, out]
    if native.lib.quant_matvec_batch_f32(FORMATS[qtype], native.ffi.from_buffer("float[]", out, require_writable=True),
                                         w_buffer, native.ffi.from_buffer("float[]", x), n_rows,
                                         out_features, in_features, bool(int8_activations),
                                         get_num_threads()) != 0:
        raise MemoryError(f"no scratch memory for {n_rows} x {in_features} activations")
    return out
