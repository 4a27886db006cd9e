"""pescador's errors are prefetch's: `PescadorError` is the root of every error prefetch raises."""

from __future__ import annotations

from .._errors import DataError, PrefetchError

PescadorError = PrefetchError

__all__ = ["DataError", "PescadorError"]
