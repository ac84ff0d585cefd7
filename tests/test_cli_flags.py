"""The tools look alike: the model is `--model` everywhere, required flags are listed as
required in `--help`, and a missing one is argparse's one-line usage error. Each tool's parser
is taken from its main() in-process, before anything is loaded."""
import argparse
import importlib
from pathlib import Path

import pytest

TOOLS = sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "llama_np").glob("*.py")
               if p.name != "__init__.py")

# Tools whose inputs are tokenizers or text, not a model.
WITHOUT_MODEL = {"merge_tokenizer", "train_tokenizer", "tokenizer_stats"}
REQUIRED_GROUP = "required arguments"


class Parsed(Exception):
    def __init__(self, parser):
        self.parser = parser


def tool_parser(tool, monkeypatch):
    """The ArgumentParser that `llama_np.<tool>.main` builds."""
    def capture(self, args=None, namespace=None):
        raise Parsed(self)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    module = importlib.import_module(f"llama_np.{tool}")
    with pytest.raises(Parsed) as info:
        module.main([])
    return info.value.parser


def group_of(parser, action):
    return next(group.title for group in parser._action_groups if action in group._group_actions)


def required_actions(parser):
    """Flags argparse itself requires, alone or as one of a required mutually exclusive group."""
    required = [a for a in parser._actions if a.required and a.option_strings]
    for group in parser._mutually_exclusive_groups:
        if group.required:
            required += group._group_actions
    return required


@pytest.mark.parametrize("tool", TOOLS)
def test_tool_parser_is_named_after_the_tool(tool, monkeypatch):
    assert tool_parser(tool, monkeypatch).prog == f"python -m llama_np.{tool}"


@pytest.mark.parametrize("tool", sorted(set(TOOLS) - WITHOUT_MODEL))
def test_every_tool_names_its_model_with_model(tool, monkeypatch):
    parser = tool_parser(tool, monkeypatch)
    assert "--model" in parser._option_string_actions, f"{tool} has no --model"
    assert parser._option_string_actions["--model"].dest == "model"


@pytest.mark.parametrize("tool", TOOLS)
def test_required_flags_are_listed_as_required(tool, monkeypatch):
    parser = tool_parser(tool, monkeypatch)
    misplaced = [a.option_strings[0] for a in required_actions(parser) if group_of(parser, a) != REQUIRED_GROUP]
    assert not misplaced, f"{tool}: required but listed under other headings: {misplaced}"
    help_text = parser.format_help()
    for action in required_actions(parser):
        assert action.option_strings[0] in help_text.split(REQUIRED_GROUP + ":")[1]


def usage_error(tool, argv, capsys):
    """argparse's usage error of `tool` given `argv`: (exit code, last stderr line)."""
    module = importlib.import_module(f"llama_np.{tool}")
    with pytest.raises(SystemExit) as info:
        module.main(argv)
    return info.value.code, capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("argv, missing", [
    ([], "--out"),
    (["--out", "somewhere"], "--data"),
    (["--data", "x.json"], "--out"),
])
def test_finetune_missing_flags_are_usage_errors(argv, missing, capsys):
    code, last = usage_error("finetune", argv, capsys)
    assert code == 2
    assert last == f"python -m llama_np.finetune: error: the following arguments are required: {missing}"


def test_finetune_help_shows_data_and_out_as_required(monkeypatch):
    parser = tool_parser("finetune", monkeypatch)
    for flag in ("--data", "--out"):
        assert group_of(parser, parser._option_string_actions[flag]) == REQUIRED_GROUP


def test_finetune_still_knows_which_flags_were_given():
    """--resume takes the run's settings for every flag not given now: the parser must not
    fill in defaults."""
    from llama_np import finetune
    given = vars(finetune.build_parser().parse_args(["--out", "o", "--lr", "1e-3"]))
    assert given == {"out": "o", "lr": 1e-3, "resume": False}


def test_merge_lora_model_and_its_old_name_base(monkeypatch):
    parser = tool_parser("merge_lora", monkeypatch)
    monkeypatch.undo()
    rest = ["--adapter", "a", "--out", "o.gguf"]
    assert parser.parse_args(["--model", "m.gguf"] + rest).model == "m.gguf"
    assert parser.parse_args(["--base", "m.gguf"] + rest).model == "m.gguf"
    assert parser.parse_args(rest).model == "default"
    assert parser.parse_args(["--type", "Q8_0"] + rest).qtype == parser.parse_args(["--qtype", "Q8_0"] + rest).qtype


def test_quantize_takes_the_model_as_argument_or_as_model(capsys):
    from llama_np import quantize
    rest = ["--type", "Q8_0", "--out", "o.gguf"]
    assert quantize.parse_args(["m.gguf"] + rest).source == "m.gguf"
    assert quantize.parse_args(["--model", "m.gguf"] + rest).source == "m.gguf"
    for argv, message in [(rest, "the following arguments are required: --model"),
                          (["a.gguf", "--model", "b.gguf"] + rest, "the model is given twice")]:
        with pytest.raises(SystemExit) as info:
            quantize.parse_args(argv)
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert info.value.code == 2 and last.startswith("python -m llama_np.quantize: error: ")
        assert message in last


@pytest.mark.parametrize("tool, new, old", [
    ("finetune", "--quiet", "--no-progress"),   # as quantize's, perplexity's, evaluate's --quiet
    ("perplexity", "--ctx", "--n-ctx"),         # as chat's, generate's, evaluate's --ctx
    ("merge_lora", "--type", "--qtype"),        # as quantize's --type
])
def test_same_thing_same_flag(tool, new, old, monkeypatch):
    parser = tool_parser(tool, monkeypatch)
    assert parser._option_string_actions[new] is parser._option_string_actions[old]
