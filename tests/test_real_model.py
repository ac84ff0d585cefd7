"""The real default model (SmolLM2-135M-Instruct, Q4_1 GGUF) against transformers, which
dequantizes the same file to float32."""
import numpy as np
import pytest

from llama_np.llama.generation import generate
from llama_np.llama.sampling import Sampler, SamplingSettings

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow
EOS = 2  # <|im_end|>, the end-of-sequence token of SmolLM2-Instruct

PROMPTS = [
    "The capital of France is",
    "<|im_start|>user\nWrite a haiku about autumn leaves.<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_of_every_position_match_transformers(real_model, hf_gguf_model, prompt):
    model, _ = real_model
    hf_model, hf_tokenizer = hf_gguf_model
    ids = hf_tokenizer(prompt).input_ids
    with torch.no_grad():
        expected = hf_model(torch.tensor([ids])).logits[0].numpy()
    ours = model.forward(ids)
    assert ours.shape == expected.shape
    assert np.max(np.abs(ours - expected)) < 1e-3


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_continuation_matches_transformers(real_model, hf_gguf_model, prompt):
    model, _ = real_model
    hf_model, hf_tokenizer = hf_gguf_model
    ids = hf_tokenizer(prompt).input_ids
    with torch.no_grad():
        expected = hf_model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False,
                                     eos_token_id=EOS, pad_token_id=EOS)[0, len(ids):].tolist()
    if expected[-1] == EOS:  # llama_np yields the tokens before the end-of-sequence token
        expected = expected[:-1]
    sampler = Sampler(SamplingSettings(temperature=0, repetition_penalty=1.0))
    ours = list(generate(model, ids, sampler, max_new_tokens=32, eos_ids={EOS}))
    assert ours == expected
    assert len(expected) >= 16  # a continuation long enough to mean something
