"""Variable interpolation and ``.env`` files, as docker compose reads them.

Pure: the caller passes the variables in. ``${VAR}``, ``$VAR``, ``${VAR:-d}`` (unset or
empty), ``${VAR-d}`` (unset), ``${VAR:?err}`` / ``${VAR?err}`` (required),
``${VAR:+r}`` / ``${VAR+r}`` (replacement when set), ``$$`` (a literal ``$``). Defaults
and replacements may themselves hold interpolations (``${A:-${B:-x}}``). A ``$`` not
followed by a name or ``{`` stays as written, as in compose.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")


class InterpolationError(ValueError):
    """A required variable is missing, or a ``${...}`` is malformed."""


@dataclass
class Interpolator:
    """Substitute variables from ``variables``; remember which ones were unset."""

    variables: Mapping[str, str]
    unset: list[str] = field(default_factory=list)

    def render(self, text: str) -> str:
        """Return ``text`` with every interpolation substituted."""
        out, end = self._scan(text, 0, nested=False)
        assert end == len(text)
        return out

    def _scan(self, text: str, pos: int, *, nested: bool) -> tuple[str, int]:
        """Render from ``pos`` up to the end (or the closing ``}`` when nested)."""
        parts: list[str] = []
        while pos < len(text):
            ch = text[pos]
            if nested and ch == "}":
                return "".join(parts), pos
            if ch != "$":
                parts.append(ch)
                pos += 1
                continue
            value, pos = self._dollar(text, pos)
            parts.append(value)
        if nested:
            raise InterpolationError(f"missing '}}' in {text!r}")
        return "".join(parts), pos

    def _dollar(self, text: str, pos: int) -> tuple[str, int]:
        """Render the ``$`` expression at ``pos``; return it and the position after it."""
        nxt = text[pos + 1 : pos + 2]
        if nxt == "$":
            return "$", pos + 2
        if nxt == "{":
            return self._braced(text, pos + 2)
        m = _NAME.match(text, pos + 1)
        if m is None:
            return "$", pos + 1
        return self._lookup(m.group()) or "", m.end()

    def _braced(self, text: str, pos: int) -> tuple[str, int]:
        m = _NAME.match(text, pos)
        if m is None:
            raise InterpolationError(f"invalid interpolation format in {text!r}")
        name, pos = m.group(), m.end()
        if text[pos : pos + 1] == "}":
            return self._lookup(name) or "", pos + 1
        op = next((o for o in _OPERATORS if text.startswith(o, pos)), None)
        if op is None:
            raise InterpolationError(f"invalid interpolation format for {name!r} in {text!r}")
        arg, end = self._scan(text, pos + len(op), nested=True)
        return self._apply(name, op, arg), end + 1

    def _apply(self, name: str, op: str, arg: str) -> str:
        value = self.variables.get(name)
        present = value is not None and (value != "" or ":" not in op)
        if op.endswith("-"):
            return value if present and value is not None else arg
        if op.endswith("?"):
            if not present or value is None:
                raise InterpolationError(f"required variable {name} is missing a value: {arg}")
            return value
        return arg if present else ""  # "+" / ":+"

    def _lookup(self, name: str) -> str | None:
        value = self.variables.get(name)
        if value is None:
            self.unset.append(name)
        return value


Visit = Callable[[str, str], str]


def interpolate_tree(tree: Any, render: Visit, path: str = "") -> Any:
    """Return ``tree`` with ``render(path, s)`` applied to every string value (not keys)."""
    if isinstance(tree, str):
        return render(path, tree)
    if isinstance(tree, dict):
        return {
            k: interpolate_tree(v, render, f"{path}.{k}" if path else str(k))
            for k, v in tree.items()
        }
    if isinstance(tree, list):
        return [interpolate_tree(v, render, f"{path}.{i}") for i, v in enumerate(tree)]
    return tree


_LINE = re.compile(r"^\s*(?:export\s+)?([^=\s#][^=\s]*)\s*(?:=(.*))?$")


def parse_dotenv(text: str, variables: Mapping[str, str]) -> dict[str, str]:
    """Return the variables of a ``.env`` file; values may interpolate earlier ones.

    ``KEY=value``, ``export KEY=value``, ``# comments``, ``'single'`` (literal),
    ``"double"`` (escapes ``\\n``, ``\\t``, ``\\"``, interpolated), unquoted values
    (interpolated, a `` #`` starts a comment). A bare ``KEY`` takes its value from
    ``variables`` (or is skipped). Raises ValueError naming the line.
    """
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _LINE.match(line)
        if m is None:
            raise ValueError(f"line {number}: expected KEY=VALUE")
        key, raw = m.group(1), m.group(2)
        if raw is None:
            if key in variables:
                out[key] = variables[key]
            continue
        try:
            out[key] = _dotenv_value(raw.strip(), {**variables, **out})
        except InterpolationError as exc:
            raise ValueError(f"line {number}: {exc}") from None
    return out


def _dotenv_value(raw: str, variables: Mapping[str, str]) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] == "'":
        return raw[1:-1]
    render = Interpolator(variables).render
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        inner = raw[1:-1]
        for seq, char in (("\\n", "\n"), ("\\t", "\t"), ('\\"', '"')):
            inner = inner.replace(seq, char)
        return render(inner.replace("\\\\", "\\"))
    comment = re.search(r"\s#", raw)
    return render(raw[: comment.start()] if comment else raw)
