"""`python -m llama_np.recipe --out DIR`: the Chinese-LLaMA/Alpaca recipe, end to end.

    python -m llama_np.recipe --out runs/recipe          # the default budget: about an hour on 2 cores
    python -m llama_np.recipe --out runs/recipe          # again: finishes what is missing
    python -m llama_np.recipe --out runs/quick --budget quick   # every step in a few minutes, on a sliver
    python -m llama_np.recipe --out runs/long --budget long     # the README's long run: ≈ 2.3 h
    python -m llama_np.recipe --out runs/recipe --export-torch runs/stage2_torch
                                                         # stage 2 for Trainer + peft + DeepSpeed (GPUs)

Cui, Yang & Yao (2023) teach an English LLaMA Chinese in five steps; each is a function of
`llama_np.chinese.recipe` (the pipeline), and the same step as its own tool:

    1. extend the vocabulary     (python -m llama_np.extend_bpe)   → DIR/tokenizer/
    2. resize the embeddings     (python -m llama_np.resize)       → DIR/resized.gguf
    3. pre-training stage 1      (python -m llama_np.finetune --trainable embeddings)
                                 transformer frozen; only the embedding learns        → DIR/stage1/
    4. pre-training stage 2      (--trainable lora,embeddings,lm_head --target-modules attention,
                                 or all: --stage2-target-modules)
                                 starts from stage 1's embedding                      → DIR/stage2/
    5. instruction tuning (SFT)  (--trainable lora,embeddings,lm_head), LoRA on attention and MLP,
                                 on alpaca_zh_demo.json; starts from stage 2's tensors → DIR/sft/

Pre-training reads the training part of llama_np's Chinese corpus (cmrc2018 Wikipedia
paragraphs + Song ci; `llama_np.chinese.corpus`), never its held-out part; --pretrain-text adds
the mirror's other Chinese text (cmrc2018's questions about the training paragraphs, the
alpaca_zh instructions as running text). After every step the
held-out cmrc2018 text is scored in *bits per character* (`llama_np.chinese.bits_per_char`): unlike
perplexity per token it does not depend on the tokenizer, so the base model (49,152 tokens)
and the extended one can be compared. Results go to DIR/results.json, DIR/results.md and
DIR/bits_per_char.png.

A step whose output exists is skipped, and a training stage resumes from its latest
checkpoint (one every --save-every steps), so an interrupted recipe continues where it
stopped; the checkpoints kept are scored too, and draw each stage's learning curve. The
paper's scale (tens of GB of text, 7B parameters, GPU weeks) becomes, by default, 10k
tokens for stage 1, 256k for stage 2 and 20k for SFT; --budget scales the steps (and, for a
quick look, the text), and steps, lengths and learning rates are flags of their own.
"""
import argparse
import sys

from llama_np.chinese.defaults import (BUDGETED, BUDGETS, DEFAULT_BUDGET, DEFAULT_EMBEDDING_LR, DEFAULT_LORA, DEFAULT_LR,
                                       DEFAULT_PRETRAIN_TEXT, DEFAULT_STAGE2_TARGETS, STAGES)
from llama_np.cli import common as cli

# One home for the defaults: llama_np.chinese.defaults (the reasons are written there).


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m llama_np.recipe",
        description="Chinese-LLaMA/Alpaca end to end: extend the vocabulary, resize, pre-train "
                    "in two stages, instruction-tune; bits per character after each step.")
    p.add_argument("--model", default="default", help=".gguf base model; 'default' = SmolLM2-135M-Instruct Q4_1")
    cli.required_group(p).add_argument("--out", required=True, metavar="DIR", help="folder for every step's output")
    p.add_argument("--budget", choices=list(BUDGETS), default=DEFAULT_BUDGET,
                   help="how much to train: hour (about an hour on 2 cores), quick (every step in a few "
                        "minutes, on a sliver of the text: a look, not a result) or long (the README's "
                        "long run); the flags below marked 'from --budget' override it one by one "
                        "(default: %(default)s)")
    p.add_argument("--new-tokens", type=cli.positive_int, default=None,
                   help=f"tokens added to the vocabulary (default: {_by_budget('new_tokens')})")
    p.add_argument("--pretrain-text", type=_sources, default=DEFAULT_PRETRAIN_TEXT, metavar="SOURCES",
                   help="the Chinese text the new vocabulary and pre-training learn from (its training "
                        "part): comma-separated, of cmrc2018, song_ci (the corpus) and cmrc2018_questions, "
                        "alpaca_zh (more text; see llama_np.chinese.corpus) "
                        f"(default: {','.join(DEFAULT_PRETRAIN_TEXT)})")
    p.add_argument("--pretrain-file", action="append", default=[], metavar="FILE",
                   help="more pre-training text of your own: a UTF-8 file, one document a line, read after "
                        "--pretrain-text's (repeatable). On the mirror's 651k characters the long run's held-out "
                        "text stops improving once stage 2 has read them once (README): more text is what helps. "
                        "Keep the held-out cmrc2018 paragraphs out of it, or the evaluation measures memory")
    p.add_argument("--documents", type=cli.positive_int, default=None,
                   help="use only the first N training documents, for the new vocabulary and for "
                        f"pre-training (default: {_by_budget('documents', 'all')})")
    p.add_argument("--stage1-rows", choices=["new", "all"], default="new",
                   help="stage 1 trains the new tokens' rows only, or the whole embedding (default: %(default)s)")
    p.add_argument("--stage2-rows", choices=["new", "all"], default="all",
                   help="stage 2 trains the whole embedding (= tied head) beside its LoRA, or the new "
                        "tokens' rows only (default: %(default)s)")
    for stage in STAGES:
        p.add_argument(f"--{stage}-steps", type=cli.positive_int, default=None,
                       help=f"optimizer steps of {stage} (default: {_by_budget('steps', stage=stage)})")
        p.add_argument(f"--{stage}-lr", type=cli.positive_float, default=DEFAULT_LR[stage],
                       help=f"peak learning rate of {stage} (default: %(default)s)")
        if stage != "stage1":  # stage 1 trains nothing else
            p.add_argument(f"--{stage}-embedding-lr", type=cli.positive_float, default=DEFAULT_EMBEDDING_LR[stage],
                           help=f"peak learning rate of the embedding (= tied head) in {stage}; "
                                f"default: %(default)s (None: --{stage}-lr)")
    p.add_argument("--stage2-target-modules", default=DEFAULT_STAGE2_TARGETS, metavar="MODULES",
                   help="projections that get LoRA in stage 2: all (the paper's released scripts; learnt "
                        "faster here, see the README), attention (the paper's text) or a list like q,k,v,o "
                        "(default: %(default)s)")
    p.add_argument("--lora-r", type=cli.positive_int, default=DEFAULT_LORA["lora_r"],
                   help="LoRA rank of stage 2 and SFT (one adapter: SFT goes on from stage 2's) (default: %(default)s)")
    p.add_argument("--lora-alpha", type=cli.positive_float, default=DEFAULT_LORA["lora_alpha"],
                   help="LoRA alpha of stage 2 and SFT; the update is scaled by alpha/r (default: %(default)s)")
    p.add_argument("--lora-dropout", type=cli.dropout_probability, default=DEFAULT_LORA["lora_dropout"],
                   help="dropout on the LoRA input in stage 2 and SFT (default: %(default)s)")
    p.add_argument("--untie-head", action="store_true",
                   help="give the resized model an output head of its own, a copy of the embedding, so that "
                        "the two train apart (SmolLM2 ties them, LLaMA does not); default: tied")
    p.add_argument("--max-seq-len", type=cli.positive_int, default=None,
                   help=f"tokens per training example (the paper: 512; default: {_by_budget('max_seq_len')})")
    p.add_argument("--batch-size", type=cli.positive_int, default=2, help="examples per step (default: %(default)s)")
    p.add_argument("--save-every", type=cli.positive_int, default=100,
                   help="each training stage saves a checkpoint every N steps: an interrupted recipe "
                        "resumes from it, and its held-out bits per character become the stage's "
                        "learning curve in results.md (default: %(default)s)")
    p.add_argument("--keep-checkpoints", type=cli.positive_int, default=2,
                   help="checkpoints kept per stage; more = more points on the curve, ~0.5 GB each "
                        "for the default model (default: %(default)s)")
    p.add_argument("--eval-ctx", type=cli.positive_int, default=None,
                   help=f"window of the bits-per-character evaluation (default: {_by_budget('eval_ctx')})")
    p.add_argument("--eval-windows", type=cli.positive_int, default=None,
                   help=f"windows of held-out text scored (default: {_by_budget('eval_windows')})")
    export = p.add_argument_group("scaling out: the stage for Hugging Face Trainer + peft + DeepSpeed, on GPUs")
    export.add_argument("--export-torch", metavar="DIR", default=None,
                        help="instead of training --export-stage, write it into DIR for PyTorch (the resized "
                             "model as a Hugging Face folder, its tokenizer, the stage's batches as JSONL, its "
                             "starting adapter, train.py, a DeepSpeed ZeRO-2 config and the torchrun command; "
                             "DIR/README.md says how to run it), after the steps before it")
    export.add_argument("--export-stage", choices=STAGES[1:], default="stage2",
                        help="the stage --export-torch writes (default: %(default)s)")
    cli.add_threads_arg(p)
    return p.parse_args(argv)


def _by_budget(name, unset="-", stage=None):
    """'from --budget: quick 3, hour 500, long 1,400' for a --help text."""
    def value(budget):
        chosen = BUDGETS[budget]["steps"][stage] if stage else BUDGETS[budget][name]
        return unset if chosen is None else f"{chosen:,}"
    return "from --budget: " + ", ".join(f"{budget} {value(budget)}" for budget in BUDGETS)


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
    from llama_np.chinese.recipe import budget_config, export_stage, run_recipe   # after the threads are set

    given = {name: getattr(args, name) for name in BUDGETED if getattr(args, name) is not None}
    config = budget_config(
        args.budget, out=args.out, model=args.model, pretrain_text=args.pretrain_text,
        pretrain_files=tuple(args.pretrain_file),
        stage1_rows=args.stage1_rows, stage2_rows=args.stage2_rows,
        steps={stage: getattr(args, f"{stage}_steps") for stage in STAGES if getattr(args, f"{stage}_steps")},
        lr={stage: getattr(args, f"{stage}_lr") for stage in STAGES},
        embedding_lr={stage: getattr(args, f"{stage}_embedding_lr", None) for stage in STAGES},
        stage2_target_modules=args.stage2_target_modules, untie_head=args.untie_head,
        lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        batch_size=args.batch_size, save_every=args.save_every, keep_checkpoints=args.keep_checkpoints,
        threads=args.threads, **given)
    if args.export_torch:
        run = export_stage(config, args.export_stage, args.export_torch)
        print(f"{args.export_stage} for Trainer + peft: {run['steps']} steps of {run['global_batch_size']} "
              f"examples in {args.export_torch}; run it with: cd {args.export_torch} && torchrun --standalone "
              f"--nproc_per_node N train.py (README.md there)", file=sys.stderr)
    else:
        run_recipe(config)
    return 0


if __name__ == "__main__":
    cli.run(main)
