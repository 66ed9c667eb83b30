"""Downloading and unpacking real datasets safely (used by ``data_scripts/prepare_*.py``).

* :func:`download` resumes a partial download (HTTP ``Range`` requests; bytes go to
  ``<file>.part``, renamed to ``<file>`` only when complete and its checksum verified).
* :func:`safe_extract` checks every member of a tar or zip archive *before* extracting anything:
  absolute paths, ``..`` components, links leading outside the destination (followed through the
  links that earlier members make, on any Python version) and device files are refused (the "tar
  slip" / "zip slip" attacks). Python's tar ``data`` filter, where it exists, is a second line.
* :func:`confirm` asks before a long download, and never blocks a non-interactive run.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

__all__ = [
    "RemoteFile",
    "UnsafeArchiveError",
    "ChecksumError",
    "file_digest",
    "verify_checksum",
    "download",
    "check_archive",
    "safe_extract",
    "fetch",
    "confirm",
    "describe_plan",
    "human_bytes",
]

CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: where it is and how to recognise it.

    ``sha256`` / ``md5``: published checksums, ``None`` where none is known with certainty (the
    sum is then printed for the user to compare). ``size`` / ``extracted_size``: approximate bytes,
    for the plan shown before downloading.
    """

    name: str
    url: str
    size: int | None = None
    extracted_size: int | None = None
    sha256: str | None = None
    md5: str | None = None


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the destination directory."""


class ChecksumError(ValueError):
    """A downloaded file is not the published one."""


def human_bytes(n: float | None) -> str:
    if n is None:
        return "unknown size"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify_checksum(path: str | os.PathLike, sha256: str | None = None, md5: str | None = None) -> str | None:
    """Check ``path`` against the known checksums; return the SHA-256 when none is known.

    ``sha256`` may be the first 8 or more hex digits only: torch.hub's weights files carry such a prefix in
    their names (``resnet50-0676ba61.pth``). Raises :class:`ChecksumError` naming the file, the expected and
    the actual sum.
    """
    if sha256 and len(sha256) < 8:
        raise ValueError(f"a SHA-256 prefix needs 8 or more hex digits; got {sha256!r}")
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected:
            actual = file_digest(path, algorithm)
            matches = actual.lower().startswith(expected.lower()) if algorithm == "sha256" else \
                actual.lower() == expected.lower()
            if not matches:
                raise ChecksumError(f"{path}: {algorithm.upper()} is {actual}, expected {expected}")
    if not sha256 and not md5:
        return file_digest(path, "sha256")
    return None


def download(url: str, dest: str | os.PathLike, sha256: str | None = None, md5: str | None = None,
             timeout: float = 60.0, progress: bool = True) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` if an earlier run was interrupted.

    The server is asked for the missing bytes only (``Range: bytes=<have>-``); a server that
    answers 200 instead of 206 gets the whole file again. The file is renamed to ``dest`` only
    once complete and matching ``sha256`` / ``md5``; on a mismatch the ``.part`` file is deleted
    (its bytes are wrong, resuming would keep them) and :class:`ChecksumError` is raised -- no
    ``dest`` is left. With no known checksum the SHA-256 is printed for the user to compare.
    An existing ``dest`` is checked and kept.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    if dest.exists():
        try:
            unverified = verify_checksum(dest, sha256, md5)
        except ChecksumError as exc:
            raise ChecksumError(f"{exc}. Delete {dest} and run again to download it afresh.") from None
        if unverified:
            print(f"{dest.name}: already downloaded; SHA-256 {unverified} (no published sum to compare)")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "course-lib-data-scripts"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as exc:
        if exc.code == 416 and have:  # range not satisfiable: the .part file is already complete
            response = None
        else:
            raise OSError(f"Downloading {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except (URLError, TimeoutError, ConnectionError) as exc:
        raise OSError(
            f"Cannot reach {url} ({getattr(exc, 'reason', exc)}). Check the connection and run the same command "
            f"again{f' (it resumes from {human_bytes(have)})' if have else ''}, or download the file yourself to {dest}."
        ) from exc

    if response is not None:
        with response:
            resumed = have > 0 and response.status == 206
            if have and not resumed:
                have = 0  # the server ignored Range: start again
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            with open(part, "ab" if resumed else "wb") as f, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=dest.name, disable=not progress
            ) as bar:
                try:
                    while chunk := response.read(CHUNK):
                        f.write(chunk)
                        bar.update(len(chunk))
                except (OSError, TimeoutError) as exc:
                    raise OSError(
                        f"Download of {url} interrupted after {human_bytes(f.tell())} ({exc}); "
                        "run the same command again to resume."
                    ) from exc
        if total is not None and part.stat().st_size != total:
            raise OSError(
                f"Download of {url} stopped at {part.stat().st_size} of {total} bytes; run again to resume."
            )
    try:
        unverified = verify_checksum(part, sha256, md5)
    except ChecksumError as exc:
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"{exc}: the download from {url} is corrupt or not the published file; it was deleted. "
            "Run again to download it afresh."
        ) from None
    os.replace(part, dest)
    if unverified:
        print(f"{dest.name}: SHA-256 {unverified}\n  No published checksum is recorded for this file: "
              "compare it with the one on the dataset's website.")
    return dest


# ------------------------------------------------------------------------------------------ archives
def _is_safe_name(name: str) -> bool:
    if not name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return False  # absolute (POSIX, UNC or Windows drive)
    return ".." not in PurePosixPath(name.replace("\\", "/")).parts


class _ArchiveTree:
    """The tree an archive builds, as far as links go: where a path leads once the symbolic links
    defined by earlier members are followed, as the file system will follow them on extraction.

    A target that is lexically inside can still leave the root through a link (``a -> .`` then
    ``b -> a/..``); so can a link whose target passes through a path that a later member turns
    into a link, which :meth:`escaping_links` finds once all members are known.
    """

    def __init__(self):
        self.links: dict[tuple[str, ...], tuple[tuple[str, ...], str]] = {}  # where -> (its folder, target)

    def resolve(self, base: tuple[str, ...], path: str, follow_last: bool = True, depth: int = 0):
        """``base/path`` as parts under the root, links followed; ``None`` if it leaves the root."""
        if path.startswith("/") or depth > 40:  # absolute, or a loop of links
            return None
        parts = [p for p in path.split("/") if p not in ("", ".")]
        current = list(base)
        for i, part in enumerate(parts):
            if part == "..":
                if not current:
                    return None
                current.pop()
                continue
            current.append(part)
            link = self.links.get(tuple(current))
            if link is not None and (follow_last or i < len(parts) - 1):
                resolved = self.resolve(*link, depth=depth + 1)
                if resolved is None:
                    return None
                current = list(resolved)
        return tuple(current)

    def escaping_links(self) -> list[str]:
        return ["/".join(where) for where, (folder, target) in self.links.items() if self.resolve(folder, target) is None]


def check_archive(archive: str | os.PathLike) -> int:
    """Check every member of a ``.tar[.gz|.bz2|.xz]`` or ``.zip`` archive; return the total
    uncompressed size. Raises :class:`UnsafeArchiveError` naming the first bad member."""
    archive = Path(archive)

    def refuse(member: str, why: str):
        raise UnsafeArchiveError(
            f"{archive}: refusing to extract member {member!r}: {why}. Nothing was extracted; "
            "the archive is corrupt or malicious -- download it again from the official source."
        )

    total = 0
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not _is_safe_name(info.filename):
                    refuse(info.filename, "absolute path or '..' component")
                if stat.S_ISLNK(info.external_attr >> 16):
                    refuse(info.filename, "symbolic link")
                total += info.file_size
        return total
    tree = _ArchiveTree()  # links are followed member by member, as extraction will (any Python version)
    try:
        with tarfile.open(archive) as tf:
            for m in tf.getmembers():
                if not _is_safe_name(m.name):
                    refuse(m.name, "absolute path or '..' component")
                where = tree.resolve((), m.name, follow_last=False)
                if where is None:
                    refuse(m.name, "its folder is a symbolic link that leads outside the destination")
                if where in tree.links:
                    refuse(m.name, "it replaces a symbolic link that an earlier member of the archive made")
                if m.issym():
                    tree.links[where] = (where[:-1], m.linkname)
                    if tree.resolve(where[:-1], m.linkname) is None:
                        refuse(m.name, f"symbolic link to {m.linkname!r}, which leads outside the destination "
                                       "(following the archive's own links) or round in a loop")
                elif m.islnk():
                    if not _is_safe_name(m.linkname) or tree.resolve((), m.linkname) is None:
                        refuse(m.name, f"hard link to {m.linkname!r} outside the destination")
                elif not (m.isfile() or m.isdir()):
                    refuse(m.name, "device, FIFO or other special file")
                total += m.size
    except tarfile.TarError as exc:
        raise ValueError(f"{archive} is neither a zip nor a readable tar archive ({exc})") from exc
    escaping = tree.escaping_links()
    if escaping:  # a later member turned a folder on an earlier link's way into a link
        refuse(escaping[0], "symbolic link that leads outside the destination once the archive's later links exist")
    return total


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike, progress: bool = True) -> Path:
    """Extract ``archive`` into ``dest`` after :func:`check_archive` accepted every member.

    Extraction goes to a temporary directory inside ``dest``; its top-level entries are then moved
    into ``dest`` (replacing older ones), so an interrupted extraction leaves no partial tree; the
    temporary directories of killed extractions are removed first.
    """
    archive, dest = Path(archive), Path(dest)
    needed = check_archive(archive)
    dest.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(dest).free
    if needed > free:
        raise OSError(f"Extracting {archive} needs {human_bytes(needed)} but {dest} has {human_bytes(free)} free")
    from .atomic import remove_stale_temporaries

    remove_stale_temporaries(dest)  # extractions that were killed
    tmp = dest / f".extract-{archive.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if progress:
            print(f"Extracting {archive.name} ({human_bytes(needed)}) into {dest} ...", flush=True)
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
        else:
            with tarfile.open(archive) as tf:
                if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: a second line of defence
                    tf.extractall(tmp, filter="data")
                else:
                    tf.extractall(tmp)
        for entry in sorted(tmp.iterdir()):
            target = dest / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(entry, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


# ------------------------------------------------------------------------------------------ asking
def describe_plan(files: list[RemoteFile], dest: Path, prepared_size: int | None = None) -> str:
    """What a download will cost: bytes to download and on disk, time at typical speeds."""
    lines = [f"This downloads {len(files)} file(s) into {dest}:"]
    for f in files:
        lines.append(f"  {f.name:<40} {human_bytes(f.size):>10}  {f.url}")
    download_bytes = sum(f.size or 0 for f in files)
    extracted = sum(f.extracted_size or f.size or 0 for f in files)
    disk = download_bytes + extracted + (prepared_size or 0)
    lines.append(f"Download: about {human_bytes(download_bytes)}; disk needed: about {human_bytes(disk)} "
                 "(archives + extracted files; delete the archives afterwards to get the space back).")
    for speed in (10e6, 50e6):
        minutes = download_bytes / speed / 60
        lines.append(f"  at {speed / 1e6:.0f} MB/s: about {minutes:.0f} min" if minutes >= 1 else
                     f"  at {speed / 1e6:.0f} MB/s: under a minute")
    return "\n".join(lines)


def fetch(files: list[RemoteFile], download_dir: str | os.PathLike, local: list[str | os.PathLike] = (),
          assume_yes: bool = False, verify: bool = True, progress: bool = True) -> dict[str, Path]:
    """The archives of ``files`` on local disk: ``{name: path}``.

    Archives given in ``local`` (matched to ``files`` by file name) are used where they are,
    checked against the published sums unless ``verify=False``; the others are downloaded into
    ``download_dir`` after showing the plan and asking (:func:`confirm`).
    """
    by_name = {f.name: f for f in files}
    paths: dict[str, Path] = {}
    for p in map(Path, local):
        if p.name not in by_name:
            raise ValueError(f"--archive {p}: expected one of {sorted(by_name)} (the official file names)")
        if not p.is_file():
            raise FileNotFoundError(f"--archive {p}: no such file")
        if verify:
            verify_checksum(p, by_name[p.name].sha256, by_name[p.name].md5)
        paths[p.name] = p
    missing = [f for f in files if f.name not in paths]
    if missing:
        download_dir = Path(download_dir)
        print(describe_plan(missing, download_dir))
        if not confirm("Download now?", assume_yes):
            raise SystemExit("Cancelled: nothing was downloaded.")
        for f in missing:
            paths[f.name] = download(f.url, download_dir / f.name, f.sha256 if verify else None,
                                     f.md5 if verify else None, progress=progress)
    return paths


def confirm(question: str, assume_yes: bool = False) -> bool:
    """Ask ``question`` [y/N]. ``assume_yes`` answers yes. Without an interactive terminal (or
    with ``$CI`` set) nothing is asked: it exits, telling the user to pass ``--yes``."""
    if assume_yes:
        return True
    interactive = sys.stdin is not None and sys.stdin.isatty() and not os.environ.get("CI")
    if not interactive:
        raise SystemExit(f"{question}\nNot asking without an interactive terminal: run again with --yes to go ahead.")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
