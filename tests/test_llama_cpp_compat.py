"""llama.cpp itself (through llama-cpp-python) loads and runs the GGUF files that
`python -m llama_np.quantize` writes: same tokens from the tokenizer metadata, the same logits
from an F32 file (so names, shapes, Q/K row order and hyper-parameters are read as llama_np
reads them), close logits and a generated reply from quantized files.

Skipped when llama_cpp is not importable (CI may leave it out: building it takes minutes;
recipe in docs/benchmarks.md#llamacpp).

Why quantized files are compared loosely: llama.cpp rounds the activations to 8 bits before
each quantized product (docs/formats.md#q8_1-activation-arithmetic) and llama_np by
default does not, so their logits differ by up to about one logit on the real model even
when reading identical blocks.
"""
import numpy as np
import pytest

from llama_np import quantize
from llama_np.llama import perplexity
from llama_np.cli import common as cli
from llama_np.checkpoint import load_model

from test_quantize_cli import CORPUS, PROMPT, save_tiny_bpe_model

llama_cpp = pytest.importorskip("llama_cpp")

F32_LOGIT_TOLERANCE = 1e-3      # float32 arithmetic in a different order
# mean |Δlogit| / spread of the logits between llama.cpp and llama_np on the same quantized
# file (tiny models): measured Q8_0 ≈ 0.004, Q4_x ≈ 0.01 — llama.cpp's 8-bit activations.
QUANTIZED_MEAN_LOGIT_ERROR = 0.05


def quantize_to(source, qtype, out, capsys, *extra):
    with pytest.raises(SystemExit) as exit_info:
        cli.run(lambda: quantize.main([str(source), "--type", qtype, "--out", str(out), "--quiet", *extra]))
    assert exit_info.value.code == 0, capsys.readouterr().err
    return str(out)


def open_llama_cpp(path, n_ctx=128):
    # F32 KV cache (llama.cpp's default is F16), so that only the products' arithmetic differs
    return llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_threads=2, logits_all=True,
                           type_k=0, type_v=0, verbose=False)


def llama_cpp_logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)])                                   # [T, V]


def greedy(next_logits, n):
    """n greedy tokens from a function mapping the last token (None: the prompt) to logits."""
    tokens, logits = [], next_logits(None)
    for _ in range(n):
        tokens.append(int(np.argmax(logits)))
        logits = next_logits(tokens[-1])
    return tokens


def llama_cpp_greedy(llm, ids, n):
    llm.reset()

    def step(token):
        llm.eval(ids if token is None else [token])
        return llm.scores[llm.n_tokens - 1]
    return greedy(step, n)


def llama_np_greedy(model, ids, n):
    cache = model.new_cache(len(ids) + n + 1)
    return greedy(lambda token: model.forward(ids if token is None else [token], cache, last_only=True)[-1], n)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cpp_tiny")
    save_tiny_bpe_model(folder, tied=False)
    return folder


def test_f32_file_runs_identically(tiny_folder, tmp_path, capsys):
    path = quantize_to(tiny_folder, "F32", tmp_path / "tiny.F32.gguf", capsys)
    model, tokenizer = load_model(path)
    llm = open_llama_cpp(path)
    ids = tokenizer.encode(PROMPT)
    assert llm.tokenize(PROMPT.encode(), add_bos=False, special=True) == ids
    np.testing.assert_allclose(llama_cpp_logits(llm, ids), model.forward(ids), atol=F32_LOGIT_TOLERANCE)
    assert llama_cpp_greedy(llm, ids, 24) == llama_np_greedy(model, ids, 24)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_1", "Q4_0"])
def test_quantized_file_loads_and_generates(tiny_folder, qtype, tmp_path, capsys):
    path = quantize_to(tiny_folder, qtype, tmp_path / f"tiny.{qtype}.gguf", capsys)
    model, tokenizer = load_model(path)
    llm = open_llama_cpp(path)
    ids = tokenizer.encode(PROMPT)
    ours, theirs = model.forward(ids), llama_cpp_logits(llm, ids)
    assert np.abs(theirs - ours).mean() / ours.std() < QUANTIZED_MEAN_LOGIT_ERROR
    reply = llm.create_completion(PROMPT, max_tokens=8, temperature=0.0)
    assert reply["usage"]["completion_tokens"] >= 1


def test_special_tokens_and_chat_template_reach_llama_cpp(tiny_folder, tmp_path, capsys):
    path = quantize_to(tiny_folder, "Q8_0", tmp_path / "tiny.gguf", capsys)
    _, tokenizer = load_model(path)
    llm = open_llama_cpp(path)
    text = "<|im_start|>user\nParis, 1969?<|im_end|>\n"
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == tokenizer.encode(text)
    assert llm.metadata["tokenizer.chat_template"] == tokenizer.chat_template
    assert llm.token_eos() == tokenizer.eos_id


def test_sentencepiece_vocabulary_tokenizes_identically(tiny_llama_sp_folder, tmp_path, capsys):
    path = quantize_to(tiny_llama_sp_folder, "Q8_0", tmp_path / "sp.gguf", capsys)
    _, tokenizer = load_model(path)
    llm = open_llama_cpp(path)
    for text in ["Hello world", " two  spaces", "中文分词测试，还有 English.", CORPUS[2]]:
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == tokenizer.encode(text), text


class LlamaCppAsModel:
    """llama.cpp behind the two methods `perplexity.perplexity` calls."""

    def __init__(self, llm):
        self.llm = llm

    def new_cache(self, n):
        return None

    def forward(self, ids, cache):
        return llama_cpp_logits(self.llm, [int(i) for i in ids])


def test_perplexity_agrees_with_llama_cpp_logits(tiny_folder, tmp_path, capsys):
    path = quantize_to(tiny_folder, "F32", tmp_path / "tiny.F32.gguf", capsys)
    model, tokenizer = load_model(path)
    ids = tokenizer.encode(" ".join(CORPUS * 6))
    ours = perplexity.perplexity(model, tokenizer, ids, n_ctx=64, progress=False)
    theirs = perplexity.perplexity(LlamaCppAsModel(open_llama_cpp(path)), tokenizer, ids, n_ctx=64, progress=False)
    assert ours.ppl == pytest.approx(theirs.ppl, rel=1e-4)


@pytest.mark.slow
def test_real_model_requantized_runs_in_llama_cpp(real_model_path, tmp_path, capsys):
    """SmolLM2: Q4_1 → F32 (exact) gives llama.cpp's and llama_np's greedy tokens alike;
    Q4_1 → Q8_0 loads, stays within llama.cpp's activation rounding, and chats (what it says is
    not checked: llama-cpp-python's chat answers differ even on the original Q4_1 file)."""
    f32 = quantize_to(real_model_path, "F32", tmp_path / "smollm2.F32.gguf", capsys)
    model, tokenizer = load_model(real_model_path)
    ids = tokenizer.encode("The capital of France is")
    assert llama_cpp_greedy(open_llama_cpp(f32), ids, 32) == llama_np_greedy(model, ids, 32)

    q8 = quantize_to(f32, "Q8_0", tmp_path / "smollm2.Q8_0.gguf", capsys)
    q8_model, _ = load_model(q8)
    llm = open_llama_cpp(q8, n_ctx=256)
    difference = np.abs(llama_cpp_logits(llm, ids) - q8_model.forward(ids))
    assert difference.max() < 2.0                                 # measured ≈ 0.9 (docs/benchmarks.md#test-bounds)
    reply = llm.create_chat_completion([{"role": "user", "content": "What is the capital of France?"}],
                                       max_tokens=16, temperature=0.0)
    assert reply["choices"][0]["message"]["content"].strip()     # the chat template and EOS work
