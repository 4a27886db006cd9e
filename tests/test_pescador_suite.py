"""pescador 3.0.0's own test suite, run against prefetch.pescador: the real client of the compatibility package.

The sdist is fetched from the package registry once and cached; the test is skipped,
saying why, when the registry cannot be reached. Nothing of pescador is copied into
this repository: its tests run from the cache, with `pescador` mapped to
`prefetch.pescador` by a conftest written next to them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RELEASE = "pescador-3.0.0"

INTENDED = {
    "test_mux.TestStochasticMux_Exhaustive.test_mux_weighted[0.0-StochasticMux-exhaustive]":
        "a stream of weight 0 that still has data, in exhaustive mode, raises MuxStarvedError instead of "
        "ending the mux early without ever reading it",
}
"""pescador tests that fail on purpose: prefetch differs where pescador is wrong (listed in the README)."""


MAPPING = """
import importlib, sys
sys.path.insert(0, {root!r})
sys.modules["pescador"] = importlib.import_module("prefetch.pescador")
for name in ("core", "mux", "maps", "util", "zmq_stream", "exceptions"):
    sys.modules["pescador." + name] = importlib.import_module("prefetch.pescador." + name)
"""


def sdist() -> Path:
    """pescador's source release from the cache, fetched from the registry the first time."""
    cache = Path(os.environ.get("PREFETCH_TEST_CACHE") or Path.home() / ".cache" / "prefetch-tests")
    archive = cache / f"{RELEASE}.tar.gz"
    if not archive.exists():
        cache.mkdir(parents=True, exist_ok=True)
        fetched = subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                                  "-d", str(cache), "pescador==3.0.0"],
                                 capture_output=True, text=True, timeout=180)
        if fetched.returncode != 0 or not archive.exists():
            pytest.skip(f"pescador's sdist could not be fetched from the package registry: {fetched.stderr[-300:]}")
    return archive


def test_pescador_own_test_suite_passes_on_prefetch_pescador(tmp_path):
    pytest.importorskip("scipy")  # pescador's mux tests need it
    with tarfile.open(sdist()) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(f"{RELEASE}/tests/") and m.isfile()]
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 and 3.10.12 refuse unsafe members themselves
            tar.extractall(tmp_path, members=members, filter="data")
        else:
            tar.extractall(tmp_path, members=[m for m in members if ".." not in Path(m.name).parts])
    tests = tmp_path / RELEASE / "tests"
    (tests / "conftest.py").write_text(MAPPING.format(root=str(ROOT)))
    report = tmp_path / "report.xml"
    subprocess.run([sys.executable, "-m", "pytest", str(tests), "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                    "-o", "xfail_strict=false", f"--junitxml={report}"], cwd=tmp_path, capture_output=True,
                   text=True, timeout=600)
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname')}.{case.get('name')}".split("tests.", 1)[-1]
        failed = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped") is not None
        outcomes[name] = "failed" if failed else "skipped" if skipped else "passed"
    failed = {name for name, outcome in outcomes.items() if outcome == "failed"}
    assert sum(outcome == "passed" for outcome in outcomes.values()) >= 430
    assert failed <= set(INTENDED), sorted(failed - set(INTENDED))


def broken(n):
    for i in range(n):
        if i == 3:
            raise RuntimeError("bad sample")
        yield {"x": i}


def test_zmq_streamer_reports_the_worker_error_and_leaves_nothing():
    import prefetch.pescador as pescador

    stream = pescador.ZMQStreamer(pescador.Streamer(broken, 10))
    with pytest.raises(pescador.PescadorError, match="bad sample") as info:
        list(stream)
    assert "Streamer(broken, 10)" in str(info.value)
    assert [s["x"] for s in pescador.ZMQStreamer(pescador.Streamer(broken, 3))(max_iter=2)] == [0, 1]
