"""Embedding resize (llama_np.resize): old rows untouched, so old tokens' logits stay
bit-identical; tied stays tied, or is untied into a head of its own with the same logits;
quantized rows keep their bytes; the two initialisations; the CLI; an adapter for the
resized vocabulary refused by the original model."""
import os

import numpy as np
import pytest

from conftest import save_tiny_llama
from llama_np import resize as resize_tool
from llama_np.chinese import resize
from llama_np.llama import adapter as lora
from llama_np import quant
from llama_np.checkpoint.safetensors import load_hf
from llama_np.llama.model import Llama
from test_train_cli import run_cli, tiny_model_folder

NEW_WORDS = ["中国", "北京", "你好"]


def resized_tiny(folder, tied, n_new=5, init="pieces"):
    save_tiny_llama(folder, tied=tied)
    config, weights = load_hf(str(folder))
    pieces = [[3, 7], [11], [5, 6, 7], [90, 1], [42]][:n_new]
    return config, weights, *resize.resize_vocabulary(config, weights, pieces, init), pieces


@pytest.mark.parametrize("tied", [True, False])
def test_old_rows_untouched_and_old_logits_bit_identical(tmp_path, tied):
    config, weights, new_config, new_weights, pieces = resized_tiny(tmp_path, tied)
    assert new_config.vocab_size == config.vocab_size + len(pieces)
    assert new_config.tie_word_embeddings == tied and (resize.LM_HEAD in new_weights) == (not tied)
    names = [resize.EMBED] if tied else [resize.EMBED, resize.LM_HEAD]
    for name in names:
        assert new_weights[name].shape == (new_config.vocab_size, config.hidden_size)
        assert np.array_equal(new_weights[name][:config.vocab_size], weights[name])
    ids = np.arange(3, 40)                                   # old tokens only
    before = Llama(config, weights).forward(ids)             # [T, V]
    after = Llama(new_config, new_weights).forward(ids)      # [T, V′]
    assert np.array_equal(after[:, :config.vocab_size], before)


def test_an_untied_head_is_a_copy_with_the_same_logits(tmp_path):
    """untie_head before the resize: a head of its own, grown as the embedding is, and
    every token's logits (old and new) those of the tied resized model, bit for bit."""
    config, weights, tied_config, tied_weights, pieces = resized_tiny(tmp_path, tied=True)
    untied_config, untied_weights = resize.resize_vocabulary(*resize.untie_head(config, weights), pieces)
    assert config.tie_word_embeddings and not untied_config.tie_word_embeddings
    assert np.array_equal(untied_weights[resize.LM_HEAD], untied_weights[resize.EMBED])
    assert np.array_equal(untied_weights[resize.EMBED], tied_weights[resize.EMBED])
    ids = np.arange(3, untied_config.vocab_size)             # old and new tokens
    assert np.array_equal(Llama(untied_config, untied_weights).forward(ids),
                          Llama(tied_config, tied_weights).forward(ids))
    again = resize.untie_head(untied_config, untied_weights)                  # already untied: as it is
    assert again[0] is untied_config and again[1] is untied_weights


def test_pieces_and_mean_initialisation(tmp_path):
    config, weights, _, by_pieces, pieces = resized_tiny(tmp_path, tied=True, init="pieces")
    _, _, _, by_mean, _ = resized_tiny(tmp_path, tied=True, init="mean")
    embed, v = weights[resize.EMBED], config.vocab_size
    for i, ids in enumerate(pieces):
        np.testing.assert_allclose(by_pieces[resize.EMBED][v + i], embed[ids].mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(by_mean[resize.EMBED][v + i], embed.mean(axis=0), rtol=1e-5, atol=1e-7)


def test_quantized_table_keeps_its_blocks(rng):
    table = quant.QuantizedMatrix(quant.quantize(rng.normal(size=(50, 64)).astype(np.float32), "Q8_0"),
                                  "Q8_0", (50, 64))
    grown = resize.append_rows(table, resize.new_rows(table, [[1, 2], [3]], "pieces"))
    assert grown.shape == (52, 64) and grown.qtype == "Q8_0"
    assert np.array_equal(grown.data[:50], table.data)
    np.testing.assert_allclose(grown.rows(np.array([51]))[0], table.rows(np.array([3]))[0], atol=1e-6)


def test_real_model_old_token_logits_bit_identical(real_model):
    """The must-hold on the default model: a BPE extension learned here, the Q8_0 tied
    embedding grown, and an English text (old tokens only) gives the same logits."""
    from llama_np.checkpoint.gguf_file import GGUFFile
    from llama_np.tokenizer.tokenizers import Tokenizer
    from llama_np.chinese.vocab_bpe import extended_metadata, learn_extension

    model, tokenizer = real_model
    base = GGUFFile(tokenizer.source).metadata
    chinese = ["北京是中国的首都。北京有很多名胜古迹。", "上海是中国最大的城市。你好，北京！"] * 3
    new_tokenizer = Tokenizer.from_gguf_metadata(extended_metadata(base, learn_extension(base, chinese, 12)))
    resized = resize.resize_model(model, tokenizer, new_tokenizer)
    assert resized.config.vocab_size == new_tokenizer.vocab_size > tokenizer.vocab_size
    ids = tokenizer.encode("The capital of France is Paris.")
    assert new_tokenizer.encode("The capital of France is Paris.") == ids
    before = model.forward(ids)
    after = resized.forward(ids)
    assert np.array_equal(after[:, :tokenizer.vocab_size], before)
    # a new token starts as the mean of the old tokens spelling it
    new_id = tokenizer.vocab_size
    old_ids = tokenizer.encode(new_tokenizer.decode([new_id]))
    np.testing.assert_allclose(resized.weights[resize.EMBED].rows(np.array([new_id]))[0],
                               model.weights[resize.EMBED].rows(np.array(old_ids)).mean(axis=0), atol=0.02)


def extended_tiny_tokenizer(tiny, folder):
    """The tiny model's tokenizer with NEW_WORDS appended (as added tokens), saved to `folder`."""
    import json
    import shutil
    import tokenizers
    tok = tokenizers.Tokenizer.from_file(os.path.join(tiny, "tokenizer.json"))
    tok.add_tokens(NEW_WORDS)
    os.makedirs(folder)
    tok.save(os.path.join(folder, "tokenizer.json"))
    shutil.copyfile(os.path.join(tiny, "tokenizer_config.json"), os.path.join(folder, "tokenizer_config.json"))
    return str(folder), json.load(open(os.path.join(tiny, "config.json")))["vocab_size"]


def test_cli_writes_a_loadable_hf_folder(tmp_path, capsys):
    from llama_np.checkpoint import load_model
    tiny = tiny_model_folder(tmp_path / "tiny")
    tok_dir, old_vocab = extended_tiny_tokenizer(tiny, tmp_path / "tok")
    out = tmp_path / "resized"
    code, err = run_cli(resize_tool.main, ["--model", tiny, "--tokenizer", tok_dir, "--out", str(out)], capsys)
    assert code == 0, err
    model, tokenizer = load_model(str(out))
    assert model.config.vocab_size == tokenizer.vocab_size == old_vocab + len(NEW_WORDS)
    assert tokenizer.encode("中国", add_bos=False) == [old_vocab]

    # the same tokenizer again is no extension of the resized model: a clear error
    code, err = run_cli(resize_tool.main, ["--model", str(out), "--tokenizer", tok_dir, "--out", str(tmp_path / "x")], capsys)
    assert code == 1 and "nothing to add" in err


def test_adapter_for_other_vocabulary_is_a_clear_error(tmp_path, capsys):
    """An adapter trained on the resized model (its embedding has V′ rows) does not fit the
    original model: refused with the vocabulary sizes named, in one line from a CLI."""
    from llama_np import generate
    from llama_np.checkpoint.peft import save_adapter
    tiny = tiny_model_folder(tmp_path / "tiny")
    tok_dir, old_vocab = extended_tiny_tokenizer(tiny, tmp_path / "tok")
    run_cli(resize_tool.main, ["--model", tiny, "--tokenizer", tok_dir, "--out", str(tmp_path / "resized")], capsys)
    config, weights = load_hf(str(tmp_path / "resized"))
    config_lora = lora.LoraConfig(target_modules=["q_proj"], modules_to_save=["embed_tokens"],
                                  ensure_weight_tying=True)
    save_adapter(tmp_path / "adapter", lora.Adapter.init(config, weights, config_lora, np.random.default_rng(0)))
    code, err = run_cli(generate.main, ["--model", tiny, "--adapter", str(tmp_path / "adapter"),
                                        "--prompt", "hi", "--max-new-tokens", "2"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert f"vocabulary {old_vocab}" in err and str(old_vocab + len(NEW_WORDS)) in err
