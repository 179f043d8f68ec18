"""Secrets without I/O beyond a tmp dir: the box, the references, the target's resolution."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from edge_agent.models import RegistryAuth, Release, Target
from edge_agent.protocol import BASELINE_FEATURES, required_features
from hub.errors import SecretKeyError
from hub.secret_refs import moved_name
from hub.secrets import KEY_DIR, SecretBox, add_key


def target(secrets: dict[str, str] | None = None, **service: object) -> Target:
    release = Release.model_validate(
        {"name": "app", "version": "1", "services": [{"name": "web", "image": "i", **service}]}
    )
    return Target(device_id="d", revision=1, release=release, secrets=secrets or {})


def test_box_seals_bound_to_the_name_and_opens_after_rotation(tmp_path: Path) -> None:
    box = SecretBox.ensure(tmp_path)
    sealed = box.seal("db", "hunter2")
    assert "hunter2" not in sealed and box.open("db", sealed) == "hunter2"
    with pytest.raises(SecretKeyError):
        box.open("other", sealed)  # copied to another name's row: does not open
    first = box.current
    add_key(tmp_path)
    resealed = box.reseal("db", sealed)  # the running box picks up the new current key
    assert SecretBox.key_of(resealed) != first and box.open("db", resealed) == "hunter2"
    for key in (tmp_path / KEY_DIR).glob("*.key"):
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600


def test_box_refuses_a_value_under_an_unknown_key(tmp_path: Path) -> None:
    box = SecretBox.ensure(tmp_path)
    with pytest.raises(SecretKeyError, match="unknown key"):
        box.open("db", "nokey:AAAA")


def test_resolved_service_carries_values_not_names() -> None:
    """Regression: the resolved service held both, and its revalidation refused it."""
    t = target({"tok": "s3cr3t"}, environment={"A": "1"}, secret_env={"TOKEN": "tok"})
    (svc,) = t.services()
    assert svc.environment == {"A": "1", "TOKEN": "s3cr3t"} and svc.secret_env == {}
    type(svc).model_validate(svc.model_dump())  # what a step does with it
    assert "s3cr3t" not in repr(svc)  # environment stays out of reprs


def test_registry_password_secret_is_filled_in() -> None:
    release = Release.model_validate(
        {
            "name": "app",
            "version": "1",
            "services": [{"name": "web", "image": "i"}],
            "registry_auth": [{"server": "r", "username": "u", "password_secret": "reg"}],
        }
    )
    t = Target(device_id="d", revision=1, release=release, secrets={"reg": "pw"})
    assert [a.password for a in t.registry_auths()] == ["pw"]
    assert t.missing_secrets() == []
    assert t.model_copy(update={"secrets": {}}).missing_secrets() == ["reg"]


def test_registry_auth_needs_exactly_one_password_form() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        RegistryAuth(server="r", username="u")
    with pytest.raises(ValueError, match="exactly one"):
        RegistryAuth(server="r", username="u", password="p", password_secret="p")


@pytest.mark.parametrize(
    ("service", "secrets", "uses"),
    [
        ({}, {}, False),
        ({"secret_env": {"T": "tok"}}, {}, True),  # the hub's stored form: names only
        ({"secret_env": {"T": "tok"}}, {"tok": "v"}, True),
    ],
)
def test_secrets_feature_is_required_by_names_or_values(
    service: dict[str, object], secrets: dict[str, str], uses: bool
) -> None:
    t = target(secrets, **service)
    assert ("secrets" in required_features(t)) is uses
    assert "secrets" not in BASELINE_FEATURES


def test_service_without_secrets_keeps_its_config_hash() -> None:
    """Adding secret_env must not recreate every container after an agent upgrade."""
    plain = target().services()[0]
    assert "secret_env" not in plain.model_dump(mode="json") or plain.hashed_extras() == set()
    assert plain.config_hash() == plain.model_copy(update={"secret_env": {}}).config_hash()


@pytest.mark.parametrize(
    ("version", "expected"),
    [("1", "registry.app.1.0"), ("1.2.3", "registry.app.1.2.3.0")],
)
def test_moved_password_names_are_readable(version: str, expected: str) -> None:
    release = Release.model_validate(
        {"name": "app", "version": version, "services": [{"name": "web", "image": "i"}]}
    )
    assert moved_name(release, 0) == expected


def test_moved_password_names_keep_distinct_versions_distinct() -> None:
    def name(version: str) -> str:
        release = Release.model_validate(
            {"name": "app", "version": version, "services": [{"name": "web", "image": "i"}]}
        )
        return moved_name(release, 0)

    assert name("1.0+a") != name("1.0-a") and name("1.0+a") != name("1.0_a")
