"""The PyTorch export (training.export, `recipe --export-torch`): the files it writes, and the
claim that makes it worth having — its train.py, run with `torchrun --nproc_per_node 2` on the
CPU (gloo) from the same starting adapter and batches with dropout 0, has the loss of
llama_np's own run at every step within 1e-3, and the adapter it saves loads in llama_np with
the logits peft gives it (within 1e-4)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from llama_np import finetune as finetune_tool, recipe
from llama_np.checkpoint.peft import apply_adapters, load_adapter
from llama_np.checkpoint.safetensors import load_hf
from llama_np.chinese import recipe as pipeline
from llama_np.llama.model import Llama
from llama_np.ops import IGNORE_INDEX
from llama_np.training import export
from llama_np.training.config import FinetuneConfig
from llama_np.training.data import BatchSchedule, load_examples
from llama_np.training.run import finetune
from llama_np.training.trainer import read_log
from test_recipe import TINY_RECIPE, tiny_gguf  # noqa: F401 (a fixture)
from test_train_cli import CORPUS, run_cli, tiny_model_folder

LOSS_TOLERANCE = 1e-3
LOGITS_TOLERANCE = 1e-4


def torchrun(export_dir, out, nproc=2, args=()):
    """train.py of an export on `nproc` CPU processes (gloo); returns its per-step log."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node", str(nproc), "train.py", "--out", str(out), *args],
                            cwd=export_dir, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return read_log(os.path.join(out, "train_log.jsonl"))


def assert_same_losses(ours, theirs):
    assert [r["step"] for r in theirs] == [r["step"] for r in ours]
    differences = [abs(a["loss"] - b["loss"]) for a, b in zip(ours, theirs)]
    assert max(differences) < LOSS_TOLERANCE, (differences, [r["loss"] for r in ours], [r["loss"] for r in theirs])
    np.testing.assert_allclose([r["lr"] for r in theirs], [r["lr"] for r in ours], rtol=1e-6, atol=1e-12)
    return differences


def assert_adapter_runs_in_llama_np_as_in_peft(model_dir, adapter_dir, tied):
    import torch
    import transformers
    import peft
    config, weights = load_hf(str(model_dir))
    ids = np.arange(3, 3 + 24) % config.vocab_size
    base = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    theirs = peft.PeftModel.from_pretrained(base, adapter_dir).eval()
    with torch.no_grad():
        expected = theirs(torch.tensor(ids[None])).logits[0].numpy()
    adapter = load_adapter(adapter_dir, tied_base=tied)
    assert any(name.endswith("lora_B.weight") and np.any(p) for name, p in adapter.params.items())  # trained
    ours = apply_adapters(Llama(config, weights), [adapter_dir]).forward(ids)
    np.testing.assert_allclose(ours, expected, atol=LOGITS_TOLERANCE, rtol=0)


# ------------------------------------------------------------------ the files

def alpaca_file(path):
    records = [{"instruction": q, "input": "", "output": a * (1 + i % 3)}
               for i, (q, a) in enumerate(zip(CORPUS, CORPUS[1:] + CORPUS[:1]))]
    path.write_text(json.dumps(records * 2))
    return str(path)


def alpaca_run(root, out, **changes):
    """A run on Alpaca data (targets differ from example to example), an untied model, two
    micro-batches a step, and every optimizer setting away from its default."""
    settings = dict(model=str(root / "hf"), data=str(root / "alpaca.json"), out=str(out), lora_dropout=0.0,
                    steps=4, batch_size=2, grad_accum=2, max_seq_len=64, lr=1e-2, embedding_lr=2e-3,
                    trainable="lora,embeddings,lm_head", target_modules="q,v,gate,down", warmup_ratio=0.25,
                    lr_schedule="linear", weight_decay=0.1, max_grad_norm=0.5, seed=7, threads=1,
                    progress=False, base_dtype="float32")
    settings.update(changes)
    return FinetuneConfig(**settings)


@pytest.fixture(scope="module")
def alpaca_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("alpaca")
    tiny_model_folder(root / "hf", tied=False)
    alpaca_file(root / "alpaca.json")
    return root


def test_export_writes_the_run_step_by_step(alpaca_root, tmp_path):
    settings = alpaca_run(alpaca_root, tmp_path / "export", batch_size=3)   # 10 records: a short last batch
    run = export.export_torch(settings, tmp_path / "export")
    out = tmp_path / "export"
    for name in ("train.py", "run.sh", "README.md", "ds_zero2.json", "train_config.json", "train.jsonl",
                 "model/config.json", "model/model.safetensors", "model/tokenizer.json",
                 "adapter/adapter_config.json", "adapter/adapter_model.safetensors"):
        assert (out / name).is_file(), name
    assert json.loads((out / "train_config.json").read_text()) == run
    assert run["steps"] == 4 and run["global_batch_size"] == 6 and run["warmup_steps"] == 1
    assert run["lr_scheduler_type"] == "linear" and run["embedding_lr"] == 2e-3 and run["weight_decay"] == 0.1
    assert run["lora"]["target_modules"] == ["q_proj", "v_proj", "gate_proj", "down_proj"]
    assert run["lora"]["modules_to_save"] == ["embed_tokens", "lm_head"] and run["lora"]["lora_dropout"] == 0.0

    # the rows of step s are the examples of llama_np's micro-batches 2s, 2s + 1, then filler
    from llama_np.checkpoint import load_model
    _, tokenizer = load_model(settings.model)
    examples, _ = load_examples(settings.data, tokenizer, settings.max_seq_len)
    batches = BatchSchedule(examples, 3, tokenizer.pad_id, seed=7)
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 4 * 6
    fillers = 0
    for step in range(4):
        expected = [e for m in (2 * step, 2 * step + 1) for e in batches.micro_batch_examples(m)]
        mine = rows[6 * step:6 * step + 6]
        assert all(r["step"] == step for r in mine)
        for row, example in zip(mine, expected):
            assert row["input_ids"] == example.ids.tolist() and row["labels"] == example.labels.tolist()
        for row in mine[len(expected):]:
            assert row["labels"] == [IGNORE_INDEX] and len(row["input_ids"]) == 1
            fillers += 1
    assert fillers == 4   # an epoch is 4 micro-batches of 3, 3, 3, 1 examples: steps 1 and 3 have 4 + 2 fillers

    start = load_adapter(out / "adapter")
    assert not any(np.any(p) for name, p in start.params.items() if name.endswith("lora_B.weight"))
    readme = (out / "README.md").read_text()
    assert "torchrun --standalone --nproc_per_node 2 train.py" in readme and "$" not in readme


def test_export_refuses_what_it_cannot_reproduce(alpaca_root, tmp_path):
    with pytest.raises(export.ExportError, match="trains no LoRA"):
        export.export_torch(alpaca_run(alpaca_root, tmp_path, trainable="embeddings"), tmp_path / "a")
    with pytest.raises(export.ExportError, match="embedding-rows-from"):
        export.export_torch(alpaca_run(alpaca_root, tmp_path, embedding_rows_from=10), tmp_path / "b")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    with pytest.raises(export.ExportError, match="not empty"):
        export.export_torch(alpaca_run(alpaca_root, tmp_path), tmp_path / "c")


def test_finetune_export_torch_writes_the_run_its_flags_describe(alpaca_root, tmp_path, capsys):
    flags = ["--model", str(alpaca_root / "hf"), "--data", str(alpaca_root / "alpaca.json"), "--steps", "3",
             "--batch-size", "2", "--grad-accum", "2", "--max-seq-len", "64", "--trainable", "lora,lm_head",
             "--target-modules", "attention", "--lr", "3e-3", "--seed", "5", "--threads", "1"]
    code, err = run_cli(finetune_tool.main, flags + ["--out", str(tmp_path / "cli"), "--export-torch"], capsys)
    assert code == 0, err
    assert not (tmp_path / "cli" / "train_log.jsonl").exists()          # written, not trained
    run = json.loads((tmp_path / "cli" / "train_config.json").read_text())
    assert run["steps"] == 3 and run["global_batch_size"] == 4 and run["lr"] == 3e-3 and run["seed"] == 5
    assert run["lora"]["modules_to_save"] == ["lm_head"]
    code, err = run_cli(finetune_tool.main, flags + ["--out", str(tmp_path / "cli"), "--export-torch", "--resume"],
                        capsys)
    assert code == 2 and "--export-torch" in err


def deepspeed_checked(export_dir, world_size, per_device_batch_size, monkeypatch):
    """The export's ds_zero2.json as train.py's Trainer hands it to DeepSpeed on `world_size`
    processes with --per-device-batch-size: transformers fills the "auto" values from the
    TrainingArguments that train.py builds from train_config.json, then DeepSpeed checks it
    (told by a stand-in for torch.distributed, which is not started here, that it is rank 0
    of `world_size`)."""
    from deepspeed.runtime import config as ds_config
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    class OnProcesses(TrainingArguments):      # as torchrun's environment would make it
        @property
        def world_size(self):
            return world_size

    run = json.loads((export_dir / "train_config.json").read_text())
    args = OnProcesses(output_dir=str(export_dir / "output"), per_device_train_batch_size=per_device_batch_size,
                       gradient_accumulation_steps=run["global_batch_size"] // (per_device_batch_size * world_size),
                       max_grad_norm=run["max_grad_norm"], report_to="none", use_cpu=True)
    filled = HfTrainerDeepSpeedConfig(str(export_dir / export.DEEPSPEED_FILE))
    filled.trainer_config_process(args)
    monkeypatch.setattr(ds_config.dist, "get_rank", lambda: 0)
    monkeypatch.setattr(ds_config.dist, "get_world_size", lambda *group: world_size)
    return DeepSpeedConfig(filled.config), run


def test_deepspeed_config_passes_deepspeeds_own_check(alpaca_root, tmp_path, monkeypatch):
    """The exported config, with the export's batch (2 examples × 2 micro-batches = 4 a step)
    split as the README's commands split it: DeepSpeed accepts it, with the global batch
    llama_np trains on, ZeRO stage 2 and llama_np's clipping."""
    pytest.importorskip("transformers")
    pytest.importorskip("deepspeed")
    export.export_torch(alpaca_run(alpaca_root, tmp_path / "export"), tmp_path / "export")
    for world_size, per_device in [(1, 1), (2, 1), (2, 2), (4, 1)]:
        checked, run = deepspeed_checked(tmp_path / "export", world_size, per_device, monkeypatch)
        assert checked.train_batch_size == run["global_batch_size"] == 4
        assert checked.train_micro_batch_size_per_gpu == per_device
        assert checked.gradient_accumulation_steps == 4 // (world_size * per_device)
        assert checked.zero_optimization_stage == 2 and checked.gradient_clipping == run["max_grad_norm"] == 0.5
        assert not checked.float16_config.enabled and not checked.bfloat16_config.enabled   # fp32 unless --fp16/--bf16
    # the check has teeth: a batch that does not add up over the 4 processes is refused
    from deepspeed.runtime.config import DeepSpeedConfig
    with pytest.raises(AssertionError, match="batch"):
        DeepSpeedConfig(dict(checked._param_dict, train_batch_size=6))


def test_recipe_export_torch_writes_stage2_after_what_it_starts_from(tiny_gguf, tmp_path, capsys):  # noqa: F811
    out, export_dir = tmp_path / "recipe", tmp_path / "torch"
    code, err = run_cli(recipe.main, ["--model", tiny_gguf, "--out", str(out), "--export-torch", str(export_dir)]
                        + TINY_RECIPE + ["--stage2-steps", "3"], capsys)
    assert code == 0, err
    assert (out / "stage1" / "adapter_model.safetensors").exists()     # what stage 2 starts from
    assert not (out / "stage2").exists()                               # exported, not trained
    run = json.loads((export_dir / "train_config.json").read_text())
    assert run["steps"] == 3 and run["global_batch_size"] == 2 and run["max_seq_len"] == 128
    assert run["lr"] == pipeline.DEFAULT_LR["stage2"] and run["lora"]["lora_dropout"] == 0.05
    assert run["lora"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj"]                # the recipe's default: all seven
    stage1 = load_adapter(out / "stage1", tied_base=True)
    start = load_adapter(export_dir / "adapter", tied_base=True)
    np.testing.assert_array_equal(start.params["model.embed_tokens.weight"],
                                  stage1.params["model.embed_tokens.weight"])
    assert "torchrun" in err
    code, err = run_cli(recipe.main, ["--model", tiny_gguf, "--out", str(out), "--export-torch", str(tmp_path / "x"),
                                      "--export-stage", "stage1"] + TINY_RECIPE, capsys)
    assert code == 2 and "--export-stage" in err


# -------------------------------------------------- the same losses, step by step

@pytest.mark.slow
def test_recipe_stage2_on_two_torch_processes_has_llama_np_losses(tiny_gguf, tmp_path):  # noqa: F811
    """The recipe's stage 2 (tied embedding and head, packed Chinese text, LoRA on all seven)
    with dropout 0: llama_np's finetune and train.py under torchrun, 2 processes."""
    config = pipeline.RecipeConfig(out=str(tmp_path / "recipe"), model=tiny_gguf, new_tokens=30, documents=40,
                                   max_seq_len=128, eval_ctx=16, eval_windows=1, threads=1,
                                   steps={"stage1": 1, "stage2": 5, "sft": 1})
    stage2 = pipeline.run_recipe(config, stop_before="stage2")["stage2"]
    stage2.lora_dropout = 0.0
    export.export_torch(stage2, tmp_path / "torch")
    assert finetune(stage2) == 0
    ours = read_log(os.path.join(stage2.out, "train_log.jsonl"))
    theirs = torchrun(tmp_path / "torch", tmp_path / "torch_out")
    differences = assert_same_losses(ours, theirs)
    print("stage 2, |loss difference| per step:", [f"{d:.1e}" for d in differences])
    assert_adapter_runs_in_llama_np_as_in_peft(tmp_path / "torch" / "model", tmp_path / "torch_out", tied=True)


@pytest.mark.slow
def test_alpaca_run_on_two_torch_processes_has_llama_np_losses(alpaca_root, tmp_path):
    """Instructions: each rank's micro-batch holds a different number of targets, so only the
    global-batch mean (what llama_np computes) gives equal losses; an untied head, two
    micro-batches a step, an embedding learning rate, weight decay, clipping, linear decay."""
    settings = alpaca_run(alpaca_root, tmp_path / "ours")
    export.export_torch(alpaca_run(alpaca_root, tmp_path / "torch"), tmp_path / "torch")
    assert finetune(settings) == 0
    ours = read_log(tmp_path / "ours" / "train_log.jsonl")
    theirs = torchrun(tmp_path / "torch", tmp_path / "torch_out")
    differences = assert_same_losses(ours, theirs)
    print("alpaca, |loss difference| per step:", [f"{d:.1e}" for d in differences])
    assert any(r["grad_norm"] > 0.5 for r in ours)     # clipping was exercised
    assert_adapter_runs_in_llama_np_as_in_peft(tmp_path / "torch" / "model", tmp_path / "torch_out", tied=False)

    # one process, two examples a forward pass, two micro-batches a step: the same steps
    alone = torchrun(tmp_path / "torch", tmp_path / "torch_alone", nproc=1, args=("--per-device-batch-size", "2"))
    assert_same_losses(ours, alone)
