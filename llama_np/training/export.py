"""A fine-tuning run written for PyTorch: what a user who outgrows the CPU runs on GPUs, on
the paper's own stack (Hugging Face Trainer + peft + DeepSpeed, scripts/training/ of
ymcui/Chinese-LLaMA-Alpaca), computing the same steps as llama_np's trainer.

`export_torch(settings, out)` takes the `FinetuneConfig` of a run and writes, without
training anything (and without importing torch: it only writes files):

    model/               the base model as a Hugging Face folder (float32) with its tokenizer
    adapter/             the adapter training starts from (PEFT): LoRA A drawn from the
                         run's seed and B = 0, the init-adapter's tensors copied in
    train.jsonl          the examples of every optimizer step, in the order llama_np trains on
    train_config.json    the hyper-parameters of llama_np's trainer, for train.py
    train.py             Trainer + peft, reading the three above (export_files/train.py.txt)
    ds_zero2.json        a DeepSpeed ZeRO-2 config like the paper's ds_zero2_no_offload.json
    run.sh, README.md    the torchrun command; how to run on one machine or many

What makes the two engines' losses equal, step by step (checked by tests/test_export.py):
the same batches (step s = lines s·G … s·G + G - 1 of train.jsonl, G the global batch,
read in order; a short step is filled with rows without targets), the loss averaged over the
targets of the whole global batch, the same warm-up steps and schedule, AdamW's constants,
weight decay on every trained tensor, and clipping of the global gradient norm.
"""
import json
import os
import shutil
from string import Template

from llama_np.checkpoint.merge import write_hf
from llama_np.checkpoint.peft import save_adapter
from llama_np.files import hub
from llama_np.files.atomic import atomic_path, atomic_write_text
from llama_np.ops import IGNORE_INDEX
from llama_np.training.run import (initial_adapter, load_base, total_steps, trainable_parts, trainer_config,
                                   training_batches)
from llama_np.training.trainer import ADAM_BETAS, ADAM_EPS

FILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "export_files")
MODEL_DIR, ADAPTER_DIR = "model", "adapter"
DATA_FILE, CONFIG_FILE, DEEPSPEED_FILE = "train.jsonl", "train_config.json", "ds_zero2.json"
SCRIPT, RUN_SCRIPT, README = "train.py", "run.sh", "README.md"
# llama_np's schedules by transformers' names (training.trainer.learning_rate: both warm up
# linearly from 0, then decay to 0 at the last step or stay constant)
SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


class ExportError(ValueError):
    """A run that the PyTorch export cannot reproduce."""


def deepspeed_zero2_config():
    """ZeRO stage 2 without offload, as the paper's ds_zero2_no_offload.json: optimizer state
    and gradients partitioned over the processes, fp16 when train.py is given --fp16. "auto"
    is filled by transformers from train.py's TrainingArguments (batch sizes, clipping). The
    paper's min_loss_scale of 1e-10 is 1 here: DeepSpeed (0.19) takes only a whole number ≥ 1
    there, and refuses the paper's file."""
    return {
        "fp16": {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 100, "initial_scale_power": 16,
                 "hysteresis": 2, "min_loss_scale": 1},
        "bf16": {"enabled": "auto"},
        "zero_optimization": {"stage": 2, "allgather_partitions": True, "allgather_bucket_size": 100_000_000,
                              "overlap_comm": True, "reduce_scatter": True, "reduce_bucket_size": 100_000_000,
                              "contiguous_gradients": True},
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "steps_per_print": 2000,
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "wall_clock_breakdown": False,
    }


def peft_lora_kwargs(lora_config):
    """The arguments of peft.LoraConfig that train what llama_np's `lora_config` does:
    `peft.LoraConfig(task_type="CAUSAL_LM", **peft_lora_kwargs(c))` (train.py's "lora")."""
    return {"r": lora_config.r, "lora_alpha": lora_config.lora_alpha, "lora_dropout": lora_config.lora_dropout,
            "target_modules": list(lora_config.target_modules),
            "modules_to_save": list(lora_config.modules_to_save) or None,
            "use_rslora": lora_config.use_rslora, "ensure_weight_tying": lora_config.ensure_weight_tying}


def step_rows(batches, steps, grad_accum, pad_id):
    """The lines of train.jsonl: for each optimizer step, the examples of its `grad_accum`
    micro-batches in order, then filler rows (one pad token, no target) up to the global batch
    of batch_size × grad_accum, so that every step has the same number of rows."""
    global_batch = batches.batch_size * grad_accum
    for step in range(steps):
        examples = [e for k in range(grad_accum) for e in batches.micro_batch_examples(step * grad_accum + k)]
        for e in examples:
            yield {"step": step, "input_ids": e.ids.tolist(), "labels": e.labels.tolist()}
        for _ in range(global_batch - len(examples)):
            yield {"step": step, "input_ids": [pad_id], "labels": [IGNORE_INDEX]}


def export_torch(settings, out):
    """Write the run `settings` (a FinetuneConfig) describes into the folder `out` for
    Trainer + peft (see the module docstring). Returns the train_config.json written, as a dict."""
    parts = trainable_parts(settings.trainable)
    if "lora" not in parts:
        raise ExportError("the PyTorch export writes a LoRA run; this one trains no LoRA (--trainable "
                          f"{settings.trainable}): run it with llama_np, it trains the embedding alone")
    if settings.embedding_rows_from is not None:
        raise ExportError("the PyTorch export cannot limit the embedding's training to some rows "
                          "(finetune's --embedding-rows-from, the recipe's --stage2-rows new)")
    if os.path.isdir(out) and os.listdir(out) and not os.path.exists(os.path.join(out, CONFIG_FILE)):
        raise ExportError(f"{out} is not empty and holds no earlier export; choose another folder")
    os.makedirs(out, exist_ok=True)

    config, weights, tokenizer = load_base(settings)
    _, batches = training_batches(settings, tokenizer)
    steps = total_steps(settings, batches)
    adapter = initial_adapter(settings, config, weights)
    train = trainer_config(settings, steps)

    write_hf(os.path.join(out, MODEL_DIR), config, weights, hub.resolve_model(settings.model))
    save_adapter(os.path.join(out, ADAPTER_DIR), adapter)
    with atomic_path(os.path.join(out, DATA_FILE)) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in step_rows(batches, steps, settings.grad_accum, batches.pad_id):
            f.write(json.dumps(row) + "\n")

    run = {
        "model": MODEL_DIR, "adapter": ADAPTER_DIR, "data": DATA_FILE, "pad_token_id": int(batches.pad_id),
        "steps": steps, "global_batch_size": settings.batch_size * settings.grad_accum,
        "max_seq_len": settings.max_seq_len,
        "lora": peft_lora_kwargs(adapter.config),
        "lr": train.lr, "embedding_lr": train.embedding_lr,
        "lr_scheduler_type": SCHEDULES[train.schedule], "warmup_steps": train.warmup_steps,
        "weight_decay": train.weight_decay, "max_grad_norm": train.max_grad_norm,
        "adam_beta1": ADAM_BETAS[0], "adam_beta2": ADAM_BETAS[1], "adam_epsilon": ADAM_EPS,
        "seed": settings.seed,
    }
    atomic_write_text(os.path.join(out, CONFIG_FILE), json.dumps(run, indent=2) + "\n")
    atomic_write_text(os.path.join(out, DEEPSPEED_FILE), json.dumps(deepspeed_zero2_config(), indent=2) + "\n")
    for template, name in (("train.py.txt", SCRIPT), ("run.sh.txt", RUN_SCRIPT)):
        with atomic_path(os.path.join(out, name)) as tmp:
            shutil.copyfile(os.path.join(FILES, template), tmp)
    atomic_write_text(os.path.join(out, README), _readme(run, settings))
    return run


def _readme(run, settings):
    with open(os.path.join(FILES, "README.md.txt"), encoding="utf-8") as f:
        template = Template(f.read())
    lora = run["lora"]
    return template.substitute(
        steps=run["steps"], global_batch=run["global_batch_size"], max_seq_len=run["max_seq_len"],
        r=lora["r"], alpha=lora["lora_alpha"], dropout=lora["lora_dropout"],
        targets=", ".join(lora["target_modules"]), modules_to_save=", ".join(lora["modules_to_save"] or []) or "none",
        lr=run["lr"], embedding_lr=run["embedding_lr"] if run["embedding_lr"] is not None else run["lr"],
        schedule=run["lr_scheduler_type"], warmup=run["warmup_steps"], weight_decay=run["weight_decay"],
        max_grad_norm=run["max_grad_norm"], betas=f"{run['adam_beta1']}, {run['adam_beta2']}",
        eps=run["adam_epsilon"], seed=run["seed"], data=settings.data, model=settings.model)
