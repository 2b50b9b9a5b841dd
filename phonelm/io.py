"""Atomic writes and content hashes: nothing half-written is ever taken for finished work."""

import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_stale_temps(folder: str | os.PathLike, *, older_than: float = 3600.0) -> list[Path]:
    """Remove the temporary files of atomic writes under `folder` that a killed process left
    (a kill skips the cleanup), last modified over `older_than` seconds ago: a write in
    progress in another process is younger. -> the removed files."""
    import time

    removed = []
    for tmp in Path(folder).rglob(".*.tmp") if Path(folder).is_dir() else ():
        try:
            if tmp.is_file() and time.time() - tmp.stat().st_mtime >= older_than:
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:  # another process finished or removed it meanwhile
            continue
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Atomically write `path` with `writer(tmp_path)` (for libraries that write files)."""
    with atomic_path(path) as tmp:
        writer(tmp)


def digest(*parts) -> str:
    """Short stable hash of JSON-serialisable parts (dict keys sorted)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def bytes_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Busy(OSError):
    """A lock file held by another process."""


class FileLock:
    """An exclusive lock on a file (made if missing), released when the process ends however it
    ends (flock): `with FileLock(path):` waits for it, `FileLock(path, wait=False)` raises Busy
    when another process holds it."""

    def __init__(self, path: str | os.PathLike, *, wait: bool = True):
        self.path, self.wait, self._handle = Path(path), wait, None

    def acquire(self) -> None:
        handle = self.path.open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.close()
            raise Busy(f"{self.path} is held by another process") from None
        self._handle = handle

    def release(self) -> None:
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
