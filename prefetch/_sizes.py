"""Sizes in bytes from what a user writes: 500_000_000, "500MB", "2GiB"."""

from __future__ import annotations

import re

from ._errors import ArgumentError

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30, "TIB": 2**40}




def parse_size(limit: int | str | None, what: str = "cache_limit") -> int | None:
    """Bytes from an int or a string such as "500MB" or "2GiB"; None for no limit."""
    if limit is None or (isinstance(limit, int) and not isinstance(limit, bool) and limit > 0):
        return limit
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B?)\s*", str(limit).upper())
    if m is None or isinstance(limit, bool):
        raise ArgumentError(f"{what} must be a positive number of bytes or a size like '500MB', got {limit!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2)])
