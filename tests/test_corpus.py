"""The Chinese corpus from the data mirror and its fixed training / held-out split."""
import pytest

from llama_np import corpus
from llama_np.corpus import CorpusError


@pytest.fixture(scope="module")
def paragraphs():
    return corpus.cmrc2018_paragraphs()


def test_cmrc2018_is_848_wikipedia_paragraphs(paragraphs):
    assert len(paragraphs) == 848
    assert sum(map(len, paragraphs)) == 432_093
    assert paragraphs[0].startswith("《战国无双3》")


def test_song_ci_is_280_poems_one_line_per_verse():
    poems = corpus.song_ci_poems()
    assert len(poems) == 280
    assert poems[0].split("\n")[0] == "近清明。"


def test_held_out_is_every_tenth_document_and_disjoint_from_training(paragraphs):
    train, held_out = corpus.split(paragraphs, "train"), corpus.split(paragraphs, "held_out")
    assert held_out == paragraphs[9::10]
    assert len(train) + len(held_out) == len(paragraphs) and len(held_out) == 84
    assert not set(train) & set(held_out)
    assert corpus.split(paragraphs, "all") == paragraphs


def test_chinese_documents_concatenates_sources_in_order(paragraphs):
    train = corpus.chinese_documents("train")
    assert train[:764] == corpus.split(paragraphs, "train")
    assert len(train) == 764 + 252
    assert corpus.chinese_documents("held_out", sources=("song_ci",)) == corpus.song_ci_poems()[9::10]


def test_bad_part_or_source_is_a_clear_error(paragraphs):
    with pytest.raises(ValueError, match="part must be one of"):
        corpus.split(paragraphs, "test")
    with pytest.raises(ValueError, match="unknown corpus source 'wiki'"):
        corpus.chinese_documents("train", sources=("wiki",))


def test_text_file_round_trip(tmp_path):
    path = tmp_path / "c.txt"
    corpus.write_text_file(["你好，世界。", "第二行\n"], path)
    assert corpus.read_text_file(path) == ["你好，世界。", "第二行"]


def test_text_file_byte_order_mark_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes("\ufeff一\n\n   \n二\n".encode("utf-8"))
    assert corpus.read_text_file(path) == ["一", "二"]


@pytest.mark.parametrize("content, message", [
    (b"", "the corpus is empty"),
    (b"\n  \n\t\n", "the corpus is empty"),
    (b"ok\n\xff\xfe bad\n", "not UTF-8 text (byte 0xFF at line 2"),
    ("中文".encode("gbk"), "not UTF-8 text"),
])
def test_unusable_text_file_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "c.txt"
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=message.replace("(", r"\(")) as e:
        corpus.read_text_file(path)
    assert str(path) in str(e.value)


def test_missing_text_file_is_a_clear_error(tmp_path):
    with pytest.raises(CorpusError, match="cannot read the corpus"):
        corpus.read_text_file(tmp_path / "nothing.txt")
