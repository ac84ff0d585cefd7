"""Perplexity as llama.cpp's `llama-perplexity` computes it, and bits per character.

The text is cut into windows of n_ctx tokens; each window is scored on its second half
only (every scored token sees at least n_ctx/2 tokens of context), and
PPL = exp(mean NLL of the scored tokens). Bits per character (and per byte) divide the
same total NLL, in bits, by the characters (UTF-8 bytes) the scored tokens spell: unlike
perplexity they compare models with different tokenizers.

NumPy and tqdm are imported inside the functions, so that the perplexity tool's `--help`
stays instant.
"""
import math
import sys
from dataclasses import dataclass

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
        if not np.isfinite(nll).all():  # a perplexity of NaN is no result: say so instead
            raise ValueError(f"the model's logits are not finite (NaN or infinity) in window {w}: "
                             f"its weights are broken")
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
