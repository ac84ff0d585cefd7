"""The paper's tokenizer merge: LLaMA's 32,000 pieces + chinese_sp.model → 49,953 pieces,
checked against the `sentencepiece` library's own reading of the original."""
import os
import subprocess
import sys

import pytest

from llama_np.chinese import corpus
from llama_np.files import hub
from llama_np.chinese.vocab_sentencepiece import MERGED_PIECE_SCORE, NORMAL, load_processor, merge_models, read_model

spm = pytest.importorskip("sentencepiece")

LLAMA = "karpathy/llama2.c/tokenizer.model"
CHINESE_SP = "ymcui/Chinese-LLaMA-Alpaca/scripts/merge_tokenizer/chinese_sp.model"
LLAMA_SIZE = 32_000
MERGED_SIZE = 49_953  # docs/recipe.md#tokenizer, the paper's Chinese-LLaMA tokenizer


@pytest.fixture(scope="module")
def models():
    llama, chinese = read_model(hub.data_path(LLAMA)), read_model(hub.data_path(CHINESE_SP))
    return llama, chinese, merge_models(llama, chinese)


@pytest.fixture(scope="module")
def original():
    return spm.SentencePieceProcessor(model_file=hub.data_path(LLAMA))


@pytest.fixture(scope="module")
def merged_processor(models):
    return load_processor(models[2])


def test_merged_has_49953_pieces(models, merged_processor):
    assert len(models[2].pieces) == MERGED_SIZE
    assert merged_processor.get_piece_size() == MERGED_SIZE


def test_first_32000_keep_ids_pieces_and_scores(original, merged_processor):
    for i in range(LLAMA_SIZE):
        assert merged_processor.id_to_piece(i) == original.id_to_piece(i)
        assert merged_processor.get_score(i) == original.get_score(i)
        assert merged_processor.is_control(i) == original.is_control(i)
        assert merged_processor.is_byte(i) == original.is_byte(i)


def test_appended_pieces_are_the_chinese_pieces_llama_lacks_with_score_0(models, merged_processor):
    llama, chinese, merged = models
    llama_pieces = set(llama.piece_texts())
    expected = [p.text for p in chinese.pieces if p.text not in llama_pieces]
    assert merged.piece_texts()[LLAMA_SIZE:] == expected
    assert all(p.score == MERGED_PIECE_SCORE == 0 and p.type == NORMAL for p in merged.pieces[LLAMA_SIZE:])
    assert {merged_processor.get_score(i) for i in range(LLAMA_SIZE, MERGED_SIZE)} == {0.0}


def test_merged_settings_are_llamas(models):
    assert models[2].other_fields == models[0].other_fields


def test_the_merge_is_not_neutral_for_english(original, merged_processor):
    """Appended pieces score 0, above every LLaMA score, so where an English text contains
    one ("2016", "eo") it wins: the paper's merged tokenizer splits most numbers (LLaMA spells
    them digit by digit) and some English words differently from LLaMA's."""
    unchanged = "The quick brown fox jumps over the lazy dog."
    assert merged_processor.encode(unchanged) == original.encode(unchanged)
    assert original.encode("in 2016", out_type=str) == ["▁in", "▁", "2", "0", "1", "6"]
    assert merged_processor.encode("in 2016", out_type=str) == ["▁in", "▁2016"]
    assert original.encode("theory", out_type=str) == ["▁theory"]
    assert merged_processor.encode("theory", out_type=str) == ["▁th", "eo", "ry"]


def test_paper_table_1_sentence(original, merged_processor):
    """The sentence of the paper's Table 1: 35 tokens with LLaMA's tokenizer, 16 merged."""
    text = "人工智能是计算机科学、心理学、哲学等学科融合的交叉学科。"
    assert len(original.encode(text)) == 35
    assert merged_processor.encode(text, out_type=str) == [
        "▁", "人工智能", "是", "计算机", "科学", "、", "心理学", "、", "哲学", "等", "学科", "融合", "的",
        "交叉", "学科", "。"]


def test_merged_needs_at_most_055x_the_tokens_on_chinese_wikipedia(original, merged_processor):
    paragraphs = corpus.cmrc2018_paragraphs()
    n_original = sum(map(len, original.encode(paragraphs)))
    n_merged = sum(map(len, merged_processor.encode(paragraphs)))
    assert n_merged <= 0.55 * n_original


def test_merged_round_trips_text(merged_processor):
    for text in ["人工智能是计算机科学的分支。", "Hello, 世界! 🙂 x=1", "  two  spaces  "]:
        assert merged_processor.decode(merged_processor.encode(text)) == text


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "llama_np.merge_tokenizer", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_cli_writes_the_merged_model(tmp_path):
    out = tmp_path / "merged.model"
    result = run_cli(hub.data_path(LLAMA), hub.data_path(CHINESE_SP), "--out", out)
    assert result.returncode == 0, result.stderr
    assert "49953 pieces" in result.stdout
    assert os.listdir(tmp_path) == ["merged.model"]  # no temporary file left behind
    assert spm.SentencePieceProcessor(model_file=str(out)).get_piece_size() == MERGED_SIZE


@pytest.mark.parametrize("bad", ["json", "gguf", "missing"])
def test_cli_rejects_a_non_sentencepiece_file_in_one_line(tmp_path, real_model_path, bad):
    path = {"json": hub.data_path(corpus.CMRC2018_FILE), "gguf": real_model_path,
            "missing": str(tmp_path / "nothing.model")}[bad]
    out = tmp_path / "merged.model"
    result = run_cli(hub.data_path(LLAMA), path, "--out", out)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and path in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not out.exists()
