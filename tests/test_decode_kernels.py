"""The C decode path against the NumPy path it replaces: stacked projections, attention over
the KV cache, and on the real model the same greedy tokens with and without the kernels
(issue 3)."""
import numpy as np
import pytest

from llama_np import kernels, ops
from llama_np.generation import generate
from llama_np.model import Llama, stack_rows
from llama_np.quant import QuantizedMatrix
from llama_np.sample import Sampler, SamplingSettings

needs_kernels = pytest.mark.skipif(not kernels.AVAILABLE, reason="C kernels not built")
PROMPTS = [
    "The capital of France is",
    "<|im_start|>user\nWrite a haiku about autumn leaves.<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
]


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("n_tokens", [1, 3, 7])
def test_stacked_rows_give_each_matrix_its_own_product(n_tokens):
    parts = [QuantizedMatrix.from_float(rand(rows, 96, seed=rows), "Q4_1") for rows in (13, 5, 7)]
    stacked = stack_rows(parts)
    x = rand(n_tokens, 96, seed=1)
    y = stacked.matmul(x)                                                   # [T, 25]
    expected = np.concatenate([part.matmul(x) for part in parts], axis=1)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_matrices_quantized_differently_are_not_stacked():
    a = QuantizedMatrix.from_float(rand(4, 64), "Q4_1")
    b = QuantizedMatrix.from_float(rand(4, 64), "Q8_0")
    assert stack_rows([a, b]) is None
    assert stack_rows([a, rand(4, 64)]) is None


@needs_kernels
@pytest.mark.parametrize("n_tokens, n_keys, n_heads, n_kv_heads, head_dim",
                         [(1, 1, 2, 1, 2), (1, 37, 9, 3, 64), (5, 5, 6, 2, 10), (3, 11, 4, 4, 6),
                          (7, 130, 9, 3, 64)])
def test_c_attention_matches_numpy(n_tokens, n_keys, n_heads, n_kv_heads, head_dim):
    q = rand(n_tokens, n_heads, head_dim, seed=1)                         # [T, H, hd]
    k = rand(n_keys, n_kv_heads, head_dim, seed=2) * 3                    # [S, H_kv, hd]
    v = rand(n_keys, n_kv_heads, head_dim, seed=3)
    expected = ops.attention_forward(q, k, v)[0]                          # [T, H*hd]
    for threads in (1, 3):
        saved = kernels.get_num_threads()
        kernels.set_num_threads(threads)
        try:
            ours = kernels.attention_forward(q, k, v)
        finally:
            kernels.set_num_threads(saved)
        np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5)


@needs_kernels
def test_c_attention_refuses_bad_arguments_before_c():
    q, kv = rand(2, 4, 8), rand(5, 2, 8)
    with pytest.raises(TypeError, match="dtype"):
        kernels.attention_forward(q.astype(np.float64), kv, kv)
    with pytest.raises(ValueError, match="contiguous"):
        kernels.attention_forward(rand(2, 4, 16)[:, :, ::2], kv, kv)
    with pytest.raises(ValueError, match="dimensions"):
        kernels.attention_forward(q.reshape(2, 32), kv, kv)
    with pytest.raises(ValueError, match="differ"):
        kernels.attention_forward(q, kv, rand(4, 2, 8))
    with pytest.raises(ValueError, match="dims"):
        kernels.attention_forward(q, rand(5, 2, 4), rand(5, 2, 4))
    with pytest.raises(ValueError, match="share"):
        kernels.attention_forward(q, rand(5, 3, 8), rand(5, 3, 8))
    with pytest.raises(ValueError, match="at least"):
        kernels.attention_forward(q, rand(1, 2, 8), rand(1, 2, 8))


@pytest.mark.slow
@needs_kernels
def test_c_decode_gives_the_numpy_greedy_tokens(real_model):
    model, tokenizer = real_model
    reference = Llama(model.config, model.weights, use_kernels=False)
    assert model.use_kernels
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt)
        runs = [list(generate(m, ids, Sampler(SamplingSettings(temperature=0, repetition_penalty=1.0)),
                              max_new_tokens=32))
                for m in (model, reference)]
        assert runs[0] == runs[1], prompt
        assert len(runs[0]) == 32


@pytest.mark.slow
@needs_kernels
def test_decode_logits_do_not_depend_on_the_thread_count(real_model):
    model, tokenizer = real_model
    ids = tokenizer.encode(PROMPTS[0])
    saved = kernels.get_num_threads()
    logits = []
    try:
        for n in (1, 2, 3):
            kernels.set_num_threads(n)
            cache = model.new_cache(len(ids) + 4)
            model.forward(ids, cache)
            logits.append(model.forward([ids[-1]], cache))               # one decode step
    finally:
        kernels.set_num_threads(saved)
    assert np.array_equal(logits[0], logits[1]) and np.array_equal(logits[0], logits[2])
