"""`python -m llama_np.evaluate` on a tiny model: answers appended as they finish, the
report by category, resume after --limit or a kill (an interrupted last line too), bad
prompt files."""
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import REPO
from llama_np import evaluate
from llama_np.chinese import evaluation
from test_train_cli import run_cli, tiny_model_folder

PROMPTS = [{"category": c, "id": i, "prompt": p} for c, i, p in [
    ("QA", 1, "Paris is the capital of France."), ("QA", 2, "Two plus two is four."),
    ("CODE", 1, "Write a short poem about the sea."), ("CODE", 2, "Name three colours: red, blue, green."),
    ("ETHICS", 1, "The quick brown fox | jumps.")]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(PROMPTS))
    return str(path)


def answers_in(out):
    return [json.loads(line) for line in open(os.path.join(out, evaluation.ANSWERS_FILE), encoding="utf-8")]


def test_limit_then_rerun_finishes_the_rest_without_redoing(tiny, prompts, tmp_path, capsys):
    out = str(tmp_path / "eval")
    argv = ["--model", tiny, "--prompts", prompts, "--out", out, "--max-new-tokens", "3", "--quiet"]
    code, err = run_cli(evaluate.main, argv + ["--limit", "2"], capsys)
    assert code == 0, err
    first = answers_in(out)
    assert [(r["category"], r["id"]) for r in first] == [("QA", 1), ("QA", 2)]
    report = open(os.path.join(out, evaluation.REPORT_FILE), encoding="utf-8").read()
    assert "2 of 5 prompts answered" in report and "## QA" in report and "## CODE" not in report

    code, err = run_cli(evaluate.main, argv, capsys)
    assert code == 0, err
    every = answers_in(out)
    assert every[:2] == first and len(every) == 5        # the first two kept, not asked again
    report = open(os.path.join(out, evaluation.REPORT_FILE), encoding="utf-8").read()
    assert "5 of 5" in report and report.index("## QA") < report.index("## CODE") < report.index("## ETHICS")
    assert "fox \\| jumps" in report                     # a | in a prompt stays inside its cell
    assert all(r["seed"] == i for i, r in enumerate(every))
    assert "temperature 0.2, top-k 40, top-p 0.9, repetition penalty 1.3" in report


def test_an_answer_cut_off_by_a_kill_is_asked_again(tiny, prompts, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["--model", tiny, "--prompts", prompts, "--out", str(out), "--max-new-tokens", "3", "--quiet"]
    assert run_cli(evaluate.main, argv + ["--limit", "1"], capsys)[0] == 0
    with open(out / evaluation.ANSWERS_FILE, "a", encoding="utf-8") as f:
        f.write('{"category": "QA", "id": 2, "answ')          # the process died mid-line
    code, err = run_cli(evaluate.main, argv, capsys)
    assert code == 0, err
    assert [(r["category"], r["id"]) for r in answers_in(out)] == [(p["category"], p["id"]) for p in PROMPTS]


# Runs evaluate with append_answer wrapped: after the first answer is on disk it says so on
# stdout and waits forever, so the test kills it at a known point on any machine, fast or slow.
PAUSE_AFTER_FIRST_ANSWER = """
import sys, threading
from llama_np import evaluate
from llama_np.chinese import evaluation
write = evaluation.append_answer
def append_then_wait(path, record):
    write(path, record)
    print("answered", flush=True)
    threading.Event().wait()
evaluation.append_answer = append_then_wait
sys.exit(evaluate.main(sys.argv[1:]))
"""


def test_killed_process_resumes(tiny, prompts, tmp_path):
    """A real kill (SIGKILL) after the first answer is on disk; the rerun finishes."""
    out = tmp_path / "eval"
    args = ["--model", tiny, "--prompts", prompts, "--out", str(out), "--max-new-tokens", "100",
            "--threads", "1", "--quiet"]
    process = subprocess.Popen([sys.executable, "-c", PAUSE_AFTER_FIRST_ANSWER, *args], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "answered\n", process.stderr.read()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    done_before = len(answers_in(out))
    result = subprocess.run([sys.executable, "-m", "llama_np.evaluate", *args], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert done_before == 1 and len(answers_in(out)) == 5
    assert "5 of 5 prompts answered" in (out / evaluation.REPORT_FILE).read_text(encoding="utf-8")


@pytest.mark.parametrize("content, message", [
    ("not json", "not UTF-8 JSON"),
    (json.dumps([{"category": "QA", "prompt": "x"}]), "prompt 0 has no 'id'"),
    (json.dumps([{"category": "QA", "id": 1, "prompt": "x"}] * 2), "repeats id 1"),
    (json.dumps([]), "non-empty JSON list"),
])
def test_bad_prompt_file_is_one_line(tiny, tmp_path, capsys, content, message):
    path = tmp_path / "p.json"
    path.write_text(content)
    code, err = run_cli(evaluate.main, ["--model", tiny, "--prompts", str(path), "--out", str(tmp_path / "o")], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and message in err, err


def test_the_paper_prompts_are_160_in_10_categories():
    from llama_np.files import hub
    prompts = evaluation.read_prompts(hub.data_path(evaluation.PROMPTS_FILE))
    assert len(prompts) == 160 and len({p["category"] for p in prompts}) == 10
