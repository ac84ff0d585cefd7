"""Extending a SentencePiece vocabulary: read a `.model`, append another model's pieces,
write it back; and train a new SentencePiece model on a text corpus.

This is step one of Chinese-LLaMA (Cui et al. 2023, §2.2). LLaMA's tokenizer has 32,000
pieces but only a few hundred Chinese characters; every other Chinese character is spelled
as its three UTF-8 bytes through *byte fallback*, so Chinese text costs one to three tokens
per character. The paper trains a 20,000-piece SentencePiece model on Chinese text and
appends each of its pieces that LLaMA lacks to LLaMA's piece list, with score 0:

    merged = llama.pieces + [p for p in chinese.pieces if p.piece not in llama]   # 49,953

The old pieces keep their ids (they are the first 32,000 entries, untouched), so the old
embedding rows keep their meaning, and the model's normalizer and trainer settings stay
LLaMA's. The new pieces' score 0 is higher than every learned LLaMA score (those are
negative log-probabilities, or negative merge ranks for a BPE model), so when the merged
BPE model chooses which adjacent pair to join first, joins that produce a new Chinese piece
win: a run of Chinese characters comes out as the longer Chinese pieces.

A `.model` file is a serialized `ModelProto` (its layout: llama_np.tokenizer.sentencepiece_model).
`read_model` decodes the piece list and keeps every other field as the exact bytes it
found; `serialize_model` writes the pieces and those bytes back.
"""
import io
import os

from llama_np.tokenizer import protowire
from llama_np.files.atomic import atomic_write_bytes
from llama_np.files.text import read_bytes
from llama_np.tokenizer.sentencepiece_model import (BYTE, CONTROL, NORMAL, UNKNOWN,  # noqa: F401 (re-exported)
                                                    Piece, SentencePieceModel, parse_model_proto)
from llama_np.tokenizer.sentencepiece_model import serialize_model_proto as serialize_model
from llama_np.tokenizer.tokenizers import load_sentencepiece_processor

MERGED_PIECE_SCORE = 0.0  # what the paper's merge_tokenizers.py gives every appended piece


class SentencePieceModelError(ValueError):
    """A file that is not a SentencePiece model, or a model that cannot be built."""


# ----- reading and writing ----------------------------------------------------------------

def parse_model(data, source="<bytes>"):
    """The SentencePieceModel serialized in `data`. Raises SentencePieceModelError, naming
    `source`, if the bytes are not a SentencePiece model that the `sentencepiece` library
    accepts."""
    try:
        model = parse_model_proto(data)
    except (protowire.ProtobufError, UnicodeDecodeError) as e:
        raise SentencePieceModelError(f"{source}: not a SentencePiece model ({e})") from None
    if not model.pieces:
        raise SentencePieceModelError(f"{source}: not a SentencePiece model (it has no pieces)")
    _check_loads(serialize_model(model), source)  # the library is the final judge
    return model


def read_model(path):
    """The SentencePieceModel in the `.model` file at `path`."""
    path = os.fspath(path)
    return parse_model(read_bytes(path, SentencePieceModelError, "the model"), source=path)


def write_model(model, path):
    """Write `model` to `path` as a `.model` file, atomically (a temporary file in the
    same folder, renamed into place only once complete and loadable)."""
    data = serialize_model(model)
    _check_loads(data, os.fspath(path))
    atomic_write_bytes(path, data)


def load_processor(model):
    """A `sentencepiece.SentencePieceProcessor` running `model`."""
    return _check_loads(serialize_model(model), "<model>")


def _check_loads(data, source):
    return load_sentencepiece_processor(data, source, SentencePieceModelError)


# ----- the merge --------------------------------------------------------------------------

def merge_models(base, added):
    """`base` with every piece of `added` that `base` lacks appended, in `added`'s order,
    as a NORMAL piece with score 0 (Chinese-LLaMA's merge_tokenizers.py). Returns the
    merged SentencePieceModel; its first len(base.pieces) pieces are base's, unchanged, and
    every setting (normalizer, byte fallback, …) is base's."""
    known = set(base.piece_texts())
    appended = []
    for piece in added.pieces:
        if piece.text not in known:
            appended.append(Piece(piece.text, MERGED_PIECE_SCORE, NORMAL))
            known.add(piece.text)
    return SentencePieceModel(base.pieces + tuple(appended), base.other_fields)


# ----- training ---------------------------------------------------------------------------

# Trainer settings for a Chinese vocabulary. The paper gives only the size (20,000); the
# model type and character coverage follow what its released chinese_sp.model records in its
# trainer spec. The normalization does not: chinese_sp.model applies NFKC, which spells
# "，" as "," and "１" as "1", so some of its pieces are written in characters that the
# merged model — which keeps LLaMA's identity normalizer — never sees in raw text. A
# vocabulary meant for merging is better learned from the text exactly as it will come.
DEFAULT_MODEL_TYPE = "unigram"
DEFAULT_CHARACTER_COVERAGE = 0.9995  # chinese_sp.model's trainer_spec.character_coverage
NORMALIZATION = "identity"           # as LLaMA's tokenizer.model
MAX_SENTENCE_LENGTH = 1 << 14        # characters; cmrc2018 paragraphs run to a few thousand


def train_model(texts, vocab_size, *, model_type=DEFAULT_MODEL_TYPE,
                character_coverage=DEFAULT_CHARACTER_COVERAGE):
    """Train a SentencePiece model with the `sentencepiece` trainer on `texts` (an
    iterable of str; each line of each is one training sentence) and return it as a
    SentencePieceModel.

    Raises SentencePieceModelError when there is nothing to learn from (no non-blank text)
    or when the trainer refuses, e.g. because `vocab_size` is smaller than the number of
    distinct characters `character_coverage` asks for.
    """
    import sentencepiece

    sentences = [line for text in texts for line in text.splitlines() if line.strip()]
    if not sentences:
        raise SentencePieceModelError("the training corpus is empty (no non-blank lines)")
    model_bytes = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=model_bytes, vocab_size=vocab_size,
            model_type=model_type, character_coverage=character_coverage,
            normalization_rule_name=NORMALIZATION, remove_extra_whitespaces=False,
            max_sentence_length=MAX_SENTENCE_LENGTH,
            num_threads=1,  # one thread: the same model on every run
            minloglevel=2)  # warnings and errors only
    except RuntimeError as e:
        raise SentencePieceModelError(f"SentencePiece training failed: {e}") from None
    return parse_model(model_bytes.getvalue(), source="<trained model>")
