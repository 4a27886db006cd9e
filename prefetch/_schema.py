"""Schemas: the fields of a sample, inferred or given, and checked writes into batch rows.

Numeric fields (numpy arrays and scalars, Python numbers and bools) live in shared
memory as (batch_size, *shape) arrays. Other fields (str, bytes, small objects)
travel beside the batch in messages and appear in the batch as lists.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np

from ._errors import DataError, SchemaError

NUMERIC_KINDS = frozenset("biufcmM")

BIG_ROW_BYTES = 16384
"""Fields with rows at least this big are written without a temporary stacked copy."""


@dataclass(frozen=True)
class Field:
    """One field of a sample: its key, and its dtype and shape when it is an array (else `dtype` is None)."""

    key: Any
    dtype: np.dtype | None
    shape: tuple[int, ...]

    @property
    def is_array(self) -> bool:
        return self.dtype is not None

    @property
    def row_bytes(self) -> int:
        """Bytes of one row of this field (0 for object fields)."""
        return 0 if self.dtype is None else self.dtype.itemsize * math.prod(self.shape)

    def describe(self) -> str:
        return f"{self.dtype}{list(self.shape)}" if self.is_array else "object"

    def to_wire(self) -> list[Any]:
        return [self.key, None if self.dtype is None else self.dtype.str, list(self.shape)]

    @classmethod
    def from_wire(cls, wire: list[Any]) -> Field:
        key, dtype, shape = wire
        return cls(key, None if dtype is None else np.dtype(dtype), tuple(shape))


@dataclass(frozen=True)
class Schema:
    """The fields of every sample, and whether samples are dicts or tuples."""

    fields: tuple[Field, ...]
    is_tuple: bool

    def to_wire(self) -> list[Any]:
        return [self.is_tuple, [f.to_wire() for f in self.fields]]

    @classmethod
    def from_wire(cls, wire: list[Any]) -> Schema:
        is_tuple, fields = wire
        return cls(tuple(Field.from_wire(f) for f in fields), is_tuple)

    @classmethod
    def coerce(cls, schema: Any) -> Schema:
        """A Schema from a user's `schema=`: {field: (dtype, shape)} or a list of (dtype, shape)."""
        if isinstance(schema, Schema):
            return schema
        if isinstance(schema, dict):
            items, is_tuple = list(schema.items()), False
        elif isinstance(schema, (list, tuple)):
            items, is_tuple = list(enumerate(schema)), True
        else:
            raise SchemaError(f"schema must be a dict of field -> (dtype, shape) or a list of them, got {schema!r}")
        fields = []
        for key, spec in items:
            if spec is object or spec is None:
                fields.append(Field(key, None, ()))
                continue
            try:
                dtype, shape = spec
                fields.append(Field(key, np.dtype(dtype), tuple(int(d) for d in shape)))
            except (TypeError, ValueError) as exc:
                raise SchemaError(f"schema field {key!r}: expected (dtype, shape) or object, got {spec!r}") from exc
        return cls(tuple(fields), is_tuple)

    def layout(self, batch_size: int) -> tuple[list[int], int]:
        """Byte offset of each array field in a slot (64-byte aligned), and the slot's size."""
        offsets, size = [], 0
        for f in self.fields:
            offsets.append(size)
            size += -(-batch_size * f.row_bytes // 64) * 64
        return offsets, max(size, 64)

    def views(self, buffer: Any, start: int, offsets: list[int], batch_size: int) -> list[np.ndarray | None]:
        """Each array field of the slot at byte `start` of `buffer` as a (batch_size, *shape) array; None for objects.

        The arrays keep `buffer` alive, so a trainer can tell when the last view of a slot is gone.
        """
        data = buffer if isinstance(buffer, np.ndarray) else np.frombuffer(buffer, np.uint8)
        return [None if not f.is_array else
                data[start + off:start + off + batch_size * f.row_bytes].view(f.dtype).reshape(batch_size, *f.shape)
                for f, off in zip(self.fields, offsets, strict=True)]


def _as_array(value: Any) -> np.ndarray | None:
    """The value as a numeric array, or None when it is not one (str, bytes, objects)."""
    if isinstance(value, np.ndarray):
        return value if value.dtype.kind in NUMERIC_KINDS else None
    if isinstance(value, (bool, int, float, complex, np.generic)):
        array = np.asarray(value)
        return array if array.dtype.kind in NUMERIC_KINDS else None
    return None


def sample_fields(sample: Any, where: str) -> tuple[bool, dict[Any, Any] | tuple[Any, ...]]:
    """(is_tuple, fields) of a sample, or a DataError saying what came instead."""
    if isinstance(sample, dict):
        return False, sample
    if isinstance(sample, tuple):
        return True, sample
    raise DataError(f"{where}: a sample must be a dict or a tuple of fields, got {type(sample).__name__}: "
                    f"{_preview(sample)}")


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def infer(sample: Any, where: str) -> Schema:
    """The schema of one sample: numeric fields become arrays, anything else an object field."""
    is_tuple, fields = sample_fields(sample, where)
    items = enumerate(fields) if is_tuple else fields.items()
    out = []
    for key, value in items:
        array = _as_array(value)
        out.append(Field(key, None, ()) if array is None else Field(key, array.dtype, array.shape))
    return Schema(tuple(out), is_tuple)


class RowWriter:
    """Writes samples into the rows of one slot's field arrays, checking each against the schema."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.keys = [f.key for f in schema.fields]
        self.array_fields = [(i, f) for i, f in enumerate(schema.fields) if f.is_array]
        self.object_fields = [(i, f) for i, f in enumerate(schema.fields) if not f.is_array]

    def check_keys(self, sample: Any, where: str) -> dict[Any, Any] | tuple[Any, ...]:
        is_tuple, fields = sample_fields(sample, where)
        if is_tuple != self.schema.is_tuple:
            kind = "tuple" if self.schema.is_tuple else "dict"
            raise SchemaError(f"{where}: expected a {kind} sample, got {type(sample).__name__}")
        if is_tuple:
            if len(fields) != len(self.keys):
                raise SchemaError(f"{where}: expected a tuple of {len(self.keys)} fields, got {len(fields)}")
        elif fields.keys() != set(self.keys):
            missing = [k for k in self.keys if k not in fields]
            extra = [k for k in fields if k not in self.keys]
            raise SchemaError(f"{where}: fields differ from the schema: missing {missing}, extra {extra}")
        return fields

    def write_many(self, samples: list[Any], rows: np.ndarray, arrays: list[np.ndarray | None],
                   where: Callable[[int], str], ordered: bool = True) -> dict[int, list[Any]]:
        """Write sample i into row `rows[i]` a field at a time; return object field values by row.

        `rows` are distinct, and ascending if `ordered` (then a run of consecutive rows
        is written as a slice). A FILL of several streams passes each stream's rows in
        turn, unordered, and the rows are scattered: cheaper than sorting the samples.
        `where(i)` names where sample i came from; it is asked only for an error message.

        The fast path writes each field with one numpy call and exact dtypes; anything
        it cannot take (a missing field, a cast, a shape) goes through `write`, which
        either accepts it or raises the precise SchemaError.
        """
        kind = tuple if self.schema.is_tuple else dict
        try:
            if set(map(type, samples)) != {kind} or set(map(len, samples)) != {len(self.keys)}:
                raise TypeError
            first, count = int(rows[0]), len(rows)
            contiguous = ordered and int(rows[-1]) - first == count - 1
            for i, f in self.array_fields:
                key, dest = f.key, arrays[i]
                values = list(map(itemgetter(key), samples))
                if f.row_bytes < BIG_ROW_BYTES:
                    stacked = np.array(values)
                    if stacked.dtype != f.dtype or stacked.shape[1:] != f.shape:
                        raise TypeError
                    if contiguous:
                        dest[first:first + count] = stacked
                    else:
                        dest[rows] = stacked
                    continue
                if any(type(v) is not np.ndarray or v.shape != f.shape or v.dtype != f.dtype for v in values):
                    raise TypeError
                if contiguous:
                    np.concatenate(values, out=dest[first:first + count].reshape(-1, *f.shape[1:]))
                else:
                    for row, value in zip(rows.tolist(), values, strict=True):
                        dest[row] = value
        except (KeyError, IndexError, TypeError, ValueError):
            return {int(r): self.write(s, int(r), arrays, where(i))
                    for i, (s, r) in enumerate(zip(samples, rows, strict=True))}
        if not self.object_fields:
            return {}
        keys = [f.key for _, f in self.object_fields]
        return {int(r): [s[k] for k in keys] for s, r in zip(samples, rows, strict=True)}

    def write(self, sample: Any, row: int, arrays: list[np.ndarray | None], where: str) -> list[Any]:
        """Write the array fields of `sample` into `row`; return its object fields' values."""
        fields = self.check_keys(sample, where)
        for i, f in self.array_fields:
            value = fields[f.key]
            if type(value) is np.ndarray and value.dtype == f.dtype and value.shape == f.shape:
                arrays[i][row] = value
                continue
            arrays[i][row] = self._checked(value, f, where)
        return [fields[f.key] for _, f in self.object_fields]

    @staticmethod
    def _checked(value: Any, f: Field, where: str) -> Any:
        array = _as_array(value)
        if array is None:
            raise SchemaError(f"{where}: field {f.key!r} expected {f.describe()}, got {type(value).__name__} "
                              f"{_preview(value)}")
        python_scalar = not isinstance(value, (np.ndarray, np.generic))
        castable = np.can_cast(array.dtype, f.dtype, "same_kind") if python_scalar else array.dtype == f.dtype
        if python_scalar and f.dtype.kind in "iu" and array.dtype.kind == "f":
            castable = False
        if not castable or array.shape != f.shape:
            raise SchemaError(f"{where}: field {f.key!r} expected {f.describe()}, got "
                              f"{array.dtype}{list(array.shape)}")
        return array
