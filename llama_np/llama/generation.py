"""The generation loop: prefill the prompt, then decode one token at a time.

    logits = model(prompt)            # one pass over the whole prompt fills the KV cache
    repeat: token = sample(logits[-1]); logits = model([token])   # one position at a time

Stops at the end-of-sequence token, a stop string, `max_new_tokens`, or the end of the
context. Yields token ids as they are chosen, so callers can stream text.
"""
import time
from dataclasses import dataclass

from llama_np.llama.sampling import Sampler


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    stop_reason: str = ""      # "eos", "stop string", "length", "context", "interrupted"

    @property
    def decode_tokens_per_second(self):
        steps = max(self.new_tokens - 1, 0)  # the first new token comes from the prefill
        return steps / self.decode_seconds if self.decode_seconds > 0 else float("nan")

    @property
    def prefill_tokens_per_second(self):
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds > 0 else float("nan")

    def summary(self):
        return (f"[{self.prompt_tokens} prompt tokens at {self.prefill_tokens_per_second:.0f} tok/s, "
                f"{self.new_tokens} new at {self.decode_tokens_per_second:.1f} tok/s; "
                f"stopped: {self.stop_reason}]")


def generate(model, prompt_ids, sampler: Sampler, *, max_new_tokens, cache=None,
             eos_ids=(), stats=None, history_ids=None):
    """Yield new token ids after `prompt_ids`.

    `cache` may already hold earlier turns of a conversation (`prompt_ids` then continue
    it); `history_ids` are the ids the repetition penalty counts as seen (default: the
    prompt). The caller checks stop strings on the decoded text and simply stops iterating.
    """
    if len(prompt_ids) == 0:
        raise ValueError("the prompt is empty (no tokens): there is nothing to continue")
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


class StopStringFilter:
    """Streams text while watching for stop strings: text that might be the start of a stop
    string is held back until it is clear it is not one. `push` returns what can be shown;
    `stopped` turns True (and the stop string is dropped) when one appears."""

    def __init__(self, stop_strings):
        self.stop_strings = [s for s in stop_strings if s]
        self.pending = ""
        self.stopped = False

    def push(self, text):
        self.pending += text
        for stop in self.stop_strings:
            at = self.pending.find(stop)
            if at >= 0:
                self.stopped = True
                shown, self.pending = self.pending[:at], ""
                return shown
        hold = 0  # the longest tail of pending that begins some stop string
        for stop in self.stop_strings:
            for n in range(min(len(stop) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(stop[:n]):
                    hold = n
                    break
        shown = self.pending[:len(self.pending) - hold]
        self.pending = self.pending[len(shown):]
        return shown

    def flush(self):
        shown, self.pending = self.pending, ""
        return shown


def generate_text(model, tokenizer, prompt_ids, sampler, *, max_new_tokens, cache=None,
                  stop_strings=(), stats=None, history_ids=None, generated_ids=None):
    """Like `generate`, but yields text: complete UTF-8 characters only, and nothing of a
    stop string. The chosen ids are appended to `generated_ids` if a list is given."""
    stats = stats if stats is not None else GenerationStats()
    decoder = tokenizer.stream_decoder()
    stops = StopStringFilter(stop_strings)
    eos_ids = {tokenizer.eos_id} if tokenizer.eos_id is not None else set()
    for token in generate(model, prompt_ids, sampler, max_new_tokens=max_new_tokens, cache=cache,
                          eos_ids=eos_ids, stats=stats, history_ids=history_ids):
        if generated_ids is not None:
            generated_ids.append(token)
        text = stops.push(decoder.push(token))
        if text:
            yield text
        if stops.stopped:
            stats.stop_reason = "stop string"
            return
    # a reply cut off inside a multi-byte character ends before it, not with U+FFFD
    text = stops.push(decoder.flush().rstrip("\ufffd"))
    text += "" if stops.stopped else stops.flush()
    if text:
        yield text
