"""Quantizing a checkpoint: which type each tensor gets, and the GGUF it is written to.

Which tensor becomes what, for --type F32, F16, Q8_0, Q4_1 and Q4_0:

    norms (1-D)                       F32 always: 0.02% of the weights, and every
                                      activation is multiplied by them
    token_embd / output (vocabulary)  --embed-type; by default Q8_0 when --type is 4-bit,
                                      else --type. With tied embeddings the one matrix is
                                      also the output head, whose errors go straight into
                                      the logits; SmolLM2's own Q4_1 file keeps it Q8_0 too
                                      (what a 4-bit one costs: docs/benchmarks.md#quantize)
    every other matrix                --type (F32, F16, Q8_0, Q4_1, Q4_0)

A matrix whose rows are not whole 32-weight blocks stays F32. For the 5-bit types and the
K-quant mixes (Q5_0, Q5_1, Q2_K, Q3_K_S/M/L, Q4_K_S/M, Q5_K_S/M, Q6_K) each tensor gets the
type llama.cpp's quantizer gives it (`llama_np.checkpoint.type_mix`), so the file has the
same types and, block for block, the same bytes; --embed-type, when given, still sets the
vocabulary matrices. Q/K rows are permuted to llama.cpp's order, and the tokenizer (from the GGUF's metadata, or built from the folder's
tokenizer.model / tokenizer.json) and chat template travel with the weights.

Quantizing what is already quantized: a tensor already of its target type is copied block
for block; turning blocks into F32 is exact (that is how to get an fp32 copy of a 4-bit
model). Any other change of a quantized tensor — Q4_1 → Q4_0, say — rounds a second time
on top of the first, so it is refused unless you pass --allow-requantize (llama.cpp's
llama-quantize has the same flag).
"""
import math
import os
from collections import Counter

import numpy as np

from llama_np.checkpoint import gguf_writer
from llama_np.checkpoint.gguf import load_gguf
from llama_np.checkpoint.safetensors import load_hf
from llama_np.checkpoint.type_mix import MIXES, mix_tensor_types
from llama_np.llama.weights import expected_shapes
from llama_np.checkpoint.calibration import CALIBRATION_TOKENS
from llama_np.quant import FORMATS, QuantizedMatrix

VOCABULARY_MATRICES = ("model.embed_tokens.weight", "lm_head.weight")
# recomputed for the new file rather than copied from a GGUF source
RECOMPUTED_KEYS = ("general.architecture", "general.file_type", "general.quantization_version",
                   "general.alignment")


def tensor_types(config, weight_type, embed_type):
    """Hugging Face tensor name → the type it is written as (see the module docstring);
    embed_type None: the default for weight_type."""
    if weight_type in MIXES:
        types = mix_tensor_types(config, weight_type)
        if embed_type is not None:
            for name in VOCABULARY_MATRICES:
                if name in types:
                    check_fits(name, config, embed_type)
                    types[name] = embed_type
        return types
    types = {}
    for name, shape in expected_shapes(config).items():
        if len(shape) == 1:
            types[name] = "F32"
            continue
        wanted = embed_type if name in VOCABULARY_MATRICES else weight_type
        blocks_fit = shape[-1] % FORMATS[wanted].block_weights == 0
        types[name] = wanted if blocks_fit or wanted in ("F32", "F16") else "F32"
    return types


def check_fits(name, config, type_name):
    cols = expected_shapes(config)[name][-1]
    block_weights = FORMATS[type_name].block_weights
    if cols % block_weights:
        raise ValueError(f"--embed-type {type_name}: {name} has rows of {cols} weights, not whole "
                         f"{block_weights}-weight blocks; choose a type whose blocks fit")


def file_type(weight_type):
    """general.file_type (llama.h's llama_ftype) of a file quantized with --type weight_type."""
    return MIXES[weight_type][0] if weight_type in MIXES else FORMATS[weight_type].file_type


def check_requantization(weights, types, source, allowed):
    """Refuse to change the type of an already quantized tensor, except to F32 (exact) or
    when `allowed`."""
    for name, weight in weights.items():
        if not isinstance(weight, QuantizedMatrix):
            continue
        target = types[name]
        if target in (weight.qtype, "F32") or allowed:
            continue
        raise ValueError(f"{source}: tensor {name} is already quantized ({weight.qtype}); "
                         f"re-quantizing it to {target} adds a second rounding error to the first. "
                         f"Quantize from the F32/F16 original, or pass --allow-requantize")


def load_source(path):
    """(config, weights by HF name, metadata to carry over) of a HF folder or a GGUF file."""
    if os.path.isdir(path):
        config, weights = load_hf(path)
        metadata = {"general.name": gguf_writer.string(os.path.basename(os.path.abspath(path)))}
        metadata.update(gguf_writer.tokenizer_metadata_from_hf_dir(path, config.vocab_size))
        return config, weights, metadata
    config, weights, gguf_file = load_gguf(path)
    if "tokenizer.ggml.tokens" not in gguf_file.metadata:
        raise ValueError(f"{path}: the GGUF has no tokenizer (tokenizer.ggml.*), which llama.cpp needs")
    return config, weights, gguf_writer.metadata_from_gguf(path, skip=RECOMPUTED_KEYS)


def summary(types, weights, out_path, seconds):
    """One line: what was written, by type, and how large it is."""
    counts = Counter(types.values())
    by_type = ", ".join(f"{n} {t}" for t, n in counts.most_common())
    size = os.path.getsize(out_path)
    n_weights = sum(math.prod(w.shape) for w in weights.values())
    return (f"wrote {out_path}: {len(types)} tensors ({by_type}), {size / 1e6:.1f} MB, "
            f"{size * 8 / n_weights:.2f} bits per weight, in {seconds:.1f} s")


def quantize_checkpoint(source, out, weight_type, embed_type, allow_requantize=False, progress=True,
                        calibration=None, method="importance"):
    """Write the model at `source` (a HF folder or a GGUF file) to the GGUF `out`, its
    matrices as `weight_type` (a type, or a llama.cpp mix such as Q4_K_M) and the vocabulary
    matrices as `embed_type` (None: weight_type's default). With `calibration` (the path of
    a text file), the projections are quantized against what the model feeds them on that
    text (`calibrate`; `method` "importance" or "gptq") instead of rounded to their nearest
    levels. Returns the tensor types and the weights written."""
    if calibration is not None:
        from llama_np.quant.gptq import check_gptq_type
        check_gptq_type(weight_type)
    config, weights, metadata = load_source(source)
    types = tensor_types(config, weight_type, embed_type)
    check_requantization(weights, types, source, allow_requantize)
    if calibration is not None:
        weights = calibrate(source, config, weights, types, calibration, method, progress)
    metadata["general.file_type"] = gguf_writer.u32(file_type(weight_type))
    metadata["general.quantization_version"] = gguf_writer.u32(gguf_writer.QUANTIZATION_VERSION)
    gguf_writer.write_llama_gguf(out, config, weights, types, metadata, progress=progress)
    return types, weights


CALIBRATION_METHODS = ("importance", "gptq")


def calibrate(source, config, weights, types, text_path, method="importance", progress=True):
    """The weights with every projection whose type the calibrated quantizers write (Q4_0,
    Q4_1, Q5_0, Q5_1, Q8_0) replaced by its calibrated blocks, from the float model's inputs
    on the text at `text_path` (`checkpoint.calibration`): "importance" weighs each weight's
    error by its input's mean square (`quant.importance`), "gptq" spreads the errors over
    the other columns through H (`quant.gptq`). The other tensors stay as they were."""
    from llama_np.checkpoint import load_tokenizer
    from llama_np.checkpoint.calibration import input_hessians, projection_names, read_calibration_text
    from llama_np.llama.model import Llama
    from llama_np.quant import dense
    from llama_np.quant.gptq import GRIDS, gptq_quantize
    from llama_np.quant.importance import importance_quantize
    from tqdm import tqdm

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; expected one of {', '.join(CALIBRATION_METHODS)}")
    text = read_calibration_text(text_path)
    projections = [name for name in projection_names(config) if types[name] in GRIDS]
    ids = load_tokenizer(source).encode(text)
    with tqdm(total=min(len(ids), CALIBRATION_TOKENS), unit="tok", desc="calibration",
              disable=not progress) as bar:
        hessians = input_hessians(Llama(config, weights), ids, progress=bar.update)
    weights = dict(weights)
    for name in tqdm(projections, desc=method, unit="matrix", disable=not progress):
        if method == "gptq":
            blocks, _ = gptq_quantize(dense(weights[name]), hessians[name], types[name])
        else:
            blocks, _ = importance_quantize(dense(weights[name]), np.diag(hessians[name]), types[name])
        weights[name] = QuantizedMatrix(blocks, types[name], weights[name].shape)
    return weights

