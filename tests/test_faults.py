"""The fault suite: each long-running tool (quantize, merge_lora, finetune, recipe, evaluate)
is killed with SIGKILL at a random moment, then run again (finetune with --resume once it
has a checkpoint); the rerun must finish with the same outputs as a run never interrupted,
and leave no temporary file behind.

"A random moment" is one of the events a tool passes through, chosen by a seeded generator:
every rename into place (`os.replace`: just before it and just after it) and the tool's own
steps (a tensor written, a training step logged, an answer appended). The tool runs under
FAULT_RUNNER, which stops at each event until the test says "go"; the test kills it while it
waits there, so the moment is the same on any machine, fast or slow — no sleeps.

    LLAMA_NP_FAULT_CASES=10 python -m pytest tests/test_faults.py    # more kill points per tool
"""
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from test_recipe import TINY_RECIPE
from test_train_cli import tiny_model_folder

FAULT_CASES = int(os.environ.get("LLAMA_NP_FAULT_CASES", "2"))   # kill points per tool
FAULT_SEED = int(os.environ.get("LLAMA_NP_FUZZ_SEED", "20260"))
TIMEOUT = 300
ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")

# Runs llama_np.<tool>.main(argv) and stops at every event: os.replace, before and after,
# and each function named in HOOKS ("module:function" or "module:Class.method").
FAULT_RUNNER = r"""
import importlib, os, sys
from llama_np.cli import common as cli

def pause(name):
    print("@@event " + name, flush=True)
    if sys.stdin.readline() != "go\n":
        os._exit(3)

real_replace = os.replace
def replace(src, dst):
    pause("replace " + os.path.basename(dst))
    real_replace(src, dst)
    pause("replaced " + os.path.basename(dst))
os.replace = replace

def hooked(real, label):
    def run(*args, **kwargs):
        pause(label)
        return real(*args, **kwargs)
    return run

tool, hooks, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
for spec in filter(None, hooks.split(",")):
    module_name, attribute = spec.split(":")
    owner = importlib.import_module(module_name)
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    setattr(owner, name, hooked(getattr(owner, name), spec))
tool = importlib.import_module("llama_np." + tool)
cli.run(lambda: tool.main(argv))
"""


def run_tool(tool, hooks, argv, log, kill_at=None):
    """Run `tool` under FAULT_RUNNER; kill it at event number `kill_at` (None: never).
    Returns (events seen, exit code or None when killed)."""
    with open(log, "a") as err:
        process = subprocess.Popen([sys.executable, "-c", FAULT_RUNNER, tool, ",".join(hooks), *argv],
                                   cwd=REPO, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=err, text=True)
        events = []
        try:
            for line in process.stdout:
                if not line.startswith("@@event "):
                    continue
                if kill_at is not None and len(events) == kill_at:
                    process.send_signal(signal.SIGKILL)   # while it waits at this event
                    process.wait()
                    return events, None
                events.append(line[len("@@event "):].strip())
                process.stdin.write("go\n")
                process.stdin.flush()
            return events, process.wait(timeout=TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def rerun(tool, argv, log):
    result = subprocess.run([sys.executable, "-m", f"llama_np.{tool}", *argv], cwd=REPO, env=ENV,
                            capture_output=True, text=True, timeout=TIMEOUT)
    with open(log, "a") as f:
        f.write(result.stderr)
    assert result.returncode == 0, result.stderr[-3000:]


def leftovers(folder):
    """Temporary files or folders (atomic writes' `.name.pid.random.tmp`) under `folder`."""
    found = []
    for root, dirs, files in os.walk(folder):
        found += [os.path.join(root, n) for n in dirs + files if n.endswith(".tmp") or ".tmp." in n]
    return found


def digest(path):
    """A fingerprint of a file's bytes, or of every file in a folder but the logs and plots
    (timings and speeds differ from run to run)."""
    if os.path.isfile(path):
        return hashlib.sha256(open(path, "rb").read()).hexdigest()
    return {os.path.relpath(os.path.join(root, n), path): digest(os.path.join(root, n))
            for root, _, files in os.walk(path) for n in files}


def answers(folder):
    with open(os.path.join(folder, "answers.jsonl"), encoding="utf-8") as f:
        return [{k: v for k, v in json.loads(line).items() if "second" not in k} for line in f]


def adapter_tensors(folder):
    from safetensors.numpy import load_file
    return load_file(os.path.join(folder, "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny HF model, the same as an F32 GGUF, a LoRA adapter for it, Alpaca data, prompts."""
    from llama_np.checkpoint import load_model
    from llama_np.checkpoint.peft import save_adapter
    from llama_np.checkpoint.quantize import quantize_checkpoint
    from llama_np.llama.adapter import Adapter, LoraConfig
    from test_evaluate import PROMPTS
    from test_train_cli import CORPUS

    root = tmp_path_factory.mktemp("faults")
    hf = tiny_model_folder(root / "hf")
    quantize_checkpoint(hf, str(root / "tiny.gguf"), "F32", "F32", progress=False)
    model, _ = load_model(hf)
    adapter = Adapter.init(model.config, model.weights, LoraConfig(r=4, lora_alpha=8), np.random.default_rng(0))
    for p in adapter.params.values():
        p[...] = np.random.default_rng(1).normal(0, 0.1, p.shape)
    save_adapter(str(root / "adapter"), adapter)
    records = [{"instruction": s, "input": "", "output": CORPUS[(i + 1) % len(CORPUS)]} for i, s in enumerate(CORPUS * 2)]
    (root / "train.json").write_text(json.dumps(records))
    (root / "prompts.json").write_text(json.dumps(PROMPTS))
    return {"hf": hf, "gguf": str(root / "tiny.gguf"), "adapter": str(root / "adapter"),
            "data": str(root / "train.json"), "prompts": str(root / "prompts.json")}


# tool → (hooks, argv(models, out), the output to compare, how to recover after a kill)
TOOLS = {
    "quantize": (["gguf:GGUFWriter.write_tensor_data"],
                 lambda m, out: [m["hf"], "--type", "Q8_0", "--out", os.path.join(out, "q8.gguf"), "--quiet",
                                 "--threads", "1"], "q8.gguf"),
    "merge_lora": (["gguf:GGUFWriter.write_tensor_data"],
                   lambda m, out: ["--model", m["gguf"], "--adapter", m["adapter"], "--out",
                                   os.path.join(out, "merged.gguf"), "--threads", "1"], "merged.gguf"),
    "finetune": (["llama_np.training.trainer:Trainer._log"],
                 lambda m, out: ["--model", m["hf"], "--data", m["data"], "--out", os.path.join(out, "run"),
                                 "--steps", "4", "--save-every", "2", "--batch-size", "2", "--max-seq-len", "64",
                                 "--threads", "1", "--quiet"], "run"),
    "evaluate": (["llama_np.chinese.evaluation:append_answer"],
                 lambda m, out: ["--model", m["hf"], "--prompts", m["prompts"], "--out", os.path.join(out, "eval"),
                                 "--max-new-tokens", "4", "--threads", "1", "--quiet"], "eval"),
    "recipe": (["llama_np.training.trainer:Trainer._log"],
               lambda m, out: ["--model", m["gguf"], "--out", os.path.join(out, "recipe"), *TINY_RECIPE], "recipe"),
}


def same_outputs(tool, reference, result):
    """The rerun's outputs equal the uninterrupted run's."""
    if tool in ("quantize", "merge_lora"):
        assert digest(result) == digest(reference)
    elif tool == "finetune":
        expected, got = adapter_tensors(reference), adapter_tensors(result)
        assert expected.keys() == got.keys()
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
        steps = [json.loads(line)["step"] for line in open(os.path.join(result, "train_log.jsonl")) if line.strip()]
        assert steps == sorted(set(steps)) and steps[-1] == 4
    elif tool == "evaluate":  # the same answers, in order (their timings differ)
        assert answers(result) == answers(reference)
    else:  # the recipe: every stage's adapter, and the results
        for stage in ("stage1", "stage2", "sft"):
            expected, got = adapter_tensors(os.path.join(reference, stage)), adapter_tensors(os.path.join(result, stage))
            for name in expected:
                np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-6, err_msg=f"{stage} {name}")
        steps = json.load(open(os.path.join(result, "results.json")))["steps"]
        assert list(steps) == ["base", "tokenizer", "resized", "stage1", "stage2", "sft"]


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_a_killed_tool_reruns_to_the_same_result_and_leaves_nothing_behind(tool, models, tmp_path):
    hooks, argv_of, output = TOOLS[tool]
    log = str(tmp_path / "stderr.log")
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    events, code = run_tool(tool, hooks, argv_of(models, str(reference_dir)), log)
    assert code == 0, open(log).read()[-3000:]
    assert events, "the tool passed no event: the hooks are not where the tool works"
    rng = random.Random(f"{FAULT_SEED}:{tool}")
    for case in range(FAULT_CASES):
        kill_at = rng.randrange(len(events))
        out = tmp_path / f"killed{case}"
        out.mkdir()
        argv = argv_of(models, str(out))
        seen, code = run_tool(tool, hooks, argv, log, kill_at=kill_at)
        assert code is None and len(seen) == kill_at, (seen, code)
        resume = tool == "finetune" and os.path.exists(os.path.join(out, "run", "latest"))
        rerun(tool, argv + (["--resume"] if resume else []), log)
        where = f"killed at event {kill_at} of {len(events)} ({events[kill_at]})"
        assert not leftovers(out), f"{where}: left behind {leftovers(out)}"
        try:
            same_outputs(tool, os.path.join(reference_dir, output), os.path.join(out, output))
        except AssertionError as e:
            raise AssertionError(f"{where}: {e}") from None
        shutil.rmtree(out)
