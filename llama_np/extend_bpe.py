"""`python -m llama_np.extend_bpe --out DIR`: add Chinese tokens to a byte-level BPE
tokenizer (the default model's, or any GGUF "gpt2" vocabulary) by continuing its BPE
training on Chinese text (`llama_np.chinese.vocab_bpe`).

    python -m llama_np.extend_bpe --out smollm2-zh-tokenizer
    python -m llama_np.extend_bpe --model model.gguf --new-tokens 8000 --corpus zh.txt --out DIR

DIR receives the extended tokenizer twice over: `tokenizer.json` + `tokenizer_config.json`
(a Hugging Face tokenizer folder: llama_np, `tokenizers` and transformers load it) and
`tokenizer.gguf` (a vocabulary-only GGUF: llama_np and llama.cpp load it). Old tokens keep
their ids; the new ones follow. Without `--corpus` it learns from the training part of
llama_np's Chinese corpus (held-out documents excluded).
"""
import argparse

from llama_np.cli import common as cli


def parse_args(argv=None):
    from llama_np.chinese.vocab_bpe import DEFAULT_MIN_FREQUENCY, DEFAULT_NEW_TOKENS

    parser = argparse.ArgumentParser(
        prog="python -m llama_np.extend_bpe",
        description="Extend a byte-level BPE vocabulary with tokens learned from Chinese text.")
    parser.add_argument("--model", default="default",
                        help="a .gguf file whose tokenizer is byte-level BPE; 'default' = "
                             "SmolLM2-135M-Instruct (default: %(default)s)")
    cli.required_group(parser).add_argument("--out", required=True, metavar="DIR",
                                            help="folder to write the extended tokenizer to")
    parser.add_argument("--new-tokens", type=cli.positive_int, default=DEFAULT_NEW_TOKENS,
                        help="how many tokens to add, at most (default: %(default)s)")
    parser.add_argument("--min-frequency", type=cli.positive_int, default=DEFAULT_MIN_FREQUENCY,
                        help="stop when the most frequent pair occurs fewer times (default: %(default)s)")
    parser.add_argument("--corpus", action="append", metavar="FILE",
                        help="UTF-8 text, one document per line (repeatable); default: the training "
                             "part of llama_np's Chinese corpus (cmrc2018 + Song ci)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from llama_np.chinese import corpus
    from llama_np.chinese.vocab_bpe import extend_tokenizer, extension_summary
    from llama_np.files import hub

    if args.corpus:
        documents = corpus.read_text_files(args.corpus)
    else:
        documents = corpus.chinese_documents("train")
    extension, metadata = extend_tokenizer(hub.resolve_model(args.model), documents, args.out,
                                           args.new_tokens, args.min_frequency)
    print(extension_summary(extension, metadata, documents, args.out))


if __name__ == "__main__":
    cli.run(main)
