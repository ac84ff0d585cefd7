"""LoRA training speed and memory: llama_np beside PyTorch + peft on the same model and batch.

    python benchmarks/train_bench.py                      # SmolLM2-135M, batch 4 x 256, 2 threads
    python benchmarks/train_bench.py --runs 3 --steps 4   # more repetitions
    python benchmarks/train_bench.py --base-dtype float32 # llama_np with an fp32 copy of the base
    python benchmarks/train_bench.py --setting stage2     # the recipe's stage 2: LoRA + embedding/head

Two settings, each a FinetuneConfig that both engines train (llama_np through
training.run.initial_adapter, PyTorch through the same LoraConfig turned into peft's by
training.export.peft_lora_kwargs, as the exported Trainer + peft script does):

  lora    (default) docs/benchmarks.md#how-speed-is-measured: r = 8, alpha = 32, dropout
          0.05 on q,k,v,o,gate,up,down, AdamW, gradient clipping (FinetuneConfig's defaults);
          the batch is the responses of alpaca_en_demo.json; llama_np's base stays quantized.
  stage2  the recipe's pre-training stage 2 (chinese.recipe.stage_configs): the same LoRA
          on the seven projections plus the token embedding trained in full, on the model
          resized to the extended Chinese vocabulary. SmolLM2 ties the output head to the
          embedding, so one trained [V', 576] copy serves both (peft: modules_to_save
          embed_tokens + lm_head with ensure_weight_tying; nn.Embedding's padding_idx cleared
          as the export's train.py does, so the pad token's row trains as in llama_np).
          Without --resized the resized model is made here by the recipe's own steps 1 and 2
          (about 30 s): 4,000 tokens learnt from its pre-training text (the default budget),
          so 49,152 + 4,000 = 53,152 rows, the new ones started from the old tokens that
          spell them. The batch is that Chinese text in the extended vocabulary; llama_np's
          base is an fp32 copy, as the recipe trains its stages (--base-dtype to change it).

The batch is real text, tokenized and packed, every position a target, 4 x 256 tokens by
default. Each engine runs in its own process (so that peak RSS is its own), engines
alternate run by run (so that a busy machine slows both alike), the first step of each run
is a warm-up, and the medians of the step times are reported, with the machine. Before
timing, each engine reports what it trains (parameters, the embedding copy, whether the head
is tied to it) and the run stops if the two differ; the first-step losses (the base model's,
LoRA's B being zero) are printed side by side. PyTorch is skipped if torch, transformers or
peft are missing; transformers reads the same GGUF and dequantizes it to fp32.
"""
import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from bench_env import blas_description, machine_description

SETTINGS = ("lora", "stage2")


def run_settings(setting, model):
    """The FinetuneConfig of `setting` on the model file `model`: what both engines train."""
    from llama_np.training.config import FinetuneConfig
    if setting == "lora":
        return FinetuneConfig(model=model, seed=0)   # its defaults are the paper's LoRA setting
    from llama_np.chinese.recipe import RecipeConfig, stage_configs
    # stage 2 reads neither the pre-training text's path nor old_vocab (stage 1's rows)
    return stage_configs(RecipeConfig(out="recipe"), model, pretrain_text=None, old_vocab=None)["stage2"]


def batch_texts(setting):
    """The texts a setting's batch is packed from: alpaca_en_demo's responses, or (stage 2)
    the recipe's Chinese pre-training text."""
    from llama_np.files import hub
    if setting == "lora":
        from llama_np.training.data import read_alpaca
        return (r["output"] for r in read_alpaca(hub.data_path("hiyouga/LLaMA-Factory/data/alpaca_en_demo.json")))
    from llama_np.chinese import corpus
    from llama_np.chinese.defaults import DEFAULT_PRETRAIN_TEXT
    return corpus.chinese_documents("train", DEFAULT_PRETRAIN_TEXT)


def batch_ids(model_path, texts, batch, seq_len):
    """[batch, seq_len] token ids of `texts` packed, each ended by EOS (same for both engines)."""
    import numpy as np
    from llama_np.checkpoint import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    ids = []
    for text in texts:
        ids += tokenizer.encode(text, add_bos=False) + [tokenizer.eos_id]
        if len(ids) >= batch * seq_len:
            break
    return np.array(ids[:batch * seq_len], dtype=np.int64).reshape(batch, seq_len)


def stage2_model(base, folder):
    """`base` resized to the extended vocabulary, in `folder`: the recipe's steps 1 and 2
    (extend, resize) on its pre-training text with its default budget's new tokens. Prints
    the rows."""
    from llama_np.checkpoint.gguf_file import GGUFFile
    from llama_np.chinese import corpus, recipe
    from llama_np.chinese.defaults import BUDGETS, DEFAULT_BUDGET

    print("making the resized model (the recipe's extend + resize, untrained) ...", file=sys.stderr, flush=True)
    text, tokenizer_dir, resized = (os.path.join(folder, n) for n in ("zh_train.txt", "tokenizer", "resized.gguf"))
    corpus.write_text_file(list(batch_texts("stage2")), text)
    with contextlib.redirect_stdout(sys.stderr):
        recipe.extend(base, text, tokenizer_dir, BUDGETS[DEFAULT_BUDGET]["new_tokens"])
        recipe.resize(base, tokenizer_dir, resized)
    old, new = (len(GGUFFile(path).metadata["tokenizer.ggml.tokens"]) for path in (base, resized))
    print(f"resized {old:,} -> {new:,} rows", file=sys.stderr)
    return resized


def peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # kB → GB


def run_llama_np(args, ids):
    import numpy as np
    from llama_np.checkpoint.gguf import load_gguf
    from llama_np.quant import dense
    from llama_np.training.run import initial_adapter
    from llama_np.training.trainer import AdamW, clip_grad_norm
    from llama_np.training.trainable import TrainableLlama

    settings = run_settings(args.setting, args.model)
    config, weights, _ = load_gguf(args.model)
    if args.base_dtype == "float32":
        weights = {name: dense(w) for name, w in weights.items()}
    adapter = initial_adapter(settings, config, weights, start_from_init=False)
    model = TrainableLlama(config, weights, adapter)   # every row trains (trainable_rows is stage 1's)
    trains = {"trainable": adapter.n_trainable(), "tied": model.output_head is model.embedding,
              "embedding": None if adapter.embedding is None else list(adapter.embedding.shape)}
    optimizer = AdamW(model.params, weight_decay=settings.weight_decay)
    rng = np.random.Generator(np.random.SFC64(0))   # as the Trainer's dropout generator
    times, losses = [], []
    for _ in range(args.steps + 1):
        start = time.perf_counter()
        loss, _, grads = model.loss_and_grads(ids, ids, rng, threads=args.threads)
        clip_grad_norm(grads, settings.max_grad_norm)
        optimizer.step(model.params, grads, settings.lr)
        times.append(time.perf_counter() - start)
        losses.append(loss)
    return times[1:], losses, trains


def torch_trains(model):
    """What a peft model trains: parameters, the embedding copy, whether the head uses it."""
    def weight(module):  # the weight a module computes with: a ModulesToSaveWrapper's copy
        copies = getattr(module, "modules_to_save", None)
        return (copies[module.active_adapter] if copies is not None else module).weight

    base = model.get_base_model()
    embedding, head = weight(base.get_input_embeddings()), weight(base.get_output_embeddings())
    return {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),  # shared once
            "tied": head is embedding, "embedding": list(embedding.shape) if embedding.requires_grad else None}


def run_torch(args, ids):
    import torch
    import transformers
    import peft
    from llama_np.training.export import peft_lora_kwargs
    from llama_np.training.run import adapter_config

    torch.set_num_threads(args.threads)
    settings = run_settings(args.setting, args.model)
    folder, name = os.path.split(os.path.abspath(args.model))
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    lora_config = adapter_config(settings, model.config.tie_word_embeddings)
    model = peft.get_peft_model(model, peft.LoraConfig(task_type="CAUSAL_LM", **peft_lora_kwargs(lora_config)))
    for module in model.modules():
        # as the export's train.py: llama_np trains every row, padding_idx would hold the pad token's
        if isinstance(module, torch.nn.Embedding):
            module.padding_idx = None
    trains = torch_trains(model)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    batch = torch.tensor(ids)
    times, losses = [], []
    for _ in range(args.steps + 1):
        start = time.perf_counter()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], settings.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    return times[1:], losses, trains


def child(args):
    """One engine, one run, in this process: prints a JSON line."""
    import numpy as np
    ids = np.load(args.ids_file)
    runner = run_llama_np if args.engine == "llama_np" else run_torch
    times, losses, trains = runner(args, ids)
    print(json.dumps({"times": times, "losses": losses, "trains": trains, "peak_rss_gb": peak_rss_gb()}))


def describe(trains):
    embedding = trains["embedding"]
    what = f"embedding {embedding[0]:,} x {embedding[1]} trained" if embedding else "embedding frozen"
    return f"{trains['trainable']:,} trainable parameters, {what}, head {'tied to it' if trains['tied'] else 'untied'}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setting", choices=SETTINGS, default="lora",
                   help="lora: LoRA on the seven projections; stage2: the recipe's stage 2, LoRA + the "
                        "embedding (= tied head) on the extended vocabulary (default: %(default)s)")
    p.add_argument("--model", default=None, help="a .gguf file (default: SmolLM2-135M-Instruct Q4_1); "
                                                 "with --setting stage2 the base that is resized")
    p.add_argument("--resized", default=None, metavar="GGUF",
                   help="--setting stage2: the model already resized to the extended vocabulary (e.g. a "
                        "recipe's resized.gguf); default: made here from --model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="timed steps per run (after one warm-up step)")
    p.add_argument("--runs", type=int, default=2, help="runs per engine, alternating")
    p.add_argument("--base-dtype", choices=["quantized", "float32"], default=None,
                   help="llama_np's frozen base (default: the setting's: quantized for lora, float32 for "
                        "stage2 as the recipe trains)")
    p.add_argument("--engines", default="llama_np,torch")
    p.add_argument("--engine", help=argparse.SUPPRESS)    # internal: run one engine
    p.add_argument("--ids-file", help=argparse.SUPPRESS)
    args = p.parse_args()
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    if args.model is None:
        from llama_np.files import hub
        args.model = hub.default_model_path()
    if args.base_dtype is None:
        args.base_dtype = run_settings(args.setting, args.model).base_dtype
    if args.engine:
        return child(args)
    if args.resized and args.setting != "stage2":
        p.error("--resized is for --setting stage2")

    with tempfile.TemporaryDirectory() as scratch:
        if args.setting == "stage2":
            args.model = args.resized or stage2_model(args.model, scratch)
        results = measure(args, scratch)
    report(args, results)


def measure(args, scratch):
    """The runs, engines alternating: {engine: {"times", "rss", "losses", "trains"}}."""
    import numpy as np
    ids = batch_ids(args.model, batch_texts(args.setting), args.batch, args.seq_len)
    ids_file = os.path.join(scratch, "ids.npy")
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
                   "--setting", args.setting, "--model", args.model, "--threads", str(args.threads),
                   "--steps", str(args.steps), "--base-dtype", args.base_dtype]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                print(out.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"{engine} run failed")
            record = json.loads(out.stdout.strip().splitlines()[-1])
            results[engine]["times"] += record["times"]
            results[engine]["rss"].append(record["peak_rss_gb"])
            results[engine]["losses"] = record["losses"]
            if run == 0:
                results[engine]["trains"] = record["trains"]
                print(f"{engine}: {describe(record['trains'])}", file=sys.stderr)
            print(f"run {run + 1} {engine:9s} s/step {' '.join(f'{t:.2f}' for t in record['times'])}  "
                  f"peak RSS {record['peak_rss_gb']:.2f} GB  loss {record['losses'][0]:.3f}", file=sys.stderr)
        if run == 0 and len({json.dumps(r["trains"]) for r in results.values()}) > 1:
            raise SystemExit("the engines do not train the same parameters (above): no comparison")
    return results


def report(args, results):
    from llama_np.llama.adapter import parse_target_modules
    s = run_settings(args.setting, args.model)
    tokens = args.batch * args.seq_len
    what = ("LoRA training" if args.setting == "lora" else
            "Stage-2 training (the recipe's: LoRA + the embedding, its tied head with it)")
    print(f"\n{what}, {os.path.basename(args.model)}, batch {args.batch} x {args.seq_len}, "
          f"r={s.lora_r} alpha={s.lora_alpha:g} dropout {s.lora_dropout:g}, "
          f"{len(parse_target_modules(s.target_modules))} projections, AdamW lr {s.lr:g}, "
          f"clipping {s.max_grad_norm:g}, "
          f"{args.threads} threads (llama_np base: {args.base_dtype}); medians of {args.runs} x {args.steps} steps")
    print(f"Machine: {machine_description()}")
    print(blas_description())
    print(f"Trains: {describe(next(iter(results.values()))['trains'])}")
    print(f"{'engine':10s} {'s/step':>8s} {'tokens/s':>9s} {'peak RSS':>9s} {'loss 1':>7s}")
    speed = {}
    for engine, r in results.items():
        step = statistics.median(r["times"])
        speed[engine] = tokens / step
        print(f"{engine:10s} {step:8.2f} {speed[engine]:9.0f} {statistics.median(r['rss']):8.2f}G "
              f"{r['losses'][0]:7.4f}")
    if len(speed) == 2:
        anchor = " (anchor on the reference machine: PyTorch ~210 tok/s, 5.5 GB)" if args.setting == "lora" else ""
        loss_gap = abs(results["llama_np"]["losses"][0] - results["torch"]["losses"][0])
        print(f"llama_np / PyTorch tokens/s: {speed['llama_np'] / speed['torch']:.2f}x{anchor}; "
              f"first-step losses differ by {loss_gap:.1e}")


if __name__ == "__main__":
    main()
