"""Inference speed and memory: llama_np beside llama.cpp and transformers on the same GGUF.

    python benchmarks/bench_inference.py                         # default model, 1 and 2 threads, 5 runs
    python benchmarks/bench_inference.py --runs 3 --threads 2    # quicker
    python benchmarks/bench_inference.py --engines llama_np,llama_cpp --json results.json
    python benchmarks/bench_inference.py --scan --threads 2 --runs 3   # the context-length scan

What is measured (docs/benchmarks.md#anchors has the numbers measured so far):

- prefill tok/s: one forward pass over a 128-token prompt (the first answers of
  alpaca_en_demo.json, the same token ids for every engine) from an empty cache;
- decode tok/s: then 128 greedy one-token steps, each feeding back the argmax;
- peak RSS: the ru_maxrss of the process that did both;
- time to first token: wall time from starting a new process to its exit, for a process
  that loads the model, applies the chat template to a 16-token message and produces one
  token (`python -m llama_np.chat --prompt ... --max-new-tokens 1` for llama_np); its peak
  RSS is the memory of a short chat.

`--scan` measures instead how speed depends on the context: prefill tok/s for prompts of
128 / 512 / 1024 / 2000 tokens (each from an empty cache), and decode tok/s over 128 greedy
steps after 16 / 512 / 1024 / 1900 positions have been filled; a table, and a plot
(`--plot`, default docs/context_scan.png). llama_np runs with the tools' KV cache (f16;
`--kv-cache` to change it).

Engines: llama_np (this repository), llama.cpp through llama-cpp-python (same Q4_1 file;
build recipe in docs/benchmarks.md#llamacpp) and transformers + torch in fp32. For
transformers the GGUF is dequantized once, at the start, by `from_pretrained(gguf_file=...)`
and saved as a Hugging Face folder in a temporary directory, which its runs then load as a
transformers user would (reading the GGUF itself takes transformers about a minute, mostly
building its tokenizer).
An engine that is not importable is skipped. On request (`--engines ...,llama_np_int8`) llama_np
also runs with --int8-activations, llama.cpp's own arithmetic.

Every measurement runs in a fresh process (thread counts are fixed at process start, and
RSS is then that engine's alone) after one short warm-up pass; runs alternate between
engines, so a machine that gets busier slows every engine alike. Reported: medians over
the runs, and the ratios llama_np / other. The load average before and after is printed:
on a shared machine it says how far to trust the numbers.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from bench_env import REPO, commit, machine_description  # first: the checkout on the path

ENGINES = ("llama_np", "llama_cpp", "transformers", "llama_np_int8")
DEFAULT_ENGINES = ENGINES[:3]  # llama_np_int8: llama_np with --int8-activations, on request
ENGINE_MODULES = {"llama_np": "llama_np", "llama_cpp": "llama_cpp", "transformers": "transformers",
                  "llama_np_int8": "llama_np"}
PROMPT_TOKENS = 128
NEW_TOKENS = 128
CONTEXT = PROMPT_TOKENS + NEW_TOKENS + 16     # the cache every engine gets for that
SCAN_PROMPTS = (128, 512, 1024, 2000)         # --scan: prompt lengths for prefill
SCAN_FILLED = (16, 512, 1024, 1900)           # --scan: positions filled before decoding
SCAN_DECODE_STEPS = 128                        # ~1 s each: a burst of a busy host averages out
SCAN_CONTEXT = 2048                            # the paper's context, as chat --ctx
WARMUP_TOKENS = 8
# A user message of 16 tokens in SmolLM2's vocabulary (the chat template adds its own)
CHAT_MESSAGE = "Please explain in two short sentences why the sky looks blue during a clear day."
ALPACA_EN_FILE = "hiyouga/LLaMA-Factory/data/alpaca_en_demo.json"

# The reference machine (2 cores, Sapphire Rapids, AVX-512/VNNI): docs/benchmarks.md#anchors
ANCHORS = {("llama_cpp", 2): (302, 86), ("llama_cpp", 1): (165, 53), ("transformers", 2): (764, 29)}
ANCHOR_TTFT = {"llama_cpp": 0.28, "transformers": 2.9}
ANCHOR_RSS_MB = {"llama_cpp": 208, "transformers": 928}


def prompt_ids(model_path, n_tokens):
    """The first `n_tokens` tokens of the Alpaca answers, in the model's vocabulary."""
    from llama_np.files import hub
    from llama_np.checkpoint import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    with open(hub.data_path(ALPACA_EN_FILE), encoding="utf-8") as f:
        text = "\n\n".join(example["output"] for example in json.load(f))   # the first 128: as before
    ids = tokenizer.encode(text)[:n_tokens]
    if len(ids) < n_tokens:
        raise SystemExit(f"the prompt text has only {len(ids)} tokens")
    return ids


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB → MiB


# ----- one engine in this process: load, warm up, prefill, decode ---------------------------

def llama_np_steps(model_path, threads, context, kv_cache, int8_activations=False):
    """(prefill(ids) → last logits, decode(id) → logits) for llama_np, its KV cache of
    `context` positions in the format `kv_cache`."""
    from llama_np import kernels
    from llama_np.checkpoint import load_model

    kernels.set_num_threads(threads)
    model, _ = load_model(model_path)
    model.set_int8_activations(int8_activations)
    state = {}

    def prefill(ids):
        state["cache"] = model.new_cache(context, kv_cache)
        return model.forward(ids, state["cache"], last_only=True)[-1]

    def decode(token):
        return model.forward([token], state["cache"], last_only=True)[-1]
    return prefill, decode


def llama_cpp_steps(model_path, threads, context, kv_cache):
    import llama_cpp
    import numpy as np

    # its default KV cache is F16, as llama_np's tools'
    llm = llama_cpp.Llama(model_path, n_ctx=context, n_batch=context,
                          n_threads=threads, n_threads_batch=threads, verbose=False)

    def last_logits():
        # only the last position's logits are computed (logits_all=False), as llama_np's last_only
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))

    def prefill(ids):
        llm.reset()
        llm.eval(ids)
        return last_logits()

    def decode(token):
        llm.eval([token])
        return last_logits()
    return prefill, decode


def transformers_steps(hf_folder, threads, context, kv_cache):
    import torch
    import transformers

    torch.set_num_threads(threads)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_folder, dtype=torch.float32).eval()
    state = {}

    @torch.inference_mode()
    def prefill(ids):
        out = model(torch.tensor([ids]), use_cache=True)
        state["past"] = out.past_key_values
        return out.logits[0, -1].numpy()

    @torch.inference_mode()
    def decode(token):
        out = model(torch.tensor([[token]]), past_key_values=state["past"], use_cache=True)
        state["past"] = out.past_key_values
        return out.logits[0, -1].numpy()
    return prefill, decode


STEPS = {"llama_np": llama_np_steps, "llama_cpp": llama_cpp_steps, "transformers": transformers_steps,
         "llama_np_int8": lambda *args: llama_np_steps(*args, int8_activations=True)}


def speed_child(engine, model_path, threads, ids, kv_cache):
    """Prefill `ids`, then NEW_TOKENS greedy steps; after a short warm-up of both."""
    import numpy as np

    prefill, decode = STEPS[engine](model_path, threads, CONTEXT, kv_cache)
    decode(int(np.argmax(prefill(ids[:WARMUP_TOKENS]))))  # warm-up: first-call costs, page-ins
    start = time.perf_counter()
    token = int(np.argmax(prefill(ids)))
    prefill_seconds = time.perf_counter() - start
    generated = [token]
    start = time.perf_counter()
    for _ in range(NEW_TOKENS):
        token = int(np.argmax(decode(token)))
        generated.append(token)
    decode_seconds = time.perf_counter() - start
    return {"prefill_tok_s": len(ids) / prefill_seconds, "decode_tok_s": NEW_TOKENS / decode_seconds,
            "peak_rss_mb": peak_rss_mb(), "tokens": generated[:16]}


def scan_child(engine, model_path, threads, ids, kv_cache):
    """Prefill tok/s for each length of SCAN_PROMPTS (from an empty cache), and decode tok/s
    of SCAN_DECODE_STEPS greedy steps after each number of positions of SCAN_FILLED."""
    import numpy as np

    prefill, decode = STEPS[engine](model_path, threads, SCAN_CONTEXT, kv_cache)
    decode(int(np.argmax(prefill(ids[:WARMUP_TOKENS]))))  # warm-up: first-call costs, page-ins
    record = {"prefill_tok_s": {}, "decode_tok_s": {}}
    for n in SCAN_PROMPTS:
        start = time.perf_counter()
        prefill(ids[:n])
        record["prefill_tok_s"][n] = n / (time.perf_counter() - start)
    for n in SCAN_FILLED:
        token = int(np.argmax(prefill(ids[:n])))
        start = time.perf_counter()
        for _ in range(SCAN_DECODE_STEPS):
            token = int(np.argmax(decode(token)))
        record["decode_tok_s"][n] = SCAN_DECODE_STEPS / (time.perf_counter() - start)
    record["peak_rss_mb"] = peak_rss_mb()
    return record


def first_token_child(engine, model_path, threads):
    """What a chat does for its first reply, for the engines without a chat CLI here
    (`model_path`: the GGUF for llama.cpp, the converted folder for transformers)."""
    messages = [{"role": "user", "content": CHAT_MESSAGE}]
    if engine == "llama_cpp":
        from llama_cpp import Llama
        llm = Llama(model_path, n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False)
        llm.create_chat_completion(messages, max_tokens=1, temperature=0.0)
    else:
        import torch
        import transformers
        torch.set_num_threads(threads)
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_path)
        model = transformers.AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
        model.generate(**ids, max_new_tokens=1, do_sample=False)


def convert_child(model_path, out_folder):
    """The GGUF dequantized to fp32 by transformers, saved as a Hugging Face folder."""
    import torch
    import transformers
    folder, name = os.path.split(os.path.abspath(model_path))
    transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(out_folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # a model loaded from GGUF refuses save_pretrained; an ordinary one with its weights does not
    plain = transformers.AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(out_folder)


# ----- the parent: spawn, collect, report ---------------------------------------------------

def thread_env(threads):
    env = dict(os.environ)
    # Python as users have it: caching modules' bytecode (this sandbox switches that off, so
    # that every start would compile every module again, llama_cpp's Python as well as ours)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


def run_speed(engine, model_path, threads, ids_arg, kv_cache, child="speed"):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", child, "--engine", engine,
           "--model", model_path, "--threads", str(threads), "--ids", ids_arg, "--kv-cache", kv_cache]
    out = subprocess.run(cmd, capture_output=True, text=True, env=thread_env(threads))
    if out.returncode:
        raise SystemExit(f"{engine} ({threads} threads) failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_first_token(engine, model_path, threads):
    """Seconds from spawning the process to its exit, and its peak RSS (os.wait4's rusage)."""
    if engine in ("llama_np", "llama_np_int8"):
        cmd = [sys.executable, "-m", "llama_np.chat", "--model", model_path, "--prompt", CHAT_MESSAGE,
               "--max-new-tokens", "1", "--temperature", "0", "--threads", str(threads)]
        if engine == "llama_np_int8":
            cmd.append("--int8-activations")
    else:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "first_token", "--engine", engine,
               "--model", model_path, "--threads", str(threads)]
    start = time.perf_counter()
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=thread_env(threads),
                               cwd=REPO)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if status:
        raise SystemExit(f"{engine} first-token run failed:\n{process.stderr.read().decode()[-2000:]}")
    process.stderr.close()
    process.returncode = 0  # reaped by wait4
    return seconds, usage.ru_maxrss / 1024


def convert_for_transformers(model_path, folder):
    print("transformers: converting the GGUF to an fp32 Hugging Face folder (once)", file=sys.stderr)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "convert", "--model", model_path, "--out", folder]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"converting for transformers failed:\n{out.stderr[-2000:]}")
    return folder


def measure(engines, model_for, args, ids_arg):
    """All runs, engines alternating: ({(engine, threads): [records]}, {engine: [(s, MiB)]},
    [1-minute load average before each measurement])."""
    results = {(e, t): [] for e in engines for t in args.threads}
    first_token = {e: [] for e in engines} if not args.no_first_token else {}
    loads = []
    for run in range(args.runs):
        for threads in args.threads:
            for engine in engines:
                loads.append(os.getloadavg()[0])
                record = run_speed(engine, model_for[engine], threads, ids_arg, args.kv_cache)
                results[(engine, threads)].append(record)
                print(f"run {run + 1}/{args.runs} {engine:12s} {threads} thr: prefill "
                      f"{record['prefill_tok_s']:6.0f} tok/s, decode {record['decode_tok_s']:5.1f} tok/s, "
                      f"RSS {record['peak_rss_mb']:4.0f} MiB (load {loads[-1]:.1f})", file=sys.stderr)
        for engine in first_token:
            loads.append(os.getloadavg()[0])
            seconds, rss = run_first_token(engine, model_for[engine], max(args.threads))
            first_token[engine].append((seconds, rss))
            print(f"run {run + 1}/{args.runs} {engine:12s} first token after {seconds:.2f} s, "
                  f"RSS {rss:.0f} MiB (load {loads[-1]:.1f})", file=sys.stderr)
    return results, first_token, loads


def measure_scan(engines, model_for, args, ids_arg):
    """--scan: every run of every engine in a fresh process, engines alternating:
    ({(engine, threads): [records]}, [load averages])."""
    results = {(e, t): [] for e in engines for t in args.threads}
    loads = []
    for run in range(args.runs):
        for threads in args.threads:
            for engine in engines:
                loads.append(os.getloadavg()[0])
                record = run_speed(engine, model_for[engine], threads, ids_arg, args.kv_cache, child="scan")
                results[(engine, threads)].append(record)
                print(f"run {run + 1}/{args.runs} {engine:12s} {threads} thr: prefill "
                      + " / ".join(f"{v:.0f}" for v in record["prefill_tok_s"].values()) + " tok/s, decode "
                      + " / ".join(f"{v:.1f}" for v in record["decode_tok_s"].values())
                      + f" tok/s (load {loads[-1]:.1f})", file=sys.stderr)
    return results, loads


def scan_medians(records, key):
    """{length: median tok/s} over the runs, for key "prefill_tok_s" or "decode_tok_s"."""
    lengths = records[0][key].keys()
    return {int(n): statistics.median(r[key][n] for r in records) for n in lengths}


def report_scan(results, engines, thread_counts, runs):
    """The scan as markdown tables on stdout; returns {(engine, threads): (prefill, decode)} medians."""
    medians = {k: (scan_medians(v, "prefill_tok_s"), scan_medians(v, "decode_tok_s")) for k, v in results.items()}
    print(f"\n### Context-length scan (medians of {runs} runs, tok/s)\n")
    print("| engine | threads | prefill, prompt of " + " / ".join(map(str, SCAN_PROMPTS))
          + " tokens | decode, " + " / ".join(map(str, SCAN_FILLED)) + " positions filled |")
    print("|---|---|---|---|")
    for engine in engines:
        for threads in thread_counts:
            prefill, decode = medians[(engine, threads)]
            print(f"| {engine} | {threads} | " + " / ".join(f"{prefill[n]:.0f}" for n in SCAN_PROMPTS) + " | "
                  + " / ".join(f"{decode[n]:.1f}" for n in SCAN_FILLED) + " |")
    if "llama_np" in engines:
        print("\n| llama_np vs (ratio of medians) | threads | prefill | decode |")
        print("|---|---|---|---|")
        for other in (e for e in engines if e != "llama_np"):
            for threads in thread_counts:
                ours, theirs = medians[("llama_np", threads)], medians[(other, threads)]
                print(f"| {other} | {threads} | "
                      + " / ".join(ratio(ours[0][n], theirs[0][n]) for n in SCAN_PROMPTS) + " | "
                      + " / ".join(ratio(ours[1][n], theirs[1][n]) for n in SCAN_FILLED) + " |")
    return medians


def plot_scan(medians, engines, threads, png_path, title):
    """Prefill and decode tok/s against the context, one line per engine, as a PNG."""
    from llama_np.files.figure import new_figure, save_figure

    fig = new_figure((10, 4))
    panels = fig.subplots(1, 2)
    for engine in engines:
        prefill, decode = medians[(engine, threads)]
        panels[0].plot(SCAN_PROMPTS, [prefill[n] for n in SCAN_PROMPTS], marker="o", label=engine)
        panels[1].plot(SCAN_FILLED, [decode[n] for n in SCAN_FILLED], marker="o", label=engine)
    for panel, what, x in ((panels[0], "prefill", "prompt tokens"), (panels[1], "decode", "positions filled")):
        panel.set_xlabel(x)
        panel.set_ylabel(f"{what} tok/s")
        panel.set_ylim(bottom=0)
        panel.grid(alpha=0.3)
        panel.legend()
    fig.suptitle(title, fontsize=9)
    save_figure(fig, png_path)


def versions(engines):
    import numpy
    found = [f"numpy {numpy.__version__}"]
    for engine in engines:
        if engine == "llama_cpp":
            import llama_cpp
            found.append(f"llama-cpp-python {llama_cpp.__version__}")
        elif engine == "transformers":
            import torch
            import transformers
            found.append(f"transformers {transformers.__version__} + torch {torch.__version__}")
    found.append(f"llama_np {commit()}")
    return ", ".join(found)


def importable(engine):
    import importlib.util
    return importlib.util.find_spec(ENGINE_MODULES[engine]) is not None


def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "-"


def report(results, first_token, engines, thread_counts, runs, model_path):
    """The tables, as markdown, on stdout."""
    print(f"\n### Inference, {os.path.basename(model_path)} (medians of {runs} runs)\n")
    print("| engine | threads | prefill tok/s, 128 tokens: median (best) | decode tok/s, 128 tokens: median (best) "
          "| peak RSS MiB | reference machine (docs/benchmarks.md#anchors) |")
    print("|---|---|---|---|---|---|")
    medians = {}
    for engine in engines:
        for threads in thread_counts:
            records = results[(engine, threads)]
            m = {key: statistics.median(r[key] for r in records)
                 for key in ("prefill_tok_s", "decode_tok_s", "peak_rss_mb")}
            best = {key: max(r[key] for r in records) for key in ("prefill_tok_s", "decode_tok_s")}
            medians[(engine, threads)] = m
            anchor = ANCHORS.get((engine, threads))
            anchor_text = f"{anchor[0]} / {anchor[1]}" if anchor else "-"
            print(f"| {engine} | {threads} | {m['prefill_tok_s']:.0f} ({best['prefill_tok_s']:.0f}) | "
                  f"{m['decode_tok_s']:.1f} ({best['decode_tok_s']:.1f}) | {m['peak_rss_mb']:.0f} | {anchor_text} |")
    others = [e for e in engines if e != "llama_np"]
    if "llama_np" in engines and others:
        print("\n| llama_np vs (ratio of medians) | threads | prefill | decode | peak RSS |")
        print("|---|---|---|---|---|")
        for other in others:
            for threads in thread_counts:
                ours, theirs = medians[("llama_np", threads)], medians[(other, threads)]
                print(f"| {other} | {threads} | {ratio(ours['prefill_tok_s'], theirs['prefill_tok_s'])} | "
                      f"{ratio(ours['decode_tok_s'], theirs['decode_tok_s'])} | "
                      f"{ratio(ours['peak_rss_mb'], theirs['peak_rss_mb'])} |")
    if first_token:
        threads = max(thread_counts)
        print(f"\n| engine | time to first token, s: median (best); process start, 16-token message, "
              f"{threads} threads | "
              f"peak RSS of that chat, MiB | reference machine |")
        print("|---|---|---|---|")
        for engine in engines:
            seconds = statistics.median(s for s, _ in first_token[engine])
            fastest = min(s for s, _ in first_token[engine])
            rss = statistics.median(r for _, r in first_token[engine])
            anchor = (f"{ANCHOR_TTFT[engine]} s, {ANCHOR_RSS_MB[engine]} MiB" if engine in ANCHOR_TTFT else "-")
            print(f"| {engine} | {seconds:.2f} ({fastest:.2f}) | {rss:.0f} | {anchor} |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a .gguf file (default: SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default: 1 2)")
    p.add_argument("--runs", type=int, default=5, help="runs per engine and thread count (default: 5)")
    p.add_argument("--engines", default=",".join(DEFAULT_ENGINES),
                   help="comma-separated, from " + ", ".join(ENGINES) + " (default: %(default)s)")
    p.add_argument("--no-first-token", action="store_true", help="skip the time-to-first-token runs")
    p.add_argument("--json", help="also write every measurement to this JSON file")
    p.add_argument("--scan", action="store_true",
                   help="the context-length scan: prefill of " + " / ".join(map(str, SCAN_PROMPTS))
                        + "-token prompts, decode after " + " / ".join(map(str, SCAN_FILLED)) + " positions")
    p.add_argument("--plot", default=os.path.join(REPO, "docs", "context_scan.png"),
                   help="where --scan writes its plot (default: docs/context_scan.png)")
    p.add_argument("--kv-cache", default="f16", choices=["f16", "f32", "q8_0"],
                   help="llama_np's KV cache format (default: %(default)s, the tools' default)")
    p.add_argument("--child", choices=["speed", "scan", "first_token", "convert"], help=argparse.SUPPRESS)  # internal
    p.add_argument("--engine", help=argparse.SUPPRESS)
    p.add_argument("--ids", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.model is None:
        from llama_np.files import hub
        args.model = hub.default_model_path()
    if args.child == "speed":
        ids = [int(i) for i in args.ids.split(",")]
        print(json.dumps(speed_child(args.engine, args.model, args.threads[0], ids, args.kv_cache)))
        return
    if args.child == "scan":
        ids = [int(i) for i in args.ids.split(",")]
        print(json.dumps(scan_child(args.engine, args.model, args.threads[0], ids, args.kv_cache)))
        return
    if args.child == "first_token":
        first_token_child(args.engine, args.model, args.threads[0])
        return
    if args.child == "convert":
        convert_child(args.model, args.out)
        return

    engines = [e for e in args.engines.split(",") if e]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise SystemExit(f"unknown engine {unknown[0]!r}; choose from {', '.join(ENGINES)}")
    for engine in list(engines):
        if not importable(engine):
            print(f"{engine}: not importable, skipped", file=sys.stderr)
            engines.remove(engine)
    n_ids = max(SCAN_PROMPTS + SCAN_FILLED) if args.scan else PROMPT_TOKENS
    ids_arg = ",".join(map(str, prompt_ids(args.model, n_ids)))
    with tempfile.TemporaryDirectory(prefix="bench_inference_") as scratch:
        model_for = {engine: args.model for engine in engines}
        if "transformers" in engines:
            model_for["transformers"] = convert_for_transformers(args.model, os.path.join(scratch, "hf"))
        if args.scan:
            results, loads = measure_scan(engines, model_for, args, ids_arg)
        else:
            results, first_token, loads = measure(engines, model_for, args, ids_arg)

    if args.scan:
        machine, software = machine_description(), versions(engines)
        print(f"Machine: {machine}")
        print(f"Software: {software}; llama_np KV cache {args.kv_cache}")
        print(f"Load average (1 min) at the start of each measurement: median {statistics.median(loads):.1f}, "
              f"range {min(loads):.1f}-{max(loads):.1f} (on {os.cpu_count()} cores)")
        medians = report_scan(results, engines, args.threads, args.runs)
        threads = max(args.threads)
        plot_scan(medians, engines, threads, args.plot,
                  f"{os.path.basename(args.model)}, {threads} threads, medians of {args.runs}, "
                  f"load {statistics.median(loads):.1f}; {machine}")
        print(f"\nplot: {args.plot}")
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump({"machine": machine, "software": software, "load": loads,
                           "scan": {f"{e}/{t}": r for (e, t), r in results.items()}}, f, indent=1)
        return

    print(f"Machine: {machine_description()}")
    print(f"Software: {versions(engines)}")
    print(f"Load average (1 min) at the start of each measurement: median {statistics.median(loads):.1f}, "
          f"range {min(loads):.1f}-{max(loads):.1f} (on {os.cpu_count()} cores)")
    report(results, first_token, engines, args.threads, args.runs, args.model)
    greedy = {e: results[(e, max(args.threads))][0]["tokens"] for e in engines}
    print("\nFirst 16 greedy tokens after the prompt: "
          + "; ".join(f"{e}: {'same as llama_np' if e != 'llama_np' and t == greedy.get('llama_np') else t}"
                      for e, t in greedy.items()))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": machine_description(), "software": versions(engines), "load": loads,
                       "speed": {f"{e}/{t}": r for (e, t), r in results.items()},
                       "first_token": first_token}, f, indent=1)


if __name__ == "__main__":
    main()
