"""Reading a remote volume's files over HTTP(S) and S3: kept-alive connections, retries, no silent stalls.

Every read goes through `chunks`, which retries a failed or stalled transfer with
exponential backoff, continuing from the byte it reached (an HTTP Range request),
and raises FetchError naming the address and the last cause after the last retry.
A transfer that delivers fewer than STALL_BYTES in STALL_S seconds counts as failed,
so a server trickling a byte every few seconds cannot hold a worker for ever.

Kept-alive HTTP connections are shared by the threads of a process and reused across files. S3 uses one
boto3 client per process (boto3 documents clients, not sessions, as thread-safe),
created on first use and again after a fork.
"""

from __future__ import annotations

import http.client
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, urlsplit

from .errors import FetchError, VolumeError

CHUNK = 1 << 20
RETRIES = 4
"""Further attempts after a failed one, waiting BACKOFF_S, then twice as long each time (with jitter)."""
BACKOFF_S = 0.25
TIMEOUT_S = 30.0
"""Longest wait for a connection or for any bytes of a response."""
STALL_S = 30.0
STALL_BYTES = 16 << 10
"""A transfer that moves fewer bytes than this in STALL_S seconds has stalled."""


class _Retry(Exception):
    """A failure worth another attempt (a dropped connection, a timeout, a stall, a 5xx or 429 status)."""


def chunks(url: str) -> Iterator[bytes]:
    """The bytes at `url` (http, https or s3), in chunks, retried from where a failed attempt stopped."""
    opener = _s3_opener(url) if url.startswith("s3://") else _http_opener(url)
    offset, failures = 0, 0
    while True:
        start = offset
        try:
            for chunk in _watched(opener(offset)):
                offset += len(chunk)
                yield chunk
            return
        except _Retry as exc:
            # an attempt that moved a stall's worth of bytes made progress: count failures anew after it
            failures = 1 if offset - start >= STALL_BYTES else failures + 1
            if failures > RETRIES:
                raise FetchError(f"cannot read {url}: {exc} (after {RETRIES + 1} attempts)") from None
            time.sleep(BACKOFF_S * 2 ** (failures - 1) * random.uniform(0.5, 1.5))


def _watched(parts: Iterator[bytes]) -> Iterator[bytes]:
    """`parts` as they come, raising _Retry when fewer than STALL_BYTES arrive in STALL_S seconds."""
    start, moved = time.monotonic(), 0
    for part in parts:
        moved += len(part)
        now = time.monotonic()
        if now - start >= STALL_S:
            if moved < STALL_BYTES:
                raise _Retry(f"the transfer stalled ({moved} bytes in {now - start:.0f} s)")
            start, moved = now, 0
        yield part


# --- HTTP ---------------------------------------------------------------------------------------------------

MAX_IDLE = 16
"""Idle kept-alive connections kept per host, shared by every thread of the process."""

_idle: dict[tuple[str, str], list[http.client.HTTPConnection]] = {}
_idle_lock = threading.Lock()
os.register_at_fork(after_in_child=_idle.clear)  # a child opens its own connections


def _take(scheme: str, netloc: str) -> http.client.HTTPConnection:
    """An idle kept-alive connection to the host, or a new one."""
    with _idle_lock:
        idle = _idle.get((scheme, netloc))
        if idle:
            return idle.pop()
    kind = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    return kind(netloc, timeout=TIMEOUT_S)


def _give_back(scheme: str, netloc: str, connection: http.client.HTTPConnection) -> None:
    with _idle_lock:
        idle = _idle.setdefault((scheme, netloc), [])
        if len(idle) < MAX_IDLE:
            idle.append(connection)
            return
    connection.close()


def _http_opener(url: str) -> Callable[[int], Iterator[bytes]]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise VolumeError(f"cannot read {url}: only http://, https:// and s3:// addresses are remote")
    target = quote(parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    def attempt(offset: int) -> Iterator[bytes]:
        reusable = False
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        connection = _take(parts.scheme, parts.netloc)
        try:
            try:
                reused = connection.sock is not None
                try:
                    connection.request("GET", target, headers=headers)
                    response = connection.getresponse()
                except (OSError, http.client.HTTPException):
                    if not reused:
                        raise
                    connection.close()  # the server closed an idle kept-alive connection; one more try at once
                    connection.request("GET", target, headers=headers)
                    response = connection.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                raise _Retry(f"{type(exc).__name__}: {exc}") from None
            if response.status >= 500 or response.status == 429:
                response.read()
                raise _Retry(f"the server answered {response.status} {response.reason}")
            if response.status not in (200, 206):
                response.read()
                reusable = not response.will_close
                raise FetchError(f"cannot read {url}: the server answered {response.status} {response.reason}")
            skip = offset if response.status == 200 else 0
            expected = response.getheader("Content-Length")
            received = 0
            try:
                while part := response.read1(CHUNK) or response.read():  # read() ends the response
                    received += len(part)
                    if skip:
                        part, skip = part[skip:], max(0, skip - len(part))
                    if part:
                        yield part
            except (OSError, http.client.HTTPException) as exc:
                raise _Retry(f"{type(exc).__name__}: {exc}") from None
            if expected is not None and received != int(expected):
                raise _Retry(f"the response ended after {received} of {expected} bytes")
            reusable = not response.will_close
        finally:
            if reusable:
                _give_back(parts.scheme, parts.netloc, connection)
            else:
                connection.close()

    return attempt


# --- S3 -----------------------------------------------------------------------------------------------------

_s3_lock = threading.Lock()
_s3_client: dict[int, Any] = {}


def s3_client() -> Any:
    """This process's S3 client (boto3 clients are thread-safe; creating them from many threads is not)."""
    with _s3_lock:
        client = _s3_client.get(os.getpid())
        if client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError as exc:
                raise VolumeError("s3:// volumes need boto3: pip install 'prefetch[s3]'") from exc
            config = Config(connect_timeout=TIMEOUT_S, read_timeout=TIMEOUT_S, retries={"mode": "standard"})
            client = boto3.session.Session().client("s3", config=config)
            _s3_client.clear()
            _s3_client[os.getpid()] = client
        return client


def _s3_opener(url: str) -> Callable[[int], Iterator[bytes]]:
    bucket, _, key = url[len("s3://"):].partition("/")
    client = s3_client()
    from botocore.exceptions import BotoCoreError, ClientError

    def attempt(offset: int) -> Iterator[bytes]:
        try:
            extra = {"Range": f"bytes={offset}-"} if offset else {}
            body = client.get_object(Bucket=bucket, Key=key, **extra)["Body"]
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status >= 500 or status == 429:
                raise _Retry(str(exc)) from None
            raise FetchError(f"cannot read {url}: {exc}") from None
        except BotoCoreError as exc:
            raise _Retry(str(exc)) from None
        try:
            while part := body.read(CHUNK):
                yield part
        except (OSError, BotoCoreError) as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}") from None
        finally:
            body.close()

    return attempt
