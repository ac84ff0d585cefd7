"""The command-line tools as a user runs them."""
import subprocess
import sys

import pytest


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.slow
def test_chat_answers_paris(real_model_path):
    result = run("llama_np.chat", "--prompt", "What is the capital of France?", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert "tok/s" in result.stderr and "tok/s" not in result.stdout   # diagnostics on stderr


@pytest.mark.slow
def test_generate_greedy_is_deterministic(real_model_path):
    args = ("llama_np.generate", "--model", real_model_path, "--prompt", "Once upon a time",
            "--temperature", "0", "--max-new-tokens", "12")
    first, second = run(*args), run(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and len(first.stdout.strip()) > 0


@pytest.mark.slow
def test_generate_with_int8_activations(real_model_path):
    result = run("llama_np.generate", "--model", real_model_path, "--prompt", "The capital of France is",
                 "--temperature", "0", "--max-new-tokens", "8", "--int8-activations")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


@pytest.mark.slow
def test_chat_repl_multi_turn_and_commands(real_model_path):
    script = "/help\nHi!\n/reset\nWhat is 2+2?\n/exit\n"
    result = subprocess.run([sys.executable, "-m", "llama_np.chat", "--max-new-tokens", "16",
                             "--seed", "1"], input=script, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "/reset" in result.stderr and "[conversation reset]" in result.stderr
    assert result.stderr.count("stopped:") == 2   # one speed line per reply


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "-1"], "must be a finite number >= 0"),
    (["--top-p", "2"], "must be in (0, 1]"),
    (["--model", "/nonexistent/model.gguf"], "no such model"),
])
def test_bad_flags_fail_with_one_line(flags, message):
    result = run("llama_np.chat", "--prompt", "hi", *flags)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("tool", ["llama_np.chat", "llama_np.generate"])
def test_a_prompt_that_is_not_utf8_fails_with_one_line(tool):
    """Bytes that are not UTF-8 reach Python's argv as lone surrogates (PEP 383): the
    tokenizer must refuse them with a sentence, not a traceback from its backend."""
    result = subprocess.run([sys.executable, "-m", tool, "--prompt", b"caf\xc3 au lait", "--max-new-tokens", "2"],
                            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode != 0
    assert "not valid Unicode" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
