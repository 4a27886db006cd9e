"""The metadata index of a volume: data points, versions and staging in one SQLite file.

A data point is stored once (by the digest of its id, metadata and files) and a
version is the set of (id -> data point) it holds, so committing never rewrites an
older version. Query filters compile to SQL over SQLite's JSON functions, so a filter
over a million data points runs inside SQLite.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import CorruptIndexError, MetadataError, VolumeError, VolumeLockedError
from .query import And, Compare, Match, Node, Not, Or, Range

SCHEMA = """
CREATE TABLE IF NOT EXISTS points (pid INTEGER PRIMARY KEY, key TEXT NOT NULL, digest TEXT NOT NULL UNIQUE,
                                   meta TEXT NOT NULL, files TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, parent TEXT,
                                     message TEXT NOT NULL, created REAL NOT NULL, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS members (seq INTEGER NOT NULL, key TEXT NOT NULL, pid INTEGER NOT NULL,
                                    PRIMARY KEY (seq, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS staged (key TEXT PRIMARY KEY, pid INTEGER NOT NULL);
"""


BUSY_S = 30.0
"""How long a write waits for another process's transaction on the same index before VolumeLockedError."""

TABLES = ("members", "points", "staged", "versions")


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _path(field: str) -> str:
    return "$." + ".".join(f'"{part}"' for part in field.split("."))


def _unfaithful(value: Any, where: str) -> str | None:
    """Where in `value` JSON cannot hold it faithfully (NaN, infinity, a non-string key, an unknown type)."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where} is {value}, which JSON cannot hold"
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where} has the key {key!r}, not a string"
            found = _unfaithful(item, f"{where}.{key}" if where else key)
            if found:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _unfaithful(item, f"{where}[{i}]")
            if found:
                return found
        return None
    if value is None or isinstance(value, (str, int, float)):
        return None
    return f"{where} is a {type(value).__name__}, not a JSON value"


def check_metadata(key: str, meta: Any) -> str:
    """Metadata as canonical JSON, or a MetadataError naming the data point and the field JSON cannot hold.

    NaN and infinity are refused: SQLite's JSON functions reject them, so one would
    make every metadata filter of the version fail.
    """
    if not isinstance(meta, dict):
        raise MetadataError(f"data point {key!r}: metadata must be a dict, got {type(meta).__name__}")
    problem = _unfaithful(meta, "")
    if problem is not None:
        raise MetadataError(f"data point {key!r}: metadata field {problem}; store it as a string or null")
    return canonical(meta)


@contextlib.contextmanager
def sqlite_errors(path: Path) -> Iterator[None]:
    """SQLite's raw errors as named ones: a busy index as VolumeLockedError, a damaged one as CorruptIndexError."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise VolumeLockedError(f"{path}: another process held the index for over {BUSY_S:g} s ({exc}); "
                                    "retry when its add or commit is done") from exc
        raise CorruptIndexError(f"{path} cannot be read as a volume index: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise CorruptIndexError(f"{path} is damaged or not a volume index: {exc}") from exc


def check_index_file(path: Path) -> None:
    """Raise CorruptIndexError unless `path` is a sound SQLite file holding a volume's tables (used on downloads)."""
    with sqlite_errors(path):
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            db.close()
    if verdict != "ok":
        raise CorruptIndexError(f"{path} fails SQLite's integrity check: {verdict}")
    if not set(TABLES) <= tables:
        raise CorruptIndexError(f"{path} is SQLite but not a volume index (tables {sorted(tables)})")


class Index:
    """One volume's SQLite index.

    Staging is shared by every process that opens the volume, like git's index: `add`
    in one process and `commit` in another is the command line's workflow. A commit
    takes what is staged at that moment; adds inside one `transaction()` are staged
    all at once, so a concurrent commit takes all of them or none.
    """

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
        uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
        with sqlite_errors(path):
            self.db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_S)
            if not readonly:
                self.db.executescript(SCHEMA)
            tables = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not set(TABLES) <= tables:
            self.db.close()
            raise CorruptIndexError(f"{path} is not a volume index (tables {sorted(tables)})")
        self.batching = False

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Stage many data points in one SQLite transaction (much faster than one each).

        It takes the write lock at once (BEGIN IMMEDIATE), so it waits for another
        process's transaction instead of failing on upgrading a read.
        """
        with sqlite_errors(self.path):
            self.db.execute("BEGIN IMMEDIATE")
        self.batching = True
        try:
            yield
            with sqlite_errors(self.path):
                self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        finally:
            self.batching = False

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """One write: in the caller's transaction if there is one, else in its own."""
        with contextlib.nullcontext() if self.batching else self.transaction(), sqlite_errors(self.path):
            yield

    def close(self) -> None:
        self.db.close()

    # --- writing ---------------------------------------------------------------------------------------------

    def stage(self, key: str, meta: dict[str, Any], files: dict[str, dict[str, Any]]) -> None:
        meta_json = check_metadata(key, meta)
        digest = hashlib.sha256(canonical([key, meta, files]).encode()).hexdigest()
        with self._writing():
            self.db.execute("INSERT OR IGNORE INTO points (key, digest, meta, files) VALUES (?, ?, ?, ?)",
                            (key, digest, meta_json, canonical(files)))
            pid = self.db.execute("SELECT pid FROM points WHERE digest = ?", (digest,)).fetchone()[0]
            self.db.execute("INSERT OR REPLACE INTO staged (key, pid) VALUES (?, ?)", (key, pid))

    def commit(self, message: str) -> str:
        """Make the staged data points a new version on top of head; its id is a digest of its content.

        Head is read inside the write lock, so two processes committing at once make
        two versions, one on top of the other.
        """
        with self._writing():
            head = self.head()
            if not self.db.execute("SELECT 1 FROM staged LIMIT 1").fetchone():
                raise VolumeError("nothing staged to commit; add data points first")
            seq = (head[0] if head else 0) + 1
            if head:
                self.db.execute("INSERT INTO members SELECT ?, key, pid FROM members WHERE seq = ? "
                                "AND key NOT IN (SELECT key FROM staged)", (seq, head[0]))
            self.db.execute("INSERT INTO members SELECT ?, key, pid FROM staged", (seq,))
            digest = hashlib.sha1()
            digest.update(canonical([head[1] if head else None, message]).encode())
            for key, point in self.db.execute("SELECT m.key, p.digest FROM members m JOIN points p "
                                              "ON p.pid = m.pid WHERE m.seq = ? ORDER BY m.key", (seq,)):
                digest.update(f"{key}\0{point}\n".encode())
            version = digest.hexdigest()
            count = self.db.execute("SELECT count(*) FROM members WHERE seq = ?", (seq,)).fetchone()[0]
            self.db.execute("INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?)",
                            (seq, version, head[1] if head else None, message, time.time(), count))
            self.db.execute("DELETE FROM staged")
        return version

    # --- reading ---------------------------------------------------------------------------------------------

    def head(self) -> tuple[int, str] | None:
        with sqlite_errors(self.path):
            return self.db.execute("SELECT seq, id FROM versions ORDER BY seq DESC LIMIT 1").fetchone()

    def log(self) -> list[dict[str, Any]]:
        with sqlite_errors(self.path):
            rows = self.db.execute("SELECT id, parent, message, created, count FROM versions ORDER BY seq DESC")
            return [dict(zip(("id", "parent", "message", "created", "count"), row, strict=True)) for row in rows]

    def resolve(self, version: str | None) -> str | int:
        """The member set a version names: a version seq, or "staging" (head plus staged changes)."""
        if version == "staging":
            return "staging"
        if version in (None, "head"):
            head = self.head()
            if head is None:
                raise VolumeError("the volume has no committed version yet; query @version:staging or commit")
            return head[0]
        with sqlite_errors(self.path):
            rows = self.db.execute("SELECT seq, id FROM versions WHERE id LIKE ?", (version + "%",)).fetchall()
        if not rows:
            raise VolumeError(f"no version {version!r} in this volume")
        if len(rows) > 1:
            raise VolumeError(f"version prefix {version!r} is ambiguous: {', '.join(r[1][:12] for r in rows)}")
        return rows[0][0]

    def version_id(self, version: str | None) -> str:
        seq = self.resolve(version)
        if seq == "staging":
            return "staging"
        with sqlite_errors(self.path):
            return self.db.execute("SELECT id FROM versions WHERE seq = ?", (seq,)).fetchone()[0]

    def select(self, version: str | None, node: Node | None, path: str | None) -> Iterator[tuple[str, str, str]]:
        """(key, metadata json, files json) of the data points of a version that match, ordered by key."""
        seq = self.resolve(version)
        sql = _Sql()
        if seq == "staging":
            head = self.head()
            members = (f"(SELECT key, pid FROM staged UNION ALL SELECT key, pid FROM members WHERE seq = "
                       f"{sql.bind(head[0] if head else -1)} AND key NOT IN (SELECT key FROM staged))")
        else:
            members = f"(SELECT key, pid FROM members WHERE seq = {sql.bind(seq)})"
        where = compile_filter(node, sql) if node is not None else "1"
        statement = (f"{sql.with_clause()}SELECT m.key, p.meta, p.files FROM {members} m JOIN points p "
                     f"ON p.pid = m.pid WHERE {where}")
        if path is not None:
            statement += f" AND EXISTS (SELECT 1 FROM json_each(p.files) f WHERE f.key GLOB {sql.bind(path)})"
        with sqlite_errors(self.path):
            rows = self.db.execute(statement + " ORDER BY m.key", sql.params)
            yield from rows


NESTING = 6
"""Boolean levels compiled into one SQL expression; deeper parts become named sets (SQLite's parser stack is small)."""

WIDTH = 64
"""Terms joined by one AND or OR in SQL; wider ones are grouped (SQLite limits an expression's depth to 1000)."""


class _Sql:
    """Named parameters and the named sets (common table expressions) of one compiled statement."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.sets: list[str] = []

    def with_clause(self) -> str:
        return "WITH " + ", ".join(self.sets) + " " if self.sets else ""

    def bind(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return ":" + name


_NUMBER = "('integer', 'real')"


def _condition(sql: _Sql, kind: str, value_sql: str, op: str, value: Any) -> str:
    """SQL true when one JSON value (its type `kind`, its SQL value `value_sql`) satisfies `op value`.

    Numbers match numbers and their text form; strings match strings only; true and
    false match JSON booleans only (SQLite reads them as 1 and 0, so the type decides).
    """
    if isinstance(value, bool):
        return f"{kind} = {sql.bind('true' if value else 'false')}"
    if op == "GLOB":
        return f"({kind} = 'text' AND {value_sql} GLOB {sql.bind(value)})"
    if isinstance(value, str):
        return f"({kind} = 'text' AND {value_sql} {op} {sql.bind(value)})"
    number = f"({kind} IN {_NUMBER} AND {value_sql} {op} {sql.bind(value)})"
    if op != "=":
        return number
    return f"({number} OR ({kind} = 'text' AND {value_sql} = {sql.bind(repr(value))}))"


def _one_of(sql: _Sql, kind: str, value_sql: str, values: list[Any]) -> str:
    """SQL true when one JSON value equals any of `values` (numbers and strings), with one bound list each."""
    numbers = [v for v in values if not isinstance(v, str)]
    texts = [v for v in values if isinstance(v, str)] + [repr(v) for v in numbers]
    tests = [f"({kind} = 'text' AND {value_sql} IN (SELECT value FROM json_each({sql.bind(canonical(texts))})))"]
    if numbers:
        tests.append(f"({kind} IN {_NUMBER} AND {value_sql} IN "
                     f"(SELECT value FROM json_each({sql.bind(canonical(numbers))})))")
    return "(" + " OR ".join(tests) + ")"


def _field_test(sql: _Sql, field: str, test: Any) -> str:
    """SQL true (1, never NULL) when the field, or any element of it when it is a list, passes `test`.

    `test(kind, value)` builds the condition on one JSON value; every condition of a
    term applies to the same element, so `n:[1 TO 5]` needs one element in range.
    """
    path = sql.bind(_path(field))
    scalar = test(f"json_type(p.meta, {path})", f"json_extract(p.meta, {path})")
    element = test("e.type", "e.value")
    return (f"coalesce(CASE json_type(p.meta, {path}) WHEN 'array' THEN EXISTS (SELECT 1 FROM "
            f"json_each(p.meta, {path}) e WHERE {element}) ELSE {scalar} END, 0)")


def _is_null(sql: _Sql, field: str) -> str:
    path = sql.bind(_path(field))
    return f"coalesce(json_type(p.meta, {path}), 'null') = 'null'"


def _flatten(node: Node) -> Node:
    """The same filter with nested ANDs (ORs) merged into one and double NOTs removed, so SQL nests less."""
    if isinstance(node, Not):
        inner = _flatten(node.item)
        return inner.item if isinstance(inner, Not) else Not(inner)
    if isinstance(node, (And, Or)):
        items: list[Node] = []
        for item in map(_flatten, node.items):
            items.extend(item.items if type(item) is type(node) else (item,))
        return type(node)(tuple(items))
    return node


def _equality_set(items: tuple[Node, ...]) -> tuple[str, list[Any]] | None:
    """(field, values) when every item is `field:value` with the same field and a number or string value."""
    fields = {item.field for item in items if isinstance(item, Match)}
    if len(fields) != 1 or len(items) < 2:
        return None
    for item in items:
        if (not isinstance(item, Match) or item.wildcard or item.value is None or isinstance(item.value, bool)):
            return None
    return fields.pop(), [item.value for item in items]


def compile_filter(node: Node, sql: _Sql) -> str:
    """A SQL condition over `p.meta` (a data point's metadata JSON), binding values into `sql`.

    However deep or wide the filter, no SQL expression nests deeper than NESTING
    boolean levels or joins more than WIDTH terms: deeper parts become named sets of
    data points (`p.pid IN cN`), which SQLite evaluates once each.
    """
    return _compile(_flatten(node), sql, 0)


def _grouped(node: And | Or) -> And | Or:
    """The same AND (OR) with at most WIDTH terms per level, as a balanced tree."""
    items = node.items
    while len(items) > WIDTH:
        items = tuple(type(node)(items[i:i + WIDTH]) for i in range(0, len(items), WIDTH))
    return type(node)(items)


def _compile(node: Node, sql: _Sql, depth: int) -> str:
    if isinstance(node, (And, Or, Not)) and depth >= NESTING:
        body = _compile(node, sql, 0)
        name = f"c{len(sql.sets)}"
        sql.sets.append(f"{name} AS (SELECT p.pid FROM points p WHERE {body})")
        return f"p.pid IN {name}"
    if isinstance(node, Match):
        if node.value is None:
            return _is_null(sql, node.field)
        op = "GLOB" if node.wildcard else "="
        return _field_test(sql, node.field, lambda kind, value: _condition(sql, kind, value, op, node.value))
    if isinstance(node, Compare):
        return _field_test(sql, node.field, lambda kind, value: _condition(sql, kind, value, node.op, node.value))
    if isinstance(node, Range):
        ends = [(op, bound) for bound, op in ((node.low, ">=" if node.include_low else ">"),
                                              (node.high, "<=" if node.include_high else "<")) if bound is not None]
        if not ends:
            return f"NOT {_is_null(sql, node.field)}"
        return _field_test(sql, node.field, lambda kind, value: "(" + " AND ".join(
            _condition(sql, kind, value, op, bound) for op, bound in ends) + ")")
    if isinstance(node, Not):
        return f"(NOT {_compile(node.item, sql, depth + 1)})"
    if isinstance(node, Or):
        same = _equality_set(node.items)
        if same is not None:
            field, values = same
            return _field_test(sql, field, lambda kind, value: _one_of(sql, kind, value, values))
    node = _grouped(node)
    joiner = " AND " if isinstance(node, And) else " OR "
    return "(" + joiner.join(_compile(item, sql, depth + 1) for item in node.items) + ")"
