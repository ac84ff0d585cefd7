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
import json
import os
import sys
import time

from llama_np.cli import common as cli

PROMPTS_FILE = "derived/chinese_alpaca_eval_160.json"
ANSWERS_FILE = "answers.jsonl"
REPORT_FILE = "report.md"
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


def read_prompts(path):
    """The evaluation prompts: a list of {"category", "id", "prompt"} with unique ids."""
    try:
        with open(path, encoding="utf-8") as f:
            prompts = json.load(f)
    except OSError as e:
        raise OSError(f"{path}: cannot read the prompts ({e.strerror})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not UTF-8 JSON ({e})") from None
    if not isinstance(prompts, list) or not prompts:
        raise ValueError(f"{path}: expected a non-empty JSON list of {{category, id, prompt}}")
    seen = set()
    for i, item in enumerate(prompts):
        missing = [k for k in ("category", "id", "prompt") if not isinstance(item, dict) or k not in item]
        if missing:
            raise ValueError(f"{path}: prompt {i} has no {missing[0]!r}")
        key = prompt_key(item)
        if key in seen:
            raise ValueError(f"{path}: prompt {i} repeats id {item['id']!r} of category {item['category']!r}")
        seen.add(key)
    return prompts


def prompt_key(item):
    """What identifies a prompt: ids count from 1 within each category."""
    return f"{item['category']}/{item['id']}"


def read_answers(path):
    """The answers already in `path` (JSONL), by prompt key. A final line without its line
    break — a write cut short — is removed from the file, so the next append starts clean."""
    if not os.path.exists(path):
        return {}
    with open(path, "rb") as f:
        data = f.read()
    complete = data[:data.rfind(b"\n") + 1]
    if len(complete) < len(data):
        with open(path, "r+b") as f:
            f.truncate(len(complete))
    answers = {}
    for number, line in enumerate(complete.decode("utf-8").splitlines(), 1):
        try:
            record = json.loads(line)
            answers[prompt_key(record)] = record
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: line {number} is not an answer record ({e}); "
                             f"remove the line or choose another --out") from None
    return answers


def append_answer(path, record):
    """Append one answer as a JSON line and make sure it reached the disk."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def answer(conversation, prompt, settings):
    """The model's reply to one prompt, alone (no earlier turns). Returns (text, stats)."""
    from llama_np.llama.generation import GenerationStats
    from llama_np.llama.sampling import Sampler

    conversation.reset()
    stats = GenerationStats()
    text = "".join(conversation.reply(prompt, Sampler(settings), stats)).strip()
    return text, stats


def report_markdown(prompts, answers, header):
    """The report: a header, then per category (in the prompts' order) a table of the
    answered prompts and their answers."""
    lines = ["# Answers to the Chinese-Alpaca evaluation prompts", "", header, "",
             f"{len(answers)} of {len(prompts)} prompts answered.", ""]
    categories = list(dict.fromkeys(item["category"] for item in prompts))
    for category in categories:
        done = [(item, answers[prompt_key(item)]) for item in prompts
                if item["category"] == category and prompt_key(item) in answers]
        if not done:
            continue
        lines += [f"## {category}", "", "| # | prompt | answer |", "|---|---|---|"]
        lines += [f"| {item['id']} | {_cell(item['prompt'])} | {_cell(record['answer'])} |"
                  for item, record in done]
        lines.append("")
    return "\n".join(lines)


def _cell(text):
    """Text that stays inside one markdown table cell."""
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>") or " "


def main(argv=None):
    args = parse_args(argv)
    cli.set_threads(args.threads)
    import dataclasses
    from llama_np.files import hub
    from llama_np.files.atomic import atomic_write_text
    from llama_np.chat import Conversation

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
        conversation = Conversation(model, tokenizer, args.template, None, args.ctx, args.max_new_tokens)
        for index, item in todo:
            started = time.perf_counter()
            seed = settings.seed + index
            text, stats = answer(conversation, item["prompt"], dataclasses.replace(settings, seed=seed))
            record = dict(category=item["category"], id=item["id"], prompt=item["prompt"], answer=text,
                          new_tokens=stats.new_tokens, stop_reason=stats.stop_reason, seed=seed,
                          seconds=round(time.perf_counter() - started, 2))
            append_answer(answers_path, record)
            answers[prompt_key(item)] = record
            if not args.quiet:
                print(f"[{len(answers)}/{len(prompts)}] {prompt_key(item)}: {stats.new_tokens} tokens "
                      f"in {record['seconds']} s", file=sys.stderr)
    atomic_write_text(os.path.join(args.out, REPORT_FILE), report_markdown(prompts, answers, header))
    print(f"{len(answers)} of {len(prompts)} prompts answered; report in "
          f"{os.path.join(args.out, REPORT_FILE)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    cli.run(main)
