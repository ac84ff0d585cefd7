"""Writing files so that a reader never sees half of one.

The file is written under a temporary name in the same folder and then renamed over the
destination with `os.replace`, which POSIX and Windows both perform as one step on a single
file system. If the writer fails or is interrupted, the destination keeps its old content
(or stays absent) and the temporary file is removed. Three more promises:

- Only a regular file (or nothing) is replaced. A device, a FIFO, a socket, a folder or a
  symbolic link at the destination is refused before anything is written: renaming over
  /dev/full would put a regular file where the device was.
- A process killed outright (SIGKILL, power loss) cannot remove its temporary file. Each
  temporary name carries the writer's process id, `.{name}.{pid}.{random}.tmp`, and the next
  write of the same destination removes those whose process is gone.
- The file gets an ordinary file's mode, 0o666 less the umask (mkstemp makes it private).
"""
import contextlib
import glob
import os
import shutil
import stat
import tempfile


class UnsafeOutputError(OSError):
    """The destination exists and is not a regular file: writing there is refused."""


@contextlib.contextmanager
def atomic_path(path):
    """A temporary path beside `path` to write to; renamed onto `path` when the `with`
    block ends without an exception, deleted otherwise.

        with atomic_path("out/tokenizer.json") as tmp:
            backend.save(tmp)
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{path}: cannot write there, the folder {folder} does not exist")
    check_replaceable(path)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=_temporary_prefix(path) + f"{os.getpid()}.", suffix=".tmp")
    try:
        os.close(fd)
        yield tmp
        # mkstemp makes it private (and a writer may have made the file anew): give it an
        # ordinary file's mode
        os.chmod(tmp, 0o666 & ~_umask())
        check_replaceable(path)  # again: something may have appeared there meanwhile
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_folder(path):
    """A temporary folder beside `path` to fill; renamed onto `path` (replacing a folder
    there) when the `with` block ends without an exception, deleted otherwise. Stale
    temporary folders of `path` are removed first, as for files."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.lexists(path) and not (os.path.isdir(path) and not os.path.islink(path)):
        raise UnsafeOutputError(f"{path}: exists and is not a folder; refusing to replace it")
    remove_stale_temporaries(path)
    tmp = tempfile.mkdtemp(dir=parent, prefix=_temporary_prefix(path) + f"{os.getpid()}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_replaceable(path):
    """Raise UnsafeOutputError unless `path` is missing or a regular file (not a link)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISREG(mode):
        return
    kind = ("a symbolic link" if stat.S_ISLNK(mode) else "a folder" if stat.S_ISDIR(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "not a regular file")
    raise UnsafeOutputError(f"{path}: is {kind}, not a regular file; refusing to replace it "
                            f"(give the path of a new or an existing regular file)")


def remove_stale_temporaries(path):
    """Remove the temporary files and folders of earlier writes of `path` whose writing
    process no longer exists (killed before it could clean up)."""
    prefix = _temporary_prefix(path)
    for tmp in glob.glob(glob.escape(prefix) + "*.tmp"):
        pid = os.path.basename(tmp)[len(os.path.basename(prefix)):].split(".", 1)[0]
        if pid.isdigit() and not _process_exists(int(pid)):
            if os.path.isdir(tmp) and not os.path.islink(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.remove(tmp)


def _temporary_prefix(path):
    """`folder/.name.`: the start of every temporary name for `path`."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, "." + name + ".")


def _process_exists(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, and belongs to someone else
        return True
    except OSError:
        return True
    return True


def _umask():
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data):
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))
