"""Which stored result parts a reader takes now (hub.part_order): only parts that follow
``after`` without a gap while the gap may still fill, the last parts waited for after a
final result that names more, and a gap older than the grace taken as dropped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hub.part_order import readable_parts
from hub.store.records import ActionPart

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
GRACE = 60.0


def parts(*numbers: int, age_s: float = 0.0) -> list[ActionPart]:
    return [ActionPart(n, [f"line {n}"], NOW - timedelta(seconds=age_s)) for n in numbers]


def read(
    stored: list[ActionPart],
    after: int = 0,
    *,
    state: str = "delivered",
    result: object = None,
    final_age_s: float = 0.0,
    full_page: bool = False,
) -> tuple[list[int], bool]:
    shown, pending = readable_parts(
        stored,
        after,
        state=state,
        state_at=NOW - timedelta(seconds=final_age_s),
        result=result,
        now=NOW,
        grace_s=GRACE,
        full_page=full_page,
    )
    return [p.part for p in shown], pending


def test_parts_in_order_are_all_shown() -> None:
    assert read(parts(1, 2, 3)) == ([1, 2, 3], False)
    assert read(parts(4, 5), after=3) == ([4, 5], False)
    assert read([]) == ([], False)


def test_a_gap_holds_back_the_parts_after_it_and_says_pending() -> None:
    assert read(parts(3, 4)) == ([], True)  # parts 1-2 are still on their way
    assert read(parts(1, 3, 4)) == ([1], True)
    assert read(parts(4, 5), after=2) == ([], True)


def test_a_gap_older_than_the_grace_is_taken_as_dropped() -> None:
    assert read(parts(1) + parts(3, 4, age_s=GRACE + 1)) == ([1, 3, 4], False)
    assert read(parts(3, 4, age_s=GRACE - 1)) == ([], True)


def test_a_final_result_naming_more_parts_than_stored_waits_for_them() -> None:
    done = {"ended": "end", "parts": 4, "lines": 4}
    assert read(parts(1, 2), state="succeeded", result=done) == ([1, 2], True)
    assert read(parts(1, 2, 3, 4), state="succeeded", result=done) == ([1, 2, 3, 4], False)
    assert read([], after=4, state="succeeded", result=done) == ([], False)
    late = read(parts(1, 2), state="succeeded", result=done, final_age_s=GRACE + 1)
    assert late == ([1, 2], False)


def test_a_full_page_or_an_unnamed_count_is_not_pending() -> None:
    done = {"ended": "end", "parts": 9}
    assert read(parts(1, 2), state="succeeded", result=done, full_page=True) == ([1, 2], False)
    for result in (None, {"ended": "end"}, {"parts": "9"}, ["parts"]):
        assert read(parts(1, 2), state="failed", result=result) == ([1, 2], False)
