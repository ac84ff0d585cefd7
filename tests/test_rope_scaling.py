"""RoPE scaling (linear, dynamic NTK, llama3, yarn) against transformers: tiny random LLaMAs
saved by transformers with each scaling, prompts longer than the pre-training context."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import save_tiny_llama
from llama_np.checkpoint.safetensors import load_hf
from llama_np.ops import IGNORE_INDEX
from llama_np.llama.config import ConfigError, LlamaConfig
from llama_np.llama.kv_cache import KVCache
from llama_np.llama.model import Llama

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

N_ORIGINAL = 32                     # the "pre-training" context of the tiny models
PROMPT = 64                         # positions: twice N_ORIGINAL

# rope_parameters (transformers 5) and max_position_embeddings of each tiny model
SCALINGS = {
    "linear": ({"rope_type": "linear", "factor": 4.0}, N_ORIGINAL),
    "dynamic": ({"rope_type": "dynamic", "factor": 4.0}, N_ORIGINAL),
    "llama3": ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": N_ORIGINAL}, 8 * N_ORIGINAL),
    "yarn": ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": N_ORIGINAL},
             4 * N_ORIGINAL),
}


def save_scaled_llama(folder, rope_parameters, max_positions, seed=0):
    """A tiny random LLaMA with RoPE scaling, saved by transformers; returns it (eval, float32)."""
    return save_tiny_llama(folder, tied=False, heads=2, kv_heads=1, seed=seed, max_positions=max_positions,
                           rope_parameters=rope_parameters)


@pytest.fixture(scope="module", params=list(SCALINGS))
def scaled(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    save_scaled_llama(folder, *SCALINGS[request.param])
    config, weights = load_hf(str(folder))
    return request.param, config, weights, folder


def f32_cache(config, max_len):
    """A cache that keeps keys and values exact, so that what is compared is RoPE."""
    return KVCache(config, max_len, kv_cache="f32")


def prompt_ids(config, n=PROMPT, seed=1):
    return [int(t) for t in np.random.default_rng(seed).integers(3, config.vocab_size, n)]


def fresh(folder):
    """transformers' model as a new process loads it: dynamic NTK keeps state between calls
    (the longest length seen; it is kept until a call shorter than max_position_embeddings),
    which llama_np, computing from each call's length, matches only on a fresh model."""
    return transformers.LlamaForCausalLM.from_pretrained(folder).eval()


def hf_prefill(hf_model, ids):
    with torch.no_grad():
        return hf_model(torch.tensor([ids])).logits[0].numpy()


def hf_token_by_token(hf_model, ids):
    """transformers one token at a time over its KV cache (dynamic NTK then rotates each new
    key with the frequencies of the length so far, as llama_np's decode does)."""
    logits, past = [], None
    with torch.no_grad():
        for t in ids:
            out = hf_model(torch.tensor([[t]]), cache=past, use_cache=True)
            past = out.past_key_values
            logits.append(out.logits[0].numpy())
    return np.concatenate(logits)


def test_the_scaling_is_read_from_config_json(scaled):
    name, config, _, _ = scaled
    assert config.rope_scaling["rope_type"] == name
    assert config.rope_scaling["factor"] == SCALINGS[name][0]["factor"]


@pytest.mark.parametrize("use_kernels", [False, True], ids=["numpy", "kernels"])
def test_prefill_logits_match_transformers(scaled, use_kernels):
    """Against transformers in float64: its float32 logits are themselves up to 6.9e-5 from
    its float64 ones on these models, so two float32 implementations can be 1e-4 apart from
    rounding alone (llama3 with the kernels on the AVX2-only Zen 3: 1.06e-4, one logit of
    6,208), while each is within 1e-4 of the float64 answer."""
    _, config, weights, folder = scaled
    ids = prompt_ids(config)
    ours = Llama(config, weights, use_kernels=use_kernels).forward(ids, f32_cache(config, PROMPT))
    np.testing.assert_allclose(ours, hf_prefill(fresh(folder).double(), ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize("use_kernels", [False, True], ids=["numpy", "kernels"])
def test_token_by_token_decode_matches_transformers(scaled, use_kernels):
    _, config, weights, folder = scaled
    ids = prompt_ids(config, seed=2)
    model = Llama(config, weights, use_kernels=use_kernels)
    cache = f32_cache(config, PROMPT)
    ours = np.concatenate([model.forward([t], cache) for t in ids])
    np.testing.assert_allclose(ours, hf_token_by_token(fresh(folder), ids), atol=1e-4, rtol=0)


def test_greedy_continuation_matches_transformers(scaled):
    _, config, weights, folder = scaled
    prompt = prompt_ids(config, n=N_ORIGINAL + 8, seed=3)
    with torch.no_grad():
        expected = fresh(folder).generate(torch.tensor([prompt]), max_new_tokens=24, min_new_tokens=24,
                                     do_sample=False, pad_token_id=0)[0, len(prompt):].tolist()
    model = Llama(config, weights)
    cache = f32_cache(config, len(prompt) + 24)
    ours, logits = [], model.forward(prompt, cache, last_only=True)
    for _ in range(24):
        ours.append(int(np.argmax(logits[-1])))
        logits = model.forward([ours[-1]], cache)
    assert ours == expected


def test_older_rope_scaling_key_reads_the_same(scaled):
    """transformers 4 wrote the scaling as `rope_scaling` ({"type": …}) beside `rope_theta`."""
    _, config, _, folder = scaled
    cfg = json.loads((folder / "config.json").read_text())
    params = cfg.pop("rope_parameters")
    cfg["rope_theta"] = params.pop("rope_theta")
    params["type"] = params.pop("rope_type")
    cfg["rope_scaling"] = params
    assert LlamaConfig.from_hf_dict(cfg) == config


def test_scaled_context_is_the_models_maximum(scaled):
    name, config, _, _ = scaled
    expected = {"linear": 4 * N_ORIGINAL, "dynamic": 4 * N_ORIGINAL, "llama3": 8 * N_ORIGINAL,
                "yarn": 4 * N_ORIGINAL}[name]
    assert config.max_context == expected


def test_long_prompt_in_chunks_gives_one_shot_logits(scaled, monkeypatch):
    """Prefill in blocks of PREFILL_CHUNK positions: the logits equal the one-shot prefill's."""
    from llama_np.llama import model as model_module
    _, config, weights, _ = scaled
    ids = prompt_ids(config, seed=4)
    model = Llama(config, weights)
    one_shot = model.forward(ids, f32_cache(config, PROMPT))
    monkeypatch.setattr(model_module, "PREFILL_CHUNK", 24)       # 64 positions: 24 + 24 + 16
    chunked = model.forward(ids, f32_cache(config, PROMPT))
    np.testing.assert_allclose(chunked, one_shot, atol=1e-4, rtol=0)   # float32 sums in another order
    last = model.forward(ids, f32_cache(config, PROMPT), last_only=True)
    np.testing.assert_allclose(last, one_shot[-1:], atol=1e-4, rtol=0)


def tiny_config(**rope):
    return {"vocab_size": 97, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": 32, **rope}


@pytest.mark.parametrize("field", ["rope_parameters", "rope_scaling"])
def test_unknown_type_is_an_error_naming_the_field(field):
    with pytest.raises(ConfigError, match=rf"{field}\.rope_type 'longrope' is not supported"):
        LlamaConfig.from_hf_dict(tiny_config(**{field: {"rope_type": "longrope", "factor": 2.0}}))


def test_partial_rotary_factor_is_refused():
    with pytest.raises(ConfigError, match=r"rope_parameters\.partial_rotary_factor 0\.5 is not supported"):
        LlamaConfig.from_hf_dict(tiny_config(rope_parameters={"rope_type": "default", "partial_rotary_factor": 0.5}))


def test_missing_parameter_is_an_error_naming_it():
    with pytest.raises(ConfigError, match="'llama3' needs low_freq_factor"):
        LlamaConfig.from_hf_dict(tiny_config(rope_parameters={"rope_type": "llama3", "factor": 8.0}))


def test_unknown_type_is_a_one_line_cli_error(tmp_path):
    save_scaled_llama(tmp_path, *SCALINGS["linear"])
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["rope_parameters"]["rope_type"] = "su"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    result = subprocess.run([sys.executable, "-m", "llama_np.generate", "--model", str(tmp_path),
                             "--prompt", "hi"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "rope_parameters.rope_type 'su' is not supported" in lines[0]


# ----- GGUF: the scaling written as llama.cpp's metadata (llama3: rope_freqs.weight) ----------

def write_gguf(path, config, weights, metadata=None):
    from llama_np.checkpoint.gguf_writer import write_llama_gguf
    write_llama_gguf(str(path), config, weights, {name: "F32" for name in weights}, metadata or {},
                     progress=False)


def test_gguf_from_the_folder_gives_the_folders_logits(scaled, tmp_path):
    from llama_np.checkpoint.gguf import load_gguf
    name, config, weights, folder = scaled
    write_gguf(tmp_path / "m.gguf", config, weights)
    gguf_config, gguf_weights, _ = load_gguf(str(tmp_path / "m.gguf"))
    assert gguf_config.rope_scaling["rope_type"] == ("freq_factors" if name == "llama3" else name)
    assert gguf_config.max_context == config.max_context
    ids = prompt_ids(config, seed=5)
    ours = Llama(gguf_config, gguf_weights).forward(ids, f32_cache(config, PROMPT))
    np.testing.assert_allclose(ours, Llama(config, weights).forward(ids, f32_cache(config, PROMPT)),
                               atol=1e-5, rtol=0)
    np.testing.assert_allclose(ours, hf_prefill(fresh(folder), ids), atol=1e-4, rtol=0)


def test_gguf_with_an_unknown_scaling_type_is_an_error_naming_the_key(tmp_path):
    from llama_np.checkpoint.gguf import load_gguf
    from llama_np.checkpoint.gguf_writer import string
    save_scaled_llama(tmp_path, {"rope_type": "default"}, N_ORIGINAL)
    config, weights = load_hf(str(tmp_path))
    write_gguf(tmp_path / "m.gguf", config, weights, {"llama.rope.scaling.type": string("longrope")})
    with pytest.raises(ConfigError, match=r"llama\.rope\.scaling\.type 'longrope' is not supported"):
        load_gguf(str(tmp_path / "m.gguf"))


def test_config_json_written_back_reads_the_same(scaled, tmp_path):
    """save_hf's config.json (merge_lora, resize) keeps the scaling; transformers reads it."""
    from llama_np.checkpoint.safetensors import save_hf
    _, config, weights, folder = scaled
    save_hf(str(tmp_path), config, weights)
    assert load_hf(str(tmp_path))[0] == config
    ids = prompt_ids(config, n=N_ORIGINAL + 8, seed=6)
    np.testing.assert_allclose(hf_prefill(fresh(tmp_path), ids), hf_prefill(fresh(folder), ids), atol=1e-5)


def test_config_json_of_an_unscaled_model_has_no_scaling_key():
    assert "rope_scaling" not in LlamaConfig.from_hf_dict(tiny_config()).to_hf_dict()


@pytest.mark.parametrize("n_tokens,n_heads", [(1, 1), (33, 3), (7, 5)])
def test_c_rope_with_scaled_frequencies_matches_numpy(n_tokens, n_heads):
    from llama_np import kernels, ops
    if not kernels.AVAILABLE:
        pytest.skip("C kernels not built")
    rng = np.random.default_rng(n_tokens)
    x = rng.standard_normal((n_tokens, n_heads, 24)).astype(np.float32)
    positions = rng.integers(0, 5000, n_tokens).astype(np.int64)
    inv_freq = (ops.rope_inverse_frequencies(24, 10000.0) / np.float32(3.0)).astype(np.float32)
    expected = ops.rope_forward(x, positions, 10000.0, inv_freq, 1.25)[0]
    np.testing.assert_allclose(kernels.rope_(x.copy(), positions, 10000.0, inv_freq, 1.25), expected,
                               rtol=1e-4, atol=5e-5)


def test_lora_training_gradients_match_peft(scaled):
    """Training runs the same scaled RoPE (and its backward): loss and LoRA gradients of a batch
    of 2 × 48 tokens equal torch autograd + peft's on the transformers model."""
    pytest.importorskip("peft")
    from test_lora_peft import our_name, peft_model
    from llama_np.checkpoint.peft import load_adapter
    from llama_np.training.trainable import TrainableLlama
    _, config, weights, folder = scaled
    model = peft_model(folder)
    model.save_pretrained(folder / "adapter")
    ids = np.random.default_rng(7).integers(3, config.vocab_size, (2, N_ORIGINAL + 16))
    labels = ids.copy()
    labels[:, :5] = IGNORE_INDEX                                             # a masked prompt
    out = model(input_ids=torch.tensor(ids), labels=torch.tensor(labels))
    out.loss.backward()
    expected = {our_name(n): p.grad.numpy() for n, p in model.named_parameters() if p.requires_grad}
    adapter = load_adapter(folder / "adapter", tied_base=config.tie_word_embeddings)
    loss, _, grads = TrainableLlama(config, weights, adapter).loss_and_grads(ids, labels)
    assert abs(loss - out.loss.item()) < 1e-5
    assert set(grads) == set(expected)
    for name, g in grads.items():
        assert np.linalg.norm(g - expected[name]) / np.linalg.norm(expected[name]) < 1e-4, name
