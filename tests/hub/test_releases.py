"""Releases on a real hub process: pinned to the real registries' digests, immutable,
retired, audited; and the same through edgectl."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from test_registry import BASIC, GOOD, OPEN, docker_digest

from hub.testing import RunningHub


def release(name: str, version: str = "1", image: str = f"{OPEN}/{GOOD}:1", **extra):
    return {"name": name, "version": version, "services": [{"name": "web", "image": image}]} | extra


def unique() -> str:
    return "rel-" + uuid.uuid4().hex[:10]


async def audit_rows(hub: RunningHub, target: str) -> list[dict]:
    _, body = await hub.api("GET", "/api/v1/audit?limit=1000")
    return [a for a in body["audit"] if a["target"] == target]


async def test_create_pins_every_image_to_the_registrys_digest(hub: RunningHub):
    name = unique()
    doc = release(name)
    doc["services"].append(
        {"name": "auth", "image": f"{BASIC}/{GOOD}:1", "depends_on": {"web": {}}}
    )
    doc["registry_auth"] = [{"server": BASIC, "username": "edge", "password": "edgepass"}]
    status, body = await hub.api("POST", "/api/v1/releases", {"release": doc})
    assert status == 201, body
    images = {s["name"]: s["image"] for s in body["release"]["services"]}
    assert images == {
        "web": f"{OPEN}/{GOOD}@{docker_digest(f'{OPEN}/{GOOD}:1')}",
        "auth": f"{BASIC}/{GOOD}@{docker_digest(f'{BASIC}/{GOOD}:1')}",
    }
    assert body["images"][0]["requested"] == f"{OPEN}/{GOOD}:1"
    status, shown = await hub.api("GET", f"/api/v1/releases/{name}@1")
    assert status == 200 and shown["release"] == body["release"]
    # the password moved into the secret store; the release names it (issue 11, secrets)
    assert shown["release"]["registry_auth"][0]["password"] is None
    assert shown["release"]["registry_auth"][0]["password_secret"] == f"registry.{name}.1.0"
    rows = await audit_rows(hub, f"{name}@1")
    assert [(a["action"], a["outcome"]) for a in rows] == [("release.create", "ok")]


async def test_same_release_again_is_idempotent_and_different_content_is_409(hub: RunningHub):
    name = unique()
    first = await hub.api("POST", "/api/v1/releases", {"release": release(name)})
    assert first[0] == 201
    # same content, other key order: 200, the stored release
    again = {"release": dict(reversed(list(release(name).items())))}
    status, body = await hub.api("POST", "/api/v1/releases", again)
    assert status == 200 and body == first[1]
    changed = release(name, image=f"{OPEN}/edgefleet/crash:1")
    status, err = await hub.api("POST", "/api/v1/releases", {"release": changed})
    assert status == 409 and err["fields"][0]["field"] == "release.version"
    status, shown = await hub.api("GET", f"/api/v1/releases/{name}@1")
    assert shown["release"] == first[1]["release"]


async def test_unknown_tag_fails_the_create_with_the_registrys_answer_and_stores_nothing(
    hub: RunningHub,
):
    name = unique()
    doc = release(name, image=f"{OPEN}/{GOOD}:no-such-tag")
    status, err = await hub.api("POST", "/api/v1/releases", {"release": doc})
    assert status == 422 and err["error"] == "image_not_resolved", err
    field = err["fields"][0]
    assert field["field"] == "release.services.0.image"
    assert field["registry_status"] == 404
    assert field["registry_errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert (await hub.api("GET", f"/api/v1/releases/{name}@1"))[0] == 404
    rows = await audit_rows(hub, f"{name}@1")
    assert [(a["action"], a["outcome"]) for a in rows] == [("release.create", "rejected")]


async def test_wrong_basic_credentials_give_the_registrys_401_named(hub: RunningHub):
    doc = release(unique(), image=f"{BASIC}/{GOOD}:1")
    doc["registry_auth"] = [{"server": BASIC, "username": "edge", "password": "nope"}]
    status, err = await hub.api("POST", "/api/v1/releases", {"release": doc})
    assert status == 422, err
    assert err["fields"][0]["registry_status"] == 401
    assert err["fields"][0]["registry_errors"][0]["code"] == "UNAUTHORIZED"
    assert BASIC in err["message"]


async def test_bad_input_is_422_naming_the_field_and_stores_nothing(hub: RunningHub):
    name = unique()
    cases = [
        ({"release": release(name, image="Bad Image!")}, "release.services.0.image"),
        ({"release": release(name) | {"version": ""}}, "release.version"),
        ({"release": release(name), "colour": "blue"}, "colour"),
        ({}, "(document)"),  # the message names both forms: "release" or "compose"
    ]
    for body, field in cases:
        status, err = await hub.api("POST", "/api/v1/releases", body)
        assert status == 422, (body, err)
        assert field in [f["field"] for f in err["fields"]], (body, err)
    assert (await hub.api("GET", f"/api/v1/releases/{name}@1"))[0] == 404


async def test_retire_marks_the_release_once_and_is_audited(hub: RunningHub):
    name = unique()
    await hub.api("POST", "/api/v1/releases", {"release": release(name)})
    path = f"/api/v1/releases/{name}@1/retire"
    assert (await hub.api("POST", path, {}))[0] == 422  # reason required
    status, body = await hub.api("POST", path, {"reason": "CVE-2026-1"})
    assert status == 200 and body["retired"]["reason"] == "CVE-2026-1"
    assert body["retired"]["by"] == "admin"
    assert (await hub.api("POST", path, {"reason": "again"}))[0] == 409
    assert (await hub.api("POST", f"/api/v1/releases/{name}@9/retire", {"reason": "x"}))[0] == 404
    rows = await audit_rows(hub, f"{name}@1")
    assert [(a["action"], a["outcome"]) for a in rows] == [
        ("release.create", "ok"),
        ("release.retire", "rejected"),
        ("release.retire", "ok"),
        ("release.retire", "rejected"),
    ]


async def test_release_calls_need_a_token(hub: RunningHub):
    for method, path, body in [
        ("POST", "/api/v1/releases", {"release": release(unique())}),
        ("GET", "/api/v1/releases", None),
        ("GET", "/api/v1/releases/x@1", None),
        ("POST", "/api/v1/releases/x@1/retire", {"reason": "r"}),
    ]:
        assert (await hub.request(method, path, json_body=body))[0] == 401


async def test_list_pages_oldest_first(hub: RunningHub):
    names = [unique() for _ in range(3)]
    for name in names:
        assert (await hub.api("POST", "/api/v1/releases", {"release": release(name)}))[0] == 201
    _, page = await hub.api("GET", "/api/v1/releases?limit=1000")
    listed = [r["ref"] for r in page["releases"]]
    assert [listed.index(f"{n}@1") for n in names] == sorted(listed.index(f"{n}@1") for n in names)
    assert "release" not in page["releases"][0]


async def test_edgectl_release_create_list_show_retire(hub: RunningHub, tmp_path: Path):
    name = unique()
    doc = release(name, version="ignored")
    del doc["name"], doc["version"]  # the command line names them
    path = tmp_path / "release.json"
    path.write_text(json.dumps(doc))
    made = await hub.edgectl("--json", "release", "create", name, "--version", "2", "-f", str(path))
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    assert created["ref"] == f"{name}@2"
    assert created["images"][0]["digest"] == docker_digest(f"{OPEN}/{GOOD}:1")
    human = await hub.edgectl("release", "list")
    assert human.returncode == 0 and f"{name}@2" in human.stdout
    shown = await hub.edgectl("--json", "release", "show", f"{name}@2")
    assert json.loads(shown.stdout)["release"] == created["release"]
    retired = await hub.edgectl(
        "--json", "release", "retire", f"{name}@2", "--reason", "superseded"
    )
    assert json.loads(retired.stdout)["retired"]["reason"] == "superseded"
    listed = json.loads((await hub.edgectl("--json", "release", "list")).stdout)
    mine = [r for r in listed["releases"] if r["ref"] == f"{name}@2"]
    assert mine[0]["retired"]["reason"] == "superseded"
    path.write_text(json.dumps(release(name, version="3", image=f"{OPEN}/{GOOD}:nope")))
    bad = await hub.edgectl("release", "create", name, "--version", "3", "-f", str(path))
    assert bad.returncode == 1
    assert "MANIFEST_UNKNOWN" in bad.stderr and "release.services.0.image" in bad.stderr


async def test_version_with_slash_and_plus_is_addressable(hub: RunningHub, tmp_path: Path):
    name = unique()
    doc = release(name, version="2.0.0+build/7")
    assert (await hub.api("POST", "/api/v1/releases", {"release": doc}))[0] == 201
    shown = await hub.edgectl("--json", "release", "show", f"{name}@2.0.0+build/7")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["version"] == "2.0.0+build/7"
    retired = await hub.edgectl("release", "retire", f"{name}@2.0.0+build/7", "--reason", "r")
    assert retired.returncode == 0, retired.stderr


COMPOSE = """
services:
  web:
    image: ${IMAGE}
    container_name: shop-web
    restart: always
  worker:
    image: ${IMAGE}
    depends_on: [web]
    environment:
      - MODE=${MODE:-batch}
"""


async def test_edgectl_creates_a_release_from_a_compose_file_beside_its_env(
    hub: RunningHub, tmp_path: Path
):
    name = unique()
    (tmp_path / "compose.yaml").write_text(COMPOSE)
    (tmp_path / ".env").write_text(f"IMAGE={OPEN}/{GOOD}:1\n")
    made = await hub.edgectl("--json", "release", "create", name, "--version", "1",
        "-f", str(tmp_path / "compose.yaml"),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    pinned = f"{OPEN}/{GOOD}@{docker_digest(f'{OPEN}/{GOOD}:1')}"
    services = {s["name"]: s for s in created["release"]["services"]}
    assert {n: s["image"] for n, s in services.items()} == {"web": pinned, "worker": pinned}
    assert services["worker"]["environment"] == {"MODE": "batch"}
    assert "shop-web" in services["web"]["aliases"]
    assert "import report" in made.stderr and "container_name" in made.stderr


async def test_compose_form_over_rest_reports_and_refuses_by_name(hub: RunningHub):
    name = unique()
    form = {"name": name, "version": "1", "text": COMPOSE, "env": {"IMAGE": f"{OPEN}/{GOOD}:1"}}
    status, body = await hub.api("POST", "/api/v1/releases", {"compose": form})
    assert status == 201, body
    assert any(m["key"] == "container_name" for m in body["import_report"]["mapped"])
    refused = {**form, "name": unique(), "text": COMPOSE + "    build: ./web\n"}
    status, err = await hub.api("POST", "/api/v1/releases", {"compose": refused})
    assert status == 422 and "services.worker.build" in [f["field"] for f in err["fields"]]
    status, _ = await hub.api("GET", f"/api/v1/releases/{refused['name']}@1")
    assert status == 404  # nothing stored
    both = {"compose": form, "release": release(name)}
    status, err = await hub.api("POST", "/api/v1/releases", both)
    assert status == 422 and "exactly one" in err["message"]
