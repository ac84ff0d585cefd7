"""Resizing a model to an extended vocabulary: the rows its new tokens need.

    python -m llama_np.extend_bpe --out zh_tok                                    # 49,152 → 53,152 tokens
    python -m llama_np.resize --tokenizer zh_tok --out smollm2-zh.gguf            # embeddings to match

A vocabulary extension (llama_np.chinese.vocab_bpe, llama_np.chinese.vocab_sentencepiece) keeps every old
token's id and appends the new ones. The model must follow: its token embedding
`embed_tokens` [V, D] and output head `lm_head` [V, D] grow to [V′, D] by *appending* rows
(Chinese-LLaMA: `model.resize_token_embeddings(len(tokenizer))`). The old rows are not
touched, so on a text made only of old tokens the resized model computes exactly what the
original did — same hidden states, same logits for the old tokens — and a tied model
(one matrix for both) stays tied.

What the new rows start as matters only until training moves them, but a good start is a
head start. Two choices:

- "mean": every new row is the mean of the old rows (transformers' default since 4.46,
  after Hewitt 2021, "Initializing New Word Embeddings for Pretrained Language Models").
  All new tokens look alike: an average, uninformative input, and in the head an average
  logit, so the model neither favours nor shuns them.
- "pieces": each new row is the mean of the rows of the old tokens that spell it. A new
  token 北京 that the old tokenizer wrote as 北 + 京 starts as (e(北) + e(京)) / 2: close
  to what the model already knows about those characters (Gee et al. 2022, "Fast
  Vocabulary Transfer").

`DEFAULT_INIT` is the one that measured better on held-out Chinese text before any
training (see its comment). Pieces are found by decoding the new token to text and encoding
that with the old tokenizer; a byte-level BPE token that holds only part of a character
(no text of its own) is spelled by the old tokenizer's single-byte tokens.

Quantized weights stay quantized: old rows keep their bytes, new rows are quantized on their
own (blocks run along a row, so a row's blocks never mix with another row's).
"""
import dataclasses
import os
import shutil

import numpy as np

from llama_np.checkpoint import load_model, load_tokenizer
from llama_np.checkpoint.gguf_writer import metadata_from_gguf, write_llama_gguf
from llama_np.checkpoint.safetensors import save_hf
from llama_np.files import hub
from llama_np.llama.model import Llama
from llama_np.quant import QuantizedMatrix, dense, quantize
from llama_np.chinese.defaults import DEFAULT_INIT, INIT_METHODS
from llama_np.chinese.vocab_bpe import BYTE_SYMBOLS, token_bytes

EMBED = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"
ROW_CHUNK = 4096  # rows dequantized at once when averaging a whole quantized table
REPLACEMENT_CHARACTER = "\ufffd"  # what decoding shows for bytes that are not whole characters
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                   "special_tokens_map.json")


class ResizeError(ValueError):
    """A tokenizer that does not extend the model's vocabulary."""


def new_token_pieces(old_tokenizer, new_tokenizer, old_size):
    """For each token id old_size … V′-1 of `new_tokenizer`, the ids of the old tokens
    that spell it under `old_tokenizer` (a list of lists)."""

    pieces = []
    for token_id in range(old_size, new_tokenizer.vocab_size):
        text = new_tokenizer.decode([token_id])
        if text and REPLACEMENT_CHARACTER not in text:
            ids = old_tokenizer.encode(text, add_bos=False)
        else:  # part of a character: its bytes, one old byte token each
            raw = token_bytes(new_tokenizer.id_to_piece(token_id))
            ids = [old_tokenizer.piece_to_id(BYTE_SYMBOLS[b]) for b in raw]
        if not ids or any(i is None or i >= old_size for i in ids):
            raise ResizeError(f"new token {token_id} ({new_tokenizer.id_to_piece(token_id)!r}) "
                              f"cannot be spelled with the old vocabulary")
        pieces.append(ids)
    return pieces


def new_rows(matrix, pieces, init):
    """The rows to append to `matrix` [V, D] (float array or QuantizedMatrix): one per
    entry of `pieces`, initialised by `init` ("pieces" or "mean"). Returns [len(pieces), D]
    float32."""
    if init not in INIT_METHODS:
        raise ValueError(f"unknown initialisation {init!r}; choose from {', '.join(INIT_METHODS)}")
    n_old = matrix.shape[0]
    if init == "mean":
        total = np.zeros(matrix.shape[1], dtype=np.float64)                  # [D]
        for start in range(0, n_old, ROW_CHUNK):  # a quantized table is read a slice at a time
            total += _rows(matrix, np.arange(start, min(start + ROW_CHUNK, n_old))).sum(axis=0)
        mean = (total / n_old).astype(np.float32)                             # [D]
        return np.tile(mean, (len(pieces), 1))                                # [N, D]
    return np.stack([_rows(matrix, np.asarray(ids)).mean(axis=0) for ids in pieces]).astype(np.float32)


def _rows(matrix, ids):
    """matrix[ids] as float32 [len(ids), D], for an array or a QuantizedMatrix."""
    if isinstance(matrix, np.ndarray):
        return matrix[ids].astype(np.float32, copy=False)
    return matrix.rows(ids)


def append_rows(matrix, rows):
    """`matrix` [V, D] with `rows` [N, D] appended: [V + N, D]. A QuantizedMatrix keeps
    its old blocks byte for byte and gets the new rows quantized to its own type."""

    if isinstance(matrix, QuantizedMatrix):
        data = np.concatenate([np.asarray(matrix.data), quantize(rows, matrix.qtype)])
        return QuantizedMatrix(data, matrix.qtype, (data.shape[0], matrix.shape[1]))
    return np.concatenate([np.asarray(matrix), rows.astype(matrix.dtype)])


def resize_vocabulary(config, weights, pieces, init=DEFAULT_INIT):
    """(config, weights) for a vocabulary of config.vocab_size + len(pieces) tokens: the
    embedding and (untied) output head get one appended row per new token; `pieces[i]`
    are the old ids that spell new token V + i. `weights` is not changed."""

    resized = dict(weights)
    names = [EMBED] if config.tie_word_embeddings else [EMBED, LM_HEAD]
    for name in names:
        matrix = weights[name]
        if matrix.shape[0] != config.vocab_size:
            raise ResizeError(f"{name} has {matrix.shape[0]} rows, the config says "
                              f"vocab_size {config.vocab_size}")
        resized[name] = append_rows(matrix, new_rows(matrix, pieces, init))
    return dataclasses.replace(config, vocab_size=config.vocab_size + len(pieces)), resized


def untie_head(config, weights):
    """(config, weights) of a model whose output head shares its matrix with the embedding
    made into one with a head of its own, a copy: the same logits, but the two can then
    train apart (LLaMA itself has separate `embed_tokens` and `lm_head`). An untied model
    is returned as it is."""
    if not config.tie_word_embeddings:
        return config, weights
    return dataclasses.replace(config, tie_word_embeddings=False), {**weights, LM_HEAD: weights[EMBED]}


def resize_model(model, old_tokenizer, new_tokenizer, init=DEFAULT_INIT, untie=False):
    """A new `Llama` whose vocabulary is `new_tokenizer`'s, which must extend
    `old_tokenizer`'s (same tokens first); with `untie`, its head no longer tied to the
    embedding (untie_head), both grown alike."""
    check_extends(old_tokenizer, new_tokenizer, model.config.vocab_size)
    pieces = new_token_pieces(old_tokenizer, new_tokenizer, model.config.vocab_size)
    config, weights = untie_head(model.config, model.weights) if untie else (model.config, model.weights)
    config, weights = resize_vocabulary(config, weights, pieces, init)
    return Llama(config, weights, use_kernels=model.use_kernels)


def check_extends(old_tokenizer, new_tokenizer, model_vocab):
    """ResizeError unless `new_tokenizer` is `old_tokenizer` with tokens appended and the
    model has one row per old token."""
    old, new = old_tokenizer.vocab_size, new_tokenizer.vocab_size
    if model_vocab != old:
        raise ResizeError(f"the model has {model_vocab} embedding rows but its tokenizer {old} tokens")
    if new <= old:
        raise ResizeError(f"{new_tokenizer.source}: {new} tokens, not more than the model's {old}; "
                          f"nothing to add")
    changed = next((i for i in range(old) if old_tokenizer.id_to_piece(i) != new_tokenizer.id_to_piece(i)), None)
    if changed is not None:
        raise ResizeError(f"{new_tokenizer.source}: token {changed} is "
                          f"{new_tokenizer.id_to_piece(changed)!r}, the model's is "
                          f"{old_tokenizer.id_to_piece(changed)!r}; an extension must keep the old ids")


def write_gguf(out, base, model, tokenizer_path):
    """The resized model as a GGUF: the base's general.* metadata, the extended tokenizer's
    tokenizer.* metadata (from its vocabulary-only GGUF), every tensor in its base type."""

    if os.path.isdir(base):
        raise ValueError("a .gguf output needs a .gguf model; write a Hugging Face folder instead")
    vocab_file = os.path.join(tokenizer_path, "tokenizer.gguf") if os.path.isdir(tokenizer_path) else tokenizer_path
    if not vocab_file.endswith(".gguf") or not os.path.exists(vocab_file):
        raise ValueError(f"--tokenizer {tokenizer_path}: a .gguf output needs the tokenizer as GGUF "
                         f"(the tokenizer.gguf that llama_np.extend_bpe writes)")
    metadata = {k: v for k, v in metadata_from_gguf(base).items() if not k.startswith("tokenizer.")}
    metadata.update({k: v for k, v in metadata_from_gguf(vocab_file).items() if k.startswith("tokenizer.")})
    types = {name: w.qtype if isinstance(w, QuantizedMatrix) else "F32" for name, w in model.weights.items()}
    write_llama_gguf(out, model.config, model.weights, types, metadata, progress=False)


def write_hf(out, model, tokenizer_path):
    """The resized model as a Hugging Face folder (float32) with the extended tokenizer's files."""

    if not os.path.isdir(tokenizer_path):
        raise ValueError(f"--tokenizer {tokenizer_path}: a Hugging Face output needs a tokenizer folder")
    save_hf(out, model.config, {name: dense(w) for name, w in model.weights.items()})
    for name in TOKENIZER_FILES:
        if os.path.exists(os.path.join(tokenizer_path, name)):
            shutil.copyfile(os.path.join(tokenizer_path, name), os.path.join(out, name))


def resize_checkpoint(model_path, tokenizer_path, out, init=DEFAULT_INIT, untie=False):
    """The resize step: the model at `model_path` with embed_tokens / lm_head grown to the
    extended tokenizer at `tokenizer_path` (with `untie`, the head a copy of its own:
    untie_head), written to `out` (a .gguf file, or a Hugging Face folder). Returns (old
    vocabulary size, new vocabulary size)."""
    base = hub.resolve_model(model_path)
    model, old_tokenizer = load_model(base)
    resized = resize_model(model, old_tokenizer, load_tokenizer(tokenizer_path), init, untie)
    if out.endswith(".gguf"):
        write_gguf(out, base, resized, tokenizer_path)
    else:
        write_hf(out, resized, tokenizer_path)
    return model.config.vocab_size, resized.config.vocab_size
