"""How many tokens a tokenizer spends on a text — the paper's Table 1, on a whole corpus.

Cui et al. (2023, Table 1) show one sentence, 人工智能是计算机科学、心理学、哲学等学科融合的
交叉学科。, taking 35 tokens with LLaMA's tokenizer and 16 with Chinese-LLaMA's: LLaMA knows
few Chinese characters, and spells each unknown one as three byte tokens. Fewer tokens per
character means more text in the same context window and faster generation per character.
Here the same comparison is made on a corpus (by default the 848 cmrc2018 Wikipedia
paragraphs):

    tokens per character = tokens / characters          (BOS not counted)
    length ratio         = tokens / tokens of the first tokenizer in the table
    chars/2,048 tokens   = 2,048 / tokens per character  (how much such text a context holds)

    python -m llama_np.tokenizer_stats tokenizer.model merged.model
    python -m llama_np.tokenizer_stats default smollm2-zh/ --part held_out
    python -m llama_np.tokenizer_stats default --corpus my_text.txt --example "你好，世界"

Each tokenizer is anything `llama_np.checkpoint.load_tokenizer` reads (a SentencePiece
`.model`, a GGUF file, a Hugging Face folder), or "default" for the default model's.
"""
import argparse
import os

from llama_np.chinese.tokenizer_stats import PAPER_TABLE_1_SENTENCE
from llama_np.cli import common as cli
from llama_np.llama.decoding_defaults import PAPER_CONTEXT

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
    parser.add_argument("--context", type=int, default=PAPER_CONTEXT, metavar="TOKENS",
                        help="the context whose capacity in characters the table shows (default: "
                             "%(default)s, the paper's)")
    parser.add_argument("--example", default=PAPER_TABLE_1_SENTENCE,
                        help="a text to show tokenized by each tokenizer (default: the sentence of "
                             "the paper's Table 1); '' for none")
    args = parser.parse_args(argv)
    if args.context < 1:
        parser.error(f"--context must be at least 1 token, not {args.context}")
    return args


def main(argv=None):
    args = parse_args(argv)
    from llama_np.chinese import corpus
    from llama_np.files import hub
    from llama_np.checkpoint import load_tokenizer
    from llama_np.chinese.tokenizer_stats import format_example, format_table, measure

    if args.corpus:
        documents = corpus.read_text_files(args.corpus)
        described = ", ".join(args.corpus)
    else:
        sources = corpus.SOURCES if args.source == "both" else (args.source,)
        documents = corpus.chinese_documents(args.part, sources=sources)
        described = f"{' + '.join(sources)}, {args.part}"
    names = [_short_name(path) for path in args.tokenizers]
    tokenizers = [load_tokenizer(hub.resolve_model(path)) for path in args.tokenizers]
    rows = [measure(tok, documents, name) for tok, name in zip(tokenizers, names)]
    print(f"text: {described} ({len(documents):,} documents, {rows[0].n_characters:,} characters)\n")
    print(format_table(rows, args.context))
    if args.example:
        print(f"\n{args.example}\n")
        print(format_example(tokenizers, names, args.example))


def _short_name(path):
    if path in ("", "default"):
        return "default"
    return os.path.basename(os.path.normpath(path))


if __name__ == "__main__":
    cli.run(main)
