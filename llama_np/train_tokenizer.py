"""`python -m llama_np.train_tokenizer --out zh.model --vocab-size N`: train a SentencePiece
model on Chinese text, to merge into a base model with `python -m llama_np.merge_tokenizer`.

    python -m llama_np.train_tokenizer --out zh.model --vocab-size 20000
    python -m llama_np.train_tokenizer --out zh.model --vocab-size 8000 --corpus my_text.txt

Without `--corpus` it learns from the training part of llama_np's Chinese corpus
(`llama_np.chinese.corpus`: cmrc2018 Wikipedia paragraphs and Song ci, held-out documents excluded),
so that evaluation on the held-out part stays fair. A corpus file is UTF-8 text, one
document (sentence, paragraph) per line.
"""
import argparse

from llama_np.cli import common as cli


def parse_args(argv=None):
    from llama_np.chinese.vocab_sentencepiece import DEFAULT_CHARACTER_COVERAGE, DEFAULT_MODEL_TYPE

    parser = argparse.ArgumentParser(
        prog="python -m llama_np.train_tokenizer",
        description="Train a SentencePiece model (the sentencepiece trainer) on Chinese text.")
    required = cli.required_group(parser)
    required.add_argument("--out", required=True, metavar="MODEL.model", help="where to write the trained model")
    required.add_argument("--vocab-size", type=cli.positive_int, required=True,
                          help="number of pieces to learn (the paper: 20000)")
    parser.add_argument("--corpus", action="append", metavar="FILE",
                        help="UTF-8 text, one document per line (repeatable); default: the training "
                             "part of llama_np's Chinese corpus (cmrc2018 + Song ci)")
    parser.add_argument("--model-type", choices=("unigram", "bpe"), default=DEFAULT_MODEL_TYPE,
                        help="SentencePiece algorithm (default: %(default)s, as chinese_sp.model)")
    parser.add_argument("--character-coverage", type=cli.unit_float, default=DEFAULT_CHARACTER_COVERAGE,
                        help="share of the corpus's characters that must be pieces; the rarest "
                             "others are left out (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from llama_np.chinese import corpus
    from llama_np.chinese.vocab_sentencepiece import train_model, write_model

    if args.corpus:
        documents = corpus.read_text_files(args.corpus)
        where = ", ".join(args.corpus)
    else:
        documents = corpus.chinese_documents("train")
        where = "llama_np's Chinese corpus (training part)"
    model = train_model(documents, args.vocab_size, model_type=args.model_type,
                        character_coverage=args.character_coverage)
    write_model(model, args.out)
    print(f"trained on {len(documents)} documents ({sum(map(len, documents))} characters) of {where}")
    print(f"wrote {args.out}: {len(model.pieces)} pieces ({args.model_type})")


if __name__ == "__main__":
    cli.run(main)
