"""A broken or unsupported GGUF gives a clear error naming the file and the tensor."""
import os
import subprocess
import sys

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from llama_np.checkpoint.gguf import load_gguf
from llama_np.checkpoint.gguf_file import GGUFError, GGUFFile

D, F, V, HEADS = 32, 64, 40, 2


def write_tiny_gguf(path, odd_tensor_type=None):
    """A one-layer llama GGUF with random F32 weights; optionally attn_v stored as another
    ggml type (raw bytes of the right size)."""
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(D)
    w.add_feed_forward_length(F)
    w.add_head_count(HEADS)
    w.add_head_count_kv(HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(V)
    shapes = {"token_embd.weight": (V, D), "output_norm.weight": (D,), "output.weight": (V, D),
              "blk.0.attn_norm.weight": (D,), "blk.0.ffn_norm.weight": (D,),
              "blk.0.attn_q.weight": (D, D), "blk.0.attn_k.weight": (D, D),
              "blk.0.attn_v.weight": (D, D), "blk.0.attn_output.weight": (D, D),
              "blk.0.ffn_gate.weight": (F, D), "blk.0.ffn_up.weight": (F, D),
              "blk.0.ffn_down.weight": (D, F)}
    for name, shape in shapes.items():
        if name == "blk.0.attn_v.weight" and odd_tensor_type is not None:
            block_size, block_bytes = gguf.GGML_QUANT_SIZES[odd_tensor_type]
            raw = np.zeros((D, D // block_size * block_bytes), dtype=np.uint8)
            w.add_tensor(name, raw, raw_dtype=odd_tensor_type)
        else:
            w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_tiny_gguf_loads(tmp_path):
    config, weights, _ = load_gguf(write_tiny_gguf(tmp_path / "ok.gguf"))
    assert config.hidden_size == D and not config.tie_word_embeddings
    assert weights["model.layers.0.mlp.down_proj.weight"].shape == (D, F)


def test_bad_magic(tmp_path):
    path = tmp_path / "bad.gguf"
    path.write_bytes(b"GGML" + b"\0" * 64)
    with pytest.raises(GGUFError, match=r"bad\.gguf: not a GGUF file"):
        GGUFFile(path)


def test_truncated_tensor_names_the_tensor(tmp_path):
    path = write_tiny_gguf(tmp_path / "cut.gguf")
    data = path.read_bytes()
    path.write_bytes(data[:-100])  # the last tensor loses its tail
    with pytest.raises(GGUFError, match=r"cut\.gguf: tensor 'blk\.0\.ffn_down\.weight' is truncated"):
        load_gguf(path)


def test_truncated_header(tmp_path):
    path = write_tiny_gguf(tmp_path / "head.gguf")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(GGUFError, match="truncated or corrupt header"):
        GGUFFile(path)


def test_unsupported_tensor_type_names_type_and_tensor(tmp_path):
    path = write_tiny_gguf(tmp_path / "iq4.gguf", odd_tensor_type=gguf.GGMLQuantizationType.IQ4_NL)
    with pytest.raises(GGUFError, match=r"tensor 'blk\.0\.attn_v\.weight' has type IQ4_NL"):
        load_gguf(path)


def test_missing_tensor(tmp_path):
    path = write_tiny_gguf(tmp_path / "ok.gguf")
    gg = GGUFFile(path)
    with pytest.raises(GGUFError, match="'nope' is missing"):
        gg.tensor_data("nope")


def test_cli_reports_one_line_and_fails(tmp_path):
    path = tmp_path / "bad.gguf"
    path.write_bytes(b"not a model at all")
    result = subprocess.run([sys.executable, "-m", "llama_np.generate", "--model", str(path),
                             "--prompt", "hi"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "not a GGUF file" in result.stderr and "Traceback" not in result.stderr
