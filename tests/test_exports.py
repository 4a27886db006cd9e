"""The public surface: every public name exported once, and nothing heavy imported."""

from __future__ import annotations

import subprocess
import sys

import prefetch


def test_all_is_sorted_unique_and_resolves():
    assert prefetch.__all__ == sorted(set(prefetch.__all__))
    for name in prefetch.__all__:
        assert getattr(prefetch, name) is not None


def test_every_error_derives_from_prefetch_error():
    errors = [getattr(prefetch, n) for n in prefetch.__all__ if n.endswith("Error")]
    assert errors
    assert all(issubclass(e, prefetch.PrefetchError) for e in errors)


def test_import_does_not_pull_in_frameworks():
    code = "import sys, prefetch; print(sorted(m for m in ('torch', 'jax', 'tensorflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
