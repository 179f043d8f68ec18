"""Decode one POST /v1/sync body into rows to store: pure, bounded, and safe to run anywhere.

Runs inline for small bodies and in a worker process for large ones (``hub.offload``),
so it takes and returns only picklable values. The order of the checks bounds the work
a hostile body can cause: inflate within ``max_decompressed``; parse JSON; count
entries before any model is built; validate (fast path for the agent's own shape, else
the ``SyncRequest`` model with a capped list of errors); refuse non-finite numbers (on
the fast path from the rows it made, else by scanning the body; a body over the entry
limit is scanned first, so it is refused for the number, as before).

A body in the lines format (``LINES_TYPE``, for agents the hub told it takes them) is the
request's JSON on its first line with entries that leave out ``payload``, then each
entry's payload on a line of its own. Each payload line is parsed (valid JSON, an object,
finite numbers) and stored as the agent sent it: no payload is serialized again.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, get_args

import pydantic_core
from pydantic import TypeAdapter, ValidationError

from edge_agent.protocol import (
    INT64_MAX,
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    SYNC_LINES_TYPE,
    OutboxKind,
    SyncRequest,
)
from hub.errors import HubError, InvalidRequest, PayloadTooLarge
from hub.store.records import EntryRow, entry_row, iso_utc
from hub.wire import inflate, parse

Decoded = tuple[SyncRequest, list[EntryRow]]
# The Content-Type of a sync body in the lines format (protocol.SYNC_LINES_TYPE).
LINES_TYPE = SYNC_LINES_TYPE
# Bytes that may spell a non-finite number (NaN, Infinity, 1e999, a 309-digit integer
# part): only a body containing one is walked for them.
_MAYBE_NON_FINITE = re.compile(rb"NaN|Infinity|[eE][+]?0*[1-9]\d{2}|\d{309}")


@dataclass(frozen=True)
class SyncBounds:
    """The limits one sync body is decoded within (from ``limits.*``)."""

    max_decompressed: int
    max_entries: int
    max_error_fields: int = 20


def decode_sync(raw: bytes, encoding: str, bounds: SyncBounds, *, lines: bool = False) -> Decoded:
    """Return the request (without entries) and its entries as rows; raise HubError."""
    return decode_sync_body(inflate(raw, encoding, bounds.max_decompressed), bounds, lines=lines)


def decode_sync_body(body: bytes, bounds: SyncBounds, *, lines: bool = False) -> Decoded:
    """Return the request and rows of an already inflated body; raise HubError."""
    if lines:
        return decode_lines_body(body, bounds)
    try:
        doc = pydantic_core.from_json(body)
    except ValueError as exc:
        raise InvalidRequest(
            f"request body is not JSON: {exc}",
            fields=[{"field": "(body)", "message": str(exc), "type": "json_invalid"}],
            status=400,
        ) from None
    if type(doc) is dict and _over_count(doc.get("entries"), bounds.max_entries):
        _scan_non_finite(body, doc)  # named first, as for any other body
        _check_entry_count(doc.get("entries"), bounds.max_entries)
    fast = _fast_sync(doc)
    if fast is not None:
        _check_fast_finite(doc, fast[1])
        return fast
    _scan_non_finite(body, doc)
    # The JSON mode of the model, as for every other body: its messages say "object".
    req = parse(SyncRequest, body, bounds.max_error_fields)
    return req.model_copy(update={"entries": []}), [entry_row(e) for e in req.entries]


def decode_sync_job(
    raw: bytes, encoding: str, bounds: SyncBounds, lines: bool = False
) -> tuple[Any, ...]:
    """Run ``decode_sync`` in a worker process: ("ok", req, columns) or ("error", ...).

    The rows travel back as four columns (seqs, kinds, times, payloads): pickling and
    unpickling 5,000 row tuples cost three times as much, the unpickling on the event loop.
    """
    try:
        req, rows = decode_sync(raw, encoding, bounds, lines=lines)
    except HubError as exc:
        return ("error", type(exc).__name__, exc.message, exc.fields, exc.status)
    return ("ok", req, tuple(zip(*rows, strict=True)))


def job_result(result: tuple[Any, ...]) -> Decoded:
    """Return what ``decode_sync_job`` decoded, or raise the error it reported."""
    if result[0] == "ok":
        return result[1], list(zip(*result[2], strict=True))
    _, name, message, fields, status = result
    if name == "PayloadTooLarge":
        raise PayloadTooLarge(message, fields=fields)
    raise InvalidRequest(message, fields=fields, status=status)


def decode_lines_body(body: bytes, bounds: SyncBounds) -> Decoded:
    """Return the request and rows of a lines-format body; raise HubError.

    The payload lines become the rows' payload text as sent, once each has parsed as a
    JSON object holding only finite numbers. A body the fast path does not take is put
    back together as one JSON document for the model, which names what is wrong.
    """
    try:
        parts = body.decode().split("\n")
        head = pydantic_core.from_json(parts[0])
    except ValueError as exc:
        raise InvalidRequest(
            f"request body is not JSON lines: {exc}",
            fields=[{"field": "(body)", "message": str(exc), "type": "json_invalid"}],
            status=400,
        ) from None
    entries = head.get("entries", []) if type(head) is dict else None
    _check_entry_count(entries, bounds.max_entries)
    texts = parts[1:]
    if type(entries) is not list:
        if texts:
            raise _line_count(len(texts), 0)
        return decode_sync_body(pydantic_core.to_json(head, inf_nan_mode="constants"), bounds)
    if len(entries) != len(texts):
        raise _line_count(len(texts), len(entries))
    payloads = _payload_lines(texts)
    fast = _fast_sync(head, texts) if all(type(p) is dict for p in payloads) else None
    if fast is not None:
        _refuse_non_finite({k: v for k, v in head.items() if k != "entries"})
        return fast
    pairs = enumerate(zip(entries, payloads, strict=True))
    whole = {**head, "entries": [_with_payload(i, e, p) for i, (e, p) in pairs]}
    return decode_sync_body(pydantic_core.to_json(whole, inf_nan_mode="constants"), bounds)


def _line_count(lines: int, entries: int) -> InvalidRequest:
    return InvalidRequest(
        f"lines body: {lines} payload lines for {entries} entries (one line per entry)",
        fields=[{"field": "entries", "message": "one payload line per entry"}],
        status=400,
    )


def _payload_lines(texts: list[str]) -> list[Any]:
    """Return every payload line parsed, as ``_payload_line`` does each (the same refusals,
    the same line named), without a call and a field name per line: a catch-up batch has
    5,000 of them."""
    from_json = pydantic_core.from_json
    isfinite = math.isfinite
    out: list[Any] = []
    append = out.append
    for i, text in enumerate(texts):
        try:
            value = from_json(text)
        except ValueError:
            _payload_line(i, text)  # raises the refusal naming this line
            raise
        if type(value) is dict:
            for v in value.values():  # a number too large for a float parses as infinity
                t = type(v)
                if (t is float and not isfinite(v)) or t is dict or t is list:
                    _refuse_non_finite(value, f"entries.{i}.payload")
                    break
        append(value)
    return out


def _payload_line(i: int, text: str) -> Any:
    """Return one payload line parsed; refuse one that is not JSON or holds NaN/infinity."""
    field = f"entries.{i}.payload"
    try:
        value = pydantic_core.from_json(text)
    except ValueError as exc:
        raise InvalidRequest(
            f"{field}: not JSON: {exc}",
            fields=[{"field": field, "message": str(exc), "type": "json_invalid"}],
            status=400,
        ) from None
    if type(value) is dict:
        for v in value.values():  # a number too large for a float parses as infinity
            t = type(v)
            if (t is float and not math.isfinite(v)) or t is dict or t is list:
                _refuse_non_finite(value, field)
                break
    return value


def _with_payload(i: int, entry: Any, payload: Any) -> Any:
    if type(entry) is not dict:
        return entry
    if "payload" in entry:
        field = f"entries.{i}.payload"
        raise InvalidRequest(
            f"{field}: in the lines format a payload is on its own line, not in the entry",
            fields=[{"field": field, "message": "not allowed in the lines format"}],
        )
    return {**entry, "payload": payload}


def _over_count(entries: Any, max_entries: int) -> bool:
    return type(entries) is list and len(entries) > max_entries


def _check_entry_count(entries: Any, max_entries: int) -> None:
    if _over_count(entries, max_entries):
        raise PayloadTooLarge(
            f"batch of {len(entries)} entries is over the hub's limit of {max_entries} "
            "(limits.max_entries_per_batch); split the batch"
        )


def _scan_non_finite(body: bytes, doc: Any) -> None:
    """Refuse a non-finite number anywhere in ``doc``; only a body that may spell one is walked.

    The regex costs ~25 ms a MiB (6x the parse): the fast path checks its rows instead.
    """
    if _MAYBE_NON_FINITE.search(body):
        _refuse_non_finite(doc)


def _check_fast_finite(doc: dict[str, Any], rows: list[EntryRow]) -> None:
    """Refuse a non-finite number in a request the fast path took, at a fraction of a scan.

    A non-finite payload number can only come out of ``to_json`` as ``NaN``/``Infinity``
    (inf_nan_mode="constants"), so rows whose text has neither hold none, and only then
    is the whole document walked (text that merely says "NaN" is walked and accepted).
    The head (everything but the entries) is small and always walked.
    """
    _refuse_non_finite({k: v for k, v in doc.items() if k != "entries"})
    text = "".join([row[3] for row in rows])
    if "NaN" in text or "Infinity" in text:
        _refuse_non_finite(doc)


def _refuse_non_finite(doc: Any, at: str = "") -> None:
    """Raise InvalidRequest naming the first NaN or infinite number in ``doc`` (at ``at``)."""
    stack: list[tuple[Any, str]] = [(doc, at)]
    while stack:
        value, path = stack.pop()
        if type(value) is float and not math.isfinite(value):
            field = path or "(body)"
            raise InvalidRequest(
                f"{field}: NaN and infinite numbers are not JSON",
                fields=[{"field": field, "message": "must be a finite number"}],
            )
        if type(value) is dict:
            stack.extend((v, f"{path}.{k}" if path else str(k)) for k, v in value.items())
        elif type(value) is list:
            stack.extend((v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(value))


_KINDS = frozenset(get_args(OutboxKind))
_DATETIME: TypeAdapter[datetime] = TypeAdapter(datetime)
_MISSING: Any = object()


def _fast_sync(doc: Any, texts: list[str] | None = None) -> Decoded | None:
    """Return the request and rows if every entry is plainly valid, else None.

    The entries of a large batch are the hub's hot path, so a request in the shape the
    agent sends is checked by hand and turned straight into store rows. Anything this
    does not accept as it is goes through the ``SyncRequest`` model, which alone decides
    whether it is valid and names every bad field: this path never accepts what the
    model refuses, and yields the rows the model's would.
    """
    if type(doc) is not dict:
        return None
    entries = doc.get("entries", [])
    protocol = doc.get("protocol", PROTOCOL_VERSION)
    if (
        type(entries) is not list
        or type(protocol) is not int
        or not MIN_PROTOCOL_VERSION <= protocol <= PROTOCOL_VERSION
    ):
        return None
    try:
        head = SyncRequest.model_validate({**doc, "entries": []})
    except ValidationError:
        return None
    rows = _fast_rows(entries, implied="protocol" in doc and protocol >= 2, texts=texts)
    return None if rows is None else (head, rows)


def _fast_rows(
    entries: list[Any], *, implied: bool, texts: list[str] | None = None
) -> list[EntryRow] | None:
    rows: list[EntryRow] = []
    append = rows.append
    to_json = pydantic_core.to_json
    kinds = _KINDS
    prev_seq = 0  # 0 only before the first entry (seqs are >= 1)
    prev_at: Any = _MISSING
    at_text = ""
    raw = texts is not None
    for i, e in enumerate(entries):
        if type(e) is not dict:
            return None
        seq = e.get("seq", _MISSING)
        at = e.get("created_at", _MISSING)
        kind = e.get("kind")
        if raw:
            if "payload" in e:
                return None
            text = texts[i]  # type: ignore[index]
            n_keys = 3
        else:
            payload = e.get("payload")
            if type(payload) is not dict:
                return None
            text = ""
            n_keys = 4
        if seq is _MISSING:
            if not (implied and prev_seq) or prev_seq >= INT64_MAX:
                return None
            seq = prev_seq + 1
            n_keys -= 1
        elif type(seq) is not int or not prev_seq < seq <= INT64_MAX:
            return None  # also: >= 1, and strictly increasing
        if at is _MISSING:
            if not (implied and prev_seq):
                return None
            n_keys -= 1
        elif at != prev_at:
            if type(at) is not str:
                return None
            try:
                at_text = iso_utc(_DATETIME.validate_python(at))
            except (ValidationError, OverflowError, ValueError):
                return None  # the model names the field
            prev_at = at
        if (
            type(kind) is not str
            or kind not in kinds
            or len(e) != n_keys  # a key the model does not know
        ):
            return None
        if not raw:
            text = to_json(payload, inf_nan_mode="constants").decode()
        append((seq, kind, at_text, text))
        prev_seq = seq
    return rows
