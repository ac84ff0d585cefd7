"""`python -m llama_np.merge_lora`: bake LoRA adapters into a base model.

    python -m llama_np.merge_lora --model model.gguf --adapter runs/a --out merged.gguf
    python -m llama_np.merge_lora --model hf_folder --adapter runs/a --adapter runs/b --out merged_hf

Each adapted weight becomes W + (alpha/r) · B A (adapters applied in the order given, as
PEFT's merge_and_unload one after the other), and modules_to_save copies replace
embed_tokens / lm_head. The merged model runs at the base model's speed, with no adapter.

Output: a Hugging Face folder (config.json + model.safetensors in float32, plus the
tokenizer), or — from a GGUF base — a GGUF file (`--out` ending in .gguf) with the base's
metadata and tokenizer. In a GGUF, merged tensors are re-quantized with the RTN quantizer
to `--type` (default: each tensor's own type) and untouched tensors are copied byte for
byte. (`--base` and `--qtype` are the older names of `--model` and `--type`.) Files are written under a temporary name and renamed into place.
"""
import argparse
import os
import shutil
import sys

from llama_np.cli import common as cli

QTYPES = ("same", "F32", "F16", "Q8_0", "Q4_1", "Q4_0")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
                   "generation_config.json")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m llama_np.merge_lora",
        description="Merge one or more PEFT LoRA adapters into a base model.")
    p.add_argument("--model", "--base", dest="model", default="default",
                   help="the base model to merge into: .gguf file or Hugging Face folder; 'default' = "
                        "SmolLM2-135M-Instruct Q4_1 (default: %(default)s; --base is its older name)")
    required = cli.required_group(p)
    required.add_argument("--adapter", action="append", required=True, metavar="DIR",
                          help="a PEFT LoRA adapter folder (repeatable; merged in order)")
    required.add_argument("--out", required=True,
                          help="output: a folder (Hugging Face, float32) or a file ending in .gguf")
    p.add_argument("--type", "--qtype", dest="qtype", choices=QTYPES, default="same",
                   help="GGUF output: type of the merged tensors, as quantize's --type (default: each "
                        "tensor's own type; --qtype is its older name)")
    cli.add_threads_arg(p)
    return p.parse_args(argv)


def merge_all(config, weights, adapter_dirs):
    """(config, weights) with every adapter merged in turn; merged weights are float32."""
    from llama_np.llama import adapter as lora
    from llama_np.checkpoint.peft import load_adapter

    changed = set()
    for folder in adapter_dirs:
        adapter = load_adapter(folder, tied_base=config.tie_word_embeddings)
        adapter.check_compatible(config, weights, source=str(folder))
        before = dict(weights)
        config, weights = lora.merge(config, weights, adapter)
        changed |= {name for name, w in weights.items() if before.get(name) is not w}
    return config, weights, changed


def write_hf(out, config, weights, base_path):
    """A Hugging Face folder with the merged float32 weights and the base's tokenizer."""
    from llama_np.llama import adapter as lora
    from llama_np.checkpoint.safetensors import save_hf

    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out} exists and is not a folder")
    save_hf(out, config, {name: lora.dense(w) for name, w in weights.items()})
    if os.path.isdir(base_path):
        for name in TOKENIZER_FILES:
            if os.path.exists(os.path.join(base_path, name)):
                shutil.copyfile(os.path.join(base_path, name), os.path.join(out, name))
    else:
        from llama_np.checkpoint.gguf_file import GGUFFile
        from llama_np.chinese.vocab_bpe import save_hf_tokenizer
        metadata = GGUFFile(base_path).metadata
        if metadata.get("tokenizer.ggml.model") != "gpt2":
            raise ValueError(f"{base_path}: writing its {metadata.get('tokenizer.ggml.model')!r} "
                             f"tokenizer as a Hugging Face folder is not supported; write a .gguf instead")
        save_hf_tokenizer(metadata, out)


def write_gguf(out, base_path, config, weights, changed, qtype):
    """The base GGUF with the merged tensors replaced (re-quantized) and all else copied."""
    import gguf
    import numpy as np
    from llama_np.llama import adapter as lora
    from llama_np import quant
    from llama_np.files.atomic import atomic_path
    from llama_np.checkpoint.gguf import hf_name, permute_qk

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
        w = lora.dense(weights[hf])
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


def main(argv=None):
    args = parse_args(argv)
    cli.set_threads(args.threads)
    from llama_np.files import hub
    from llama_np.checkpoint.gguf import load_gguf
    from llama_np.checkpoint.safetensors import load_hf

    base = hub.resolve_model(args.model)
    to_gguf = args.out.endswith(".gguf")
    if os.path.isdir(base):
        if to_gguf:
            raise ValueError("a .gguf output needs a .gguf base (for its tokenizer metadata); merge into a "
                             "Hugging Face folder, then convert it with python -m llama_np.quantize")
        config, weights = load_hf(base)
    else:
        config, weights, _ = load_gguf(base)
    if args.qtype != "same" and not to_gguf:
        raise ValueError("--type applies to a .gguf output only (a Hugging Face folder is float32)")
    config, weights, changed = merge_all(config, weights, args.adapter)
    if to_gguf:
        write_gguf(args.out, base, config, weights, changed, args.qtype)
    else:
        write_hf(args.out, config, weights, base)
    print(f"merged {len(args.adapter)} adapter(s) into {len(changed)} tensors; wrote {args.out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    cli.run(main)
