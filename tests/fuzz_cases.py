"""The fuzz cases: seeded mutations of real files, each fed to the reader a tool would use.

    python tests/fuzz_cases.py TARGET SEED N FIXTURES WORK     # the worker test_fuzz.py runs

A worker runs N cases of one target in its own process, so that a crash (a signal) or a hang
is seen by the test from outside. Before each case it prints {"start": i}; after it, one line
{"case": i, "outcome": ..., "seconds": ...} where the outcome is

    valid     the reader accepted the file (and the model ran a token, the tokenizer
              encoded a string, the template rendered: whatever the tool does next)
    error     it refused the file with an exception of llama_np's own (a ValueError or
              OSError subclass defined in llama_np), its message one non-empty line
    foreign   anything else: another exception type, a traceback a user would see

Case i of a target is reproducible alone: its mutations come from random.Random(f"{seed}:{target}:{i}").
"""
import copy
import json
import math
import os
import random
import shutil
import struct
import sys
import time
import traceback

# ----- mutations of bytes ------------------------------------------------------------------

INTERESTING_INTS = [0, 1, 2, 3, 7, 8, 31, 32, 255, 256, 2**15, 2**16 - 1, 2**31 - 1, 2**31,
                    2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1, 10**9]


def mutate_bytes(data, rng, region=None):
    """A few random edits of `data` within `region` (start, end): flipped bits, random or
    boundary-value bytes and integers, deleted, repeated or inserted runs, a truncation."""
    data = bytearray(data)
    start, end = region or (0, len(data))
    end = min(end, len(data))
    for _ in range(rng.choice([1, 1, 2, 3, 8])):
        if end <= start:
            break
        pos = rng.randrange(start, end)
        kind = rng.randrange(7)
        if kind == 0:
            data[pos] ^= 1 << rng.randrange(8)
        elif kind == 1:
            data[pos] = rng.randrange(256)
        elif kind == 2:
            width = rng.choice([4, 8])
            value = rng.choice(INTERESTING_INTS) % (1 << (8 * width))
            data[pos:pos + width] = value.to_bytes(width, "little")
        elif kind == 3:
            del data[pos:pos + rng.randrange(1, 64)]
        elif kind == 4:
            run = data[pos:pos + rng.randrange(1, 64)]
            data[pos:pos] = run * rng.randrange(1, 4)
        elif kind == 5:
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
        else:
            return bytes(data[:pos])  # truncated
        end = min(end, len(data))
    return bytes(data)


# ----- mutations of JSON -------------------------------------------------------------------

_DEEP = "@@deep:"   # a placeholder json_text writes as that many nested lists


def _deep(depth):
    return f"{_DEEP}{depth}"


INTERESTING_VALUES = [None, True, False, 0, -1, 1, 2**31, 10**30, -10**30, 0.5, -0.0, 1e-300,
                      math.nan, math.inf, -math.inf, "", "x", "NaN", "\u0000", "é" * 3, [], {},
                      [1, 2, 3], {"a": 1}, ["q_proj", 7], "a" * 5000]


def _interesting(rng):
    return copy.deepcopy(rng.choice(INTERESTING_VALUES))  # a copy: the list must not change


def _paths(value, path=()):
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, path + (key,))
    elif isinstance(value, list):
        for k, item in enumerate(value[:50]):
            yield from _paths(item, path + (k,))


def mutate_json(value, rng):
    """The JSON value with a few edits at random places: a node replaced by a boundary or
    wrongly typed value, a key deleted or added, a list emptied or repeated."""
    value = json.loads(json.dumps(value))
    for _ in range(rng.choice([1, 1, 2, 3])):
        paths = list(_paths(value))
        path = rng.choice(paths)
        if not path:
            if rng.random() < 0.2:
                return rng.choice([[value], "x", 3, None, _deep(rng.choice([10, 100, 100000]))])
            continue
        parent = value
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        kind = rng.randrange(5)
        if kind == 0 and isinstance(parent, dict):
            del parent[key]
        elif kind == 1 and isinstance(parent, dict):
            parent[rng.choice(["extra", "r", "rope_scaling", "model_type", "peft_type"])] = _interesting(rng)
        elif kind == 2 and isinstance(parent[key], list):
            parent[key] = rng.choice([[], parent[key] * rng.randrange(2, 4), parent[key][:1]])
        elif kind == 3:
            parent[key] = _deep(rng.choice([3, 50, 100000]))
        else:
            parent[key] = _interesting(rng)
    return value


def json_text(value, rng):
    text = json.dumps(value, ensure_ascii=False)  # NaN and Infinity as Python writes them
    while _DEEP in text:  # '"@@deep:5000"' → [[[…]]], 5000 deep
        start = text.index('"' + _DEEP)
        end = text.index('"', start + 1)
        depth = int(text[start + 1 + len(_DEEP):end])
        text = text[:start] + "[" * depth + "]" * depth + text[end + 1:]
    return text if rng.random() < 0.85 else mutate_bytes(text.encode(), rng).decode("utf-8", "replace")


# ----- GGUF, taken apart and put back together -----------------------------------------------

_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class _Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def unpack(self, fmt):
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self):
        n = self.unpack("<Q")
        self.pos += n
        return self.data[self.pos - n:self.pos].decode("utf-8")

    def value(self, vtype):
        if vtype in _GGUF_SCALARS:
            return self.unpack(_GGUF_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        elem, count = self.unpack("<I"), self.unpack("<Q")
        return (elem, [self.value(elem) for _ in range(count)])


def parse_gguf(data):
    """(version, [(key, vtype, value)], [(name, dims, ggml_type, offset)], tensor data,
    header length) of a well-formed GGUF; an array value is (element type, items)."""
    r = _Reader(data)
    assert data[:4] == b"GGUF"
    r.pos = 4
    version, n_tensors, n_kv = r.unpack("<I"), r.unpack("<Q"), r.unpack("<Q")
    kvs = []
    for _ in range(n_kv):
        key = r.string()
        vtype = r.unpack("<I")
        kvs.append((key, vtype, r.value(vtype)))
    tensors = []
    for _ in range(n_tensors):
        name = r.string()
        dims = [r.unpack("<Q") for _ in range(r.unpack("<I"))]
        tensors.append((name, dims, r.unpack("<I"), r.unpack("<Q")))
    start = (r.pos + 31) // 32 * 32
    return version, kvs, tensors, data[start:], r.pos


def _pack_value(vtype, value):
    if vtype in _GGUF_SCALARS:
        fmt = _GGUF_SCALARS[vtype]
        if fmt in ("<f", "<d"):
            return struct.pack(fmt, float(value))
        if fmt == "<?":
            return struct.pack(fmt, bool(value))
        bits = 8 * struct.calcsize(fmt)
        return int(value % (1 << bits)).to_bytes(bits // 8, "little")  # wraps, as C would
    if vtype == _STRING:
        raw = value.encode("utf-8", "surrogatepass")
        return struct.pack("<Q", len(raw)) + raw
    elem, items = value
    return struct.pack("<IQ", elem, len(items)) + b"".join(_pack_value(elem, v) for v in items)


def write_gguf(version, kvs, tensors, tensor_data):
    out = bytearray(b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs)))
    for key, vtype, value in kvs:
        out += _pack_value(_STRING, key) + struct.pack("<I", vtype) + _pack_value(vtype, value)
    for name, dims, ggml_type, offset in tensors:
        out += _pack_value(_STRING, name) + struct.pack("<I", len(dims))
        out += b"".join(struct.pack("<Q", d % 2**64) for d in dims) + struct.pack("<IQ", ggml_type, offset % 2**64)
    out += b"\0" * (-len(out) % 32)
    return bytes(out + tensor_data)


GGUF_KEYS = ["llama.embedding_length", "llama.attention.head_count", "llama.attention.head_count_kv",
             "llama.block_count", "llama.feed_forward_length", "llama.rope.dimension_count",
             "llama.attention.layer_norm_rms_epsilon", "llama.rope.freq_base", "llama.context_length",
             "llama.vocab_size", "general.architecture", "general.alignment",
             "tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.scores",
             "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id",
             "tokenizer.ggml.eos_token_id", "tokenizer.chat_template"]


def _gguf_value(rng, vtype, value):
    """A replacement for one metadata value: a boundary value of its own type, or another type."""
    if rng.random() < 0.3:  # another type altogether
        return rng.choice([(4, rng.choice(INTERESTING_INTS) % 2**32), (6, rng.choice([0.0, -1.0, math.nan, math.inf, 1e-30])),
                           (_STRING, rng.choice(["", "x", "llama", "gpt2", "a" * 300])), (7, True),
                           (_ARRAY, (4, [0, 1, 2])), (_ARRAY, (_STRING, [])), (_ARRAY, (_ARRAY, [(4, [1])]))])
    if vtype in (6, 12):
        return vtype, rng.choice([0.0, -1.0, -1e-5, math.nan, math.inf, -math.inf, 1e-38, 1e38])
    if vtype in _GGUF_SCALARS:
        return vtype, rng.choice(INTERESTING_INTS + [-1])
    if vtype == _STRING:
        return vtype, rng.choice(["", "x", "llama", "{{ raise_exception('x') }}", "{% for i in range(99999) %}{% endfor %}"])
    elem, items = value
    choice = rng.randrange(4)
    if choice == 0:
        return vtype, (elem, [])
    if choice == 1:
        return vtype, (elem, items[: rng.randrange(len(items) + 1)])
    if choice == 2:
        return vtype, (elem, items + items[: rng.randrange(1, 20)])
    if items and elem in _GGUF_SCALARS:
        items = list(items)
        items[rng.randrange(len(items))] = rng.choice(INTERESTING_INTS + [-1]) if elem not in (6, 12) else math.nan
    return vtype, (elem, items)


def mutate_gguf_metadata(data, rng):
    version, kvs, tensors, tensor_data, _ = parse_gguf(data)
    kvs = list(kvs)
    for _ in range(rng.choice([1, 1, 2])):
        key = rng.choice(GGUF_KEYS)
        found = [k for k, (name, _, _) in enumerate(kvs) if name == key]
        kind = rng.randrange(4)
        if found and kind == 0:
            del kvs[found[0]]
        elif found and kind == 1:
            kvs.append(kvs[found[0]])            # the key twice
        elif found:
            _, vtype, value = kvs[found[0]]
            kvs[found[0]] = (key, *_gguf_value(rng, vtype, value))
        else:
            kvs.append((key, *_gguf_value(rng, 4, 0)))
    return write_gguf(version, kvs, tensors, tensor_data)


def mutate_gguf_tensors(data, rng):
    version, kvs, tensors, tensor_data, _ = parse_gguf(data)
    tensors = [list(t) for t in tensors]
    for _ in range(rng.choice([1, 1, 2])):
        k = rng.randrange(len(tensors))
        name, dims, ggml_type, offset = tensors[k]
        kind = rng.randrange(8)
        if kind == 0:
            tensors.append(list(tensors[k]))                                        # a name twice
        elif kind == 1:
            del tensors[k]
        elif kind == 2:
            tensors[k][1] = [rng.choice([0, 1, 2, 32, 33, 2**32, 2**62]) if rng.random() < 0.5 else d for d in dims]
        elif kind == 3:
            tensors[k][1] = dims + [rng.choice([1, 2, 0])] * rng.randrange(1, 5)    # more dimensions
        elif kind == 4:
            tensors[k][2] = rng.choice([0, 1, 2, 3, 6, 7, 8, 12, 14, 30, 99, 2**32 - 1])
        elif kind == 5:
            tensors[k][3] = rng.choice([0, 1, 31, 32, offset + 32, len(tensor_data), 2**63])
        elif kind == 6:
            tensors[k][0] = rng.choice(["", "blk.99.attn_q.weight", "blk.0.attn_q.weight", "output.weight", "x" * 200])
        else:
            tensors[k][1] = list(reversed(dims))
    return write_gguf(version, kvs, [tuple(t) for t in tensors], tensor_data)


# ----- safetensors ------------------------------------------------------------------------------

def split_safetensors(data):
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def join_safetensors(header, body, rng=None):
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def mutate_safetensors(data, rng):
    header, body = split_safetensors(data)
    if rng.random() < 0.25:  # raw bytes of the header (its length, its JSON)
        return mutate_bytes(data, rng, region=(0, 8 + int.from_bytes(data[:8], "little")))
    names = [n for n in header if n != "__metadata__"]
    for _ in range(rng.choice([1, 1, 2])):
        name = rng.choice(names)
        entry = header.get(name)
        kind = rng.randrange(6)
        if not isinstance(entry, dict):
            continue
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if kind == 0:
            entry["dtype"] = rng.choice(["F16", "BF16", "F64", "I64", "I8", "BOOL", "U8", "F8_E4M3", "Q4", ""])
        elif kind == 1 and isinstance(shape, list):
            entry["shape"] = rng.choice([[], [0], [1], shape[::-1], shape + [1], [2**40]])
        elif kind == 2 and isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int for n in offsets):
            begin, end = offsets
            entry["data_offsets"] = rng.choice([[begin, end - 2], [begin + 4, end], [end, begin], [0, end], [begin, 2**62]])
        elif kind == 3:
            del header[name]
        elif kind == 4:
            header[name.replace("layers.0", "layers.9")] = dict(entry)
        else:
            header[name] = mutate_json(entry, rng)
    return join_safetensors(header, body)


# ----- chat templates ---------------------------------------------------------------------------

TEMPLATES = [
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] | trim + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] | trim + ' ' + eos_token }}{% endif %}{% endfor %}",
]
SNIPPETS = [
    "{{ 'a' * 10**10 }}", "{{ 'ab' * 3000000 }}", "{{ [1] * 10**9 }}", "{{ 10 ** 10 ** 10 }}", "{{ 9 ** 99999999 }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
    "{{ range(10**9) | list }}", "{{ 'a' | center(10**10) }}", "{{ 'a'.ljust(10**9) }}", "{{ '%99999999999s' % 'a' }}",
    "{{ '{:>999999999}'.format(1) }}", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}", "{{ messages.__init__.__globals__ }}", "{{ cycler.__init__ }}",
    "{{ messages.append(1) }}", "{{ raise_exception('refused') }}", "{{ undefined_name.attr }}", "{{ 1 / 0 }}",
    "{{ messages[99] }}", "{{ messages | tojson }}", "{% set x = namespace(a=1) %}{{ x.a }}", "{% if %}", "{{",
    "{% for %}", "{% endfor %}", "{{ messages[0]['content'] | int }}", "{{ 'x' ~ 1 }}", "{% break %}",
    "{{ lipsum(10**9) }}", "{{ 'a' | wordwrap(10**10) }}", "{{ 'a' | truncate(10**12) }}", "{{ 'a' | indent(10**10) }}",
]


def mutate_template(rng):
    source = rng.choice(TEMPLATES)
    for _ in range(rng.choice([1, 1, 2])):
        pos = rng.randrange(len(source) + 1)
        kind = rng.randrange(4)
        if kind == 0:
            source = source[:pos] + rng.choice(SNIPPETS) + source[pos:]
        elif kind == 1:
            source = source[:pos] + source[pos + rng.randrange(1, 20):]
        elif kind == 2:
            source = source[:pos] + rng.choice("{}%#()[]'\"|~.") + source[pos:]
        else:
            source = rng.choice(SNIPPETS)
    return source


# ----- the targets: what is mutated, and what a tool does with it ----------------------------------

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"},
            {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Two plus two?"}]


def _run_model(model):
    logits = model.forward([1, 2, 3])
    assert logits.shape == (3, model.config.vocab_size)


def _load_and_run(path):
    from llama_np.checkpoint import load_model
    model, tokenizer = load_model(path)
    tokenizer.decode(tokenizer.encode("Hello world"))
    _run_model(model)


def case_gguf_header_bytes(fx, work, rng):
    data = open(os.path.join(fx, "model.gguf"), "rb").read()
    header_end = parse_gguf(data)[4]
    path = os.path.join(work, "model.gguf")
    open(path, "wb").write(mutate_bytes(data, rng, region=(0, header_end)))
    _load_and_run(path)


def case_gguf_metadata(fx, work, rng):
    path = os.path.join(work, "model.gguf")
    open(path, "wb").write(mutate_gguf_metadata(open(os.path.join(fx, "model.gguf"), "rb").read(), rng))
    _load_and_run(path)


def case_gguf_tensor_table(fx, work, rng):
    path = os.path.join(work, "model.gguf")
    open(path, "wb").write(mutate_gguf_tensors(open(os.path.join(fx, "model.gguf"), "rb").read(), rng))
    _load_and_run(path)


def _hf_copy(fx, work):
    folder = os.path.join(work, "hf")
    if os.path.exists(folder):
        shutil.rmtree(folder)
    shutil.copytree(os.path.join(fx, "hf"), folder)
    return folder


def case_config_json(fx, work, rng):
    folder = _hf_copy(fx, work)
    config = json.load(open(os.path.join(folder, "config.json")))
    open(os.path.join(folder, "config.json"), "w").write(json_text(mutate_json(config, rng), rng))
    _load_and_run(folder)


def case_safetensors_header(fx, work, rng):
    folder = _hf_copy(fx, work)
    path = os.path.join(folder, "model.safetensors")
    data = open(path, "rb").read()
    open(path, "wb").write(mutate_safetensors(data, rng))
    _load_and_run(folder)


def case_tokenizer_json(fx, work, rng):
    from llama_np.checkpoint import load_tokenizer
    folder = os.path.join(work, "tok")
    os.makedirs(folder, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        shutil.copyfile(os.path.join(fx, "hf", name), os.path.join(folder, name))
    value = json.load(open(os.path.join(folder, "tokenizer.json"), encoding="utf-8"))
    if rng.random() < 0.5:  # the vocabulary and merges are most of the file: aim there too
        model = value["model"]
        target = rng.choice(["vocab", "merges"])
        mutated = mutate_json({"x": model[target]}, rng)
        value["model"][target] = mutated.get("x", model[target]) if isinstance(mutated, dict) else mutated
    else:
        value = mutate_json(value, rng)
    open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8").write(json_text(value, rng))
    tokenizer = load_tokenizer(folder)
    tokenizer.decode(tokenizer.encode("Hello world, 你好"))


def case_sentencepiece(fx, work, rng):
    from llama_np.checkpoint import load_tokenizer
    from llama_np.chinese.vocab_sentencepiece import read_model
    path = os.path.join(work, "sp.model")
    open(path, "wb").write(mutate_bytes(open(os.path.join(fx, "sp.model"), "rb").read(), rng))
    if rng.random() < 0.5:
        read_model(path)                       # merge_tokenizer's reader
    tokenizer = load_tokenizer(path)           # tokenizer_stats' and the models' reader
    tokenizer.decode(tokenizer.encode("Hello world, 你好"))


def case_alpaca(fx, work, rng):
    from llama_np.checkpoint import load_tokenizer
    from llama_np.training.data import load_examples
    records = json.load(open(os.path.join(fx, "alpaca.json"), encoding="utf-8"))
    value = mutate_json(records, rng)
    if rng.random() < 0.5:
        path = os.path.join(work, "data.json")
        open(path, "w", encoding="utf-8").write(json_text(value, rng))
    else:
        path = os.path.join(work, "data.jsonl")
        lines = [json_text(r, rng) for r in value] if isinstance(value, list) else [json_text(value, rng)]
        open(path, "w", encoding="utf-8").write("\n".join(lines) + rng.choice(["\n", "", "\n\n{"]))
    load_examples(path, load_tokenizer(os.path.join(fx, "hf")), 64)


def _adapter_copy(fx, work):
    folder = os.path.join(work, "adapter")
    if os.path.exists(folder):
        shutil.rmtree(folder)
    shutil.copytree(os.path.join(fx, "adapter"), folder)
    return folder


_MODEL = {}


def _apply_and_run(fx, folder):
    from llama_np.checkpoint import load_model
    from llama_np.checkpoint.peft import apply_adapters
    if "model" not in _MODEL:
        _MODEL["model"] = load_model(os.path.join(fx, "hf"))[0]
    base = _MODEL["model"]
    model = copy.copy(base)   # apply_adapter replaces the model's dicts; the base stays as it was
    model.lora = {}
    apply_adapters(model, [folder])
    _run_model(model)


def case_adapter_config(fx, work, rng):
    folder = _adapter_copy(fx, work)
    path = os.path.join(folder, "adapter_config.json")
    config = json.load(open(path))
    open(path, "w").write(json_text(mutate_json(config, rng), rng))
    _apply_and_run(fx, folder)


def case_adapter_weights(fx, work, rng):
    folder = _adapter_copy(fx, work)
    path = os.path.join(folder, "adapter_model.safetensors")
    data = open(path, "rb").read()
    if rng.random() < 0.3:  # values: NaN and infinity among the weights
        header, body = split_safetensors(data)
        body = bytearray(body)
        pos = rng.randrange(0, len(body) - 4, 4)
        body[pos:pos + 4] = struct.pack("<f", rng.choice([math.nan, math.inf, -math.inf]))
        data = join_safetensors(header, bytes(body))
    else:
        data = mutate_safetensors(data, rng)
    open(path, "wb").write(data)
    _apply_and_run(fx, folder)


def case_chat_template(fx, work, rng):
    from llama_np.tokenizer.templates import render_chat, resolve_template
    path = os.path.join(work, "chat.jinja")
    open(path, "w", encoding="utf-8").write(mutate_template(rng))
    render_chat(MESSAGES, resolve_template(path), bos_token="<s>", eos_token="</s>")


TARGETS = {name[len("case_"):]: f for name, f in globals().items() if name.startswith("case_")}


# ----- the worker -------------------------------------------------------------------------------

def outcome_of(error):
    """'error' for a refusal a tool prints as one clean line, else 'foreign'."""
    if error is None:
        return "valid"
    own = type(error).__module__.startswith("llama_np.") and isinstance(error, (ValueError, OSError))
    message = str(error)
    return "error" if own and message.strip() and "\n" not in message else "foreign"


def worker(target, seed, n_cases, fixtures, work):
    from llama_np.tokenizer import templates
    templates.MAX_RENDER_SECONDS = 0.25  # the same deadline, shorter: a hostile case costs less
    case = TARGETS[target]
    for i in range(n_cases):
        print(json.dumps({"start": i}), flush=True)
        rng = random.Random(f"{seed}:{target}:{i}")
        case_dir = os.path.join(work, f"case{i}")
        os.makedirs(case_dir)
        started = time.monotonic()
        error = None
        try:
            case(fixtures, case_dir, rng)
        except Exception as e:  # noqa: BLE001 — classifying every exception is the point
            error = e
        result = {"case": i, "outcome": outcome_of(error), "seconds": round(time.monotonic() - started, 3)}
        if error is not None:
            result["error"] = f"{type(error).__module__}.{type(error).__name__}: {str(error)[:300]}"
        if result["outcome"] == "foreign":
            result["traceback"] = "".join(traceback.format_exception(error))[-3000:]
        else:
            shutil.rmtree(case_dir, ignore_errors=True)  # keep only what a failure needs
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    target, seed, n_cases, fixtures, work = sys.argv[1:6]
    worker(target, int(seed), int(n_cases), fixtures, work)
