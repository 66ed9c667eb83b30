"""Nothing half-written: files and whole directories appear complete or not at all."""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import uuid
from collections import Counter
from pathlib import Path

from .download import human_bytes
from .paths import MARKER

__all__ = ["atomic_write_bytes", "AtomicDirectory", "directory_size", "remove_stale_temporaries", "TEMPORARY_PATTERNS",
           "check_writable"]

# The names of this package's temporaries, each with its writer's process id (group "pid"): what a run
# that was killed (Ctrl-C twice, out of memory, a closed laptop) leaves behind.
TEMPORARY_PATTERNS = (
    r"\..+\.tmp-(?P<pid>\d+)",                # AtomicDirectory's build; prepare_*.py's extracted archives
    r"\..+\.old-(?P<pid>\d+)",                # AtomicDirectory's replaced directory
    r"\..+\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp",  # atomic_write_bytes
    r"\.extract-.+-(?P<pid>\d+)",             # download.safe_extract
)
_swept: set[Path] = set()  # folders atomic_write_bytes has cleaned in this process


def _running(pid: str | None) -> bool:
    if pid is None:  # a name that no run of this code uses any more
        return False
    if os.name == "nt":  # os.kill would end the process there; keep what cannot be checked
        return True
    try:
        os.kill(int(pid), 0)  # signal 0: nothing is sent, only whether the process exists
    except (ProcessLookupError, OverflowError):  # none runs (or none can have that id)
        return False
    except PermissionError:  # it runs, as another user
        pass
    return True


def _bytes_freed(paths: list[Path]) -> int:
    """Bytes that removing ``paths`` frees: a hard-linked file counts once, and only when all its links go."""
    links, sizes = Counter(), {}
    for path in paths:
        files = [path] if path.is_symlink() or not path.is_dir() else [
            Path(root, name) for root, _, names in os.walk(path) for name in names]
        for f in files:
            st = f.lstat()
            if stat.S_ISREG(st.st_mode):
                links[st.st_dev, st.st_ino] += 1
                sizes[st.st_dev, st.st_ino] = (st.st_size, st.st_nlink)
    return sum(size for key, (size, nlink) in sizes.items() if links[key] >= nlink)


def remove_stale_temporaries(folder: str | os.PathLike, patterns=TEMPORARY_PATTERNS) -> list[Path]:
    """Remove from ``folder`` what interrupted runs left: the entries whose whole name matches one of
    ``patterns`` (regular expressions) and whose process -- the match's ``pid`` group -- no longer
    runs. A live process's temporaries (this one's included) are left alone; a pattern without a
    ``pid`` group names leftovers of older versions, removed whenever found. Prints one line naming
    what was removed and the space that freed; returns the removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    compiled = [re.compile(p) for p in patterns]
    stale = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        match = next((m for c in compiled if (m := c.fullmatch(entry.name))), None)
        if match and not _running(match.groupdict().get("pid")):
            stale.append(Path(entry.path))
    if not stale:
        return []
    freed = _bytes_freed(stale)
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    print(f"Removed what interrupted runs left in {folder}: {', '.join(p.name for p in stale)} "
          f"({human_bytes(freed)} freed)", flush=True)
    return stale


def check_writable(path: str | os.PathLike, what: str = "checkpoint", option: str = "checkpoint_path",
                   example: str = "run.pt") -> None:
    """Raise a clear error now, not at the first write, when the file ``path`` cannot be written: a regular file on
    its way, or a folder that this user cannot write to. ``what`` names the file, ``option`` the setting to change,
    ``example`` a file name to suggest when ``path`` is a folder."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{option} {path} is a folder: pass a file path, e.g. {path / example}.")
    folder = next(p for p in (path.parent, *path.parent.parents) if p.exists())
    if not folder.is_dir():
        raise NotADirectoryError(f"Cannot write {what} {path}: {folder} is a file, not a folder. "
                                 f"Pass another {option}, or move that file away.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"Cannot write {what} {path}: the folder {folder} is read-only for this user. "
                              f"Pass another {option} (in a writable folder), or make it writable (chmod u+w).")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file in the same directory, then rename it to ``path``.

    The first write into a folder (per process) removes the temporaries that killed runs left there.
    """
    path = Path(path)
    if path.parent not in _swept:
        remove_stale_temporaries(path.parent)
        _swept.add(path.parent)
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
    last and move it into place (an older ``dest`` is replaced); on failure remove it. What killed
    builds left next to ``dest`` is removed first (:func:`remove_stale_temporaries`).

    >>> with AtomicDirectory(dest, params) as tmp:
    ...     (tmp / "images").mkdir()   # write everything under tmp
    """

    def __init__(self, dest: Path, params: dict):
        self.dest = Path(dest)
        self.params = params
        self.tmp = self.dest.parent / f".{self.dest.name}.tmp-{os.getpid()}"

    def __enter__(self) -> Path:
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.dest.parent)  # builds of this or other datasets that were killed
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
