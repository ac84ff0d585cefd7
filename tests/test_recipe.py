"""`python -m llama_np.recipe` end to end on a tiny model (a GGUF with a byte-level BPE
tokenizer): extend, resize, stage 1, stage 2, SFT, bits per character after each; stage 1
leaves every non-embedding tensor bit-identical (by hash); a rerun redoes nothing."""
import json
import os

import numpy as np
import pytest

from llama_np import quantize, recipe
from llama_np.chinese import bits_per_char, recipe as pipeline
from llama_np.llama import adapter as lora
from llama_np.checkpoint.peft import save_adapter
from test_train_cli import run_cli, tiny_model_folder

TINY_RECIPE = ["--new-tokens", "30", "--stage1-steps", "1", "--stage2-steps", "1", "--sft-steps", "1",
               "--max-seq-len", "128", "--documents", "40", "--batch-size", "2", "--eval-ctx", "16", "--eval-windows", "1",
               "--threads", "1"]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    tiny_model_folder(folder / "hf")
    path = str(folder / "tiny.gguf")
    with pytest.raises(SystemExit) as done:
        from llama_np.cli import common as cli
        cli.run(lambda: quantize.main([str(folder / "hf"), "--type", "F32", "--out", path, "--quiet"]))
    assert done.value.code == 0
    return path


def trained_tables(out, stage, parts=("embed_tokens", "lm_head")):
    """The trained copies of `parts` that the recipe's `stage` saved in its adapter, in order."""
    from safetensors.numpy import load_file
    tensors = load_file(str(out / stage / "adapter_model.safetensors"))
    return [next(t for n, t in tensors.items() if part in n) for part in parts]


def test_recipe_end_to_end_and_rerun_skips_finished_steps(tiny_gguf, tmp_path, capsys):
    out = tmp_path / "recipe"
    code, err = run_cli(recipe.main, ["--model", tiny_gguf, "--out", str(out), "--stage2-target-modules", "q,v",
                                      "--lora-r", "4", "--lora-alpha", "12", "--lora-dropout", "0.1"]
                        + TINY_RECIPE, capsys)
    assert code == 0, err
    results = json.load(open(out / "results.json"))["steps"]
    assert sorted(results["stage2"]["lora_targets"]) == ["q_proj", "v_proj"]
    assert len(results["sft"]["lora_targets"]) == 7
    for stage in ("stage2", "sft"):     # the LoRA flags reach both LoRA stages, as PEFT reads them
        assert (results[stage]["lora_r"], results[stage]["lora_alpha"], results[stage]["lora_dropout"]) == (4, 12, 0.1)
        adapter = json.load(open(out / stage / "adapter_config.json"))
        assert (adapter["r"], adapter["lora_alpha"], adapter["lora_dropout"]) == (4, 12, 0.1)
    assert "lora_r" not in results["stage1"]
    assert list(results) == ["base", "tokenizer", "resized", "stage1", "stage2", "sft"]
    assert all(np.isfinite(results[s]["bits_per_char"]) for s in ("base", "resized", "stage1", "stage2", "sft"))
    assert results["stage1"]["non_embedding_unchanged"] is True
    assert results["sft"]["steps"] == 1 and results["sft"]["tokens"] > 0
    for stage in recipe.STAGES:
        assert os.path.exists(out / stage / "adapter_model.safetensors")
    adapter = json.load(open(out / "sft" / "adapter_config.json"))
    assert len(adapter["target_modules"]) == 7 and "embed_tokens" in adapter["modules_to_save"]
    assert "| stage2 |" in (out / "results.md").read_text()
    assert (out / pipeline.PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    stamp = os.path.getmtime(out / "sft" / "adapter_model.safetensors")
    code, err = run_cli(recipe.main, ["--model", tiny_gguf, "--out", str(out)] + TINY_RECIPE, capsys)
    assert code == 0, err
    assert os.path.getmtime(out / "sft" / "adapter_model.safetensors") == stamp


@pytest.mark.parametrize("killed_before_step", [4, 2])
def test_an_interrupted_stage_resumes_from_its_checkpoint(tiny_gguf, tmp_path, capsys, monkeypatch,
                                                          killed_before_step):
    """Stage 2 dies (as if killed) before step 4 (a checkpoint was saved at step 2: the rerun
    resumes there) or before step 2 (no checkpoint yet: the stage starts again). Either way
    the rerun trains each step once, and the checkpoints give the stage's learning curve."""
    from llama_np.training.trainer import LOG_FILE, Trainer, read_log
    args = ["--model", tiny_gguf, "--out", str(tmp_path / "recipe"), "--save-every", "2",
            "--keep-checkpoints", "5"] + TINY_RECIPE + ["--stage2-steps", "5"]
    step = Trainer.train_step

    def dies(self):
        if self.out_dir.endswith("stage2") and self.step + 1 == killed_before_step:
            raise RuntimeError("killed")
        return step(self)
    monkeypatch.setattr(Trainer, "train_step", dies)
    with pytest.raises(RuntimeError, match="killed"):
        recipe.main(args)
    stage2 = tmp_path / "recipe" / "stage2"
    assert [r["step"] for r in read_log(stage2 / LOG_FILE)] == list(range(1, killed_before_step))
    monkeypatch.setattr(Trainer, "train_step", step)

    code, err = run_cli(recipe.main, args, capsys)
    assert code == 0, err
    assert [r["step"] for r in read_log(stage2 / LOG_FILE)] == [1, 2, 3, 4, 5]
    results = json.load(open(tmp_path / "recipe" / "results.json"))["steps"]
    curve = results["stage2"]["curve"]
    assert list(curve) == ["2", "4", "5"] and curve["5"] == results["stage2"]["bits_per_char"]
    assert len(set(curve.values())) == 3      # three different adapters were scored
    assert "stage2, held-out bits/char during training: step 2" in (tmp_path / "recipe" / "results.md").read_text()


def test_untie_head_gives_the_head_rows_of_its_own(tiny_gguf, tmp_path, capsys):
    """--untie-head: the resized GGUF has an output head beside the embedding; stage 1
    trains the new rows of both (the old rows stay the base's) and stage 2 moves them apart."""
    from llama_np.checkpoint import load_model
    out = tmp_path / "recipe"
    code, err = run_cli(recipe.main, ["--model", tiny_gguf, "--out", str(out), "--untie-head"] + TINY_RECIPE, capsys)
    assert code == 0, err
    base, _ = load_model(tiny_gguf)
    resized, _ = load_model(str(out / "resized.gguf"))
    assert base.config.tie_word_embeddings and not resized.config.tie_word_embeddings
    old = base.config.vocab_size

    for table in trained_tables(out, "stage1"):
        assert np.array_equal(table[:old], base.weights[lora.EMBED][:old])     # old rows: the base's
        assert not np.array_equal(table[old:], resized.weights[lora.EMBED][old:])   # new rows: trained
    embed, head = trained_tables(out, "stage2")
    assert not np.array_equal(embed, head)


def test_stage2_rows_new_leaves_the_old_rows_alone(tiny_gguf, tmp_path, capsys):
    """--stage2-rows new: stage 2 trains its LoRA and the new tokens' rows, and the old rows
    of the embedding (= tied head) stay the base model's; by default stage 2 moves them."""
    from llama_np.checkpoint import load_model
    base, _ = load_model(tiny_gguf)
    old = base.config.vocab_size

    for rows in ("new", "all"):
        out = tmp_path / rows
        code, err = run_cli(recipe.main, ["--model", tiny_gguf, "--out", str(out), "--stage2-rows", rows]
                            + TINY_RECIPE + ["--stage2-steps", "2"], capsys)
        assert code == 0, err
        (stage1,), (stage2,) = (trained_tables(out, stage, ("embed_tokens",)) for stage in ("stage1", "stage2"))
        assert not np.array_equal(stage2[old:], stage1[old:])                 # new rows: trained on
        assert np.array_equal(stage2[:old], base.weights[lora.EMBED][:old]) == (rows == "new")


def test_stage1_check_sees_a_changed_transformer_tensor(tiny_gguf, tmp_path):
    """The hash comparison is not vacuous: an adapter that also moves q_proj fails it."""
    from llama_np.checkpoint import load_model
    model, _ = load_model(tiny_gguf)
    config = lora.LoraConfig(target_modules=["q_proj"], modules_to_save=["embed_tokens"], ensure_weight_tying=True)
    adapter = lora.Adapter.init(model.config, model.weights, config, np.random.default_rng(0))
    save_adapter(tmp_path / "embed_only", lora.Adapter(
        lora.LoraConfig(target_modules=[], modules_to_save=["embed_tokens"], ensure_weight_tying=True),
        {lora.EMBED: adapter.params[lora.EMBED] + 1}, tied_base=True))
    assert pipeline.stage1_left_transformer_alone(tiny_gguf, str(tmp_path / "embed_only"))
    name = next(n for n in adapter.params if n.endswith("lora_B.weight"))
    adapter.params[name][:] = 0.5
    save_adapter(tmp_path / "moved", adapter)
    assert not pipeline.stage1_left_transformer_alone(tiny_gguf, str(tmp_path / "moved"))


def test_held_out_spans_are_characters_not_tokens():
    """The windows are cut in characters, so every tokenizer is scored on the same text."""
    text = "".join(chr(0x4E00 + i % 500) for i in range(1000))
    spans = bits_per_char.held_out_spans(text, 256, 6)
    assert len(spans) == 6
    assert all(len(context) == 32 and len(scored) == 96 for context, scored in spans)
    assert "".join(c + s for c, s in spans) == text[:6 * 128]
    assert len(bits_per_char.held_out_spans(text, 256, 100)) == 1000 // 128


def test_relative_change_says_higher_or_lower():
    assert pipeline.relative_change(6.463, 7.971) == "+23.3%, higher"
    assert pipeline.relative_change(6.0, 5.1) == "-15.0%, lower"


def test_pretrain_text_names_corpus_sources(capsys):
    args = recipe.parse_args(["--out", "x", "--pretrain-text", "cmrc2018, alpaca_zh"])
    assert args.pretrain_text == ("cmrc2018", "alpaca_zh")
    assert recipe.parse_args(["--out", "x"]).pretrain_text == ("cmrc2018", "song_ci", "cmrc2018_questions", "alpaca_zh")
    for bad, message in [("cmrc2018,wiki", "unknown text source 'wiki'"), (",", "no source given")]:
        with pytest.raises(SystemExit) as e:
            recipe.parse_args(["--out", "x", "--pretrain-text", bad])
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_a_budget_sets_the_steps_and_a_flag_beside_it_wins(monkeypatch, tmp_path):
    """--budget picks a row of defaults.BUDGETS; a step count or length given beside it
    replaces that one value only; the default budget is RecipeConfig's own defaults."""
    from llama_np.chinese.defaults import BUDGETS
    configs = []
    monkeypatch.setattr(pipeline, "run_recipe", lambda config: configs.append(config))
    out = str(tmp_path / "r")
    assert recipe.main(["--out", out, "--threads", "1"]) == 0
    assert recipe.main(["--out", out, "--budget", "quick", "--stage2-steps", "7", "--eval-windows", "5",
                        "--threads", "1"]) == 0
    assert recipe.main(["--out", out, "--budget", "long", "--threads", "1"]) == 0
    default, quick, long = configs
    assert default == pipeline.RecipeConfig(out=out, threads=1)
    assert quick.steps == {**BUDGETS["quick"]["steps"], "stage2": 7}
    assert (quick.documents, quick.new_tokens, quick.max_seq_len, quick.eval_windows) == (300, 1000, 64, 5)
    assert long.steps["stage2"] > default.steps["stage2"] > quick.steps["stage2"]
    assert long.documents is None and long.pretrain_text == default.pretrain_text


def test_pretrain_files_join_the_training_text(tiny_gguf, tmp_path, capsys):
    """--pretrain-file: the user's documents follow the mirror's in the text stage 1 and 2
    read; a file that cannot be read stops the recipe with one line, before anything is
    written (no --out folder is left behind)."""
    own = tmp_path / "own.txt"
    own.write_text("我的第一篇文章。\n\n我的第二篇文章。\n", encoding="utf-8")
    out = tmp_path / "recipe"
    code, err = run_cli(recipe.main, ["--model", tiny_gguf, "--out", str(out), "--pretrain-text", "song_ci",
                                      "--pretrain-file", str(own)] + TINY_RECIPE + ["--documents", "100000"], capsys)
    assert code == 0, err
    lines = (out / "zh_train.txt").read_text(encoding="utf-8").splitlines()
    mirror = pipeline.corpus.chinese_documents("train", ("song_ci",))
    assert lines[-2:] == ["我的第一篇文章。", "我的第二篇文章。"]
    assert len(lines) >= len(mirror) + 2

    code, err = run_cli(recipe.main, ["--model", tiny_gguf, "--out", str(tmp_path / "other"),
                                      "--pretrain-file", str(tmp_path / "missing.txt")] + TINY_RECIPE, capsys)
    assert code == 1 and "missing.txt" in err and "Traceback" not in err
    assert not (tmp_path / "other").exists()

    code, err = run_cli(recipe.main, ["--model", str(tmp_path / "no_model.gguf"), "--out", str(tmp_path / "third")]
                        + TINY_RECIPE, capsys)
    assert code == 1 and "no_model.gguf" in err and "Traceback" not in err
    assert not (tmp_path / "third").exists()


def test_an_unknown_budget_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        recipe.parse_args(["--out", "x", "--budget", "day"])
    assert e.value.code == 2 and "invalid choice: 'day'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown budget 'day'"):
        pipeline.budget_config("day", out="x")
