"""LoRA: the layer's backward and the whole model's gradients against finite differences
(float64), initialisation, merge/unmerge, configuration errors. No torch needed."""
import threading

import numpy as np
import pytest

from llama_np.llama import adapter as lora
from llama_np import ops
from llama_np.llama.config import LlamaConfig
from llama_np.llama.model import Llama
from llama_np.llama.weights import expected_shapes
from llama_np import kernels
from llama_np.quant import QuantizedMatrix
from llama_np.training.shards import set_blas_threads_here
from llama_np.training.trainable import TrainableLlama

from test_backward import check_grads, finite_difference, relative_error, RTOL


def tiny_config(tied=False, layers=2):
    return LlamaConfig(vocab_size=23, hidden_size=16, intermediate_size=24, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=4, rms_norm_eps=1e-5,
                       rope_theta=10000.0, tie_word_embeddings=tied)


def tiny_weights(config, rng, dtype=np.float64):
    return {name: (rng.standard_normal(shape) * (0.5 if len(shape) > 1 else 1.0) + (len(shape) == 1))
            .astype(dtype) for name, shape in expected_shapes(config).items()}


def random_adapter(config, weights, rng, dtype=np.float64, **kw):
    """An adapter whose B is not zero (a fresh one has B = 0, which would hide dA)."""
    settings = dict(r=3, lora_alpha=6, target_modules=list(lora.PROJECTIONS))
    settings.update(kw)
    adapter = lora.Adapter.init(config, weights, lora.LoraConfig(**settings), rng)
    for name, p in adapter.params.items():
        adapter.params[name] = (rng.standard_normal(p.shape) * 0.3 if ".lora_" in name else p).astype(dtype)
    return adapter


def test_lora_backward_matches_finite_differences(rng):
    """The branch with dropout (the same mask in every evaluation: a fixed seed)."""
    x = rng.standard_normal((6, 5))
    a, b = rng.standard_normal((2, 5)), rng.standard_normal((4, 2))
    fwd = lambda x, a, b: ops.lora_forward(x, a, b, 1.5, 0.3, np.random.default_rng(7))[0]
    check_grads(fwd, [x, a, b],
                lambda dy: ops.lora_backward(dy, ops.lora_forward(x, a, b, 1.5, 0.3, np.random.default_rng(7))[1]),
                rng)


def test_lora_dropout_zeroes_inputs_and_rescales(rng):
    x = rng.standard_normal((400, 8)).astype(np.float32)
    a, b = rng.standard_normal((2, 8)).astype(np.float32), rng.standard_normal((3, 2)).astype(np.float32)
    delta, (x_kept, keep, *_) = ops.lora_forward(x, a, b, 2.0, 0.25, np.random.default_rng(0))
    assert 0.7 < keep.mean() < 0.8
    np.testing.assert_allclose(delta, 2.0 / 0.75 * (x * keep) @ a.T @ b.T, rtol=1e-5, atol=1e-5)
    no_dropout, _ = ops.lora_forward(x, a, b, 2.0, 0.25, rng=None)  # inference: no dropout
    np.testing.assert_allclose(no_dropout, 2.0 * x @ a.T @ b.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bit_generator", [np.random.SFC64, np.random.PCG64, np.random.MT19937])
def test_dropout_draws_are_numpys_uint16_integers(bit_generator):
    """The dropout masks' 16-bit draws, taken from the bit generator's 64-bit outputs where
    they can be, are the numbers Generator.integers gives for the same seed, over a run of
    shapes as training draws them (and counts that are not a multiple of four)."""
    from llama_np.ops.lora import _uint16_draws

    ours, numpys = np.random.Generator(bit_generator(9)), np.random.Generator(bit_generator(9))
    for shape in [(256, 576), (3, 5), (7, 96), (4, 1536), (1, 1), (33, 64)]:
        np.testing.assert_array_equal(_uint16_draws(ours, shape),
                                      numpys.integers(0, 65536, shape, dtype=np.uint16))


def test_fresh_adapter_is_kaiming_uniform_a_and_zero_b(rng):
    config = tiny_config()
    weights = tiny_weights(config, rng, np.float32)
    adapter = lora.Adapter.init(config, weights, lora.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]), rng)
    a = adapter.params["model.layers.1.mlp.down_proj.lora_A.weight"]
    assert a.shape == (4, 24) and a.dtype == np.float32
    assert np.abs(a).max() <= 1 / np.sqrt(24) and np.abs(a).max() > 0.5 / np.sqrt(24)
    assert not adapter.params["model.layers.1.mlp.down_proj.lora_B.weight"].any()
    assert len(adapter.params) == 2 * 2 * config.num_hidden_layers
    assert adapter.config.scaling == 2.0
    assert lora.LoraConfig(r=4, lora_alpha=8, use_rslora=True).scaling == 4.0


@pytest.mark.parametrize("tied, modules_to_save, tying", [
    (False, ["embed_tokens", "lm_head"], False),
    (True, ["embed_tokens", "lm_head"], False),
    (True, ["embed_tokens"], True),
    (True, [], False),
], ids=["untied-copies", "tied-separate-copies", "tied-shared-copy", "tied-lora-only"])
def test_whole_model_gradients_match_finite_differences(rng, tied, modules_to_save, tying):
    """Every trainable tensor, along a random direction: ⟨grad, u⟩ against
    (L(p + h·u) - L(p - h·u)) / 2h, with LoRA dropout (fixed seed) and ignored labels."""
    config = tiny_config(tied)
    weights = tiny_weights(config, rng)
    adapter = random_adapter(config, weights, rng, modules_to_save=modules_to_save,
                             ensure_weight_tying=tying, lora_dropout=0.2)
    model = TrainableLlama(config, weights, adapter)
    ids = rng.integers(0, config.vocab_size, (2, 7))
    labels = ids.copy()
    labels[0, :3] = ops.IGNORE_INDEX  # a prompt
    labels[1, 5:] = ops.IGNORE_INDEX  # padding

    def loss():
        return model.forward(ids, labels, np.random.default_rng(3), need_grads=False)[0]

    _, _, grads = model.loss_and_grads(ids, labels, np.random.default_rng(3))
    assert set(grads) == set(adapter.params)
    for name, p in adapter.params.items():
        u = rng.standard_normal(p.shape)
        saved = p.copy()
        p += 1e-6 * u
        up = loss()
        p[...] = saved - 1e-6 * u
        down = loss()
        p[...] = saved
        fd = (up - down) / 2e-6
        assert abs(np.sum(grads[name] * u) - fd) <= RTOL * abs(fd), name


def test_small_tensors_gradients_elementwise(rng):
    """All elements of a few LoRA matrices, one by one."""
    config = tiny_config(layers=1)
    weights = tiny_weights(config, rng)
    adapter = random_adapter(config, weights, rng, r=2)
    model = TrainableLlama(config, weights, adapter)
    ids = rng.integers(0, config.vocab_size, (1, 6))
    _, _, grads = model.loss_and_grads(ids, ids)
    for name in ["model.layers.0.self_attn.k_proj.lora_A.weight", "model.layers.0.mlp.down_proj.lora_B.weight"]:
        fd = finite_difference(lambda: model.loss(ids, ids)[0], adapter.params[name])
        assert relative_error(grads[name], fd) <= RTOL


def test_trainable_rows_limit_the_embedding_gradient(rng):
    config = tiny_config()
    weights = tiny_weights(config, rng, np.float32)
    adapter = random_adapter(config, weights, rng, np.float32, modules_to_save=["embed_tokens"])
    ids = rng.integers(0, config.vocab_size, (2, 6))
    new_rows = np.arange(20, 23)
    all_rows = TrainableLlama(config, weights, adapter).loss_and_grads(ids, ids)[2]
    some = TrainableLlama(config, weights, adapter, trainable_rows=new_rows).loss_and_grads(ids, ids)[2]
    np.testing.assert_array_equal(some[lora.EMBED][20:], all_rows[lora.EMBED][20:])
    assert not some[lora.EMBED][:20].any()


def test_quantized_base_gradients_equal_dequantized_base(rng):
    """QLoRA: a Q8_0 base gives the gradients of its dequantized fp32 values."""
    config = LlamaConfig(vocab_size=40, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)
    weights = tiny_weights(config, rng, np.float32)
    quantized = {n: QuantizedMatrix.from_float(w, "Q8_0") if w.ndim == 2 else w for n, w in weights.items()}
    dequantized = {n: w.dequantize() if isinstance(w, QuantizedMatrix) else w for n, w in quantized.items()}
    adapter = random_adapter(config, dequantized, rng, np.float32)
    ids = rng.integers(0, config.vocab_size, (2, 9))
    loss_q, _, grads_q = TrainableLlama(config, quantized, adapter).loss_and_grads(ids, ids)
    loss_f, _, grads_f = TrainableLlama(config, dequantized, adapter).loss_and_grads(ids, ids)
    assert abs(loss_q - loss_f) < 1e-5
    for name in grads_f:  # float32 sums in another order: agreement to float32 rounding
        assert relative_error(grads_q[name], grads_f[name]) < 1e-5, name


def in_a_thread_with_one_blas_thread(function):
    """function()'s result, run in a new thread whose BLAS uses one thread."""
    results = []
    worker = threading.Thread(target=lambda: (set_blas_threads_here(1), results.append(function())))
    worker.start()
    worker.join()
    return results[0]


@pytest.mark.skipif(not kernels.AVAILABLE, reason="C kernels not built")
def test_quantized_base_dequantized_in_c_gives_the_same_gradients(rng):
    """The C dequantizer (the default) and NumPy's give the frozen base the same floats, so
    the same loss and gradients bit for bit, in one shard and in two. Run from a thread with a
    one-thread BLAS, as each shard runs: OpenBLAS's threaded products on the AVX2-only Zen 3
    can round differently from one call to the next in the same process (seen in the full
    suite, never with one BLAS thread)."""
    config = LlamaConfig(vocab_size=40, hidden_size=256, intermediate_size=512, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=64, tie_word_embeddings=True)
    weights = tiny_weights(config, rng, np.float32)
    qtypes = iter(["Q4_1", "Q4_K", "Q5_0", "Q8_0", "Q4_0", "Q6_K", "Q5_1"] * 2)
    quantized = {n: QuantizedMatrix.from_float(w, next(qtypes)) if w.ndim == 2 and n != lora.EMBED else w
                 for n, w in weights.items()}
    adapter = random_adapter(config, weights, rng, np.float32)
    ids = rng.integers(0, config.vocab_size, (2, 9))
    for threads in (1, 2):
        def both():
            return [TrainableLlama(config, quantized, adapter, use_kernels=c).loss_and_grads(ids, ids, threads=threads)
                    for c in (True, False)]
        (loss_c, _, grads_c), (loss_np, _, grads_np) = in_a_thread_with_one_blas_thread(both)
        assert loss_c == loss_np
        assert grads_c.keys() == grads_np.keys()
        for name in grads_np:
            np.testing.assert_array_equal(grads_c[name], grads_np[name], err_msg=name)


def test_training_loss_equals_inference_logits(rng):
    """The training forward and the inference Llama agree (float32, no dropout)."""
    config = tiny_config()
    weights = tiny_weights(config, rng, np.float32)
    adapter = random_adapter(config, weights, rng, np.float32)
    ids = rng.integers(0, config.vocab_size, 9)
    _, merged = lora.merge(config, weights, adapter)
    logits = Llama(config, merged, use_kernels=False).forward(ids)
    expected = ops.cross_entropy_forward(logits[:-1], ids[1:])[0]
    loss, n, _ = TrainableLlama(config, weights, adapter).forward(ids, ids, need_grads=False)
    assert n == 8 and abs(loss - expected) < 1e-5


def test_merge_then_unmerge_restores_the_base(rng):
    config = tiny_config()
    weights = tiny_weights(config, rng, np.float32)
    adapter = random_adapter(config, weights, rng, np.float32)
    _, merged = lora.merge(config, weights, adapter)
    name = "model.layers.1.self_attn.o_proj.weight"
    a, b = adapter.params["model.layers.1.self_attn.o_proj.lora_A.weight"], adapter.params["model.layers.1.self_attn.o_proj.lora_B.weight"]
    np.testing.assert_allclose(merged[name], weights[name] + 2.0 * b @ a, rtol=1e-6, atol=1e-6)
    restored = lora.unmerge(merged, adapter)
    np.testing.assert_allclose(restored[name], weights[name], atol=1e-5)


def test_unmerged_adapters_give_the_merged_logits(rng):
    config = tiny_config(tied=True)
    weights = tiny_weights(config, rng, np.float32)
    adapter = random_adapter(config, weights, rng, np.float32, modules_to_save=["lm_head"])
    merged_config, merged = lora.merge(config, weights, adapter)
    assert not merged_config.tie_word_embeddings  # lm_head now differs from the embedding
    ids = rng.integers(0, config.vocab_size, 7)
    expected = Llama(merged_config, merged, use_kernels=False).forward(ids)
    model = Llama(config, dict(weights), use_kernels=False)
    model.apply_adapter(adapter)
    np.testing.assert_allclose(model.forward(ids), expected, atol=1e-4)


def test_config_errors_name_the_problem():
    with pytest.raises(lora.AdapterError, match="rank"):
        lora.LoraConfig(r=0)
    with pytest.raises(lora.AdapterError, match="lora_dropout"):
        lora.LoraConfig(lora_dropout=1.0)
    with pytest.raises(lora.AdapterError, match="'qkv_proj' does not exist"):
        lora.LoraConfig(target_modules=["qkv_proj"])
    with pytest.raises(lora.AdapterError, match="'wq' does not exist"):
        lora.parse_target_modules("q,wq")
    with pytest.raises(lora.AdapterError, match="modules_to_save"):
        lora.LoraConfig(modules_to_save=["norm"])
    assert lora.parse_target_modules("q,k,v,o,gate,up,down") == list(lora.PROJECTIONS)
    assert lora.parse_target_modules("attention") == ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_sharded_threads_give_the_same_gradients(rng):
    """Split into 3 shards run in threads (each trimmed of its padding): the same loss and
    gradients as one pass, up to float32 rounding; with dropout, reproducible from the seed."""
    config = tiny_config()
    weights = tiny_weights(config, rng, np.float32)
    adapter = random_adapter(config, weights, rng, np.float32, modules_to_save=["embed_tokens"])
    model = TrainableLlama(config, weights, adapter)
    ids = rng.integers(0, config.vocab_size, (5, 11))
    labels = ids.copy()
    labels[:, :3] = ops.IGNORE_INDEX
    labels[1:3, 6:] = ops.IGNORE_INDEX   # two short rows: their shard gets trimmed
    loss1, n1, grads1 = model.loss_and_grads(ids, labels, threads=1)
    loss3, n3, grads3 = model.loss_and_grads(ids, labels, threads=3)
    assert n1 == n3 and abs(loss1 - loss3) < 1e-5
    for name in grads1:
        assert relative_error(grads3[name], grads1[name]) < 1e-5, name
    model.dropout = 0.1
    runs = [model.loss_and_grads(ids, labels, np.random.Generator(np.random.SFC64(4)), threads=2) for _ in range(2)]
    assert runs[0][0] == runs[1][0]
