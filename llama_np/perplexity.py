"""`python -m llama_np.perplexity`: how well a model predicts a text, the way llama.cpp's
llama-perplexity measures it — the standard yardstick for what quantization costs.

    python -m llama_np.perplexity --model model.Q4_0.gguf --file wiki.txt
    python -m llama_np.perplexity --corpus cmrc2018 --n-ctx 512 --chunks 16 --json

Perplexity is exp(mean negative log-likelihood) of the tokens: PPL = exp(-1/N Σ log p(tᵢ | t<ᵢ)),
"as unsure as a uniform choice among PPL tokens". llama.cpp's recipe:

1. Tokenize the whole text and cut it into windows of n_ctx tokens (the tail that does
   not fill a window is dropped). If the model adds BOS, each window's first token is
   replaced by BOS.
2. Run each window from an empty context, and score only its second half: the tokens at
   positions n_ctx/2 + 1 … n_ctx - 1, each predicted from the logits one position before.
   Every scored token so sees at least n_ctx/2 tokens of context; the first tokens of a
   window, predicted from almost nothing, would otherwise dominate the average.
3. PPL = exp(mean NLL) ± the standard error of that mean, carried through exp:
   error = PPL · sqrt((mean(NLL²) - mean(NLL)²) / (N - 1)).

Perplexities of models with different tokenizers are not comparable (fewer, longer tokens
mean fewer, harder guesses). Bits per character and per byte are: the same total NLL,
in bits, divided by the characters (or UTF-8 bytes) of text the scored tokens spell.

`--corpus` names a built-in evaluation text from the data mirror (docs/data.md#the-files):
"alpaca_en" — the 999 `output` answers of alpaca_en_demo.json, joined by blank lines;
"cmrc2018" — the 84 held-out cmrc2018 Wikipedia paragraphs (llama_np.chinese.corpus), likewise.
"""
import argparse
import json
import sys
from dataclasses import asdict

from llama_np.cli import common as cli
from llama_np.chinese.corpus import EVALUATION_TEXTS, evaluation_text
from llama_np.files.text import read_utf8
from llama_np.llama.perplexity import DEFAULT_N_CTX, perplexity



def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m llama_np.perplexity",
        description="llama.cpp-style perplexity of a model on a text: windows of --n-ctx tokens, "
                    "second half of each scored; also bits per character and per byte.")
    cli.add_model_args(p)
    source = cli.required_group(p).add_mutually_exclusive_group(required=True)
    source.add_argument("--file", help="a UTF-8 text file (this or --corpus)")
    source.add_argument("--corpus", choices=EVALUATION_TEXTS,
                        help="a built-in text: alpaca_en (English answers of alpaca_en_demo.json) "
                             "or cmrc2018 (held-out Chinese Wikipedia paragraphs)")
    p.add_argument("--n-ctx", "--ctx", dest="n_ctx", type=cli.positive_int, default=DEFAULT_N_CTX,
                   help="tokens per window (default: %(default)s)")
    p.add_argument("--chunks", type=cli.positive_int, default=None,
                   help="evaluate at most this many windows (default: all the text)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (ppl, bits_per_char, bits_per_byte, tokens, chars, …) on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cli.set_threads(args.threads)
    if args.n_ctx < 4:
        raise ValueError(f"--n-ctx {args.n_ctx} is too small: a window needs a second half to score")
    text = read_utf8(args.file, what="the text") if args.file else evaluation_text(args.corpus)
    model, tokenizer = cli.load_for_inference(args)
    if args.n_ctx > model.config.max_context:
        raise ValueError(f"--n-ctx {args.n_ctx} exceeds the model's context of "
                         f"{model.config.max_context} positions")
    ids = tokenizer.encode(text)
    result = perplexity(model, tokenizer, ids, args.n_ctx, args.chunks, progress=not args.quiet)
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print(result.summary())
    return 0


if __name__ == "__main__":
    cli.run(main)
