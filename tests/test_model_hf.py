"""llama_np's LLaMA against transformers' LlamaForCausalLM on tiny random models."""
import numpy as np
import pytest

from conftest import save_tiny_llama
from llama_np.checkpoint.safetensors import load_hf
from llama_np.llama.model import Llama
from llama_np.llama.sampling import Sampler, SamplingSettings
from llama_np.llama.generation import generate

torch = pytest.importorskip("torch")


@pytest.fixture(params=[False, True], ids=["untied", "tied"])
def tiny(request, tmp_path):
    hf_model = save_tiny_llama(tmp_path, tied=request.param)
    config, weights = load_hf(str(tmp_path))
    return hf_model, config, weights


def hf_logits(hf_model, ids):
    with torch.no_grad():
        return hf_model(torch.tensor([ids])).logits[0].numpy()


@pytest.mark.parametrize("use_kernels", [False, True], ids=["numpy", "kernels"])
def test_prefill_logits_match_transformers(tiny, use_kernels):
    hf_model, config, weights = tiny
    ids = list(np.random.default_rng(1).integers(0, config.vocab_size, 16))
    ours = Llama(config, weights, use_kernels=use_kernels).forward(ids)
    assert ours.shape == (16, config.vocab_size)
    np.testing.assert_allclose(ours, hf_logits(hf_model, ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize("use_kernels", [False, True], ids=["numpy", "kernels"])
def test_token_by_token_decode_matches_transformers(tiny, use_kernels):
    hf_model, config, weights = tiny
    ids = list(np.random.default_rng(2).integers(0, config.vocab_size, 16))
    model = Llama(config, weights, use_kernels=use_kernels)
    cache = model.new_cache(32)
    ours = np.concatenate([model.forward([t], cache) for t in ids])
    np.testing.assert_allclose(ours, hf_logits(hf_model, ids), atol=1e-4, rtol=0)


def test_greedy_generation_matches_transformers(tiny):
    hf_model, config, weights = tiny
    prompt = [5, 17, 42, 8]
    with torch.no_grad():
        expected = hf_model.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False,
                                     min_new_tokens=20, pad_token_id=0)[0, len(prompt):].tolist()
    sampler = Sampler(SamplingSettings(temperature=0, repetition_penalty=1.0))
    ours = list(generate(Llama(config, weights), prompt, sampler, max_new_tokens=20))
    assert ours == expected
