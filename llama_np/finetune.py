"""`python -m llama_np.finetune`: LoRA fine-tuning on the CPU.

    python -m llama_np.finetune --data alpaca.json --out runs/alpaca            # SmolLM2, the paper's LoRA
    python -m llama_np.finetune --data alpaca.json --out runs/alpaca --resume   # continue after a stop
    python -m llama_np.chat --adapter runs/alpaca                               # use the result
    python -m llama_np.finetune --data alpaca.json --out runs/gpu --export-torch  # the run for GPUs

Data: Alpaca `.json`/`.jsonl` (instruction tuning with the Chinese-Alpaca template, loss on
the response only) or plain `.txt` (packed into --max-seq-len blocks, loss on every token).
What trains (--trainable): `lora` (on --target-modules), `embeddings`, `lm_head`, in any
combination — `embeddings` alone is the paper's pre-training stage 1 (add
--embedding-rows-from N to train only the rows of tokens N and up, e.g. newly added ones);
`lora,embeddings,lm_head` its stage 2. With tied embeddings (SmolLM2) embedding and head
stay one matrix.

Writes into --out: the final adapter (PEFT format: adapter_config.json +
adapter_model.safetensors), checkpoint-N/ folders, train_log.jsonl (one line per step) and
loss.png. Every file is written under a temporary name and renamed into place.
"""
import argparse
import json
import os
import sys

from llama_np.cli import common as cli
from llama_np.training.config import DEFAULTS, RUN_FLAGS, FinetuneConfig

# The defaults (the paper's SFT recipe) and the run's settings: llama_np.training.config.


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m llama_np.finetune",
        description="Fine-tune a LLaMA with LoRA (and optionally its embeddings and output head) "
                    "on Alpaca instructions or plain text, on the CPU.",
        argument_default=argparse.SUPPRESS)  # so that --resume can tell which flags were given
    p.add_argument("--model", help="base model: .gguf file or Hugging Face folder; 'default' = "
                                    "SmolLM2-135M-Instruct Q4_1 (default: default)")
    # --data is required too, but checked after parsing: with --resume it comes from the run
    required = cli.required_group(p)
    required.add_argument("--data", help="training data: Alpaca .json/.jsonl, or plain .txt "
                                         "(with --resume: the run's own unless given)")
    required.add_argument("--out", required=True,
                          help="output folder for the adapter, checkpoints, log and plot")
    p.add_argument("--eval-data", help="held-out data in the same formats; its loss is logged")
    p.add_argument("--resume", action="store_true", default=False,
                   help="continue the run in --out from its latest checkpoint, with its settings")
    p.add_argument("--init-adapter", metavar="DIR",
                   help="start from this adapter's tensors where they match (e.g. the previous stage)")
    g = p.add_argument_group("what trains")
    g.add_argument("--lora-r", type=cli.positive_int, help="LoRA rank r (default: 8)")
    g.add_argument("--lora-alpha", type=cli.positive_float, help="LoRA alpha; scaling = alpha/r (default: 32)")
    g.add_argument("--lora-dropout", type=cli.dropout_probability, help="dropout on the LoRA input (default: 0.05)")
    g.add_argument("--target-modules", help="projections that get LoRA: q,k,v,o,gate,up,down, or "
                                            "all / attention / mlp (default: q,k,v,o,gate,up,down)")
    g.add_argument("--use-rslora", action="store_true", help="scaling alpha/sqrt(r) (rank-stabilised LoRA)")
    g.add_argument("--trainable", help="comma list of lora, embeddings, lm_head (default: lora)")
    g.add_argument("--embedding-rows-from", type=cli.non_negative_int, metavar="N",
                   help="train only embedding rows N and up (the tokens added to the vocabulary)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=cli.positive_float, help="peak learning rate (default: 2e-4)")
    g.add_argument("--embedding-lr", type=cli.positive_float,
                   help="peak learning rate of the trained embedding and lm_head (same schedule); "
                        "default: --lr")
    g.add_argument("--batch-size", type=cli.positive_int, help="examples per micro-batch (default: 4)")
    g.add_argument("--grad-accum", type=cli.positive_int, help="micro-batches per optimizer step (default: 1)")
    g.add_argument("--max-seq-len", type=cli.positive_int, help="truncate / pack to this many tokens (default: 512, or the model's context if shorter)")
    g.add_argument("--steps", type=cli.positive_int, help="optimizer steps (default: one epoch)")
    g.add_argument("--epochs", type=cli.positive_float, help="passes over the data (instead of --steps)")
    g.add_argument("--warmup-ratio", type=cli.ratio, help="warm-up share of the steps (default: 0.03)")
    g.add_argument("--lr-schedule", choices=["cosine", "linear", "constant"], help="decay after warm-up (default: cosine)")
    g.add_argument("--weight-decay", type=cli.non_negative_float, help="AdamW decoupled weight decay (default: 0)")
    g.add_argument("--max-grad-norm", type=cli.non_negative_float, help="clip the gradient norm; 0 = off (default: 1)")
    g.add_argument("--seed", type=cli.non_negative_int, help="seed of data order, initialisation and dropout (default: 42)")
    g = p.add_argument_group("running")
    g.add_argument("--save-every", type=cli.non_negative_int, help="checkpoint every N steps; 0 = only at the end (default: 100)")
    g.add_argument("--eval-every", type=cli.non_negative_int, help="evaluate every N steps; 0 = only at the end (default: 0)")
    g.add_argument("--keep-checkpoints", type=cli.positive_int, help="checkpoints kept (default: 2)")
    g.add_argument("--base-dtype", choices=["quantized", "float32"],
                   help="keep a quantized base quantized (dequantized one block at a time), or make "
                        "one float32 copy of it up front: faster, 4-8x the memory (default: quantized)")
    g.add_argument("--export-torch", action="store_true",
                   help="instead of training, write this run into --out for Hugging Face Trainer + peft + "
                        "DeepSpeed on GPUs: the model as a Hugging Face folder, the batches of every step, the "
                        "starting adapter, train.py and the torchrun command (--out/README.md)")
    g.add_argument("--quiet", "--no-progress", dest="progress", action="store_false",
                   help="no progress bar (--no-progress is its older name)")
    g.add_argument("--threads", type=cli.thread_count,
                   help="CPU threads: each micro-batch is split into this many shards run at once "
                        f"(default: all cores, {os.cpu_count() or 1})")
    return p


def resolve_args(argv=None):
    """Parsed flags with defaults filled in; with --resume, the run's saved settings are the
    defaults and only the flags given now override them."""
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    resume = given.pop("resume")
    export_torch = given.pop("export_torch", False)
    if not given.get("out"):
        parser.error("--out is required")
    if resume and export_torch:
        parser.error("--export-torch writes a run from its start; it cannot --resume one")
    settings = dict(DEFAULTS)
    if resume:
        from llama_np.training.trainer import STATE_FILE, latest_checkpoint
        state_path = os.path.join(latest_checkpoint(given["out"]), STATE_FILE)
        try:
            with open(state_path, encoding="utf-8") as f:
                saved = json.load(f)["run"]["args"]
        except (OSError, json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"{state_path}: cannot read the run's settings ({e})") from None
        settings.update({k: v for k, v in saved.items() if k in RUN_FLAGS})
    settings.update(given)
    if not settings["data"]:
        parser.error("the following arguments are required: --data")
    if settings["steps"] is not None and settings["epochs"] is not None and "steps" in given and "epochs" in given:
        parser.error("give --steps or --epochs, not both")
    if "steps" in given:
        settings["epochs"] = None
    elif "epochs" in given:
        settings["steps"] = None
    return argparse.Namespace(resume=resume, export_torch=export_torch, **settings)


def main(argv=None):
    args = resolve_args(argv)
    cli.set_threads(args.threads)
    from llama_np.training.run import finetune   # after the thread count is set: NumPy reads it

    settings = FinetuneConfig(**{name: getattr(args, name) for name in DEFAULTS})
    if args.export_torch:
        from llama_np.training.export import export_torch
        run = export_torch(settings, args.out)
        print(f"wrote the run for Trainer + peft into {args.out}: {run['steps']} steps of "
              f"{run['global_batch_size']} examples; cd {args.out} && torchrun --standalone --nproc_per_node N "
              f"train.py (README.md there)", file=sys.stderr)
        return 0
    return finetune(settings, resume=args.resume)


if __name__ == "__main__":
    cli.run(main)
