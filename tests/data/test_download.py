"""Downloads resume and are verified; archives that would write outside their directory are refused."""
from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from course_lib.data.download import (
    ChecksumError,
    RemoteFile,
    UnsafeArchiveError,
    check_archive,
    confirm,
    describe_plan,
    download,
    fetch,
    safe_extract,
)

PAYLOAD = bytes(range(256)) * 40 + b"the end"  # 10247 bytes
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


class Server:
    """A local HTTP server for ``PAYLOAD`` that honours ``Range: bytes=N-`` (unless told not to)."""

    def __init__(self, honour_range: bool = True):
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(dict(self.headers))
                start = 0
                rng = self.headers.get("Range")
                if rng and honour_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(PAYLOAD):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
                else:
                    self.send_response(200)
                body = PAYLOAD[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/file.bin"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server():
    with Server() as s:
        yield s


def test_fresh_download_verifies_and_renames(server, tmp_path):
    dest = download(server.url, tmp_path / "file.bin", sha256=SHA256, md5=MD5, progress=False)
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "file.bin.part").exists()
    assert "Range" not in server.requests[0]


def test_partial_download_is_resumed_with_a_range_request(server, tmp_path):
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:4000])
    dest = download(server.url, tmp_path / "file.bin", sha256=SHA256, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[-1]["Range"] == "bytes=4000-"
    assert not (tmp_path / "file.bin.part").exists()


def test_complete_part_file_gets_416_and_is_just_verified(server, tmp_path):
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD)
    assert download(server.url, tmp_path / "file.bin", sha256=SHA256, progress=False).read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_from_zero(tmp_path):
    (tmp_path / "file.bin.part").write_bytes(b"garbage that must not stay")
    with Server(honour_range=False) as s:
        assert download(s.url, tmp_path / "file.bin", sha256=SHA256, progress=False).read_bytes() == PAYLOAD


def test_wrong_checksum_is_an_error_and_leaves_no_file(server, tmp_path):
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:100])
    with pytest.raises(ChecksumError, match=r"SHA256 is [0-9a-f]{64}, expected 0{64}.*deleted"):
        download(server.url, tmp_path / "file.bin", sha256="0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ChecksumError, match="MD5"):
        download(server.url, tmp_path / "file.bin", md5="f" * 32, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unknown_checksum_prints_the_sum(server, tmp_path, capsys):
    download(server.url, tmp_path / "file.bin", progress=False)
    assert SHA256 in capsys.readouterr().out
    download(server.url, tmp_path / "file.bin", progress=False)  # already there: kept, sum shown again
    assert "already downloaded" in capsys.readouterr().out and len(server.requests) == 1


def test_existing_file_with_wrong_sum_is_an_error(tmp_path):
    (tmp_path / "file.bin").write_bytes(b"old")
    with pytest.raises(ChecksumError, match="Delete .*file.bin"):
        download("http://127.0.0.1:9/never", tmp_path / "file.bin", sha256=SHA256, progress=False)


def test_unreachable_host_says_how_to_resume(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "f.part").write_bytes(b"x" * 2000)
    with pytest.raises(OSError, match=r"Cannot reach .*resumes from 2.0 KB"):
        download(f"http://127.0.0.1:{port}/f", tmp_path / "f", progress=False, timeout=5)
    assert (tmp_path / "f.part").read_bytes() == b"x" * 2000


# ------------------------------------------------------------------ archives
def tar_with(path, members: dict[str, bytes], links: dict[str, str] = {}):
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    return path


def zip_with(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


@pytest.mark.parametrize("bad", ["../evil.txt", "/abs/path", "ok/../../evil.txt", "C:/windows/evil.txt"])
@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_malicious_members_are_refused_and_nothing_is_extracted(tmp_path, bad, kind):
    members = {"good/a.txt": b"a", bad: b"evil"}
    archive = (tar_with if kind == "tar" else zip_with)(tmp_path / f"x.{kind}", members)
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match=rf"refusing to extract member '{bad}'.*Nothing was extracted"):
        safe_extract(archive, dest)
    assert not dest.exists() and not (tmp_path / "evil.txt").exists()


def test_symlinks_outside_are_refused_inside_allowed(tmp_path):
    archive = tar_with(tmp_path / "l.tar", {"d/a.txt": b"a"}, links={"d/up": "../../etc/passwd"})
    with pytest.raises(UnsafeArchiveError, match="symbolic link to '../../etc/passwd'"):
        safe_extract(archive, tmp_path / "out")
    archive = tar_with(tmp_path / "abs.tar", {}, links={"d/abs": "/etc/passwd"})
    with pytest.raises(UnsafeArchiveError, match="outside the destination"):
        check_archive(archive)
    archive = tar_with(tmp_path / "ok.tar", {"d/a.txt": b"a"}, links={"d/b.txt": "a.txt"})
    out = safe_extract(archive, tmp_path / "ok", progress=False)
    assert (out / "d" / "b.txt").read_bytes() == b"a"


def tar_of(path, *entries):
    """A tar of ``(name, bytes)`` files, ``(name, "->", target)`` symbolic links and ``(name, "=>", target)``
    hard links, in this order."""
    with tarfile.open(path, "w") as tf:
        for name, *rest in entries:
            info = tarfile.TarInfo(name)
            if len(rest) == 2:
                info.type = tarfile.SYMTYPE if rest[0] == "->" else tarfile.LNKTYPE
                info.linkname = rest[1]
                tf.addfile(info)
            else:
                info.size = len(rest[0])
                tf.addfile(info, io.BytesIO(rest[0]))
    return path


def test_a_chain_of_links_leading_outside_is_refused_without_the_data_filter(tmp_path, monkeypatch):
    """Before: each target was checked lexically (``a/..`` stays inside), so only Python's tar ``data``
    filter (3.10.12 / 3.11.4 and later) stood between this archive and the parent folders."""
    monkeypatch.delattr(tarfile, "data_filter", raising=False)  # as on Python 3.10.0 - 3.10.11
    archive = tar_of(tmp_path / "chain.tar", ("a", "->", "."), ("b", "->", "a/.."), ("c", "->", "b/../.."),
                     ("c/escaped.txt", b"evil"))
    dest = tmp_path / "deep" / "er" / "out"
    with pytest.raises(UnsafeArchiveError, match=r"chain\.tar: refusing to extract member 'b': symbolic link "
                                                  r"to 'a/\.\.', which leads outside the destination"):
        safe_extract(archive, dest)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["chain.tar"], "nothing may be extracted"


@pytest.mark.parametrize("entries, member, why", [
    # y/x is no link when a is checked (a stays inside); once y/x -> . exists, a leads out of the root
    ([("a", "->", "y/x/../.."), ("y/x", "->", ".")], "a", "once the archive's later links exist"),
    ([("a", "->", "y/x/../.."), ("y/x", "->", "."), ("a/evil.txt", b"evil")], "a/evil.txt", "its folder is"),
    ([("a", "->", "y/x/../.."), ("y/x", "->", "."), ("h", "=>", "a/etc/passwd")], "h", "hard link to 'a/etc/passwd'"),
    ([("d/a.txt", b"a"), ("d/l", "->", "a.txt"), ("d/l", "->", "../..")], "d/l", "replaces a symbolic link"),
    ([("loop", "->", "loop/x")], "loop", "round in a loop"),
])
def test_links_are_followed_member_by_member(tmp_path, entries, member, why):
    archive = tar_of(tmp_path / "x.tar", *entries)
    with pytest.raises(UnsafeArchiveError, match=rf"refusing to extract member '{member}': .*{why}"):
        check_archive(archive)


def test_links_that_stay_inside_are_extracted(tmp_path):
    archive = tar_of(tmp_path / "ok.tar", ("d/a.txt", b"a"), ("a", "->", "."), ("b", "->", "a/d"), ("h", "=>", "b/a.txt"))
    out = safe_extract(archive, tmp_path / "out", progress=False)
    assert (out / "b" / "a.txt").read_bytes() == b"a" and (out / "h").read_bytes() == b"a"


def test_symlinks_in_a_zip_are_refused(tmp_path):
    info = zipfile.ZipInfo("d/link")
    info.external_attr = (0o120777 << 16)  # S_IFLNK: how zip marks a symbolic link
    with zipfile.ZipFile(tmp_path / "l.zip", "w") as zf:
        zf.writestr("d/a.txt", b"a")
        zf.writestr(info, "../../etc/passwd")
    with pytest.raises(UnsafeArchiveError, match=r"l\.zip: refusing to extract member 'd/link': symbolic link"):
        safe_extract(tmp_path / "l.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_safe_extract_merges_archives_and_leaves_no_temp(tmp_path):
    first = zip_with(tmp_path / "a.zip", {"one/x.txt": b"1"})
    second = tar_with(tmp_path / "b.tar", {"two/y.txt": b"2"})
    dest = tmp_path / "out"
    safe_extract(first, dest, progress=False)
    safe_extract(second, dest, progress=False)
    assert sorted(p.name for p in dest.iterdir()) == ["one", "two"]
    assert (dest / "one" / "x.txt").read_bytes() == b"1" and (dest / "two" / "y.txt").read_bytes() == b"2"
    (tmp_path / "c.tar").write_bytes(b"neither tar nor zip")
    with pytest.raises(ValueError, match="neither a zip nor a readable tar"):
        safe_extract(tmp_path / "c.tar", dest)


# ------------------------------------------------------------------ asking
def test_confirm_never_blocks_without_a_terminal(monkeypatch):
    assert confirm("Download 2 GB?", assume_yes=True)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(SystemExit, match="--yes"):
        confirm("Download 2 GB?")


def test_fetch_shows_the_plan_and_checks_local_archives(server, tmp_path, capsys, monkeypatch):
    remote = RemoteFile("file.bin", server.url, size=len(PAYLOAD), sha256=SHA256)
    plan = describe_plan([RemoteFile("big.tar", "http://x/big.tar", size=2_000_000_000)], tmp_path)
    assert "2.0 GB" in plan and "at 10 MB/s: about 3 min" in plan
    monkeypatch.setenv("CI", "1")
    with pytest.raises(SystemExit, match="--yes"):
        fetch([remote], tmp_path / "dl")
    assert not (tmp_path / "dl").exists() and server.requests == []
    paths = fetch([remote], tmp_path / "dl", assume_yes=True, progress=False)
    assert paths["file.bin"].read_bytes() == PAYLOAD and "This downloads 1 file(s)" in capsys.readouterr().out
    local = tmp_path / "file.bin"
    local.write_bytes(b"tampered")
    with pytest.raises(ChecksumError):
        fetch([remote], tmp_path / "dl2", local=[local])
    assert fetch([remote], tmp_path / "dl2", local=[local], verify=False) == {"file.bin": local}
    with pytest.raises(ValueError, match=r"expected one of \['file.bin'\]"):
        fetch([remote], tmp_path, local=[tmp_path / "other.zip"])
