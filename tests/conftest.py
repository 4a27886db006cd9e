"""Shared fixtures: every test is checked for leaked processes and shared memory."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

SHM = Path("/dev/shm")
SHM_PREFIX = "prefetch"


def _children() -> set[int]:
    """Live (not zombie) processes whose parent is this test process."""
    me = str(os.getpid())
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def _segments() -> set[str]:
    return {p.name for p in SHM.glob(f"{SHM_PREFIX}*")} if SHM.exists() else set()


@pytest.fixture(scope="session", autouse=True)
def _resource_tracker():
    """Start multiprocessing's resource tracker once, so the leak guard does not count it as ours."""
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()


@pytest.fixture(autouse=True)
def leak_guard():
    """Fail a test that leaves a child process or a /dev/shm segment of ours behind."""
    before_children, before_segments = _children(), _segments()
    yield
    deadline = time.monotonic() + 5.0
    while True:
        children = _children() - before_children
        segments = _segments() - before_segments
        if not (children or segments) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not children, f"test left child processes running: {sorted(children)}"
    assert not segments, f"test left shared memory behind: {sorted(segments)}"
