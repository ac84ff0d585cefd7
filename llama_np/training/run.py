"""Running a fine-tuning: `finetune(config)` loads the model and the data a `FinetuneConfig`
names, builds the adapter (LoRA on the targeted projections, copies of the embedding and
the head when they train), and trains it with the `Trainer`, writing into `config.out`:

    adapter_config.json + adapter_model.safetensors   the final adapter (PEFT format)
    checkpoint-N/                                     resumable checkpoints
    train_log.jsonl, loss.png                         one line per step; the loss curve

The `finetune` tool and every training stage of the recipe run through this function.
"""
import math
import os
import sys
import time

import numpy as np

from llama_np.checkpoint import load_model
from llama_np.checkpoint.peft import load_adapter, save_adapter
from llama_np.files import hub
from llama_np.llama import adapter as lora
from llama_np.quant import dense
from llama_np.training.blas_kernels import warn_if_narrower_kernels
from llama_np.training.config import DEFAULT_MAX_SEQ_LEN, RUN_FLAGS, TRAINABLE
from llama_np.training.data import BatchSchedule, load_examples
from llama_np.training.trainable import TrainableLlama
from llama_np.training.trainer import LATEST, LOG_FILE, TrainConfig, Trainer


def finetune(settings, resume=False):
    """Train the run `settings` (a FinetuneConfig) describes; with `resume`, continue it
    from the latest checkpoint in settings.out. Returns 0, or 130 when interrupted (Ctrl-C: a
    checkpoint is saved first)."""
    if "lora" in trainable_parts(settings.trainable):  # a mistake in these ends the run before loading
        lora.parse_target_modules(settings.target_modules)
    out = settings.out
    if not resume and os.path.exists(os.path.join(out, LATEST)):
        raise ValueError(f"{out} already holds a training run: add --resume to continue it, "
                         f"or choose another --out")
    if not resume and os.path.exists(os.path.join(out, LOG_FILE)):
        # a run stopped before its first checkpoint: nothing to resume, so it starts again
        print(f"note: {out} holds the log of a run stopped before its first checkpoint; "
              f"starting it again", file=sys.stderr)
        os.remove(os.path.join(out, LOG_FILE))

    warn_if_narrower_kernels()
    started = time.perf_counter()
    config, weights, tokenizer = load_base(settings)
    examples, batches = training_batches(settings, tokenizer)
    eval_batches = None
    if settings.eval_data:
        eval_examples, notes = load_examples(settings.eval_data, tokenizer, settings.max_seq_len)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        eval_batches = BatchSchedule(eval_examples, settings.batch_size, batches.pad_id, shuffle=False)
    steps = total_steps(settings, batches)
    adapter = initial_adapter(settings, config, weights, start_from_init=not resume)
    rows = None if settings.embedding_rows_from is None else np.arange(settings.embedding_rows_from, config.vocab_size)
    trainable = TrainableLlama(config, weights, adapter, trainable_rows=rows)
    train_config = trainer_config(settings, steps)
    run_args = {k: getattr(settings, k) for k in RUN_FLAGS}
    trainer = Trainer(trainable, batches, train_config, out, eval_batches=eval_batches,
                      run_info={"args": run_args}, progress=settings.progress, threads=settings.threads)
    if resume:
        trainer.resume()
        print(f"resuming at step {trainer.step} of {steps}", file=sys.stderr)
    print(f"{len(examples)} examples ({batches.n_tokens():,} tokens), {steps} steps of "
          f"{settings.grad_accum} x {settings.batch_size} examples; {adapter.n_trainable():,} trainable "
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



# The pieces of a run, shared with training.export (which writes the same run for PyTorch).
def load_base(settings):
    """The frozen base model a run trains on: (LlamaConfig, weights, tokenizer). Fills in
    settings.max_seq_len when it is None and checks the settings against the model."""
    model, tokenizer = load_model(hub.resolve_model(settings.model))
    config, weights = model.config, model.weights
    if settings.max_seq_len is None:
        settings.max_seq_len = min(DEFAULT_MAX_SEQ_LEN, config.max_context)
    if settings.max_seq_len > config.max_context:
        raise ValueError(f"--max-seq-len {settings.max_seq_len} exceeds the model's context of "
                         f"{config.max_context} positions")
    if settings.base_dtype == "float32":
        weights = {name: dense(w) for name, w in weights.items()}
    if settings.embedding_rows_from is not None and settings.embedding_rows_from >= config.vocab_size:
        raise ValueError(f"--embedding-rows-from {settings.embedding_rows_from} is beyond the "
                         f"vocabulary of {config.vocab_size}")
    return config, weights, tokenizer


def training_batches(settings, tokenizer):
    """(examples, BatchSchedule) of settings.data: micro-batch m is batches.micro_batch(m)."""
    examples, notes = load_examples(settings.data, tokenizer, settings.max_seq_len)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else (tokenizer.eos_id or 0)
    return examples, BatchSchedule(examples, settings.batch_size, pad_id, seed=settings.seed)


def total_steps(settings, batches):
    """Optimizer steps of the run: settings.steps, or settings.epochs (one) of the data."""
    if settings.grad_accum > len(batches):  # 10⁹ would be one step over the data 10⁹ times
        raise ValueError(f"--grad-accum {settings.grad_accum} exceeds the {len(batches)} micro-batches "
                         f"of --batch-size {settings.batch_size} one pass over the data makes")
    steps_per_epoch = math.ceil(len(batches) / settings.grad_accum)
    return settings.steps or max(1, round((settings.epochs or 1.0) * steps_per_epoch))


def adapter_config(settings, tied_base):
    """The LoraConfig of a run: LoRA on settings.target_modules, full copies of the embedding
    and head (modules_to_save) as settings.trainable says; on a base whose head is tied to
    the embedding (`tied_base`) one copy serves both, as the base shares one matrix."""
    parts = trainable_parts(settings.trainable)
    targets = lora.parse_target_modules(settings.target_modules) if "lora" in parts else []
    modules_to_save = [m for m, part in (("embed_tokens", "embeddings"), ("lm_head", "lm_head")) if part in parts]
    return lora.LoraConfig(
        r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
        target_modules=targets, modules_to_save=modules_to_save, use_rslora=settings.use_rslora,
        ensure_weight_tying=tied_base and bool(modules_to_save),
        base_model_name_or_path=str(settings.model))


def initial_adapter(settings, config, weights, start_from_init=True):
    """The adapter as training starts: LoRA on the targeted projections (A drawn from
    settings.seed, B zero), copies of the embedding and head that train; with
    `start_from_init`, settings.init_adapter's tensors copied in where they match."""
    adapter = lora.Adapter.init(config, weights, adapter_config(settings, config.tie_word_embeddings),
                                np.random.default_rng(settings.seed))
    if settings.init_adapter and start_from_init:
        previous = load_adapter(settings.init_adapter, tied_base=config.tie_word_embeddings)
        previous.check_compatible(config, weights, source=f"--init-adapter {settings.init_adapter}")
        _start_from(adapter, previous, settings.init_adapter)
    return adapter


def trainer_config(settings, steps):
    """The Trainer's settings of a run of `steps` optimizer steps."""
    return TrainConfig(
        lr=settings.lr, embedding_lr=settings.embedding_lr, steps=steps, grad_accum=settings.grad_accum,
        warmup_steps=int(round(settings.warmup_ratio * steps)), schedule=settings.lr_schedule,
        weight_decay=settings.weight_decay, max_grad_norm=settings.max_grad_norm, seed=settings.seed,
        save_every=settings.save_every, eval_every=settings.eval_every, keep_checkpoints=settings.keep_checkpoints)

def trainable_parts(spec):
    parts = [s.strip() for s in spec.split(",") if s.strip()]
    for part in parts:
        if part not in TRAINABLE:
            raise ValueError(f"--trainable: unknown part {part!r}; choose from {', '.join(TRAINABLE)}")
    if not parts:
        raise ValueError("--trainable: nothing to train")
    return parts


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
