"""Shared-memory segments: who creates, who attaches, who unlinks, and sweeping leftovers.

The trainer creates and unlinks the pool's one segment. Processes that only attach
never register it with multiprocessing's resource tracker (CPython bpo-39959), so a
worker exiting cannot unlink what the trainer still uses. Names carry a prefix and
the owner's pid, so that segments left by a crashed machine or a SIGKILLed trainer
whose mux also died can be found and removed (`prefetch doctor --clean`).

A pid says nothing across PID namespaces that share /dev/shm (`docker --ipc=host`):
there a live pool's owner pid may be free here. So the owner also holds a shared
`flock` on its segment for as long as it lives (the kernel drops it when the last
process holding the descriptor dies), and a segment is stale only if its owner pid is
gone *and* nobody holds that lock.

The segment's pages are reserved when it is created (posix_fallocate), so a /dev/shm
too small for the pool is a SharedMemoryError naming the sizes and the fix, not a
SIGBUS in a worker when it first writes a row.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import secrets
import sys
from multiprocessing import shared_memory
from pathlib import Path

from ._errors import SharedMemoryError
from ._process import pid_alive

try:
    import fcntl

    from ._locks import unused
except ImportError:  # not on Windows, which has no /dev/shm to sweep either
    fcntl = None

PREFIX = "prefetch_"
SHM_DIR = Path("/dev/shm")


def new_name() -> str:
    """A fresh segment name: prefix, owner pid, random tag (short enough for macOS's 31 characters)."""
    return f"{PREFIX}{os.getpid()}_{secrets.token_hex(4)}"


class Segment:
    """A segment this process created and will unlink, mapped so views may outlive it.

    The mapping is a plain mmap: once the name is unlinked, arrays still viewing it
    stay valid, and the mapping goes away with the last of them.
    """

    def __init__(self, name: str, size: int, what: str) -> None:
        self.name = name
        check_room(size, what)
        self._owner = shared_memory.SharedMemory(name=name, create=True, size=size)
        self._lock_fd: int | None = None
        try:
            reserve(self._owner._fd, size, what)
            if fcntl is not None:
                self._lock_fd = os.dup(self._owner._fd)
                fcntl.flock(self._lock_fd, fcntl.LOCK_SH)
            self.mapping = attach(name)
        except BaseException:
            self._owner.close()
            self._owner.unlink()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
            raise
        self._owner.close()

    def unlink(self) -> None:
        """Remove the name and drop this process's mapping unless views of it remain."""
        self._owner.unlink()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        with contextlib.suppress(BufferError):
            self.mapping.close()


def usage() -> tuple[int, int] | None:
    """(free, total) bytes of /dev/shm, where there is one."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def _too_small(size: int, free: int, total: int | None, what: str) -> SharedMemoryError:
    mb = 1e6
    suggest = max(1, int((size + (total or 0) - free) * 1.25 / 2**30) + 1)
    of = f" of {total / mb:,.0f} MB" if total else ""
    return SharedMemoryError(
        f"{what} needs {size / mb:,.0f} MB of shared memory, but {SHM_DIR} has {free / mb:,.0f} MB free{of}. "
        f"In Docker, give the container more (docker run --shm-size={suggest}g, or --ipc=host); or lower "
        "Pool(prefetch=...) or batch_size, or free /dev/shm (`prefetch doctor` shows its use).")


def check_room(size: int, what: str) -> None:
    """Refuse at once a segment larger than /dev/shm's free space."""
    room = usage()
    if room is not None and size > room[0]:
        raise _too_small(size, *room, what)


def reserve(fd: int, size: int, what: str) -> None:
    """Allocate the segment's pages now, so that running out of /dev/shm is an error here, not a SIGBUS later."""
    if not hasattr(os, "posix_fallocate") or size == 0:
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        room = usage() or (0, None)
        raise _too_small(size, room[0], room[1], what) from None


def attach(name: str) -> mmap.mmap:
    """Map an existing segment without registering it with the resource tracker."""
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, track=False)._mmap
    import _posixshmem

    fd = _posixshmem.shm_open("/" + name, os.O_RDWR, mode=0o600)
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def unlink(name: str) -> None:
    """Remove a segment's name; mappings stay valid until their last view is gone."""
    try:
        import _posixshmem

        _posixshmem.shm_unlink("/" + name)
    except FileNotFoundError:
        pass


def owner_pid(name: str) -> int | None:
    try:
        return int(name[len(PREFIX):].split("_", 1)[0])
    except ValueError:
        return None


def _in_use(path: Path) -> bool:
    """Whether a live process holds the owner's lock on a segment (a segment that vanished counts as in use)."""
    if fcntl is None:
        return False
    try:
        with unused(path) as free:
            return free is not True
    except OSError:
        return True


def segments() -> list[str]:
    """Every segment of ours in /dev/shm, live or not."""
    if not SHM_DIR.is_dir():
        return []
    return sorted(entry.name for entry in SHM_DIR.iterdir() if entry.name.startswith(PREFIX))


def stale_segments() -> list[str]:
    """Our segments whose owner is gone: its pid is not alive here and nobody holds its lock."""
    found = []
    for name in segments():
        pid = owner_pid(name)
        if pid is not None and not pid_alive(pid) and not _in_use(SHM_DIR / name):
            found.append(name)
    return found


def sweep() -> list[str]:
    """Unlink every stale segment; return their names."""
    names = stale_segments()
    for name in names:
        unlink(name)
    return names
