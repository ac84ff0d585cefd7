"""The fused decode layer: one transformer block for one new token in a single C call
(kernels/decode_layer.c), the compiled form of `llama_np.llama.model.block_forward` with
quantized (or float32) products and attention over the KV cache. A test holds the two to
each other (tests/test_decode_kernels.py)."""
import numpy as np

from llama_np.kernels import native
from llama_np.kernels.native import FORMATS, get_num_threads, require_array
from llama_np.quant import QK, QuantizedMatrix

_DECODE_MATRICES = ("q", "k", "v", "o", "gate", "up", "down")


class DecodeLayer:
    """One transformer block for `decode_layers_f32`: the whole block for one new token in a
    single C call (kernels/decode_layer.c; its reference is `block_forward`).

    The weights are checked once, here, and kept as C pointers (with the arrays they point
    into, so that those stay alive); each call then checks only the per-token arguments.
    `layer` maps the keys of `llama_np.llama.weights.layer_weight_names` to weights, each a
    QuantizedMatrix or a float32 [out, in] array; `int8_activations` rounds the activations
    to 8 bits before each quantized product (llama.cpp's arithmetic). Raises TypeError or
    ValueError for weights the kernel cannot take (the model then runs `block_forward`)."""

    def __init__(self, layer, config, int8_activations=False):
        hd, n_q, n_kv = config.head_dim, config.num_attention_heads, config.num_key_value_heads
        dim, hidden = config.hidden_size, config.intermediate_size   # LlamaConfig checked n_q % n_kv
        expected = {"q": (n_q * hd, dim), "k": (n_kv * hd, dim), "v": (n_kv * hd, dim), "o": (dim, n_q * hd),
                    "gate": (hidden, dim), "up": (hidden, dim), "down": (dim, hidden)}
        self._keep = []                                     # every buffer a pointer points into
        self.weights = native.ffi.new("block_weights *")
        for key in _DECODE_MATRICES:
            w = layer[key]
            if isinstance(w, QuantizedMatrix):
                data, fmt = w.data, w.qtype
                if fmt not in native.BLOCK_FORMATS:
                    raise ValueError(f"{key}: no C kernel for {fmt} weights")
            elif isinstance(w, np.ndarray):
                require_array(w, key, np.float32, 2)
                data, fmt = w, "F32"
            else:
                raise TypeError(f"{key}: the fused decode kernel takes quantized or float32 weights, "
                                f"not {type(w).__name__}")
            if tuple(w.shape) != expected[key]:
                raise ValueError(f"{key}: shape {tuple(w.shape)}, expected {expected[key]}")
            if w.shape[1] % QK:
                raise ValueError(f"{key}: rows of {w.shape[1]} weights, not a multiple of {QK}")
            buffer = native.ffi.from_buffer("uint8_t[]", data)
            alignment = 4 if fmt == "F32" else 2                 # floats; fp16 scales
            if int(native.ffi.cast("uintptr_t", buffer)) % alignment:
                raise ValueError(f"{key}: weights must start at a {alignment}-byte aligned address")
            self._keep.append(buffer)
            matrix = getattr(self.weights, key)
            matrix.data, matrix.format, matrix.rows, matrix.cols = buffer, FORMATS[fmt], *w.shape
        for key in ("attn_norm", "mlp_norm"):
            require_array(layer[key], key, np.float32, 1)
            if layer[key].shape != (dim,):
                raise ValueError(f"{key}: shape {layer[key].shape}, expected ({dim},)")
            buffer = native.ffi.from_buffer("float[]", layer[key])
            self._keep.append(buffer)
            setattr(self.weights, key, buffer)
        self.shape = native.ffi.new("block_shape *", {
            "dim": dim, "n_heads": n_q, "n_kv_heads": n_kv, "head_dim": hd, "hidden_dim": hidden,
            "norm_eps": config.rms_norm_eps, "rope_theta": config.rope_theta,
            "int8_activations": int(bool(int8_activations))})
        self.cache_row = (n_kv, hd)

    def __call__(self, h, k_cache, v_cache, position, inv_freq=None, attention_factor=1.0):
        """h [1, D] float32, updated in place; k_cache and v_cache [max_len, H_kv, width],
        this layer's cache in any KV format (`quant.kv_rows`: float32, float16 or Q8_0 bytes),
        whose row `position` is written (rounded to the format) and rows 0 … position read.
        A scaled RoPE (`llama.rope_scaling`) passes its frequencies inv_freq [hd/2] float32
        and attention factor; None is θ^(-2i/hd), computed in C from rope_theta."""
        _decode(native.ffi.new("const block_weights *[]", [self.weights]), self, h, k_cache[None],
                v_cache[None], position, inv_freq, attention_factor)


class DecodeStack:
    """Every block of a model for one new token in a single C call (`decode_layers_f32`):
    one OpenMP team runs the blocks one after the other, its threads meeting at barriers
    in between instead of waiting, asleep, for Python to make the next call. The same
    floats as calling each `DecodeLayer` in turn."""

    def __init__(self, layers):
        self.layers = list(layers)          # the DecodeLayers, which keep the weights alive
        first = self.layers[0]
        for layer in self.layers[1:]:
            if (layer.cache_row != first.cache_row or layer.shape.dim != first.shape.dim
                    or layer.shape.int8_activations != first.shape.int8_activations):
                raise ValueError("the blocks of one stack must have one shape")
        self.pointers = native.ffi.new("const block_weights *[]", [layer.weights for layer in self.layers])

    def __call__(self, h, k_stack, v_stack, position, inv_freq=None, attention_factor=1.0):
        """h [1, D] float32, updated in place by every block; k_stack, v_stack [n_layers,
        max_len, H_kv, width]: the whole cache (`KVCache.k`, `.v`), layer l's for block l;
        the rest as for DecodeLayer."""
        if len(k_stack) != len(self.layers) or len(v_stack) != len(self.layers):
            raise ValueError(f"{len(self.layers)} blocks need as many cache layers, got {len(k_stack)}")
        _decode(self.pointers, self.layers[0], h, k_stack, v_stack, position, inv_freq, attention_factor)


def _decode(pointers, first, h, k_stack, v_stack, position, inv_freq, attention_factor):
    """decode_layers_f32 on the blocks `pointers` (shape and cache rows those of `first`)."""
    require_array(h, "h", np.float32, 2)
    kv_format = native.kv_cache_format(k_stack[0], v_stack[0], *first.cache_row)
    if h.shape != (1, first.shape.dim):
        raise ValueError(f"h: shape {h.shape}, expected (1, {first.shape.dim})")
    if not 0 <= position < k_stack.shape[1]:
        raise ValueError(f"position {position} outside the cache of {k_stack.shape[1]} rows")
    if not (k_stack.flags.c_contiguous and v_stack.flags.c_contiguous and k_stack.strides == v_stack.strides):
        raise ValueError("the keys and values must be C-contiguous caches of one shape")
    shape = first.shape
    shape.rope_inv_freq, shape.rope_attention_factor = native.ffi.NULL, 1.0
    if inv_freq is not None:
        require_array(inv_freq, "inv_freq", np.float32, 1)
        if inv_freq.shape != (first.cache_row[1] // 2,):
            raise ValueError(f"inv_freq: shape {inv_freq.shape}, expected ({first.cache_row[1] // 2},)")
        table = native.ffi.from_buffer("float[]", inv_freq)       # alive until the call returns
        shape.rope_inv_freq, shape.rope_attention_factor = table, float(attention_factor)
    status = native.lib.decode_layers_f32(
        native.ffi.from_buffer("float[]", h, require_writable=True), pointers, len(k_stack), shape,
        native.ffi.from_buffer("uint8_t[]", k_stack, require_writable=True),
        native.ffi.from_buffer("uint8_t[]", v_stack, require_writable=True), k_stack.strides[0],
        kv_format, int(position), get_num_threads())
    if status != 0:
        raise MemoryError("no scratch memory for the decode step")
