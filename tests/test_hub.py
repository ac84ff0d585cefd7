"""hub: files known by name and sha256, read from the mirror or the cache, verified."""
import hashlib

import pytest

from llama_np.files import hub


def test_mirror_file_is_found_and_verified():
    path = hub.data_path("karpathy/llama2.c/tokenizer.model")
    with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == hub.DATA_FILES["karpathy/llama2.c/tokenizer.model"].sha256


def test_unknown_file_is_refused():
    with pytest.raises(hub.HubError, match="unknown data file"):
        hub.data_path("someone/else/file.txt")


def test_corrupted_mirror_file_is_refused(tmp_path, monkeypatch):
    relpath = "derived/chinese_alpaca_eval_160.json"
    (tmp_path / "derived").mkdir()
    (tmp_path / relpath).write_text("[]")
    monkeypatch.setenv(hub.DATA_ENV, str(tmp_path))
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(hub.HubError, match="sha256 does not match"):
        hub.data_path(relpath)


def test_mirror_only_file_without_mirror_says_how(tmp_path, monkeypatch):
    monkeypatch.delenv(hub.DATA_ENV, raising=False)
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path))
    with pytest.raises(hub.HubError, match="LLAMA_NP_DATA"):
        hub.data_path("derived/chinese_alpaca_eval_160.json")


def test_default_model_is_the_pinned_file(real_model_path):
    assert hub.sha256_of(real_model_path) == hub.DEFAULT_MODEL_SHA256
