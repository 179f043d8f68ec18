"""``edgectl logs DEVICE [SERVICE] [--tail N] [--since 2h] [--until T] [--grep RE]
[--follow [SECONDS]]``: ask a device for its logs and print the lines as they arrive.

Queues a ``logs`` action (``hub.action_api``), then polls its result parts
(``GET /api/v1/actions/{id}/parts?after=N``) and prints each part's lines in order.
While the device has not answered, it shows the request's state: a spinner on a
terminal (rich), plain lines on stderr otherwise (``queued`` → ``delivered`` →
``answering``). It exits when the action is finished: 0 if it succeeded, 1 if not.
Ctrl-C cancels the request (``POST /api/v1/actions/{id}/cancel``): a follow stops on the
device as soon as the cancel reaches it.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

Call = Callable[..., Any]
FINAL = frozenset({"succeeded", "failed", "expired", "refused"})
DEFAULT_FOLLOW_S = 600
POLL_S = 0.3


def add_parser(sub: Any) -> None:
    """Add the ``logs`` command."""
    p = sub.add_parser("logs", help="ask a device for its container logs (on demand)")
    p.add_argument("device")
    p.add_argument("service", nargs="?", default=None)
    p.add_argument("--tail", type=int, default=None, help="the last N lines (of each service)")
    p.add_argument("--since", default=None, help="a duration ago (2h) or an ISO 8601 time")
    p.add_argument("--until", default=None, help="a duration ago (10m) or an ISO 8601 time")
    p.add_argument("--grep", default=None, help="only lines matching this regular expression")
    p.add_argument(
        "--follow",
        nargs="?",
        type=int,
        const=DEFAULT_FOLLOW_S,
        default=0,
        metavar="SECONDS",
        help=f"keep streaming new lines this long (default {DEFAULT_FOLLOW_S} s)",
    )
    p.add_argument("--expires", default=None, help="how long the request waits for the device")


def when(text: str | None, parse_duration: Callable[[str], int]) -> str | None:
    """Return an ISO 8601 time: ``2h`` is two hours ago; a time is passed on as it is."""
    if text is None:
        return None
    if text[:1].isdigit() and text[-1:].isalpha() and "-" not in text:
        return datetime.fromtimestamp(time.time() - parse_duration(text), UTC).isoformat()
    return text


def request_body(args: argparse.Namespace, parse_duration: Callable[[str], int]) -> dict[str, Any]:
    """Return the body of the ``logs`` action the command line asks for."""
    found = {
        "service": args.service,
        "tail": args.tail,
        "since": when(args.since, parse_duration),
        "until": when(args.until, parse_duration),
        "grep": args.grep,
        "follow": args.follow or None,
    }
    body: dict[str, Any] = {"kind": "logs", "args": {k: v for k, v in found.items() if v}}
    if args.tail == 0:
        body["args"]["tail"] = 0
    if args.expires:
        body["expires_in_s"] = parse_duration(args.expires)
    return body


def progress(action: dict[str, Any], parts: int) -> str:
    """Return the request's state as the user sees it."""
    state = action["state"]
    if state == "delivered" and (parts or action.get("received_at")):
        return "answering"
    return str(state)


def pages(call: Call, action_id: str) -> Iterator[dict[str, Any]]:
    """Yield the action's parts pages until it is finished and every part is read."""
    after = 0
    quoted = urllib.parse.quote(action_id, safe="")
    while True:
        page = call("GET", f"/api/v1/actions/{quoted}/parts?after={after}&limit=100")
        yield page
        after = page["next"]
        # pending: a part the device sent is not stored yet (batches may arrive out of
        # order); the hub shows the parts after it once it is (hub.part_order)
        if page["action"]["state"] in FINAL and not page["parts"] and not page.get("pending"):
            return
        if not page["parts"]:
            time.sleep(POLL_S)


def run(
    args: argparse.Namespace,
    call: Call,
    parse_duration: Callable[[str], int],
    sanitize: Callable[[str], str],
) -> int:
    """Queue the request, print its lines as they come; return the exit code."""
    where = urllib.parse.quote(args.device, safe="")
    made = call("POST", f"/api/v1/devices/{where}/actions", request_body(args, parse_duration))
    note = _Progress(made["id"], interactive=sys.stderr.isatty())
    last: dict[str, Any] = {"action": made, "totals": {}}
    try:
        for page in pages(call, made["id"]):
            last = page
            note.update(progress(page["action"], page["totals"].get("parts", 0)))
            for part in page["parts"]:
                note.pause()
                for line in part["lines"]:
                    print(sanitize(line))
                sys.stdout.flush()
    except KeyboardInterrupt:
        note.close()
        _cancel(call, made["id"])
        return 130
    note.close()
    return _summary(last)


def _cancel(call: Call, action_id: str) -> None:
    """Ask the hub to cancel the request (a follow stops on the device)."""
    try:
        call("POST", f"/api/v1/actions/{urllib.parse.quote(action_id, safe='')}/cancel")
    except Exception as exc:  # finished meanwhile (409), or the hub is gone: say so
        print(f"edgectl: request {action_id} not cancelled: {exc}", file=sys.stderr)
        return
    print(f"edgectl: stopped; request {action_id} cancelled", file=sys.stderr)


def _summary(page: dict[str, Any]) -> int:
    action, totals = page["action"], page.get("totals") or {}
    result = action.get("result") or {}
    cut = (result.get("cut_lines") or 0) + (totals.get("cut_lines") or 0)
    if cut:
        print(f"edgectl: {cut} lines cut by the request's bound", file=sys.stderr)
    if result.get("ended") in ("follow_deadline", "cancelled"):
        print(f"edgectl: follow ended: {result['ended']}", file=sys.stderr)
    if action["state"] != "succeeded":
        reason = action.get("reason") or ""
        print(f"edgectl: request {action['id']} {action['state']} {reason}", file=sys.stderr)
        return 1
    return 0


class _Progress:
    """The request's state while the device has not answered: a spinner, or plain lines."""

    def __init__(self, action_id: str, *, interactive: bool) -> None:
        self.action_id = action_id
        self.state = ""
        self.live: Any = None
        self.done = False
        if interactive:
            try:
                from rich.console import Console
                from rich.status import Status
            except ImportError:
                return
            self.live = Status("", console=Console(stderr=True))
            self.live.start()

    def update(self, state: str) -> None:
        if self.done or state == self.state:
            return
        self.state = state
        text = f"request {self.action_id}: {state}"
        if self.live is not None:
            self.live.update(text)
        else:
            print(f"edgectl: {text}", file=sys.stderr)

    def pause(self) -> None:
        """Stop the spinner once lines print (they are the progress from then on)."""
        self.done = True
        self.close()

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
