"""`python -m llama_np.merge_tokenizer BASE.model ADDED.model --out MERGED.model`: append to
a SentencePiece model the pieces of another that it lacks, as Chinese-LLaMA does.

    python -m llama_np.merge_tokenizer tokenizer.model chinese_sp.model --out merged.model

With LLaMA's tokenizer (32,000 pieces) and the paper's chinese_sp.model (20,000 pieces,
2,047 of them already in LLaMA's) this writes the 49,953-piece Chinese-LLaMA tokenizer.
The merge itself is `llama_np.chinese.vocab_sentencepiece.merge_models`; a Chinese model to merge
in can be trained with `python -m llama_np.train_tokenizer`.
"""
import argparse

from llama_np.cli import common as cli


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m llama_np.merge_tokenizer",
        description="Append to a SentencePiece model (BASE) every piece of another (ADDED) that BASE "
                    "lacks, with score 0, keeping BASE's pieces, ids, scores and settings.")
    parser.add_argument("base", metavar="BASE.model", help="the SentencePiece model to extend (e.g. LLaMA's)")
    parser.add_argument("added", metavar="ADDED.model", help="the SentencePiece model whose pieces to add")
    cli.required_group(parser).add_argument("--out", required=True, metavar="MERGED.model",
                                            help="where to write the merged model")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from llama_np.chinese.vocab_sentencepiece import merge_models, read_model, write_model

    base, added = read_model(args.base), read_model(args.added)
    merged = merge_models(base, added)
    write_model(merged, args.out)
    n_new = len(merged.pieces) - len(base.pieces)
    print(f"{args.base}: {len(base.pieces)} pieces; {args.added}: {len(added.pieces)} pieces, "
          f"{n_new} of them new")
    print(f"wrote {args.out}: {len(merged.pieces)} pieces")


if __name__ == "__main__":
    cli.run(main)
