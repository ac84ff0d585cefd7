"""`python -m llama_np.merge_lora`: GGUF → GGUF (re-quantized or F32, untouched tensors
byte-identical) and Hugging Face → Hugging Face; the merged model computes what the base
with the unmerged adapter computes."""
import json
import os

import numpy as np
import pytest

from conftest import save_tiny_llama
from llama_np import merge_lora
from llama_np.llama import adapter as lora
from llama_np import quant
from llama_np.checkpoint.gguf import gguf_name, load_gguf, permute_qk
from llama_np.checkpoint.peft import apply_adapters, save_adapter
from llama_np.checkpoint.safetensors import load_hf
from llama_np.llama.model import Llama

from test_lora import tiny_config, tiny_weights
from test_train_cli import run_cli

gguf = pytest.importorskip("gguf")


def write_gguf(path, config, weights, qtype="Q8_0"):
    """A tiny llama GGUF as convert_hf_to_gguf.py lays it out (Q/K rows permuted), matrices
    quantized to `qtype`, with a toy gpt2 tokenizer in the metadata."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(config.num_hidden_layers)
    w.add_context_length(64)
    w.add_embedding_length(config.hidden_size)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_rope_dimension_count(config.head_dim)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_rope_freq_base(config.rope_theta)
    w.add_vocab_size(config.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(config.vocab_size)])
    w.add_eos_token_id(2)
    for name, value in weights.items():
        target = gguf_name(name)
        value = value.astype(np.float32)
        if target.endswith(("attn_q.weight", "attn_k.weight")):
            heads = config.num_attention_heads if "attn_q" in target else config.num_key_value_heads
            value = permute_qk(value, heads)
        if value.ndim == 2:
            w.add_tensor(target, quant.quantize(value, qtype), raw_dtype=gguf.GGMLQuantizationType[qtype])
        else:
            w.add_tensor(target, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


@pytest.fixture
def tiny_gguf(tmp_path, rng):
    config = tiny_config(tied=True)
    config.hidden_size, config.intermediate_size, config.head_dim = 64, 96, 16  # rows of whole Q8_0 blocks
    base = write_gguf(tmp_path / "base.gguf", config, tiny_weights(config, rng, np.float32))
    config, weights, _ = load_gguf(base)
    adapter = lora.Adapter.init(config, weights, lora.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "down_proj"], modules_to_save=["lm_head"]), rng)
    for p in adapter.params.values():
        p += rng.standard_normal(p.shape).astype(np.float32) * 0.2
    save_adapter(tmp_path / "adapter", adapter)
    return base, str(tmp_path / "adapter"), config, weights


def test_gguf_merge_in_f32_equals_the_unmerged_adapter(tiny_gguf, tmp_path, capsys, rng):
    base, adapter_dir, config, weights = tiny_gguf
    out = str(tmp_path / "merged.gguf")
    code, err = run_cli(merge_lora.main, ["--base", base, "--adapter", adapter_dir, "--out", out, "--qtype", "F32"], capsys)
    assert code == 0, err
    merged_config, merged, _ = load_gguf(out)
    assert not merged_config.tie_word_embeddings  # the adapter trained its own head
    ids = rng.integers(0, config.vocab_size, 12)
    expected = apply_adapters(Llama(config, dict(weights)), [adapter_dir]).forward(ids)
    np.testing.assert_allclose(Llama(merged_config, merged).forward(ids), expected, atol=1e-4)


def test_gguf_merge_requantizes_merged_tensors_and_copies_the_rest(tiny_gguf, tmp_path, capsys):
    base, adapter_dir, config, weights = tiny_gguf
    out = str(tmp_path / "merged.gguf")
    assert run_cli(merge_lora.main, ["--base", base, "--adapter", adapter_dir, "--out", out], capsys)[0] == 0
    src, dst = gguf.GGUFReader(base), gguf.GGUFReader(out)
    src_t, dst_t = {t.name: t for t in src.tensors}, {t.name: t for t in dst.tensors}
    assert set(dst_t) == set(src_t) | {"output.weight"}
    for name, t in src_t.items():
        assert dst_t[name].tensor_type == t.tensor_type
        same = np.array_equal(np.asarray(dst_t[name].data), np.asarray(t.data))
        assert same == (not name.endswith(("attn_q.weight", "attn_k.weight", "ffn_down.weight"))), name
    _, merged, _ = load_gguf(out)
    merged_config, expected = lora.merge(config, weights, lora_adapter(adapter_dir))
    name = "model.layers.1.self_attn.q_proj.weight"
    requantized = quant.dequantize(quant.quantize(expected[name], "Q8_0"), "Q8_0")
    np.testing.assert_array_equal(merged[name].dequantize(), requantized)
    assert [f for f in dst.fields if f.startswith("tokenizer.")] == [f for f in src.fields if f.startswith("tokenizer.")]


def lora_adapter(folder):
    from llama_np.checkpoint.peft import load_adapter
    return load_adapter(folder, tied_base=True)


def test_hf_merge_writes_a_folder_with_the_tokenizer(tmp_path, capsys, rng):
    save_tiny_llama(tmp_path / "base", tied=False)
    (tmp_path / "base" / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    config, weights = load_hf(str(tmp_path / "base"))
    adapter = lora.Adapter.init(config, weights, lora.LoraConfig(r=2, target_modules=list(lora.PROJECTIONS)), rng)
    for p in adapter.params.values():
        p += 0.1
    save_adapter(tmp_path / "a", adapter)
    out = tmp_path / "merged"
    code, err = run_cli(merge_lora.main, ["--base", str(tmp_path / "base"), "--adapter", str(tmp_path / "a"),
                                          "--out", str(out)], capsys)
    assert code == 0, err
    assert os.path.exists(out / "tokenizer_config.json")
    _, merged = load_hf(str(out))
    _, expected = lora.merge(config, weights, adapter)
    for name in expected:
        np.testing.assert_array_equal(merged[name], lora.dense(expected[name]))


@pytest.mark.parametrize("flags, message", [
    (["--adapter", "NOWHERE"], "NOWHERE: no such adapter folder"),
    (["--qtype", "Q4_0", "--out", "OUTDIR"], "--type applies to a .gguf output only"),
    (["--base", "missing.gguf"], "missing.gguf: no such model"),
])
def test_bad_input_is_one_line(tiny_gguf, tmp_path, capsys, flags, message):
    base, adapter_dir, _, _ = tiny_gguf
    argv = ["--base", base, "--adapter", adapter_dir, "--out", str(tmp_path / "m.gguf")]
    flags = [str(tmp_path / "nowhere") if f == "NOWHERE" else str(tmp_path / "outdir") if f == "OUTDIR" else f
             for f in flags]
    for flag, value in zip(flags[::2], flags[1::2]):
        if flag in argv and flag != "--adapter":
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    code, err = run_cli(merge_lora.main, argv, capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and message.replace("NOWHERE", "") in lines[0], err
