"""Byte-level BPE extension of the default model (llama_np.chinese.vocab_bpe, llama_np.extend_bpe),
checked with HF `tokenizers` and transformers loading what it writes, and transformers'
own loading of the original GGUF."""
import json
import os
import re
import subprocess
import sys

import pytest

from llama_np.chinese import corpus
from llama_np.files import hub
from llama_np.checkpoint.gguf_file import GGUFFile
from llama_np.tokenizer.tokenizers import Tokenizer
from llama_np.checkpoint import load_tokenizer
from llama_np.checkpoint.tokenizer_files import save_hf_tokenizer, write_tokenizer_gguf
from llama_np.chinese.vocab_bpe import BPEExtension, VocabularyError, extended_metadata, learn_extension, token_bytes

N_NEW = 2_000  # enough for the 0.6x bound (0.53x measured), small enough to learn in seconds

ROUND_TRIP_TEXTS = {
    "chinese": "人工智能是计算机科学、心理学、哲学等学科融合的交叉学科。北京是中国的首都。",
    "english": "The quick brown fox jumps over the lazy dog.\n\n1. Mix 2 cups of flour; don't stir!",
    "mixed": "在2024年，Hugging Face 发布了 SmolLM2（135M 参数）。def f(x):\n    return x**2  # 平方",
    "emoji": "我爱北京天安门🦙！龍🐉 👩‍💻🎉🏽 naïve café ✓ 𝄞",
    "whitespace": "  两个空格\t制表符\n\n\n换行  ",
    "other scripts": "日本語のテキスト、한국어 텍스트, русский текст, مرحبا",
    "special": "<|im_start|>user\n你好<|im_end|>\n",
}


@pytest.fixture(scope="module")
def base_metadata(real_model_path):
    return GGUFFile(real_model_path).metadata


@pytest.fixture(scope="module")
def extension(base_metadata):
    return learn_extension(base_metadata, corpus.chinese_documents("train"), N_NEW)


@pytest.fixture(scope="module")
def metadata(base_metadata, extension):
    return extended_metadata(base_metadata, extension)


@pytest.fixture(scope="module")
def base(base_metadata):
    return Tokenizer.from_gguf_metadata(base_metadata)


@pytest.fixture(scope="module")
def extended(metadata):
    return Tokenizer.from_gguf_metadata(metadata)


@pytest.fixture(scope="module")
def hf_folder(metadata, tmp_path_factory):
    folder = tmp_path_factory.mktemp("extended")
    save_hf_tokenizer(metadata, folder)
    return folder


@pytest.fixture(scope="module")
def hf_tokenizers(hf_folder):
    tokenizers = pytest.importorskip("tokenizers")
    return tokenizers.Tokenizer.from_file(str(hf_folder / "tokenizer.json"))


@pytest.fixture(scope="module")
def hf_transformers(hf_folder):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(hf_folder))


@pytest.fixture(scope="module")
def english_texts():
    with open(hub.data_path("hiyouga/LLaMA-Factory/data/alpaca_en_demo.json"), encoding="utf-8") as f:
        examples = json.load(f)
    return [e["instruction"] + "\n" + e["input"] + "\n" + e["output"] for e in examples]


# ----- what was learned ---------------------------------------------------------------------

def test_extension_adds_the_requested_tokens_after_the_old_ones(base_metadata, extension, metadata):
    old_tokens = base_metadata["tokenizer.ggml.tokens"]
    assert extension.base_size == len(old_tokens) == 49_152
    assert len(extension.tokens) == N_NEW
    assert metadata["tokenizer.ggml.tokens"][:49_152] == old_tokens
    assert metadata["tokenizer.ggml.merges"][:48_900] == base_metadata["tokenizer.ggml.merges"]
    assert metadata["tokenizer.ggml.token_type"][:49_152] == base_metadata["tokenizer.ggml.token_type"]
    assert metadata["llama.vocab_size"] == 49_152 + N_NEW
    assert not set(extension.tokens) & set(old_tokens)


def test_every_new_merge_joins_a_non_ascii_byte(extension):
    """Why ASCII text cannot change: no new merge can apply to it."""
    for first, second in extension.merges:
        assert max(token_bytes(first + second)) >= 0x80


def test_new_tokens_are_chinese(extension):
    whole_characters = [token_bytes(t).decode("utf-8", errors="ignore") for t in extension.tokens[-200:]]
    chinese = [text for text in whole_characters if re.search(r"[\u4e00-\u9fff]", text)]
    assert len(chinese) > 150


def test_learning_is_deterministic(base_metadata):
    poems = corpus.split(corpus.song_ci_poems(), "train")
    assert learn_extension(base_metadata, poems, 100) == learn_extension(base_metadata, poems, 100)


# ----- the must-holds -------------------------------------------------------------------------

def test_extension_needs_at_most_06x_the_tokens_on_chinese_wikipedia(base, extended):
    paragraphs = corpus.cmrc2018_paragraphs()
    n_base = sum(len(base.encode(p)) for p in paragraphs)
    n_extended = sum(len(extended.encode(p)) for p in paragraphs)
    assert n_extended <= 0.6 * n_base


@pytest.mark.parametrize("kind", ROUND_TRIP_TEXTS)
def test_round_trips_exactly(extended, hf_tokenizers, hf_transformers, kind):
    text = ROUND_TRIP_TEXTS[kind]
    ids = extended.encode(text)
    assert extended.decode(ids) == text
    assert hf_tokenizers.encode(text, add_special_tokens=False).ids == ids
    assert hf_tokenizers.decode(ids, skip_special_tokens=False) == text
    assert hf_transformers.encode(text, add_special_tokens=False) == ids
    assert hf_transformers.decode(ids) == text


def test_round_trips_on_every_held_out_document(extended):
    for document in corpus.chinese_documents("held_out"):
        assert extended.decode(extended.encode(document)) == document


def test_english_tokenizes_exactly_as_before(base, hf_tokenizers, english_texts):
    """All 999 English Alpaca examples: the extended tokenizer.json, read by `tokenizers`,
    gives the ids llama_np gives with the original GGUF."""
    for text in english_texts:
        assert hf_tokenizers.encode(text, add_special_tokens=False).ids == base.encode(text)


@pytest.mark.slow
def test_english_tokenizes_as_transformers_tokenizes_the_original(real_model_path, hf_transformers,
                                                                  english_texts):
    """The independent oracle: transformers' own loading of the original GGUF. Its GGUF
    loader lacks SmolLM's split of digits (see tests/test_tokenizer.py), which matters only
    where two or more whitespace characters precede a digit; those texts are left out."""
    transformers = pytest.importorskip("transformers")
    folder, name = os.path.split(real_model_path)
    original = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    comparable = [t for t in english_texts if not re.search(r"\s\s\d", t)]
    assert len(comparable) > 700
    for text in comparable:
        assert hf_transformers.encode(text, add_special_tokens=False) == original.encode(text)


# ----- the saved forms ------------------------------------------------------------------------

def test_hf_folder_loads_in_llama_np_with_the_model_settings(hf_folder, extended):
    tok = load_tokenizer(hf_folder)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos) == (49_152 + N_NEW, 1, 2, 2, False)
    assert tok.chat_template == extended.chat_template
    text = ROUND_TRIP_TEXTS["mixed"]
    assert tok.encode(text) == extended.encode(text)


def test_hf_folder_in_transformers_has_the_special_tokens(hf_transformers):
    assert len(hf_transformers) == 49_152 + N_NEW
    assert (hf_transformers.bos_token, hf_transformers.eos_token) == ("<|im_start|>", "<|im_end|>")
    prompt = hf_transformers.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False,
                                                 add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n")


def test_vocabulary_only_gguf_loads_in_llama_np(metadata, extended, tmp_path):
    path = tmp_path / "tokenizer.gguf"
    write_tokenizer_gguf(metadata, path)
    tok = load_tokenizer(path)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.add_bos) == (49_152 + N_NEW, 1, 2, False)
    for text in ROUND_TRIP_TEXTS.values():
        assert tok.encode(text) == extended.encode(text)
    assert os.listdir(tmp_path) == ["tokenizer.gguf"]


# ----- bad input --------------------------------------------------------------------------------

def test_sentencepiece_base_is_a_clear_error():
    with pytest.raises(VocabularyError, match="needs a byte-level BPE tokenizer"):
        learn_extension({"tokenizer.ggml.model": "llama"}, ["中文"], 10)


@pytest.mark.parametrize("texts", [[], [""]])
def test_empty_corpus_is_a_clear_error(base_metadata, texts):
    with pytest.raises(VocabularyError, match="the training corpus is empty"):
        learn_extension(base_metadata, texts, 10)


def test_extension_for_another_vocabulary_is_refused(base_metadata):
    with pytest.raises(VocabularyError, match="learned for a vocabulary of 32000 tokens"):
        extended_metadata(base_metadata, BPEExtension(32_000, (), ()))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "llama_np.extend_bpe", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_cli_writes_the_three_files(real_model_path, tmp_path):
    corpus.write_text_file(corpus.split(corpus.song_ci_poems(), "train"), tmp_path / "songci.txt")
    out = tmp_path / "zh"
    result = run_cli("--model", real_model_path, "--corpus", tmp_path / "songci.txt", "--new-tokens", 50,
                     "--out", out)
    assert result.returncode == 0, result.stderr
    assert "49152 + 50 = 49202 tokens" in result.stdout
    assert sorted(os.listdir(out)) == ["tokenizer.gguf", "tokenizer.json", "tokenizer_config.json"]
    assert load_tokenizer(out / "tokenizer.gguf").vocab_size == load_tokenizer(out).vocab_size == 49_202


@pytest.mark.parametrize("content, message", [
    (b"", "the corpus is empty"),
    (b"\xc4\xe3\xba\xc3\n", "not UTF-8"),  # 你好 in GBK
])
def test_cli_bad_corpus_is_one_line(real_model_path, tmp_path, content, message):
    (tmp_path / "c.txt").write_bytes(content)
    result = run_cli("--model", real_model_path, "--corpus", tmp_path / "c.txt", "--out", tmp_path / "zh")
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "zh").exists()


def test_cli_sentencepiece_model_is_one_line(tmp_path):
    tokenizer_model = hub.data_path("karpathy/llama2.c/tokenizer.model")
    result = run_cli("--model", tokenizer_model, "--out", tmp_path / "zh")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
