"""Text ↔ token ids: one `Tokenizer` interface over the two kinds of vocabulary LLaMA-family
models use.

1. **SentencePiece** (LLaMA, Chinese-LLaMA-Alpaca). Text is first "escaped": every space
   becomes the visible piece "▁" (U+2581) and one extra "▁" is put in front of the text
   (the *dummy prefix*), so that "Hello" at the start of a text and " Hello" in the middle
   become the same piece "▁Hello". Pieces are then merged greedily by score. A character
   that is in no piece falls back to its UTF-8 bytes, written as pieces "<0xE4>", "<0xB8>", …
   (byte fallback). Decoding joins the pieces, turns "▁" back into spaces and drops the
   dummy prefix's space again. The `sentencepiece` library does all of this; the model is a
   `tokenizer.model` file (a protobuf), or is rebuilt from a GGUF file's metadata.

2. **Byte-level BPE** (GPT-2, SmolLM, LLaMA-3). Text is cut into words by a regular
   expression (the *pre-tokenizer*), each word's UTF-8 bytes are spelled with 256 printable
   stand-in characters (a space is "Ġ", a newline "Ċ", the bytes of "你" are "ä½ł"), and
   pairs of symbols are merged in the order of a learned merge list. Nothing is ever
   unknown, because every byte has a symbol. HF `tokenizers` runs this, built from a GGUF
   file's vocabulary and merges, or read from an HF `tokenizer.json`.

Both kinds also have *special tokens* (`<s>`, `</s>`, `<|im_start|>`, `<|im_end|>`): control
tokens that are never produced by merging. When their exact text appears in a prompt it is
taken as that one token, which is how a chat template's markers reach the model.

Typical use:

    tok = llama_np.checkpoint.load_tokenizer("SmolLM2-135M-Instruct.Q4_1.gguf")
    ids = tok.encode("Hello")                  # BOS added if the model asks for it
    stream = tok.stream_decoder()
    for i in generated_ids:
        print(stream.push(i), end="")         # never half a UTF-8 character
    print(stream.flush())

`tokenizers` and `sentencepiece` are imported only when a tokenizer of that kind is built,
so importing this module is instant.
"""
import os
import re

from llama_np.files.text import read_json
from llama_np.tokenizer import sentencepiece_model as spm

# Token types, as GGUF stores them in `tokenizer.ggml.token_type`. llama.cpp took them from
# SentencePiece's ModelProto.SentencePiece.Type (1 … 6), so they are those numbers and go
# straight into a SentencePiece model.
TOKEN_NORMAL = spm.NORMAL
TOKEN_UNKNOWN = spm.UNKNOWN
TOKEN_CONTROL = spm.CONTROL            # <s>, </s>, <|im_end|>: special tokens
TOKEN_USER_DEFINED = spm.USER_DEFINED  # always matched whole in text, but not special
TOKEN_UNUSED = spm.UNUSED
TOKEN_BYTE = spm.BYTE                  # <0x00> … <0xFF>, SentencePiece byte fallback

REPLACEMENT_CHAR = "\ufffd"  # what a decoder writes for bytes that are not (yet) valid UTF-8
SPACE_PIECE = "\u2581"       # "▁", SentencePiece's visible space

# Pre-tokenizers for byte-level BPE, by the name GGUF stores in `tokenizer.ggml.pre`.
# llama.cpp (src/llama-vocab.cpp) lists, for each name, the regular expressions it splits
# text with, one after the other. Written here as HF `tokenizers` pre-tokenizers:
#
# GPT-2's own regex, which the ByteLevel pre-tokenizer of `tokenizers` applies:
#     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
# StarCoder's (and SmolLM's, whose tokenizer follows it): every digit is first cut out on
#     its own, then the GPT-2 regex runs on what is left. This is what SmolLM's
#     `tokenizer.json` says (Digits(individual_digits) then ByteLevel) and what llama.cpp does.
# LLaMA-3's: numbers in runs of up to three digits, a word may carry one leading
#     non-letter; applied by a Split, then ByteLevel without its own regex. llama.cpp also
#     sets `ignore_merges` for it: a word that is itself in the vocabulary is taken whole.
# Qwen2's: as LLaMA-3's, but single digits, and merges are not skipped.
_GPT2_FAMILY = ("gpt-2", "phi-2", "roberta-bpe", "mpt", "olmo", "jais")
_STARCODER_FAMILY = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b")
_LLAMA3_FAMILY = ("llama3", "llama-v3", "llama-bpe", "falcon3")
_QWEN2_FAMILY = ("qwen2", "megrez", "deepseek-r1-qwen")
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _check_encodable(text):
    """Text holding a lone UTF-16 surrogate (from bytes that are not UTF-8, which Python
    keeps as surrogates in command-line arguments, or a JSON escape such as "\\ud800") has
    no UTF-8 spelling, so no tokens: say where, instead of failing inside the backend."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"the text is not valid Unicode at character {e.start} "
                         f"(U+{ord(text[e.start]):04X}, a lone surrogate: bytes that are not UTF-8?)") from None


class TokenizerError(ValueError):
    """A file or folder that holds no usable tokenizer, or ids the tokenizer cannot decode."""


class Tokenizer:
    """Text ↔ ids for one model. Build it with `llama_np.checkpoint.load_tokenizer(path)` or one of the
    `from_*` constructors; the two kinds (`SentencePieceTokenizer`, `HFTokenizer`) differ only
    in how a stretch of text becomes ids and back.

    Attributes: `vocab_size`, `bos_id`, `eos_id`, `pad_id` (None if the model has none),
    `add_bos` (whether `encode` puts BOS first by default), `chat_template` (Jinja source or
    None), `source` (the path it came from, for messages).
    """

    def __init__(self, *, bos_id, eos_id, pad_id, add_bos, chat_template, source):
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.add_bos = bool(add_bos)
        self.chat_template = chat_template
        self.source = source

    # ----- constructors --------------------------------------------------------------

    @staticmethod
    def from_gguf_metadata(meta, source="<gguf>"):
        """The tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata.

        `tokenizer.ggml.model` says which kind: "llama" is SentencePiece (pieces + scores),
        "gpt2" is byte-level BPE (tokens + merges, with `tokenizer.ggml.pre` naming the
        pre-tokenizer). When `add_bos_token` is absent, BOS is added for SentencePiece and
        not for BPE, as llama.cpp does.
        """
        kind = meta.get("tokenizer.ggml.model")
        tokens = meta.get("tokenizer.ggml.tokens")
        if kind is None or tokens is None:
            raise TokenizerError(f"{source}: the GGUF metadata has no tokenizer "
                                 f"(tokenizer.ggml.model / tokenizer.ggml.tokens missing)")
        _check_gguf_tokenizer_fields(meta, source)
        token_types = meta.get("tokenizer.ggml.token_type") or [TOKEN_NORMAL] * len(tokens)
        if len(token_types) != len(tokens):
            raise TokenizerError(f"{source}: {len(tokens)} tokens but {len(token_types)} token types")
        common = dict(
            bos_id=meta.get("tokenizer.ggml.bos_token_id"),
            eos_id=meta.get("tokenizer.ggml.eos_token_id"),
            pad_id=meta.get("tokenizer.ggml.padding_token_id"),
            add_bos=meta.get("tokenizer.ggml.add_bos_token", kind == "llama"),
            chat_template=meta.get("tokenizer.chat_template"),
            source=source,
        )
        if kind == "llama":
            scores = meta.get("tokenizer.ggml.scores")
            if scores is None or len(scores) != len(tokens):
                raise TokenizerError(f"{source}: a SentencePiece vocabulary needs one score per token "
                                     f"(tokenizer.ggml.scores)")
            proto = _sentencepiece_model_proto(
                tokens, scores, token_types,
                unk_id=meta.get("tokenizer.ggml.unknown_token_id"),
                add_dummy_prefix=meta.get("tokenizer.ggml.add_space_prefix", True),
                remove_extra_whitespaces=meta.get("tokenizer.ggml.remove_extra_whitespaces", False))
            processor = load_sentencepiece_processor(proto, source)
            return SentencePieceTokenizer(processor, {}, **common)
        if kind == "gpt2":
            merges = meta.get("tokenizer.ggml.merges")
            if merges is None:
                raise TokenizerError(f"{source}: a BPE vocabulary needs its merges (tokenizer.ggml.merges)")
            backend = _byte_level_bpe(tokens, merges, token_types, meta.get("tokenizer.ggml.pre"), source)
            return HFTokenizer(backend, **common)
        raise TokenizerError(f"{source}: tokenizer.ggml.model = {kind!r} is not supported "
                             f"('llama' = SentencePiece, 'gpt2' = byte-level BPE)")

    @staticmethod
    def from_sentencepiece(path, *, added_tokens=None):
        """A SentencePiece `tokenizer.model` file. BOS/EOS/pad ids come from the model;
        `add_bos` is True, as for every LLaMA model. `added_tokens` ({text: id}) are extra
        special tokens beyond the model's pieces, such as Chinese-Alpaca's "[PAD]" = 49953
        (ids the model already has are ignored)."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise TokenizerError(f"{path}: no such file")
        with open(path, "rb") as f:
            processor = load_sentencepiece_processor(f.read(), path)
        return SentencePieceTokenizer(processor, added_tokens or {},
                                      bos_id=_id_or_none(processor.bos_id()),
                                      eos_id=_id_or_none(processor.eos_id()),
                                      pad_id=_id_or_none(processor.pad_id()),
                                      add_bos=True, chat_template=None, source=path)

    @staticmethod
    def from_hf_dir(folder):
        """A Hugging Face model folder: `tokenizer.json` (read by HF `tokenizers`) or else
        `tokenizer.model` (SentencePiece). The special tokens (named by their text),
        `add_bos_token` and the chat template come from `tokenizer_config.json`,
        `special_tokens_map.json`, `added_tokens.json` and `chat_template.jinja` where present.
        Without an `add_bos_token` flag, a tokenizer.json adds BOS if its post-processor does."""
        folder = os.fspath(folder)
        if not os.path.isdir(folder):
            raise TokenizerError(f"{folder}: no such folder")
        config = _read_hf_tokenizer_config(folder)
        json_path = os.path.join(folder, "tokenizer.json")
        model_path = os.path.join(folder, "tokenizer.model")
        if os.path.isfile(json_path):
            from tokenizers import Tokenizer as HFBackend
            try:
                backend = HFBackend.from_file(json_path)
            except Exception as e:  # tokenizers raises a bare Exception for bad JSON
                raise TokenizerError(f"{json_path}: not a readable tokenizer.json ({e})") from None
            tok = HFTokenizer(backend, bos_id=None, eos_id=None, pad_id=None, add_bos=False,
                              chat_template=None, source=folder)
        elif os.path.isfile(model_path):
            tok = Tokenizer.from_sentencepiece(model_path, added_tokens=config["added_tokens"])
            tok.source = folder
        else:
            raise TokenizerError(f"{folder}: holds neither tokenizer.json nor tokenizer.model")

        tok.chat_template = config["chat_template"]
        for attr, name in (("bos_id", "bos_token"), ("eos_id", "eos_token"), ("pad_id", "pad_token")):
            if config[name] is not None:
                setattr(tok, attr, tok.piece_to_id(config[name]))
        if config["add_bos_token"] is not None:
            tok.add_bos = bool(config["add_bos_token"])
        elif isinstance(tok, HFTokenizer):
            with_specials = backend.encode("a", add_special_tokens=True).ids
            tok.add_bos = tok.bos_id is not None and with_specials[:1] == [tok.bos_id]
        return tok

    # ----- the interface ---------------------------------------------------------------

    def encode(self, text, add_bos=None, add_eos=False):
        """Token ids of `text`. Special tokens written in the text (e.g. "<|im_end|>") become
        their single id. `add_bos=None` follows the model (`self.add_bos`)."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        if not text.isascii():
            _check_encodable(text)
        ids = self._encode_text(text)
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids = [self.bos_id] + ids
        if add_eos and self.eos_id is not None:
            ids = ids + [self.eos_id]
        return ids

    def special_token_text(self, token_id):
        """The text that stands for a token in a prompt, e.g. "</s>" or "<|im_end|>"; what a
        chat template gets as `bos_token` / `eos_token`. "" for None (no such token)."""
        return "" if token_id is None else self.id_to_piece(token_id)

    def stream_decoder(self, skip_special=False):
        """A `StreamDecoder` for printing generated ids as they come."""
        return StreamDecoder(self, skip_special)

    def __repr__(self):
        return (f"{type(self).__name__}({self.source!r}, vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
                f"eos_id={self.eos_id}, add_bos={self.add_bos})")

    # what each kind provides: _encode_text(text), decode(ids, skip_special=False),
    # id_to_piece(i), piece_to_id(s), vocab_size


class SentencePieceTokenizer(Tokenizer):
    """SentencePiece through the `sentencepiece` library.

    SentencePiece itself treats "<s>" in a text as three characters. To let prompts carry
    special tokens, the text is cut at each special token's text; each stretch between them
    is encoded on its own, and so gets its own dummy-prefix space, exactly as llama.cpp
    tokenizes a prompt with special tokens. `decode` mirrors this: each stretch of ordinary
    ids is decoded on its own, special tokens are written as their text.
    """

    def __init__(self, processor, added_tokens, **attrs):
        super().__init__(**attrs)
        self._sp = processor
        self._n_pieces = processor.get_piece_size()
        # special tokens: the model's control pieces, then any added beyond them
        self._special_ids = {processor.id_to_piece(i): i for i in range(self._n_pieces) if processor.is_control(i)}
        self._special_ids.update({t: i for t, i in added_tokens.items() if i >= self._n_pieces})
        self._special_texts = {i: text for text, i in self._special_ids.items()}
        self.vocab_size = max([self._n_pieces] + [i + 1 for i in self._special_texts])
        # longest first, so that a special token that contains another wins
        alternatives = sorted(self._special_ids, key=len, reverse=True)
        self._special_pattern = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")") if alternatives else None

    def _encode_text(self, text):
        if self._special_pattern is None:
            return self._sp.encode(text)
        ids = []
        # re.split with a capturing group alternates: text, special, text, special, …, text
        for k, part in enumerate(self._special_pattern.split(text)):
            if k % 2:
                ids.append(self._special_ids[part])
            elif part:
                ids.extend(self._sp.encode(part))
        return ids

    def decode(self, ids, skip_special=False):
        """Text of `ids`. With `skip_special`, special tokens are left out (and the text around
        them joined as SentencePiece would); otherwise they are written as their text."""
        ids = [int(i) for i in ids]
        for i in ids:
            if not (0 <= i < self._n_pieces or i in self._special_texts):
                raise TokenizerError(f"{self.source}: token id {i} is outside the vocabulary "
                                     f"(size {self.vocab_size})")
        if skip_special:
            return self._sp.decode([i for i in ids if i < self._n_pieces])
        pieces, run = [], []
        for i in ids:
            if i in self._special_texts:
                pieces.append(self._sp.decode(run))
                pieces.append(self._special_texts[i])
                run = []
            else:
                run.append(i)
        pieces.append(self._sp.decode(run))
        return "".join(pieces)

    def id_to_piece(self, token_id):
        """The vocabulary entry of `token_id`, e.g. "▁Hello", "<0xE4>", "</s>"."""
        if token_id in self._special_texts:
            return self._special_texts[token_id]
        if not 0 <= token_id < self._n_pieces:
            raise TokenizerError(f"{self.source}: token id {token_id} is outside the vocabulary")
        return self._sp.id_to_piece(token_id)

    def piece_to_id(self, piece):
        """The id of vocabulary entry `piece`, or None if there is none."""
        if piece in self._special_ids:
            return self._special_ids[piece]
        token_id = self._sp.piece_to_id(piece)
        return token_id if self._sp.id_to_piece(token_id) == piece else None  # misses map to <unk>


class HFTokenizer(Tokenizer):
    """Any tokenizer HF `tokenizers` can run; here, byte-level BPE built from GGUF metadata
    or a model folder's `tokenizer.json`. Special tokens are the backend's added tokens,
    which it matches whole in the text before the pre-tokenizer runs."""

    def __init__(self, backend, **attrs):
        super().__init__(**attrs)
        self._backend = backend
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)

    def _encode_text(self, text):
        # BOS/EOS are this class's business, not the post-processor's
        return self._backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special=False):
        """Text of `ids`; special tokens are written as their text unless `skip_special`."""
        ids = [int(i) for i in ids]
        outside = [i for i in ids if not 0 <= i < self.vocab_size]
        if outside:  # `tokenizers` would silently drop them
            raise TokenizerError(f"{self.source}: token id {outside[0]} is outside the vocabulary "
                                 f"(size {self.vocab_size})")
        return self._backend.decode(ids, skip_special_tokens=skip_special)

    def id_to_piece(self, token_id):
        """The vocabulary entry of `token_id`, e.g. "Ġworld" (Ġ = a space byte), "<|im_end|>"."""
        piece = self._backend.id_to_token(token_id)
        if piece is None:
            raise TokenizerError(f"{self.source}: token id {token_id} is outside the vocabulary")
        return piece

    def piece_to_id(self, piece):
        """The id of vocabulary entry `piece`, or None if there is none."""
        return self._backend.token_to_id(piece)


class StreamDecoder:
    """Turns ids into text one id at a time, printing only what is final.

    Why it is not just `decode([id])`: a character can span several tokens (the three UTF-8
    bytes of "你" may come as three byte tokens), and a token's text can depend on its
    neighbours (SentencePiece drops the space of the first piece of a text). So `push`
    decodes a small window — the ids printed last time, as context, plus the new ones — and
    prints what the new ids add to the context's text. While that ends in U+FFFD, the last
    character is still incomplete and nothing is printed yet. The printed pieces always join
    to exactly `tokenizer.decode(all ids)`; `flush` prints whatever is still held back.
    """

    def __init__(self, tokenizer, skip_special=False):
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        self._ids = []
        self._context_start = 0  # ids[context_start:printed_end] were printed last time
        self._printed_end = 0    # ids from here on are not printed yet

    def push(self, token_id):
        """Add one id; return the text that is now complete ("" while a character is unfinished)."""
        self._ids.append(int(token_id))
        return self._advance(final=False)

    def flush(self):
        """Return everything not printed yet, incomplete characters included (as U+FFFD)."""
        return self._advance(final=True)

    def _advance(self, final):
        context = self._decode(self._ids[self._context_start:self._printed_end])
        window = self._decode(self._ids[self._context_start:])
        if not final and window.endswith(REPLACEMENT_CHAR):
            return ""
        self._context_start, self._printed_end = self._printed_end, len(self._ids)
        return window[len(context):]

    def _decode(self, ids):
        return self._tokenizer.decode(ids, skip_special=self._skip_special)


# ----- SentencePiece helpers ---------------------------------------------------------------

def load_sentencepiece_processor(model_proto, source, error=None):
    """A SentencePieceProcessor from the bytes of a serialized ModelProto; bytes it refuses
    raise `error` (a TokenizerError unless another class is given) naming `source`."""
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(model_proto)
    except (RuntimeError, OSError) as e:
        raise (error or TokenizerError)(f"{source}: not a SentencePiece model ({e})") from None
    return processor


def _id_or_none(token_id):
    return None if token_id < 0 else token_id  # sentencepiece says -1 for "none"


def _sentencepiece_model_proto(tokens, scores, token_types, *, unk_id, add_dummy_prefix,
                               remove_extra_whitespaces):
    """Serialize a SentencePiece ModelProto (`sentencepiece_model`) for a GGUF "llama"
    vocabulary: the pieces with their scores and types, and only the settings tokenizing
    reads: a BPE model (merge by score, as llama.cpp does) with byte fallback when the
    vocabulary has byte tokens, and the "identity" normalizer (no Unicode normalization)
    with GGUF's two whitespace settings."""
    pieces = b"".join(spm.encode_piece(piece, score, token_type)
                      for piece, score, token_type in zip(tokens, scores, token_types))
    if unk_id is None:
        unk_id = token_types.index(TOKEN_UNKNOWN) if TOKEN_UNKNOWN in token_types else 0
    trainer_spec = spm.trainer_spec_field(model_type=spm.MODEL_TYPE_BPE, vocab_size=len(tokens),
                                          byte_fallback=TOKEN_BYTE in token_types, unk_id=unk_id)
    normalizer_spec = spm.normalizer_spec_field(name="identity", add_dummy_prefix=add_dummy_prefix,
                                                remove_extra_whitespaces=remove_extra_whitespaces,
                                                escape_whitespaces=True)
    return pieces + trainer_spec + normalizer_spec


# ----- byte-level BPE helpers --------------------------------------------------------------

def _byte_level_bpe(tokens, merges, token_types, pre, source):
    """An HF `tokenizers` byte-level BPE from a GGUF vocabulary: the BPE model from
    tokens + merges ("Ġ t" means: merge "Ġ" and "t"), the pre-tokenizer that `pre` names,
    the ByteLevel decoder (stand-in characters → bytes → UTF-8), and the control and
    user-defined tokens as added tokens, matched whole in the text."""
    import numpy as np
    from tokenizers import AddedToken, Regex, models, pre_tokenizers, decoders
    from tokenizers import Tokenizer as HFBackend

    # token → id; built from the end, so that a repeated token keeps its first id
    vocab = dict(zip(reversed(tokens), range(len(tokens) - 1, -1, -1)))
    merge_pairs = [tuple(m.split(" ")) for m in merges]
    bad = next((m for m, pair in zip(merges, merge_pairs) if len(pair) != 2), None)
    if bad is not None:
        raise TokenizerError(f"{source}: merge {bad!r} is not two tokens separated by a space")
    try:
        backend = HFBackend(models.BPE(vocab=vocab, merges=merge_pairs, ignore_merges=pre in _LLAMA3_FAMILY))
    except Exception as e:  # tokenizers raises a bare Exception, e.g. for a merge of unknown tokens
        raise TokenizerError(f"{source}: not a usable BPE vocabulary ({e})") from None

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    byte_level_only = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre in _GPT2_FAMILY:
        backend.pre_tokenizer = byte_level
    elif pre in _STARCODER_FAMILY:
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in _LLAMA3_FAMILY + _QWEN2_FAMILY:
        regex = _LLAMA3_REGEX if pre in _LLAMA3_FAMILY else _QWEN2_REGEX
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(regex), behavior="isolated"), byte_level_only])
    else:
        known = _GPT2_FAMILY + _STARCODER_FAMILY + _LLAMA3_FAMILY + _QWEN2_FAMILY
        raise TokenizerError(f"{source}: pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not supported; "
                             f"known: {', '.join(known)}")
    backend.decoder = decoders.ByteLevel()

    kinds = np.asarray(token_types)                       # [V]; the few special ones found in C
    backend.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                                for i in np.flatnonzero(kinds == TOKEN_CONTROL)])
    backend.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                        for i in np.flatnonzero(kinds == TOKEN_USER_DEFINED)])
    return backend


# ----- Hugging Face folder helpers ---------------------------------------------------------

def _read_hf_tokenizer_config(folder):
    """What llama_np needs from an HF folder's tokenizer side files, each optional:
    bos/eos/pad token texts, add_bos_token (None if unsaid), chat_template (None if none),
    and added_tokens ({text: id}, for SentencePiece models extended by transformers)."""
    config = read_json(os.path.join(folder, "tokenizer_config.json"), TokenizerError, missing={})
    special_map = read_json(os.path.join(folder, "special_tokens_map.json"), TokenizerError, missing={})

    def token_text(name):
        value = config.get(name, special_map.get(name))
        if isinstance(value, dict):  # a serialized AddedToken
            value = value.get("content")
        return value

    added = dict(read_json(os.path.join(folder, "added_tokens.json"), TokenizerError, missing={}))
    for token_id, entry in config.get("added_tokens_decoder", {}).items():
        added.setdefault(entry["content"], int(token_id))

    # transformers saves the template beside the config in newer versions, inside it in older
    template_path = os.path.join(folder, "chat_template.jinja")
    if os.path.isfile(template_path):
        with open(template_path, encoding="utf-8") as f:
            chat_template = f.read()
    else:
        chat_template = config.get("chat_template")
        if isinstance(chat_template, list):  # named templates: [{"name": ..., "template": ...}]
            named = {t.get("name"): t.get("template") for t in chat_template}
            chat_template = named.get("default")

    return dict(bos_token=token_text("bos_token"), eos_token=token_text("eos_token"),
                pad_token=token_text("pad_token"), add_bos_token=config.get("add_bos_token"),
                chat_template=chat_template, added_tokens=added)


def hf_backend(tokenizer):
    """The HF `tokenizers` object behind a byte-level BPE `Tokenizer`. HFTokenizer
    is built on it (pre-tokenizer by name, decoder, special tokens); reusing it here keeps one
    definition of what a GGUF BPE vocabulary means."""
    backend = getattr(tokenizer, "_backend", None)
    if backend is None:
        raise TokenizerError(f"{tokenizer.source}: not a byte-level BPE tokenizer")
    return backend


# The tokenizer.ggml.* fields: the types their elements may have (a list of strings, …),
# checked before use. Exact types, so that a bool is not taken for an integer.
_GGUF_TOKENIZER_LISTS = {"tokenizer.ggml.tokens": {str}, "tokenizer.ggml.merges": {str},
                         "tokenizer.ggml.scores": {int, float}, "tokenizer.ggml.token_type": {int}}
_GGUF_TOKENIZER_IDS = ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                       "tokenizer.ggml.padding_token_id", "tokenizer.ggml.unknown_token_id")


def _check_gguf_tokenizer_fields(meta, source):
    """Raise TokenizerError naming the first tokenizer field of the wrong kind."""
    n_tokens = len(meta["tokenizer.ggml.tokens"]) if isinstance(meta["tokenizer.ggml.tokens"], list) else 0
    for key, kinds in _GGUF_TOKENIZER_LISTS.items():
        value = meta.get(key)
        # set(map(type, …)) runs in C: a vocabulary's 50k-150k elements are checked at every start
        if value is not None and not (isinstance(value, list) and set(map(type, value)) <= kinds):
            what = "strings" if kinds == {str} else "integers" if kinds == {int} else "numbers"
            raise TokenizerError(f"{source}: {key} must be a list of {what}")
    if not n_tokens:
        raise TokenizerError(f"{source}: tokenizer.ggml.tokens is empty")
    for key in _GGUF_TOKENIZER_IDS:
        value = meta.get(key)
        if value is not None and not (type(value) is int and 0 <= value < n_tokens):
            raise TokenizerError(f"{source}: {key} = {value!r} is not a token id (0 … {n_tokens - 1})")
    for key, kind in (("tokenizer.chat_template", str), ("tokenizer.ggml.model", str),
                      ("tokenizer.ggml.pre", str), ("tokenizer.ggml.add_bos_token", bool)):
        value = meta.get(key)
        if value is not None and not isinstance(value, kind):
            raise TokenizerError(f"{source}: {key} must be a {kind.__name__}, got {value!r}")
