"""buffer_stream: stack a stream of samples into batches, field by field."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ._errors import DataError, SchemaError, check_int


def _fields(sample: Any) -> dict[Any, Any]:
    if isinstance(sample, dict):
        return sample
    if isinstance(sample, tuple):
        return dict(enumerate(sample))
    raise DataError(f"buffer_stream: a sample must be a dict or a tuple of array-likes, got {type(sample).__name__}")


def _stack(samples: list[Any], axis: int | None) -> Any:
    first = _fields(samples[0])
    arrays: dict[Any, list[np.ndarray]] = {key: [] for key in first}
    specs = {key: np.asarray(value) for key, value in first.items()}
    for position, sample in enumerate(samples):
        fields = _fields(sample)
        if fields.keys() != first.keys():
            missing = [k for k in first if k not in fields]
            extra = [k for k in fields if k not in first]
            raise SchemaError(
                f"buffer_stream: sample {position} of the batch has fields {list(fields)}, expected {list(first)}"
                f" (missing {missing}, extra {extra})"
            )
        for key, value in fields.items():
            array = np.asarray(value)
            spec = specs[key]
            if axis is None:
                shape_ok = array.shape == spec.shape
            else:
                shape_ok = array.ndim == spec.ndim and np.delete(array.shape, axis).tolist() == np.delete(
                    spec.shape, axis).tolist()
            if array.dtype != spec.dtype or not shape_ok:
                raise SchemaError(
                    f"buffer_stream: field {key!r} of sample {position} is {array.dtype}{list(array.shape)}, "
                    f"expected {spec.dtype}{list(spec.shape)} like the first sample of the batch"
                )
            arrays[key].append(array)
    stacked = {key: np.stack(v) if axis is None else np.concatenate(v, axis=axis) for key, v in arrays.items()}
    return tuple(stacked.values()) if isinstance(samples[0], tuple) else stacked


def buffer_stream(stream: Iterable[Any], buffer_size: int, partial: bool = False,
                  axis: int | None = None) -> Iterator[Any]:
    """Group `buffer_size` samples at a time into one batch, stacking each field.

    With `axis=None` each field gains a leading batch axis; with an int, fields are
    concatenated along that existing axis. A short last batch is yielded only when
    `partial` is true. Samples of one batch must agree in fields, dtypes and shapes.
    """
    check_int(buffer_size, 1, "buffer_stream: buffer_size")
    buffered: list[Any] = []
    for sample in stream:
        buffered.append(sample)
        if len(buffered) == buffer_size:
            yield _stack(buffered, axis)
            buffered = []
    if buffered and partial:
        yield _stack(buffered, axis)
