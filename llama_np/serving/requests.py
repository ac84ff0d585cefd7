"""OpenAI request bodies, checked: JSON → `CompletionRequest`, or a `RequestError` that the web
side answers with HTTP 400 and OpenAI's error body

    {"error": {"message": "...", "type": "invalid_request_error", "param": "temperature", "code": null}}

Every field a client may send is checked for its type and range here, before anything is
tokenized or queued; fields this server does not implement are refused by name when they
would change the answer (`n` > 1, `logprobs`, `tools`, `echo`, …) and ignored otherwise
(`user`, `model`). Unset sampling fields take the server's defaults (the paper's settings).
Nothing in a request names a file: `model` is only echoed back.
"""
import json
import math
from dataclasses import dataclass

MAX_BODY_BYTES = 1 << 20               # a request body larger than this is refused (413)
MAX_STOP_STRINGS = 16
ROLES = ("system", "user", "assistant")
# Fields that would change what is returned and that this server does not do.
UNSUPPORTED = {"logprobs": (None, False), "top_logprobs": (None, 0), "tools": (None, []),
               "tool_choice": (None, "none", "auto"), "functions": (None, []), "echo": (None, False),
               "best_of": (None, 1), "suffix": (None, ""), "logit_bias": (None, {}),
               "response_format": (None, {"type": "text"})}


class RequestError(ValueError):
    """A request the server refuses: HTTP `status` with OpenAI's error body."""

    def __init__(self, message, param=None, code=None, status=400, kind="invalid_request_error"):
        super().__init__(message)
        self.param, self.code, self.status, self.kind = param, code, status, kind

    def body(self):
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Defaults:
    """The server's sampling settings for fields a request leaves out."""
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    max_tokens: int
    seed: int | None = None


@dataclass
class CompletionRequest:
    messages: list | None                 # chat: [{"role", "content"}], content a str
    prompt: str | None                    # raw completion
    stream: bool
    include_usage: bool
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    frequency_penalty: float
    presence_penalty: float
    max_tokens: int
    stop: list
    seed: int | None
    model: str | None


def parse_body(raw):
    """The request body bytes as a JSON object (a dict), or RequestError."""
    if len(raw) > MAX_BODY_BYTES:
        raise RequestError(f"the request body has {len(raw)} bytes; at most {MAX_BODY_BYTES} are accepted",
                           status=413)
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise RequestError("the request body is not UTF-8 text") from None
    except (ValueError, RecursionError) as e:
        raise RequestError(f"the request body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def parse_chat(body, defaults: Defaults):
    messages = body.get("messages")
    if "messages" not in body:
        raise RequestError("'messages' is required", "messages", "missing_required_parameter")
    if not isinstance(messages, list):
        raise RequestError(f"'messages' must be a list of messages, got {_kind(messages)}", "messages")
    if not messages:
        raise RequestError("'messages' must hold at least one message", "messages")
    checked = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RequestError(f"{where} must be an object with 'role' and 'content'", where)
        role = message.get("role")
        if role not in ROLES:
            raise RequestError(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}", f"{where}.role")
        checked.append({"role": role, "content": _content(message.get("content"), f"{where}.content")})
    return _common(body, defaults, messages=checked, prompt=None)


def parse_completion(body, defaults: Defaults):
    if "prompt" not in body:
        raise RequestError("'prompt' is required", "prompt", "missing_required_parameter")
    prompt = body["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise RequestError(f"'prompt' must be a string, got {_kind(prompt)}", "prompt")
    return _common(body, defaults, messages=None, prompt=prompt)


def _common(body, defaults, *, messages, prompt):
    for name, allowed in UNSUPPORTED.items():
        if name in body and body[name] not in allowed:
            raise RequestError(f"'{name}' is not supported by this server", name, "unsupported_parameter")
    if _number(body, "n", int, 1, lo=1) != 1:
        raise RequestError("'n' must be 1: this server returns one choice per request", "n", "unsupported_parameter")
    stream = _bool(body, "stream", False)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object", "stream_options")
    include_usage = _bool(options or {}, "include_usage", False, where="stream_options.include_usage")
    max_tokens = body.get("max_completion_tokens", None)
    field = "max_completion_tokens" if max_tokens is not None else "max_tokens"
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError(f"'model' must be a string, got {_kind(model)}", "model")
    seed = _number(body, "seed", int, defaults.seed)
    return CompletionRequest(
        messages=messages, prompt=prompt, stream=stream, include_usage=include_usage,
        temperature=_number(body, "temperature", float, defaults.temperature, lo=0.0, hi=2.0),
        top_p=_number(body, "top_p", float, defaults.top_p, lo=0.0, hi=1.0, lo_open=True),
        top_k=_number(body, "top_k", int, defaults.top_k, lo=0),
        repetition_penalty=_number(body, "repetition_penalty", float, defaults.repetition_penalty,
                                   lo=0.0, hi=10.0, lo_open=True),
        frequency_penalty=_number(body, "frequency_penalty", float, 0.0, lo=-2.0, hi=2.0),
        presence_penalty=_number(body, "presence_penalty", float, 0.0, lo=-2.0, hi=2.0),
        max_tokens=_number(body, field, int, defaults.max_tokens, lo=1),
        stop=_stop(body.get("stop")),
        seed=None if seed is None else seed % 2 ** 64,    # numpy wants a non-negative seed
        model=model)


def _number(body, name, kind, default, lo=None, hi=None, lo_open=False, where=None):
    """body[name] as an int or float within [lo, hi] ((lo, hi] with lo_open); absent or null → default."""
    where = where or name
    value = body.get(name)
    if value is None:
        return default
    ok_type = isinstance(value, int) if kind is int else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        wanted = "an integer" if kind is int else "a number"
        raise RequestError(f"'{where}' must be {wanted}, got {_kind(value)} {_short(value)}", where)
    if kind is float and not math.isfinite(value):
        raise RequestError(f"'{where}' must be finite", where)
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    if too_low or (hi is not None and value > hi):
        bounds = f"{'(' if lo_open else '['}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise RequestError(f"'{where}' must be in {bounds}, got {value}", where)
    return kind(value)


def _bool(body, name, default, where=None):
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(f"'{where or name}' must be true or false, got {_kind(value)}", where or name)
    return value


def _stop(stop):
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise RequestError("'stop' must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise RequestError(f"'stop' may hold at most {MAX_STOP_STRINGS} strings", "stop")
    return [s for s in stops if s]


def _content(content, where):
    """A message's content: a string, or OpenAI's list of parts of which only text ones are taken."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise RequestError(f"{where}: only text parts ({{'type': 'text', 'text': ...}}) are supported",
                                   where)
            texts.append(part["text"])
        return "".join(texts)
    raise RequestError(f"{where} must be a string, got {_kind(content)}", where)


def _refuse_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _kind(value):
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null", int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _short(value):
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
