"""The Chinese-LLaMA/Alpaca recipe (Cui, Yang & Yao 2023) as a Python pipeline.

Five steps, each a typed function; each writes what the next starts from:

    1. extend the vocabulary   extend(base, text, DIR/tokenizer/, new_tokens)       chinese.vocab_bpe
    2. resize the embeddings   resize(base, DIR/tokenizer/, DIR/resized.gguf)       chinese.resize
    3. pre-training stage 1    finetune(stage_configs(…)["stage1"]): the embedding alone learns
    4. pre-training stage 2    … ["stage2"]: LoRA on attention (or all seven) + embedding/head
    5. instruction tuning      … ["sft"]: LoRA on attention and MLP, alpaca_zh instructions
    after each: held_out_bits_per_char(model, adapter)                              chinese.bits_per_char

`run_recipe(RecipeConfig(out=DIR))` runs them in order; a step whose output exists is
skipped and an interrupted training stage resumes from its latest checkpoint, so running
it again finishes what is missing. Results go to DIR/results.json, DIR/results.md and
DIR/bits_per_char.png (docs/recipe.md).
"""
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from llama_np.checkpoint import load_model
from llama_np.checkpoint.gguf_file import GGUFFile
from llama_np.checkpoint.peft import load_adapter
from llama_np.chinese import corpus
from llama_np.chinese.bits_per_char import held_out_bits_per_char
from llama_np.chinese.defaults import (BUDGETS, DEFAULT_BUDGET, DEFAULT_EMBEDDING_LR, DEFAULT_INIT, DEFAULT_LORA, DEFAULT_LR,
                                       DEFAULT_PRETRAIN_TEXT, DEFAULT_STAGE2_TARGETS, STAGE_SEEDS, STAGES)
from llama_np.chinese.resize import resize_checkpoint
from llama_np.chinese.vocab_bpe import extend_tokenizer, extension_summary
from llama_np.files import hub
from llama_np.files.atomic import atomic_write_text
from llama_np.files.figure import new_figure, save_figure
from llama_np.files.text import read_json
from llama_np.llama.adapter import EMBED, LM_HEAD, merge
from llama_np.training.config import FinetuneConfig
from llama_np.training.export import export_torch
from llama_np.training.run import finetune
from llama_np.training.trainer import LATEST, LOG_FILE, checkpoints, read_log

PLOT_FILE = "bits_per_char.png"


_DEFAULT = BUDGETS[DEFAULT_BUDGET]


@dataclass
class RecipeConfig:
    """Everything the recipe's run depends on (the recipe tool's flags); the defaults are the
    default budget's (defaults.BUDGETS)."""
    out: str
    model: str = "default"
    new_tokens: int = _DEFAULT["new_tokens"]
    pretrain_text: tuple = DEFAULT_PRETRAIN_TEXT
    pretrain_files: tuple = ()                      # the user's own text files, one document a line
    documents: int | None = _DEFAULT["documents"]   # only the first N training documents
    stage1_rows: str = "new"                # "new": stage 1 trains the new tokens' rows only
    stage2_rows: str = "all"                # "new": stage 2 too (beside its LoRA); "all": every row
    steps: dict = field(default_factory=lambda: dict(_DEFAULT["steps"]))
    lr: dict = field(default_factory=lambda: dict(DEFAULT_LR))
    embedding_lr: dict = field(default_factory=lambda: dict(DEFAULT_EMBEDDING_LR))
    stage2_target_modules: str = DEFAULT_STAGE2_TARGETS
    lora_r: int = DEFAULT_LORA["lora_r"]            # stage 2's and SFT's LoRA
    lora_alpha: float = DEFAULT_LORA["lora_alpha"]
    lora_dropout: float = DEFAULT_LORA["lora_dropout"]
    # the resized model's head a copy of its own: measured 0.045 bits per character worse after
    # 300 stage-2 steps than the tied head, and slower (docs/benchmarks.md#recipe)
    untie_head: bool = False
    max_seq_len: int = _DEFAULT["max_seq_len"]
    batch_size: int = 2
    save_every: int = 100
    keep_checkpoints: int = 2
    eval_ctx: int = _DEFAULT["eval_ctx"]
    eval_windows: int = _DEFAULT["eval_windows"]
    threads: int = os.cpu_count() or 1


def budget_config(budget, steps=None, **settings):
    """The RecipeConfig of `budget` (a key of defaults.BUDGETS): the budget's settings over
    RecipeConfig's defaults, then `settings` and `steps` ({stage: steps}, stage by stage) over
    both — what the recipe tool's --budget and the flags given beside it mean."""
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; expected one of {', '.join(BUDGETS)}")
    chosen = {name: value for name, value in BUDGETS[budget].items() if name != "steps"}
    return RecipeConfig(**{**chosen, **settings}, steps={**BUDGETS[budget]["steps"], **(steps or {})})


def extend(base, text_path, tokenizer_dir, new_tokens):
    """Step 1: the extended tokenizer, learnt from the pre-training text."""
    documents = corpus.read_text_file(text_path)
    extension, metadata = extend_tokenizer(base, documents, tokenizer_dir, new_tokens)
    print(extension_summary(extension, metadata, documents, tokenizer_dir))


def resize(base, tokenizer_dir, resized, init=DEFAULT_INIT, untie=False):
    """Step 2: the base model grown to the extended vocabulary (with `untie`, its head
    untied from the embedding first)."""
    old_vocab, new_vocab = resize_checkpoint(base, tokenizer_dir, resized, init, untie)
    print(f"resized {old_vocab} → {new_vocab} tokens (new rows: {init}{'; head untied' if untie else ''}); "
          f"wrote {resized}", file=sys.stderr)


def stage_configs(config, resized, pretrain_text, old_vocab):
    """Steps 3-5: the FinetuneConfig of each training stage."""
    lora = {"lora_r": config.lora_r, "lora_alpha": config.lora_alpha, "lora_dropout": config.lora_dropout}

    def rows_from(choice):
        """embedding_rows_from for a --stageN-rows choice: "new" trains the new tokens' rows only."""
        return old_vocab if choice == "new" else None

    def stage(name, **what_trains):
        return FinetuneConfig(
            model=resized, out=os.path.join(config.out, name), steps=config.steps[name], lr=config.lr[name],
            embedding_lr=config.embedding_lr.get(name), seed=STAGE_SEEDS[name], max_seq_len=config.max_seq_len,
            batch_size=config.batch_size, save_every=config.save_every, keep_checkpoints=config.keep_checkpoints,
            threads=config.threads, progress=False, base_dtype="float32", **what_trains)

    return {
        # an untied head's new rows are as new as the embedding's: stage 1 trains both
        "stage1": stage("stage1", data=pretrain_text, trainable="embeddings,lm_head" if config.untie_head else "embeddings",
                        embedding_rows_from=rows_from(config.stage1_rows)),
        "stage2": stage("stage2", data=pretrain_text, trainable="lora,embeddings,lm_head",
                        target_modules=config.stage2_target_modules, **lora,
                        embedding_rows_from=rows_from(config.stage2_rows),
                        init_adapter=os.path.join(config.out, "stage1")),
        "sft": stage("sft", data=hub.data_path(corpus.ALPACA_ZH_FILE), trainable="lora,embeddings,lm_head",
                     target_modules="all", **lora, init_adapter=os.path.join(config.out, "stage2")),
    }


def run_recipe(config: RecipeConfig, stop_before=None):
    """Run (or finish) the recipe into config.out; see the module docstring. With
    `stop_before` (a training stage), stop once what that stage starts from is done. Returns
    the stages' FinetuneConfigs (stage_configs)."""
    out = config.out
    base = hub.resolve_model(config.model)
    tokenizer_dir = os.path.join(out, "tokenizer")
    resized = os.path.join(out, "resized.gguf")
    pretrain_text = os.path.join(out, "zh_train.txt")
    # First, before anything is written: a missing model or an unreadable user file stops
    # the run at once and leaves no half-made --out folder behind.
    documents = None if os.path.exists(pretrain_text) else (
        corpus.chinese_documents("train", config.pretrain_text) + corpus.read_text_files(config.pretrain_files))
    os.makedirs(out, exist_ok=True)
    if documents is not None:
        corpus.write_text_file(documents[:config.documents], pretrain_text)
    results_path = os.path.join(out, "results.json")
    results = read_json(results_path, missing=None) or {"steps": {}}

    def record(name, **values):
        results["steps"].setdefault(name, {}).update(values)
        atomic_write_text(results_path, json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        atomic_write_text(os.path.join(out, "results.md"), results_markdown(results))

    def evaluate(name, model_path, adapter=None):
        if "bits_per_char" not in results["steps"].get(name, {}):
            result = held_out_bits_per_char(model_path, adapter, config.eval_ctx, config.eval_windows)
            record(name, bits_per_char=result.bits_per_char, eval_tokens=result.tokens,
                   eval_chars=result.chars)
        print(f"{name}: {results['steps'][name]['bits_per_char']:.3f} bits per character", file=sys.stderr)

    def learning_curve(stage, folder):
        """Held-out bits per character at each checkpoint the stage kept (its last step is
        the stage's own evaluation)."""
        result = results["steps"][stage]
        curve = dict(result.get("curve", {}))
        for step, path in checkpoints(folder):
            if str(step) not in curve and step < result["steps"]:
                curve[str(step)] = held_out_bits_per_char(resized, path, config.eval_ctx,
                                                          config.eval_windows).bits_per_char
        curve[str(result["steps"])] = result["bits_per_char"]
        record(stage, curve=dict(sorted(curve.items(), key=lambda item: int(item[0]))))

    evaluate("base", base)
    # A step is done when its output exists and results.json records it: a kill between the
    # two (the output renamed into place, the record not yet written) redoes the step.
    def done(name, path):
        return os.path.exists(path) and name in results["steps"]

    if not done("tokenizer", os.path.join(tokenizer_dir, "tokenizer.gguf")):
        _timed(record, "tokenizer", lambda: extend(base, pretrain_text, tokenizer_dir, config.new_tokens))
    if not done("resized", resized):
        _timed(record, "resized", lambda: resize(base, tokenizer_dir, resized, untie=config.untie_head))
    evaluate("resized", resized)

    old_vocab = len(GGUFFile(base).metadata["tokenizer.ggml.tokens"])
    stages = stage_configs(config, resized, pretrain_text, old_vocab)
    for stage in STAGES:
        if stage == stop_before:
            return stages
        folder = os.path.join(out, stage)
        trained = "steps" in results["steps"].get(stage, {})  # recorded after the stage's last write
        if not (trained and os.path.exists(os.path.join(folder, "adapter_model.safetensors"))):
            settings = stages[stage]
            resume = os.path.exists(os.path.join(folder, LATEST))
            if not resume and os.path.isdir(folder):
                shutil.rmtree(folder)  # stopped before its first checkpoint: the stage starts again
            _timed(record, stage, lambda: finetune(settings, resume=resume))
            record(stage, steps=settings.steps, lr=settings.lr, embedding_lr=settings.embedding_lr or settings.lr,
                   **_lora_settings(folder), **_training_summary(folder))
        if stage == "stage1" and "non_embedding_unchanged" not in results["steps"]["stage1"]:
            record(stage, non_embedding_unchanged=stage1_left_transformer_alone(resized, folder))
        evaluate(stage, resized, folder)
        learning_curve(stage, folder)
    plot_results(results, os.path.join(out, PLOT_FILE))
    final = results["steps"]["sft"]["bits_per_char"]
    before = results["steps"]["base"]["bits_per_char"]
    print(f"held-out bits per character: base {before:.3f} → after the recipe {final:.3f} "
          f"({relative_change(before, final)}); {os.path.join(out, 'results.md')}, "
          f"{os.path.join(out, PLOT_FILE)}", file=sys.stderr)
    return stages


def export_stage(config: RecipeConfig, stage, export_dir):
    """Write training stage `stage` (stage2 or sft) for Hugging Face Trainer + peft on GPUs
    into export_dir (training.export: the resized model, its tokenizer, the stage's batches,
    its starting adapter, the script, a DeepSpeed ZeRO-2 config), after running the recipe's
    steps before it where they are missing. Returns the train_config.json written."""
    if stage not in STAGES[1:]:
        raise ValueError(f"--export-stage {stage}: choose {' or '.join(STAGES[1:])} (stage 1 trains the "
                         f"embedding alone, without LoRA: minutes on a CPU)")
    settings = run_recipe(config, stop_before=stage)[stage]
    return export_torch(settings, export_dir)


def relative_change(before, after):
    """`after` against `before` in words: "-15.2%, lower" or "+23.3%, higher"."""
    change = 100 * (after - before) / before
    return f"{change:+.1f}%, " + ("lower" if change < 0 else "higher" if change > 0 else "unchanged")


def stage1_left_transformer_alone(model_path, adapter_dir):
    """True when the model with stage 1's adapter merged has every parameter but the
    embedding (and a head tied to it) bit-identical to the model without: compared by a
    sha256 of each tensor's bytes."""

    model, _ = load_model(model_path)
    adapter = load_adapter(adapter_dir, tied_base=model.config.tie_word_embeddings)
    adapter.check_compatible(model.config, model.weights, source=adapter_dir)
    _, merged = merge(model.config, model.weights, adapter)
    return all(tensor_hash(weight) == tensor_hash(merged[name])
               for name, weight in model.weights.items() if name not in (EMBED, LM_HEAD))


def tensor_hash(weight):
    """sha256 of a tensor's stored bytes (a QuantizedMatrix's blocks, an array's values)."""
    data = weight.data if hasattr(weight, "qtype") else weight
    return hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()


def _training_summary(folder):
    """Tokens seen, final loss and time of a finetune run, from its train_log.jsonl. The time
    is the sum of the steps' own: a stage resumed after an interruption counts each step
    once, where the clock of the last run would count only the steps since the resume."""
    log = [r for r in read_log(os.path.join(folder, LOG_FILE)) if "loss" in r]
    tokens = sum(r.get("tokens", 0) for r in log)
    return {"final_loss": log[-1]["loss"] if log else None, "tokens": tokens or None,
            "seconds": round(sum(r.get("seconds", 0) for r in log), 1)}


def _lora_settings(folder):
    """The projections a finetune run put LoRA on, and its rank, alpha and dropout, from its
    adapter_config.json (stage 1's has no LoRA: no targets)."""
    adapter = read_json(os.path.join(folder, "adapter_config.json"))
    targets = adapter.get("target_modules") or []
    lora = {"lora_r": adapter.get("r"), "lora_alpha": adapter.get("lora_alpha"),
            "lora_dropout": adapter.get("lora_dropout")} if targets else {}
    return {"lora_targets": targets, **lora}


def _timed(record, name, step):
    started = time.perf_counter()
    code = step()
    if code:
        raise RuntimeError(f"{name} stopped (exit code {code}); rerun the recipe to continue")
    record(name, seconds=round(time.perf_counter() - started, 1))


def plot_results(results, png_path):
    """Held-out bits per character through the recipe, as a PNG: the resized model at step
    0, then each training stage along its kept checkpoints, on one axis of optimizer steps;
    the base model's level and 15% below it (the goal llama_np set for its README run) as
    lines."""
    steps = results["steps"]
    fig = new_figure((7, 4))
    ax = fig.subplots()
    base = steps["base"]["bits_per_char"]
    ax.axhline(base, color="grey", linestyle=":", label=f"base model ({base:.2f})")
    ax.axhline(0.85 * base, color="tab:green", linestyle="--", label=f"15% below the base ({0.85 * base:.2f})")
    x, y = 0, steps["resized"]["bits_per_char"]
    ax.plot([x], [y], "ko", label=f"resized ({y:.2f})")
    for stage in STAGES:
        curve = steps.get(stage, {}).get("curve")
        if not curve:
            break
        xs = [x] + [x + int(step) for step in curve]
        ys = [y] + list(curve.values())
        ax.plot(xs, ys, "o-", markersize=3, label=f"{stage} ({ys[-1]:.2f})")
        x, y = xs[-1], ys[-1]
    ax.set_xlabel("optimizer steps (stage 1, stage 2, SFT in turn)")
    ax.set_ylabel("held-out bits per character")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, png_path)


def results_markdown(results):
    """The results as a markdown table: one row per step, bits per character and time."""
    lines = ["| step | held-out bits/char | steps | lr (embedding lr) | tokens trained | final loss | time (s) |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results["steps"].items():
        bpc = f"{r['bits_per_char']:.3f}" if "bits_per_char" in r else ""
        loss = f"{r['final_loss']:.3f}" if r.get("final_loss") is not None else ""
        lr = f"{r['lr']:g}" if "lr" in r else ""
        if r.get("embedding_lr") not in (None, r.get("lr")):
            lr += f" ({r['embedding_lr']:g})"
        lines.append(f"| {name} | {bpc} | {r.get('steps', '')} | {lr} | "
                     f"{r.get('tokens') or ''} | {loss} | {r.get('seconds', '')} |")
    for name, r in results["steps"].items():
        if len(r.get("curve", {})) > 1:
            points = ", ".join(f"step {step} {bpc:.3f}" for step, bpc in r["curve"].items())
            lines.append(f"\n{name}, held-out bits/char during training: {points}")
    return "\n".join(lines) + "\n"
