"""Hugging Face folders: sharded checkpoints, bfloat16, clear errors."""
import json

import numpy as np
import pytest

from conftest import save_tiny_llama
from llama_np.checkpoint.safetensors import CheckpointError, load_hf
from llama_np.llama.model import Llama

torch = pytest.importorskip("torch")


def test_sharded_checkpoint_matches_transformers(tmp_path):
    hf_model = save_tiny_llama(tmp_path / "one", tied=False)
    hf_model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    config, weights = load_hf(str(tmp_path / "sharded"))
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    with torch.no_grad():
        expected = hf_model(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(Llama(config, weights).forward(ids), expected, atol=1e-4, rtol=0)


def test_bfloat16_checkpoint_is_widened_exactly(tmp_path):
    hf_model = save_tiny_llama(tmp_path / "f32", tied=True)
    hf_model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    _, weights = load_hf(str(tmp_path / "bf16"))
    name = "model.layers.0.self_attn.q_proj.weight"
    expected = hf_model.state_dict()[name].float().numpy()
    np.testing.assert_array_equal(weights[name], expected)


def test_missing_tensor_and_bad_config_are_named(tmp_path):
    save_tiny_llama(tmp_path, tied=False)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] += 1
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="gate_proj.weight' has shape"):
        load_hf(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        load_hf(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, intermediate_size=96)))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_hf(str(tmp_path))
