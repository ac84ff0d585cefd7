"""The paper's Table 1: how many tokens a tokenizer spends per character of Chinese text,
the original tokenizer against the extended one, and tokenizations side by side.

Fewer tokens per character is the paper's efficiency claim: a context of C tokens holds
C / (tokens per character) characters, so the extended tokenizer fits about twice the
Chinese text in the same 2,048-token context (decoding speed in characters per second, the
claim's other half, is measured by benchmarks/bench_chinese.py)."""
from dataclasses import dataclass

from llama_np.chinese.vocab_bpe import SYMBOL_BYTES, readable_token
from llama_np.llama.decoding_defaults import PAPER_CONTEXT
from llama_np.tokenizer.tokenizers import SentencePieceTokenizer

PAPER_TABLE_1_SENTENCE = "人工智能是计算机科学、心理学、哲学等学科融合的交叉学科。"


@dataclass(frozen=True)
class TokenizerStats:
    """One row of the table: `name` tokenized a text of `n_characters` into `n_tokens`."""
    name: str
    vocab_size: int
    n_characters: int
    n_tokens: int

    @property
    def tokens_per_character(self):
        return self.n_tokens / self.n_characters

    def characters_per_context(self, context=PAPER_CONTEXT):
        """How many characters of such text a context of `context` tokens holds."""
        return context / self.tokens_per_character


def measure(tokenizer, documents, name=None):
    """Tokens `tokenizer` spends on `documents` (each encoded on its own, without BOS)."""
    n_characters = sum(map(len, documents))
    if n_characters == 0:
        raise ValueError("cannot measure tokens per character on an empty text")
    n_tokens = sum(len(tokenizer.encode(doc, add_bos=False)) for doc in documents)
    return TokenizerStats(name or tokenizer.source, tokenizer.vocab_size, n_characters, n_tokens)


def format_table(rows, context=PAPER_CONTEXT):
    """The rows as a text table; the length ratio is relative to the first row, and
    "chars/context" is how many characters of the text a `context`-token context holds."""
    headers = ("tokenizer", "vocab", "tokens", "tokens/char", "length ratio", f"chars/{context:,} tokens")
    cells = [(row.name, f"{row.vocab_size:,}", f"{row.n_tokens:,}", f"{row.tokens_per_character:.3f}",
              f"{row.n_tokens / rows[0].n_tokens:.3f}", f"{row.characters_per_context(context):,.0f}")
             for row in rows]
    widths = [max(len(line[k]) for line in [headers] + cells) for k in range(len(headers))]

    def line(values):  # the name left-aligned, the numbers right-aligned
        return "  ".join(v.ljust(w) if k == 0 else v.rjust(w) for k, (v, w) in enumerate(zip(values, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(c) for c in cells])


def token_texts(tokenizer, ids):
    """Readable text of each token, for showing tokenizations side by side.

    A SentencePiece piece is shown as the vocabulary writes it ("▁人工", "<0xE5>"). A
    byte-level BPE token is shown as the text its bytes spell, with a space as "▁" and a
    newline as "\\n"; a token that holds only part of a character is shown as its bytes
    ("<E5 93>").
    """
    texts = []
    for i in ids:
        piece = tokenizer.id_to_piece(i)
        if isinstance(tokenizer, SentencePieceTokenizer) or not all(c in SYMBOL_BYTES for c in piece):
            texts.append(piece)  # SentencePiece, or a special token such as <|im_end|>
        else:
            texts.append(readable_token(piece))
    return texts


def format_example(tokenizers, names, text):
    """Each tokenizer's tokens of `text`, one line each: "name (n tokens): a | b | c"."""
    width = max(map(len, names))
    lines = []
    for tokenizer, name in zip(tokenizers, names):
        pieces = token_texts(tokenizer, tokenizer.encode(text, add_bos=False))
        lines.append(f"{name.ljust(width)}  ({len(pieces)} tokens): " + " | ".join(pieces))
    return "\n".join(lines)
