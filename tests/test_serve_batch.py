"""Continuous batching's step (llama.batch.decode_step, kernels/decode_layer_batch.c,
kernels/quant_matvec_batch.c): B sequences decoded together give, bit for bit, the logits
each gets alone through Llama.forward, whatever B, the formats, the positions or the
thread count — so a served response never depends on what else is served."""
import numpy as np
import pytest

from llama_np import kernels
from llama_np.kernels import decode_batch
from llama_np.llama.batch import decode_step
from llama_np.llama.config import LlamaConfig
from llama_np.llama.model import Llama
from llama_np.quant import QuantizedMatrix

from test_decode_kernels import decode_config, decode_weights

needs_kernels = pytest.mark.skipif(not kernels.AVAILABLE, reason="C kernels not built")


def prefilled(model, prompts, max_len=64, kv_cache="f32"):
    caches = []
    for ids in prompts:
        cache = model.new_cache(max_len, kv_cache=kv_cache)
        model.forward(ids, cache, last_only=True)
        caches.append(cache)
    return caches


def check_batch_equals_alone(model, n_sequences, steps=3, seed=0, kv_cache="f32", lengths=(1, 20), max_len=64,
                             batched=True):
    rng = np.random.default_rng(seed)
    vocab = model.config.vocab_size
    prompts = [list(rng.integers(0, vocab, size=int(n))) for n in rng.integers(*lengths, size=n_sequences)]
    alone = prefilled(model, prompts, max_len, kv_cache)
    together = prefilled(model, prompts, max_len, kv_cache)
    calls = []
    kernel = decode_batch.BatchStep.run
    decode_batch.BatchStep.run = lambda *a, **k: (calls.append(1), kernel(*a, **k))
    try:
        run_steps(model, alone, together, rng, steps)
    finally:
        decode_batch.BatchStep.run = kernel
    assert bool(calls) == batched                    # the batched kernel did the work (or could not)


def run_steps(model, alone, together, rng, steps):
    vocab = model.config.vocab_size
    n_sequences = len(alone)
    tokens = rng.integers(0, vocab, size=n_sequences)
    for _ in range(steps):
        expected = np.concatenate([model.forward([t], c, last_only=True) for t, c in zip(tokens, alone)])
        got = decode_step(model, tokens, together)
        np.testing.assert_array_equal(got, expected)
        for a, b in zip(alone, together):
            assert a.length == b.length
            np.testing.assert_array_equal(a.k[:, :a.length], b.k[:, :b.length])
            np.testing.assert_array_equal(a.v[:, :a.length], b.v[:, :b.length])
        tokens = expected.argmax(-1)


@needs_kernels
@pytest.mark.parametrize("formats", [("Q4_1",), ("Q4_0",), ("Q8_0",), ("F32",), ("Q4_0", "Q8_0", "F32", "Q4_1")])
@pytest.mark.parametrize("n_sequences", [1, 2, 3, 8, 11])
def test_batched_step_equals_each_sequence_alone(formats, n_sequences):
    config = decode_config()
    model = Llama(config, decode_weights(config, formats))
    assert model._fused_decoders()
    check_batch_equals_alone(model, n_sequences)


@needs_kernels
@pytest.mark.parametrize("kv_cache", ["f32", "f16", "q8_0"])
def test_batched_step_equals_alone_for_every_kv_format(kv_cache):
    config = LlamaConfig(vocab_size=50, hidden_size=128, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-5,
                         rope_theta=10000.0)                    # q8_0 rows: heads of whole 32-blocks
    model = Llama(config, decode_weights(config, ("Q4_1", "Q8_0")))
    check_batch_equals_alone(model, 5, kv_cache=kv_cache)


@needs_kernels
@pytest.mark.parametrize("kv_cache", ["f32", "f16"])
def test_batched_step_equals_alone_past_one_key_block(kv_cache):
    """Contexts of 250 … 600 positions: attention over several KEY_BLOCKs, merged per row."""
    config = decode_config()
    model = Llama(config, decode_weights(config, ("Q4_0",)))
    check_batch_equals_alone(model, 4, steps=8, kv_cache=kv_cache, lengths=(250, 600), max_len=640)


@needs_kernels
def test_batched_step_with_caches_of_different_sizes():
    """Caches grow with use (KVCache.reserve), so sequences of different lengths have room for
    different numbers of positions — and one grows during the steps (255 → past 256)."""
    config = decode_config()
    model = Llama(config, decode_weights(config, ("Q4_1",)))
    rng = np.random.default_rng(5)
    prompts = [list(rng.integers(0, config.vocab_size, size=n)) for n in (3, 255, 300, 40)]
    alone, together = prefilled(model, prompts, 1024), prefilled(model, prompts, 1024)
    assert len({c.capacity for c in together}) > 1
    run_steps(model, alone, together, rng, steps=4)
    assert together[1].capacity > 256


@needs_kernels
@pytest.mark.parametrize("threads", [1, 3])
def test_batched_step_is_exact_with_any_thread_count(threads):
    config = decode_config()
    model = Llama(config, decode_weights(config, ("Q4_1", "Q8_0")))
    saved = kernels.get_num_threads()
    try:
        kernels.set_num_threads(threads)
        check_batch_equals_alone(model, 9)
    finally:
        kernels.set_num_threads(saved)


@needs_kernels
@pytest.mark.parametrize("n_sequences", [1, 5, 11])
def test_batched_step_with_int8_activations_equals_alone(n_sequences):
    config = decode_config()
    model = Llama(config, decode_weights(config, ("Q4_1", "Q4_0", "Q8_0")))
    model.set_int8_activations(True)
    check_batch_equals_alone(model, n_sequences)


def test_without_kernels_the_step_runs_each_sequence_through_forward():
    config = decode_config()
    model = Llama(config, decode_weights(config, ("Q4_1",)), use_kernels=False)
    check_batch_equals_alone(model, 3, steps=2, batched=False)


@needs_kernels
@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
@pytest.mark.parametrize("int8", [False, True])
def test_batched_matvec_equals_the_one_row_product(qtype, int8):
    rng = np.random.default_rng(1)
    w = QuantizedMatrix.from_float(rng.standard_normal((37, 96)).astype(np.float32), qtype)
    x = rng.standard_normal((13, 96)).astype(np.float32)
    expected = np.concatenate([kernels.quant_matmul(w.data, qtype, x[b:b + 1], int8) for b in range(13)])
    np.testing.assert_array_equal(decode_batch.quant_matvec_batch(w.data, qtype, x, int8), expected)


@needs_kernels
def test_batched_layer_refuses_bad_arguments_before_c():
    config = decode_config()
    model = Llama(config, decode_weights(config, ("Q4_1",)))
    layer = model._fused_decoders()[0]
    cache = model.new_cache(8, kv_cache="f32")
    h = np.zeros((2, config.hidden_size), np.float32)
    with pytest.raises(ValueError, match="as many"):
        decode_batch.decode_layer_batch(layer, h, [cache.k[0]], [cache.v[0]], [0])
    with pytest.raises(ValueError, match="outside"):
        decode_batch.decode_layer_batch(layer, h[:1], [cache.k[0]], [cache.v[0]], [8])
    with pytest.raises(TypeError, match="float16"):
        decode_batch.decode_layer_batch(layer, h[:1], [cache.k[0].astype(np.float64)], [cache.v[0]], [0])
    half = model.new_cache(8, kv_cache="f16")
    with pytest.raises(ValueError, match="one KV format"):
        decode_batch.decode_layer_batch(layer, h, [cache.k[0], half.k[0]], [cache.v[0], half.v[0]], [0, 0])


@pytest.mark.slow
@needs_kernels
def test_batched_step_on_the_real_model(real_model):
    model, _ = real_model
    check_batch_equals_alone(model, 6, steps=2, kv_cache="f16")


@needs_kernels
@pytest.mark.parametrize("kv_cache", ["f32", "f16"])
def test_a_prompt_filled_in_chunks_equals_the_prompt_at_once(kv_cache):
    """The server fills prompts in chunks of any size >= 2 (its budget is shared between
    prompts): a 600-token prompt so filled — past two key blocks — leaves the same cache and
    the same last logits as the prompt in one call."""
    config = decode_config()
    model = Llama(config, decode_weights(config, ("Q4_1", "Q8_0")))
    rng = np.random.default_rng(3)
    ids = list(rng.integers(0, config.vocab_size, size=600))
    whole = model.new_cache(640, kv_cache=kv_cache)
    expected = model.forward(ids, whole, last_only=True)
    chunked = model.new_cache(640, kv_cache=kv_cache)
    start = 0
    while start < len(ids):
        size = int(rng.integers(2, 70))
        if len(ids) - (start + size) == 1:
            size += 1
        logits = model.forward(ids[start:start + size], chunked, last_only=True)
        start += size
    np.testing.assert_array_equal(logits, expected)
    np.testing.assert_array_equal(chunked.k[:, :600], whole.k[:, :600])
    np.testing.assert_array_equal(chunked.v[:, :600], whole.v[:, :600])
