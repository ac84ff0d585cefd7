"""Reading a user's file whole, with errors a command line can print in one line.

Corpora (`llama_np.chinese.corpus`), training data (`llama_np.training.data`) and perplexity texts
(`llama_np.perplexity`) all come in through `read_utf8`, so they fail alike: the file named,
then what is wrong with it — cannot be read, not UTF-8 (with the line of the first bad byte,
which is where to look in an editor), or nothing in it but white space. Binary files (a
SentencePiece `.model`) come in through `read_bytes`, JSON files (side files of a model
folder, data sets, saved results) through `read_json`.
"""
import json
import os


def read_utf8(path, error=ValueError, what="the file"):
    """The text of the UTF-8 file at `path`, without the byte-order mark some editors put
    first. Raises `error` (a ValueError subclass) naming the file and, in the message,
    `what` it is ("the corpus", "the training data")."""
    path = os.fspath(path)
    data = read_bytes(path, error, what)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise error(f"{path}: {what} is not UTF-8 text (byte 0x{data[e.start]:02X} at line {line} "
                    f"cannot be decoded)") from None
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise error(f"{path}: {what} is empty")
    return text


def read_bytes(path, error=ValueError, what="the file"):
    """The bytes of the file at `path`; `error` naming the file and `what` it is when it
    cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise error(f"{os.fspath(path)}: cannot read {what} ({(e.strerror or str(e)).lower()})") from None


_REQUIRED = object()


def read_json(path, error=ValueError, what="the file", missing=_REQUIRED):
    """The value held by the UTF-8 JSON file at `path`. When `missing` is given, a path that
    is not a file gives it back (an optional side file); otherwise a file that cannot be
    read raises `error` as `read_bytes` does, and one that is not UTF-8 JSON raises `error`
    naming the file and the decoder's complaint."""
    path = os.fspath(path)
    if missing is not _REQUIRED and not os.path.isfile(path):
        return missing
    data = read_bytes(path, error, what)
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise error(f"{path}: not usable JSON (nested too deeply)") from None
