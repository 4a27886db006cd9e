"""Filters against a reference: SQLite's answer equals a Python reading of the documented semantics.

Metadata mixes every JSON type in the same fields (numbers, numeric text, booleans,
null, lists, objects), and filters are random trees, deep and wide ones included,
so a type confusion (a boolean read as 1, an object as text) or a compile-time
restructuring that changes the answer shows up as a difference.
"""

from __future__ import annotations

import fnmatch
import operator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefetch import Volume
from prefetch.volumes.query import And, Compare, Match, Not, Or, Range, unparse_node

VALUES = [None, True, False, 0, 1, 2, 3, 2.5, -1, "0", "1", "2", "cat", "dog", "c", [], [1, 3], ["cat", 2],
          [True], {"a": 1}, {}, 10**20]
FIELDS = ["a", "b"]


def metadata(i: int) -> dict:
    meta = {}
    for k, field in enumerate(FIELDS):
        choice = (i * (k + 3) + k) % (len(VALUES) + 1)
        if choice < len(VALUES):
            meta[field] = VALUES[choice]
    return meta


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    root = tmp_path_factory.mktemp("semantics")
    vol = Volume.init(root / "vol")
    blob = root / "blob"
    blob.write_bytes(b"x")
    with vol.transaction():
        for i in range(len(VALUES) * 5):
            vol.add({"f": blob}, metadata(i), id=f"p{i:03d}")
    vol.commit("mixed types")
    yield vol
    vol.close()


OPS = {"=": operator.eq, ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def scalar_passes(x, op: str, q, wildcard: bool = False) -> bool:
    if isinstance(q, bool):
        return isinstance(x, bool) and x == q
    if wildcard:
        return isinstance(x, str) and fnmatch.fnmatchcase(x, q)
    if isinstance(q, str):
        return isinstance(x, str) and OPS[op](x, q)
    if is_number(x):
        return OPS[op](float(x), float(q))
    return op == "=" and isinstance(x, str) and x == repr(q)


def any_element(x, test) -> bool:
    return any(test(e) for e in x) if isinstance(x, list) else test(x)


def expected(node, meta: dict) -> bool:
    if isinstance(node, Not):
        return not expected(node.item, meta)
    if isinstance(node, And):
        return all(expected(item, meta) for item in node.items)
    if isinstance(node, Or):
        return any(expected(item, meta) for item in node.items)
    x = meta.get(node.field)
    if isinstance(node, Match):
        if node.value is None:
            return x is None
        return any_element(x, lambda e: scalar_passes(e, "=", node.value, node.wildcard))
    if isinstance(node, Compare):
        return any_element(x, lambda e: scalar_passes(e, node.op, node.value))
    ends = [(">=" if node.include_low else ">", node.low), ("<=" if node.include_high else "<", node.high)]
    ends = [(op, bound) for op, bound in ends if bound is not None]
    if not ends:
        return x is not None
    return any_element(x, lambda e: all(scalar_passes(e, op, bound) for op, bound in ends))


fields = st.sampled_from(FIELDS)
values = st.sampled_from([None, True, False, 0, 1, 2, 3, 2.5, -1, "0", "1", "cat", "dog", 10**20])
leaves = st.one_of(
    st.builds(Match, fields, values),
    st.builds(Match, fields, st.sampled_from(["c*", "?og", "*"]), st.just(True)),
    st.builds(Compare, fields, st.sampled_from(list(OPS)[1:]), st.sampled_from([0, 1, 2.5, "c", "d"])),
    st.builds(Range, fields, st.sampled_from([None, 0, 1]), st.sampled_from([None, 2, 3]), st.booleans(),
              st.booleans()),
)
filters = st.recursive(leaves, lambda inner: st.one_of(
    st.builds(Not, inner),
    st.builds(And, st.lists(inner, min_size=2, max_size=4).map(tuple)),
    st.builds(Or, st.lists(inner, min_size=2, max_size=4).map(tuple)),
), max_leaves=40)


def check(volume: Volume, node) -> None:
    got = sorted(p.id for p in volume.query(unparse_node(node)))
    want = sorted(f"p{i:03d}" for i in range(len(VALUES) * 5) if expected(node, metadata(i)))
    assert got == want, unparse_node(node)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(filters)
def test_random_filters_match_the_reference(volume, node):
    check(volume, node)


def alternating(depth: int):
    node = Match("a", 1)
    for i in range(depth):
        node = (And if i % 2 else Or)((Match("a", i % 4), node)) if i % 3 else Not(Or((Match("b", "cat"), node)))
    return node


@pytest.mark.parametrize("depth", [10, 30, 70])
def test_deeply_nested_filters_are_answered(volume, depth):
    check(volume, alternating(depth))


def test_wide_filters_are_answered(volume):
    check(volume, Or(tuple(Match("a", i) for i in range(1200))))
    check(volume, Or(tuple(Match("a" if i % 2 else "b", i % 5) for i in range(1200))))
    check(volume, And(tuple(Not(Match("a", i)) for i in range(700))))


def test_booleans_match_only_booleans_and_objects_are_not_text(volume):
    for query in ("a:1", "a:[0 TO 1]", "a:>0", "a:(0 1)"):
        found = [p.metadata["a"] for p in volume.query(query)]
        assert found and not any(isinstance(a, bool) or a == [True] for a in found), query
    assert not volume.query('a:"{\\"a\\":1}"').points
