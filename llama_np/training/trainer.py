"""The training loop: AdamW, the learning-rate schedule, gradient clipping and accumulation,
and checkpoints that make an interrupted run continue exactly where it stopped.

One optimizer step:

    for each of `grad_accum` micro-batches:            (B examples each, right-padded)
        loss, grads = forward + backward                (gradients summed over micro-batches)
    g = g · min(1, max_norm / ‖g‖)                      (clip the global gradient norm)
    θ = AdamW(θ, g, lr(step))                           (decoupled weight decay)

The gradient of the whole step is that of the mean loss over all its target tokens, however
they are split into micro-batches.

Exact resume: the batch of step n is a pure function of n (`data.BatchSchedule`), and a
checkpoint holds everything else that changes — the adapter, AdamW's moments and step
count, and the state of the random generator that draws LoRA dropout masks, taken at the
start of the step. So 10 steps + resume + 10 steps computes bit for bit what 20 steps do.
"""
import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from llama_np import ops
from llama_np.checkpoint.peft import load_adapter, save_adapter
from llama_np.files.atomic import atomic_folder, atomic_write_text
from llama_np.files.figure import new_figure, save_figure
from llama_np.files.text import read_json
from llama_np.kernels import native
from llama_np.llama.adapter import EMBED, LM_HEAD
from llama_np.training.training_layer import accumulate

LATEST = "latest"                 # the file naming the newest checkpoint folder of a run
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
LOG_FILE = "train_log.jsonl"
PLOT_FILE = "loss.png"
# AdamW's constants, torch.optim.AdamW's defaults (training.export writes them for PyTorch)
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


# -------------------------------------------------------------------------- AdamW
class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), as torch.optim.AdamW:

        θ ← θ - lr·λ·θ                                  (decay, not part of the gradient)
        m ← β1 m + (1 - β1) g,   v ← β2 v + (1 - β2) g²
        θ ← θ - lr · m̂ / (√v̂ + ε),   m̂ = m / (1 - β1^t),  v̂ = v / (1 - β2^t)

    `use_kernels`: float32 parameters are updated by the C kernel (`native.adamw_`, one pass
    over each array) where it was built, with the same floats as the NumPy form below.
    """

    def __init__(self, params, betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=0.0, row_masks=None,
                 lr_scales=None, use_kernels=True):
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.weight_decay = weight_decay
        # {name: bool [rows]}: rows that train. The others get no gradient, so Adam leaves
        # them alone, but weight decay would not: it is applied to the trained rows only.
        self.row_masks = row_masks or {}
        # {name: factor}: a parameter whose learning rate is factor × the step's (e.g. the
        # embeddings, which Adam moves by about lr per element per step, every row alike)
        self.lr_scales = lr_scales or {}
        self.use_kernels = use_kernels and native.AVAILABLE
        self.t = 0
        self._buffers = None
        self.m = {name: np.zeros_like(p) for name, p in params.items()}
        self.v = {name: np.zeros_like(p) for name, p in params.items()}

    def step(self, params, grads, lr):
        """Update `params` in place with `grads` (a parameter without a gradient is left alone,
        as torch does for p.grad is None)."""
        self.t += 1
        bias1 = 1.0 - self.beta1 ** self.t
        bias2 = 1.0 - self.beta2 ** self.t
        for name, g in grads.items():
            p, m, v = params[name], self.m[name], self.v[name]
            param_lr = lr * self.lr_scales.get(name, 1.0)
            f = p.dtype.type
            decay = f(1.0 - param_lr * self.weight_decay)
            if name in self.row_masks and decay != 1:
                p[self.row_masks[name]] *= decay             # the trained rows only
                decay = f(1.0)
            constants = (decay, f(self.beta1), f(1.0 - self.beta1), f(self.beta2), f(1.0 - self.beta2),
                         f(math.sqrt(bias2)), f(self.eps), f(param_lr / bias1))
            arrays = (p, g, m, v)
            if self.use_kernels and all(a.dtype == np.float32 and a.flags.c_contiguous for a in arrays):
                native.adamw_(*arrays, *constants)
            else:
                self._update(*arrays, *constants)

    def _update(self, p, g, m, v, decay, beta1, one_minus_beta1, beta2, one_minus_beta2, sqrt_bias2, eps,
                lr_over_bias1):
        """The NumPy form: the formulas above, operation for operation, in two scratch arrays
        (the embedding of the recipe's stage 2 has 30 M elements, and each temporary is
        another pass); the constants are of p's dtype."""
        if decay != 1:
            p *= decay
        step, denom = self._scratch(g)
        m *= beta1
        m += np.multiply(g, one_minus_beta1, out=step)
        v *= beta2
        v += np.multiply(one_minus_beta2, np.multiply(g, g, out=step), out=step)
        np.sqrt(v, out=denom)
        denom /= sqrt_bias2
        denom += eps
        np.multiply(lr_over_bias1, m, out=step)
        p -= np.divide(step, denom, out=step)

    def _scratch(self, like):
        """Two arrays shaped like `like`, views of buffers kept for the largest parameter."""
        if self._buffers is None or self._buffers[0].size < like.size or self._buffers[0].dtype != like.dtype:
            self._buffers = (np.empty(like.size, like.dtype), np.empty(like.size, like.dtype))
        return tuple(b[:like.size].reshape(like.shape) for b in self._buffers)

    def state_tensors(self):
        tensors = {f"m.{name}": m for name, m in self.m.items()}
        tensors.update({f"v.{name}": v for name, v in self.v.items()})
        return tensors

    def load_state_tensors(self, tensors, t):
        for name in self.m:
            if f"m.{name}" not in tensors or f"v.{name}" not in tensors:
                raise ValueError(f"optimizer state has no moments for {name!r}")
            self.m[name][...] = tensors[f"m.{name}"]
            self.v[name][...] = tensors[f"v.{name}"]
        self.t = t


# ------------------------------------------------------------ schedule, clipping
def learning_rate(step, base_lr, total_steps, warmup_steps=0, schedule="cosine"):
    """The learning rate of optimizer step `step` (0-based), as transformers' schedulers:
    linear warm-up from 0 over `warmup_steps`, then cosine or linear decay to 0 at
    `total_steps` (or constant)."""
    if step < warmup_steps:
        return base_lr * step / max(1, warmup_steps)
    if schedule == "constant":
        return base_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "linear":
        return base_lr * max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return base_lr * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown learning-rate schedule {schedule!r} (cosine, linear, constant)")


def clip_grad_norm(grads, max_norm):
    """Scale all gradients by min(1, max_norm / ‖g‖), ‖g‖ the norm of all of them together.
    Returns ‖g‖ before clipping."""
    total = math.sqrt(sum(float(np.dot(g.reshape(-1), g.reshape(-1))) for g in grads.values()))
    if max_norm and total > max_norm:
        scale = max_norm / (total + 1e-6)
        for g in grads.values():
            g *= g.dtype.type(scale)
    return total


# ------------------------------------------------------------------- the trainer
@dataclass
class TrainConfig:
    lr: float = 2e-4
    embedding_lr: float = None      # peak lr of the embedding / head copies; None: lr
    steps: int = 100                # optimizer steps in the whole run
    grad_accum: int = 1
    warmup_steps: int = 0
    schedule: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    save_every: int = 0             # 0: only at the end (and on Ctrl-C)
    eval_every: int = 0             # 0: only at the end
    keep_checkpoints: int = 2


class Trainer:
    """Runs `config.steps` optimizer steps of `model` (a `training.TrainableLlama`) on the
    micro-batches of `batches` (a `data.BatchSchedule`), writing into `out_dir`:

        checkpoint-{step}/     adapter (PEFT) + optimizer.safetensors + trainer_state.json
        latest                 the name of the newest complete checkpoint
        train_log.jsonl        one JSON object per step (loss, lr, grad norm, tokens/s, …)
        loss.png               the loss curve, drawn at the end
    """

    def __init__(self, model, batches, config, out_dir, eval_batches=None, run_info=None,
                 progress=True, threads=1):
        self.model = model
        self.batches = batches
        self.config = config
        self.out_dir = os.fspath(out_dir)
        self.eval_batches = eval_batches
        self.run_info = run_info or {}   # e.g. the command-line arguments, kept in checkpoints
        self.progress = progress
        self.threads = threads            # micro-batches are split into this many shards
        lr_scales = {}
        if config.embedding_lr is not None:
            lr_scales = {name: config.embedding_lr / config.lr for name in model.params
                         if name in (EMBED, LM_HEAD)}
        self.optimizer = AdamW(model.params, weight_decay=config.weight_decay,
                               row_masks=getattr(model, "row_masks", lambda: None)(), lr_scales=lr_scales,
                               use_kernels=model.backend.name == "c")   # C as the model's ops are
        # LoRA dropout draws millions of numbers per step: SFC64 is NumPy's fastest generator
        self.rng = np.random.Generator(np.random.SFC64(config.seed))
        self.step = 0
        self.history = []                 # the log records of this run

    # ----------------------------------------------------------------- one step
    def train_step(self):
        """One optimizer step; returns its log record."""
        cfg = self.config
        started = time.perf_counter()
        micro = [self.batches.micro_batch(self.step * cfg.grad_accum + k) for k in range(cfg.grad_accum)]
        n_targets = sum(ops.count_targets(labels) for _, labels in micro)
        grads, total_nll, n_tokens = {}, 0.0, 0
        for ids, labels in micro:
            loss, n, micro_grads = self.model.loss_and_grads(ids, labels, self.rng, n_targets_total=n_targets,
                                                             threads=self.threads)
            for name, g in micro_grads.items():
                accumulate(grads, name, g)
            total_nll += loss * n
            n_tokens += _real_tokens(labels)
        grad_norm = clip_grad_norm(grads, cfg.max_grad_norm)
        lr = learning_rate(self.step, cfg.lr, cfg.steps, cfg.warmup_steps, cfg.schedule)
        self.optimizer.step(self.model.params, grads, lr)
        self.step += 1
        seconds = time.perf_counter() - started
        return {"step": self.step, "loss": total_nll / max(n_targets, 1), "lr": lr,
                "grad_norm": grad_norm, "tokens": n_tokens, "targets": n_targets,
                "seconds": round(seconds, 3), "tokens_per_s": round(n_tokens / seconds, 1)}

    def evaluate(self):
        """Mean loss over every target token of the evaluation set (no dropout)."""
        total, count = 0.0, 0
        for m in range(len(self.eval_batches)):
            ids, labels = self.eval_batches.micro_batch(m)
            loss, n = self.model.loss(ids, labels, threads=self.threads)
            total += loss * n
            count += n
        return total / max(count, 1)

    # ----------------------------------------------------------------- the loop
    def train(self, stop_at=None):
        """Train until `config.steps` (or until step `stop_at`, as if interrupted there; the
        schedule still runs over `config.steps`). The first Ctrl-C finishes the current step,
        saves a checkpoint and raises KeyboardInterrupt; a second one stops at once (the last
        checkpoint stays valid). Returns the log records of this call."""
        cfg = self.config
        stop_at = min(stop_at or cfg.steps, cfg.steps)
        os.makedirs(self.out_dir, exist_ok=True)
        stop = {"requested": False}
        previous_handler = _install_sigint(stop)
        bar = _progress_bar(self.progress, cfg.steps, self.step)
        last_saved = self.step
        try:
            while self.step < stop_at:
                record = self.train_step()  # a second Ctrl-C interrupts it: nothing is saved
                if self.eval_batches is not None and (
                        self.step == cfg.steps or (cfg.eval_every and self.step % cfg.eval_every == 0)):
                    record["eval_loss"] = self.evaluate()
                self._log(record)
                if bar is not None:
                    bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}",
                                    refresh=False)
                    bar.update(1)
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.save_checkpoint()
                    last_saved = self.step
                if stop["requested"]:
                    break
        finally:
            if bar is not None:
                bar.close()
            _restore_sigint(previous_handler)
        if self.step != last_saved:
            self.save_checkpoint()
        if stop["requested"]:
            raise KeyboardInterrupt(f"stopped at step {self.step}; checkpoint saved in {self.out_dir}")
        return self.history

    def _log(self, record):
        self.history.append(record)
        with open(os.path.join(self.out_dir, LOG_FILE), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    # -------------------------------------------------------------- checkpoints
    def save_checkpoint(self):
        """Write checkpoint-{step}/ into a temporary folder, rename it into place, then point
        `latest` at it (each rename atomic): a crash at any moment leaves the previous
        checkpoint intact. Older checkpoints beyond `keep_checkpoints` are removed. The RNG
        state saved is the one the next step starts from."""
        from safetensors.numpy import save_file

        name = f"checkpoint-{self.step}"
        final = os.path.join(self.out_dir, name)
        with atomic_folder(final) as tmp:
            save_adapter(tmp, self.model.adapter)
            save_file({k: np.ascontiguousarray(v) for k, v in self.optimizer.state_tensors().items()},
                      os.path.join(tmp, OPTIMIZER_FILE))
            state = {"step": self.step, "optimizer_t": self.optimizer.t,
                     "rng": _to_json(self.rng.bit_generator.state), "train_config": asdict(self.config),
                     "run": self.run_info}
            with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as f:
                json.dump(state, f, indent=1)
        atomic_write_text(os.path.join(self.out_dir, LATEST), name + "\n")
        self._prune_checkpoints(keep=name)
        return final

    def _prune_checkpoints(self, keep):
        for _, folder in checkpoints(self.out_dir)[:-max(1, self.config.keep_checkpoints)]:
            if os.path.basename(folder) != keep:
                shutil.rmtree(folder, ignore_errors=True)

    def resume(self):
        """Load the newest checkpoint of `out_dir` (adapter, optimizer, step, RNG) and drop
        log lines written after it. Returns the step it resumes from."""
        from llama_np.checkpoint.safetensors import read_safetensors

        folder = latest_checkpoint(self.out_dir)
        state = read_json(os.path.join(folder, STATE_FILE), what="the checkpoint's state")
        adapter = load_adapter(folder, tied_base=self.model.adapter.tied_base)
        params = self.model.params
        if set(adapter.params) != set(params):
            raise ValueError(f"{folder}: the checkpoint's adapter has other tensors than this run's "
                             f"(different --target-modules, --trainable or model?)")
        for name, value in adapter.params.items():
            if value.shape != params[name].shape:
                raise ValueError(f"{folder}: {name} has shape {value.shape}, this run's is {params[name].shape}")
            params[name][...] = value
        self.optimizer.load_state_tensors(read_safetensors(os.path.join(folder, OPTIMIZER_FILE)),
                                          state["optimizer_t"])
        self.rng.bit_generator.state = _from_json(state["rng"])
        self.step = int(state["step"])
        self._truncate_log()
        return self.step

    def _truncate_log(self):
        path = os.path.join(self.out_dir, LOG_FILE)
        if not os.path.exists(path):
            return
        kept = [json.dumps(r) + "\n" for r in read_log(path) if r.get("step", 0) <= self.step]
        atomic_write_text(path, "".join(kept))

    def plot(self, path=None):
        """The loss curve of the whole run (from train_log.jsonl) as a PNG."""
        return plot_log(os.path.join(self.out_dir, LOG_FILE), path or os.path.join(self.out_dir, PLOT_FILE))


def checkpoints(out_dir):
    """(step, path) of the checkpoint-N folders in a run's output folder, by step."""
    names = os.listdir(out_dir) if os.path.isdir(out_dir) else []
    return sorted((int(name.split("-")[1]), os.path.join(out_dir, name)) for name in names
                  if name.startswith("checkpoint-") and name.split("-")[1].isdigit())


def latest_checkpoint(out_dir):
    """The folder `latest` names in a run's output folder."""
    pointer = os.path.join(out_dir, LATEST)
    if not os.path.exists(pointer):
        raise FileNotFoundError(f"{out_dir}: no checkpoint to resume from (no '{LATEST}' file)")
    with open(pointer, encoding="utf-8") as f:
        folder = os.path.join(out_dir, f.read().strip())
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{pointer} names {folder}, which does not exist")
    return folder


def read_log(path):
    """The records of train_log.jsonl, without a last line that a kill cut short (the log is
    appended to, one line per step, so that is the only way a line can be broken)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line for line in f if line.strip()]
    records = []
    for k, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError:
            if k < len(lines) - 1:
                raise ValueError(f"{path}: line {k + 1} is not JSON") from None
    return records


def plot_log(log_path, png_path):
    """Training (and evaluation) loss against step, written atomically as a PNG
    (`llama_np.files.figure`: the process's matplotlib backend is left as it was)."""
    records = read_log(log_path)
    fig = new_figure((7, 4))
    ax = fig.subplots()
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], label="train loss", lw=1)
    evals = [r for r in records if "eval_loss" in r]
    if evals:
        ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, png_path)
    return png_path


# ---------------------------------------------------------------------- helpers
def _real_tokens(labels):
    """Tokens of a right-padded batch that are not padding: each row up to its last label."""
    labelled = labels != ops.IGNORE_INDEX                                         # [B, T]
    last = labels.shape[1] - 1 - np.argmax(labelled[:, ::-1], axis=1)             # [B]
    return int(np.sum(np.where(labelled.any(axis=1), last + 1, 0)))


def _to_json(value):
    """A random generator's state (with uint64 arrays in it) as plain JSON values."""
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return {"ndarray": [int(x) for x in value.reshape(-1)], "dtype": str(value.dtype)}
    return value


def _from_json(value):
    if isinstance(value, dict):
        if set(value) == {"ndarray", "dtype"}:
            return np.array(value["ndarray"], dtype=value["dtype"])
        return {k: _from_json(v) for k, v in value.items()}
    return value


def _install_sigint(stop):
    """First Ctrl-C: ask the loop to stop after this step. Second: interrupt at once."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        print("\nCtrl-C: finishing this step and saving a checkpoint (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, handler)
    return previous


def _restore_sigint(previous):
    if previous is not None:
        signal.signal(signal.SIGINT, previous)


def _progress_bar(enabled, total, initial):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit="step", file=sys.stderr, dynamic_ncols=True)
