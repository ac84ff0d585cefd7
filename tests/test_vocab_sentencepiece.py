"""Reading, writing and training SentencePiece models (llama_np.chinese.vocab_sentencepiece,
llama_np.tokenizer.protowire), checked against the `sentencepiece` library itself."""
import os
import subprocess
import sys

import pytest

from llama_np.chinese import corpus
from llama_np.files import hub
from llama_np.tokenizer import protowire
from llama_np.files.atomic import atomic_path
from llama_np.chinese.vocab_sentencepiece import (BYTE, CONTROL, NORMAL, UNKNOWN, SentencePieceModelError,
                                          load_processor, parse_model, read_model, serialize_model,
                                          train_model, write_model)

spm = pytest.importorskip("sentencepiece")

LLAMA = "karpathy/llama2.c/tokenizer.model"
CHINESE_SP = "ymcui/Chinese-LLaMA-Alpaca/scripts/merge_tokenizer/chinese_sp.model"


def piece_types(processor):
    """Each id's SentencePiece type, as the library reports it."""
    def kind(i):
        if processor.is_unknown(i):
            return UNKNOWN
        if processor.is_control(i):
            return CONTROL
        if processor.is_byte(i):
            return BYTE
        return NORMAL
    return [kind(i) for i in range(processor.get_piece_size())]


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**31, 2**64 - 1])
def test_varint_round_trip(value):
    data = protowire.encode_varint(value)
    assert protowire.read_varint(data, 0) == (value, len(data))


@pytest.mark.parametrize("data", [b"\x08", b"\x0a\x05abc", b"\x0b", b"\x00\x01", b"\xff" * 11])
def test_malformed_protobuf_is_an_error(data):
    with pytest.raises(protowire.ProtobufError):
        protowire.read_fields(data)


@pytest.mark.parametrize("relpath", [LLAMA, CHINESE_SP])
def test_read_then_serialize_gives_the_same_bytes(relpath):
    path = hub.data_path(relpath)
    with open(path, "rb") as f:
        assert serialize_model(read_model(path)) == f.read()


def test_pieces_scores_and_types_match_sentencepiece():
    path = hub.data_path(CHINESE_SP)
    model, oracle = read_model(path), spm.SentencePieceProcessor(model_file=path)
    assert [p.text for p in model.pieces] == [oracle.id_to_piece(i) for i in range(oracle.get_piece_size())]
    assert [p.score for p in model.pieces] == [oracle.get_score(i) for i in range(oracle.get_piece_size())]
    assert [p.type for p in model.pieces] == piece_types(oracle)


@pytest.mark.parametrize("content", [
    b"",
    b'{"version": "v1.0", "data": []}',
    b"GGUF\x03\x00\x00\x00" + bytes(16),
    bytes(range(256)),
    b"\x0a\x03abc",  # valid protobuf, but its "piece" is no SentencePiece message
])
def test_not_a_sentencepiece_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / "tokenizer.model"
    path.write_bytes(content)
    with pytest.raises(SentencePieceModelError, match="not a SentencePiece model") as e:
        read_model(path)
    assert isinstance(e.value, ValueError) and str(path) in str(e.value)


def test_write_is_atomic(tmp_path):
    model = read_model(hub.data_path(CHINESE_SP))
    path = tmp_path / "zh.model"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half a file")
            raise RuntimeError("interrupted")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["zh.model"]
    write_model(model, path)
    assert os.listdir(tmp_path) == ["zh.model"]
    assert read_model(path) == model


def test_write_into_a_missing_folder_names_it(tmp_path):
    model = read_model(hub.data_path(CHINESE_SP))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_model(model, tmp_path / "no" / "zh.model")


@pytest.fixture(scope="module")
def song_ci_train():
    return corpus.split(corpus.song_ci_poems(), "train")


def test_trained_model_round_trips_chinese(song_ci_train):
    model = train_model(song_ci_train, 3000, character_coverage=1.0)  # every character a piece
    assert len(model.pieces) == 3000
    processor = load_processor(model)
    for poem in song_ci_train[:20]:
        for line in poem.split("\n"):  # identity normalization: "，" stays "，"
            assert processor.decode(processor.encode(line)) == line
    # it learned words, not only characters
    assert any(len(p.text.lstrip("\u2581")) >= 2 for p in model.pieces[3:])


def test_trained_model_is_parsed_like_the_library_sees_it(song_ci_train, tmp_path):
    model = train_model(song_ci_train, 1500, character_coverage=0.98)
    write_model(model, tmp_path / "zh.model")
    oracle = spm.SentencePieceProcessor(model_file=str(tmp_path / "zh.model"))
    assert [p.text for p in model.pieces] == [oracle.id_to_piece(i) for i in range(1500)]


@pytest.mark.parametrize("texts", [[], ["", "  \n"]])
def test_training_on_an_empty_corpus_is_a_clear_error(texts):
    with pytest.raises(SentencePieceModelError, match="the training corpus is empty"):
        train_model(texts, 1000)


def test_training_with_too_small_a_vocabulary_is_a_clear_error(song_ci_train):
    with pytest.raises(SentencePieceModelError, match="Vocabulary size is smaller than required_chars"):
        train_model(song_ci_train, 50)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "llama_np.train_tokenizer", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_train_tokenizer_cli(song_ci_train, tmp_path):
    corpus.write_text_file(song_ci_train, tmp_path / "songci.txt")
    result = run_cli("--out", tmp_path / "zh.model", "--vocab-size", 1500, "--character-coverage", 0.98,
                     "--corpus", tmp_path / "songci.txt")
    assert result.returncode == 0, result.stderr
    assert "1500 pieces" in result.stdout
    assert len(read_model(tmp_path / "zh.model").pieces) == 1500


@pytest.mark.parametrize("content, message", [
    (b"", "the corpus is empty"),
    (b"\xc4\xe3\xba\xc3\n", "not UTF-8"),   # 你好 in GBK
])
def test_train_tokenizer_cli_bad_corpus_is_one_line(tmp_path, content, message):
    (tmp_path / "c.txt").write_bytes(content)
    result = run_cli("--out", tmp_path / "zh.model", "--vocab-size", 1000, "--corpus", tmp_path / "c.txt")
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "zh.model").exists()
