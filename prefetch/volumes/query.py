"""The query language: a Lucene subset for metadata, plus @operators for version, splits and sampling.

    label:cat AND size:>10 NOT (source:web OR source:"user upload")  @split:0.6:0.2:0.2 @sample:0.1

Precedence, tightest first: NOT, AND, OR. Terms side by side are joined with OR, as in
Lucene (`a:1 b:2` is `a:1 OR b:2`). Operators (`@name:value`) may stand only at the top
level and apply to the whole query.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from .._errors import PrefetchError


class QuerySyntaxError(PrefetchError, ValueError):
    """A query that cannot be parsed; the message shows the query with a caret under the fault."""

    def __init__(self, message: str, query: str, position: int) -> None:
        self.reason, self.query, self.position = message, query, position
        caret = " " * position + "^"
        super().__init__(f"{message} at position {position}:\n  {query}\n  {caret}")

    def __reduce__(self) -> tuple:
        return (type(self), (self.reason, self.query, self.position))


Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class Match:
    """`field:value` (equality; a str with * or ? and `wildcard` set is a glob pattern)."""

    field: str
    value: Scalar
    wildcard: bool = False


@dataclass(frozen=True)
class Compare:
    """`field:>value`, `>=`, `<`, `<=`."""

    field: str
    op: str
    value: int | float | str


@dataclass(frozen=True)
class Range:
    """`field:[low TO high]` (inclusive ends) or `{low TO high}` (exclusive); `*` leaves an end open."""

    field: str
    low: int | float | str | None
    high: int | float | str | None
    include_low: bool
    include_high: bool


@dataclass(frozen=True)
class Not:
    item: Node


@dataclass(frozen=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Node, ...]


Node = Match | Compare | Range | Not | And | Or

OPERATORS = ("version", "split", "sample", "seed", "group_by", "limit", "path")
DEFAULT_SEED = 1337


@dataclass(frozen=True)
class Query:
    """A parsed query: a metadata filter (None: everything) and the operators' settings."""

    filter: Node | None = None
    version: str | None = None
    split: tuple[float, float, float] | None = None
    sample: float | None = None
    seed: int = DEFAULT_SEED
    group_by: str | None = None
    limit: int | None = None
    path: str | None = None
    text: str = field(default="", compare=False)


_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<op>>=|<=|[<>():\[\]{}])
  | (?P<word>[^\s"():\[\]{}<>]+)
""", re.X)


@dataclass
class _Token:
    kind: str
    text: str
    pos: int


def _tokens(text: str) -> list[_Token]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise QuerySyntaxError("unterminated quoted string" if text[pos] == '"' else "unexpected character",
                                   text, pos)
        if m.lastgroup != "ws":
            out.append(_Token(m.lastgroup, m.group(), pos))
        pos = m.end()
    return out


def _number(text: str) -> int | float | None:
    """The number `text` spells, or None; an integer beyond 64 bits is a float, as SQLite's JSON reads it."""
    if re.fullmatch(r"[+-]?\d+", text):
        value = int(text)
        return value if -2**63 <= value < 2**63 else float(value)
    if re.fullmatch(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?", text):
        value = float(text)
        return value if math.isfinite(value) else None
    return None


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text[1:-1])


MAX_NESTING = 100
"""Parentheses and NOTs one inside another; deeper queries are refused (they would only exhaust the stack)."""


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.i = 0
        self.ops: dict[str, Any] = {}
        self.depth = 0

    def nested(self, token: _Token) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.error(f"parentheses and NOTs nest deeper than {MAX_NESTING} levels", token)

    def error(self, message: str, token: _Token | None = None) -> QuerySyntaxError:
        pos = token.pos if token is not None else len(self.text)
        return QuerySyntaxError(message, self.text, pos)

    def peek(self) -> _Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.peek()
        if token is None:
            raise self.error("unexpected end of query")
        self.i += 1
        return token

    def expect(self, text: str) -> _Token:
        token = self.peek()
        if token is None or token.text != text:
            raise self.error(f"expected {text!r}", token)
        return self.take()

    def parse(self) -> Query:
        items = []
        while self.peek() is not None:
            token = self.peek()
            if token.kind == "word" and token.text.startswith("@"):
                self.operator()
                continue
            items.append(self.or_expr(top=True))
        node = None if not items else items[0] if len(items) == 1 else Or(tuple(items))
        return Query(filter=node, text=self.text, **self.ops)

    def or_expr(self, top: bool = False) -> Node:
        items = [self.and_expr()]
        while True:
            token = self.peek()
            if token is None or token.text == ")":
                break
            if token.kind == "word" and token.text.startswith("@"):
                if not top:
                    raise self.error("@operators may stand only at the top level, outside parentheses", token)
                break
            if token.text == "OR":
                self.take()
            elif token.text == "AND":
                raise self.error("AND needs a term on its left", token)
            items.append(self.and_expr())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def and_expr(self) -> Node:
        items = [self.not_expr()]
        while self.peek() is not None and self.peek().text == "AND":
            self.take()
            items.append(self.not_expr())
        return items[0] if len(items) == 1 else And(tuple(items))

    def not_expr(self) -> Node:
        token = self.peek()
        if token is not None and token.text == "NOT":
            self.nested(self.take())
            node = Not(self.not_expr())
            self.depth -= 1
            return node
        return self.primary()

    def primary(self) -> Node:
        token = self.take()
        if token.text == "(":
            self.nested(token)
            node = self.or_expr()
            self.expect(")")
            self.depth -= 1
            return node
        if token.kind != "word" or token.text in ("AND", "OR", "NOT", "TO"):
            raise self.error(f"expected a field:value term, got {token.text!r}", token)
        if token.text.startswith("@"):
            raise self.error("@operators may stand only at the top level, outside parentheses", token)
        name = token.text
        if not re.fullmatch(r"[A-Za-z_][\w\-]*(\.[\w\-]+)*", name):
            raise self.error(f"{name!r} is not a field name (letters, digits, _ and -, dotted for nesting)", token)
        colon = self.peek()
        if colon is None or colon.text != ":":
            raise self.error(f"expected ':' after field {name!r} (a bare word is not a term)", colon)
        self.take()
        return self.field_value(name)

    def field_value(self, name: str) -> Node:
        token = self.take()
        if token.text == "(":
            items = []
            while self.peek() is not None and self.peek().text != ")":
                items.append(Match(name, *self.value(self.take())))
            self.expect(")")
            if not items:
                raise self.error(f"empty value list for field {name!r}", token)
            return items[0] if len(items) == 1 else Or(tuple(items))
        if token.text in (">", ">=", "<", "<="):
            bound = self.take()
            value, wildcard = self.value(bound)
            if wildcard or not isinstance(value, (int, float, str)) or isinstance(value, bool):
                raise self.error(f"{name}:{token.text} needs a number or a quoted string", bound)
            return Compare(name, token.text, value)
        if token.text in ("[", "{"):
            return self.range(name, token)
        return Match(name, *self.value(token))

    def range(self, name: str, opening: _Token) -> Range:
        low, high = self.bound(), None
        self.expect("TO")
        high = self.bound()
        closing = self.take()
        if closing.text not in ("]", "}"):
            raise self.error("expected ']' or '}' to close the range", closing)
        kinds = {type(v) is str for v in (low, high) if v is not None}
        if len(kinds) > 1:
            raise self.error(f"range of {name!r} mixes a number and a string", opening)
        return Range(name, low, high, opening.text == "[", closing.text == "]")

    def bound(self) -> int | float | str | None:
        token = self.take()
        if token.text == "*":
            return None
        value, wildcard = self.value(token)
        if wildcard or value is None or isinstance(value, bool):
            raise self.error("a range bound must be a number, a quoted string or *", token)
        return value

    def value(self, token: _Token) -> tuple[Scalar, bool]:
        if token.kind == "string":
            return _unquote(token.text), False
        if token.kind != "word" or token.text in ("AND", "OR", "NOT", "TO"):
            raise self.error(f"expected a value, got {token.text!r}", token)
        text = token.text
        if text == "null":
            return None, False
        if text in ("true", "false"):
            return text == "true", False
        number = _number(text)
        if number is not None:
            return number, False
        return text, "*" in text or "?" in text

    def operator(self) -> None:
        token = self.take()
        name = token.text[1:]
        if name not in OPERATORS:
            raise self.error(f"unknown operator @{name} (known: {', '.join('@' + o for o in OPERATORS)})", token)
        if name in self.ops:
            raise self.error(f"@{name} given twice", token)
        self.expect(":")
        parts = [self.take()]
        while name == "split" and self.peek() is not None and self.peek().text == ":":
            self.take()
            parts.append(self.take())
        self.ops[name] = self.operator_value(name, parts)

    def operator_value(self, name: str, parts: list[_Token]) -> Any:
        text = parts[0].text if parts[0].kind == "word" else _unquote(parts[0].text)
        if name in ("version", "group_by", "path"):
            if name == "version" and not re.fullmatch(r"[0-9a-f]{4,40}|head|staging", text):
                raise self.error("@version takes a hex version id (4 to 40 digits), head or staging", parts[0])
            return text
        if name == "split":
            fractions = []
            for part in parts:
                value = _number(part.text)
                if value is None or not 0 <= value <= 1:
                    raise self.error("@split takes fractions between 0 and 1, as @split:0.6:0.2:0.2", part)
                fractions.append(float(value))
            if len(fractions) > 3:
                raise self.error("@split takes at most three fractions (train, test, validation)", parts[3])
            if sum(fractions) > 1 + 1e-9:
                raise self.error(f"@split fractions add up to {sum(fractions):g}, more than 1", parts[0])
            return tuple(fractions + [0.0] * (3 - len(fractions)))
        value = _number(text)
        if name == "sample":
            if value is None or not 0 < value <= 1:
                raise self.error("@sample takes a fraction in (0, 1]", parts[0])
            return float(value)
        if not isinstance(value, int) or (name == "limit" and value < 1) or (name == "seed" and value < 0):
            raise self.error(f"@{name} takes a {'positive' if name == 'limit' else 'non-negative'} integer", parts[0])
        return value


def parse(text: str) -> Query:
    """Parse a query; raises QuerySyntaxError (with position and caret) for anything else."""
    if not isinstance(text, str):
        raise QuerySyntaxError(f"a query is a string, got {type(text).__name__}", repr(text)[:200], 0)
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise QuerySyntaxError("a query must be valid Unicode; this holds a lone surrogate",
                               text.encode(errors="backslashreplace").decode(), exc.start) from None
    return _Parser(text).parse()


def _quote(value: Scalar) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unparse_node(node: Node) -> str:
    """Text that parses back to `node`."""
    if isinstance(node, Match):
        return f"{node.field}:{node.value}" if node.wildcard else f"{node.field}:{_quote(node.value)}"
    if isinstance(node, Compare):
        return f"{node.field}:{node.op}{_quote(node.value)}"
    if isinstance(node, Range):
        low = "*" if node.low is None else _quote(node.low)
        high = "*" if node.high is None else _quote(node.high)
        return f"{node.field}:{'[' if node.include_low else '{'}{low} TO {high}{']' if node.include_high else '}'}"
    if isinstance(node, Not):
        return f"NOT {unparse_node(node.item)}"
    joiner = " AND " if isinstance(node, And) else " OR "
    return "(" + joiner.join(unparse_node(item) for item in node.items) + ")"


def unparse(query: Query) -> str:
    """Text that parses back to `query`."""
    parts = [] if query.filter is None else [unparse_node(query.filter)]
    if query.version is not None:
        parts.append(f"@version:{query.version}")
    if query.split is not None:
        parts.append("@split:" + ":".join(repr(f) for f in query.split))
    if query.sample is not None:
        parts.append(f"@sample:{query.sample!r}")
    if query.seed != DEFAULT_SEED:
        parts.append(f"@seed:{query.seed}")
    for name in ("group_by", "limit", "path"):
        value = getattr(query, name)
        if value is not None:
            parts.append(f"@{name}:{_quote(value) if isinstance(value, str) else value}")
    return " ".join(parts)
