"""Tag selectors (Kubernetes label-selector style): parse, print, match. Pure.

Grammar (requirements are ANDed; whitespace between tokens is ignored)::

    selector    := requirement ("," requirement)*
    requirement := KEY ("=" | "==" | "!=") VALUE     equal / not equal
                 | KEY ("in" | "notin") "(" VALUE ("," VALUE)* ")"
                 | KEY                                 key present
                 | "!" KEY                             key absent

``KEY`` follows ``TAG_KEY_RE``, ``VALUE`` follows ``TAG_VALUE_RE``. As in Kubernetes,
``k!=v`` and ``k notin (...)`` also match devices without the key. An empty selector
is refused: a group names at least one requirement. ``str(selector)`` is the canonical
form (``=``, sets sorted without duplicates, ``", "`` inside sets) and parses back to
an equal selector.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from hub.errors import InvalidSelector

TAG_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}$")
TAG_VALUE_RE = re.compile(r"^[A-Za-z0-9_.\-/:@+]{1,63}$")
MAX_SELECTOR_CHARS = 1024
_TOKEN_RE = re.compile(r"\s*(?:(?P<word>[A-Za-z0-9_.\-/:@+]+)|(?P<sym>==|!=|[=!,()])|(?P<bad>\S))")


class Op(StrEnum):
    """What a requirement asks of one tag."""

    EQ = "="
    NE = "!="
    IN = "in"
    NOTIN = "notin"
    EXISTS = "exists"
    ABSENT = "!"


@dataclass(frozen=True)
class Requirement:
    """One condition on one tag key."""

    key: str
    op: Op
    values: tuple[str, ...] = ()

    def matches(self, tags: dict[str, str]) -> bool:
        """Return whether ``tags`` satisfy this requirement."""
        value = tags.get(self.key)
        if self.op is Op.EXISTS:
            return value is not None
        if self.op is Op.ABSENT:
            return value is None
        if self.op in (Op.EQ, Op.IN):
            return value in self.values
        return value not in self.values  # NE, NOTIN: absent keys match too

    def __str__(self) -> str:
        if self.op is Op.EXISTS:
            return self.key
        if self.op is Op.ABSENT:
            return f"!{self.key}"
        if self.op in (Op.EQ, Op.NE):
            return f"{self.key}{self.op.value}{self.values[0]}"
        return f"{self.key} {self.op.value} ({', '.join(self.values)})"


@dataclass(frozen=True)
class Selector:
    """Requirements that must all hold."""

    requirements: tuple[Requirement, ...]

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


def matches(selector: Selector, tags: dict[str, str]) -> bool:
    """Return whether a device with ``tags`` is selected."""
    return all(r.matches(tags) for r in selector.requirements)


@dataclass(frozen=True)
class _Token:
    kind: str  # word | sym | end
    text: str
    pos: int  # 0-based offset in the selector text


def _tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:  # only trailing whitespace is left
            break
        kind = m.lastgroup or "bad"
        start = m.start(kind)
        if kind == "bad":
            raise _error(text, start, m.group(kind), "a key, value, operator, ',' or '('")
        out.append(_Token(kind, m.group(kind), start))
        pos = m.end()
    out.append(_Token("end", "", len(text)))
    return out


def _error(text: str, pos: int, found: str, expected: str) -> InvalidSelector:
    shown = repr(found) if found else "the end"
    return InvalidSelector(
        f"selector {text!r}: at position {pos + 1}: expected {expected}, found {shown}",
        position=pos + 1,
        token=found,
    )


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0

    @property
    def tok(self) -> _Token:
        return self.toks[self.i]

    def take(self) -> _Token:
        tok = self.tok
        self.i += 1
        return tok

    def expect_sym(self, sym: str) -> None:
        if self.tok.kind != "sym" or self.tok.text != sym:
            raise _error(self.text, self.tok.pos, self.tok.text, repr(sym))
        self.take()

    def word(self, rule: re.Pattern[str], what: str) -> str:
        tok = self.tok
        if tok.kind != "word" or not rule.match(tok.text):
            raise _error(self.text, tok.pos, tok.text, what)
        self.take()
        return tok.text

    def key(self) -> str:
        return self.word(TAG_KEY_RE, "a key (" + TAG_KEY_RE.pattern + ")")

    def value(self) -> str:
        return self.word(TAG_VALUE_RE, "a value (" + TAG_VALUE_RE.pattern + ")")

    def selector(self) -> Selector:
        reqs = [self.requirement()]
        while self.tok.kind == "sym" and self.tok.text == ",":
            self.take()
            reqs.append(self.requirement())
        if self.tok.kind != "end":
            raise _error(self.text, self.tok.pos, self.tok.text, "',' or the end")
        return Selector(tuple(reqs))

    def requirement(self) -> Requirement:
        if self.tok.kind == "sym" and self.tok.text == "!":
            self.take()
            return Requirement(self.key(), Op.ABSENT)
        key = self.key()
        tok = self.tok
        if tok.kind == "sym" and tok.text in ("=", "==", "!="):
            self.take()
            return Requirement(key, Op.NE if tok.text == "!=" else Op.EQ, (self.value(),))
        if tok.kind == "word" and tok.text in ("in", "notin"):
            self.take()
            return Requirement(key, Op(tok.text), self.value_set())
        if tok.kind == "end" or (tok.kind == "sym" and tok.text == ","):
            return Requirement(key, Op.EXISTS)
        raise _error(self.text, tok.pos, tok.text, "'=', '==', '!=', 'in', 'notin', ',' or the end")

    def value_set(self) -> tuple[str, ...]:
        self.expect_sym("(")
        values = {self.value()}
        while self.tok.kind == "sym" and self.tok.text == ",":
            self.take()
            values.add(self.value())
        self.expect_sym(")")
        return tuple(sorted(values))


def parse(text: str) -> Selector:
    """Return the selector ``text`` states; InvalidSelector names the position and token."""
    if len(text) > MAX_SELECTOR_CHARS:
        raise InvalidSelector(
            f"selector is {len(text)} characters long; at most {MAX_SELECTOR_CHARS}",
            position=MAX_SELECTOR_CHARS + 1,
            token="",
        )
    return _Parser(text).selector()
