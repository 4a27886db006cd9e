"""The local file cache: content-addressed, verified, written atomically, shared, least recently used out."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .._locks import unused
from .errors import VolumeError


def default_cache_dir() -> Path:
    """$PREFETCH_CACHE, else $XDG_CACHE_HOME/prefetch, else ~/.cache/prefetch."""
    if os.environ.get("PREFETCH_CACHE"):
        return Path(os.environ["PREFETCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "prefetch"


VERIFIED_MTIME_NS = 946_684_800 * 10**9
"""The modification time the cache gives a file it has verified (2000-01-01). Any write to the file sets its
mtime to now, so a file whose mtime is not this one is in doubt and is hashed before it is handed out."""


DEAD_DOWNLOAD_S = 10.0
"""A temporary download file unchanged this long and locked by nobody belongs to a process that died."""


@dataclass
class Held:
    """A cached file that eviction leaves alone until `release()` (a shared lock on an open descriptor)."""

    path: Path
    fd: int | None = None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _remove_unless_locked(path: Path) -> bool:
    """Unlink `path` unless some process holds a lock on it (a reader's hold or a live download)."""
    with unused(path) as free:
        if free:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return bool(free)


class Cache:
    """Files by SHA-256 under `root/objects`, safe to share between processes and pools.

    A file is written to a private temporary name (locked while it is written),
    verified against its hash and renamed into place, so a reader never sees a
    partial file and two processes fetching the same file both succeed. Before a file
    is handed out its size is checked, and its hash too when it may have been changed
    since it was verified (see VERIFIED_MTIME_NS); a damaged file is fetched again.

    Past `limit` bytes, the files read longest ago go, except those held (`hold`) by
    any process, and temporary files of downloads whose process died. A held file can
    make the cache exceed its limit by at most what is held.
    """

    def __init__(self, root: Path, limit: int | None = None) -> None:
        self.root = Path(root)
        self.limit = limit
        self.objects = self.root / "objects"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.added = 0

    def path(self, sha: str) -> Path:
        return self.objects / sha[:2] / sha[2:]

    def get(self, sha: str, size: int, fetch: Callable[[], Iterable[bytes]]) -> Path:
        """The local path of a sound copy of a file, fetching it (as chunks of bytes) if need be.

        Another process's eviction may remove the path once this returns; use `hold`
        to keep it until you are done reading.
        """
        held = self.hold(sha, size, fetch)
        held.release()
        return held.path

    def hold(self, sha: str, size: int, fetch: Callable[[], Iterable[bytes]]) -> Held:
        """A sound copy of a file, fetched if need be, that no eviction removes until it is released."""
        target = self.path(sha)
        for _ in range(3):
            fd = self._open_sound(target, sha, size)
            if fd is None:
                fd = self._fetch(target, sha, size, fetch)
            if fd is not None:
                if self.limit is not None and self.added > self.limit // 10:
                    self.evict()
                return Held(target, fd)
        raise VolumeError(f"file {sha[:12]}... keeps disappearing from the cache {self.root} as it is fetched; "
                          "is another process removing it?")

    def _open_sound(self, target: Path, sha: str, size: int) -> int | None:
        """A descriptor of the cached file holding a shared lock, if it is there and sound; else None."""
        try:
            fd = os.open(target, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            stat = os.fstat(fd)
            if stat.st_nlink == 0:  # evicted between open and lock
                os.close(fd)
                return None
            sound = stat.st_size == size and (stat.st_mtime_ns == VERIFIED_MTIME_NS or _hash_of(fd) == sha)
            if not sound:
                os.close(fd)
                with contextlib.suppress(FileNotFoundError):
                    target.unlink()
                return None
            os.utime(fd, ns=(time.time_ns(), VERIFIED_MTIME_NS))
            return fd
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise

    def _fetch(self, target: Path, sha: str, size: int, fetch: Callable[[], Iterable[bytes]]) -> int | None:
        """Download, verify and rename into place; the descriptor, still held (None: evicted at once, try again).

        The download's exclusive lock becomes the holder's shared lock on the same
        descriptor, so another process's eviction (with a small limit) cannot remove
        the file between its arrival and its first read.
        """
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
        digest = hashlib.sha256()
        written = 0
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # tells eviction that this download is alive
            with open(fd, "wb", closefd=False) as out:
                for chunk in fetch():
                    digest.update(chunk)
                    out.write(chunk)
                    written += len(chunk)
            if digest.hexdigest() != sha or written != size:
                raise VolumeError(f"file {sha[:12]}... arrived corrupted ({written} bytes, expected {size}; "
                                  f"its SHA-256 is {digest.hexdigest()[:12]}...)")
            os.utime(fd, ns=(time.time_ns(), VERIFIED_MTIME_NS))
            os.replace(temp, target)  # still locked, so eviction cannot take it for a dead download's
            fcntl.flock(fd, fcntl.LOCK_SH)
            self.added += written
            if os.fstat(fd).st_nlink == 0:  # evicted in the instant the lock changed hands
                os.close(fd)
                return None
            return fd
        except BaseException:
            os.close(fd)
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()

    def evict(self) -> None:
        """Remove the least recently read files until the cache holds at most `limit` bytes.

        A file held by any process is skipped, and so is a download in progress; the
        temporary file of a download whose process died is removed.
        """
        self.added = 0
        entries = []
        for sub in self.objects.iterdir():
            if not sub.is_dir():
                continue
            for entry in os.scandir(sub):
                try:
                    stat = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # renamed into place or removed by another process meanwhile
                    continue
                if entry.name.endswith(".part"):
                    if time.time() - stat.st_mtime >= DEAD_DOWNLOAD_S:  # a newer one may not be locked yet
                        _remove_unless_locked(Path(entry.path))
                elif not entry.name.startswith("."):
                    entries.append((stat.st_atime_ns, stat.st_size, Path(entry.path)))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if self.limit is None or total <= self.limit:
                break
            if _remove_unless_locked(path):
                total -= size


def _hash_of(fd: int) -> str:
    """The SHA-256 of an open descriptor's file, leaving the descriptor open."""
    with open(fd, "rb", closefd=False) as f:
        return sha256_of(f)


def sha256_of(f: BinaryIO) -> str:
    """The SHA-256 of a binary file's bytes from where it stands, read a MiB at a time."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: f.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()
