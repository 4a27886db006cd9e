"""The errors a volume raises: one root, VolumeError, and a class for each failure a caller may handle."""

from __future__ import annotations

from .._errors import PrefetchError


class VolumeError(PrefetchError):
    """A volume cannot do what was asked: no such version, nothing to commit, an unreadable source."""


class FetchError(VolumeError):
    """A file or index could not be read from a remote volume, after every retry; the message says why."""


class CorruptIndexError(VolumeError):
    """A volume's index.sqlite is not a sound SQLite database of a volume (damaged, truncated, not SQLite)."""


class VolumeLockedError(VolumeError):
    """Another process held the volume's index for longer than the busy timeout."""


class MetadataError(VolumeError, ValueError):
    """Metadata that JSON cannot hold faithfully (NaN, infinity, a non-string key, an unknown type)."""
