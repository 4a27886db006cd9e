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
    faults: Faults | None = None

    def do_GET(self):
        time.sleep(self.delay)
        fault = self.faults.next(self.path) if self.faults is not None else None
        if fault is None:
            super().do_GET()
        elif fault == "error":
            self.send_error(503, "injected")
        elif fault == "drop":
            body = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
        elif fault == "trickle":
            ranged = self.headers.get("Range") is not None  # honoured, so each retry trickles new bytes
            self.send_response(206 if ranged else 200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.2)

    def log_message(self, *args):
        pass


class Faults:
    """What the server does to each request of a path, in turn: None (serve), "error" (503), "drop" (half the
    body, then close) or "trickle" (a byte every 0.2 s); `always` repeats for every request after the list.
    Only paths under `prefix` (the files, not the index) see faults."""

    def __init__(self, plan: list[str | None], always: str | None = None, prefix: str = "/objects/") -> None:
        self.plan, self.always, self.prefix = plan, always, prefix
        self.seen: dict[str, int] = {}
        self.connections = 0
        self.lock = threading.Lock()

    def next(self, path: str) -> str | None:
        if not path.startswith(self.prefix):
            return None
        with self.lock:
            n = self.seen[path] = self.seen.get(path, 0) + 1
        return self.plan[n - 1] if n <= len(self.plan) else self.always


class _Backlogged(http.server.ThreadingHTTPServer):
    request_queue_size = 128
    """The standard library's default of 5 pending connections makes concurrent clients wait out SYN retries."""
    connections = 0

    def process_request(self, request, client_address):
        self.connections += 1
        super().process_request(request, client_address)


class Server:
    """A static file server for a folder on 127.0.0.1, adding `delay` seconds to every request."""

    def __init__(self, folder: Path, delay: float = 0.0, faults: Faults | None = None,
                 keep_alive: bool = False) -> None:
        handler = type("Handler", (_QuietHandler,), {"delay": delay, "faults": faults,
                                                     "protocol_version": "HTTP/1.1" if keep_alive else "HTTP/1.0"})
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
