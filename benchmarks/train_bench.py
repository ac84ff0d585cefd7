"""LoRA training speed and memory: llama_np beside PyTorch + peft on the same model and batch.

    python benchmarks/train_bench.py                      # SmolLM2-135M, batch 4 x 256, 2 threads
    python benchmarks/train_bench.py --runs 3 --steps 4   # more repetitions
    python benchmarks/train_bench.py --base-dtype float32 # llama_np with an fp32 copy of the base

The setting of docs/benchmarks.md#how-speed-is-measured: r = 8, alpha = 32, dropout 0.05
on q,k,v,o,gate,up,down, AdamW, gradient clipping, batch 4 x 256 tokens, every position a
target. The batch is real text (the responses of alpaca_en_demo.json, tokenized and
packed). Each engine runs in its own process (so that peak RSS is its own), engines
alternate run by run (so that a busy machine slows both alike), the first step of each run
is a warm-up, and the medians of the step times are reported. PyTorch is skipped if torch,
transformers or peft are missing; transformers reads the same GGUF and dequantizes it to
fp32.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
if not os.environ.get("LLAMA_NP_DATA") and os.path.isdir(os.path.join(REPO, "..", "shared", "data")):
    os.environ["LLAMA_NP_DATA"] = os.path.join(REPO, "..", "shared", "data")  # the data mirror

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def batch_ids(model_path, batch, seq_len):
    """[batch, seq_len] token ids of packed alpaca_en_demo responses (same for both engines)."""
    import numpy as np
    from llama_np.files import hub
    from llama_np.training.data import read_alpaca
    from llama_np.checkpoint import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    ids = []
    for record in read_alpaca(hub.data_path("hiyouga/LLaMA-Factory/data/alpaca_en_demo.json")):
        ids += tokenizer.encode(record["output"], add_bos=False) + [tokenizer.eos_id]
        if len(ids) >= batch * seq_len:
            break
    return np.array(ids[:batch * seq_len], dtype=np.int64).reshape(batch, seq_len)


def peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # kB → GB


def run_llama_np(args, ids):
    import numpy as np
    from llama_np.llama import adapter as lora
    from llama_np.checkpoint.gguf import load_gguf
    from llama_np.training.trainer import AdamW, clip_grad_norm
    from llama_np.training.trainable import TrainableLlama

    config, weights, _ = load_gguf(args.model)
    if args.base_dtype == "float32":
        weights = {name: lora.dense(w) for name, w in weights.items()}
    lora_config = lora.LoraConfig(r=8, lora_alpha=32, lora_dropout=0.05, target_modules=TARGETS)
    adapter = lora.Adapter.init(config, weights, lora_config, np.random.default_rng(0))
    model = TrainableLlama(config, weights, adapter)
    optimizer = AdamW(model.params)
    rng = np.random.Generator(np.random.SFC64(0))   # as the Trainer's dropout generator
    times, losses = [], []
    for _ in range(args.steps + 1):
        start = time.perf_counter()
        loss, _, grads = model.loss_and_grads(ids, ids, rng, threads=args.threads)
        clip_grad_norm(grads, 1.0)
        optimizer.step(model.params, grads, 2e-4)
        times.append(time.perf_counter() - start)
        losses.append(loss)
    return times[1:], losses


def run_torch(args, ids):
    import torch
    import transformers
    import peft

    torch.set_num_threads(args.threads)
    folder, name = os.path.split(os.path.abspath(args.model))
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
    model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=32, lora_dropout=0.05,
                                                       target_modules=TARGETS, task_type="CAUSAL_LM"))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, weight_decay=0.0)
    batch = torch.tensor(ids)
    times, losses = [], []
    for _ in range(args.steps + 1):
        start = time.perf_counter()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    return times[1:], losses


def child(args):
    """One engine, one run, in this process: prints a JSON line."""
    import numpy as np
    ids = np.load(args.ids_file)
    runner = run_llama_np if args.engine == "llama_np" else run_torch
    times, losses = runner(args, ids)
    print(json.dumps({"times": times, "losses": losses, "peak_rss_gb": peak_rss_gb()}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a .gguf file (default: SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="timed steps per run (after one warm-up step)")
    p.add_argument("--runs", type=int, default=2, help="runs per engine, alternating")
    p.add_argument("--base-dtype", choices=["quantized", "float32"], default="quantized")
    p.add_argument("--engines", default="llama_np,torch")
    p.add_argument("--engine", help=argparse.SUPPRESS)    # internal: run one engine
    p.add_argument("--ids-file", help=argparse.SUPPRESS)
    args = p.parse_args()
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    if args.model is None:
        from llama_np.files import hub
        args.model = hub.default_model_path()
    if args.engine:
        return child(args)

    import numpy as np
    ids = batch_ids(args.model, args.batch, args.seq_len)
    ids_file = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"train_bench_ids_{os.getpid()}.npy")
    np.save(ids_file, ids)
    engines = [e for e in args.engines.split(",") if e]
    if "torch" in engines:
        try:
            import peft, torch, transformers  # noqa: F401
        except ImportError:
            print("torch/transformers/peft not importable: PyTorch skipped", file=sys.stderr)
            engines.remove("torch")
    results = {e: {"times": [], "rss": [], "losses": []} for e in engines}
    for run in range(args.runs):
        for engine in engines:
            cmd = [sys.executable, os.path.abspath(__file__), "--engine", engine, "--ids-file", ids_file,
                   "--model", args.model, "--threads", str(args.threads), "--steps", str(args.steps),
                   "--base-dtype", args.base_dtype]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                print(out.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"{engine} run failed")
            record = json.loads(out.stdout.strip().splitlines()[-1])
            results[engine]["times"] += record["times"]
            results[engine]["rss"].append(record["peak_rss_gb"])
            results[engine]["losses"] = record["losses"]
            print(f"run {run + 1} {engine:9s} s/step {' '.join(f'{t:.2f}' for t in record['times'])}  "
                  f"peak RSS {record['peak_rss_gb']:.2f} GB  loss {record['losses'][0]:.3f}", file=sys.stderr)
    os.remove(ids_file)

    tokens = args.batch * args.seq_len
    print(f"\nLoRA training, {os.path.basename(args.model)}, batch {args.batch} x {args.seq_len}, "
          f"r=8 alpha=32 dropout 0.05, 7 projections, AdamW, {args.threads} threads "
          f"(llama_np base: {args.base_dtype}); medians of {args.runs} x {args.steps} steps")
    print(f"{'engine':10s} {'s/step':>8s} {'tokens/s':>9s} {'peak RSS':>9s}")
    speed = {}
    for engine, r in results.items():
        step = statistics.median(r["times"])
        speed[engine] = tokens / step
        print(f"{engine:10s} {step:8.2f} {speed[engine]:9.0f} {statistics.median(r['rss']):8.2f}G")
    if len(speed) == 2:
        print(f"llama_np / PyTorch tokens/s: {speed['llama_np'] / speed['torch']:.2f}x "
              f"(anchor on the reference machine: PyTorch ~210 tok/s, 5.5 GB)")


if __name__ == "__main__":
    main()
