"""A multi-turn conversation over one KV cache: each turn, the whole conversation is rendered
with the chat template and tokenized, and the tokens the cache already holds are reused, so
only the new ones are computed; when the context would overflow, the oldest turns go."""
import sys

from llama_np.llama.generation import generate_text
from llama_np.tokenizer.templates import render_chat, resolve_template, stop_strings_for


def common_prefix_length(a, b):
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def chat_prompt_ids(tokenizer, template, messages):
    """The token ids of `messages` rendered with `template`, ending with the opening of the
    assistant's reply (what the chat tool and the server's chat endpoint both prompt with)."""
    tok = tokenizer
    text = render_chat(messages, template,
                       bos_token=tok.special_token_text(tok.bos_id) if tok.bos_id is not None else "",
                       eos_token=tok.special_token_text(tok.eos_id) if tok.eos_id is not None else "")
    bos_text = tok.special_token_text(tok.bos_id) if tok.bos_id is not None else None
    # a template that writes the BOS token itself must not get a second one
    add_bos = False if bos_text and text.startswith(bos_text) else None
    return tok.encode(text, add_bos=add_bos)


class Conversation:
    """The messages so far, and the token ids the KV cache holds for them."""

    def __init__(self, model, tokenizer, template, system, ctx, max_new_tokens):
        self.model, self.tokenizer = model, tokenizer
        self.template = resolve_template(template, tokenizer)
        self.stop_strings = stop_strings_for(self.template)
        self.system = system
        self.ctx = min(ctx, model.config.max_context)
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
        return chat_prompt_ids(self.tokenizer, self.template, self.messages(user))

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
