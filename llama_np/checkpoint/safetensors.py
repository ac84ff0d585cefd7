"""Hugging Face checkpoints: `config.json` + `model.safetensors`, or shards listed in
`model.safetensors.index.json`.

A safetensors file is an 8-byte little-endian header length, a JSON header
(name → dtype, shape, [begin, end) byte offsets into the data), then the raw data. Reading
goes through `safetensors.safe_open` (memory-mapped); bfloat16, which NumPy has no dtype
for, is widened to float32 by shifting its bits into the top half of a float32.
"""
import json
import os

import numpy as np

from llama_np.files.atomic import atomic_path, atomic_write_text
from llama_np.files.text import read_json
from llama_np.llama.config import LlamaConfig
from llama_np.llama.weights import check_weights

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """A Hugging Face checkpoint folder llama_np cannot read."""


# The dtypes a LLaMA's weights come in, with their bytes per element; integer, boolean and
# 8-bit float tensors are refused rather than turned into float32 numbers.
FLOAT_DTYPES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}


def _bf16_to_f32(raw_u16):
    return (raw_u16.astype(np.uint32) << 16).view(np.float32)


def read_safetensors(path):
    """All tensors of one .safetensors file as float32 NumPy arrays, by name."""
    from safetensors import SafetensorError, safe_open

    try:
        with open(path, "rb") as fh:
            header_len = int.from_bytes(fh.read(8), "little")
            if header_len > os.path.getsize(path) - 8:
                raise ValueError(f"header length {header_len} exceeds the file size")
            header = json.loads(fh.read(header_len))
        _check_header(header)
        tensors = {}
        with safe_open(path, framework="numpy") as f:
            for name in f.keys():
                if header[name]["dtype"] == "BF16":  # NumPy has no bfloat16: widen the raw bits
                    begin, end = header[name]["data_offsets"]
                    raw = np.memmap(path, dtype="<u2", mode="r", offset=8 + header_len + begin,
                                    shape=((end - begin) // 2,))
                    tensors[name] = _bf16_to_f32(raw).reshape(header[name]["shape"])
                else:
                    tensors[name] = np.asarray(f.get_tensor(name), dtype=np.float32)
    except RecursionError:
        raise CheckpointError(f"{path}: not a readable safetensors file (header nested too deeply)") from None
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    return tensors


def _check_header(header):
    """Every tensor a float dtype whose bytes are its shape's: [begin, end) holds exactly
    prod(shape) elements (the safetensors library checks this too; BF16 is read here)."""
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise ValueError(f"tensor {name!r}: its header entry is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"tensor {name!r} has dtype {dtype!r}; weights must be "
                             f"{', '.join(FLOAT_DTYPES)}")
        if not (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)
                and isinstance(offsets, list) and len(offsets) == 2
                and all(type(n) is int for n in offsets)):
            raise ValueError(f"tensor {name!r}: malformed shape {shape!r} or data_offsets {offsets!r}")
        n_bytes = int(np.prod(shape, dtype=object)) * FLOAT_DTYPES[dtype]
        if offsets[1] - offsets[0] != n_bytes:
            raise ValueError(f"tensor {name!r} is {dtype} {shape}, {n_bytes} bytes, but its "
                             f"data_offsets {offsets} span {offsets[1] - offsets[0]}")


def checkpoint_files(folder):
    """The safetensors files of a Hugging Face folder (one file or the shards of an index)."""
    index = os.path.join(folder, INDEX_FILE)
    if os.path.exists(index):
        weight_map = read_json(index, CheckpointError, "the safetensors index")
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        # shards are files of this folder: a name with a path in it is not followed
        if not (isinstance(weight_map, dict) and weight_map and all(
                isinstance(shard, str) and shard == os.path.basename(shard) and shard not in ("", ".", "..")
                for shard in weight_map.values())):
            raise CheckpointError(f"{index}: not a valid safetensors index (its weight_map must map "
                                  f"tensor names to shard files of this folder)")
        return [os.path.join(folder, shard) for shard in sorted(set(weight_map.values()))]
    single = os.path.join(folder, SINGLE_FILE)
    if os.path.exists(single):
        return [single]
    if any(os.path.exists(os.path.join(folder, name)) for name in ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        raise CheckpointError(f"{folder}: pytorch_model.bin (a pickle) is not read; save the model "
                              f"as safetensors (save_pretrained(..., safe_serialization=True))")
    raise CheckpointError(f"{folder}: no {SINGLE_FILE} or {INDEX_FILE}")


def load_hf(folder):
    """Read a Hugging Face LLaMA folder: returns (config, weights by HF name)."""
    config_path = os.path.join(folder, "config.json")
    if not os.path.exists(config_path):
        raise CheckpointError(f"{folder}: no config.json")
    config = LlamaConfig.from_json(config_path)
    paths = checkpoint_files(folder)
    weights = {}
    for path in paths:
        weights.update(read_safetensors(path))
    config.check_fits(sum(os.path.getsize(p) for p in paths), source=config_path)
    if config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)
    check_weights(config, weights, source=folder)
    return config, weights


def save_hf(folder, config, weights):
    """Write `config.json` + `model.safetensors` (float32), each atomically."""
    from safetensors.numpy import save_file

    os.makedirs(folder, exist_ok=True)
    tensors = {name: np.ascontiguousarray(w, dtype=np.float32) for name, w in weights.items()}
    with atomic_path(os.path.join(folder, SINGLE_FILE)) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})
    atomic_write_text(os.path.join(folder, "config.json"), json.dumps(config.to_hf_dict(), indent=2))
