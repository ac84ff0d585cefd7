"""`python -m llama_np.quantize`: round-to-nearest (RTN) quantize a LLaMA into a GGUF file
that llama_np and llama.cpp both run.

    python -m llama_np.quantize path/to/hf_folder --type Q4_0 --out model.Q4_0.gguf
    python -m llama_np.quantize model.F16.gguf   --type Q8_0 --out model.Q8_0.gguf
    python -m llama_np.quantize default --type F32 --out smollm2.F32.gguf     # dequantize

The source (the first argument, or `--model` as in the other tools) is a Hugging Face folder
(config.json + safetensors + tokenizer) or a GGUF file. Which tensor becomes what:

    norms (1-D)                       F32 always: 0.02% of the weights, and every
                                      activation is multiplied by them
    token_embd / output (vocabulary)  --embed-type; by default Q8_0 when --type is 4-bit,
                                      else --type. With tied embeddings the one matrix is
                                      also the output head, whose errors go straight into
                                      the logits; SmolLM2's own Q4_1 file keeps it Q8_0 too.
                                      Measured on SmolLM2 Q4_0: a Q4_0 embedding instead
                                      raises perplexity by 8% (English and Chinese) and
                                      saves 14 MB of 92
    every other matrix                --type (F32, F16, Q8_0, Q4_1, Q4_0)

A matrix whose rows are not whole 32-weight blocks stays F32. Q/K rows are permuted to
llama.cpp's order, and the tokenizer (from the GGUF's metadata, or built from the folder's
tokenizer.model / tokenizer.json) and chat template travel with the weights.

Quantizing what is already quantized: a tensor already of its target type is copied block
for block; turning blocks into F32 is exact (that is how to get an fp32 copy of a 4-bit
model). Any other change of a quantized tensor — Q4_1 → Q4_0, say — rounds a second time
on top of the first, so it is refused unless you pass --allow-requantize (llama.cpp's
llama-quantize has the same flag).
"""
import argparse
import os
import sys
import time

from llama_np.cli import common as cli

WEIGHT_TYPES = ("F32", "F16", "Q8_0", "Q4_1", "Q4_0")
FOUR_BIT_TYPES = ("Q4_0", "Q4_1")
DEFAULT_4BIT_EMBED_TYPE = "Q8_0"
VOCABULARY_MATRICES = ("model.embed_tokens.weight", "lm_head.weight")
# recomputed for the new file rather than copied from a GGUF source
RECOMPUTED_KEYS = ("general.architecture", "general.file_type", "general.quantization_version",
                   "general.alignment")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m llama_np.quantize",
        description="Quantize a LLaMA (Hugging Face folder or F32/F16 GGUF) to a GGUF file with "
                    "Q4_0, Q4_1 or Q8_0 weights (RTN, llama.cpp's block formats), or convert it "
                    "to F32/F16.")
    p.add_argument("source", nargs="?", metavar="MODEL",
                   help="the model to quantize, given without --model (as in the examples)")
    required = cli.required_group(p)
    required.add_argument("--model", help="the model to quantize: a Hugging Face folder, a .gguf file, or "
                                          "'default' (SmolLM2-135M-Instruct Q4_1); required, here or as MODEL")
    required.add_argument("--type", required=True, choices=WEIGHT_TYPES, dest="weight_type",
                          help="type of the weight matrices")
    required.add_argument("--out", required=True, help="the GGUF file to write (atomically)")
    p.add_argument("--embed-type", choices=WEIGHT_TYPES, default=None,
                   help="type of token_embd and output; default: Q8_0 when --type is Q4_0/Q4_1, "
                        "else --type")
    p.add_argument("--allow-requantize", action="store_true",
                   help="re-quantize tensors that are already quantized to another type "
                        "(their rounding errors add up)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    cli.add_threads_arg(p)
    args = p.parse_args(argv)
    if args.source is not None and args.model is not None:
        p.error(f"the model is given twice ({args.source!r} and --model {args.model!r}); give it once")
    if args.source is None and args.model is None:
        p.error("the following arguments are required: --model (or MODEL, without --model)")
    args.source = args.model = args.source if args.source is not None else args.model
    return args


def tensor_types(config, weight_type, embed_type):
    """Hugging Face tensor name → the type it is written as (see the module docstring)."""
    from llama_np.llama.weights import expected_shapes
    from llama_np.quant import QK

    types = {}
    for name, shape in expected_shapes(config).items():
        if len(shape) == 1:
            types[name] = "F32"
            continue
        wanted = embed_type if name in VOCABULARY_MATRICES else weight_type
        blocks_fit = shape[-1] % QK == 0
        types[name] = wanted if blocks_fit or wanted in ("F32", "F16") else "F32"
    return types


def check_requantization(weights, types, source, allowed):
    """Refuse to change the type of an already quantized tensor, except to F32 (exact) or
    when `allowed`."""
    from llama_np.quant import QuantizedMatrix

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
    from llama_np.checkpoint import gguf_writer
    from llama_np.quant import FORMATS

    if os.path.isdir(path):
        from llama_np.checkpoint.safetensors import load_hf
        config, weights = load_hf(path)
        metadata = {"general.name": gguf_writer.string(os.path.basename(os.path.abspath(path)))}
        metadata.update(gguf_writer.tokenizer_metadata_from_hf_dir(path, config.vocab_size))
        return config, weights, metadata
    from llama_np.checkpoint.gguf import load_gguf
    config, weights, gguf_file = load_gguf(path)
    if "tokenizer.ggml.tokens" not in gguf_file.metadata:
        raise ValueError(f"{path}: the GGUF has no tokenizer (tokenizer.ggml.*), which llama.cpp needs")
    return config, weights, gguf_writer.metadata_from_gguf(path, skip=RECOMPUTED_KEYS)


def summary(types, weights, out_path, seconds):
    """One line: what was written, by type, and how large it is."""
    import math
    from collections import Counter

    counts = Counter(types.values())
    by_type = ", ".join(f"{n} {t}" for t, n in counts.most_common())
    size = os.path.getsize(out_path)
    n_weights = sum(math.prod(w.shape) for w in weights.values())
    return (f"wrote {out_path}: {len(types)} tensors ({by_type}), {size / 1e6:.1f} MB, "
            f"{size * 8 / n_weights:.2f} bits per weight, in {seconds:.1f} s")


def main(argv=None):
    args = parse_args(argv)
    cli.set_threads(args.threads)
    from llama_np.files import hub
    from llama_np.checkpoint import gguf_writer
    from llama_np.quant import FORMATS

    source = hub.resolve_model(args.source)
    if os.path.isdir(args.out):
        raise ValueError(f"--out {args.out} is a folder; give the path of the .gguf file to write")
    out_folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_folder):
        raise ValueError(f"--out {args.out}: the folder {out_folder} does not exist")
    if os.path.exists(args.out) and os.path.samefile(args.out, source):
        raise ValueError(f"--out {args.out} is the source itself; write to another file")
    embed_type = args.embed_type or (DEFAULT_4BIT_EMBED_TYPE if args.weight_type in FOUR_BIT_TYPES
                                     else args.weight_type)

    start = time.perf_counter()
    config, weights, metadata = load_source(source)
    types = tensor_types(config, args.weight_type, embed_type)
    check_requantization(weights, types, source, args.allow_requantize)
    metadata["general.file_type"] = gguf_writer.u32(FORMATS[args.weight_type].file_type)
    metadata["general.quantization_version"] = gguf_writer.u32(gguf_writer.QUANTIZATION_VERSION)
    gguf_writer.write_llama_gguf(args.out, config, weights, types, metadata, progress=not args.quiet)
    print(summary(types, weights, args.out, time.perf_counter() - start), file=sys.stderr)
    return 0


if __name__ == "__main__":
    cli.run(main)
