"""`python -m llama_np.recipe --out DIR`: the Chinese-LLaMA/Alpaca recipe, end to end.

    python -m llama_np.recipe --out runs/recipe          # the defaults: ≈ 30 min on 2 cores
    python -m llama_np.recipe --out runs/recipe          # again: finishes what is missing
    python -m llama_np.recipe --out runs/long --stage2-target-modules all --stage2-steps 1400
        --pretrain-text cmrc2018,song_ci,cmrc2018_questions,alpaca_zh
                                                         # the README's full run (one line): ≈ 2.3 h

Cui, Yang & Yao (2023) teach an English LLaMA Chinese in five steps; each here is one
command of llama_np, run in order, each writing what the next one starts from:

    1. extend the vocabulary     python -m llama_np.extend_bpe   → DIR/tokenizer/
    2. resize the embeddings     python -m llama_np.resize       → DIR/resized.gguf
    3. pre-training stage 1      python -m llama_np.finetune --trainable embeddings
                                 (transformer frozen; only the embedding learns)       → DIR/stage1/
    4. pre-training stage 2      --trainable lora,embeddings,lm_head --target-modules attention
                                 (or all: --stage2-target-modules)
                                 (starts from stage 1's embedding)                     → DIR/stage2/
    5. instruction tuning (SFT)  --trainable lora,embeddings,lm_head, LoRA on attention and MLP,
                                 on alpaca_zh_demo.json (starts from stage 2's tensors) → DIR/sft/

Pre-training reads the training part of llama_np's Chinese corpus (cmrc2018 Wikipedia
paragraphs + Song ci; `llama_np.chinese.corpus`), never its held-out part; --pretrain-text adds
the mirror's other Chinese text (cmrc2018's questions about the training paragraphs, the
alpaca_zh instructions as running text). After every step the
held-out cmrc2018 text is scored in *bits per character* (`llama_np.perplexity`): unlike
perplexity per token it does not depend on the tokenizer, so the base model (49,152 tokens)
and the extended one can be compared. Results go to DIR/results.json, DIR/results.md and
DIR/bits_per_char.png.

A step whose output exists is skipped, and a training stage resumes from its latest
checkpoint (one every --save-every steps), so an interrupted recipe continues where it
stopped; the checkpoints kept are scored too, and draw each stage's learning curve. The
paper's scale (tens of GB of text, 7B parameters, GPU weeks) becomes, by default, 10k
tokens for stage 1, 100k for stage 2 and 13k for SFT: steps, lengths and learning rates
are flags.
"""
import argparse
import hashlib
import json
import os
import shutil
import sys
import time

from llama_np.cli import common as cli

STAGES = ("stage1", "stage2", "sft")
PLOT_FILE = "bits_per_char.png"
# The paper's LoRA settings (DESIGN.md §3): r 8, alpha 32, dropout 0.05; lr 2e-4 for
# pre-training and 1e-4 for SFT. Measured on the default model (AdamW, 512 tokens a step;
# notes in the README): stage 1 at 2e-3 made held-out text *worse* (Adam moves every new
# row by about lr per element per step, the rarely seen ones too), at 2e-4 it is harmless
# and slow, so stage 1 is short; stage 2 at 1e-3 learns faster than at 2e-4 (lower loss at
# equal steps on the same batches), and most of the budget goes there.
DEFAULT_STEPS = {"stage1": 20, "stage2": 200, "sft": 40}
DEFAULT_LR = {"stage1": 2e-4, "stage2": 1e-3, "sft": 5e-4}
# SFT's data is instructions, not Wikipedia: with the embedding at SFT's own lr (5e-4) it
# cost held-out wiki text 0.116 bits per character after a 1,000-step stage 2; at 1e-4,
# 0.049 (at 1e-5, 0.045: the rest is the LoRA's doing), for the same training loss.
DEFAULT_EMBEDDING_LR = {"stage1": None, "stage2": None, "sft": 1e-4}
# Each stage shuffles the data with its own seed: with one seed for all, stage 2 would
# read again, in the same order, the very examples stage 1 just trained on.
STAGE_SEEDS = {"stage1": 42, "stage2": 43, "sft": 44}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m llama_np.recipe",
        description="Chinese-LLaMA/Alpaca end to end: extend the vocabulary, resize, pre-train "
                    "in two stages, instruction-tune; bits per character after each step.")
    p.add_argument("--model", default="default", help=".gguf base model; 'default' = SmolLM2-135M-Instruct Q4_1")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for every step's output")
    p.add_argument("--new-tokens", type=cli.positive_int, default=4000,
                   help="tokens added to the vocabulary (default: %(default)s)")
    p.add_argument("--pretrain-text", type=_sources, default="cmrc2018,song_ci", metavar="SOURCES",
                   help="the Chinese text the new vocabulary and pre-training learn from (its training "
                        "part): comma-separated, of cmrc2018, song_ci (the corpus) and cmrc2018_questions, "
                        "alpaca_zh (more text; see llama_np.chinese.corpus) (default: %(default)s)")
    p.add_argument("--documents", type=cli.positive_int, default=None,
                   help="use only the first N training documents, for the new vocabulary and for "
                        "pre-training (default: all; 1,016 of the default --pretrain-text)")
    p.add_argument("--stage1-rows", choices=["new", "all"], default="new",
                   help="stage 1 trains the new tokens' rows only, or the whole embedding (default: %(default)s)")
    for stage in STAGES:
        p.add_argument(f"--{stage}-steps", type=cli.positive_int, default=DEFAULT_STEPS[stage],
                       help=f"optimizer steps of {stage} (default: %(default)s)")
        p.add_argument(f"--{stage}-lr", type=cli.positive_float, default=DEFAULT_LR[stage],
                       help=f"peak learning rate of {stage} (default: %(default)s)")
        if stage != "stage1":  # stage 1 trains nothing else
            p.add_argument(f"--{stage}-embedding-lr", type=cli.positive_float, default=DEFAULT_EMBEDDING_LR[stage],
                           help=f"peak learning rate of the embedding (= tied head) in {stage}; "
                                f"default: %(default)s (None: --{stage}-lr)")
    p.add_argument("--stage2-target-modules", default="attention", metavar="MODULES",
                   help="projections that get LoRA in stage 2: attention (the paper's text), all (its "
                        "released scripts; learnt faster here, see the README) or a list like q,k,v,o "
                        "(default: %(default)s)")
    p.add_argument("--max-seq-len", type=cli.positive_int, default=256,
                   help="tokens per training example (the paper: 512; default: %(default)s)")
    p.add_argument("--batch-size", type=cli.positive_int, default=2, help="examples per step (default: %(default)s)")
    p.add_argument("--save-every", type=cli.positive_int, default=100,
                   help="each training stage saves a checkpoint every N steps: an interrupted recipe "
                        "resumes from it, and its held-out bits per character become the stage's "
                        "learning curve in results.md (default: %(default)s)")
    p.add_argument("--keep-checkpoints", type=cli.positive_int, default=2,
                   help="checkpoints kept per stage; more = more points on the curve, ~0.5 GB each "
                        "for the default model (default: %(default)s)")
    p.add_argument("--eval-ctx", type=cli.positive_int, default=256,
                   help="window of the bits-per-character evaluation (default: %(default)s)")
    p.add_argument("--eval-windows", type=cli.positive_int, default=16,
                   help="windows of held-out text scored (default: %(default)s)")
    cli.add_threads_arg(p)
    return p.parse_args(argv)


def _sources(text):
    from llama_np.chinese.corpus import unknown_sources
    sources = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = unknown_sources(sources)
    if unknown or not sources:
        raise argparse.ArgumentTypeError(f"unknown text source {unknown[0]!r}" if unknown else "no source given")
    return sources


def main(argv=None):
    args = parse_args(argv)
    cli.set_threads(args.threads)
    from llama_np import extend_bpe, finetune, resize
    from llama_np.chinese import corpus
    from llama_np.files import hub
    from llama_np.training.trainer import LATEST, checkpoints

    out = args.out
    os.makedirs(out, exist_ok=True)
    base = hub.resolve_model(args.model)
    tokenizer_dir = os.path.join(out, "tokenizer")
    resized = os.path.join(out, "resized.gguf")
    pretrain_text = os.path.join(out, "zh_train.txt")
    results_path = os.path.join(out, "results.json")
    results = _read_json(results_path) or {"steps": {}}

    def record(name, **values):
        results["steps"].setdefault(name, {}).update(values)
        from llama_np.files.atomic import atomic_write_text
        atomic_write_text(results_path, json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        atomic_write_text(os.path.join(out, "results.md"), results_markdown(results))

    def evaluate(name, model_path, adapter=None):
        if "bits_per_char" not in results["steps"].get(name, {}):
            result = held_out_bits_per_char(model_path, adapter, args.eval_ctx, args.eval_windows)
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
                curve[str(step)] = held_out_bits_per_char(resized, path, args.eval_ctx,
                                                          args.eval_windows).bits_per_char
        curve[str(result["steps"])] = result["bits_per_char"]
        record(stage, curve=dict(sorted(curve.items(), key=lambda item: int(item[0]))))

    evaluate("base", base)
    if not os.path.exists(pretrain_text):
        corpus.write_text_file(corpus.chinese_documents("train", args.pretrain_text)[:args.documents], pretrain_text)
    if not os.path.exists(os.path.join(tokenizer_dir, "tokenizer.gguf")):
        _timed(record, "tokenizer", extend_bpe.main, ["--model", base, "--out", tokenizer_dir, "--corpus",
                                                      pretrain_text, "--new-tokens", str(args.new_tokens)])
    if not os.path.exists(resized):
        _timed(record, "resized", resize.main,
               ["--model", base, "--tokenizer", tokenizer_dir, "--out", resized, "--threads", str(args.threads)])
    evaluate("resized", resized)

    from llama_np.checkpoint.gguf_file import GGUFFile
    old_vocab = len(GGUFFile(base).metadata["tokenizer.ggml.tokens"])
    common = ["--model", resized, "--max-seq-len", str(args.max_seq_len), "--batch-size", str(args.batch_size),
              "--save-every", str(args.save_every), "--keep-checkpoints", str(args.keep_checkpoints),
              "--threads", str(args.threads), "--no-progress", "--base-dtype", "float32"]
    stage_flags = {
        "stage1": ["--data", pretrain_text, "--trainable", "embeddings"]
                  + (["--embedding-rows-from", str(old_vocab)] if args.stage1_rows == "new" else []),
        "stage2": ["--data", pretrain_text, "--trainable", "lora,embeddings,lm_head",
                   "--target-modules", args.stage2_target_modules, "--init-adapter", os.path.join(out, "stage1")],
        "sft": ["--data", hub.data_path(corpus.ALPACA_ZH_FILE), "--trainable", "lora,embeddings,lm_head",
                "--target-modules", "all", "--init-adapter", os.path.join(out, "stage2")],
    }
    for stage in STAGES:
        folder = os.path.join(out, stage)
        if not os.path.exists(os.path.join(folder, "adapter_model.safetensors")):
            steps, lr = getattr(args, f"{stage}_steps"), getattr(args, f"{stage}_lr")
            embedding_lr = getattr(args, f"{stage}_embedding_lr", None)
            resume = ["--resume"] if os.path.exists(os.path.join(folder, LATEST)) else []
            if not resume and os.path.isdir(folder):
                shutil.rmtree(folder)  # stopped before its first checkpoint: the stage starts again
            _timed(record, stage, finetune.main, common + stage_flags[stage] + resume +
                   ["--steps", str(steps), "--lr", str(lr), "--seed", str(STAGE_SEEDS[stage]), "--out", folder]
                   + (["--embedding-lr", str(embedding_lr)] if embedding_lr else []))
            record(stage, steps=steps, lr=lr, embedding_lr=embedding_lr or lr,
                   lora_targets=_lora_targets(folder), **_training_summary(folder))
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
    return 0


def relative_change(before, after):
    """`after` against `before` in words: "-15.2%, lower" or "+23.3%, higher"."""
    change = 100 * (after - before) / before
    return f"{change:+.1f}%, " + ("lower" if change < 0 else "higher" if change > 0 else "unchanged")


def held_out_bits_per_char(model_path, adapter, n_ctx, windows):
    """Bits per character of the model (with `adapter`, if any) on the held-out cmrc2018
    paragraphs (never trained on), scored on the *same characters* whatever the tokenizer.

    `llama_np.perplexity` cuts windows of n_ctx *tokens*, so a tokenizer that needs half
    the tokens is scored on twice as much (and other) text; here the windows are cut in
    characters instead (`held_out_spans`): each is encoded as its context (not scored)
    followed by the characters that are, and bits per character = the scored tokens' NLL in
    bits / those characters. Returns a PerplexityResult (ppl and nll per scored token)."""
    import numpy as np
    from llama_np.checkpoint import load_model
    from llama_np.checkpoint.peft import apply_adapters
    from llama_np.perplexity import corpus_text, summarize, token_nll

    model, tokenizer = load_model(model_path)
    if adapter:
        apply_adapters(model, [adapter])
    spans = held_out_spans(corpus_text("cmrc2018"), n_ctx, windows)
    nll_sum = nll_sq_sum = 0.0
    count = chars = n_bytes = 0
    for context, scored in spans:
        context_ids = tokenizer.encode(context, add_bos=tokenizer.add_bos)
        ids = np.asarray(context_ids + tokenizer.encode(scored, add_bos=False), dtype=np.int64)  # [T]
        logits = model.forward(ids, model.new_cache(len(ids)))                                   # [T, V]
        nll = token_nll(logits[len(context_ids) - 1:-1], ids[len(context_ids):])               # [T - context]
        nll_sum += float(nll.sum())
        nll_sq_sum += float(np.square(nll).sum())
        count += len(nll)
        chars += len(scored)
        n_bytes += len(scored.encode("utf-8"))
    return summarize(nll_sum, nll_sq_sum, count, chars, n_bytes, len(spans), n_ctx)


def held_out_spans(text, n_ctx, windows):
    """Up to `windows` consecutive (context, scored) pieces of `text`, n_ctx // 2 characters
    each (about n_ctx tokens of the base tokenizer on Chinese, ~1.7 tokens a character): the
    first quarter is context, the rest is scored."""
    width = max(2, n_ctx // 2)
    context = width // 4
    return [(text[start:start + context], text[start + context:start + width])
            for start in range(0, min(windows * width, len(text) - width + 1), width)]


def stage1_left_transformer_alone(model_path, adapter_dir):
    """True when the model with stage 1's adapter merged has every parameter but the
    embedding (and a head tied to it) bit-identical to the model without: compared by a
    sha256 of each tensor's bytes."""
    from llama_np.checkpoint import load_model
    from llama_np.checkpoint.peft import load_adapter
    from llama_np.llama.adapter import EMBED, LM_HEAD, merge

    model, _ = load_model(model_path)
    adapter = load_adapter(adapter_dir, tied_base=model.config.tie_word_embeddings)
    adapter.check_compatible(model.config, model.weights, source=adapter_dir)
    _, merged = merge(model.config, model.weights, adapter)
    return all(tensor_hash(weight) == tensor_hash(merged[name])
               for name, weight in model.weights.items() if name not in (EMBED, LM_HEAD))


def tensor_hash(weight):
    """sha256 of a tensor's stored bytes (a QuantizedMatrix's blocks, an array's values)."""
    import numpy as np
    data = weight.data if hasattr(weight, "qtype") else weight
    return hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()


def _training_summary(folder):
    """Tokens seen, final loss and time of a finetune run, from its train_log.jsonl. The time
    is the sum of the steps' own: a stage resumed after an interruption counts each step
    once, where the clock of the last run would count only the steps since the resume."""
    from llama_np.training.trainer import LOG_FILE, read_log
    log = [r for r in read_log(os.path.join(folder, LOG_FILE)) if "loss" in r]
    tokens = sum(r.get("tokens", 0) for r in log)
    return {"final_loss": log[-1]["loss"] if log else None, "tokens": tokens or None,
            "seconds": round(sum(r.get("seconds", 0) for r in log), 1)}


def _lora_targets(folder):
    """The projections a finetune run put LoRA on, from its adapter_config.json."""
    return _read_json(os.path.join(folder, "adapter_config.json")).get("target_modules") or []


def _timed(record, name, step_main, argv):
    started = time.perf_counter()
    code = step_main(argv)
    if code:
        raise RuntimeError(f"{name} stopped (exit code {code}); rerun the recipe to continue")
    record(name, seconds=round(time.perf_counter() - started, 1))


def _read_json(path):
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def plot_results(results, png_path):
    """Held-out bits per character through the recipe, as a PNG: the resized model at step
    0, then each training stage along its kept checkpoints, on one axis of optimizer steps;
    the base model's level and 15% below it (the goal llama_np set for its README run) as
    lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from llama_np.training.trainer import save_figure

    steps = results["steps"]
    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
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
    fig.tight_layout()
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


if __name__ == "__main__":
    cli.run(main)
