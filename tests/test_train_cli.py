"""`python -m llama_np.finetune` and `python -m llama_np.merge_lora` on a tiny model with a
real (tiny, trained here) byte-level BPE tokenizer: outputs, resume, and every bad input
ending in one line on stderr and a non-zero exit."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, save_tiny_llama
from llama_np import finetune
from llama_np.checkpoint.peft import apply_adapters
from llama_np.cli import common as cli
from llama_np.llama import adapter as lora
from llama_np.training import trainer as train

CORPUS = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France.",
          "Two plus two is four.", "Write a short poem about the sea.", "Name three colours: red, blue, green."]


def tiny_model_folder(folder, tied=True, hidden=64, heads=4, kv_heads=2):
    """A tiny random LLaMA plus a byte-level BPE tokenizer.json trained on a few sentences."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    from llama_np.training.data import TRAIN_TEMPLATE  # so that prompts fit the tiny model's 128 positions
    tok.train_from_iterator(CORPUS * 5 + [TRAIN_TEMPLATE] * 20, trainer)
    save_tiny_llama(folder, tied=tied, vocab=tok.get_vocab_size(), hidden=hidden, heads=heads, kv_heads=kv_heads)
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "add_bos_token": True}, f)
    return str(folder)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def alpaca(tmp_path):
    records = [{"instruction": s, "input": "" if i % 2 else "now", "output": CORPUS[(i + 1) % len(CORPUS)]}
               for i, s in enumerate(CORPUS * 2)]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(records))
    return str(path)


def run_cli(module_main, argv, capsys):
    """Run a CLI main in-process exactly as `cli.run` does; returns (exit code, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.run(lambda: module_main(argv))
    return exit_info.value.code, capsys.readouterr().err


def test_finetune_writes_adapter_log_plot_and_checkpoints(tiny, alpaca, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run_cli(finetune.main, ["--model", tiny, "--data", alpaca, "--eval-data", alpaca,
                                        "--out", str(out), "--steps", "4", "--save-every", "2",
                                        "--lora-r", "4", "--lr", "1e-2", "--no-progress"], capsys)
    assert code == 0, err
    assert {"adapter_config.json", "adapter_model.safetensors", "train_log.jsonl", "loss.png",
            "latest", "checkpoint-2", "checkpoint-4"} <= set(os.listdir(out))
    log = train.read_log(out / "train_log.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3, 4] and "eval_loss" in log[-1]
    assert all(r["tokens_per_s"] > 0 for r in log)
    config = json.load(open(out / "adapter_config.json"))
    assert config["r"] == 4 and config["lora_alpha"] == 32 and len(config["target_modules"]) == 7
    assert "adapter in" in err

    # the adapter runs under the inference model, and resume continues the same run
    from llama_np.checkpoint import load_model
    model, _ = load_model(tiny)
    apply_adapters(model, [str(out)])
    assert "model.layers.1.mlp.down_proj.weight" in model.lora
    code, err = run_cli(finetune.main, ["--out", str(out), "--resume", "--steps", "6", "--no-progress"], capsys)
    assert code == 0, err
    assert "resuming at step 4" in err
    assert [r["step"] for r in train.read_log(out / "train_log.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_plain_text_and_embeddings_only(tiny, tmp_path, capsys):
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(CORPUS * 4))
    out = tmp_path / "pt"
    code, err = run_cli(finetune.main, ["--model", tiny, "--data", str(text), "--out", str(out),
                                        "--trainable", "embeddings", "--embedding-rows-from", "350",
                                        "--max-seq-len", "32", "--steps", "2", "--weight-decay", "0.1",
                                        "--no-progress"], capsys)
    assert code == 0, err
    from llama_np.checkpoint.peft import load_adapter
    from llama_np.checkpoint.safetensors import load_hf
    adapter = load_adapter(out, tied_base=True)
    assert list(adapter.params) == [lora.EMBED]
    _, base = load_hf(tiny)
    changed = np.flatnonzero(np.any(adapter.params[lora.EMBED] != base[lora.EMBED], axis=1))
    assert changed.size and changed.min() >= 350   # only the chosen rows trained (and decayed)


@pytest.mark.parametrize("flags, message", [
    (["--data", "MISSING.json"], "MISSING.json: cannot read the Alpaca data"),
    (["--data", "BAD"], "record 1: missing field 'output'"),
    (["--target-modules", "q,wq"], "target module 'wq' does not exist"),
    (["--trainable", "lora,norms"], "unknown part 'norms'"),
    (["--model", "nowhere/model.gguf"], "nowhere/model.gguf: no such model"),
    (["--resume"], "no checkpoint to resume from"),
    (["--init-adapter", "OTHER"], "another architecture"),
    (["--max-seq-len", "100000"], "exceeds the model's context"),
])
def test_bad_input_is_one_line_and_nonzero_exit(tiny, alpaca, tmp_path, capsys, flags, message):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c", "input": ""}]))
    if "OTHER" in flags:  # an adapter made for a narrower model
        from llama_np.checkpoint.peft import save_adapter
        from llama_np.checkpoint.safetensors import load_hf
        save_tiny_llama(tmp_path / "other", tied=True, hidden=32, heads=2, kv_heads=1)
        config, weights = load_hf(str(tmp_path / "other"))
        save_adapter(tmp_path / "o", lora.Adapter.init(config, weights, lora.LoraConfig(target_modules=["q_proj"]),
                                                       np.random.default_rng(0)))
        capsys.readouterr()
    flags = [str(bad) if f == "BAD" else str(tmp_path / "o") if f == "OTHER" else f for f in flags]
    argv = ["--model", tiny, "--data", alpaca, "--out", str(tmp_path / "run"), "--steps", "1", "--no-progress"]
    code, err = run_cli(finetune.main, argv + flags, capsys)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err


@pytest.mark.parametrize("flags", [["--lora-r", "0"], ["--lora-dropout", "1.5"], ["--lr", "fast"],
                                   ["--lr-schedule", "exp"]])
def test_bad_flag_values_exit_with_usage_error(flags):
    result = subprocess.run([sys.executable, "-m", "llama_np.finetune", "--data", "x.json", "--out", "o", *flags],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("python -m llama_np.finetune: error:")


def test_existing_run_is_not_overwritten(tiny, alpaca, tmp_path, capsys):
    argv = ["--model", tiny, "--data", alpaca, "--out", str(tmp_path / "run"), "--steps", "1", "--no-progress"]
    assert run_cli(finetune.main, argv, capsys)[0] == 0
    code, err = run_cli(finetune.main, argv, capsys)
    assert code == 1 and "already holds a training run" in err


def test_ctrl_c_saves_a_checkpoint_and_resume_continues(tiny, alpaca, tmp_path):
    """A real SIGINT to the CLI process: it finishes the step, saves, exits 130, no traceback."""
    import signal
    import time
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "llama_np.finetune", "--model", tiny, "--data", alpaca, "--out", str(out),
           "--steps", "100000", "--save-every", "0", "--no-progress", "--threads", "2"]
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True)
    log = out / "train_log.jsonl"
    deadline = time.time() + 120
    while not (log.exists() and log.read_text().count("\n") >= 2) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "checkpoint saved" in err
    step = int(open(out / "latest").read().strip().split("-")[1])
    assert step >= 2 and len(train.read_log(log)) == step
