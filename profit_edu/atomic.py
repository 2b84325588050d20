"""Files written whole or not at all: the package's one atomic writer.

Every file the library writes (checkpoints, packed models, ONNX files, the ledger's neighbours, the data cache)
goes through :func:`atomic_write_bytes`: the bytes go to a temporary file in the same folder, are flushed to
disk (fsync) and renamed over the target with ``os.replace``, which is atomic: a reader sees the old file or
the new one, never half of one. The temporary name says which process writes it
(``.checkpoint.json~HOST~PID~xxxx.tmp``), so :func:`remove_stale_temporaries` can delete what a killed writer
left behind, and never the file of a writer still at work.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import socket
import tempfile
import time
from pathlib import Path

__all__ = ["STALE_AFTER_S", "atomic_write_bytes", "remove_stale_temporaries"]

log = logging.getLogger(__name__)

STALE_AFTER_S = 3600.0  # a temporary file of another machine's writer is left alone for this long


def _fsync_dir(directory: Path) -> None:
    """Flush a directory entry (the rename) to disk; a no-op where the OS cannot open directories."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _host() -> str:
    return re.sub(r"[~/\\]", "_", socket.gethostname()) or "host"


# .NAME~HOST~PID~RANDOM.tmp: what atomic_write_bytes writes; .NAME.RANDOM.tmp: what versions before it wrote
_TEMPORARY = re.compile(r"^\.(?P<name>.+)~(?P<host>[^~]*)~(?P<pid>\d+)~[^~]*\.tmp$")
_OLD_TEMPORARY = re.compile(r"^\.(checkpoint\.json|epoch-\d+-[0-9a-f]+\.safetensors|SHA256SUMS)\.[a-z0-9_]{8}\.tmp$")


def _writer_gone(host: str, pid: int, mtime: float) -> bool:
    """Whether the process that writes a temporary file is gone (so the file is a leftover to remove)."""
    if host == _host() and os.name == "posix":
        if pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            return True
        except OSError:  # it exists, as another user's process
            return False
        return False
    return time.time() - mtime > STALE_AFTER_S  # another machine (shared disk): only once it is surely dead


def remove_stale_temporaries(directory: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete the temporary files that killed writers left in ``directory`` (only those of ``name``, if given).

    A file is removed when the process named in it no longer runs on this machine, when it was written on
    another machine more than an hour ago, or when it has the name that earlier versions gave checkpoint files.
    Files that cannot be removed (a read-only folder) are left. Returns the paths removed.
    """
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.endswith(".tmp") or not entry.is_file(follow_symlinks=False):
            continue
        match = _TEMPORARY.match(entry.name)
        try:
            if match is not None:
                if name is not None and match["name"] != name:
                    continue
                if not _writer_gone(match["host"], int(match["pid"]), entry.stat().st_mtime):
                    continue
            elif name is not None or not _OLD_TEMPORARY.match(entry.name):
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted write in %s", len(removed), directory)
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the complete new one.

    The bytes go to a temporary file in the same folder (same file system, so the rename is atomic), are
    fsync'ed, and the temporary file is renamed over ``path``. On any error the temporary file is removed
    and ``path`` is left as it was; temporary files of ``path`` that a killed writer left are removed first.

    Raises:
        IsADirectoryError: ``path`` is a directory (nothing is written).
        OSError: the folder cannot be created or written (read-only, disk full, ...).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
    >>> atomic_write_bytes(p, b"hello"); p.read_bytes()
    b'hello'
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file name to write", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}~{_host()}~{os.getpid()}~", suffix=".tmp", dir=path.parent)
    except OSError as err:  # read-only folder, full disk, no permission: name the file meant
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.filename in (None, tmp):  # name the file meant, not the temporary one
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise
    _fsync_dir(path.parent)
