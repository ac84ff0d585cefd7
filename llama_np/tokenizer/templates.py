"""Chat templates: how a conversation becomes the one prompt string a model continues.

A chat model was fine-tuned on conversations written in a fixed format, and answers well
only when prompted in that same format. A conversation is a list of messages,
`{"role": "system" | "user" | "assistant", "content": str}`; the template writes them out
and, with `add_generation_prompt`, ends with the opening of an assistant turn, so that the
model's continuation is the reply.

Two formats are built in:

- "alpaca": Chinese-Alpaca's instruction format (Cui, Yang & Yao 2023; the prompt of
  `scripts/inference/inference_hf.py` in ymcui/Chinese-LLaMA-Alpaca). One turn is exactly

      Below is an instruction that describes a task. Write a response that appropriately
      completes the request.\\n\\n### Instruction:\\n\\n{instruction}\\n\\n### Response:\\n\\n

  (the preamble is one line). The model was tuned on single turns. For several turns we
  follow the repository's chat server (`scripts/openai_server_demo/openai_api_server.py`,
  `generate_chat_prompt`): a system message *replaces* the preamble sentence, and the turns
  follow it in order, each user message as an "### Instruction:" block and each assistant
  message as a "### Response:" block, with the inference prompt's blank-line spacing. A
  reply ends where the model starts a new "### Instruction:".

- "chatml": OpenAI's ChatML, used by SmolLM, Qwen and others:
  `<|im_start|>{role}\\n{content}<|im_end|>\\n` per message, and `<|im_start|>assistant\\n`
  to prompt a reply, which ends with `<|im_end|>`.

Any other template is Jinja source, as Hugging Face tokenizers and GGUF files carry it
(`chat_template`). It is rendered the way transformers' `apply_chat_template` does:
jinja2's sandbox (no access to Python internals — here an error rather than an empty
string — and no mutating the messages), `trim_blocks`
and `lstrip_blocks`, a `raise_exception(message)` function, a `tojson` filter that keeps
non-ASCII text, and the variables `messages`, `bos_token`, `eos_token`,
`add_generation_prompt`. Since a template comes with a downloaded model it is untrusted
code; every failure becomes a ValueError.
"""
import functools
import json
import os

BUILTIN_TEMPLATES = ("alpaca", "chatml")

ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")
ALPACA_INSTRUCTION = "### Instruction:\n\n{}\n\n"
ALPACA_RESPONSE = "### Response:\n\n{}"  # an earlier reply is followed by "\n\n"

CHATML_MESSAGE = "<|im_start|>{}\n{}<|im_end|>\n"
CHATML_GENERATION_PROMPT = "<|im_start|>assistant\n"

# Text that ends an assistant turn in each built-in format, so generation stops there.
BUILTIN_STOP_STRINGS = {"alpaca": ["### Instruction:"], "chatml": ["<|im_end|>"]}
# End-of-turn markers of common model templates. A model usually emits its marker as one
# special token, its EOS; looking for the text as well catches it spelled out.
KNOWN_TURN_ENDS = ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>"]


def render_chat(messages, template, *, bos_token="", eos_token="", add_generation_prompt=True):
    """The prompt string for `messages` in `template` ("alpaca", "chatml" or Jinja source).

    `bos_token` / `eos_token` are the texts of the model's special tokens, given to Jinja
    templates that write them; the built-in formats do not use them (a model that wants BOS
    gets it from `Tokenizer.encode`).
    """
    _check_messages(messages)
    if template == "alpaca":
        return _render_alpaca(messages, add_generation_prompt)
    if template == "chatml":
        return _render_chatml(messages, add_generation_prompt)
    import jinja2

    compiled = _compile_jinja(template)
    try:
        return compiled.render(messages=messages, bos_token=bos_token, eos_token=eos_token,
                               add_generation_prompt=add_generation_prompt)
    except jinja2.exceptions.SecurityError as e:
        raise ValueError(f"chat template tried something its sandbox forbids: {e}") from None
    except (jinja2.exceptions.TemplateError, TypeError, ValueError, LookupError, AttributeError) as e:
        raise ValueError(f"chat template failed: {type(e).__name__}: {e}") from None


def resolve_template(name, tokenizer=None):
    """What `render_chat` should use for a --template choice:

    None      → the model's own template if it has one, else "chatml";
    "model"   → the model's own template (ValueError if it has none);
    "alpaca", "chatml" → that built-in;
    a path to a .jinja file → its contents;
    Jinja source (containing "{{" or "{%") → itself.
    """
    own = getattr(tokenizer, "chat_template", None)
    if name is None:
        return own or "chatml"
    if name == "model":
        if not own:
            source = getattr(tokenizer, "source", "the model")
            raise ValueError(f"{source} has no chat template of its own; choose 'chatml' or 'alpaca'")
        return own
    if name in BUILTIN_TEMPLATES:
        return name
    if name.endswith(".jinja") or os.path.isfile(name):
        try:
            with open(name, encoding="utf-8") as f:
                return f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{name}: cannot read the chat template ({e})") from None
    if "{{" in name or "{%" in name:
        return name
    raise ValueError(f"unknown chat template {name!r}: use 'model', 'chatml', 'alpaca' or a .jinja file")


def stop_strings_for(template):
    """Strings that end an assistant reply in `template` (a built-in name or Jinja source):
    the built-in's marker, or the known end-of-turn markers the Jinja source writes."""
    if template in BUILTIN_STOP_STRINGS:
        return list(BUILTIN_STOP_STRINGS[template])
    return [marker for marker in KNOWN_TURN_ENDS if marker in template]


# ----- the built-in formats ------------------------------------------------------------------

def _render_alpaca(messages, add_generation_prompt):
    preamble = ALPACA_PREAMBLE
    for message in messages:
        if message["role"] == "system":  # the last system message wins, as in the chat server
            preamble = message["content"]
    prompt = preamble + "\n\n"
    for message in messages:
        role, content = message["role"], message["content"]
        if role == "user":
            prompt += ALPACA_INSTRUCTION.format(content)
        elif role == "assistant":
            prompt += ALPACA_RESPONSE.format(content) + "\n\n"
        elif role != "system":
            raise ValueError(f"the alpaca template has no place for a {role!r} message")
    if add_generation_prompt:
        prompt += ALPACA_RESPONSE.format("")
    return prompt


def _render_chatml(messages, add_generation_prompt):
    prompt = "".join(CHATML_MESSAGE.format(m["role"], m["content"]) for m in messages)
    return prompt + (CHATML_GENERATION_PROMPT if add_generation_prompt else "")


def _check_messages(messages):
    if not isinstance(messages, (list, tuple)):
        raise ValueError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, "
                         f"got {type(messages).__name__}")
    for k, message in enumerate(messages):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise ValueError(f"message {k} must be a dict with string 'role' and 'content', got {message!r}")


# ----- Jinja -----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _compile_jinja(source):
    """Compile a Jinja chat template in a sandbox set up like transformers'."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    if not isinstance(source, str):
        raise ValueError(f"a chat template must be a string, got {type(source).__name__}")
    class StrictSandbox(ImmutableSandboxedEnvironment):
        """jinja2's sandbox answers `''.__class__` with an undefined value that prints as
        nothing; a template reaching for Python internals is hostile, so refuse at once."""

        def unsafe_undefined(self, obj, attribute):
            raise jinja2.exceptions.SecurityError(
                f"access to attribute {attribute!r} of a {type(obj).__name__} is not allowed")

    env = StrictSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ValueError(f"chat template has a syntax error on line {e.lineno}: {e.message}") from None


def _raise_exception(message):
    """Templates call this to refuse a conversation, e.g. roles out of order."""
    import jinja2
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson escapes <, >, & and ' for HTML; a prompt wants the plain JSON
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
