"""Shared-memory segments: who creates, who attaches, who unlinks, and sweeping leftovers.

The trainer creates and unlinks the pool's one segment. Processes that only attach
never register it with multiprocessing's resource tracker (CPython bpo-39959), so a
worker exiting cannot unlink what the trainer still uses. Names carry a prefix and
the owner's pid, so that segments left by a crashed machine or a SIGKILLed trainer
whose mux also died can be found and removed (`prefetch doctor --clean`).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import sys
from multiprocessing import shared_memory
from pathlib import Path

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

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self._owner = shared_memory.SharedMemory(name=name, create=True, size=size)
        self.mapping = attach(name)
        self._owner.close()

    def unlink(self) -> None:
        """Remove the name and drop this process's mapping unless views of it remain."""
        self._owner.unlink()
        with contextlib.suppress(BufferError):
            self.mapping.close()


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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_segments() -> list[str]:
    """Our segments whose owner process is gone (on systems that list segments in /dev/shm)."""
    if not SHM_DIR.is_dir():
        return []
    found = []
    for entry in SHM_DIR.iterdir():
        if entry.name.startswith(PREFIX):
            pid = owner_pid(entry.name)
            if pid is not None and not _alive(pid):
                found.append(entry.name)
    return sorted(found)


def sweep() -> list[str]:
    """Unlink every stale segment; return their names."""
    names = stale_segments()
    for name in names:
        unlink(name)
    return names
