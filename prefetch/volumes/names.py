"""What a name or a hash read from a user, an index or a server may be, so that no path leaves its folder.

Every byte of an index may come from an untrusted server. A file's SHA-256 becomes a
path in the cache, a data point's id and file names become paths in a clone, so each
is checked where it enters: 64 lowercase hex digits for a hash, and for a name a
relative path of plain components (no `..`, no absolute path, no NUL, no backslash).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .errors import VolumeError

_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_NAME = 1024


def check_hash(value: Any, where: str) -> str:
    """`value` if it is a SHA-256 in lowercase hex, else a VolumeError naming `where`."""
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise VolumeError(f"{where}: a file's sha256 must be 64 lowercase hex digits, got {value!r:.100}")
    return value


def name_problem(value: Any) -> str | None:
    """Why `value` is not a safe relative name (a path of plain components), or None when it is."""
    if not isinstance(value, str) or not value:
        return "a name must be a non-empty string"
    if len(value) > MAX_NAME:
        return f"a name may be at most {MAX_NAME} characters"
    if "\0" in value or "\\" in value:
        return "a name may not contain NUL or a backslash"
    if value.startswith("/"):
        return "a name must be a relative path, not an absolute one"
    if any(part in ("", ".", "..") for part in value.split("/")):
        return "a name's path components may not be empty, '.' or '..'"
    try:
        value.encode()
    except UnicodeEncodeError:
        return "a name must be valid Unicode (it holds a lone surrogate)"
    return None


def check_name(value: Any, what: str) -> str:
    """`value` if it is a safe relative name, else a VolumeError naming `what`."""
    problem = name_problem(value)
    if problem is not None:
        raise VolumeError(f"{what} {value!r:.100} is refused: {problem}")
    return value


def inside(root: Path, relative: str, what: str) -> Path:
    """`root / relative`, refused unless it stays inside `root` once resolved (symbolic links included)."""
    check_name(relative, what)
    base = Path(os.path.realpath(root))
    target = Path(os.path.realpath(base / relative))
    if target != base and base not in target.parents:
        raise VolumeError(f"{what} {relative!r:.100} resolves to {target}, outside {base}")
    return target
