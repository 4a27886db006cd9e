"""What every child process of a pool shares: the poll interval, the parent check, seeds, and sends."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import signal
import sys
from typing import Any

import zmq

POLL_MS = 200
"""Longest wait for a message before a child process checks that the trainer lives."""


_parent: int | None = None
"""This process's parent when it started: the trainer, or the forkserver process the trainer started."""


def parent_alive(parent_pid: int) -> bool:
    """Whether this process still has the parent it started with (once re-parented, the trainer is gone).

    Under the forkserver start method the parent is the server, which exits with the trainer.
    """
    return os.getppid() == (parent_pid if _parent is None else _parent)


PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, by_signal: bool) -> None:
    """Make this process end when the trainer does, even while user code blocks (holding the GIL or not).

    On Linux, with `by_signal`, the kernel sends SIGKILL when the parent dies
    (PR_SET_PDEATHSIG). That signal follows the *thread* that started the process,
    so the pool asks for it only when that thread is the main thread; otherwise the
    process relies on its parent check every POLL_MS, as on other systems. A parent
    that died before the request took effect is caught by the check after it.
    """
    global _parent
    _let_go_of_forkserver()
    if by_signal and sys.platform == "linux":
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    _parent = os.getppid()
    if _parent != parent_pid and not pid_alive(parent_pid):
        os._exit(0)


def _let_go_of_forkserver() -> None:
    """Close this process's end of the trainer's forkserver "alive" pipe.

    A forkserver exits once every holder of that pipe's write end has closed it, and
    multiprocessing hands one to each process it starts. A pool's processes wait for
    their parent (the forkserver) to go, so if they held the pipe too, a SIGKILLed
    trainer would leave the forkserver, the mux process, the workers and the shared
    memory behind for ever. Without it the forkserver exits with the trainer, and they
    follow.
    """
    from multiprocessing import forkserver

    server = forkserver._forkserver
    if server._forkserver_alive_fd is not None:
        with contextlib.suppress(OSError):
            os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists here (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def derive_seed(root: int, *key: int) -> int:
    """A 63-bit seed for the thing named by `key`, derived from the pool's root seed.

    Every seed in a pool (mux policies, stream activations, replicas) comes from here,
    so that one root seed fixes them all and no two keys share a seed. A keyed hash
    (about 1 µs) rather than numpy's SeedSequence (about 50 µs): it runs once per
    stream activation in the mux process.
    """
    text = ",".join(str(int(k)) for k in (root, *key)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8, person=b"prefetch").digest(), "little") >> 1


def send_while_parent_lives(sock: Any, message: bytes | list[bytes], parent_pid: int) -> bool:
    """Send (a list: as one multipart message) with a send timeout, retrying while the parent lives; False once gone.

    A send with no peer blocks for ever in ZeroMQ; the timeout turns that into a
    chance to notice that the trainer died and the peer will never come back.
    """
    while True:
        try:
            if isinstance(message, list):
                sock.send_multipart(message)
            else:
                sock.send(message)
            return True
        except zmq.Again:
            if not parent_alive(parent_pid):
                return False
