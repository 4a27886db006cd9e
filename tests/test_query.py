"""The query language: every filter and operator, round trips, and nothing but QuerySyntaxError escaping."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefetch import QuerySyntaxError
from prefetch.volumes.query import DEFAULT_SEED, And, Compare, Match, Not, Or, Query, Range, parse, unparse


@pytest.mark.parametrize(
    ("text", "node"),
    [
        ("label:cat", Match("label", "cat")),
        ('label:"big cat"', Match("label", "big cat")),
        ('n:"5"', Match("n", "5")),
        ("n:5", Match("n", 5)),
        ("x:2.5", Match("x", 2.5)),
        ("ok:true", Match("ok", True)),
        ("gone:null", Match("gone", None)),
        ("name:im?g*", Match("name", "im?g*", wildcard=True)),
        ("a.b.c:1", Match("a.b.c", 1)),
        ("size:>10", Compare("size", ">", 10)),
        ("size:<=2.5", Compare("size", "<=", 2.5)),
        ('name:>="m"', Compare("name", ">=", "m")),
        ("n:[1 TO 5]", Range("n", 1, 5, True, True)),
        ("n:{1 TO 5}", Range("n", 1, 5, False, False)),
        ("n:[1 TO *}", Range("n", 1, None, True, False)),
        ("label:(cat dog)", Or((Match("label", "cat"), Match("label", "dog")))),
        ("a:1 b:2", Or((Match("a", 1), Match("b", 2)))),
        ("a:1 OR b:2 AND c:3", Or((Match("a", 1), And((Match("b", 2), Match("c", 3)))))),
        ("NOT a:1 AND b:2", And((Not(Match("a", 1)), Match("b", 2)))),
        ("(a:1 OR b:2) AND NOT c:3", And((Or((Match("a", 1), Match("b", 2))), Not(Match("c", 3))))),
    ],
)
def test_filters_parse_to_their_nodes(text, node):
    assert parse(text).filter == node


def test_operators():
    q = parse("label:cat @split:0.6:0.2:0.2 @sample:0.01 @version:fc3b8ef @seed:7 @group_by:patient "
              "@limit:100 @path:*.png")
    assert (q.split, q.sample, q.version, q.seed, q.group_by, q.limit, q.path) == (
        (0.6, 0.2, 0.2), 0.01, "fc3b8ef", 7, "patient", 100, "*.png")
    assert parse("@split:0.7").split == (0.7, 0.0, 0.0)
    assert parse("@split:0.5:0.5").split == (0.5, 0.5, 0.0)
    assert parse("").filter is None
    assert parse("").seed == DEFAULT_SEED == 1337


@pytest.mark.parametrize(
    ("text", "reason", "position"),
    [
        ("label:", "unexpected end of query", 6),
        ("cat", "expected ':' after field 'cat'", 3),
        ("a:1 AND", "unexpected end of query", 7),
        ("(a:1", "expected ')'", 4),
        ('a:"open', "unterminated quoted string", 2),
        ("@sample:2", "@sample takes a fraction in (0, 1]", 8),
        ("@sample:0", "@sample takes a fraction in (0, 1]", 8),
        ("@split:0.8:0.5", "@split fractions add up to 1.3, more than 1", 7),
        ("@split:0.1:0.1:0.1:0.1", "at most three fractions", 19),
        ("@split:x", "@split takes fractions", 7),
        ("@foo:1", "unknown operator @foo", 0),
        ("@version:xyz", "@version takes a hex version id", 9),
        ("@limit:0", "@limit takes a positive integer", 7),
        ("@seed:1 @seed:2", "@seed given twice", 8),
        ("(a:1 @seed:2)", "@operators may stand only at the top level", 5),
        ("n:[1 TO b]", "mixes a number and a string", 2),
        ("n:>cat*", "needs a number or a quoted string", 3),
        ("AND a:1", "expected a field:value term, got 'AND'", 0),
    ],
)
def test_bad_queries_name_the_position_with_a_caret(text, reason, position):
    with pytest.raises(QuerySyntaxError) as info:
        parse(text)
    err = info.value
    assert reason in err.reason
    assert err.position == position
    lines = str(err).splitlines()
    assert lines[1].strip() == text.strip()
    assert lines[2].index("^") - 2 == position


fields = st.from_regex(r"[a-z][a-z0-9_]{0,4}(\.[a-z][a-z0-9]{0,3}){0,2}", fullmatch=True)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=False, allow_infinity=False, width=32),
                    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=6))
bounds = st.one_of(st.none(), st.integers(-100, 100))
leaves = st.one_of(
    st.builds(Match, fields, scalars),
    st.builds(Match, fields, st.from_regex(r"[a-z]{1,3}[*?][a-z]{0,2}", fullmatch=True), st.just(True)),
    st.builds(Compare, fields, st.sampled_from([">", ">=", "<", "<="]), st.integers(-50, 50)),
    st.builds(Range, fields, bounds, bounds, st.booleans(), st.booleans()),
)
nodes = st.recursive(leaves, lambda inner: st.one_of(
    st.builds(Not, inner),
    st.builds(And, st.lists(inner, min_size=2, max_size=3).map(tuple)),
    st.builds(Or, st.lists(inner, min_size=2, max_size=3).map(tuple)),
), max_leaves=8)
queries = st.builds(
    Query, st.one_of(st.none(), nodes),
    st.one_of(st.none(), st.from_regex(r"[0-9a-f]{4,40}", fullmatch=True)),
    st.one_of(st.none(), st.tuples(*[st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.3])] * 3)),
    st.one_of(st.none(), st.sampled_from([0.01, 0.5, 1.0])),
    st.integers(0, 10**6), st.one_of(st.none(), fields), st.one_of(st.none(), st.integers(1, 1000)),
    st.one_of(st.none(), st.sampled_from(["*.png", "a/b?.txt"])),
)


def _canonical(node):
    """Nested ORs (or ANDs) flatten when printed and parsed again; compare their flat form."""
    if isinstance(node, (And, Or)):
        items = []
        for item in map(_canonical, node.items):
            items.extend(item.items if type(item) is type(node) else [item])
        return type(node)(tuple(items))
    if isinstance(node, Not):
        return Not(_canonical(node.item))
    return node


@settings(max_examples=300)
@given(queries)
def test_parse_of_unparse_is_the_query(query):
    parsed = parse(unparse(query))
    assert _canonical(parsed.filter) == _canonical(query.filter)
    assert (parsed.version, parsed.split, parsed.sample, parsed.seed, parsed.group_by, parsed.limit, parsed.path) \
        == (query.version, query.split, query.sample, query.seed, query.group_by, query.limit, query.path)


@settings(max_examples=500)
@given(st.text(alphabet=st.sampled_from(list('ab:@()[]{}"\\*?<>= .-01TONDRAsplitmve_')), max_size=40))
def test_garbage_raises_only_query_syntax_errors(text):
    try:
        parse(text)
    except QuerySyntaxError as err:
        assert 0 <= err.position <= len(text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("(" * 247 + "a:1" + ")" * 247, "nest deeper than 100 levels"),
        ("NOT " * 150 + "a:1", "nest deeper than 100 levels"),
        ("label:\ud800", "lone surrogate"),
        (5, "a query is a string, got int"),
        (None, "a query is a string, got NoneType"),
        (b"label:cat", "a query is a string, got bytes"),
    ],
)
def test_hostile_queries_are_syntax_errors(text, reason):
    with pytest.raises(QuerySyntaxError, match=reason):
        parse(text)


def test_numbers_beyond_64_bits_are_floats_as_sqlite_reads_them():
    assert parse("n:123456789012345678901").filter == Match("n", 123456789012345678901.0)
    assert parse("n:>-99999999999999999999").filter == Compare("n", ">", -99999999999999999999.0)
    assert parse("n:9223372036854775807").filter == Match("n", 2**63 - 1)
