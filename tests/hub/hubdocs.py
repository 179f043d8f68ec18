"""Documents the hub tests write (imported by name: ``from hubdocs import release_doc``;
a ``conftest`` module is not importable by name once two test directories have one)."""

from __future__ import annotations

from typing import Any


def release_doc(version: str = "1", **service: Any) -> dict[str, Any]:
    """Return a valid release document with one service."""
    return {
        "name": "app",
        "version": version,
        "services": [{"name": "web", "image": "127.0.0.1:5000/busybox:1", **service}],
    }
