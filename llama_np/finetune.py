"""`python -m llama_np.finetune`: LoRA fine-tuning on the CPU.

    python -m llama_np.finetune --data alpaca.json --out runs/alpaca            # SmolLM2, the paper's LoRA
    python -m llama_np.finetune --data alpaca.json --out runs/alpaca --resume   # continue after a stop
    python -m llama_np.chat --adapter runs/alpaca                               # use the result

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
import math
import os
import sys
import time

from llama_np.cli import common as cli

# Defaults: the paper's SFT recipe (r 8, alpha 32, dropout 0.05, q,k,v,o,gate,up,down).
DEFAULTS = dict(
    model="default", data=None, eval_data=None, out=None, init_adapter=None,
    lora_r=8, lora_alpha=32.0, lora_dropout=0.05, target_modules="q,k,v,o,gate,up,down",
    use_rslora=False, trainable="lora", embedding_rows_from=None,
    lr=2e-4, embedding_lr=None, batch_size=4, grad_accum=1, max_seq_len=None, steps=None, epochs=None,
    warmup_ratio=0.03, lr_schedule="cosine", weight_decay=0.0, max_grad_norm=1.0, seed=42,
    save_every=100, eval_every=0, keep_checkpoints=2, base_dtype="quantized",
    threads=os.cpu_count() or 1, progress=True,
)
TRAINABLE = ("lora", "embeddings", "lm_head")
DEFAULT_MAX_SEQ_LEN = 512  # the paper's max length
# Flags that describe the run itself; on --resume they come from the checkpoint.
# (--threads too: the batch is split into that many shards, and dropout masks follow it.)
RUN_FLAGS = [k for k in DEFAULTS if k != "progress"]


def _dropout(text):
    value = cli.non_negative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be in [0, 1)")
    return value


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m llama_np.finetune",
        description="Fine-tune a LLaMA with LoRA (and optionally its embeddings and output head) "
                    "on Alpaca instructions or plain text, on the CPU.",
        argument_default=argparse.SUPPRESS)  # so that --resume can tell which flags were given
    p.add_argument("--model", help="base model: .gguf file or Hugging Face folder; 'default' = "
                                    "SmolLM2-135M-Instruct Q4_1 (default: default)")
    p.add_argument("--data", help="training data: Alpaca .json/.jsonl, or plain .txt")
    p.add_argument("--eval-data", help="held-out data in the same formats; its loss is logged")
    p.add_argument("--out", help="output folder for the adapter, checkpoints, log and plot")
    p.add_argument("--resume", action="store_true", default=False,
                   help="continue the run in --out from its latest checkpoint, with its settings")
    p.add_argument("--init-adapter", metavar="DIR",
                   help="start from this adapter's tensors where they match (e.g. the previous stage)")
    g = p.add_argument_group("what trains")
    g.add_argument("--lora-r", type=cli.positive_int, help="LoRA rank r (default: 8)")
    g.add_argument("--lora-alpha", type=cli.positive_float, help="LoRA alpha; scaling = alpha/r (default: 32)")
    g.add_argument("--lora-dropout", type=_dropout, help="dropout on the LoRA input (default: 0.05)")
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
    g.add_argument("--warmup-ratio", type=cli.non_negative_float, help="warm-up share of the steps (default: 0.03)")
    g.add_argument("--lr-schedule", choices=["cosine", "linear", "constant"], help="decay after warm-up (default: cosine)")
    g.add_argument("--weight-decay", type=cli.non_negative_float, help="AdamW decoupled weight decay (default: 0)")
    g.add_argument("--max-grad-norm", type=cli.non_negative_float, help="clip the gradient norm; 0 = off (default: 1)")
    g.add_argument("--seed", type=int, help="seed of data order, initialisation and dropout (default: 42)")
    g = p.add_argument_group("running")
    g.add_argument("--save-every", type=cli.non_negative_int, help="checkpoint every N steps; 0 = only at the end (default: 100)")
    g.add_argument("--eval-every", type=cli.non_negative_int, help="evaluate every N steps; 0 = only at the end (default: 0)")
    g.add_argument("--keep-checkpoints", type=cli.positive_int, help="checkpoints kept (default: 2)")
    g.add_argument("--base-dtype", choices=["quantized", "float32"],
                   help="keep a quantized base quantized (dequantized one block at a time), or make "
                        "one float32 copy of it up front: faster, 4-8x the memory (default: quantized)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    g.add_argument("--threads", type=cli.positive_int,
                   help="CPU threads: each micro-batch is split into this many shards run at once "
                        f"(default: all cores, {os.cpu_count() or 1})")
    return p


def resolve_args(argv=None):
    """Parsed flags with defaults filled in; with --resume, the run's saved settings are the
    defaults and only the flags given now override them."""
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    resume = given.pop("resume")
    if not given.get("out"):
        parser.error("--out is required")
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
        parser.error("--data is required")
    if settings["steps"] is not None and settings["epochs"] is not None and "steps" in given and "epochs" in given:
        parser.error("give --steps or --epochs, not both")
    if "steps" in given:
        settings["epochs"] = None
    elif "epochs" in given:
        settings["steps"] = None
    return argparse.Namespace(resume=resume, **settings)


def trainable_parts(spec):
    parts = [s.strip() for s in spec.split(",") if s.strip()]
    for part in parts:
        if part not in TRAINABLE:
            raise ValueError(f"--trainable: unknown part {part!r}; choose from {', '.join(TRAINABLE)}")
    if not parts:
        raise ValueError("--trainable: nothing to train")
    return parts


def main(argv=None):
    args = resolve_args(argv)
    cli.set_threads(args.threads)
    import numpy as np
    from llama_np.files import hub
    from llama_np.llama import adapter as lora
    from llama_np.checkpoint import load_model
    from llama_np.checkpoint.peft import load_adapter, save_adapter
    from llama_np.training.data import BatchSchedule, load_examples
    from llama_np.training.trainer import LOG_FILE, LATEST, TrainConfig, Trainer
    from llama_np.training.trainable import TrainableLlama

    parts = trainable_parts(args.trainable)
    targets = lora.parse_target_modules(args.target_modules) if "lora" in parts else []
    out = args.out
    if not args.resume and os.path.exists(os.path.join(out, LATEST)) or (
            not args.resume and os.path.exists(os.path.join(out, LOG_FILE))):
        raise ValueError(f"{out} already holds a training run: add --resume to continue it, "
                         f"or choose another --out")

    started = time.perf_counter()
    model, tokenizer = load_model(hub.resolve_model(args.model))
    config, weights = model.config, model.weights
    if args.max_seq_len is None:
        args.max_seq_len = min(DEFAULT_MAX_SEQ_LEN, config.max_position_embeddings)
    if args.max_seq_len > config.max_position_embeddings:
        raise ValueError(f"--max-seq-len {args.max_seq_len} exceeds the model's context of "
                         f"{config.max_position_embeddings} positions")
    if args.base_dtype == "float32":
        weights = {name: lora.dense(w) for name, w in weights.items()}
    if args.embedding_rows_from is not None and args.embedding_rows_from >= config.vocab_size:
        raise ValueError(f"--embedding-rows-from {args.embedding_rows_from} is beyond the "
                         f"vocabulary of {config.vocab_size}")

    examples, notes = load_examples(args.data, tokenizer, args.max_seq_len)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else (tokenizer.eos_id or 0)
    batches = BatchSchedule(examples, args.batch_size, pad_id, seed=args.seed)
    eval_batches = None
    if args.eval_data:
        eval_examples, notes = load_examples(args.eval_data, tokenizer, args.max_seq_len)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        eval_batches = BatchSchedule(eval_examples, args.batch_size, pad_id, shuffle=False)
    steps_per_epoch = math.ceil(len(batches) / args.grad_accum)
    steps = args.steps or max(1, round((args.epochs or 1.0) * steps_per_epoch))

    modules_to_save = [m for m, part in (("embed_tokens", "embeddings"), ("lm_head", "lm_head")) if part in parts]
    lora_config = lora.LoraConfig(
        r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        target_modules=targets, modules_to_save=modules_to_save, use_rslora=args.use_rslora,
        ensure_weight_tying=config.tie_word_embeddings and bool(modules_to_save),
        base_model_name_or_path=str(args.model))
    adapter = lora.Adapter.init(config, weights, lora_config, np.random.default_rng(args.seed))
    if args.init_adapter and not args.resume:
        previous = load_adapter(args.init_adapter, tied_base=config.tie_word_embeddings)
        previous.check_compatible(config, weights, source=f"--init-adapter {args.init_adapter}")
        _start_from(adapter, previous, args.init_adapter)
    rows = None if args.embedding_rows_from is None else np.arange(args.embedding_rows_from, config.vocab_size)
    trainable = TrainableLlama(config, weights, adapter, trainable_rows=rows)

    train_config = TrainConfig(
        lr=args.lr, embedding_lr=args.embedding_lr, steps=steps, grad_accum=args.grad_accum,
        warmup_steps=int(round(args.warmup_ratio * steps)), schedule=args.lr_schedule,
        weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm, seed=args.seed,
        save_every=args.save_every, eval_every=args.eval_every, keep_checkpoints=args.keep_checkpoints)
    run_args = {k: getattr(args, k) for k in RUN_FLAGS}
    trainer = Trainer(trainable, batches, train_config, out, eval_batches=eval_batches,
                      run_info={"args": run_args}, progress=args.progress, threads=args.threads)
    if args.resume:
        trainer.resume()
        print(f"resuming at step {trainer.step} of {steps}", file=sys.stderr)
    print(f"{len(examples)} examples ({batches.n_tokens():,} tokens), {steps} steps of "
          f"{args.grad_accum} x {args.batch_size} examples; {adapter.n_trainable():,} trainable "
          f"parameters; loaded in {time.perf_counter() - started:.1f} s", file=sys.stderr)

    try:
        history = trainer.train()
    except KeyboardInterrupt:
        print(f"stopped at step {trainer.step}; checkpoint saved in {out}. Continue with "
              f"the same command and --resume.", file=sys.stderr)
        return 130
    save_adapter(out, adapter)
    trainer.plot()
    if history:
        last = history[-1]
        extra = f", eval loss {last['eval_loss']:.4f}" if "eval_loss" in last else ""
        print(f"done: step {trainer.step}, loss {last['loss']:.4f}{extra}; adapter in {out} "
              f"(python -m llama_np.chat --adapter {out})", file=sys.stderr)
    return 0


def _start_from(adapter, previous, source):
    """Copy the tensors of `previous` into `adapter` where names and shapes match."""
    copied = 0
    for name, value in previous.params.items():
        if name in adapter.params:
            if adapter.params[name].shape != value.shape:
                raise ValueError(f"--init-adapter {source}: {name} has shape {value.shape}, "
                                 f"this run's is {adapter.params[name].shape}")
            adapter.params[name][...] = value
            copied += 1
    if not copied:
        raise ValueError(f"--init-adapter {source}: none of its tensors is trained in this run")


if __name__ == "__main__":
    cli.run(main)
