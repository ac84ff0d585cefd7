"""The SentencePiece model file: the layout of its `ModelProto`, written down once.

A `.model` file is one serialized `ModelProto` (sentencepiece_model.proto), read and
written with `protowire`. The fields llama_np reads or writes, by their .proto numbers:

    ModelProto      1: pieces (repeated SentencePiece)  2: trainer_spec  3: normalizer_spec
                    (the others, e.g. 5: denormalizer_spec, are kept as the bytes found)
    SentencePiece   1: piece (string)  2: score (float)  3: type (enum Type, default NORMAL)
    TrainerSpec     3: model_type  4: vocab_size  35: byte_fallback  40: unk_id
    NormalizerSpec  1: name  3: add_dummy_prefix  4: remove_extra_whitespaces
                    5: escape_whitespaces (" " → "▁")

`parse_model_proto` splits a file into its piece list and everything else, kept as the
exact bytes it found, so that `serialize_model_proto` gives an unchanged model back byte
for byte. A model built from scratch (a GGUF "llama" vocabulary, `llama_np.tokenizer.tokenizers`)
takes its settings from `trainer_spec_field` and `normalizer_spec_field`;
`adds_dummy_prefix` reads back the one normalizer setting GGUF records.

Imports: `protowire` only. Users: `llama_np.tokenizer.tokenizers`,
`llama_np.chinese.vocab_sentencepiece` (the vocabulary merge), `llama_np.checkpoint.gguf_writer`.
"""
from dataclasses import dataclass

from llama_np.tokenizer import protowire

# message ModelProto
MODEL_PIECES = 1                         # repeated SentencePiece pieces = 1;
MODEL_TRAINER_SPEC = 2                   # optional TrainerSpec trainer_spec = 2;
MODEL_NORMALIZER_SPEC = 3                # optional NormalizerSpec normalizer_spec = 3;

# message ModelProto.SentencePiece
PIECE_TEXT = 1                           # optional string piece = 1;
PIECE_SCORE = 2                          # optional float score = 2;
PIECE_TYPE = 3                           # optional Type type = 3 [default = NORMAL];

# enum ModelProto.SentencePiece.Type (GGUF's token types are these numbers too)
NORMAL = 1
UNKNOWN = 2
CONTROL = 3
USER_DEFINED = 4
UNUSED = 5
BYTE = 6

# message TrainerSpec
TRAINER_MODEL_TYPE = 3                   # optional ModelType model_type = 3 [default = UNIGRAM];
TRAINER_VOCAB_SIZE = 4                   # optional int32 vocab_size = 4 [default = 8000];
TRAINER_BYTE_FALLBACK = 35               # optional bool byte_fallback = 35 [default = false];
TRAINER_UNK_ID = 40                      # optional int32 unk_id = 40 [default = 0];

# enum TrainerSpec.ModelType
MODEL_TYPE_UNIGRAM = 1
MODEL_TYPE_BPE = 2

# message NormalizerSpec
NORMALIZER_NAME = 1                      # optional string name = 1;
NORMALIZER_ADD_DUMMY_PREFIX = 3          # optional bool add_dummy_prefix = 3 [default = true];
NORMALIZER_REMOVE_EXTRA_WHITESPACES = 4  # optional bool remove_extra_whitespaces = 4 [default = true];
NORMALIZER_ESCAPE_WHITESPACES = 5        # optional bool escape_whitespaces = 5 [default = true];


@dataclass(frozen=True)
class Piece:
    """One vocabulary entry: its text ("▁the", "中国", "<0xE4>"), its score, its type."""
    text: str
    score: float
    type: int = NORMAL


@dataclass(frozen=True)
class SentencePieceModel:
    """The piece list of a `.model` file (piece id = list index) and, as raw protobuf
    bytes, everything else in it: trainer spec, normalizer spec, … written back as found."""
    pieces: tuple
    other_fields: bytes

    def piece_texts(self):
        return [p.text for p in self.pieces]


# ----- reading ----------------------------------------------------------------------------

def parse_model_proto(data):
    """The SentencePieceModel serialized in `data`. Raises protowire.ProtobufError on bytes
    that are not a protobuf message or a piece without its text, UnicodeDecodeError on a
    piece text that is not UTF-8. A message without pieces is returned as one: whether it
    is a usable model is for the caller (and the `sentencepiece` library) to say."""
    fields = protowire.read_fields(data)
    pieces = tuple(_parse_piece(value) for number, wire_type, value in fields
                   if number == MODEL_PIECES and wire_type == protowire.LENGTH_DELIMITED)
    other = b"".join(protowire.encode_field(number, wire_type, value) for number, wire_type, value in fields
                     if number != MODEL_PIECES)
    return SentencePieceModel(pieces, other)


def _parse_piece(data):
    text, score, piece_type = None, 0.0, NORMAL
    for number, wire_type, value in protowire.read_fields(data):
        if number == PIECE_TEXT and wire_type == protowire.LENGTH_DELIMITED:
            text = value.decode("utf-8")
        elif number == PIECE_SCORE and wire_type == protowire.FIXED32:
            score = protowire.decode_float(value)
        elif number == PIECE_TYPE and wire_type == protowire.VARINT:
            piece_type = value
    if text is None:
        raise protowire.ProtobufError("a piece without its text")
    return Piece(text, score, piece_type)


def adds_dummy_prefix(model_fields):
    """NormalizerSpec.add_dummy_prefix of the ModelProto fields `model_fields` (a whole
    `.model` file, or its `other_fields`): whether the model puts a "▁" in front of every
    text (protobuf's default, when the field is not written, is true)."""
    for number, wire_type, value in protowire.read_fields(model_fields):
        if number == MODEL_NORMALIZER_SPEC and wire_type == protowire.LENGTH_DELIMITED:
            for inner, inner_type, flag in protowire.read_fields(value):
                if inner == NORMALIZER_ADD_DUMMY_PREFIX and inner_type == protowire.VARINT:
                    return bool(flag)
    return True


# ----- writing ----------------------------------------------------------------------------

def serialize_model_proto(model):
    """The `.model` bytes of `model`: its pieces in id order, then its other fields. A model
    parsed from a file and not changed serializes to that file's exact bytes."""
    return b"".join(encode_piece(p.text, p.score, p.type) for p in model.pieces) + model.other_fields


def encode_piece(text, score, piece_type=NORMAL):
    """One ModelProto.pieces field. NORMAL, the type's default, is left unwritten, as
    protobuf (and so SentencePiece's trainer) leaves it."""
    entry = _bytes(PIECE_TEXT, text.encode("utf-8")) + protowire.encode_float(PIECE_SCORE, score)
    if piece_type != NORMAL:
        entry += _varint(PIECE_TYPE, piece_type)
    return _bytes(MODEL_PIECES, entry)


def trainer_spec_field(*, model_type, vocab_size, byte_fallback, unk_id):
    """The ModelProto.trainer_spec field with the four settings tokenizing reads."""
    spec = (_varint(TRAINER_MODEL_TYPE, model_type) + _varint(TRAINER_VOCAB_SIZE, vocab_size)
            + _varint(TRAINER_BYTE_FALLBACK, int(byte_fallback)) + _varint(TRAINER_UNK_ID, unk_id))
    return _bytes(MODEL_TRAINER_SPEC, spec)


def normalizer_spec_field(*, name, add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces):
    """The ModelProto.normalizer_spec field: the normalization rule's `name` ("identity":
    none) and the three whitespace settings."""
    spec = (_bytes(NORMALIZER_NAME, name.encode("utf-8"))
            + _varint(NORMALIZER_ADD_DUMMY_PREFIX, int(add_dummy_prefix))
            + _varint(NORMALIZER_REMOVE_EXTRA_WHITESPACES, int(remove_extra_whitespaces))
            + _varint(NORMALIZER_ESCAPE_WHITESPACES, int(escape_whitespaces)))
    return _bytes(MODEL_NORMALIZER_SPEC, spec)


def _varint(field, value):
    return protowire.encode_field(field, protowire.VARINT, value)


def _bytes(field, data):
    return protowire.encode_field(field, protowire.LENGTH_DELIMITED, data)
