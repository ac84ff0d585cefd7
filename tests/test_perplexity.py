"""`llama_np.perplexity`: llama.cpp's recipe (windows of n_ctx, second halves scored, BOS
first), checked against transformers' logits on a tiny model, against the one model whose
perplexity is known exactly (uniform predictions: PPL = vocabulary size), and on the real
model; the CLI's JSON and its errors."""
import json
import math

import numpy as np
import pytest

from conftest import save_tiny_llama
from llama_np import perplexity as perplexity_tool
from llama_np.llama import perplexity
from llama_np.cli import common as cli
from llama_np.checkpoint.safetensors import load_hf
from llama_np.llama.model import Llama

from test_quantize_cli import CORPUS, save_tiny_bpe_model

TEXT = " ".join(CORPUS * 6)  # ASCII, ~400 tokens with the tiny tokenizer


class RecordingModel:
    """Stands in for a Llama: uniform logits over `vocab` tokens; remembers its inputs."""

    def __init__(self, vocab):
        self.vocab, self.inputs = vocab, []

    def new_cache(self, n):
        return None

    def forward(self, ids, cache):
        self.inputs.append(np.array(ids))
        return np.zeros((len(ids), self.vocab), dtype=np.float32)


class IdentityTokenizer:
    """Token i spells the one character chr(65 + i % 26)."""

    def __init__(self, add_bos, bos_id=1):
        self.add_bos, self.bos_id = add_bos, bos_id

    def decode(self, ids):
        return "".join(chr(65 + int(i) % 26) for i in ids)


def test_token_nll_is_the_log_softmax_in_float64(rng):
    logits = (rng.standard_normal((7, 50)) * 30).astype(np.float32)   # large: exp would overflow
    targets = rng.integers(0, 50, 7)
    log_probs = logits.astype(np.float64) - np.logaddexp.reduce(logits.astype(np.float64), axis=-1, keepdims=True)
    np.testing.assert_allclose(perplexity.token_nll(logits, targets), -log_probs[np.arange(7), targets],
                               rtol=1e-6)


def test_windows_second_halves_and_bos_as_llama_cpp():
    model, tok = RecordingModel(vocab=40), IdentityTokenizer(add_bos=True)
    ids = np.arange(100) % 38 + 2
    result = perplexity.perplexity(model, tok, ids, n_ctx=16, progress=False)
    assert result.windows == 6                                   # 100 // 16; the tail is dropped
    assert result.tokens == 6 * (16 - 1 - 8)                     # positions 9..15 of each window
    for w, inputs in enumerate(model.inputs):
        assert inputs[0] == tok.bos_id                           # first token replaced by BOS
        np.testing.assert_array_equal(inputs[1:], ids[w * 16 + 1:(w + 1) * 16])
    assert result.chars == result.bytes == result.tokens         # one character per token here


def test_uniform_predictions_give_the_vocabulary_size():
    """log p = -log V for every token: PPL = V exactly, no spread so no error, and
    bits per character = log2 V when each token spells one character."""
    result = perplexity.perplexity(RecordingModel(vocab=64), IdentityTokenizer(add_bos=False),
                                   np.arange(256) % 64, n_ctx=32, max_windows=3, progress=False)
    assert result.windows == 3
    assert result.ppl == pytest.approx(64) and result.ppl_error == pytest.approx(0, abs=1e-5)
    assert result.bits_per_char == pytest.approx(6.0)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ppl_tiny")
    torch_model = save_tiny_bpe_model(folder, tied=False)
    return str(folder), torch_model


def test_matches_a_direct_computation_with_transformers(tiny_model):
    torch = pytest.importorskip("torch")
    from llama_np.tokenizer.tokenizers import Tokenizer
    folder, torch_model = tiny_model
    config, weights = load_hf(folder)
    tok = Tokenizer.from_hf_dir(folder)
    ids = tok.encode(TEXT)
    n_ctx = 64
    result = perplexity.perplexity(Llama(config, weights), tok, ids, n_ctx, progress=False)

    nlls, text = [], ""
    for w in range(len(ids) // n_ctx):
        window = torch.tensor(ids[w * n_ctx:(w + 1) * n_ctx])
        with torch.no_grad():
            log_probs = torch.log_softmax(torch_model(window[None]).logits[0].double(), dim=-1)
        targets = window[n_ctx // 2 + 1:]
        nlls += (-log_probs[n_ctx // 2:-1].gather(1, targets[:, None])[:, 0]).tolist()
        text += tok.decode(targets.tolist())
    nlls = np.array(nlls)
    expected_ppl = math.exp(nlls.mean())
    assert result.tokens == len(nlls)
    assert result.ppl == pytest.approx(expected_ppl, rel=1e-4)
    assert result.ppl_error == pytest.approx(expected_ppl * nlls.std() / math.sqrt(len(nlls) - 1), rel=1e-3)
    assert result.chars == len(text)                            # ASCII: exactly the scored tokens' text
    assert result.bits_per_char == pytest.approx(nlls.sum() / math.log(2) / len(text), rel=1e-4)


# ----- the command line --------------------------------------------------------------------

def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.run(lambda: perplexity_tool.main(argv + ["--quiet"]))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_cli_json_is_one_object_on_stdout(tiny_model, tmp_path, capsys):
    text_file = tmp_path / "text.txt"
    text_file.write_text(TEXT, encoding="utf-8")
    code, out, err = run_cli(["--model", tiny_model[0], "--file", str(text_file), "--n-ctx", "64",
                              "--chunks", "2", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert {"ppl", "bits_per_char", "bits_per_byte", "tokens", "chars"} <= set(result)
    assert result["tokens"] == 2 * (64 - 1 - 32) and result["windows"] == 2


def test_cli_errors_are_one_line(tiny_model, tmp_path, capsys):
    short, binary = tmp_path / "short.txt", tmp_path / "binary.txt"
    short.write_text("Too short.", encoding="utf-8")
    binary.write_bytes(b"abc\xff\xfe")
    model = ["--model", tiny_model[0]]
    cases = [
        (model + ["--file", str(short), "--n-ctx", "64"], "fewer than one window"),
        (model + ["--file", str(binary)], "not UTF-8 text"),
        (model + ["--file", str(tmp_path / "missing.txt")], "cannot read"),
        (model + ["--file", str(short), "--n-ctx", "4096"], "exceeds the model's context"),
        (model + ["--file", str(short), "--n-ctx", "2"], "too small"),
    ]
    for argv, message in cases:
        code, out, err = run_cli(argv, capsys)
        assert code == 1 and message in err and err.count("\n") == 1 and out == "", (argv, err)


@pytest.mark.slow
def test_real_model_on_english_text(real_model_path, capsys):
    """SmolLM2-135M-Instruct on a few hundred tokens of Alpaca answers: a sane perplexity."""
    code, out, err = run_cli(["--model", real_model_path, "--corpus", "alpaca_en", "--n-ctx", "128",
                              "--chunks", "3", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["tokens"] == 3 * 63
    assert 2 < result["ppl"] < 30                                # measured: ≈ 7
    assert 0.3 < result["bits_per_byte"] < 1.5
    assert result["bytes"] >= result["chars"] > 3 * 63           # English: > 1 character per token
