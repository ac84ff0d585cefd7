"""The paper's efficiency claim, measured: Chinese text per context and per second, the base
model beside the model with the extended vocabulary (Cui et al. 2023, §2.2 and Table 1).

    python benchmarks/bench_chinese.py                               # default model vs an extended one made here
    python benchmarks/bench_chinese.py --extended zh_recipe/resized.gguf --runs 5
    python benchmarks/bench_chinese.py --extended merged.gguf        # a trained model (llama_np.merge_lora)

Fewer tokens per character should mean more Chinese in the same context and more Chinese
characters per second of decoding, since a decoding step costs about the same whatever the
token spells. Measured, for each model, on the held-out cmrc2018 paragraphs (never trained on):

- tokens per character of all 84 held-out paragraphs, and so the characters a 2,048-token
  context holds (`python -m llama_np.tokenizer_stats ... --part held_out`, the same numbers);
- **generated**: each of `--prompts` paragraphs' first 64 characters is continued (raw
  completion) by `--new-tokens` tokens with the paper's sampling (temperature 0.2, top-k 40,
  top-p 0.9, repetition penalty 1.3), prompt i with seed 1234 + i, the same prompts for both
  models. chars/s = decode tok/s × characters per generated token (all characters of the
  decoded text; the share of them that are CJK ideographs is printed, since the claim only
  holds while the model writes Chinese);
- **same text**: the first 192 characters of the same paragraphs are fed to the model one
  token per step, each step with the sampler's work on its logits, as decoding does: both
  models decode exactly the same Chinese, whatever they would have written. chars/s =
  characters ÷ seconds.

Without `--extended`, one is made in a temporary folder as the recipe's first two steps do
(`extend_bpe`: 4,000 Chinese tokens from the corpus's training part; `resize`), about 15 s.
It is untrained, but has the trained model's shapes and so its speed; its generated text is
what an untrained model writes. Each run is a fresh process holding both models, which take
turns prompt by prompt (so that a machine getting busier slows both alike); the medians of
`--runs` runs are reported, with the machine and the load average.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import unicodedata

from bench_env import REPO, machine_description  # first: the checkout on the path
from bench_inference import thread_env

PROMPT_CHARACTERS = 64          # of each held-out paragraph, continued by the model
FORCED_CHARACTERS = 192         # of each held-out paragraph, fed one token per step
FIRST_SEED = 1234               # prompt i samples with seed FIRST_SEED + i
WARMUP_TOKENS = 8


def held_out_paragraphs(n):
    """The first `n` held-out cmrc2018 paragraphs at least FORCED_CHARACTERS long."""
    from llama_np.chinese import corpus
    documents = [d for d in corpus.chinese_documents("held_out", sources=("cmrc2018",))
                 if len(d) >= FORCED_CHARACTERS]
    if n > len(documents):
        raise SystemExit(f"error: --prompts {n}: only {len(documents)} held-out paragraphs are long enough")
    return documents[:n]


def cjk_share(text):
    """The fraction of `text`'s characters that are CJK ideographs."""
    return sum("CJK" in unicodedata.name(c, "") for c in text) / max(len(text), 1)


# ----- the child: both models, prompt by prompt, one process --------------------------------

def generated_run(model, tokenizer, paragraph, seed, new_tokens):
    """Continue the paragraph's first PROMPT_CHARACTERS characters by `new_tokens` tokens."""
    from llama_np.llama.decoding_defaults import PAPER_CONTEXT
    from llama_np.llama.generation import GenerationStats, generate_text
    from llama_np.llama.sampling import Sampler, SamplingSettings

    stats = GenerationStats()
    text = "".join(generate_text(model, tokenizer, tokenizer.encode(paragraph[:PROMPT_CHARACTERS]),
                                 Sampler(SamplingSettings(seed=seed)),   # the paper's settings
                                 max_new_tokens=new_tokens, cache=model.new_cache(PAPER_CONTEXT), stats=stats))
    return {"tokens": stats.new_tokens, "characters": len(text), "cjk": cjk_share(text),
            "decode_seconds": stats.decode_seconds, "decode_steps": max(stats.new_tokens - 1, 0), "text": text}


def same_text_run(model, tokenizer, paragraph, seed):
    """Feed the paragraph's first FORCED_CHARACTERS characters one token per step, the
    sampler drawing from every step's logits as it would when generating."""
    from llama_np.llama.decoding_defaults import PAPER_CONTEXT
    from llama_np.llama.sampling import Sampler, SamplingSettings

    text = paragraph[:FORCED_CHARACTERS]
    ids = tokenizer.encode(text)
    cache, draw, seen = model.new_cache(PAPER_CONTEXT), Sampler(SamplingSettings(seed=seed)), []
    start = time.perf_counter()
    for token in ids:
        draw(model.forward([token], cache, last_only=True)[-1], seen)
        seen.append(token)
    return {"tokens": len(ids), "characters": len(text), "seconds": time.perf_counter() - start}


def child(model_paths, threads, n_prompts, new_tokens, first):
    """Both models in one process, measured prompt by prompt in turn (`first` starts), so
    that a machine getting busier or quieter slows both alike."""
    from llama_np.cli import common as cli
    cli.set_threads(threads)
    from llama_np.checkpoint import load_model
    from llama_np.files import hub

    models = {name: load_model(hub.resolve_model(path)) for name, path in model_paths.items()}
    paragraphs = held_out_paragraphs(n_prompts)
    for model, tokenizer in models.values():
        generated_run(model, tokenizer, paragraphs[0], FIRST_SEED, WARMUP_TOKENS)
    results = {name: {"generated": [], "forced": []} for name in models}
    for i, paragraph in enumerate(paragraphs):
        order = list(models) if (i + first) % 2 == 0 else list(models)[::-1]
        for name in order:
            results[name]["generated"].append(generated_run(*models[name], paragraph, FIRST_SEED + i, new_tokens))
        for name in order[::-1]:
            results[name]["forced"].append(same_text_run(*models[name], paragraph, FIRST_SEED + i))
    print(json.dumps(results, ensure_ascii=False))


# ----- the parent: make the extended model, spawn, report ------------------------------------

def run_child(model_paths, args, first):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(model_paths), "--first", str(first),
           "--threads", str(args.threads), "--prompts", str(args.prompts), "--new-tokens", str(args.new_tokens)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=thread_env(args.threads))
    if out.returncode:
        raise SystemExit(f"error: a run failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_extended(folder):
    """extend_bpe + resize, as the recipe's first two steps (its defaults), into `folder`."""
    for tool, flags in (("extend_bpe", ["--out", os.path.join(folder, "tokenizer")]),
                        ("resize", ["--tokenizer", os.path.join(folder, "tokenizer"),
                                    "--out", os.path.join(folder, "resized.gguf")])):
        out = subprocess.run([sys.executable, "-m", f"llama_np.{tool}", *flags], capture_output=True, text=True,
                             cwd=REPO)
        if out.returncode:
            raise SystemExit(f"error: llama_np.{tool} failed: {out.stderr.strip()[-500:]}")
    return os.path.join(folder, "resized.gguf")


def summarize(run):
    """One run of one model: generated (tok/s, chars/token, chars/s, CJK share) and same text
    (tok/s, chars/s), each over all prompts together."""
    g, f = run["generated"], run["forced"]
    steps, seconds = sum(r["decode_steps"] for r in g), sum(r["decode_seconds"] for r in g)
    tokens, characters = sum(r["tokens"] for r in g), sum(r["characters"] for r in g)
    tok_s = steps / seconds
    return {"gen_tok_s": tok_s, "gen_chars_per_token": characters / tokens,
            "gen_chars_s": tok_s * characters / tokens,
            "gen_cjk": sum(r["cjk"] * r["characters"] for r in g) / max(characters, 1),
            "same_tok_s": sum(r["tokens"] for r in f) / sum(r["seconds"] for r in f),
            "same_chars_s": sum(r["characters"] for r in f) / sum(r["seconds"] for r in f)}


def table(rows):
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) if k == 0 else v.rjust(w) for k, (v, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(models, stats, medians, runs, args):
    from llama_np.llama.decoding_defaults import PAPER_CONTEXT
    names = list(models)
    rows = [("model", "vocab", "tokens/char", f"chars/{PAPER_CONTEXT:,} ctx", "gen tok/s", "gen chars/tok",
             "gen chars/s", "gen CJK", "same-text tok/s", "same-text chars/s")]
    for name in names:
        s, m = stats[name], medians[name]
        rows.append((name, f"{s.vocab_size:,}", f"{s.tokens_per_character:.3f}",
                     f"{s.characters_per_context(PAPER_CONTEXT):,.0f}", f"{m['gen_tok_s']:.1f}",
                     f"{m['gen_chars_per_token']:.2f}", f"{m['gen_chars_s']:.1f}", f"{m['gen_cjk']:.0%}",
                     f"{m['same_tok_s']:.1f}", f"{m['same_chars_s']:.1f}"))
    base, ext = names
    rows.append((f"{ext} / {base}", "", f"{stats[ext].tokens_per_character / stats[base].tokens_per_character:.3f}",
                 f"{stats[ext].characters_per_context() / stats[base].characters_per_context():.2f}x",
                 *(f"{medians[ext][k] / medians[base][k]:.2f}x" for k in
                   ("gen_tok_s", "gen_chars_per_token", "gen_chars_s")), "",
                 *(f"{medians[ext][k] / medians[base][k]:.2f}x" for k in ("same_tok_s", "same_chars_s"))))
    print(f"\nmedians of {args.runs} runs, {args.threads} threads; held-out cmrc2018 text "
          f"({stats[base].n_characters:,} characters for tokens/char); {args.prompts} prompts x "
          f"{args.new_tokens} new tokens (paper's sampling, seeds {FIRST_SEED}..{FIRST_SEED + args.prompts - 1}); "
          f"same text: {args.prompts} x {FORCED_CHARACTERS} characters\n")
    print(table(rows))
    print("\ngen chars/s of each run: " + "; ".join(
        f"{name} " + ", ".join(f"{summarize(r)['gen_chars_s']:.1f}" for r in runs[name]) for name in names))
    print("same-text chars/s of each run: " + "; ".join(
        f"{name} " + ", ".join(f"{summarize(r)['same_chars_s']:.1f}" for r in runs[name]) for name in names))
    for name in names:
        print(f"\n{name}, prompt 0 continued: {runs[name][0]['generated'][0]['text'][:120]!r}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Characters of Chinese per 2,048-token context and per second of decoding, the base "
                    "model beside one with the extended vocabulary (the paper's efficiency claim).")
    parser.add_argument("--base", default="default",
                        help="the original model: .gguf, Hugging Face folder or 'default' (default: %(default)s)")
    parser.add_argument("--extended", default=None,
                        help="the model with the extended vocabulary (e.g. a recipe's resized.gguf, or a trained "
                             "model merged with llama_np.merge_lora); default: made here by extend_bpe + resize")
    parser.add_argument("--runs", type=int, default=3, help="runs per model; medians reported (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="threads of every run (default: %(default)s)")
    parser.add_argument("--prompts", type=int, default=4, help="held-out paragraphs used (default: %(default)s)")
    parser.add_argument("--new-tokens", type=int, default=128,
                        help="tokens generated per prompt (default: %(default)s)")
    parser.add_argument("--child", help=argparse.SUPPRESS)                # {name: model path}, as JSON
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for flag in ("runs", "threads", "prompts", "new_tokens"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2 (the first comes from the prompt's pass)")
    for flag in ("base", "extended"):
        path = getattr(args, flag)
        if path not in (None, "default") and not os.path.exists(path):
            parser.error(f"--{flag} {path}: no such file or folder")
    return args


def main():
    args = parse_args()
    if args.child:
        return child(json.loads(args.child), args.threads, args.prompts, args.new_tokens, args.first)
    from llama_np.checkpoint import load_tokenizer
    from llama_np.chinese import corpus
    from llama_np.chinese.tokenizer_stats import measure
    from llama_np.files import hub

    print(f"Machine: {machine_description()}")
    with tempfile.TemporaryDirectory() as scratch:
        if args.extended is None:
            print("making an extended model (extend_bpe + resize, untrained) ...", flush=True)
        models = {"base": args.base, "extended": args.extended or make_extended(scratch)}
        held_out = corpus.chinese_documents("held_out", sources=("cmrc2018",))
        stats = {name: measure(load_tokenizer(hub.resolve_model(path)), held_out, name)
                 for name, path in models.items()}
        runs, loads = {name: [] for name in models}, []
        for k in range(args.runs):
            loads.append(os.getloadavg()[0])
            result = run_child(models, args, first=k)
            for name in models:
                runs[name].append(result[name])
            print(f"run {k + 1}/{args.runs}: generated chars/s " + ", ".join(
                f"{name} {summarize(result[name])['gen_chars_s']:.1f}" for name in models)
                + f" (load {loads[-1]:.2f})", flush=True)
    medians = {name: {key: statistics.median(summarize(r)[key] for r in runs[name])
                      for key in summarize(runs[name][0])} for name in models}
    print(f"load average (1 min) before each run: median {statistics.median(loads):.2f}, "
          f"range {min(loads):.2f}-{max(loads):.2f} (on {os.cpu_count()} cores)")
    report(models, stats, medians, runs, args)


if __name__ == "__main__":
    from llama_np.cli import common as cli
    cli.run(main)      # a missing data file, a model that does not load: one line, exit 1
