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
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._errors import PrefetchError
from .query import And, Compare, Match, Node, Not, Range

SCHEMA = """
CREATE TABLE IF NOT EXISTS points (pid INTEGER PRIMARY KEY, key TEXT NOT NULL, digest TEXT NOT NULL UNIQUE,
                                   meta TEXT NOT NULL, files TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, parent TEXT,
                                     message TEXT NOT NULL, created REAL NOT NULL, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS members (seq INTEGER NOT NULL, key TEXT NOT NULL, pid INTEGER NOT NULL,
                                    PRIMARY KEY (seq, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS staged (key TEXT PRIMARY KEY, pid INTEGER NOT NULL);
"""


class VolumeError(PrefetchError):
    """A volume cannot do what was asked: no such version, nothing to commit, an unreadable source."""


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _path(field: str) -> str:
    return "$." + ".".join(f'"{part}"' for part in field.split("."))


class Index:
    """One volume's SQLite index."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
        self.db = sqlite3.connect(uri, uri=True, isolation_level=None)
        self.batching = False
        if not readonly:
            self.db.executescript(SCHEMA)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Stage many data points in one SQLite transaction (much faster than one each)."""
        self.db.execute("BEGIN")
        self.batching = True
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        finally:
            self.batching = False

    def close(self) -> None:
        self.db.close()

    # --- writing ---------------------------------------------------------------------------------------------

    def stage(self, key: str, meta: dict[str, Any], files: dict[str, dict[str, Any]]) -> None:
        digest = hashlib.sha256(canonical([key, meta, files]).encode()).hexdigest()
        with contextlib.nullcontext() if self.batching else self.transaction():
            self.db.execute("INSERT OR IGNORE INTO points (key, digest, meta, files) VALUES (?, ?, ?, ?)",
                            (key, digest, canonical(meta), canonical(files)))
            pid = self.db.execute("SELECT pid FROM points WHERE digest = ?", (digest,)).fetchone()[0]
            self.db.execute("INSERT OR REPLACE INTO staged (key, pid) VALUES (?, ?)", (key, pid))

    def commit(self, message: str) -> str:
        """Make the staged data points a new version on top of head; its id is a digest of its content."""
        head = self.head()
        if not self.db.execute("SELECT 1 FROM staged LIMIT 1").fetchone():
            raise VolumeError("nothing staged to commit; add data points first")
        with self.db:
            self.db.execute("BEGIN")
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
        return self.db.execute("SELECT seq, id FROM versions ORDER BY seq DESC LIMIT 1").fetchone()

    def log(self) -> list[dict[str, Any]]:
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
        statement = f"SELECT m.key, p.meta, p.files FROM {members} m JOIN points p ON p.pid = m.pid WHERE {where}"
        if path is not None:
            statement += f" AND EXISTS (SELECT 1 FROM json_each(p.files) f WHERE f.key GLOB {sql.bind(path)})"
        return iter(self.db.execute(statement + " ORDER BY m.key", sql.params))


class _Sql:
    """Named parameters for one compiled statement."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}

    def bind(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return ":" + name


def _value_test(sql: _Sql, field: str, op: str, value: Any) -> str:
    """SQL true when the field, or any element of it when it is a list, satisfies `op value`.

    Numbers match numbers and their text form; strings match strings; `null` matches a
    null or missing field; true and false match JSON booleans only.
    """
    path = sql.bind(_path(field))
    if value is None:
        return f"(json_type(p.meta, {path}) IS NULL OR json_type(p.meta, {path}) = 'null')"
    if isinstance(value, bool):
        kind = sql.bind("true" if value else "false")
        return (f"(json_type(p.meta, {path}) = {kind} OR (json_type(p.meta, {path}) = 'array' AND "
                f"EXISTS (SELECT 1 FROM json_each(p.meta, {path}) e WHERE e.type = {kind})))")
    arg = sql.bind(value)
    if isinstance(value, (int, float)) and op == "=":
        test = f"(V = {arg} OR (typeof(V) = 'text' AND V = {sql.bind(str(value))}))"
    elif op == "GLOB":
        test = f"(typeof(V) = 'text' AND V GLOB {arg})"
    else:
        kinds = "'text'" if isinstance(value, str) else "'integer', 'real'"
        test = f"(typeof(V) IN ({kinds}) AND V {op} {arg})"
    scalar = test.replace("V", f"json_extract(p.meta, {path})")
    element = test.replace("V", "e.value")
    return (f"((json_type(p.meta, {path}) != 'array' AND {scalar}) OR (json_type(p.meta, {path}) = 'array' "
            f"AND EXISTS (SELECT 1 FROM json_each(p.meta, {path}) e WHERE {element})))")


def compile_filter(node: Node, sql: _Sql) -> str:
    """A SQL condition over `p.meta` (a data point's metadata JSON), binding values into `sql`."""
    if isinstance(node, Match):
        return _value_test(sql, node.field, "GLOB" if node.wildcard else "=", node.value)
    if isinstance(node, Compare):
        return _value_test(sql, node.field, node.op, node.value)
    if isinstance(node, Range):
        ends = [(node.low, ">=" if node.include_low else ">"), (node.high, "<=" if node.include_high else "<")]
        tests = [_value_test(sql, node.field, op, bound) for bound, op in ends if bound is not None]
        return "(" + " AND ".join(tests) + ")" if tests else f"(NOT {_value_test(sql, node.field, '=', None)})"
    if isinstance(node, Not):
        return f"(NOT {compile_filter(node.item, sql)})"
    joiner = " AND " if isinstance(node, And) else " OR "
    return "(" + joiner.join(compile_filter(item, sql) for item in node.items) + ")"
