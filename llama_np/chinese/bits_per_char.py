"""Held-out bits per character: the recipe's measure of how well a model knows Chinese.

Bits per character do not depend on the tokenizer, so the base model (49,152 tokens) and
the model with the extended vocabulary can be compared on the very same characters of the
held-out cmrc2018 paragraphs (docs/recipe.md#bits-per-character).
"""
import numpy as np

from llama_np.checkpoint import load_model
from llama_np.checkpoint.peft import apply_adapters
from llama_np.chinese.corpus import evaluation_text
from llama_np.llama.perplexity import summarize, token_nll


def held_out_bits_per_char(model_path, adapter, n_ctx, windows):
    """Bits per character of the model (with `adapter`, if any) on the held-out cmrc2018
    paragraphs (never trained on), scored on the *same characters* whatever the tokenizer.

    `llama_np.llama.perplexity` cuts windows of n_ctx *tokens*, so a tokenizer that needs half
    the tokens is scored on twice as much (and other) text; here the windows are cut in
    characters instead (`held_out_spans`): each is encoded as its context (not scored)
    followed by the characters that are, and bits per character = the scored tokens' NLL in
    bits / those characters. Returns a PerplexityResult (ppl and nll per scored token)."""
    model, tokenizer = load_model(model_path)
    if adapter:
        apply_adapters(model, [adapter])
    spans = held_out_spans(evaluation_text("cmrc2018"), n_ctx, windows)
    nll_sum = nll_sq_sum = 0.0
    count = chars = n_bytes = 0
    for context, scored in spans:
        context_ids = tokenizer.encode(context, add_bos=tokenizer.add_bos)
        ids = np.asarray(context_ids + tokenizer.encode(scored, add_bos=False), dtype=np.int64)  # [T]
        logits = model.forward(ids, model.new_cache(len(ids)))                                   # [T, V]
        nll = token_nll(logits[len(context_ids) - 1:-1], ids[len(context_ids):])               # [T - context]
        nll_sum += float(nll.sum())
        nll_sq_sum += float(np.square(nll).sum())
        count += len(nll)
        chars += len(scored)
        n_bytes += len(scored.encode("utf-8"))
    return summarize(nll_sum, nll_sq_sum, count, chars, n_bytes, len(spans), n_ctx)


def held_out_spans(text, n_ctx, windows):
    """Up to `windows` consecutive (context, scored) pieces of `text`, n_ctx // 2 characters
    each (about n_ctx tokens of the base tokenizer on Chinese, ~1.7 tokens a character): the
    first quarter is context, the rest is scored."""
    width = max(2, n_ctx // 2)
    context = width // 4
    return [(text[start:start + context], text[start + context:start + width])
            for start in range(0, min(windows * width, len(text) - width + 1), width)]
