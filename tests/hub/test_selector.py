"""Tag selectors: grammar, matching and errors (pure tables, Hypothesis round-trip)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.errors import InvalidSelector
from hub.selector import MAX_SELECTOR_CHARS, Op, Requirement, Selector, matches, parse

KIOSK = {"site": "berlin", "role": "kiosk"}
TOTEM_BETA = {"site": "paris", "role": "totem", "beta": "1"}
BARE: dict[str, str] = {}


@pytest.mark.parametrize(
    ("text", "tags", "expected"),
    [
        ("site=berlin", KIOSK, True),
        ("site==berlin", KIOSK, True),
        ("site=berlin", TOTEM_BETA, False),
        ("site=berlin", BARE, False),
        ("site=berlin,role=kiosk", KIOSK, True),
        ("site=berlin,role=totem", KIOSK, False),
        ("role in (kiosk,totem)", KIOSK, True),
        ("role in (kiosk,totem)", TOTEM_BETA, True),
        ("role in (kiosk,totem)", BARE, False),
        ("role notin (kiosk)", KIOSK, False),
        ("role notin (kiosk)", TOTEM_BETA, True),
        ("role notin (kiosk)", BARE, True),  # as in Kubernetes: an absent key is not in
        ("site!=berlin", KIOSK, False),
        ("site!=berlin", TOTEM_BETA, True),
        ("site!=berlin", BARE, True),
        ("!beta", KIOSK, True),
        ("!beta", TOTEM_BETA, False),
        ("beta", TOTEM_BETA, True),
        ("beta", KIOSK, False),
        ("  role in ( kiosk , totem ) , !beta ", KIOSK, True),
        ("role in (kiosk,totem),!beta", TOTEM_BETA, False),
        ("k8s.io/zone=eu-1:a@b+c", {"k8s.io/zone": "eu-1:a@b+c"}, True),
        ("in=notin", {"in": "notin"}, True),  # keywords are keys or values by position
    ],
)
def test_selector_matches(text: str, tags: dict[str, str], expected: bool):
    assert matches(parse(text), tags) is expected


@pytest.mark.parametrize(
    ("text", "position", "token"),
    [
        ("", 1, ""),
        ("site=", 6, ""),
        ("site=berlin,", 13, ""),
        ("site=berlin,,role=x", 13, ","),
        ("=berlin", 1, "="),
        ("site berlin", 6, "berlin"),
        ("site=berlin)", 12, ")"),
        ("role in kiosk", 9, "kiosk"),
        ("role in (kiosk", 15, ""),
        ("role in ()", 10, ")"),
        ("role in (kiosk,)", 16, ")"),
        ("!", 2, ""),
        ("!site=berlin", 6, "="),
        ("site=bér", 7, "é"),
        ("site=a b", 8, "b"),
        ("-site=x", 1, "-site"),  # a key starts with a letter or digit
        ("site=" + "v" * 64, 6, "v" * 64),  # values at most 63 characters
        ("site=a;rm", 7, ";"),
    ],
)
def test_invalid_selector_names_position_and_token(text: str, position: int, token: str):
    with pytest.raises(InvalidSelector) as err:
        parse(text)
    assert (err.value.position, err.value.token) == (position, token)
    assert f"position {position}" in err.value.message
    assert err.value.status == 422 and err.value.fields[0]["field"] == "selector"


def test_selector_length_is_bounded():
    text = ",".join(["a=b"] * (MAX_SELECTOR_CHARS // 4 + 1))
    with pytest.raises(InvalidSelector, match=f"at most {MAX_SELECTOR_CHARS}"):
        parse(text)


def test_canonical_form():
    sel = parse("site == berlin , role in (totem,kiosk,totem), !beta, gpu")
    assert str(sel) == "site=berlin,role in (kiosk, totem),!beta,gpu"
    assert sel.requirements[1] == Requirement("role", Op.IN, ("kiosk", "totem"))


KEYS = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.\-/]{0,20}\Z")
VALUES = st.from_regex(r"\A[A-Za-z0-9_.\-/:@+]{1,20}\Z")


@st.composite
def requirements(draw: st.DrawFn) -> Requirement:
    op = draw(st.sampled_from(list(Op)))
    key = draw(KEYS)
    if op in (Op.EXISTS, Op.ABSENT):
        return Requirement(key, op)
    if op in (Op.EQ, Op.NE):
        return Requirement(key, op, (draw(VALUES),))
    values = draw(st.lists(VALUES, min_size=1, max_size=4, unique=True))
    return Requirement(key, op, tuple(sorted(values)))


@given(st.lists(requirements(), min_size=1, max_size=5))
def test_selector_round_trips(reqs: list[Requirement]):
    sel = Selector(tuple(reqs))
    assert parse(str(sel)) == sel


@given(
    st.lists(requirements(), min_size=1, max_size=4),
    st.dictionaries(KEYS, VALUES, max_size=4),
)
def test_a_selector_is_the_and_of_its_requirements(reqs: list[Requirement], tags: dict[str, str]):
    sel = Selector(tuple(reqs))
    assert matches(sel, tags) == all(matches(Selector((r,)), tags) for r in reqs)
