"""Samplers against transformers' logits processors (the HF semantics the paper used)."""
import numpy as np
import pytest

from llama_np.llama.generation import StopStringFilter
from llama_np.llama.sampling import (Sampler, SamplingSettings, apply_repetition_penalty, top_k_filter,
                             top_p_filter)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def random_logits(seed, vocab=300):
    return np.random.default_rng(seed).normal(0, 3, vocab).astype(np.float32)


@pytest.mark.parametrize("penalty", [1.3, 0.7])
def test_repetition_penalty_matches_transformers(penalty):
    logits, seen = random_logits(0), [3, 17, 17, 250, 9]
    hf = transformers.RepetitionPenaltyLogitsProcessor(penalty)(
        torch.tensor([seen]), torch.tensor(logits[None].copy()))[0].numpy()
    np.testing.assert_array_equal(apply_repetition_penalty(logits, seen, penalty), hf)


@pytest.mark.parametrize("k", [1, 5, 40])
def test_top_k_matches_transformers(k):
    logits = random_logits(1)
    hf = transformers.TopKLogitsWarper(k)(None, torch.tensor(logits[None].copy()))[0].numpy()
    np.testing.assert_array_equal(np.isinf(top_k_filter(logits, k)), np.isinf(hf))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.99])
def test_top_p_matches_transformers(p):
    logits = random_logits(2) / 0.7
    hf = transformers.TopPLogitsWarper(p)(None, torch.tensor(logits[None].copy()))[0].numpy()
    np.testing.assert_array_equal(np.isinf(top_p_filter(logits, p)), np.isinf(hf))


def test_greedy_is_argmax_and_seeded_sampling_repeats():
    logits = random_logits(3)
    assert Sampler(SamplingSettings(temperature=0, repetition_penalty=1.0))(logits) == int(np.argmax(logits))
    def draws(seed):
        sampler = Sampler(SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, seed=seed))
        return [sampler(logits) for _ in range(20)]
    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


def test_sampling_follows_the_filtered_distribution():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    sampler = Sampler(SamplingSettings(temperature=1.0, top_k=2, top_p=1.0, repetition_penalty=1.0, seed=0))
    counts = np.bincount([sampler(logits) for _ in range(4000)], minlength=4)
    assert counts[2] == counts[3] == 0                    # outside the top 2
    assert abs(counts[0] / 4000 - 0.5 / 0.8) < 0.03       # renormalised over the top 2


def test_bad_settings_raise():
    for bad in [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-2),
                dict(repetition_penalty=0)]:
        with pytest.raises(ValueError):
            SamplingSettings(**bad)


def test_stop_string_filter_holds_back_prefixes_and_cuts():
    f = StopStringFilter(["<|im_end|>", "###"])
    shown = [f.push(t) for t in ["Hello", " wor", "ld<|im", "_en", "d|> never"]]
    assert "".join(shown) == "Hello world" and f.stopped
    g = StopStringFilter(["###"])
    assert g.push("a #") == "a " and g.push("b") == "#b" and g.flush() == ""


def test_the_fast_sort_and_draw_are_numpys_exactly():
    """sampling.ascending_order and draw, the fast paths after top-k, choose what np.argsort
    and rng.choice would: the same filtered logits and the same token, seed by seed."""
    from llama_np.llama.sampling import draw, top_k_filter, top_p_filter
    rng = np.random.default_rng(5)
    for trial in range(300):
        n = int(rng.integers(2, 5000))
        logits = (rng.standard_normal(n) * rng.uniform(0.1, 10)).astype(np.float32)
        if trial % 4 == 0:
            logits[rng.integers(0, n, 3)] = logits[0]                     # ties
        filtered = top_k_filter(logits, int(rng.integers(1, 60)))
        p = float(rng.uniform(0.05, 0.99))
        order = np.argsort(filtered)
        probs = np.exp(filtered[order] - filtered[order[-1]])
        probs /= probs.sum()
        remove = np.cumsum(probs) <= 1.0 - p
        remove[-1] = False
        expected = filtered.copy()
        expected[order[remove]] = -np.inf
        ours = top_p_filter(filtered, p)
        np.testing.assert_array_equal(ours, expected)
        final = np.exp(ours - ours.max())
        final /= final.sum()
        seed = int(rng.integers(0, 2 ** 32))
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        assert [draw(a, final) for _ in range(3)] == [int(b.choice(len(final), p=final)) for _ in range(3)]
