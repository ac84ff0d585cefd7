"""Reading a user's file whole, with errors a command line can print in one line.

Corpora (`llama_np.chinese.corpus`), training data (`llama_np.training.data`) and perplexity texts
(`llama_np.perplexity`) all come in through `read_utf8`, so they fail alike: the file named,
then what is wrong with it — cannot be read, not UTF-8 (with the line of the first bad byte,
which is where to look in an editor), or nothing in it but white space. Binary files (a
SentencePiece `.model`) come in through `read_bytes`.
"""
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
