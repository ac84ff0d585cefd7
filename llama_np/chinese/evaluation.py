"""The paper's evaluation: its 160 prompts in 10 categories (QA, OQA, REASONING, LITERATURE,
ENTERTAINMENT, GENERATION, TRANSLATION, DIALOGUE, CODE, ETHICS), each answered alone with
the paper's decoding settings, resumably: every answer is appended to answers.jsonl as one
line, flushed and synced, so a killed run loses at most the answer it was writing.
"""
import dataclasses
import json
import os
import sys
import time

from llama_np.llama.conversation import Conversation
from llama_np.llama.generation import GenerationStats
from llama_np.llama.sampling import Sampler

PROMPTS_FILE = "derived/chinese_alpaca_eval_160.json"
ANSWERS_FILE = "answers.jsonl"
REPORT_FILE = "report.md"


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


def answer_prompts(model, tokenizer, prompts, todo, answers, answers_path, settings, *, template, ctx,
                   max_new_tokens, quiet=False):
    """Answer the prompts `todo` ((index, prompt) pairs) one by one, each appended to
    `answers_path` as soon as it is written; prompt i is sampled with seed settings.seed + i,
    so an answer does not depend on which prompts ran before it. Updates `answers`."""
    conversation = Conversation(model, tokenizer, template, None, ctx, max_new_tokens)
    for index, item in todo:
        started = time.perf_counter()
        seed = settings.seed + index
        text, stats = answer(conversation, item["prompt"], dataclasses.replace(settings, seed=seed))
        record = dict(category=item["category"], id=item["id"], prompt=item["prompt"], answer=text,
                      new_tokens=stats.new_tokens, stop_reason=stats.stop_reason, seed=seed,
                      seconds=round(time.perf_counter() - started, 2))
        append_answer(answers_path, record)
        answers[prompt_key(item)] = record
        if not quiet:
            print(f"[{len(answers)}/{len(prompts)}] {prompt_key(item)}: {stats.new_tokens} tokens "
                  f"in {record['seconds']} s", file=sys.stderr)
