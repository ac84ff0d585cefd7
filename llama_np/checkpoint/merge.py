"""Merging LoRA adapters into a model: each adapted weight becomes W + (alpha/r) · B A
(adapters in order, as PEFT's merge_and_unload one after the other), modules_to_save copies
replace embed_tokens / lm_head, and the result is written as a Hugging Face folder (float32
+ the tokenizer) or, from a GGUF base, a GGUF whose merged tensors are re-quantized and
whose other tensors are copied byte for byte.
"""
import os
import shutil

import gguf
import numpy as np

from llama_np import quant
from llama_np.checkpoint.gguf import hf_name, load_gguf, permute_qk
from llama_np.checkpoint.gguf_file import GGUFFile
from llama_np.checkpoint.peft import load_adapter
from llama_np.checkpoint.safetensors import load_hf, save_hf
from llama_np.checkpoint.tokenizer_files import save_hf_tokenizer
from llama_np.files.atomic import atomic_path
from llama_np.llama.adapter import merge
from llama_np.quant import dense

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
                   "generation_config.json")


def merge_all(config, weights, adapter_dirs):
    """(config, weights) with every adapter merged in turn; merged weights are float32."""

    changed = set()
    for folder in adapter_dirs:
        adapter = load_adapter(folder, tied_base=config.tie_word_embeddings)
        adapter.check_compatible(config, weights, source=str(folder))
        before = dict(weights)
        config, weights = merge(config, weights, adapter)
        changed |= {name for name, w in weights.items() if before.get(name) is not w}
    return config, weights, changed


def write_hf(out, config, weights, base_path):
    """A Hugging Face folder with the merged float32 weights and the base's tokenizer."""

    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out} exists and is not a folder")
    save_hf(out, config, {name: dense(w) for name, w in weights.items()})
    if os.path.isdir(base_path):
        for name in TOKENIZER_FILES:
            if os.path.exists(os.path.join(base_path, name)):
                shutil.copyfile(os.path.join(base_path, name), os.path.join(out, name))
    else:
        metadata = GGUFFile(base_path).metadata
        if metadata.get("tokenizer.ggml.model") != "gpt2":
            raise ValueError(f"{base_path}: writing its {metadata.get('tokenizer.ggml.model')!r} "
                             f"tokenizer as a Hugging Face folder is not supported; write a .gguf instead")
        save_hf_tokenizer(metadata, out)


def write_gguf(out, base_path, config, weights, changed, qtype):
    """The base GGUF with the merged tensors replaced (re-quantized) and all else copied."""

    reader = gguf.GGUFReader(base_path)
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--out {out}: the folder {folder} does not exist")
    tensors = [(t.name, t) for t in reader.tensors]
    by_name = dict(tensors)
    if not config.tie_word_embeddings and "output.weight" not in by_name:
        # an adapter gave the tied model a head of its own: stored like the embedding
        tensors.append(("output.weight", None))

    def encode(gguf_tensor_name, hf, source_type):
        w = dense(weights[hf])
        if gguf_tensor_name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = config.num_attention_heads if "attn_q" in gguf_tensor_name else config.num_key_value_heads
            w = permute_qk(w, heads)
        target = source_type if qtype == "same" else qtype
        if target in quant.BLOCK_DTYPES:
            return quant.quantize(w, target), gguf.GGMLQuantizationType[target]
        if target == "F16":
            return w.astype(np.float16), None
        return np.ascontiguousarray(w, dtype=np.float32), None

    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(tmp, arch=config_arch(reader))
        for field in reader.fields.values():
            if field.name.startswith("GGUF.") or field.name == "general.architecture":
                continue
            value_type = field.types[0]
            sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
        for name, info in tensors:
            hf = hf_name(name)
            if info is None or hf in changed:
                like = by_name["token_embd.weight"] if info is None else info
                source_type = like.tensor_type.name
                if source_type not in quant.BLOCK_DTYPES and source_type not in ("F32", "F16"):
                    source_type = "F32"
                data, raw_dtype = encode(name, hf, source_type)
                writer.add_tensor(name, data, raw_dtype=raw_dtype)
            else:  # untouched: the stored bytes as they are
                writer.add_tensor(name, np.asarray(info.data), raw_dtype=info.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


def config_arch(reader):
    field = reader.fields.get("general.architecture")
    return field.contents() if field is not None else "llama"


def merge_checkpoint(base, adapter_dirs, out, qtype="same"):
    """Merge the adapters in `adapter_dirs` into the model at `base` and write it to `out`
    (a .gguf file, or a Hugging Face folder). Returns the number of tensors changed."""
    to_gguf = out.endswith(".gguf")
    if os.path.isdir(base):
        if to_gguf:
            raise ValueError("a .gguf output needs a .gguf base (for its tokenizer metadata); merge into a "
                             "Hugging Face folder, then convert it with python -m llama_np.quantize")
        config, weights = load_hf(base)
    else:
        config, weights, _ = load_gguf(base)
    if qtype != "same" and not to_gguf:
        raise ValueError("--type applies to a .gguf output only (a Hugging Face folder is float32)")
    config, weights, changed = merge_all(config, weights, adapter_dirs)
    if to_gguf:
        write_gguf(out, base, config, weights, changed, qtype)
    else:
        write_hf(out, config, weights, base)
    return len(changed)
