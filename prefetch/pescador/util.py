"""pescador's utilities: batch length, and its helpers for deprecating names and arguments."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .exceptions import PescadorError

__all__ = ["Deprecated", "batch_length", "deprecated", "get_rng", "moved", "rename_kw"]


class Deprecated:
    """Default value of a renamed keyword argument: tells `rename_kw` that the old name was not used."""

    def __repr__(self) -> str:
        return "<DEPRECATED parameter>"


def rename_kw(old_name: str, old_value: Any, new_name: str, new_value: Any, version_deprecated: str,
              version_removed: str) -> Any:
    """`new_value`, unless the caller still passed `old_name`: then its value, with a DeprecationWarning."""
    if isinstance(old_value, Deprecated):
        return new_value
    warnings.warn(f"keyword argument '{old_name}' was renamed to '{new_name}' in version {version_deprecated}; "
                  f"the old name goes in version {version_removed}", DeprecationWarning, stacklevel=3)
    return old_value


Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _warning_on_call(message: Callable[[Callable[..., Any]], str]) -> Decorator:
    """A decorator whose function warns with DeprecationWarning, worded by `message(function)`, when called."""
    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def warned(*args: Any, **kwargs: Any) -> Any:
            warnings.warn(message(function), DeprecationWarning, stacklevel=2)
            return function(*args, **kwargs)
        return warned
    return decorate


def moved(moved_from: str, version: str, version_removed: str) -> Decorator:
    """Mark a function as moved from `moved_from`: calling it warns with DeprecationWarning."""
    return _warning_on_call(lambda f: f"{moved_from} moved to {f.__module__}.{f.__name__} in version {version}; "
                                      f"the old name goes in version {version_removed}")


def deprecated(version: str, version_removed: str) -> Decorator:
    """Mark a function as deprecated since `version`: calling it warns with DeprecationWarning."""
    return _warning_on_call(lambda f: f"{f.__module__}.{f.__name__} is deprecated since version {version} and "
                                      f"goes in version {version_removed}")


def batch_length(batch: Mapping[Any, Any]) -> int | None:
    """Rows in a batch (the common length of its fields); None for no fields; PescadorError if they differ."""
    lengths = {len(value) for value in batch.values()}
    if len(lengths) > 1:
        raise PescadorError(f"the fields of the batch have different lengths {sorted(lengths)}")
    return lengths.pop() if lengths else None


def get_rng(random_state: Any) -> np.random.RandomState:
    """A RandomState from None (numpy's global one), a seed, or a RandomState."""
    if random_state is None:
        return np.random.mtrand._rand
    if isinstance(random_state, (int, np.integer)):
        return np.random.RandomState(seed=random_state)
    if isinstance(random_state, np.random.RandomState):
        return random_state
    raise PescadorError(f"random_state must be None, an int or a RandomState, got {random_state!r}")
