"""The C decode path against the NumPy path it replaces: the fused one-token block, attention
over the KV cache, and on the real model the same greedy tokens with and without the kernels
(issue 3)."""
import numpy as np
import pytest

from llama_np import kernels
from llama_np import ops
from llama_np.llama.generation import generate
from llama_np.llama.config import LlamaConfig
from llama_np.llama.adapter import Adapter, LoraConfig
from llama_np.llama.model import Llama
from llama_np.llama.weights import expected_shapes
from llama_np.quant import QuantizedMatrix
from llama_np.llama.sampling import Sampler, SamplingSettings

needs_kernels = pytest.mark.skipif(not kernels.AVAILABLE, reason="C kernels not built")
PROMPTS = [
    "The capital of France is",
    "<|im_start|>user\nWrite a haiku about autumn leaves.<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
]


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def decode_config(layers=2):
    """GQA (6 query heads on 2 key/value heads), every width a multiple of 32."""
    return LlamaConfig(vocab_size=50, hidden_size=96, intermediate_size=160, num_hidden_layers=layers,
                       num_attention_heads=6, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
                       rope_theta=10000.0)


def decode_weights(config, formats, seed=0):
    """Random weights, the i-th matrix of each layer stored as formats[i % len(formats)]."""
    rng = np.random.default_rng(seed)
    weights = {}
    for i, (name, shape) in enumerate(expected_shapes(config).items()):
        if len(shape) == 1:                                               # norms near 1
            weights[name] = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
            continue
        w = (rng.standard_normal(shape) * 0.2).astype(np.float32)
        fmt = formats[i % len(formats)]
        weights[name] = w if fmt == "F32" or "embed" in name else QuantizedMatrix.from_float(w, fmt)
    return weights


@needs_kernels
@pytest.mark.parametrize("formats", [("Q4_1",), ("Q4_0",), ("Q8_0",), ("F32",), ("Q4_0", "Q8_0", "F32", "Q4_1")])
def test_fused_decode_layer_matches_the_numpy_block(formats):
    """Prefill 5 tokens, then decode 3 one at a time: the fused C block and Llama.block
    (NumPy, one op at a time) give the same hidden states and cache rows, 1 or 3 threads."""
    config = decode_config()
    weights = decode_weights(config, formats)
    fused, reference = Llama(config, weights), Llama(config, weights, use_kernels=False)
    assert fused._fused_decoders()
    ids = [3, 14, 15, 9, 26, 5, 35, 8]
    saved = kernels.get_num_threads()
    try:
        for threads in (1, 3):
            kernels.set_num_threads(threads)
            caches = [fused.new_cache(16), reference.new_cache(16)]
            for model, cache in zip((fused, reference), caches):
                model.forward(ids[:5], cache)
            for token in ids[5:]:
                ours, expected = (m.forward([token], c) for m, c in zip((fused, reference), caches))
                np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)
            n = caches[1].length
            np.testing.assert_allclose(caches[0].k[:, :n], caches[1].k[:, :n], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(caches[0].v[:, :n], caches[1].v[:, :n], rtol=1e-4, atol=1e-5)
    finally:
        kernels.set_num_threads(saved)


@needs_kernels
def test_int8_activations_switch_both_paths_to_llama_cpp_arithmetic():
    """set_int8_activations rounds activations to 8 bits in the fused C block as in its
    NumPy reference (quant.quant_matmul_int8): the two agree far more closely than either
    with fp32 activations; switching back restores the fp32 logits exactly."""
    config = decode_config()
    weights = decode_weights(config, ("Q4_1", "Q4_0", "Q8_0"))
    fused, reference = Llama(config, weights), Llama(config, weights, use_kernels=False)

    def decode_step(model):
        cache = model.new_cache(8)
        model.forward([1, 2, 3], cache)
        return model.forward([4], cache)

    fp32 = decode_step(fused)
    fused.set_int8_activations(True)
    reference.set_int8_activations(True)
    assert fused._fused_decoders()[0].shape.int8_activations == 1
    ours, expected = decode_step(fused), decode_step(reference)
    np.testing.assert_allclose(ours, expected, rtol=1e-3, atol=1e-3)
    assert np.abs(ours - expected).max() < np.abs(ours - fp32).max() / 10
    fused.set_int8_activations(False)
    np.testing.assert_array_equal(decode_step(fused), fp32)


@needs_kernels
def test_decode_falls_back_to_the_block_for_weights_the_kernel_cannot_take():
    """A LoRA branch beside a weight makes the model decode op by op (`block_forward`),
    with the same logits as the fused path of the same model without it."""
    config = decode_config()
    weights = decode_weights(config, ("Q4_1",))
    fused, with_lora = Llama(config, weights), Llama(config, weights)
    assert fused._fused_decoders()
    v_name = "model.layers.1.self_attn.v_proj.weight"
    zero_a, zero_b = np.zeros((2, config.hidden_size), np.float32), np.zeros((weights[v_name].shape[0], 2), np.float32)
    with_lora.apply_adapter(Adapter(LoraConfig(r=2, target_modules=["v_proj"]),
                                    {"model.layers.1.self_attn.v_proj.lora_A.weight": zero_a,
                                     "model.layers.1.self_attn.v_proj.lora_B.weight": zero_b}))  # adds nothing
    assert not with_lora._fused_decoders()
    logits = []
    for model in (fused, with_lora):
        cache = model.new_cache(4)
        model.forward([1, 2], cache)
        logits.append(model.forward([3], cache))
    np.testing.assert_allclose(logits[1], logits[0], rtol=1e-4, atol=1e-4)


@needs_kernels
def test_decode_layer_refuses_bad_arguments_before_c():
    config = decode_config()
    weights = decode_weights(config, ("Q4_1",))
    layer = Llama(config, weights).layers[0]
    with pytest.raises(TypeError, match="not list"):
        kernels.DecodeLayer({**layer, "o": [[1.0]]}, config)
    with pytest.raises(ValueError, match="shape"):
        kernels.DecodeLayer({**layer, "q": layer["k"]}, config)
    with pytest.raises(TypeError, match="dtype"):
        kernels.DecodeLayer({**layer, "mlp_norm": layer["mlp_norm"].astype(np.float64)}, config)
    decoder = kernels.DecodeLayer(layer, config)
    h = rand(1, config.hidden_size)
    cache = np.zeros((4, 2, 16), np.float32)
    with pytest.raises(TypeError, match="dtype"):
        decoder(h.astype(np.float64), cache, cache.copy(), 0)
    with pytest.raises(ValueError, match="shape"):
        decoder(rand(2, config.hidden_size), cache, cache.copy(), 0)
    with pytest.raises(ValueError, match="cache shapes"):
        decoder(h, np.zeros((4, 3, 16), np.float32), np.zeros((4, 3, 16), np.float32), 0)
    with pytest.raises(ValueError, match="position"):
        decoder(h, cache, cache.copy(), 4)
    with pytest.raises(ValueError, match="contiguous"):
        decoder(h, np.zeros((4, 2, 32), np.float32)[:, :, ::2], cache, 0)


@needs_kernels
@pytest.mark.parametrize("n_tokens, n_keys, n_heads, n_kv_heads, head_dim",
                         [(1, 1, 2, 1, 2), (1, 37, 9, 3, 64), (5, 5, 6, 2, 10), (3, 11, 4, 4, 6),
                          (7, 130, 9, 3, 64), (3, 13, 4, 2, 40), (2, 9, 2, 1, 8)])
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
@pytest.mark.parametrize("spread", [0.01, 1.0, 30.0])
def test_c_attention_softmax_over_a_wide_range_of_scores(spread):
    """Scores from nearly equal to hundreds apart (e^x underflowing to 0): the vectorised
    exponential of the C softmax against NumPy's."""
    q = rand(1, 4, 64, seed=4) * spread
    k, v = rand(29, 2, 64, seed=5), rand(29, 2, 64, seed=6)
    expected = ops.attention_forward(q, k, v)[0]
    np.testing.assert_allclose(kernels.attention_forward(q, k, v), expected, rtol=1e-4, atol=1e-5)


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
