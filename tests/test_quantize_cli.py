"""`python -m llama_np.quantize`: a Hugging Face folder or a GGUF in, a GGUF out whose blocks
are exactly `quant.quantize` of the source weights, whose logits stay close to the fp32
model's, and whose tokenizer tokenizes as the source's; every bad input ends in one line on
stderr and a non-zero exit, with nothing written."""
import json
import os

import numpy as np
import pytest

from conftest import save_tiny_llama
from llama_np import quantize
from llama_np.cli import common as cli
from llama_np import quant
from llama_np.checkpoint import load_model
from llama_np.checkpoint.gguf import load_gguf
from llama_np.checkpoint.gguf_file import GGUFFile
from llama_np.checkpoint.safetensors import load_hf
from llama_np.llama.model import Llama
from llama_np.tokenizer.tokenizers import Tokenizer

CORPUS = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France.",
          "In 1969, 2 astronauts walked on the Moon.", "Write a short poem about the sea.",
          "Name three colours: red, blue, green."]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
          "+ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
PROMPT = "The quick brown fox, in 1969"

# How far quantized logits may move from the fp32 model's: the mean |Δlogit| as a fraction
# of the spread (standard deviation) of the fp32 logits. Measured on these tiny models:
# Q8_0 0.010, Q4_1 0.13-0.14, Q4_0 0.16 — 4-bit steps are ~17x coarser than 8-bit ones
# (127 vs 7.5 levels per half-range), and the logits show it. The bounds leave room.
MEAN_LOGIT_ERROR = {"Q8_0": 0.02, "Q4_1": 0.25, "Q4_0": 0.25}


def save_tiny_bpe_model(folder, *, tied, seed=0, extra_rows=0, **shape):
    """A tiny random LLaMA with a byte-level BPE tokenizer trained here on a few sentences,
    SmolLM's kind (digits split off, then GPT-2's regex), ChatML special tokens and template.
    The embedding has `extra_rows` more rows than the tokenizer has tokens (negative: fewer);
    `shape` (hidden=, layers=, heads=, kv_heads=, ffn=) goes to conftest.save_tiny_llama."""
    import torch
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 5, trainer)
    model = save_tiny_llama(folder, tied=tied, vocab=tok.get_vocab_size() + extra_rows, seed=seed, **shape)
    # save_tiny_llama's weights (std 0.3) make every layer amplify by ~2.4, so the smallest
    # rounding grows chaotically; std 1/sqrt(fan_in), as a trained network keeps its
    # activations, lets the logits show the quantization error itself
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(1.0 / (0.3 * p.shape[1] ** 0.5))
    model.save_pretrained(folder)
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": False,
                   "clean_up_tokenization_spaces": False, "chat_template": CHATML}, f)
    return model


def run_cli(argv, capsys):
    """`python -m llama_np.quantize argv` in-process, as `cli.run` runs it: (exit code, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.run(lambda: quantize.main(argv + ["--quiet"]))
    return exit_info.value.code, capsys.readouterr().err


def relative_logit_error(logits, reference):
    return float(np.abs(logits - reference).mean() / reference.std())


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def tiny_folder(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_tied" if request.param else "tiny_untied")
    save_tiny_bpe_model(folder, tied=request.param)
    return str(folder)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_1", "Q4_0"])
def test_hf_folder_quantizes_to_the_reference_blocks(tiny_folder, qtype, tmp_path, capsys):
    out = str(tmp_path / f"tiny.{qtype}.gguf")
    code, err = run_cli([tiny_folder, "--type", qtype, "--out", out], capsys)
    assert code == 0, err
    assert "wrote" in err

    config, hf_weights = load_hf(tiny_folder)
    _, weights, gguf_file = load_gguf(out)  # load_gguf un-permutes Q/K: HF row order again
    assert gguf_file.metadata["general.file_type"] == {"Q8_0": 7, "Q4_1": 3, "Q4_0": 2}[qtype]
    for name, w in hf_weights.items():
        if w.ndim == 1:
            np.testing.assert_array_equal(weights[name], w)      # norms stay F32, exactly
            continue
        expected = qtype if "embed_tokens" not in name and "lm_head" not in name else (
            "Q8_0" if qtype in ("Q4_0", "Q4_1") else qtype)      # the default --embed-type
        assert weights[name].qtype == expected, name
        np.testing.assert_array_equal(weights[name].data, quant.quantize(w, expected), err_msg=name)

    ids = Tokenizer.from_hf_dir(tiny_folder).encode(PROMPT)
    fp32 = Llama(config, hf_weights).forward(ids)
    quantized = Llama(config, weights).forward(ids)
    assert relative_logit_error(quantized, fp32) < MEAN_LOGIT_ERROR[qtype]


def test_tokenizer_and_chat_template_travel_with_the_weights(tiny_folder, tmp_path, capsys):
    out = str(tmp_path / "tiny.gguf")
    assert run_cli([tiny_folder, "--type", "Q8_0", "--out", out], capsys)[0] == 0
    meta = GGUFFile(out).metadata
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == "smollm"  # digits split + GPT-2 regex, no space clean-up
    assert meta["tokenizer.chat_template"] == CHATML
    assert meta["llama.vocab_size"] == len(meta["tokenizer.ggml.tokens"])
    ours, theirs = Tokenizer.from_gguf_metadata(meta), Tokenizer.from_hf_dir(tiny_folder)
    text = "Paris, 1969: <|im_start|>user\nthe lazy dog<|im_end|> 12345 ünïcödé 你好"
    assert ours.encode(text) == theirs.encode(text)
    assert (ours.bos_id, ours.eos_id, ours.add_bos) == (theirs.bos_id, theirs.eos_id, theirs.add_bos)


def test_vocabulary_is_padded_to_the_embedding_rows(tmp_path, capsys):
    """A model with more embedding rows than tokens (rounded up for speed, as many are): the
    GGUF vocabulary is padded with unused tokens, as llama.cpp needs one token per row."""
    folder = tmp_path / "padded"
    save_tiny_bpe_model(folder, tied=True, extra_rows=5)
    out = str(tmp_path / "padded.gguf")
    assert run_cli([str(folder), "--type", "Q8_0", "--out", out], capsys)[0] == 0
    meta = GGUFFile(out).metadata
    n_tokens = Tokenizer.from_hf_dir(str(folder)).vocab_size
    assert len(meta["tokenizer.ggml.tokens"]) == meta["llama.vocab_size"] == n_tokens + 5
    assert meta["tokenizer.ggml.tokens"][-1] == f"[PAD{n_tokens + 4}]"
    assert meta["tokenizer.ggml.token_type"][-5:] == [5] * 5          # UNUSED


def test_sentencepiece_folder_becomes_a_llama_vocabulary(tiny_llama_sp_folder, tmp_path, capsys):
    """A LLaMA-style folder: tokenizer.model (the LLaMA SentencePiece from the data mirror)."""
    out = str(tmp_path / "sp.gguf")
    assert run_cli([str(tiny_llama_sp_folder), "--type", "Q4_0", "--out", out], capsys)[0] == 0
    meta = GGUFFile(out).metadata
    assert meta["tokenizer.ggml.model"] == "llama"
    assert len(meta["tokenizer.ggml.scores"]) == 32000
    assert meta["tokenizer.ggml.add_space_prefix"] is True
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]) == (1, 2)
    text = "Hello world, 你好世界!"
    assert Tokenizer.from_gguf_metadata(meta).encode(text) == Tokenizer.from_hf_dir(str(tiny_llama_sp_folder)).encode(text)


def test_gguf_source_gives_the_same_file_as_the_hf_folder(tmp_path, capsys):
    """HF → F32 GGUF → Q4_1 writes the same tensors as HF → Q4_1, and keeps the metadata."""
    folder = tmp_path / "hf"
    save_tiny_bpe_model(folder, tied=True)
    f32, direct, via_f32 = (str(tmp_path / n) for n in ("f32.gguf", "direct.gguf", "via.gguf"))
    for argv in ([str(folder), "--type", "F32", "--out", f32],
                 [str(folder), "--type", "Q4_1", "--out", direct],
                 [f32, "--type", "Q4_1", "--out", via_f32]):
        code, err = run_cli(argv, capsys)
        assert code == 0, err
    a, b = GGUFFile(direct), GGUFFile(via_f32)
    assert list(a.tensors) == list(b.tensors)
    for name in a.tensors:
        np.testing.assert_array_equal(a.tensor_data(name), b.tensor_data(name), err_msg=name)
    assert a.metadata == b.metadata


def test_quantized_source_is_refused_unless_allowed(tmp_path, capsys):
    folder = tmp_path / "hf"
    save_tiny_bpe_model(folder, tied=True)
    q4 = str(tmp_path / "q4.gguf")
    assert run_cli([str(folder), "--type", "Q4_1", "--out", q4], capsys)[0] == 0

    out = tmp_path / "q4_0.gguf"
    code, err = run_cli([q4, "--type", "Q4_0", "--out", str(out)], capsys)
    assert code == 1 and "already quantized (Q4_1)" in err and "--allow-requantize" in err
    assert err.count("\n") == 1 and not out.exists()
    code, err = run_cli([q4, "--type", "Q4_0", "--out", str(out), "--allow-requantize"], capsys)
    assert code == 0, err

    # to F32 is exact: the dequantized blocks, nothing lost
    f32 = str(tmp_path / "f32.gguf")
    assert run_cli([q4, "--type", "F32", "--out", f32], capsys)[0] == 0
    _, quantized, _ = load_gguf(q4)
    _, dequantized, _ = load_gguf(f32)
    for name, w in quantized.items():
        expected = w.dequantize() if isinstance(w, quant.QuantizedMatrix) else w
        np.testing.assert_array_equal(dequantized[name], expected, err_msg=name)


def test_same_type_blocks_are_copied_unchanged(tmp_path, capsys):
    folder = tmp_path / "hf"
    save_tiny_bpe_model(folder, tied=False)
    q8, again = str(tmp_path / "q8.gguf"), str(tmp_path / "again.gguf")
    assert run_cli([str(folder), "--type", "Q8_0", "--out", q8], capsys)[0] == 0
    assert run_cli([q8, "--type", "Q8_0", "--out", again], capsys)[0] == 0
    a, b = GGUFFile(q8), GGUFFile(again)
    for name in a.tensors:
        np.testing.assert_array_equal(a.tensor_data(name), b.tensor_data(name), err_msg=name)


def test_embed_type_flag(tmp_path, capsys):
    folder = tmp_path / "hf"
    save_tiny_bpe_model(folder, tied=False)
    out = str(tmp_path / "q4.gguf")
    assert run_cli([str(folder), "--type", "Q4_0", "--embed-type", "Q4_0", "--out", out], capsys)[0] == 0
    tensors = GGUFFile(out).tensors
    assert tensors["token_embd.weight"].type_name == "Q4_0"
    assert tensors["output.weight"].type_name == "Q4_0"
    assert tensors["blk.0.attn_norm.weight"].type_name == "F32"


@pytest.mark.slow
def test_real_model_dequantizes_exactly(real_model_path, tmp_path, capsys):
    """SmolLM2 Q4_1 → F32: every weight equals its dequantized block, so the logits agree."""
    out = str(tmp_path / "smollm2.F32.gguf")
    code, err = run_cli([real_model_path, "--type", "F32", "--out", out], capsys)
    assert code == 0, err
    (q_model, tok), (f_model, f_tok) = load_model(real_model_path), load_model(out)
    ids = tok.encode("The capital of France is")
    assert f_tok.encode("The capital of France is") == ids
    assert GGUFFile(out).metadata["tokenizer.chat_template"] == tok.chat_template
    np.testing.assert_allclose(f_model.forward(ids), q_model.forward(ids), atol=2e-3)


# ----- bad input: one line on stderr, exit 1 (argparse: 2), nothing written ----------------

def test_bad_inputs_say_why(tmp_path, capsys):
    no_tokenizer = tmp_path / "no_tok"
    save_tiny_llama(no_tokenizer, tied=True)
    too_few_rows = tmp_path / "too_few_rows"
    save_tiny_bpe_model(too_few_rows, tied=True, extra_rows=-3)
    not_gguf = tmp_path / "notes.txt"
    not_gguf.write_text("hello")
    width_64 = tmp_path / "width_64"                 # rows of 64: no whole 256-weight super-block
    save_tiny_bpe_model(width_64, tied=True)
    out = tmp_path / "out.gguf"
    cases = [
        ([str(width_64), "--type", "Q4_K_M", "--embed-type", "Q4_K", "--out", str(out)],
         "not whole 256-weight blocks"),
        ([str(tmp_path / "missing"), "--type", "Q4_0", "--out", str(out)], "no such model"),
        ([str(no_tokenizer), "--type", "Q4_0", "--out", str(out)], "neither tokenizer.json nor tokenizer.model"),
        ([str(not_gguf), "--type", "Q4_0", "--out", str(out)], "not a GGUF file"),
        ([str(too_few_rows), "--type", "Q4_0", "--out", str(out)], "but the model only"),
        ([str(no_tokenizer), "--type", "Q4_0", "--out", str(tmp_path)], "is a folder"),
        ([str(no_tokenizer), "--type", "Q4_0", "--out", str(tmp_path / "nowhere" / "x.gguf")],
         "does not exist"),
    ]
    capsys.readouterr()  # transformers' saving progress
    for argv, message in cases:
        code, err = run_cli(argv, capsys)
        assert code == 1, argv
        assert message in err and err.count("\n") == 1, err
        assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_source_cannot_be_overwritten(tmp_path, capsys):
    folder = tmp_path / "hf"
    save_tiny_bpe_model(folder, tied=True)
    q8 = tmp_path / "q8.gguf"
    assert run_cli([str(folder), "--type", "Q8_0", "--out", str(q8)], capsys)[0] == 0
    before = q8.read_bytes()
    capsys.readouterr()
    code, err = run_cli([str(q8), "--type", "Q8_0", "--out", str(q8)], capsys)
    assert code == 1 and "the source itself" in err
    assert q8.read_bytes() == before


def test_unknown_type_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        quantize.parse_args(["x", "--type", "Q5_K", "--out", str(tmp_path / "o.gguf")])
    assert exit_info.value.code == 2
    assert "invalid choice: 'Q5_K'" in capsys.readouterr().err
