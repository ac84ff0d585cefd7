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
import sys

from llama_np.cli import common as cli

QTYPES = ("same", "F32", "F16", "Q8_0", "Q4_1", "Q4_0")
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


def main(argv=None):
    args = parse_args(argv)
    cli.set_threads(args.threads)
    from llama_np.checkpoint.merge import merge_checkpoint
    from llama_np.files import hub

    changed = merge_checkpoint(hub.resolve_model(args.model), args.adapter, args.out, args.qtype)
    print(f"merged {len(args.adapter)} adapter(s) into {changed} tensors; wrote {args.out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    cli.run(main)
