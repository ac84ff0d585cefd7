"""How many tokens a tokenizer spends on a text — the paper's Table 1, on a whole corpus.

Cui et al. (2023, Table 1) show one sentence, 人工智能是计算机科学、心理学、哲学等学科融合的
交叉学科。, taking 35 tokens with LLaMA's tokenizer and 16 with Chinese-LLaMA's: LLaMA knows
few Chinese characters, and spells each unknown one as three byte tokens. Fewer tokens per
character means more text in the same context window and faster generation per character.
Here the same comparison is made on a corpus (by default the 848 cmrc2018 Wikipedia
paragraphs):

    tokens per character = tokens / characters          (BOS not counted)
    length ratio         = tokens / tokens of the first tokenizer in the table

    python -m llama_np.tokenizer_stats tokenizer.model merged.model
    python -m llama_np.tokenizer_stats default smollm2-zh/ --part held_out
    python -m llama_np.tokenizer_stats default --corpus my_text.txt --example "你好，世界"

Each tokenizer is anything `llama_np.checkpoint.load_tokenizer` reads (a SentencePiece
`.model`, a GGUF file, a Hugging Face folder), or "default" for the default model's.
"""
import argparse
import os
from dataclasses import dataclass

from llama_np.cli import common as cli

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


def measure(tokenizer, documents, name=None):
    """Tokens `tokenizer` spends on `documents` (each encoded on its own, without BOS)."""
    n_characters = sum(map(len, documents))
    if n_characters == 0:
        raise ValueError("cannot measure tokens per character on an empty text")
    n_tokens = sum(len(tokenizer.encode(doc, add_bos=False)) for doc in documents)
    return TokenizerStats(name or tokenizer.source, tokenizer.vocab_size, n_characters, n_tokens)


def format_table(rows):
    """The rows as a text table; the length ratio is relative to the first row."""
    headers = ("tokenizer", "vocab", "tokens", "tokens/char", "length ratio")
    cells = [(row.name, f"{row.vocab_size:,}", f"{row.n_tokens:,}", f"{row.tokens_per_character:.3f}",
              f"{row.n_tokens / rows[0].n_tokens:.3f}") for row in rows]
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
    from llama_np.tokenizer.tokenizers import SentencePieceTokenizer
    from llama_np.chinese.vocab_bpe import SYMBOL_BYTES, readable_token

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


# ----- the command line -----------------------------------------------------------------------

def parse_args(argv=None):
    from llama_np.chinese import corpus

    parser = argparse.ArgumentParser(
        prog="python -m llama_np.tokenizer_stats",
        description="Tokens per character and length ratio of tokenizers on a Chinese text "
                    "(Cui et al. 2023, Table 1).")
    parser.add_argument("tokenizers", nargs="+", metavar="TOKENIZER",
                        help="a .model, .gguf or Hugging Face folder, or 'default'; the first is the "
                             "reference of the length ratio")
    text = parser.add_mutually_exclusive_group()
    text.add_argument("--corpus", action="append", metavar="FILE",
                      help="UTF-8 text, one document per line (repeatable); default: llama_np's corpus")
    text.add_argument("--source", choices=corpus.SOURCES + ("both",), default="cmrc2018",
                      help="which of llama_np's corpora (default: %(default)s, the Chinese Wikipedia text)")
    parser.add_argument("--part", choices=corpus.PARTS, default="all",
                        help="which part of llama_np's corpus (default: %(default)s)")
    parser.add_argument("--example", default=PAPER_TABLE_1_SENTENCE,
                        help="a text to show tokenized by each tokenizer (default: the sentence of "
                             "the paper's Table 1); '' for none")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from llama_np.chinese import corpus
    from llama_np.files import hub
    from llama_np.checkpoint import load_tokenizer

    if args.corpus:
        documents = [line for path in args.corpus for line in corpus.read_text_file(path)]
        described = ", ".join(args.corpus)
    else:
        sources = corpus.SOURCES if args.source == "both" else (args.source,)
        documents = corpus.chinese_documents(args.part, sources=sources)
        described = f"{' + '.join(sources)}, {args.part}"
    names = [_short_name(path) for path in args.tokenizers]
    tokenizers = [load_tokenizer(hub.resolve_model(path)) for path in args.tokenizers]
    rows = [measure(tok, documents, name) for tok, name in zip(tokenizers, names)]
    print(f"text: {described} ({len(documents):,} documents, {rows[0].n_characters:,} characters)\n")
    print(format_table(rows))
    if args.example:
        print(f"\n{args.example}\n")
        print(format_example(tokenizers, names, args.example))


def _short_name(path):
    if path in ("", "default"):
        return "default"
    return os.path.basename(os.path.normpath(path))


if __name__ == "__main__":
    cli.run(main)
