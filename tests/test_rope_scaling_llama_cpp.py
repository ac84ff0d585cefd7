"""llama.cpp reads the RoPE scaling that `quantize` writes into a GGUF as llama_np does:
linear, yarn and llama3 (rope_freqs.weight), on the tiny BPE model of test_llama_cpp_compat
with its config.json given each scaling (RoPE has no weights: the same model, rescaled)."""
import json

import numpy as np
import pytest

from llama_np.checkpoint import load_model

from test_llama_cpp_compat import (F32_LOGIT_TOLERANCE, llama_cpp_greedy, llama_cpp_logits, llama_np_greedy,
                                   open_llama_cpp, quantize_to)
from test_quantize_cli import PROMPT, save_tiny_bpe_model

SCALINGS = {   # the tiny model's max_position_embeddings is 128
    "linear": {"rope_type": "linear", "factor": 4.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16},
}


@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cpp_rope")
    save_tiny_bpe_model(folder, tied=False)
    return folder


@pytest.mark.parametrize("name", list(SCALINGS))
def test_llama_cpp_computes_the_scaled_model_as_llama_np(bpe_folder, name, tmp_path, capsys):
    cfg = json.loads((bpe_folder / "config.json").read_text())
    cfg["rope_parameters"] = dict(SCALINGS[name], rope_theta=cfg["rope_parameters"]["rope_theta"])
    (bpe_folder / "config.json").write_text(json.dumps(cfg))
    path = quantize_to(bpe_folder, "F32", tmp_path / f"{name}.gguf", capsys)
    model, tokenizer = load_model(path)
    assert model.config.rope_scaling["rope_type"] == ("freq_factors" if name == "llama3" else name)
    llm = open_llama_cpp(path)
    ids = tokenizer.encode(PROMPT * 3)
    np.testing.assert_allclose(llama_cpp_logits(llm, ids), model.forward(ids), atol=F32_LOGIT_TOLERANCE)
    assert llama_cpp_greedy(llm, ids, 16) == llama_np_greedy(model, ids, 16)
