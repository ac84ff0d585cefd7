"""`python -m llama_np.quantize`: quantize a LLaMA into a GGUF file that llama_np and
llama.cpp both run, with llama.cpp's own formats and, for its K-quant mixes, its choice of
type per tensor and its bytes.

    python -m llama_np.quantize path/to/hf_folder --type Q4_0 --out model.Q4_0.gguf
    python -m llama_np.quantize model.F32.gguf   --type Q4_K_M --out model.Q4_K_M.gguf
    python -m llama_np.quantize model.F16.gguf   --type Q8_0 --out model.Q8_0.gguf
    python -m llama_np.quantize default --type F32 --out smollm2.F32.gguf     # dequantize

The source (the first argument, or `--model` as in the other tools) is a Hugging Face folder
(config.json + safetensors + tokenizer) or a GGUF file. Norms stay F32, the vocabulary
matrices become --embed-type (Q8_0 when --type is Q4_0/Q4_1), every other matrix --type;
the 5-bit and K-quant types (Q5_0 … Q6_K, Q4_K_M, …) are llama.cpp's mixes, each tensor the
type llama.cpp's quantizer gives it. A tensor already quantized is copied as it is or turned into F32 exactly, and re-quantizing
it to another format needs --allow-requantize. The rules and their reasons:
llama_np.checkpoint.quantize.
"""
import argparse
import os
import sys
import time

from llama_np.cli import common as cli

WEIGHT_TYPES = ("F32", "F16", "Q8_0", "Q4_1", "Q4_0")
# llama.cpp's file types, each a mix of tensor types (llama_np.checkpoint.type_mix)
MIX_TYPES = ("Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S",
             "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K")
TENSOR_TYPES = WEIGHT_TYPES + ("Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q3_K", "Q2_K")  # for --embed-type
FOUR_BIT_TYPES = ("Q4_0", "Q4_1")
DEFAULT_4BIT_EMBED_TYPE = "Q8_0"
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m llama_np.quantize",
        description="Quantize a LLaMA (Hugging Face folder or F32/F16 GGUF) to a GGUF file with "
                    "llama.cpp's block formats: Q4_0, Q4_1, Q8_0 weights, or one of llama.cpp's "
                    "mixes (Q5_0 … Q6_K, the K-quants Q4_K_M etc.), or convert it to F32/F16.")
    p.add_argument("source", nargs="?", metavar="MODEL",
                   help="the model to quantize, given without --model (as in the examples)")
    required = cli.required_group(p)
    required.add_argument("--model", help="the model to quantize: a Hugging Face folder, a .gguf file, or "
                                          "'default' (SmolLM2-135M-Instruct Q4_1); required, here or as MODEL")
    required.add_argument("--type", required=True, choices=WEIGHT_TYPES + MIX_TYPES, dest="weight_type",
                          help="type of the weight matrices, or llama.cpp's file type (a mix: Q4_K_M, …)")
    required.add_argument("--out", required=True, help="the GGUF file to write (atomically)")
    p.add_argument("--embed-type", choices=TENSOR_TYPES, default=None,
                   help="type of token_embd and output; default: Q8_0 when --type is Q4_0/Q4_1, "
                        "llama.cpp's choice for its mixes, else --type")
    p.add_argument("--allow-requantize", action="store_true",
                   help="re-quantize tensors that are already quantized to another type "
                        "(their rounding errors add up)")
    p.add_argument("--calibration", metavar="TEXT", default=None,
                   help="a UTF-8 text file: quantize the projections so that their outputs on the model's "
                        "own activations over this text change least, instead of rounding each weight to "
                        "its nearest level (RTN); --type Q4_0, Q4_1, Q5_0, Q5_1 or Q8_0; the file has "
                        "ordinary blocks, which llama.cpp reads as ever. The first 16,384 tokens are read")
    p.add_argument("--calibration-method", choices=("importance", "gptq"), default="importance",
                   help="with --calibration: importance (each block's scale chosen to keep the weights that "
                        "meet large inputs most exact, llama.cpp's imatrix idea) or gptq (Frantar et al. "
                        "2022: each rounding error spread over the columns not yet rounded); README, "
                        "'Calibrated quantization', has what each gives (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    cli.add_threads_arg(p)
    args = p.parse_args(argv)
    if args.source is not None and args.model is not None:
        p.error(f"the model is given twice ({args.source!r} and --model {args.model!r}); give it once")
    if args.source is None and args.model is None:
        p.error("the following arguments are required: --model (or MODEL, without --model)")
    args.source = args.model = args.source if args.source is not None else args.model
    return args


def main(argv=None):
    args = parse_args(argv)
    cli.set_threads(args.threads)
    from llama_np.checkpoint.quantize import quantize_checkpoint, summary
    from llama_np.files import hub
    from llama_np.files.atomic import check_replaceable

    source = hub.resolve_model(args.source)
    if os.path.isdir(args.out):
        raise ValueError(f"--out {args.out} is a folder; give the path of the .gguf file to write")
    out_folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_folder):
        raise ValueError(f"--out {args.out}: the folder {out_folder} does not exist")
    check_replaceable(args.out)  # now, not after the work: a device, a FIFO, a link is refused
    if os.path.exists(args.out) and os.path.samefile(args.out, source):
        raise ValueError(f"--out {args.out} is the source itself; write to another file")
    embed_type = args.embed_type
    if embed_type is None and args.weight_type in WEIGHT_TYPES:
        embed_type = DEFAULT_4BIT_EMBED_TYPE if args.weight_type in FOUR_BIT_TYPES else args.weight_type

    start = time.perf_counter()
    types, weights = quantize_checkpoint(source, args.out, args.weight_type, embed_type,
                                         args.allow_requantize, progress=not args.quiet,
                                         calibration=args.calibration, method=args.calibration_method)
    print(summary(types, weights, args.out, time.perf_counter() - start), file=sys.stderr)
    return 0


if __name__ == "__main__":
    cli.run(main)
