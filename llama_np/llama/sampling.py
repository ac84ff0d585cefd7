"""Choosing the next token from the logits.

The filters run in Hugging Face's order: repetition penalty → temperature → top-k → top-p,
then one draw from what is left. Temperature 0 (or `greedy=True`) is the arg-max.

The paper's decoding settings (`decoding_defaults`) are the defaults.
"""
from dataclasses import dataclass

import numpy as np

from llama_np.llama.decoding_defaults import (PAPER_CONTEXT, PAPER_MAX_NEW_TOKENS,  # noqa: F401 (re-exported)
                                              PAPER_REPETITION_PENALTY, PAPER_TEMPERATURE, PAPER_TOP_K,
                                              PAPER_TOP_P)


@dataclass
class SamplingSettings:
    temperature: float = PAPER_TEMPERATURE
    top_k: int = PAPER_TOP_K                    # 0: no top-k filter
    top_p: float = PAPER_TOP_P                  # 1.0: no nucleus filter
    repetition_penalty: float = PAPER_REPETITION_PENALTY  # 1.0: none
    seed: int | None = None

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top-k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self):
        return self.temperature == 0


def apply_repetition_penalty(logits, seen_ids, penalty):
    """CTRL's repetition penalty (Keskar et al. 2019), Hugging Face semantics: the logit of
    every token already in the context is divided by `penalty` if positive and multiplied by
    it if negative — either way the token becomes less likely."""
    if penalty == 1.0 or len(seen_ids) == 0:
        return logits
    logits = logits.copy()
    seen = np.asarray(seen_ids, dtype=np.int64)   # repeats only write the same value again
    values = logits[seen]
    logits[seen] = np.where(values > 0, values / penalty, values * penalty)
    return logits


def top_k_filter(logits, k):
    """Keep the k largest logits (ties with the k-th kept too); the rest become -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k)[-k]
    return np.where(logits < kth, -np.inf, logits)


def top_p_filter(logits, p):
    """Nucleus sampling (Holtzman et al. 2020): keep the smallest set of most likely tokens
    whose probabilities add up to at least p; the most likely token is always kept."""
    if p >= 1.0:
        return logits
    order = ascending_order(logits)                 # ascending, as Hugging Face does
    probs = np.exp(logits[order] - logits[order[-1]])
    probs /= probs.sum()
    cumulative = np.cumsum(probs)
    remove = cumulative <= 1.0 - p                  # the unlikely tail that sums to ≤ 1-p
    remove[-1] = False
    filtered = logits.copy()
    filtered[order[remove]] = -np.inf
    return filtered


def ascending_order(logits):
    """np.argsort(logits), fast after a top-k filter. Sorting ~50,000 logits of which all but
    k are -inf costs more than the rest of a sampling step (the sort is slow on so many equal
    values); only the k finite ones need it. With the -inf ones first in any order — their
    probability is 0 and they are -inf already, so nothing that uses the order can tell — the
    result is exactly argsort's wherever it matters. Ties among the finite logits (whose order
    argsort leaves to its algorithm) and NaNs take argsort itself."""
    kept = np.flatnonzero(logits != -np.inf)
    if 2 * len(kept) > len(logits):
        return np.argsort(logits)
    values = logits[kept]
    if not np.isfinite(values).all() or _has_ties(values):
        return np.argsort(logits)
    return np.concatenate([np.flatnonzero(logits == -np.inf), kept[np.argsort(values)]])


def _has_ties(values):
    """Whether two of `values` are equal (np.unique would say the same, but its first call
    imports numpy.ma: 11 ms of a chat's time to first token)."""
    ordered = np.sort(values)
    return bool((ordered[1:] == ordered[:-1]).any())


def draw(rng, probs):
    """One index drawn with probabilities `probs`: exactly `rng.choice(len(probs), p=probs)` —
    the same uniform draw, searched in the same cumulative sums — over the entries that can
    be drawn only (adding a zero changes no cumulative sum), which after top-k is ~40 of
    ~50,000."""
    possible = np.flatnonzero(probs)
    cdf = np.cumsum(probs[possible], dtype=np.float64)
    cdf /= cdf[-1]
    return int(possible[cdf.searchsorted(rng.random(), side="right")])


class Sampler:
    """Draws next tokens with one SamplingSettings and its own random generator."""

    def __init__(self, settings: SamplingSettings):
        self.settings = settings
        self.rng = np.random.default_rng(settings.seed)

    def __call__(self, logits, seen_ids=()):
        """One token id from logits [V] given the ids already in the context."""
        s = self.settings
        logits = np.asarray(logits, dtype=np.float32)
        if np.isnan(logits).any():  # argmax would pick token 0 for ever (often end-of-text)
            raise ValueError("the model's logits are NaN: its weights are broken")
        logits = apply_repetition_penalty(logits, seen_ids, s.repetition_penalty)
        if s.greedy:
            return int(np.argmax(logits))
        logits = top_p_filter(top_k_filter(logits / s.temperature, s.top_k), s.top_p)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        return draw(self.rng, probs)


def apply_frequency_presence_penalties(logits, counts, frequency_penalty, presence_penalty):
    """OpenAI's penalties: logit[j] -= c[j] · frequency_penalty + (c[j] > 0) · presence_penalty,
    c[j] the times token j was generated so far (`counts`: a mapping id → c; the prompt does
    not count). Positive values discourage repeats, negative ones encourage them. Unlike the
    repetition penalty this subtracts, whatever the logit's sign."""
    if not counts or (frequency_penalty == 0 and presence_penalty == 0):
        return logits
    ids = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
    c = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
    logits = np.array(logits, dtype=np.float32)
    logits[ids] -= c * np.float32(frequency_penalty) + np.float32(presence_penalty)
    return logits
