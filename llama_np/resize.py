"""`python -m llama_np.resize`: grow a model's embeddings and output head to an extended
vocabulary (the recipe's second step; the method is llama_np.chinese.resize).

    python -m llama_np.resize --tokenizer runs/tok --out runs/resized.gguf
"""
import argparse
import sys

from llama_np.cli import common as cli
from llama_np.chinese.defaults import DEFAULT_INIT, INIT_METHODS


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m llama_np.resize",
        description="Resize a model's embeddings and output head to an extended vocabulary.")
    p.add_argument("--model", default="default",
                   help=".gguf file or Hugging Face folder; 'default' = SmolLM2-135M-Instruct Q4_1")
    required = cli.required_group(p)
    required.add_argument("--tokenizer", required=True, metavar="DIR",
                          help="the extended tokenizer: a folder written by llama_np.extend_bpe (tokenizer.json "
                               "+ tokenizer.gguf) or a Hugging Face tokenizer folder")
    required.add_argument("--out", required=True,
                          help="output: a .gguf file (from a .gguf model) or a Hugging Face folder")
    p.add_argument("--init", choices=INIT_METHODS, default=DEFAULT_INIT,
                   help="new rows: mean of the token's old pieces, or mean of all old rows "
                        "(default: %(default)s)")
    cli.add_threads_arg(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cli.set_threads(args.threads)
    from llama_np.chinese.resize import resize_checkpoint

    old_vocab, new_vocab = resize_checkpoint(args.model, args.tokenizer, args.out, args.init)
    print(f"resized {old_vocab} → {new_vocab} tokens (new rows: {args.init}); wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    cli.run(main)
