"""`python -m llama_np.generate --model PATH --prompt TEXT`: raw completion, no chat template.

The generated text streams to stdout (and only it, so it can be piped); load time and
speed go to stderr.
"""
import argparse
import sys

from llama_np.cli import common as cli


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m llama_np.generate",
        description="Continue a text with a LLaMA model (raw completion: no chat template).")
    cli.add_model_args(parser)
    cli.required_group(parser).add_argument("--prompt", required=True, help="the text to continue")
    cli.add_sampling_args(parser)
    args = parser.parse_args(argv)
    if not args.prompt:
        parser.error("--prompt is empty; give the text to continue")
    return args


def main(argv=None):
    args = parse_args(argv)
    cli.set_threads(args.threads)
    from llama_np.llama.generation import GenerationStats, generate_text
    from llama_np.llama.sampling import Sampler

    model, tokenizer = cli.load_for_inference(args)
    prompt_ids = tokenizer.encode(args.prompt)
    if len(prompt_ids) >= args.ctx:
        raise ValueError(f"the prompt has {len(prompt_ids)} tokens, the context only {args.ctx}")
    stats = GenerationStats()
    cache = model.new_cache(min(args.ctx, model.config.max_context))
    for text in generate_text(model, tokenizer, prompt_ids, Sampler(cli.sampling_settings(args)),
                              max_new_tokens=args.max_new_tokens, cache=cache, stats=stats):
        sys.stdout.write(text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    print(stats.summary(), file=sys.stderr)


if __name__ == "__main__":
    cli.run(main)
