"""The generation loop: prefill the prompt, then decode one token at a time.

    logits = model(prompt)            # one pass over the whole prompt fills the KV cache
    repeat: token = sample(logits[-1]); logits = model([token])   # one position at a time

Stops at the end-of-sequence token, a stop string, `max_new_tokens`, or the end of the
context. Yields token ids as they are chosen, so callers can stream text.
"""
import time
from dataclasses import dataclass, field

from llama_np.sample import Sampler


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    stop_reason: str = ""      # "eos", "stop string", "length", "context", "interrupted"
    times: list = field(default_factory=list)

    @property
    def decode_tokens_per_second(self):
        steps = max(self.new_tokens - 1, 0)  # the first new token comes from the prefill
        return steps / self.decode_seconds if self.decode_seconds > 0 else float("nan")

    @property
    def prefill_tokens_per_second(self):
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds > 0 else float("nan")


def generate(model, prompt_ids, sampler: Sampler, *, max_new_tokens, cache=None,
             eos_ids=(), stats=None, history_ids=None):
    """Yield new token ids after `prompt_ids`.

    `cache` may already hold earlier turns of a conversation (`prompt_ids` then continue
    it); `history_ids` are the ids the repetition penalty counts as seen (default: the
    prompt). The caller checks stop strings on the decoded text and simply stops iterating.
    """
    stats = stats if stats is not None else GenerationStats()
    cache = cache if cache is not None else model.new_cache()
    seen = list(history_ids if history_ids is not None else prompt_ids)
    stats.prompt_tokens = len(prompt_ids)

    start = time.perf_counter()
    logits = model.forward(prompt_ids, cache, last_only=True)[-1]          # [V]
    stats.prefill_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(max_new_tokens):
        token = sampler(logits, seen)
        stats.new_tokens += 1
        if token in eos_ids:
            stats.stop_reason = "eos"
            break
        seen.append(token)
        yield token
        if cache.length >= cache.max_len:
            stats.stop_reason = "context"
            break
        logits = model.forward([token], cache, last_only=True)[-1]
        stats.decode_seconds = time.perf_counter() - start
    else:
        stats.stop_reason = "length"
