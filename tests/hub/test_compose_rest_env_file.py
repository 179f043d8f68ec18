"""A compose file sent over REST cannot make the hub read its own files (``env_file``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.compose import import_compose
from hub.errors import ComposeError
from hub.testing import RunningHub


def _compose(path: Path) -> str:
    return f"services:\n  web:\n    image: busybox\n    restart: always\n    env_file: {path}\n"


def test_absolute_env_file_with_no_compose_directory_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "hub.env"
    secret.write_text("SECRET_KEY=hub-side-secret\n")
    with pytest.raises(ComposeError) as info:
        import_compose(
            _compose(secret), base_dir=None, env={}, env_file=None, name="a", version="1"
        )
    (field,) = info.value.fields
    assert field["field"] == "services.web.env_file"
    assert "hub-side-secret" not in str(info.value.fields)


async def test_env_file_over_rest_is_refused_and_nothing_of_the_hubs_files_is_read(
    hub: RunningHub, tmp_path: Path
) -> None:
    secret = tmp_path / "hub.env"
    secret.write_text("SECRET_KEY=hub-side-secret\n")
    form = {"name": "envleak", "version": "1", "text": _compose(secret)}
    status, body = await hub.api("POST", "/api/v1/releases", {"compose": form})
    assert status == 422, body
    assert [f["field"] for f in body["fields"]] == ["services.web.env_file"], body
    assert "hub-side-secret" not in str(body)
    status, _ = await hub.api("GET", "/api/v1/releases/envleak@1")
    assert status == 404
