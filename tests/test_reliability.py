"""Each bad input of the reliability issue, one by one: refused with a clear error of
llama_np's own types (or a usage error from the flag parser), never a crash, a hang, a
replaced device or a wrong success. (The fuzz suite, test_fuzz.py, tries thousands more;
the fault suite, test_faults.py, kills the tools.)"""
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from llama_np import kernels
from llama_np.checkpoint.peft import apply_adapters, save_adapter
from llama_np.checkpoint.safetensors import CheckpointError, read_safetensors
from llama_np.files.atomic import UnsafeOutputError, atomic_path, atomic_write_text
from llama_np.llama.adapter import Adapter, AdapterError, LoraConfig
from llama_np.llama.config import ConfigError, LlamaConfig
from llama_np.tokenizer.templates import TemplateError, TemplateSource, render_chat
from test_train_cli import tiny_model_folder

HF_CONFIG = {"model_type": "llama", "vocab_size": 32, "hidden_size": 64, "intermediate_size": 96,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
GGUF_META = {"general.architecture": "llama", "llama.vocab_size": 32, "llama.embedding_length": 64,
             "llama.feed_forward_length": 96, "llama.block_count": 2, "llama.attention.head_count": 4,
             "llama.attention.head_count_kv": 2}


# ----- one checked description of the hyper-parameters -------------------------------------------

@pytest.mark.parametrize("change, words", [
    ({"llama.attention.head_count": 0}, "num_attention_heads must be a positive integer"),
    ({"llama.attention.head_count_kv": 0}, "num_key_value_heads must be a positive integer"),
    ({"llama.attention.head_count_kv": 3}, "not a multiple of num_key_value_heads=3"),
    ({"llama.attention.layer_norm_rms_epsilon": float("nan")}, "rms_norm_eps must be a finite number > 0"),
    ({"llama.attention.layer_norm_rms_epsilon": -1e-5}, "rms_norm_eps must be a finite number > 0"),
    ({"llama.rope.freq_base": 0.0}, "rope_theta must be a finite number > 0"),
    ({"llama.block_count": "x"}, "num_hidden_layers must be a positive integer"),
])
def test_gguf_metadata_is_checked(change, words):
    with pytest.raises(ConfigError, match=words):
        LlamaConfig.from_gguf_metadata(dict(GGUF_META, **change), source="m.gguf")


@pytest.mark.parametrize("config, words", [
    ([HF_CONFIG], "expected a JSON object"),
    (dict(HF_CONFIG, rope_theta=None), "rope_theta must be a finite number > 0, got None"),
    (dict(HF_CONFIG, rms_norm_eps=-1), "rms_norm_eps"),
    (dict(HF_CONFIG, hidden_size=64.5), "hidden_size must be a positive integer"),
    (dict(HF_CONFIG, num_attention_heads=True), "num_attention_heads must be a positive integer"),
    (dict(HF_CONFIG, eos_token_id=[]), "eos_token_id"),
    (dict(HF_CONFIG, rope_scaling=[1]), "rope_scaling"),
    (dict(HF_CONFIG, tie_word_embeddings="no"), "tie_word_embeddings must be true or false"),
])
def test_hf_config_is_checked(config, words):
    with pytest.raises(ConfigError, match=words):
        LlamaConfig.from_hf_dict(config, source="config.json")


def test_a_config_its_files_cannot_hold_is_refused_at_once():
    config = LlamaConfig.from_hf_dict(dict(HF_CONFIG, num_hidden_layers=10**9))
    with pytest.raises(ConfigError, match="more than the 1,000,000 bytes"):
        config.check_fits(10**6, source="config.json")
    LlamaConfig.from_hf_dict(HF_CONFIG).check_fits(10**6, source="config.json")


def test_safetensors_dtype_and_size_are_checked(tmp_path):
    def write(entry, body):
        header = json.dumps({"w": entry}).encode()
        path = tmp_path / "t.safetensors"
        path.write_bytes(len(header).to_bytes(8, "little") + header + body)
        return path
    with pytest.raises(CheckpointError, match="dtype 'I64'"):
        read_safetensors(write({"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}, bytes(8)))
    with pytest.raises(CheckpointError, match="4 bytes, but its data_offsets"):
        read_safetensors(write({"dtype": "BF16", "shape": [2], "data_offsets": [0, 6]}, bytes(8)))


# ----- adapters, checked against their tensors and their model ----------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from llama_np.checkpoint import load_model
    folder = tiny_model_folder(tmp_path_factory.mktemp("tiny"))
    return folder, load_model(folder)[0]


@pytest.fixture
def adapter_dir(tiny, tmp_path):
    _, model = tiny
    adapter = Adapter.init(model.config, model.weights, LoraConfig(r=4, lora_alpha=8), np.random.default_rng(0))
    save_adapter(str(tmp_path / "adapter"), adapter)
    return tmp_path / "adapter"


def fresh(model):
    import copy
    clone = copy.copy(model)
    clone.lora = {}
    return clone


def edit_config(folder, **changes):
    config = json.loads((folder / "adapter_config.json").read_text())
    config.update(changes)
    (folder / "adapter_config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("changes, words", [
    ({"lora_alpha": "x"}, "lora_alpha must be a finite number > 0, got 'x'"),
    ({"lora_dropout": "x"}, "lora_dropout must lie in"),
    ({"r": 8}, "but the config gives it rank r=8"),
    ({"target_modules": ["q_proj", "k_proj", "v_proj"]}, "target_modules lists k_proj"),
    ({"target_modules": 5}, "target_modules must be a list"),
    ({"rank_pattern": {"(": 4}}, "not a valid pattern"),
])
def test_adapter_config_disagreeing_with_itself_or_its_tensors_is_refused(tiny, adapter_dir, changes, words):
    edit_config(adapter_dir, **changes)
    with pytest.raises(AdapterError, match=words):
        apply_adapters(fresh(tiny[1]), [str(adapter_dir)])


def test_adapter_with_non_finite_weights_is_refused(tiny, adapter_dir):
    from safetensors.numpy import load_file, save_file
    path = str(adapter_dir / "adapter_model.safetensors")
    tensors = load_file(path)
    name = sorted(tensors)[0]
    tensors[name][0, 0] = np.nan
    save_file(tensors, path)
    with pytest.raises(AdapterError, match="non-finite"):
        apply_adapters(fresh(tiny[1]), [str(adapter_dir)])


def test_lora_rank_is_bounded_by_the_model(tiny):
    _, model = tiny
    with pytest.raises(AdapterError, match="LoRA rank 100000 exceeds"):
        Adapter.init(model.config, model.weights, LoraConfig(r=100000), np.random.default_rng(0))


# ----- flags -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, words", [
    (["generate", "--prompt", "x", "--threads", "100000"], "--threads: '100000': must be between 1 and"),
    (["generate", "--prompt", "x", "--threads", "0"], "must be between 1 and"),
    (["generate", "--prompt", ""], "--prompt is empty"),
    (["finetune", "--data", "d.json", "--out", "o", "--warmup-ratio", "2"], "--warmup-ratio: '2': must be in [0, 1]"),
    (["finetune", "--data", "d.json", "--out", "o", "--lora-r", "0"], "--lora-r"),
    (["finetune", "--data", "d.json", "--out", "o", "--steps", "-1"], "--steps"),
    (["finetune", "--data", "d.json", "--out", "o", "--lr", "inf"], "--lr"),
    (["chat", "--top-p", "1.5"], "--top-p"),
])
def test_flag_ranges_are_usage_errors(argv, words):
    result = subprocess.run([sys.executable, "-m", f"llama_np.{argv[0]}", *argv[1:]], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert words in result.stderr.strip().splitlines()[-1], result.stderr


def test_kernel_thread_count_is_bounded():
    saved = kernels.get_num_threads()
    with pytest.raises(ValueError, match="threads must be an integer from 1 to"):
        kernels.set_num_threads(100000)
    assert kernels.get_num_threads() == saved


def test_finetune_lora_r_too_large_ends_with_one_line(tiny, tmp_path):
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "Hi."}] * 4))
    result = subprocess.run([sys.executable, "-m", "llama_np.finetune", "--model", tiny[0], "--data", str(data),
                             "--out", str(tmp_path / "run"), "--lora-r", "100000", "--threads", "1", "--quiet"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and lines[-1].startswith("error: LoRA rank 100000 exceeds"), result.stderr
    assert "Traceback" not in result.stderr


# ----- templates -----------------------------------------------------------------------------------------

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("source, words", [
    ("{{ 'a' * 10**10 }}", "would make a value larger than"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "ran longer than"),
    ("{{ range(10**9) | list }}", "a call with the argument 1000000000"),
    ("{{ raise_exception('roles must alternate') }}", "failed: TemplateError: roles must alternate"),
    ("{{ 'a' | center(10**10) }}", "a call with the argument"),
    ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "RecursionError"),
    ("{% for %}", "syntax error on line 1"),
])
def test_hostile_templates_end_in_one_line_naming_the_template(source, words, monkeypatch):
    from llama_np.tokenizer import templates
    monkeypatch.setattr(templates, "MAX_RENDER_SECONDS", 0.2)  # the same bound, reached sooner
    with pytest.raises(TemplateError) as error:
        render_chat(MESSAGES, TemplateSource(source, "chat.jinja"))
    message = str(error.value)
    assert message.startswith("chat.jinja: ") and words in message and "\n" not in message, message


def test_a_template_error_through_the_chat_is_one_line(tiny, tmp_path):
    template = tmp_path / "bad.jinja"
    template.write_text("{{ 'a' * 10**10 }}")
    result = subprocess.run([sys.executable, "-m", "llama_np.chat", "--model", tiny[0], "--template", str(template),
                             "--prompt", "hi", "--threads", "1"], cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and lines[-1].startswith(f"error: {template}: stopped"), result.stderr
    assert "Traceback" not in result.stderr


# ----- safe outputs --------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", ["fifo", "symlink", "folder"])
def test_only_a_regular_file_is_replaced(tmp_path, make):
    path = tmp_path / "out"
    if make == "fifo":
        os.mkfifo(path)
    elif make == "symlink":
        os.symlink(tmp_path / "elsewhere", path)
    else:
        path.mkdir()
    with pytest.raises(UnsafeOutputError, match="refusing to replace it"):
        atomic_write_text(path, "x")
    assert os.listdir(tmp_path) == ["out"]     # nothing written beside it


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_quantize_refuses_a_device_before_any_work(tiny):
    result = subprocess.run([sys.executable, "-m", "llama_np.quantize", tiny[0], "--type", "Q8_0", "--out",
                             "/dev/full", "--threads", "1", "--quiet"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1 and "is a device" in result.stderr, result.stderr
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_a_failed_write_leaves_nothing_and_the_next_cleans_a_killed_ones_temporary(tmp_path):
    out = tmp_path / "model.gguf"
    killed = subprocess.Popen([sys.executable, "-c", "import os, sys; open(sys.argv[1] + '.%d.x.tmp' % os.getpid(), 'w')"
                               .replace("sys.argv[1]", repr(str(tmp_path / ".model.gguf")))])
    killed.wait()                                                  # its process is gone, its temporary stays
    other = tmp_path / f".model.gguf.{os.getpid()}.live.tmp"       # a live writer's: kept
    other.write_text("")
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("the writer failed")
    assert sorted(os.listdir(tmp_path)) == [other.name]
    atomic_write_text(out, "whole")
    assert sorted(os.listdir(tmp_path)) == [other.name, "model.gguf"] and out.read_text() == "whole"


def test_files_get_the_mode_the_umask_gives(tmp_path):
    from safetensors.numpy import save_file
    old = os.umask(0o027)
    try:
        with atomic_path(tmp_path / "w.safetensors") as tmp:
            save_file({"x": np.zeros(2, np.float32)}, tmp)   # a writer that makes the file anew
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "w.safetensors").st_mode) == 0o640


def test_a_pickled_checkpoint_is_not_read(tmp_path):
    from llama_np.checkpoint.safetensors import checkpoint_files
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")   # pickle.dumps(1)
    with pytest.raises(CheckpointError, match="a pickle\\) is not read"):
        checkpoint_files(str(tmp_path))


def test_nan_logits_are_an_error_not_a_result():
    from llama_np.llama.sampling import Sampler, SamplingSettings
    logits = np.zeros(8, np.float32)
    logits[3] = np.nan
    with pytest.raises(ValueError, match="logits are NaN"):
        Sampler(SamplingSettings(temperature=0))(logits)


def test_a_diverged_adapter_is_not_saved(tiny, tmp_path):
    _, model = tiny
    adapter = Adapter.init(model.config, model.weights, LoraConfig(r=2), np.random.default_rng(0))
    next(iter(adapter.params.values()))[0, 0] = np.inf
    with pytest.raises(AdapterError, match="the training diverged"):
        save_adapter(str(tmp_path / "a"), adapter)
    assert not (tmp_path / "a").exists()


def test_a_training_log_line_cut_by_a_kill_is_dropped(tmp_path):
    from llama_np.training.trainer import read_log
    log = tmp_path / "train_log.jsonl"
    log.write_text('{"step": 1, "loss": 2.5}\n{"step": 2, "lo')
    assert read_log(log) == [{"step": 1, "loss": 2.5}]
    log.write_text('{"step": 1, "lo\n{"step": 2, "loss": 2.5}\n')
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        read_log(log)
