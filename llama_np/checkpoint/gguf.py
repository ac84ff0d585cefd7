"""LLaMA weights from a GGUF file, under Hugging Face names and conventions.

Two things differ from a Hugging Face checkpoint:
- tensor names: `blk.{i}.attn_q.weight` is `model.layers.{i}.self_attn.q_proj.weight`, …
- the rows of attn_q / attn_k are permuted: llama.cpp rotates adjacent pairs
  (x[2i], x[2i+1]) where Hugging Face rotates (x[i], x[i + hd/2]); convert_hf_to_gguf.py
  reorders the rows of every head so both compute the same thing. `unpermute_qk` undoes it.
  A row permutation moves whole rows, so it is exact on block-quantized rows too.

Quantized tensors stay quantized (`QuantizedMatrix` over the blocks, read once into memory: see
`GGUFFile.read_into_memory`).
"""
from llama_np.checkpoint.gguf_file import GGUFError, GGUFFile
from llama_np.llama.config import LlamaConfig
from llama_np.llama.rope_scaling import GGUF_FREQ_FACTORS, RopeScalingError, freq_factors_scaling
from llama_np.llama.weights import check_weights
from llama_np.quant import QuantizedMatrix

# GGUF tensor name → Hugging Face name; `{i}` is the layer index.
GGUF_TO_HF = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}
HF_TO_GGUF = {hf: gg for gg, hf in GGUF_TO_HF.items()}


def _translate(name, table):
    """Map one tensor name through `table`, whose keys may contain a `{i}` layer index."""
    parts = name.split(".")
    for idx, part in enumerate(parts):
        if part.isdigit():  # the layer index: look up the pattern with {i} in its place
            pattern = ".".join(parts[:idx] + ["{i}"] + parts[idx + 1:])
            if pattern in table:
                return table[pattern].format(i=part)
    return table.get(name)


def hf_name(gguf_name):
    """The Hugging Face name of a GGUF tensor, or None if llama_np does not use it."""
    return _translate(gguf_name, GGUF_TO_HF)


def gguf_name(hf_tensor_name):
    """The GGUF name of a Hugging Face tensor, or None."""
    return _translate(hf_tensor_name, HF_TO_GGUF)


def permute_qk(w, n_heads):
    """Hugging Face rows → llama.cpp rows (convert_hf_to_gguf.py): within each head, the
    rows of the two halves are interleaved. Works on [rows, anything] arrays."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w, n_heads):
    """llama.cpp rows → Hugging Face rows: the inverse of permute_qk."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_tensor(gguf, name):
    """One tensor: float32 for F32/F16/BF16, a QuantizedMatrix for Q4_0/Q4_1/Q8_0."""
    info = gguf.tensors[name]
    if info.type_name in ("F32", "F16", "BF16"):
        return gguf.tensor_float(name)
    if len(info.shape) != 2:
        raise GGUFError(f"{gguf.path}: tensor {name!r} is {info.type_name} with shape {info.shape}; "
                        f"quantized tensors must be matrices")
    data = gguf.tensor_data(name)  # [rows, row_bytes], validated
    return QuantizedMatrix(data, info.type_name, info.shape)


def _freq_factors(gguf, config, source):
    """The scaling of a file's rope_freqs.weight; GGUFError if it is malformed or the file
    also names a scaling type (llama_np does not compose the two)."""
    if config.rope_scaling is not None:
        raise GGUFError(f"{source}: both {GGUF_FREQ_FACTORS} and llama.rope.scaling.type "
                        f"{config.rope_scaling['rope_type']!r}; llama_np reads one RoPE scaling")
    try:
        return freq_factors_scaling(gguf.tensor_float(GGUF_FREQ_FACTORS), config.head_dim)
    except RopeScalingError as e:
        raise GGUFError(f"{source}: {e}") from None


def load_gguf(path):
    """Read a llama GGUF: returns (config, weights by HF name, the GGUFFile for its metadata)."""
    return load_gguf_from(GGUFFile(path))


def load_gguf_from(gguf):
    """load_gguf for a GGUFFile already open (its header read): reads its tensors (into
    memory, unless they are there already)."""
    path = gguf.path
    if not gguf.in_memory:
        gguf.read_into_memory()  # the weights in large pages (see there), writable
    config = LlamaConfig.from_gguf_metadata(gguf.metadata, source=str(path))
    config.tie_word_embeddings = "output.weight" not in gguf.tensors
    if GGUF_FREQ_FACTORS in gguf.tensors:   # llama3's scaled RoPE, as convert_hf_to_gguf.py writes it
        config.rope_scaling = _freq_factors(gguf, config, str(path))
    config.check_fits(gguf.n_bytes - gguf.data_start, source=str(path))
    weights = {}
    for name, info in gguf.tensors.items():
        target = hf_name(name)
        if target is None:
            continue  # a tensor llama_np has no use for
        tensor = read_tensor(gguf, name)
        if name.endswith("attn_q.weight") or name.endswith("attn_k.weight"):
            n_heads = config.num_attention_heads if "attn_q" in name else config.num_key_value_heads
            if tensor.shape[0] % (2 * n_heads):
                raise GGUFError(f"{path}: tensor {name!r} has {tensor.shape[0]} rows, "
                                f"not divisible into {n_heads} heads")
            rows = tensor.data if isinstance(tensor, QuantizedMatrix) else tensor
            rows[...] = unpermute_qk(rows, n_heads)  # in place: the file was read into our memory
        weights[target] = tensor
    check_weights(config, {k: v for k, v in weights.items()}, source=str(path))
    return config, weights, gguf
