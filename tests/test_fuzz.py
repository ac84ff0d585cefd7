"""Fuzzing the readers: seeded mutations of real files (GGUF headers, metadata and tensor
tables; safetensors headers; config.json; SentencePiece protobufs; tokenizer.json; Alpaca
JSON/JSONL; adapter_config.json and adapter weights; chat templates), each fed to the reader
a tool uses (tests/fuzz_cases.py). Every case must end in a valid load or a clean error of
llama_np's own types — never another exception, never a signal, never longer than
CASE_SECONDS. The counts are printed at the end of the test run (conftest.py).

    LLAMA_NP_FUZZ_CASES=2000 LLAMA_NP_FUZZ_SEED=7 python -m pytest tests/test_fuzz.py

CI runs FUZZ_CASES cases per target with the fixed seed FUZZ_SEED.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fuzz_cases
from conftest import REPO
from test_train_cli import tiny_model_folder

FUZZ_CASES = int(os.environ.get("LLAMA_NP_FUZZ_CASES", "40"))   # per target
FUZZ_SEED = int(os.environ.get("LLAMA_NP_FUZZ_SEED", "20260"))
CASE_SECONDS = 30   # far above any case's time (milliseconds): only a hang comes near it
COUNTS = {}         # target → {"cases", "valid", "error"}: printed by conftest's summary hook

ALPACA = [{"instruction": "Name a colour.", "input": "", "output": "Red."},
          {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
          {"instruction": "翻译成英文", "input": "你好", "output": "Hello"}]
SENTENCES = ["The quick brown fox jumps over the lazy dog.", "你好，世界。今天天气很好。",
             "A LLaMA reads text as tokens.", "Pack my box with five dozen liquor jugs."] * 20


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """The real files every mutation starts from: a tiny Hugging Face LLaMA with its BPE
    tokenizer, the same model as a Q8_0 GGUF, a LoRA adapter for it, a SentencePiece
    model, an Alpaca file."""
    from llama_np.checkpoint import load_model
    from llama_np.checkpoint.peft import save_adapter
    from llama_np.checkpoint.quantize import quantize_checkpoint
    from llama_np.chinese.vocab_sentencepiece import train_model, write_model
    from llama_np.llama.adapter import Adapter, LoraConfig

    root = tmp_path_factory.mktemp("fuzz_fixtures")
    hf = tiny_model_folder(root / "hf", tied=False)
    quantize_checkpoint(hf, str(root / "model.gguf"), "Q8_0", "F32", progress=False)
    model, _ = load_model(hf)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    adapter = Adapter.init(model.config, model.weights, lora, np.random.default_rng(0))
    for name, p in adapter.params.items():
        p[...] = np.random.default_rng(1).normal(0, 0.1, p.shape)
    save_adapter(str(root / "adapter"), adapter)
    write_model(train_model(SENTENCES, 50), str(root / "sp.model"))
    (root / "alpaca.json").write_text(json.dumps(ALPACA, ensure_ascii=False), encoding="utf-8")
    return str(root)


def run_worker(target, fixtures, work, n_cases=FUZZ_CASES, seed=FUZZ_SEED):
    """Run n_cases of `target` in a fresh process; returns (results, returncode, stderr)."""
    process = subprocess.run(
        [sys.executable, os.path.join(REPO, "tests", "fuzz_cases.py"), target, str(seed), str(n_cases),
         fixtures, str(work)], cwd=REPO, capture_output=True, text=True,
        timeout=CASE_SECONDS * max(n_cases, 1))
    lines = [json.loads(line) for line in process.stdout.splitlines() if line.startswith("{")]
    return lines, process.returncode, process.stderr


@pytest.mark.parametrize("target", sorted(fuzz_cases.TARGETS))
def test_mutated_files_are_loaded_or_refused_cleanly(target, fixtures, tmp_path):
    lines, returncode, stderr = run_worker(target, fixtures, tmp_path)
    results = [r for r in lines if "case" in r]
    started = [r["start"] for r in lines if "start" in r]
    where = f"(reproduce: python tests/fuzz_cases.py {target} {FUZZ_SEED} N fixtures work)"
    assert returncode == 0, (f"the worker died (exit {returncode}) during case {started[-1] if started else None} "
                             f"{where}\n{stderr[-3000:]}")
    assert len(results) == FUZZ_CASES, stderr[-3000:]
    foreign = [r for r in results if r["outcome"] == "foreign"]
    assert not foreign, f"{len(foreign)} case(s) raised what a tool would show as a traceback {where}:\n" + \
        "\n".join(f"case {r['case']}: {r['traceback']}" for r in foreign[:3])
    slow = [r for r in results if r["seconds"] > CASE_SECONDS]
    assert not slow, f"cases took longer than {CASE_SECONDS} s: {slow}"
    COUNTS[target] = {"cases": len(results),
                      "valid": sum(r["outcome"] == "valid" for r in results),
                      "error": sum(r["outcome"] == "error" for r in results)}


# ----- through the tools themselves: one line, exit 1 --------------------------------------------

def bad_files(fixtures, tmp_path):
    """A few of the listed bad inputs, written as files: (tool arguments, words in the error)."""
    gguf = open(os.path.join(fixtures, "model.gguf"), "rb").read()
    version, kvs, tensors, data, _ = fuzz_cases.parse_gguf(gguf)

    def gguf_with(key, vtype, value):
        path = tmp_path / f"{key.replace('.', '_')}_{str(value).replace('.', '_')}.gguf"
        changed = [(k, vtype, value) if k == key else (k, t, v) for k, t, v in kvs]
        path.write_bytes(fuzz_cases.write_gguf(version, changed, tensors, data))
        return str(path)

    cases = [
        (["generate", "--model", gguf_with("llama.attention.head_count", 4, 0), "--prompt", "hi"], "num_attention_heads"),
        (["generate", "--model", gguf_with("llama.attention.head_count_kv", 4, 0), "--prompt", "hi"], "num_key_value_heads"),
        (["perplexity", "--model", gguf_with("llama.attention.layer_norm_rms_epsilon", 6, float("nan")), "--file", "x"],
         "rms_norm_eps"),
        (["generate", "--model", gguf_with("llama.attention.layer_norm_rms_epsilon", 6, -1e-5), "--prompt", "hi"],
         "rms_norm_eps"),
        (["generate", "--model", gguf_with("llama.rope.freq_base", 6, 0.0), "--prompt", "hi"], "rope_theta"),
        (["generate", "--model", gguf_with("llama.block_count", 4, 10**9), "--prompt", "hi"], "more than"),
    ]
    duplicated = tmp_path / "duplicate.gguf"
    duplicated.write_bytes(fuzz_cases.write_gguf(version, kvs, tensors + tensors[:1], data))
    cases.append((["generate", "--model", str(duplicated), "--prompt", "hi"], "appears twice"))
    for name, change, words in [("list", lambda c: [c], "JSON object"),
                                ("theta", lambda c: dict(c, rope_theta=None), "rope_theta"),
                                ("layers", lambda c: dict(c, num_hidden_layers=10**9), "more than")]:
        folder = tmp_path / f"hf_{name}"
        import shutil
        shutil.copytree(os.path.join(fixtures, "hf"), folder)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(change(config)))
        cases.append((["generate", "--model", str(folder), "--prompt", "hi"], words))
    return cases


def test_the_listed_bad_files_end_in_one_error_line(fixtures, tmp_path):
    for argv, words in bad_files(fixtures, tmp_path):
        if argv[0] == "perplexity":
            text = tmp_path / "text.txt"
            text.write_text("Some text to score. " * 20)
            argv = argv[:-1] + [str(text)]
        result = subprocess.run([sys.executable, "-m", f"llama_np.{argv[0]}", *argv[1:], "--threads", "1"],
                                cwd=REPO, capture_output=True, text=True, timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), (argv, result.stderr)
        assert words in lines[0], (argv, lines[0])
