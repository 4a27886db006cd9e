"""Volumes made by the tests, and a static HTTP server on 127.0.0.1 (optionally slow) to read them from."""

from __future__ import annotations

import functools
import http.server
import threading
import time
from pathlib import Path

import numpy as np

import prefetch


def make_volume(root: Path, n: int = 100, name: str = "vol") -> tuple[prefetch.Volume, str]:
    """n data points: one small file each, metadata {label, n, nested.a, tags, ok, maybe}."""
    vol = prefetch.Volume.init(root / name)
    files = root / f"{name}-files"
    files.mkdir()
    with vol.transaction():
        for i in range(n):
            path = files / f"{i}.bin"
            path.write_bytes(bytes([i % 256]) * (i + 1))
            meta = {"label": ["cat", "dog", "bird"][i % 3], "n": i, "nested": {"a": i % 4},
                    "tags": ["x", f"t{i % 5}"], "ok": i % 2 == 0, "maybe": None if i % 7 == 0 else i}
            vol.add({f"f{i}.bin": path}, meta, id=f"p{i:04d}")
    return vol, vol.commit("initial")


def mnist_like(root: Path, n: int) -> tuple[prefetch.Volume, str]:
    """n 28x28 uint8 images saved as .npy, with a label each."""
    vol = prefetch.Volume.init(root / "mnist")
    rng = np.random.default_rng(0)
    with vol.transaction():
        for i in range(n):
            path = root / f"img{i}.npy"
            np.save(path, rng.integers(0, 256, (28, 28), dtype=np.uint8))
            vol.add({"image.npy": path}, {"label": i % 10}, id=f"digit-{i:05d}")
    return vol, vol.commit(f"{n} digits")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    delay = 0.0

    def do_GET(self):
        time.sleep(self.delay)
        super().do_GET()

    def log_message(self, *args):
        pass


class _Backlogged(http.server.ThreadingHTTPServer):
    request_queue_size = 128
    """The standard library's default of 5 pending connections makes concurrent clients wait out SYN retries."""


class Server:
    """A static file server for a folder on 127.0.0.1, adding `delay` seconds to every request."""

    def __init__(self, folder: Path, delay: float = 0.0) -> None:
        handler = type("Handler", (_QuietHandler,), {"delay": delay})
        self.httpd = _Backlogged(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
