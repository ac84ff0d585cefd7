"""Tokens per character and length ratio (the paper's Table 1), library and command line."""
import subprocess
import sys

import pytest

from llama_np.chinese import corpus
from llama_np.files import hub
from llama_np.checkpoint import load_tokenizer
from llama_np.chinese.tokenizer_stats import (PAPER_TABLE_1_SENTENCE, TokenizerStats, format_example, format_table,
                                              measure, token_texts)
from llama_np.chinese.vocab_sentencepiece import merge_models, read_model, write_model

LLAMA = "karpathy/llama2.c/tokenizer.model"
CHINESE_SP = "ymcui/Chinese-LLaMA-Alpaca/scripts/merge_tokenizer/chinese_sp.model"


@pytest.fixture(scope="module")
def llama():
    return load_tokenizer(hub.data_path(LLAMA))


@pytest.fixture(scope="module")
def merged_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("merged") / "merged.model"
    write_model(merge_models(read_model(hub.data_path(LLAMA)), read_model(hub.data_path(CHINESE_SP))), path)
    return path


def test_paper_table_1_counts(llama, merged_path):
    """35 tokens for LLaMA, 16 for Chinese-LLaMA, as in the paper (28 characters)."""
    rows = [measure(llama, [PAPER_TABLE_1_SENTENCE], "LLaMA"),
            measure(load_tokenizer(merged_path), [PAPER_TABLE_1_SENTENCE], "Chinese-LLaMA")]
    assert [(r.n_characters, r.n_tokens) for r in rows] == [(28, 35), (28, 16)]
    assert rows[0].tokens_per_character == pytest.approx(1.25)


def test_bos_is_not_counted(llama):
    assert llama.add_bos
    assert measure(llama, ["你好"]).n_tokens == len(llama.encode("你好", add_bos=False))


def test_format_table_gives_ratios_to_the_first_row():
    table = format_table([TokenizerStats("original", 32000, 1000, 1420),
                          TokenizerStats("extended", 49953, 1000, 721)])
    header, rule, first, second = table.splitlines()
    assert header.split() == ["tokenizer", "vocab", "tokens", "tokens/char", "length", "ratio", "chars/2,048", "tokens"]
    assert first.split() == ["original", "32,000", "1,420", "1.420", "1.000", "1,442"]    # 2048 / 1.42
    assert second.split() == ["extended", "49,953", "721", "0.721", "0.508", "2,840"]
    assert len({len(header), len(rule), len(first), len(second)}) == 1
    assert format_table([TokenizerStats("original", 32000, 1000, 1420)], context=512).split()[6] == "chars/512"


def test_a_context_holds_characters_in_proportion_to_characters_per_token():
    assert TokenizerStats("t", 100, 1000, 500).characters_per_context(2048) == 4096


def test_token_texts_show_bytes_where_a_character_is_split(llama, real_model_path):
    ids = llama.encode("哲学", add_bos=False)
    assert token_texts(llama, ids) == ["▁", "<0xE5>", "<0x93>", "<0xB2>", "学"]
    smol = load_tokenizer(real_model_path)
    texts = token_texts(smol, smol.encode("北京 Hello\n"))
    assert texts[:2] == ["<E5 8C>", "<97>"] and texts[-2:] == ["▁Hello", "\\n"]
    assert format_example([smol], ["smol"], "Hi").startswith("smol  (1 tokens): Hi")


def test_empty_text_is_a_clear_error(llama):
    with pytest.raises(ValueError, match="empty text"):
        measure(llama, [""])


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "llama_np.tokenizer_stats", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_cli_prints_the_table_and_the_example(merged_path):
    result = run_cli(hub.data_path(LLAMA), merged_path, "--source", "song_ci", "--part", "held_out")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "text: song_ci, held_out (28 documents, 3,348 characters)"
    assert lines[4].split()[:2] == ["tokenizer.model", "32,000"] and lines[4].split()[-2] == "1.000"
    assert lines[5].split()[:2] == ["merged.model", "49,953"] and float(lines[5].split()[-2]) < 0.7
    assert int(lines[5].split()[-1].replace(",", "")) > 1.4 * int(lines[4].split()[-1].replace(",", ""))
    assert "(35 tokens)" in result.stdout and "(16 tokens)" in result.stdout
    assert lines[2].split()[-2:] == ["chars/2,048", "tokens"]


def test_cli_refuses_a_context_of_no_tokens():
    result = run_cli("default", "--context", "0")
    assert result.returncode == 2 and "--context must be at least 1" in result.stderr
    assert len(result.stderr.strip().splitlines()[-1]) < 200


@pytest.mark.parametrize("content, message", [
    (b"", "the corpus is empty"),
    (b"\xc4\xe3\xba\xc3\n", "not UTF-8"),
])
def test_cli_bad_corpus_is_one_line(tmp_path, content, message):
    (tmp_path / "c.txt").write_bytes(content)
    result = run_cli(hub.data_path(LLAMA), "--corpus", tmp_path / "c.txt")
    assert result.returncode == 1 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_cli_non_tokenizer_file_is_one_line():
    result = run_cli(hub.data_path(corpus.CMRC2018_FILE))
    assert result.returncode == 1 and "not a SentencePiece model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
