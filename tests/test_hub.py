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


# ----- when a data file cannot be found: one line that says how to set LLAMA_NP_DATA -------
# No test here touches the network: the download is replaced by one that fails as a machine
# without network does.

NO_NETWORK = "[Errno -2] Name or service not known"
CMRC2018 = "ymcui/cmrc2018/squad-style-data/cmrc2018_dev.json"


@pytest.fixture
def no_network(monkeypatch):
    import socket
    import urllib.error
    import urllib.request

    def urlopen(url, *args, **kwargs):
        url.encode("ascii")  # what the real urlopen needs before it connects
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


def assert_says_how_to_set_the_mirror(message):
    assert "\n" not in message
    assert f"set {hub.DATA_ENV} to a folder" in message and f"export {hub.DATA_ENV}=" in message


@pytest.mark.parametrize("mirror", ["unset", "empty", "missing"])
def test_failed_download_names_llama_np_data(tmp_path, monkeypatch, no_network, mirror):
    if mirror == "unset":
        monkeypatch.delenv(hub.DATA_ENV, raising=False)
    else:  # a mirror without the file, or a mirror folder that does not exist
        if mirror == "empty":
            (tmp_path / "mirror").mkdir()
        monkeypatch.setenv(hub.DATA_ENV, str(tmp_path / "mirror"))
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(hub.HubError) as info:
        hub.data_path(CMRC2018)
    message = str(info.value)
    assert_says_how_to_set_the_mirror(message)
    assert message.startswith(CMRC2018) and NO_NETWORK in message
    assert {"unset": "LLAMA_NP_DATA is not set", "empty": "not in the data mirror LLAMA_NP_DATA=",
            "missing": "is not a folder"}[mirror] in message
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # nothing half-downloaded left


def test_mirror_only_file_error_is_one_line_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv(hub.DATA_ENV, str(tmp_path))  # a mirror without the file
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(hub.HubError) as info:
        hub.data_path("derived/chinese_alpaca_eval_160.json")
    assert_says_how_to_set_the_mirror(str(info.value))
    assert "only through a data mirror" in str(info.value)


def test_a_tool_reports_the_missing_data_file_in_one_line(tmp_path, monkeypatch, capsys, no_network):
    """train_tokenizer's default corpus is read from the mirror: without it, one error line."""
    from llama_np import train_tokenizer
    from llama_np.cli import common as cli

    monkeypatch.delenv(hub.DATA_ENV, raising=False)
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as info:
        cli.run(lambda: train_tokenizer.main(["--out", str(tmp_path / "sp.model"), "--vocab-size", "100"]))
    err = capsys.readouterr().err
    assert info.value.code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert_says_how_to_set_the_mirror(lines[0])
    assert NO_NETWORK in lines[0]


def test_urls_are_ascii_and_percent_encoded():
    import urllib.parse

    song_ci = hub.DATA_FILES["chinese-poetry/chinese-poetry/宋词/宋词三百首.json"]
    assert song_ci.url.isascii() and "%E5%AE%8B%E8%AF%8D/" in song_ci.url
    assert urllib.parse.unquote(song_ci.url).endswith("/HEAD/宋词/宋词三百首.json")
    for remote in hub.DATA_FILES.values():
        if remote.url is not None:
            assert remote.url.isascii(), remote.url
            owner, repo, path = remote.relpath.split("/", 2)
            assert urllib.parse.unquote(remote.url) == f"https://raw.githubusercontent.com/{owner}/{repo}/HEAD/{path}"
    tokenizer = hub.DATA_FILES["karpathy/llama2.c/tokenizer.model"]
    assert tokenizer.url == "https://raw.githubusercontent.com/karpathy/llama2.c/HEAD/tokenizer.model"


def test_song_ci_download_reaches_the_network(tmp_path, monkeypatch, no_network):
    """The non-ASCII path gets as far as connecting (here: no network), not a UnicodeEncodeError."""
    monkeypatch.delenv(hub.DATA_ENV, raising=False)
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path))
    with pytest.raises(hub.HubError, match="Name or service not known"):
        hub.data_path("chinese-poetry/chinese-poetry/宋词/宋词三百首.json")
