"""`python -m llama_np.evaluate --out DIR`: answer the paper's 160 evaluation prompts and
write a markdown report by category, like the example tables of Chinese-LLaMA-Alpaca.

    python -m llama_np.evaluate --adapter runs/recipe/sft --out runs/eval_sft
    python -m llama_np.evaluate --adapter runs/recipe/sft --out runs/eval_sft   # after a kill: finishes the rest
    python -m llama_np.evaluate --limit 10 --max-new-tokens 64 --out runs/quick

The prompts (`derived/chinese_alpaca_eval_160.json` in the data mirror, or `--prompts` a
JSON list of {"category", "id", "prompt"}) are the 160 questions of the paper's examples
(`examples/q4_7b-13b/*.md`): QA, OQA, REASONING, LITERATURE, ENTERTAINMENT, GENERATION,
TRANSLATION, DIALOGUE, CODE, ETHICS. Each is asked alone, in the Chinese-Alpaca inference
template by default (`--template model` uses the model's own chat template, which suits an
untuned chat model better), and answered with the paper's decoding settings: temperature
0.2, top-k 40, top-p 0.9, repetition penalty 1.3, at most 512 new tokens, context 2048.
Prompt i is sampled with seed `--seed` + i, so an answer does not depend on which prompts
were answered before it in the same process.

Resuming. Every answer is appended to DIR/answers.jsonl as one line, flushed and synced,
the moment it is finished. A rerun reads that file and asks only the prompts whose id is
not in it yet (a last line cut off by a kill is dropped and asked again). DIR/report.md is
written at the end of every run, atomically, from all the answers so far.
"""
import argparse
import os
import sys

from llama_np.cli import common as cli

DEFAULT_SEED = 0

def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m llama_np.evaluate",
        description="Answer the Chinese-Alpaca evaluation prompts with the paper's decoding settings; "
                    "resumable; markdown report by category.")
    cli.add_model_args(p)
    cli.required_group(p).add_argument("--out", required=True, metavar="DIR",
                                       help="folder for answers.jsonl and report.md")
    p.add_argument("--prompts", default=None,
                   help="JSON list of {category, id, prompt} (default: the paper's 160 from the data mirror)")
    p.add_argument("--template", default="alpaca",
                   help="prompt template: alpaca (Chinese-Alpaca's inference prompt), model (the model's own "
                        "chat template), chatml, or a .jinja file (default: %(default)s)")
    p.add_argument("--limit", type=cli.positive_int, default=None,
                   help="answer at most this many prompts in this run (the rest on a later run)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    cli.add_sampling_args(p)
    p.set_defaults(seed=DEFAULT_SEED)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cli.set_threads(args.threads)
    from llama_np.chinese import evaluation
    from llama_np.chinese.evaluation import (ANSWERS_FILE, PROMPTS_FILE, REPORT_FILE, prompt_key, read_answers,
                                             read_prompts, report_markdown)
    from llama_np.files import hub
    from llama_np.files.atomic import atomic_write_text

    prompts = read_prompts(args.prompts or hub.data_path(PROMPTS_FILE))
    os.makedirs(args.out, exist_ok=True)
    answers_path = os.path.join(args.out, ANSWERS_FILE)
    answers = read_answers(answers_path)
    todo = [(i, item) for i, item in enumerate(prompts) if prompt_key(item) not in answers]
    if args.limit is not None:
        todo = todo[:args.limit]
    settings = cli.sampling_settings(args)
    header = (f"Model `{args.model}`" + "".join(f", adapter `{a}`" for a in args.adapter) +
              f"; template `{args.template}`; temperature {settings.temperature}, top-k {settings.top_k}, "
              f"top-p {settings.top_p}, repetition penalty {settings.repetition_penalty}, "
              f"at most {args.max_new_tokens} new tokens, seed {args.seed} + prompt index.")
    if todo:
        model, tokenizer = cli.load_for_inference(args)
        evaluation.answer_prompts(model, tokenizer, prompts, todo, answers, answers_path, settings,
                                  template=args.template, ctx=args.ctx, max_new_tokens=args.max_new_tokens,
                                  quiet=args.quiet)
    atomic_write_text(os.path.join(args.out, REPORT_FILE), report_markdown(prompts, answers, header))
    print(f"{len(answers)} of {len(prompts)} prompts answered; report in "
          f"{os.path.join(args.out, REPORT_FILE)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    cli.run(main)
