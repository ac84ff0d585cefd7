"""Shared fixtures: the data mirror, the real default model, tiny random LLaMAs saved by
transformers (the independent oracle)."""
import os
import shutil

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not os.environ.get("LLAMA_NP_DATA"):
    mirror = os.path.join(os.path.dirname(REPO), "shared", "data")
    if os.path.isdir(mirror):
        os.environ["LLAMA_NP_DATA"] = mirror


@pytest.fixture(scope="session")
def real_model_path():
    """The default SmolLM2-135M-Instruct Q4_1 GGUF (fetched once into the cache)."""
    from llama_np.files import hub
    try:
        return hub.default_model_path()
    except hub.HubError as e:
        pytest.skip(f"default model unavailable: {e}")


@pytest.fixture(scope="session")
def real_model(real_model_path):
    from llama_np.checkpoint import load_model
    return load_model(real_model_path)


@pytest.fixture(scope="session")
def hf_gguf_model(real_model_path):
    """transformers' LlamaForCausalLM on the same GGUF, dequantized to float32, and its
    tokenizer: the oracle for the real model (~30 s to load, once per session)."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    folder, name = os.path.split(real_model_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name).eval()
    return model, tokenizer


def save_tiny_llama(folder, *, tied, vocab=97, hidden=64, layers=2, heads=4, kv_heads=2,
                    ffn=96, seed=0, max_positions=128, rope_parameters=None):
    """A tiny random LLaMA saved by transformers; returns the torch model (eval, float32).
    `rope_parameters` (transformers 5's dict, e.g. {"rope_type": "linear", "factor": 4.0})
    gives it RoPE scaling."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    rope = (dict(rope_theta=10000.0) if rope_parameters is None
            else dict(rope_parameters=dict(rope_parameters, rope_theta=10000.0)))
    cfg = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
        rms_norm_eps=1e-5, tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        **rope)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # larger-than-default weights so differences are not hidden by tiny values
        for p in model.parameters():
            p.normal_(0.0, 0.3 if p.dim() > 1 else 1.0)
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="session")
def llama_sp_model():
    """The LLaMA SentencePiece tokenizer.model (karpathy/llama2.c) from the data mirror."""
    from llama_np.files import hub
    try:
        return hub.data_path("karpathy/llama2.c/tokenizer.model")
    except hub.HubError as e:
        pytest.skip(f"LLaMA tokenizer.model unavailable: {e}")


@pytest.fixture
def tiny_llama_sp_folder(tmp_path, llama_sp_model):
    """A LLaMA-style Hugging Face folder: a tiny random LLaMA with the LLaMA tokenizer.model."""
    folder = tmp_path / "llama_sp"
    save_tiny_llama(folder, tied=False, vocab=32000)
    shutil.copyfile(llama_sp_model, folder / "tokenizer.model")
    return folder


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def pytest_terminal_summary(terminalreporter):
    """The fuzz suite's counts (tests/test_fuzz.py), so that CI's log shows what was tried."""
    import sys
    fuzz = sys.modules.get("test_fuzz")
    if fuzz is None or not fuzz.COUNTS:
        return
    counts = fuzz.COUNTS
    total = {k: sum(c[k] for c in counts.values()) for k in ("cases", "valid", "error")}
    terminalreporter.section("fuzz")
    for target, c in sorted(counts.items()):
        terminalreporter.write_line(f"{target:24} {c['cases']:6} cases  {c['error']:6} clean errors  "
                                    f"{c['valid']:6} valid loads")
    terminalreporter.write_line(f"{'all':24} {total['cases']:6} cases  {total['error']:6} clean errors  "
                                f"{total['valid']:6} valid loads  (seed {fuzz.FUZZ_SEED}; "
                                f"LLAMA_NP_FUZZ_CASES={fuzz.FUZZ_CASES} per target)")
