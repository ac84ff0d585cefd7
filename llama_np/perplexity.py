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

`--corpus` names a built-in evaluation text from the data mirror (DESIGN.md §6):
"alpaca_en" — the 999 `output` answers of alpaca_en_demo.json, joined by blank lines;
"cmrc2018" — the 84 held-out cmrc2018 Wikipedia paragraphs (llama_np.chinese.corpus), likewise.
"""
import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass

from llama_np.cli import common as cli
from llama_np.files.text import read_utf8

ALPACA_EN_FILE = "hiyouga/LLaMA-Factory/data/alpaca_en_demo.json"
CORPORA = ("alpaca_en", "cmrc2018")
DOCUMENT_SEPARATOR = "\n\n"
DEFAULT_N_CTX = 512  # llama-perplexity's default context


@dataclass
class PerplexityResult:
    ppl: float            # exp(mean NLL)
    ppl_error: float      # standard error of the estimate, as llama.cpp prints it
    nll: float            # mean negative log-likelihood per scored token, in nats
    bits_per_char: float
    bits_per_byte: float
    tokens: int           # tokens scored
    chars: int            # characters those tokens spell
    bytes: int            # ... and their UTF-8 bytes
    windows: int
    n_ctx: int

    def summary(self):
        return (f"PPL = {self.ppl:.4f} +/- {self.ppl_error:.4f} over {self.tokens:,} tokens "
                f"({self.windows} windows of {self.n_ctx}, second halves scored); "
                f"{self.bits_per_char:.4f} bits per character, {self.bits_per_byte:.4f} bits per byte")


def token_nll(logits, targets):
    """Negative log-likelihood of each target under softmax(logits): logits [N, V] float32,
    targets [N] → [N] float64. log p(t) = logit_t - logsumexp(logits), computed after
    subtracting each row's maximum so that exp cannot overflow."""
    import numpy as np

    shifted = logits - logits.max(axis=-1, keepdims=True)                         # [N, V]
    log_z = np.log(np.exp(shifted).sum(axis=-1, dtype=np.float64))                # [N]
    return log_z - shifted[np.arange(len(targets)), targets]                      # [N]


def perplexity(model, tokenizer, ids, n_ctx, max_windows=None, progress=True):
    """llama.cpp-style perplexity of `model` on token ids `ids` (see the module docstring).
    Returns a PerplexityResult."""
    import numpy as np
    from tqdm import tqdm

    ids = np.asarray(ids, dtype=np.int64)
    n_windows = len(ids) // n_ctx
    if n_windows == 0:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one window of --n-ctx {n_ctx}; "
                         f"use a longer text or a smaller --n-ctx")
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    first = n_ctx // 2  # logits[first] predicts the first scored token, window[first + 1]
    bos = tokenizer.bos_id if tokenizer.add_bos else None

    nll_sum = nll_sq_sum = 0.0
    count = chars = n_bytes = 0
    bar = tqdm(range(n_windows), desc="perplexity", unit="window", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    for w in bar:
        window = ids[w * n_ctx:(w + 1) * n_ctx]                                    # [n_ctx]
        inputs = window.copy()
        if bos is not None:
            inputs[0] = bos
        logits = model.forward(inputs, model.new_cache(n_ctx))                     # [n_ctx, V]
        nll = token_nll(logits[first:n_ctx - 1], window[first + 1:])               # [n_ctx - 1 - first]
        nll_sum += float(nll.sum())
        nll_sq_sum += float(np.square(nll).sum())
        count += len(nll)
        # the text the scored tokens spell: the window's text minus that of its unscored start
        # (a character split between the two halves counts once, on either side)
        whole, start = tokenizer.decode(window), tokenizer.decode(window[:first + 1])
        chars += len(whole) - len(start)
        n_bytes += len(whole.encode("utf-8")) - len(start.encode("utf-8"))
        bar.set_postfix_str(f"PPL {math.exp(nll_sum / count):.3f}")
    bar.close()
    return summarize(nll_sum, nll_sq_sum, count, chars, n_bytes, n_windows, n_ctx)


def summarize(nll_sum, nll_sq_sum, count, chars, n_bytes, windows, n_ctx):
    """A PerplexityResult from the running sums of a scoring loop: Σ NLL (nats) and Σ NLL²
    over `count` scored tokens, and the characters and bytes those tokens spell."""
    mean = nll_sum / count
    variance = nll_sq_sum / count - mean * mean
    ppl = math.exp(mean)
    ppl_error = ppl * math.sqrt(variance / (count - 1)) if variance > 0 and count > 1 else 0.0
    bits = nll_sum / math.log(2)
    return PerplexityResult(ppl=ppl, ppl_error=ppl_error, nll=mean,
                            bits_per_char=bits / max(chars, 1), bits_per_byte=bits / max(n_bytes, 1),
                            tokens=count, chars=chars, bytes=n_bytes, windows=windows, n_ctx=n_ctx)


def corpus_text(name):
    """The built-in evaluation text `name` (one of CORPORA), documents joined by blank lines."""
    from llama_np.files import hub
    if name == "alpaca_en":
        path = hub.data_path(ALPACA_EN_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                documents = [example["output"] for example in json.load(f)]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not an Alpaca JSON list with 'output' fields ({e})") from None
    else:
        from llama_np.chinese.corpus import chinese_documents
        documents = chinese_documents("held_out", sources=("cmrc2018",))
    return DOCUMENT_SEPARATOR.join(documents)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m llama_np.perplexity",
        description="llama.cpp-style perplexity of a model on a text: windows of --n-ctx tokens, "
                    "second half of each scored; also bits per character and per byte.")
    cli.add_model_args(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", help="a UTF-8 text file")
    source.add_argument("--corpus", choices=CORPORA,
                        help="a built-in text: alpaca_en (English answers of alpaca_en_demo.json) "
                             "or cmrc2018 (held-out Chinese Wikipedia paragraphs)")
    p.add_argument("--n-ctx", type=cli.positive_int, default=DEFAULT_N_CTX,
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
    text = read_utf8(args.file, what="the text") if args.file else corpus_text(args.corpus)
    model, tokenizer = cli.load_for_inference(args)
    if args.n_ctx > model.config.max_position_embeddings:
        raise ValueError(f"--n-ctx {args.n_ctx} exceeds the model's context of "
                         f"{model.config.max_position_embeddings} positions")
    ids = tokenizer.encode(text)
    result = perplexity(model, tokenizer, ids, args.n_ctx, args.chunks, progress=not args.quiet)
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print(result.summary())
    return 0


if __name__ == "__main__":
    cli.run(main)
