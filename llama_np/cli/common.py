"""What the command-line tools share: the model and sampling flags, thread setup, and the
rule that a user's mistake ends in one clear line on stderr and a non-zero exit, never a
traceback.

Heavy imports (NumPy and what needs it) happen after the flags are parsed, so that
`--threads` can still set the BLAS thread count, and `--help` is instant.
"""
import argparse
import math
import os
import sys

from llama_np.llama import decoding_defaults as paper

# The KV cache's formats (llama_np.quant.kv_rows.KV_FORMATS; tests/test_kv_cache.py holds
# the two equal, and --help imports no NumPy), the tools' default first: f16, half the
# memory traffic of f32 for logits within 1e-2 (docs/benchmarks.md).
KV_CACHE_FORMATS = ("f16", "f32", "q8_0")

EXIT_USAGE = 2
EXIT_ERROR = 1


def add_model_args(parser, default_model="default"):
    parser.add_argument("--model", default=default_model,
                        help="a .gguf file or a Hugging Face folder (config.json + model.safetensors "
                             "+ tokenizer); 'default' = SmolLM2-135M-Instruct Q4_1, fetched once "
                             "(default: %(default)s)")
    parser.add_argument("--adapter", action="append", default=[], metavar="DIR",
                        help="a PEFT LoRA adapter folder applied without merging (repeatable)")
    parser.add_argument("--int8-activations", action="store_true",
                        help="round activations to 8 bits before each product with quantized weights, "
                             "as llama.cpp does (its integer arithmetic; slightly different logits, slower prompts, "
                             "no faster decoding on this machine: README)")
    parser.add_argument("--kv-cache", choices=KV_CACHE_FORMATS, default=KV_CACHE_FORMATS[0],
                        help="how the KV cache stores keys and values: f16 halves (rounded once, "
                             "half the memory of f32), f32 exact, q8_0 8-bit blocks (default: %(default)s)")
    add_threads_arg(parser)


def required_group(parser):
    """The "required arguments" section of a tool's --help: argparse would list required
    flags among the optional ones, marked only by the missing brackets in the usage line.
    Flags added here still need `required=True` (or a check after parsing that ends in
    `parser.error`, as finetune's --data, which --resume may supply)."""
    return parser.add_argument_group("required arguments")


def add_threads_arg(parser):
    parser.add_argument("--threads", type=thread_count, default=os.cpu_count() or 1,
                        help="CPU threads for the C kernels and BLAS (default: all cores, %(default)s)")


def add_sampling_args(parser):
    """The decoding flags; defaults are the paper's settings (llama_np.llama.decoding_defaults)."""
    g = parser.add_argument_group("sampling (defaults: the paper's settings)")
    g.add_argument("--temperature", type=non_negative_float, default=paper.PAPER_TEMPERATURE,
                   help="softmax temperature; 0 = greedy (default: %(default)s)")
    g.add_argument("--top-k", type=non_negative_int, default=paper.PAPER_TOP_K,
                   help="keep the k most likely tokens; 0 = off (default: %(default)s)")
    g.add_argument("--top-p", type=unit_float, default=paper.PAPER_TOP_P,
                   help="nucleus: keep the most likely tokens up to this probability mass (default: %(default)s)")
    g.add_argument("--repetition-penalty", type=positive_float, default=paper.PAPER_REPETITION_PENALTY,
                   help="divide (multiply) the positive (negative) logits of seen tokens; 1 = off "
                        "(default: %(default)s)")
    g.add_argument("--seed", type=non_negative_int, default=None, help="random seed for reproducible sampling")
    g.add_argument("--max-new-tokens", type=positive_int, default=paper.PAPER_MAX_NEW_TOKENS,
                   help="stop after this many new tokens (default: %(default)s)")
    g.add_argument("--ctx", type=positive_int, default=paper.PAPER_CONTEXT,
                   help="context length in tokens (default: %(default)s)")


def _number(kind, check, what):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"{text!r}: must be {what}")
        return value
    return parse


def max_threads():
    """The most threads a tool accepts: kernels.MAX_THREADS_PER_CORE per core. Written again
    here (not imported) because --threads is parsed before NumPy may be imported."""
    return 8 * (os.cpu_count() or 1)


positive_int = _number(int, lambda v: v > 0, "a positive integer")
non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: 0 < v < math.inf, "a finite number > 0")
non_negative_float = _number(float, lambda v: 0 <= v < math.inf, "a finite number >= 0")
unit_float = _number(float, lambda v: 0 < v <= 1, "in (0, 1]")
ratio = _number(float, lambda v: 0 <= v <= 1, "in [0, 1]")
dropout_probability = _number(float, lambda v: 0 <= v < 1, "in [0, 1)")
thread_count = _number(int, lambda v: 0 < v <= max_threads(),
                       f"between 1 and {max_threads()} (8 per core of this machine)")


def set_threads(n):
    """BLAS reads its thread count at import: set it before NumPy is first imported."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    from llama_np import kernels
    kernels.set_num_threads(n)


def sampling_settings(args):
    from llama_np.llama.sampling import SamplingSettings
    return SamplingSettings(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            repetition_penalty=args.repetition_penalty, seed=args.seed)


def load_for_inference(args):
    """(model, tokenizer) for --model and --adapter."""
    from llama_np.files import hub
    from llama_np.checkpoint import load_model

    model, tokenizer = load_model(hub.resolve_model(args.model))
    if args.adapter:
        from llama_np.checkpoint.peft import apply_adapters
        apply_adapters(model, args.adapter)
    if getattr(args, "int8_activations", False):
        model.set_int8_activations(True)
    model.kv_cache_format = getattr(args, "kv_cache", model.kv_cache_format)
    return model, tokenizer


def error(message):
    print(f"error: {message}", file=sys.stderr)


def run(main):
    """Run a CLI main(): expected failures become one line on stderr and exit code 1."""
    try:
        code = main()
    except KeyboardInterrupt:
        print(file=sys.stderr)
        code = 130
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        error(str(e) if str(e) else type(e).__name__)
        code = EXIT_ERROR
    sys.exit(code or 0)
