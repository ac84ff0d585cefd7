"""The KV cache formats (f32, f16, q8_0) and the attention kernels that read them, against
their NumPy references: llama_np.quant.kv_rows (writing and reading a row) and
llama_np.ops.attention_forward (the textbook attention, over the dequantized cache).
Odd sizes throughout: contexts of 1, 33 and 1,999 positions, key/value heads that do not
divide the thread count, 1 and 3 threads, and scores far enough apart that a careless
merge of partial softmaxes would overflow or lose a block."""
import numpy as np
import pytest

from llama_np import kernels, ops
from llama_np.cli import common as cli
from llama_np.kernels import native
from llama_np.llama.config import LlamaConfig
from llama_np.llama.model import Llama
from llama_np.quant import kv_rows
from llama_np.quant.kv_rows import KV_FORMATS

from test_decode_kernels import decode_weights

needs_kernels = pytest.mark.skipif(not kernels.AVAILABLE, reason="C kernels not built")
KEY_BLOCK = 256        # kernels/internal/attend_block.h: positions a partial softmax covers


def rand(*shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


@pytest.fixture
def threads():
    """Set the C kernels' thread count for one test, restoring it afterwards."""
    saved = kernels.get_num_threads()
    yield kernels.set_num_threads
    kernels.set_num_threads(saved)


def test_the_cli_offers_the_formats_of_the_table_default_first():
    assert set(cli.KV_CACHE_FORMATS) == set(KV_FORMATS)
    assert cli.KV_CACHE_FORMATS[0] == "f16"                    # the tools' default
    parser = cli.argparse.ArgumentParser()
    cli.add_model_args(parser)
    assert parser.parse_args([]).kv_cache == "f16"


def test_q8_0_needs_whole_blocks_per_head():
    config = LlamaConfig(vocab_size=50, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
                         rope_theta=10000.0)
    with pytest.raises(ValueError, match="multiple of 32"):
        Llama(config, decode_weights(config, ("F32",)), use_kernels=False).new_cache(8, "q8_0")
    with pytest.raises(ValueError, match="unknown KV cache format"):
        kv_rows.kv_format("int4")


def hard_values(n, seed=0):
    """Floats that test rounding: normal, tiny (fp16 subnormals), huge (fp16 overflow),
    exact halfway points between two halves, zeros, and whole zero blocks."""
    x = rand(n, seed=seed)
    x[::7] *= 1e-6                                    # fp16 subnormal range
    x[3::11] = 70000.0                                # beyond fp16's largest, 65504
    x[5::13] = np.float32(1 + 2.0 ** -11)             # a tie between two halves: to even
    x[:32] = 0.0                                      # a block of zeros: d = 0
    return x


def half_rounding_cases():
    """Floats at every place where rounding to a half can go wrong: for each of the 31,743
    non-negative halves below 65,504, the float halfway to the next half and its two float
    neighbours (a tie goes to the even half, one ulp either side does not); the range past the
    largest half (65,504 … 65,520 … infinity); every 4,099th float32 bit pattern (normals,
    float subnormals, the half subnormal range, zeros); and all of these negated. No NaNs:
    their payloads are not the format's business."""
    halves = np.arange(0x7BFF, dtype=np.uint16).view(np.float16).astype(np.float64)
    halfway = (halves + np.nextafter(halves.astype(np.float16), np.float16(np.inf)).astype(np.float64)) / 2
    halfway = halfway.astype(np.float32)                  # exact: a half's midpoint has 12 bits
    neighbours = [np.nextafter(halfway, np.float32(-np.inf)), halfway, np.nextafter(halfway, np.float32(np.inf))]
    past_largest = np.array([65504, 65519.99, 65520, 65520.01, 1e6, np.inf], np.float32)
    sweep = np.arange(0, 0x7F800001, 4099, dtype=np.uint64).astype(np.uint32).view(np.float32)
    positive = np.concatenate(neighbours + [past_largest, sweep])
    return np.concatenate([positive, -positive])


@needs_kernels
@pytest.mark.filterwarnings("ignore:overflow encountered in cast")   # 70000 → inf, on purpose
@pytest.mark.parametrize("name", sorted(KV_FORMATS))
def test_c_stores_and_reads_rows_as_numpy_does(name):
    fmt = KV_FORMATS[name]
    x = hard_values(32 * 9)
    if name == "q8_0":
        x = np.clip(x, -100, 100)                     # Q8_0 scales are fp16 too
    expected = kv_rows.encode(x, fmt)                                   # NumPy
    stored = np.zeros_like(expected)
    native.lib.kv_rows_store(fmt.kernel_format, native.ffi.from_buffer("uint8_t[]", stored, require_writable=True),
                             native.ffi.from_buffer("float[]", x), len(x))
    np.testing.assert_array_equal(stored.view(np.uint8), expected.view(np.uint8))
    back = np.zeros_like(x)
    native.lib.kv_rows_load(fmt.kernel_format, native.ffi.from_buffer("float[]", back, require_writable=True),
                            native.ffi.from_buffer("uint8_t[]", stored), len(x))
    np.testing.assert_array_equal(back, kv_rows.decode(expected, len(x)))


@needs_kernels
@pytest.mark.filterwarnings("ignore:overflow encountered in cast")   # past 65,520 → inf, on purpose
def test_c_rounds_every_hard_float_to_the_half_numpy_gives():
    x = half_rounding_cases()
    stored = np.zeros(len(x), np.float16)
    native.lib.kv_rows_store(KV_FORMATS["f16"].kernel_format,
                             native.ffi.from_buffer("uint8_t[]", stored, require_writable=True),
                             native.ffi.from_buffer("float[]", x), len(x))
    np.testing.assert_array_equal(stored.view(np.uint16), x.astype(np.float16).view(np.uint16))


@pytest.mark.parametrize("name", ["f16", "q8_0"])
def test_rounding_costs_what_the_format_promises(name):
    x = rand(64, 4, 64)
    error = np.abs(kv_rows.decode(kv_rows.encode(x, KV_FORMATS[name]), 64) - x).max()
    assert error <= (np.abs(x).max() * 2.0 ** -11 if name == "f16" else np.abs(x).max() / 127)


def cache_rows(k, v, name):
    fmt = KV_FORMATS[name]
    return kv_rows.encode(k, fmt), kv_rows.encode(v, fmt)


def reference_attention(q, k_rows, v_rows):
    """The NumPy backend: the textbook attention over the dequantized rows."""
    return kernels.NUMPY.attention(q, k_rows, v_rows)


SIZES = [  # (queries T, keys S, heads H, key/value heads H_kv, head_dim)
    (1, 1, 9, 3, 64),
    (33, 33, 9, 3, 64),
    (1, 1999, 9, 3, 64),
    (37, 1999, 6, 3, 32),       # the last 37 queries of a long prompt, several blocks each
    (300, 300, 5, 1, 32),       # one key/value head, 5 query heads; across the first block's edge
    (7, 40, 4, 2, 64),
]


@needs_kernels
@pytest.mark.parametrize("name", sorted(KV_FORMATS))
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "T{}-S{}-H{}-kv{}-hd{}".format(*s))
def test_c_attention_matches_the_numpy_reference(name, size, threads):
    n_tokens, n_keys, n_heads, n_kv_heads, head_dim = size
    q = rand(n_tokens, n_heads, head_dim, seed=1)
    k_rows, v_rows = cache_rows(rand(n_keys, n_kv_heads, head_dim, seed=2), rand(n_keys, n_kv_heads, head_dim, seed=3), name)
    expected = reference_attention(q, k_rows, v_rows)
    results = []
    for n in (1, 3):
        threads(n)
        results.append(native.attention_forward(q, k_rows, v_rows))
    np.testing.assert_allclose(results[0], expected, rtol=1e-5, atol=2e-6)
    np.testing.assert_array_equal(results[0], results[1])              # thread count changes nothing


@needs_kernels
@pytest.mark.parametrize("later_block_wins", [False, True])
def test_partial_softmaxes_merge_safely_with_extreme_scores(later_block_wins, threads):
    """Scores thousands apart between blocks: the lower block must weigh exactly 0 (its
    e^(m_i - m) underflows, never e^(+big) overflowing), and a later, higher block must
    rescale what came before, whichever thread computed which."""
    n_keys, head_dim = 3 * KEY_BLOCK + 17, 32
    q = np.zeros((1, 3, head_dim), np.float32)
    q[0, :, 0] = [60.0, -60.0, 1e-3]                  # scores up to ±60·k/√32 apart
    k = rand(n_keys, 1, head_dim, seed=4)
    k[:, 0, 0] = -50.0
    high = slice(2 * KEY_BLOCK, 2 * KEY_BLOCK + 5) if later_block_wins else slice(3, 8)
    k[high, 0, 0] = 50.0                               # five keys in one block stand out by 100·60/√32
    v = rand(n_keys, 1, head_dim, seed=5)
    expected = ops.attention_forward(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64))[0]
    for n in (1, 2, 3):
        threads(n)
        out = native.attention_forward(q, k, v)
        assert np.isfinite(out).all()
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
        # the fused decode step merges its blocks the same way
    assert np.allclose(out[0, :head_dim], v[high, 0].mean(axis=0), atol=1e-5)   # only the five count


def long_config():
    """GQA with 3 key/value heads (which 2 threads cannot split evenly) and head_dim 32,
    so that every format, q8_0 included, fits."""
    return LlamaConfig(vocab_size=50, hidden_size=96, intermediate_size=160, num_hidden_layers=2,
                       num_attention_heads=6, num_key_value_heads=3, head_dim=32, rms_norm_eps=1e-5,
                       rope_theta=10000.0, max_position_embeddings=4096)


# Logits of the two paths may differ by the new row's rounding: each path computes k and v
# with its own products (float-level apart) and rounds them to the format; a step of f16
# (2^-11 relative) or q8_0 (1/127 of a block's largest value) then moves logits of this
# model by up to ~6e-4 (f16) / 4e-3 (q8_0), measured.
NEW_ROW_ROUNDING = {"f32": 1e-4, "f16": 2e-3, "q8_0": 1e-2}


@needs_kernels
@pytest.mark.parametrize("name", sorted(KV_FORMATS))
@pytest.mark.parametrize("n_prompt", [1, 33, 1999])
def test_fused_decode_matches_numpy_for_each_format(name, n_prompt, threads):
    """Prefill, then decode 3 tokens one at a time with the fused C block; each step's
    logits equal those of the NumPy model (whose attention reads the dequantized rows)
    decoding from a copy of the same cache, and the row each writes agrees; the logits are
    the same for 1, 2 and 3 threads. (From a copy: a q8_0 row is a step of 1/127 of its
    block's largest value, so the two paths' float-level differences could flip a step.
    The new row itself each path rounds from its own k and v: NEW_ROW_ROUNDING.)"""
    config = long_config()
    weights = decode_weights(config, ("Q8_0", "Q4_1"))
    ids = list(np.random.default_rng(6).integers(0, config.vocab_size, n_prompt + 3))
    reference = Llama(config, weights, use_kernels=False)
    runs = []
    for n in (1, 2, 3):
        threads(n)
        fused = Llama(config, weights)
        assert fused._fused_decoders()
        cache = fused.new_cache(n_prompt + 3, name)
        fused.forward(ids[:n_prompt], cache)
        logits = []
        for t in ids[n_prompt:]:
            copy = reference.new_cache(n_prompt + 3, name)
            copy.reserve(cache.capacity)
            copy.k[...], copy.v[...], copy.length = cache.k, cache.v, cache.length
            expected = reference.forward([t], copy)
            logits.append(fused.forward([t], cache))
            np.testing.assert_allclose(logits[-1], expected, rtol=0, atol=NEW_ROW_ROUNDING[name])
            row = slice(cache.length - 1, cache.length)
            np.testing.assert_allclose(kv_rows.decode(cache.k[:, row], 32), kv_rows.decode(copy.k[:, row], 32),
                                       rtol=1e-2, atol=2e-2)
        runs.append(np.concatenate(logits))
    assert np.array_equal(runs[0], runs[1]) and np.array_equal(runs[0], runs[2])


@needs_kernels
def test_a_model_in_code_keeps_f32_and_the_tools_set_their_format():
    config = long_config()
    model = Llama(config, decode_weights(config, ("F32",)))
    assert model.new_cache(4).k.dtype == np.float32
    model.kv_cache_format = "f16"                       # what cli.load_for_inference does
    assert model.new_cache(4).k.dtype == np.float16
    assert model.new_cache(4, "q8_0").k.shape == (2, 4, 3, 34)


@pytest.mark.parametrize("use_kernels", [True, False])
@pytest.mark.parametrize("name", sorted(KV_FORMATS))
def test_a_cache_that_grows_gives_the_logits_of_one_made_whole(name, use_kernels, monkeypatch):
    """A cache starts with room for FIRST_CAPACITY positions and grows when a prompt or a
    decode step needs more; the filled rows move over, so the logits are those of a cache
    that had room for everything from the start, bit for bit."""
    if use_kernels and not kernels.AVAILABLE:
        pytest.skip("C kernels not built")
    from llama_np.llama import kv_cache
    config = long_config()
    model = Llama(config, decode_weights(config, ("Q8_0", "Q4_1")), use_kernels=use_kernels)
    ids = list(np.random.default_rng(7).integers(0, config.vocab_size, 300))

    def run(first_capacity):
        monkeypatch.setattr(kv_cache, "FIRST_CAPACITY", first_capacity)
        cache = model.new_cache(700, name)
        capacities = [cache.capacity]
        logits = [model.forward(ids[:250], cache)]             # fits the first 256
        for token in ids[250:290]:                             # decode grows it at position 256
            logits.append(model.forward([token], cache))
            capacities.append(cache.capacity)
        logits.append(model.forward(ids[290:], cache))
        return np.concatenate(logits), capacities, cache

    grown, capacities, cache = run(256)
    whole, whole_capacities, _ = run(700)
    assert capacities[0] == 256 and capacities[-1] == 2 * 257 and set(whole_capacities) == {700}
    np.testing.assert_array_equal(grown, whole)
    assert cache.length == 300 and cache.k.shape[1] == cache.capacity
    with pytest.raises(ValueError, match="context overflow"):
        cache.reserve(701)
    cache.reserve(700)
    assert cache.capacity == 700                                # never past max_len


# f16 cache against f32, real model, 1,900 positions: measured 0.012-0.019 on four windows of
# English and Chinese text, above the 1e-2. Rounding an exact f32 cache to f16 once,
# after the prompt, moves them by 0.008-0.015 already, nearly all of it from the keys; keys
# stored relative to a reference vector (softmax ignores a constant added to every score:
# the first position's key, the mean of the first 37 or 512, of all) moved it by up to 0.004
# either way, keeping the first 1-64 positions exact by under 0.002: so it is
# the format's own 11-bit step spread over every position, not the kernels or a few outliers.
F16_AT_LONG_CONTEXT = 2.5e-2


@pytest.mark.slow
@needs_kernels
@pytest.mark.parametrize("text", ["alpaca_en", "cmrc2018"])
def test_f16_cache_stays_near_f32_at_1900_positions(real_model, text):
    """The default model fills 1,900 positions of a real text (English answers, held-out
    Chinese Wikipedia) into an f32 and an f16 cache, then decodes the text's next 4 tokens one
    at a time in each: every decoded position's logits agree within F16_AT_LONG_CONTEXT
    (logits span ≈ 60).
    The oracle is the f32 cache, exact keys and values, which tests/test_checkpoint_* hold to
    transformers."""
    from llama_np.chinese.corpus import evaluation_text
    model, tokenizer = real_model
    ids = tokenizer.encode(evaluation_text(text))[:1904]
    assert len(ids) == 1904
    logits = {}
    for name in ("f32", "f16"):
        cache = model.new_cache(2048, name)
        model.forward(ids[:1900], cache, last_only=True)
        logits[name] = np.stack([model.forward([t], cache)[-1] for t in ids[1900:]])   # [4, V]
    assert np.abs(logits["f16"] - logits["f32"]).max() <= F16_AT_LONG_CONTEXT


@pytest.mark.slow
@needs_kernels
def test_f16_cache_keeps_greedy_continuations_after_a_long_context(real_model):
    """Three chat prompts, each after ~1,800 tokens of earlier conversation text, continue
    greedily with the same 24 tokens from an f16 cache as from an f32 one."""
    from llama_np.chinese.corpus import evaluation_text
    from llama_np.llama.generation import generate
    from llama_np.llama.sampling import Sampler, SamplingSettings
    model, tokenizer = real_model
    history = tokenizer.encode(evaluation_text("alpaca_en"))[:1800]
    for question in ["What is the capital of France?", "Write a haiku about the sea.",
                     "请用一句话介绍长城。"]:
        prompt = history + tokenizer.encode(f"\n\nQuestion: {question}\nAnswer:")
        continuations = []
        for name in ("f32", "f16"):
            cache = model.new_cache(2048, name)
            sampler = Sampler(SamplingSettings(temperature=0))
            continuations.append(list(generate(model, prompt, sampler, max_new_tokens=24, cache=cache)))
        assert continuations[0] == continuations[1], question
