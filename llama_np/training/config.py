"""`FinetuneConfig`: everything that defines a fine-tuning run, as one typed object.

The `finetune` tool fills it from its flags (the field names are the flags' names), the
recipe builds one per stage, and `training.run.finetune` runs it. Its defaults are the
paper's instruction-tuning setting: LoRA r 8, alpha 32, dropout 0.05 on q, k, v, o, gate,
up, down (docs/recipe.md#hyper-parameters). No heavy imports: the tools' `--help` reads it.
"""
import os
from dataclasses import dataclass, fields

TRAINABLE = ("lora", "embeddings", "lm_head")
DEFAULT_MAX_SEQ_LEN = 512  # the paper's max length


@dataclass
class FinetuneConfig:
    model: str = "default"             # .gguf file or Hugging Face folder
    data: str | None = None            # Alpaca .json/.jsonl, or plain .txt
    eval_data: str | None = None
    out: str | None = None             # folder for the adapter, checkpoints, log and plot
    init_adapter: str | None = None    # start from this adapter's tensors where they match
    # what trains
    lora_r: int = 8
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    target_modules: str = "q,k,v,o,gate,up,down"
    use_rslora: bool = False
    trainable: str = "lora"            # comma list of TRAINABLE
    embedding_rows_from: int | None = None
    # optimisation
    lr: float = 2e-4
    embedding_lr: float | None = None
    batch_size: int = 4
    grad_accum: int = 1
    max_seq_len: int | None = None     # None: DEFAULT_MAX_SEQ_LEN or the model's context
    steps: int | None = None           # None: --epochs (one by default)
    epochs: float | None = None
    warmup_ratio: float = 0.03
    lr_schedule: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    # running
    save_every: int = 100
    eval_every: int = 0
    keep_checkpoints: int = 2
    base_dtype: str = "quantized"
    threads: int = os.cpu_count() or 1
    progress: bool = True


DEFAULTS = {f.name: f.default for f in fields(FinetuneConfig)}
# The settings that describe the run itself; on --resume they come from the checkpoint.
# (threads too: the batch is split into that many shards, and dropout masks follow it.)
RUN_FLAGS = [name for name in DEFAULTS if name != "progress"]
