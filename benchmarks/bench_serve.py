"""Serving throughput and latency: N concurrent clients against `python -m llama_np.serve`.

    python benchmarks/bench_serve.py                               # default model, 1 2 4 8 16 clients
    python benchmarks/bench_serve.py --clients 1,8 --requests 2 --max-tokens 32   # a short run
    python benchmarks/bench_serve.py --json serve.json --plot docs/serve_throughput.png

The server runs in its own process (`--parallel` = the most clients, `--threads`), started
once; every client is a thread with the `openai` package's client, streaming chat
completions (with usage) one after another. For each number of clients N:

- aggregate tok/s: completion tokens of all N clients / wall time of the phase (prompts,
  queueing and all);
- decode tok/s: the tokens after each stream's first, Σ (tokens − 1), / the time from the
  first stream's first token to the last stream's last: the decode throughput, without
  the prompts' own time but with every step that also filled a prompt chunk (the phase
  holds N × requests prompts, read while other streams decode);
- steady tok/s: the decode throughput while all N streams are decoding at once, no prompt
  being read: over the stretches of time when N streams are between their first and last
  token, the inter-token gaps that fall inside a stretch / the stretches' length. This is
  the number continuous batching is about (for one client: its decode tok/s, without the
  pause between one request's last token and the next one's first);
- time to first token (TTFT): request sent → first piece of text, p50 and p95;
- inter-token latency (ITL): the gaps between consecutive pieces of text of a stream,
  p50 and p95 (a piece is usually one token);
- the ratios of both to one client's: what continuous batching buys.

Each client asks its own question (so the streams differ), greedy by default
(`--temperature`), `--max-tokens` each. The CPU model and the load average before and after
are printed: on a shared machine they say how far to trust the numbers.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time

from bench_env import REPO, commit
from llama_np.kernels.cpu import cpu_model

TOPICS = ["the sea", "a lighthouse", "autumn leaves", "a robot gardener", "the first snow", "a city at night",
          "an old map", "a lost key", "mountain rivers", "a paper boat", "the desert wind", "a violin maker",
          "a small library", "the northern lights", "a train journey", "a forgotten garden"]


def load_average():
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def percentile(values, q):
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def start_server(args, parallel):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "llama_np.serve", "--model", args.model, "--port", str(port),
               "--parallel", str(parallel), "--threads", str(args.threads), "--ctx", str(args.ctx),
               "--queue", str(4 * parallel)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import httpx
    deadline = time.monotonic() + 300
    while True:
        if process.poll() is not None:
            raise SystemExit(f"the server did not start: {process.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise SystemExit("the server did not start within 300 s")
        time.sleep(0.2)


def one_stream(client, args, topic):
    """(completion tokens, TTFT s, [times of the pieces of text]) of one streamed chat
    completion."""
    sent = time.perf_counter()
    stream = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": f"Write a long, detailed story about {topic}."}],
        max_tokens=args.max_tokens, temperature=args.temperature, stream=True,
        stream_options={"include_usage": True})
    times, tokens = [], 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            times.append(time.perf_counter())
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return tokens, times[0] - sent if times else float("nan"), times


def full_stretches(streams, n):
    """The stretches of time [(start, end)] when n of the streams (lists of piece times) are
    between their first and their last piece."""
    edges = sorted([(s[0], 1) for s in streams] + [(s[-1], -1) for s in streams])
    stretches, active = [], 0
    for t, step in edges:
        if active == n and step < 0:
            stretches.append((start, t))
        active += step
        if active == n and step > 0:
            start = t
    return stretches


def steady_tok_s(streams, n):
    """Pieces per second while n streams decode at once: the gaps between consecutive pieces
    that lie inside a stretch of full_stretches, over the stretches' total length."""
    stretches = full_stretches(streams, n)
    seconds = sum(end - start for start, end in stretches)
    gaps = sum(max(sum(start <= t <= end for t in s) - 1, 0) for start, end in stretches for s in streams)
    return gaps / seconds if seconds > 0 else float("nan")


def phase(base_url, args, n_clients):
    import openai
    results, errors = [], []

    def client_loop(k):
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
        for r in range(args.requests):
            try:
                results.append(one_stream(client, args, TOPICS[(k + r * n_clients) % len(TOPICS)]))
            except Exception as e:   # noqa: BLE001 — counted and reported, the run goes on
                errors.append(repr(e))

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(n_clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    tokens = sum(r[0] for r in results)
    ttfts = [r[1] for r in results]
    streams = [r[2] for r in results if r[2]]
    gaps = [b - a for s in streams for a, b in zip(s, s[1:])]
    decode_span = max(s[-1] for s in streams) - min(s[0] for s in streams) if streams else 0.0
    decode_tokens = sum(max(r[0] - 1, 0) for r in results if r[2])
    return {"clients": n_clients, "requests": len(results), "errors": len(errors), "tokens": tokens,
            "seconds": seconds, "tok_s": tokens / seconds if seconds else float("nan"),
            "decode_tok_s": decode_tokens / decode_span if decode_span > 0 else float("nan"),
            "steady_tok_s": steady_tok_s(streams, n_clients),
            "ttft_p50": percentile(ttfts, 50), "ttft_p95": percentile(ttfts, 95),
            "itl_p50": percentile(gaps, 50), "itl_p95": percentile(gaps, 95), "error_messages": errors[:3]}


def plot(rows, path, title):
    from llama_np.files.figure import new_figure, save_figure
    figure = new_figure((9, 3.6))
    clients = [r["clients"] for r in rows]
    ax = figure.add_subplot(1, 2, 1)
    ax.plot(clients, [r["tok_s"] for r in rows], "o-", label="aggregate (with prompts)")
    ax.plot(clients, [r["decode_tok_s"] for r in rows], "s-", label="decode (first to last token)")
    ax.plot(clients, [r["steady_tok_s"] for r in rows], "^-", label="decode, all N streaming")
    ax.plot(clients, [rows[0]["decode_tok_s"] * c for c in clients], ":", color="gray", label="N × one client's decode")
    ax.set_xscale("log", base=2)
    ax.set_xticks(clients, [str(c) for c in clients])
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("generated tokens / s")
    ax.set_ylim(0, max(max(r["tok_s"], r["decode_tok_s"], r["steady_tok_s"]) for r in rows) * 1.3)
    ax.legend()
    ax.set_title("throughput")
    ax = figure.add_subplot(1, 2, 2)
    for key, label in (("ttft", "time to first token"), ("itl", "inter-token latency")):
        ax.plot(clients, [r[f"{key}_p50"] * 1000 for r in rows], "o-", label=f"{label} p50")
        ax.plot(clients, [r[f"{key}_p95"] * 1000 for r in rows], "o--", label=f"{label} p95")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(clients, [str(c) for c in clients])
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("ms")
    ax.legend(fontsize=7)
    ax.set_title("latency")
    figure.suptitle(title, fontsize=9)
    save_figure(figure, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--clients", default="1,2,4,8,16", help="comma-separated client counts")
    parser.add_argument("--requests", type=int, default=2, help="requests per client in each phase")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--plot", help="write the figure here (PNG)")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]

    revision = commit()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; server threads {args.threads}; "
          f"llama_np {revision}; model {args.model}")
    print(f"load average before: {load_average()}")
    process, base_url = start_server(args, max(clients))
    try:
        phase(base_url, argparse.Namespace(**{**vars(args), "requests": 1, "max_tokens": 4}), 1)   # warm-up
        rows = []
        for n in clients:
            rows.append(phase(base_url, args, n))
            r = rows[-1]
            print(f"  {n:>2} clients: {r['tokens']} tokens in {r['seconds']:.1f} s, errors {r['errors']}",
                  flush=True)
    finally:
        process.terminate()
        process.wait(30)
    print(f"load average after: {load_average()}\n")
    one, one_decode, one_steady = ((rows[0]["tok_s"], rows[0]["decode_tok_s"], rows[0]["steady_tok_s"])
                                   if rows[0]["clients"] == 1 else (float("nan"),) * 3)
    print("| clients | requests | tokens | aggregate tok/s (× 1 client) | decode tok/s (× 1 client) "
          "| steady tok/s, all streaming (× 1 client) | TTFT p50 / p95 ms | ITL p50 / p95 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clients']} | {r['requests']} | {r['tokens']} | {r['tok_s']:.1f} ({r['tok_s'] / one:.2f}×) | "
              f"{r['decode_tok_s']:.1f} ({r['decode_tok_s'] / one_decode:.2f}×) | "
              f"{r['steady_tok_s']:.1f} ({r['steady_tok_s'] / one_steady:.2f}×) | "
              f"{r['ttft_p50'] * 1000:.0f} / {r['ttft_p95'] * 1000:.0f} | "
              f"{r['itl_p50'] * 1000:.0f} / {r['itl_p95'] * 1000:.0f} |")
    if args.json:
        from llama_np.files.atomic import atomic_write_text
        atomic_write_text(args.json, json.dumps({"cpu": cpu_model(), "commit": revision, "args": vars(args),
                                                 "rows": rows}, indent=2))
    if args.plot:
        plot(rows, args.plot, f"llama_np serve, {args.model} model, {args.threads} threads, {cpu_model()}, {revision}")


if __name__ == "__main__":
    main()
