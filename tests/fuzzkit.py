"""What the API contract tests share: the schemathesis checks, the bounded settings, and
a session that talks only to loopback.

Checks: no 5xx, every status one the document lists, answers matching their schemas and
content types, and requests the document calls invalid refused (4xx). Examples per
operation: ``EDGEFLEET_FUZZ_EXAMPLES`` (default 12), derandomized so a run is repeatable.
"""

from __future__ import annotations

import os
from typing import Any

import requests
from hypothesis import HealthCheck, settings
from schemathesis import checks

EXAMPLES = int(os.environ.get("EDGEFLEET_FUZZ_EXAMPLES", "12"))


def negative_data_rejection(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis' check, with 413 counted as a refusal: a body over the service's
    size bound is refused before it is parsed (schemathesis' list leaves 413 out)."""
    if response.status_code == 413:
        return None
    return checks.negative_data_rejection(ctx, response, case)


CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    negative_data_rejection,
]
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)


def checks_for(case: Any) -> list[Any]:
    """The checks for one case: a Content-Type on a request without a body is not
    malformed input (nothing reads it), so it is not held to negative_data_rejection."""
    data = getattr(getattr(case.meta, "phase", None), "data", None)
    if getattr(data, "parameter", None) == "Content-Type" and not list(case.operation.body):
        return [c for c in CHECKS if c is not negative_data_rejection]
    return CHECKS


def loopback_session() -> requests.Session:
    """A session that ignores proxy and CA-bundle variables (REQUESTS_CA_BUNDLE would
    replace the CA under test): every test server is on loopback."""
    session = requests.Session()
    session.trust_env = False
    return session
