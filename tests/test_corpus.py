"""The Chinese corpus from the data mirror and its fixed training / held-out split."""
import collections
import json

import pytest

from llama_np.chinese import corpus
from llama_np.files import hub
from llama_np.chinese.corpus import CorpusError


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


def test_cmrc2018_questions_are_held_out_with_the_paragraphs_they_quote(paragraphs):
    with open(hub.data_path(corpus.CMRC2018_FILE), encoding="utf-8") as f:
        answers_of = collections.defaultdict(list)  # a question asked of two paragraphs has two answers
        for article in json.load(f)["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    answers_of[qa["question"]] += [answer["text"] for answer in qa["answers"]]
    questions = corpus.cmrc2018_questions()
    assert len(questions) == len(paragraphs)
    for part in ("train", "held_out"):
        for asked, paragraph in zip(corpus.split(questions, part), corpus.split(paragraphs, part)):
            assert all(any(answer in paragraph for answer in answers_of[question])
                       for question in asked.split("\n"))
    assert sum(len(doc.split("\n")) for doc in corpus.split(questions, "train")) == 2_908


def test_alpaca_zh_texts_are_the_instruction_examples_as_running_text():
    with open(hub.data_path(corpus.ALPACA_ZH_FILE), encoding="utf-8") as f:
        examples = json.load(f)
    texts = corpus.alpaca_zh_texts()
    assert len(texts) == len(examples) == 1000
    for example, text in zip(examples, texts):
        assert text.startswith(example["instruction"] + "\n") and text.endswith("\n" + example["output"])
        assert example["input"] in text
    assert len(corpus.chinese_documents("train", sources=("cmrc2018", "alpaca_zh"))) == 764 + 900


def test_a_file_of_the_wrong_form_is_a_clear_error(tmp_path):
    squad, alpaca = tmp_path / "squad.json", tmp_path / "alpaca.json"
    squad.write_text(json.dumps({"data": [{"paragraphs": [{"context": "一"}]}]}))
    alpaca.write_text(json.dumps([{"instruction": "一"}]))
    assert corpus.cmrc2018_paragraphs(squad) == ["一"]
    with pytest.raises(CorpusError, match="not a SQuAD-style file.*'qas'"):
        corpus.cmrc2018_questions(squad)
    with pytest.raises(CorpusError, match="not an Alpaca file.*'output'"):
        corpus.alpaca_zh_texts(alpaca)


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
