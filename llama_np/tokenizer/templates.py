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

A model's own template that is one of these formats is rendered by the same code rather
than by Jinja (as llama.cpp recognizes the templates it knows): SmolLM and SmolLM2's,
ChatML that puts a default system message first when the conversation has none, is
recognized by its exact source (`_chatml_default_system`) and spares the start-up the
import of jinja2 and a compile. The tests hold it to jinja2's rendering of the same source.

Any other template is Jinja source, as Hugging Face tokenizers and GGUF files carry it
(`chat_template`). It is rendered the way transformers' `apply_chat_template` does:
jinja2's sandbox (no access to Python internals — here an error rather than an empty
string — and no mutating the messages), `trim_blocks`
and `lstrip_blocks`, a `raise_exception(message)` function, a `tojson` filter that keeps
non-ASCII text, and the variables `messages`, `bos_token`, `eos_token`,
`add_generation_prompt`. Since a template comes with a downloaded model it is untrusted
code: its work is bounded (MAX_RENDER_SECONDS to compile and render, at most MAX_OUTPUT_CHARS
more than its messages hold, no value larger than MAX_VALUE_SIZE made by `*`, `**`, `%`, `+`
or passed to a call or filter), and every failure becomes one ValueError line naming the
template (`TemplateSource.name`).
"""
import functools
import json
import math
import os
import re
import sys
import time

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


# Bounds on an untrusted template's work. A chat prompt is a few kilobytes rendered in
# milliseconds; these are a thousand times that, and stop a template that would run for
# hours or fill the memory (two nested range(100000) loops, 'a' * 10**10).
MAX_RENDER_SECONDS = 2.0
MAX_OUTPUT_CHARS = 1 << 22       # beyond what the messages themselves bring
MAX_VALUE_SIZE = 1 << 22         # the largest string, list or number (in digits) a template makes


class TemplateError(ValueError):
    """A chat template that cannot be read, does not compile, fails or goes past its bounds."""


class TemplateSource(str):
    """Jinja source that remembers where it came from (`name`, for error messages): the
    model's own template, a .jinja file or --template text. It is the source string itself
    wherever a string is expected."""

    def __new__(cls, source, name):
        self = super().__new__(cls, source)
        self.name = name
        return self


class _TemplateLimit(Exception):
    """A template went past one of the bounds above."""


def render_chat(messages, template, *, bos_token="", eos_token="", add_generation_prompt=True):
    """The prompt string for `messages` in `template` ("alpaca", "chatml" or Jinja source).

    `bos_token` / `eos_token` are the texts of the model's special tokens, given to Jinja
    templates that write them; the built-in formats do not use them (a model that wants BOS
    gets it from `Tokenizer.encode`). A Jinja template that fails or goes past its bounds
    raises ValueError: one line, starting with the template's name.
    """
    _check_messages(messages)
    if template == "alpaca":
        return _render_alpaca(messages, add_generation_prompt)
    if template == "chatml":
        return _render_chatml(messages, add_generation_prompt)
    default_system = _chatml_default_system(str(template))
    if default_system is not None:
        return _render_chatml(messages, add_generation_prompt, default_system)
    import jinja2

    name = getattr(template, "name", "chat template")
    budget = MAX_OUTPUT_CHARS + 4 * sum(len(m["content"]) for m in messages)
    try:
        with _deadline(MAX_RENDER_SECONDS):
            pieces, size = [], 0
            for piece in _compile_jinja(str(template)).generate(
                    messages=messages, bos_token=bos_token, eos_token=eos_token,
                    add_generation_prompt=add_generation_prompt):
                size += len(piece)
                if size > budget:
                    raise _TemplateLimit(f"its output passed {budget:,} characters")
                pieces.append(piece)
        return "".join(pieces)
    except _TemplateLimit as e:
        raise TemplateError(f"{name}: stopped, {e}") from None
    except jinja2.exceptions.SecurityError as e:
        raise TemplateError(f"{name}: tried something its sandbox forbids: {_one_line(e)}") from None
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise TemplateError(f"{name}: syntax error on line {e.lineno}: {_one_line(e.message)}") from None
    except (Exception, RecursionError) as e:  # whatever a hostile template makes Python raise
        raise TemplateError(f"{name}: failed: {type(e).__name__}: {_one_line(e)}") from None


def _one_line(error):
    return " ".join(str(error).split())[:500]


def resolve_template(name, tokenizer=None):
    """What `render_chat` should use for a --template choice:

    None      → the model's own template if it has one, else "chatml";
    "model"   → the model's own template (ValueError if it has none);
    "alpaca", "chatml" → that built-in;
    a path to a .jinja file → its contents;
    Jinja source (containing "{{" or "{%") → itself.
    """
    own = getattr(tokenizer, "chat_template", None)
    source = getattr(tokenizer, "source", None) or "the model"
    if own:
        own = TemplateSource(own, f"the chat template of {source}")
    if name is None:
        return own or "chatml"
    if name == "model":
        if not own:
            raise TemplateError(f"{source} has no chat template of its own; choose 'chatml' or 'alpaca'")
        return own
    if name in BUILTIN_TEMPLATES:
        return name
    if name.endswith(".jinja") or os.path.isfile(name):
        try:
            with open(name, encoding="utf-8") as f:
                return TemplateSource(f.read(), name)
        except (OSError, UnicodeDecodeError) as e:
            raise TemplateError(f"{name}: cannot read the chat template ({e})") from None
    if "{{" in name or "{%" in name:
        return TemplateSource(name, "the --template text")
    raise TemplateError(f"unknown chat template {name!r}: use 'model', 'chatml', 'alpaca' or a .jinja file")


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
            raise TemplateError(f"the alpaca template has no place for a {role!r} message")
    if add_generation_prompt:
        prompt += ALPACA_RESPONSE.format("")
    return prompt


def _render_chatml(messages, add_generation_prompt, default_system=None):
    """ChatML; with `default_system`, that system message first unless the conversation
    begins with its own (an empty conversation gets none, as the Jinja loop writes it)."""
    if default_system is not None and messages and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": default_system}] + list(messages)
    prompt = "".join(CHATML_MESSAGE.format(m["role"], m["content"]) for m in messages)
    return prompt + (CHATML_GENERATION_PROMPT if add_generation_prompt else "")


# SmolLM / SmolLM2's chat template, with its default system message as a group: any text
# without a quote, backslash or brace, which a Jinja string literal then writes verbatim.
_CHATML_DEFAULT_SYSTEM_SOURCE = re.compile(
    re.escape("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
              "{{ '<|im_start|>system\n")
    + r"([^'\\{}]*)"
    + re.escape("<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
                "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"))


def _chatml_default_system(source):
    """The default system message if `source` is exactly SmolLM's ChatML template, else None."""
    match = _CHATML_DEFAULT_SYSTEM_SOURCE.fullmatch(source)
    return match.group(1) if match else None


def _check_messages(messages):
    if not isinstance(messages, (list, tuple)):
        raise TemplateError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, "
                         f"got {type(messages).__name__}")
    for k, message in enumerate(messages):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise TemplateError(f"message {k} must be a dict with string 'role' and 'content', got {message!r}")


# ----- Jinja -----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _compile_jinja(source):
    """Compile a Jinja chat template in a sandbox set up like transformers'."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    if not isinstance(source, str):
        raise TemplateError(f"a chat template must be a string, got {type(source).__name__}")
    class StrictSandbox(ImmutableSandboxedEnvironment):
        """jinja2's sandbox answers `''.__class__` with an undefined value that prints as
        nothing; a template reaching for Python internals is hostile, so refuse at once."""

        def unsafe_undefined(self, obj, attribute):
            raise jinja2.exceptions.SecurityError(
                f"access to attribute {attribute!r} of a {type(obj).__name__} is not allowed")

        # `*`, `**`, `%` and `+` go through call_binop, which checks their result's size first
        intercepted_binops = frozenset(["*", "**", "%", "+"])

        def call_binop(self, context, operator, left, right):
            _check_binop(operator, left, right)
            return super().call_binop(context, operator, left, right)

        def call(self, context, obj, *args, **kwargs):
            _check_arguments(obj, args, kwargs)
            return super().call(context, obj, *args, **kwargs)

    env = StrictSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.filters = {name: _bounded_filter(f) for name, f in env.filters.items()}
    env.globals["raise_exception"] = _raise_exception
    return env.from_string(source)


def _size(value):
    """How big a value is for the bounds: a string's or list's length, a number's digits."""
    if isinstance(value, (str, list, tuple, dict)):
        return len(value)
    if isinstance(value, int):
        return len(str(abs(value))) if abs(value) < 10**100 else value.bit_length() * 0.3
    return 0


def _check_binop(operator, left, right):
    too_big = False
    if operator == "*" and isinstance(left, int) != isinstance(right, int):
        count, sequence = (left, right) if isinstance(left, int) else (right, left)
        too_big = _size(sequence) * max(count, 0) > MAX_VALUE_SIZE
    elif operator == "*" and isinstance(left, int) and isinstance(right, int):
        too_big = _size(left) + _size(right) > MAX_VALUE_SIZE
    elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
        too_big = right > 0 and right * math.log10(abs(left)) > MAX_VALUE_SIZE
    elif operator == "%" and isinstance(left, str):
        values = right if isinstance(right, (tuple, list)) else [right]
        too_big = (any(isinstance(v, int) and abs(v) > MAX_VALUE_SIZE for v in values)
                   or bool(_LARGE_FORMAT_NUMBER.search(left)))
    elif operator == "+":
        too_big = _size(left) + _size(right) > MAX_VALUE_SIZE
    if too_big:
        raise _TemplateLimit(f"{operator!r} would make a value larger than {MAX_VALUE_SIZE:,}")


# a width or precision of 8 digits or more in a format string: "{:>100000000}", "%100000000s"
_LARGE_FORMAT_NUMBER = re.compile(r"\{[^{}]*:[^{}]*\d{8}|%[^a-zA-Z%]*\d{8}")


def _check_arguments(obj, args, kwargs):
    """A call that asks for more than MAX_VALUE_SIZE: 'a'.ljust(10**10), center, zfill, …"""
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and abs(value) > MAX_VALUE_SIZE:
            raise _TemplateLimit(f"a call with the argument {value} (more than {MAX_VALUE_SIZE:,})")
    method = getattr(obj, "__wrapped__", obj)  # the sandbox wraps str.format in a function
    if isinstance(getattr(method, "__self__", None), str) and _LARGE_FORMAT_NUMBER.search(method.__self__):
        raise _TemplateLimit("a format string with a width or precision of 8 digits or more")


def _bounded_filter(filter_function):
    @functools.wraps(filter_function)
    def bounded(*args, **kwargs):
        _check_arguments(None, args, kwargs)
        if filter_function.__name__ == "do_format" and any(
                isinstance(a, str) and _LARGE_FORMAT_NUMBER.search(a) for a in args):
            raise _TemplateLimit("a format string with a width or precision of 8 digits or more")
        return filter_function(*args, **kwargs)
    return bounded


class _deadline:
    """Stop the template code running in this thread after `seconds`: a trace function looks
    at the clock on every call, and on every line of the compiled template (whose loops
    may call nothing), and raises _TemplateLimit into it once the time is up."""

    def __init__(self, seconds):
        self.seconds = seconds

    def __enter__(self):
        self.end = time.monotonic() + self.seconds
        self.previous = sys.gettrace()
        sys.settrace(self._on_call)
        return self

    def __exit__(self, *exc):
        sys.settrace(self.previous)

    def _check(self):
        if time.monotonic() > self.end:
            raise _TemplateLimit(f"it ran longer than {self.seconds:g} s")

    def _on_call(self, frame, event, arg):
        self._check()
        return self._on_line if frame.f_code.co_filename == "<template>" else None

    def _on_line(self, frame, event, arg):
        if event == "line":
            self._check()
        return self._on_line


def _raise_exception(message):
    """Templates call this to refuse a conversation, e.g. roles out of order."""
    import jinja2
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson escapes <, >, & and ' for HTML; a prompt wants the plain JSON
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
