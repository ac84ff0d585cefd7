"""Writing a LLaMA as a GGUF file — the way back of `checkpoint/gguf.py`.

A GGUF file (layout in `gguf_file.py`) is a typed key/value header followed by the tensors.
For llama.cpp to run a LLaMA it needs three groups of keys:

    general.*     architecture "llama", file type (the main tensor type), quantization version
    llama.*       the hyper-parameters: context_length, embedding_length, block_count, …
    tokenizer.*   the whole vocabulary: tokenizer.ggml.model ("llama" = SentencePiece, "gpt2"
                  = byte-level BPE), tokens, token_type, scores or merges, special token ids,
                  add_bos_token, and tokenizer.chat_template

and the tensors under llama.cpp's names, with the rows of attn_q / attn_k permuted for its
interleaved-pair RoPE (`permute_qk`, docs/formats.md#qk-row-permutation). llama.cpp checks
every value's type (`llama.block_count` must be a u32, `tokenizer.ggml.token_type` an array
of i32, …), so every key here carries its type (`MetadataValue`).

`write_llama_gguf` streams: the header and the table of tensor infos (names, shapes, types)
go out first, then each tensor is converted and written one at a time, so only one
converted tensor exists in memory at once. The file is written under a temporary name and
renamed into place when complete (`atomic_path`). Writing itself is `gguf.GGUFWriter`'s.
"""
import json
import os
from dataclasses import dataclass

import numpy as np

from llama_np.files.text import read_bytes, read_json
from llama_np.tokenizer.sentencepiece_model import adds_dummy_prefix, parse_model_proto
from llama_np.checkpoint.gguf import gguf_name, permute_qk
from llama_np.llama import rope_scaling
from llama_np.llama.weights import expected_shapes
from llama_np.quant import BLOCK_BYTES, FORMATS, QuantizedMatrix, dequantize, quantize, tensor_nbytes
from llama_np.tokenizer.tokenizers import (TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_UNUSED,
                                TOKEN_USER_DEFINED, Tokenizer)

FLOAT_TYPES = {"F32": np.float32, "F16": np.float16}
TENSOR_TYPES = tuple(FLOAT_TYPES) + tuple(BLOCK_BYTES)   # what a tensor can be written as
# general.file_type: the main tensor type of the file (enum llama_ftype in llama.h)
QUANTIZATION_VERSION = 2  # ggml.h GGML_QNT_VERSION: the block layouts of docs/formats.md#block-formats
# the score convert_hf_to_gguf.py gives tokens that are not SentencePiece pieces ([PAD…], added)
NON_PIECE_SCORE = -1000.0


class GGUFWriteError(ValueError):
    """A model or tokenizer that cannot be written as a llama GGUF."""


# ----- typed metadata -------------------------------------------------------------------

@dataclass(frozen=True)
class MetadataValue:
    """A GGUF metadata value and its type: `kind` is a gguf.GGUFValueType name ("UINT32",
    "FLOAT32", "BOOL", "STRING", "ARRAY"); `element_kind` the element type of an ARRAY."""
    value: object
    kind: str
    element_kind: str | None = None


def u32(v):
    return MetadataValue(int(v), "UINT32")


def f32(v):
    return MetadataValue(float(v), "FLOAT32")


def string(v):
    return MetadataValue(str(v), "STRING")


def boolean(v):
    return MetadataValue(bool(v), "BOOL")


def array(values, element_kind):
    return MetadataValue(list(values), "ARRAY", element_kind)


def llama_metadata(config):
    """The `llama.*` hyper-parameters of `config`, as llama.cpp reads them (llama-arch.cpp),
    with its RoPE scaling (`llama.rope_scaling.gguf_metadata`)."""
    try:
        scaling = rope_scaling.gguf_metadata(config)
    except rope_scaling.RopeScalingError as e:
        raise GGUFWriteError(str(e)) from None
    typed = {str: string, int: u32, float: f32}
    return {
        "llama.vocab_size": u32(config.vocab_size),
        "llama.context_length": u32(config.max_position_embeddings),
        "llama.embedding_length": u32(config.hidden_size),
        "llama.block_count": u32(config.num_hidden_layers),
        "llama.feed_forward_length": u32(config.intermediate_size),
        "llama.attention.head_count": u32(config.num_attention_heads),
        "llama.attention.head_count_kv": u32(config.num_key_value_heads),
        "llama.rope.dimension_count": u32(config.head_dim),
        "llama.rope.freq_base": f32(config.rope_theta),
        "llama.attention.layer_norm_rms_epsilon": f32(config.rms_norm_eps),
        **{key: typed[type(value)](value) for key, value in scaling.items()},
    }


def metadata_from_gguf(path, skip=()):
    """Every metadata entry of the GGUF file at `path`, with the type it is stored as,
    except the keys in `skip` and the reader's own `GGUF.*` entries (version, counts)."""
    import gguf

    reader = gguf.GGUFReader(path)
    metadata = {}
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in skip:
            continue
        kinds = [t.name for t in field.types]
        element_kind = kinds[-1] if kinds[0] == "ARRAY" else None
        metadata[field.name] = MetadataValue(field.contents(), kinds[0], element_kind)
    return metadata


# ----- the tokenizer of a Hugging Face folder ---------------------------------------------

def tokenizer_metadata_from_hf_dir(folder, vocab_size):
    """The `tokenizer.*` entries for the tokenizer of a Hugging Face folder, padded to the
    model's `vocab_size` with unused "[PAD{id}]" tokens (as convert_hf_to_gguf.py does).

    `tokenizer.model` (SentencePiece, LLaMA and Chinese-LLaMA) becomes a "llama" vocabulary:
    pieces, scores and types, plus any tokens added beyond the pieces as control tokens.
    Otherwise `tokenizer.json` must hold a byte-level BPE (GPT-2, SmolLM), which becomes a
    "gpt2" vocabulary: tokens, merges, and the pre-tokenizer by llama.cpp's name for it.
    Special token ids, add_bos_token and the chat template are what llama_np's
    `Tokenizer.from_hf_dir` reads from the folder's side files.
    """
    tokenizer = Tokenizer.from_hf_dir(folder)  # raises naming the folder if it has no tokenizer
    model_path = os.path.join(folder, "tokenizer.model")
    if os.path.isfile(model_path):
        meta, unk_id = _sentencepiece_vocabulary(model_path, tokenizer)
    else:
        meta, unk_id = _byte_level_bpe_vocabulary(os.path.join(folder, "tokenizer.json"))

    tokens = meta["tokenizer.ggml.tokens"].value
    if len(tokens) > vocab_size:
        raise GGUFWriteError(f"{folder}: the tokenizer has {len(tokens)} tokens but the model only "
                             f"{vocab_size} embedding rows")
    padding = range(len(tokens), vocab_size)
    tokens.extend(f"[PAD{i}]" for i in padding)
    meta["tokenizer.ggml.token_type"].value.extend(TOKEN_UNUSED for _ in padding)
    if "tokenizer.ggml.scores" in meta:
        meta["tokenizer.ggml.scores"].value.extend(NON_PIECE_SCORE for _ in padding)

    for key, token_id in [("bos_token_id", tokenizer.bos_id), ("eos_token_id", tokenizer.eos_id),
                          ("unknown_token_id", unk_id), ("padding_token_id", tokenizer.pad_id)]:
        if token_id is not None:
            meta[f"tokenizer.ggml.{key}"] = u32(token_id)
    meta["tokenizer.ggml.add_bos_token"] = boolean(tokenizer.add_bos)
    meta["tokenizer.ggml.add_eos_token"] = boolean(False)
    if tokenizer.chat_template:
        meta["tokenizer.chat_template"] = string(tokenizer.chat_template)
    return meta


def _sentencepiece_vocabulary(path, tokenizer):
    """A SentencePiece model's pieces as a "llama" vocabulary; tokens the folder adds beyond
    the pieces (e.g. Chinese-Alpaca's "[PAD]" = 49953) follow as control tokens, as llama_np's
    SentencePiece tokenizer treats them. Returns (metadata, unknown token id)."""
    model = parse_model_proto(read_bytes(path, GGUFWriteError, "the SentencePiece model"))
    tokens = [p.text for p in model.pieces]
    scores = [p.score for p in model.pieces]
    types = [p.type for p in model.pieces]
    for token_id in range(len(tokens), tokenizer.vocab_size):
        tokens.append(tokenizer.id_to_piece(token_id))
        scores.append(NON_PIECE_SCORE)
        types.append(TOKEN_CONTROL)
    unk_id = types.index(TOKEN_UNKNOWN) if TOKEN_UNKNOWN in types else None
    return {
        "tokenizer.ggml.model": string("llama"),
        "tokenizer.ggml.tokens": array(tokens, "STRING"),
        "tokenizer.ggml.scores": array(scores, "FLOAT32"),
        "tokenizer.ggml.token_type": array(types, "INT32"),
        "tokenizer.ggml.add_space_prefix": boolean(adds_dummy_prefix(model.other_fields)),
    }, unk_id


# Pre-tokenizers of a tokenizer.json, as llama.cpp names them (llama-vocab.cpp): GPT-2's
# regex alone ("gpt-2"), or every digit split off first, then GPT-2's regex (StarCoder's,
# which SmolLM uses). llama.cpp's "smollm" is "starcoder" without the clean-up of spaces
# before punctuation when decoding — the clean_up_tokenization_spaces flag of transformers.
def _pre_tokenizer_name(pre_tokenizer, clean_up_spaces, source):
    steps = pre_tokenizer.get("pretokenizers", [pre_tokenizer]) if pre_tokenizer else []
    gpt2_regex = {"type": "ByteLevel", "use_regex": True}
    digits = {"type": "Digits", "individual_digits": True}
    kinds = [{key: step.get(key, True) for key in pattern}
             for step, pattern in zip(steps, [digits, gpt2_regex] if len(steps) == 2 else [gpt2_regex])]
    if kinds == [gpt2_regex]:
        return "gpt-2"
    if kinds == [digits, gpt2_regex]:
        return "starcoder" if clean_up_spaces else "smollm"
    raise GGUFWriteError(f"{source}: pre-tokenizer {json.dumps(pre_tokenizer)[:120]} is not one llama_np "
                         f"can name for llama.cpp (GPT-2's, or digits then GPT-2's); convert this model "
                         f"with llama.cpp's convert_hf_to_gguf.py")


def _byte_level_bpe_vocabulary(path):
    """A tokenizer.json byte-level BPE as a "gpt2" vocabulary: tokens by id (holes filled
    with unused "[PAD{id}]"), merges as "left right" strings, added special tokens as
    control tokens and other added tokens as user-defined. Returns (metadata, unknown id)."""
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
        model, decoder = spec["model"], spec.get("decoder") or {}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise GGUFWriteError(f"{path}: not a readable tokenizer.json ({e})") from None
    if model.get("type") != "BPE" or decoder.get("type") != "ByteLevel":
        raise GGUFWriteError(f"{path}: a {model.get('type')} model with a {decoder.get('type')} decoder is "
                             f"not a byte-level BPE; for a SentencePiece model put its tokenizer.model "
                             f"in the folder")
    ids = dict(model["vocab"])
    types = {}
    for added in spec.get("added_tokens", []):
        ids[added["content"]] = added["id"]
        types[added["id"]] = TOKEN_CONTROL if added.get("special") else TOKEN_USER_DEFINED
    tokens = [f"[PAD{i}]" for i in range(max(ids.values()) + 1)]
    token_types = [TOKEN_UNUSED] * len(tokens)
    for token, token_id in ids.items():
        tokens[token_id] = token
        token_types[token_id] = types.get(token_id, TOKEN_NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    config_path = os.path.join(os.path.dirname(path), "tokenizer_config.json")
    # transformers' default, when the config does not say, is True
    clean_up_spaces = read_json(config_path, GGUFWriteError, missing={}).get("clean_up_tokenization_spaces", True)
    unk_token = model.get("unk_token")
    return {
        "tokenizer.ggml.model": string("gpt2"),
        "tokenizer.ggml.pre": string(_pre_tokenizer_name(spec.get("pre_tokenizer"), clean_up_spaces, path)),
        "tokenizer.ggml.tokens": array(tokens, "STRING"),
        "tokenizer.ggml.token_type": array(token_types, "INT32"),
        "tokenizer.ggml.merges": array(merges, "STRING"),
        "tokenizer.ggml.add_space_prefix": boolean(False),
    }, ids.get(unk_token)


# ----- tensors --------------------------------------------------------------------------

def convert_tensor(weight, type_name):
    """`weight` (float array or QuantizedMatrix) as the data GGUF stores for `type_name`:
    float32/float16 values, or uint8 blocks [rows, row_bytes]. Blocks already of that type
    are copied as they are; other blocks are dequantized first (exact) and re-quantized."""
    if isinstance(weight, QuantizedMatrix):
        if weight.qtype == type_name:
            return np.ascontiguousarray(weight.data)
        weight = dequantize(weight.data, weight.qtype)                    # [rows, cols] float32
    if type_name in FLOAT_TYPES:
        return np.ascontiguousarray(weight, dtype=FLOAT_TYPES[type_name])
    return quantize(weight, type_name)                                    # [rows, row_bytes]


def _gguf_rows(hf_name, weight, config):
    """`weight` in the row order GGUF stores: attn_q / attn_k rows permuted per head."""
    if hf_name.endswith(("q_proj.weight", "k_proj.weight")):
        n_heads = config.num_attention_heads if "q_proj" in hf_name else config.num_key_value_heads
        if isinstance(weight, QuantizedMatrix):  # whole rows move, so the blocks are untouched
            return QuantizedMatrix(np.ascontiguousarray(permute_qk(weight.data, n_heads)),
                                   weight.qtype, weight.shape)
        return permute_qk(np.asarray(weight), n_heads)
    return weight


def write_llama_gguf(path, config, weights, tensor_types, metadata, progress=True):
    """Write a llama GGUF to `path`, atomically.

    config:        the LlamaConfig (its `llama.*` keys are written from it)
    weights:       Hugging Face name → float array or QuantizedMatrix, in HF row order
                   (tied models: no lm_head.weight)
    tensor_types:  Hugging Face name → "F32", "F16" or a block format ("Q4_0", "Q4_K", …)
    metadata:      key → MetadataValue: general.* and tokenizer.* entries (llama.* from
                   `config` and general.architecture are added, and override)
    progress:      show a tqdm bar on stderr, counting weights
    """
    import gguf

    from llama_np.files.atomic import atomic_path

    plan = []  # (hf name, gguf name, shape, type), in the order written
    for name, shape in expected_shapes(config).items():
        if tensor_types[name] not in TENSOR_TYPES:
            raise GGUFWriteError(f"{name}: cannot write type {tensor_types[name]!r}; one of {TENSOR_TYPES}")
        block_weights = FORMATS[tensor_types[name]].block_weights
        if shape[-1] % block_weights:
            raise GGUFWriteError(f"{name}: rows of {shape[-1]} weights cannot be cut into "
                                 f"{block_weights}-weight blocks for {tensor_types[name]}")
        plan.append((name, gguf_name(name), shape, tensor_types[name]))
    extra = rope_scaling.gguf_tensors(config)        # llama3's rope_freqs.weight: not a weight
    plan += [(None, name, tensor.shape, "F32") for name, tensor in extra.items()]

    entries = dict(metadata)
    entries.update(llama_metadata(config))
    entries.pop("general.architecture", None)  # GGUFWriter writes it first
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, arch="llama")
        try:
            _write(writer, entries, plan, {**weights, **extra}, config, progress)
        finally:
            writer.close()


def _write(writer, entries, plan, weights, config, progress):
    """Header, metadata, tensor infos, then the tensors one by one (converted on the way)."""
    import gguf
    from tqdm import tqdm

    for key, entry in entries.items():
        element_kind = gguf.GGUFValueType[entry.element_kind] if entry.element_kind else None
        writer.add_key_value(key, entry.value, gguf.GGUFValueType[entry.kind], sub_type=element_kind)
    for _, name, shape, type_name in plan:
        # a float32 dtype with raw_dtype set: GGUFWriter takes the shape in elements, not bytes
        writer.add_tensor_info(name, shape, np.dtype(np.float32), tensor_nbytes(int(np.prod(shape)), type_name),
                               raw_dtype=gguf.GGMLQuantizationType[type_name])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    total = sum(int(np.prod(shape)) for _, _, shape, _ in plan)
    with tqdm(total=total, unit="w", unit_scale=True, desc="writing", disable=not progress,
              dynamic_ncols=True) as bar:
        for hf_name, name, shape, type_name in plan:
            bar.set_postfix_str(f"{name} → {type_name}", refresh=False)
            data = convert_tensor(_gguf_rows(hf_name or name, weights[hf_name or name], config), type_name)
            writer.write_tensor_data(data)
            bar.update(int(np.prod(shape)))
