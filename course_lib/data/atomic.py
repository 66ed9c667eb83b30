"""Nothing half-written: files and whole directories appear complete or not at all."""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from .paths import MARKER

__all__ = ["atomic_write_bytes", "AtomicDirectory", "directory_size"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file in the same directory, then rename it to ``path``."""
    path = Path(path)
    # a unique name opened with "xb" (not mkstemp, whose files are private 0600): the umask applies
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def directory_size(path: Path) -> tuple[int, int]:
    """(number of files, total bytes) under ``path``."""
    files = [p for p in Path(path).rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


class AtomicDirectory:
    """Build a directory under a temporary name next to ``dest``; on success write ``DONE.json``
    last and move it into place (an older ``dest`` is replaced); on failure remove it.

    >>> with AtomicDirectory(dest, params) as tmp:
    ...     (tmp / "images").mkdir()   # write everything under tmp
    """

    def __init__(self, dest: Path, params: dict):
        self.dest = Path(dest)
        self.params = params
        self.tmp = self.dest.parent / f".{self.dest.name}.tmp-{os.getpid()}"

    def __enter__(self) -> Path:
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        num_files, num_bytes = directory_size(self.tmp)
        text = json.dumps(dict(self.params, files=num_files, bytes=num_bytes), sort_keys=True, indent=1) + "\n"
        atomic_write_bytes(self.tmp / MARKER, text.encode())
        old = self.dest.parent / f".{self.dest.name}.old-{os.getpid()}"
        for attempt in range(3):  # another process may put its own build in place meanwhile
            if self.dest.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(self.dest, old)
            try:
                os.replace(self.tmp, self.dest)
                break
            except OSError:
                if attempt == 2 or not self.dest.exists():
                    raise
        shutil.rmtree(old, ignore_errors=True)
        return False
