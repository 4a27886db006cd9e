"""File locks that say "someone is using this": shared slot segments and cached files, across processes.

A `flock` belongs to an open file description and dies with the last process that
holds it, so it marks a file as in use without any bookkeeping that a killed process
could leave behind, and it works across PID namespaces that share the file system.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def unused(path: Path) -> Iterator[bool | None]:
    """For the block, an exclusive lock on `path` if no process holds a lock on it.

    Yields True while holding it (so the file can be removed safely), False if
    someone holds a lock, None if the file is gone.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
        else:
            yield True
    finally:
        os.close(fd)
