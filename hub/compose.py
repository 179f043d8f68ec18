"""Import a docker-compose file as a release document (pure: text and files in).

``import_compose`` returns the release (a ``Release`` document, image tags as written)
and an import report, or raises ComposeError naming every key it refuses. YAML is read
as YAML 1.2 reads it (as docker compose does): ``80:80`` and ``yes`` stay strings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from edge_agent.models import Release, Service
from hub.compose_interp import InterpolationError, Interpolator, interpolate_tree, parse_dotenv
from hub.compose_networks import map_top_networks
from hub.compose_report import ImportReport, Notes, split_path
from hub.compose_service import ServiceMapper
from hub.compose_volumes import map_top_volumes
from hub.errors import ComposeError

MAX_NODES = 100_000  # YAML nodes after anchors are expanded (an alias bomb is refused)
_TOP_REFUSED = {
    "secrets": "not supported: use per-device environment overrides or an absolute bind",
    "configs": "not supported: bake the file into the image or bind an absolute path",
    "include": "not supported: import one self-contained compose file",
}


@dataclass(frozen=True)
class ComposeImport:
    """The result of an import: the release document and what happened to each key."""

    release: dict[str, Any]
    report: ImportReport


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars: no sexagesimal ints, yes/no or timestamps."""


_TAGS_12 = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, rx) for tag, rx in resolvers if tag not in _TAGS_12 | {"tag:yaml.org,2002:timestamp"}
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?(?:0|[1-9][0-9]*)|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."),
)


def import_compose(
    text: str,
    *,
    base_dir: Path | None,
    env: Mapping[str, str] | None,
    env_file: Path | None,
    name: str,
    version: str,
    max_nodes: int = MAX_NODES,
) -> ComposeImport:
    """Return the release of compose ``text``; raise ComposeError naming every refusal.

    Variables come from ``env`` (the caller's environment; it wins) over ``env_file``, or
    over the ``.env`` in ``base_dir`` when no env_file is given, as docker compose reads
    them. Relative paths (``env_file:`` of a service) are relative to ``base_dir``.
    """
    notes = Notes()
    variables = {**_dotenv(base_dir, env_file, env or {}), **(env or {})}
    tree = _load(text)
    _check_size(tree, max_nodes)
    tree = _interpolate(tree, variables, notes)
    services = _top_level(tree, notes, base_dir, variables)
    release = _release(name, version, services, tree, notes)
    if notes.refusals:
        raise ComposeError(_summary(notes.refusals), fields=notes.refusals)
    return ComposeImport(release=release, report=notes.report)


def _dotenv(base_dir: Path | None, env_file: Path | None, env: Mapping[str, str]) -> dict[str, str]:
    path = env_file or (base_dir / ".env" if base_dir is not None else None)
    if path is None or (env_file is None and not path.is_file()):
        return {}
    try:
        return parse_dotenv(path.read_text(), env)
    except (OSError, ValueError) as exc:
        raise ComposeError(
            f"env file {path}: {exc}", fields=[{"field": "env_file", "message": str(exc)}]
        ) from None


def _load(text: str) -> dict[str, Any]:
    try:
        tree = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ComposeError(
            f"not valid YAML: {exc}", fields=[{"field": "(document)", "message": str(exc)}]
        ) from None
    if not isinstance(tree, dict):
        msg = "a compose file is a mapping with a services key"
        raise ComposeError(msg, fields=[{"field": "(document)", "message": msg}])
    return tree


def _check_size(tree: Any, max_nodes: int) -> None:
    count, stack = 0, [tree]
    while stack:
        node = stack.pop()
        count += 1
        if count > max_nodes:
            msg = f"more than {max_nodes} values once anchors are expanded"
            raise ComposeError(msg, fields=[{"field": "(document)", "message": msg}])
        if isinstance(node, dict):
            stack += node.values()
        elif isinstance(node, list):
            stack += node


def _interpolate(tree: dict[str, Any], variables: Mapping[str, str], notes: Notes) -> Any:
    def render(path: str, text: str) -> str:
        interp = Interpolator(variables)
        service, key = split_path(path)
        try:
            out = interp.render(text)
        except InterpolationError as exc:
            notes.refuse(service, key, str(exc))
            return text
        for var in dict.fromkeys(interp.unset):
            notes.warn(service, key, f"variable {var} is not set: an empty string is used")
        return out

    return interpolate_tree(tree, render)


def _top_level(
    tree: dict[str, Any], notes: Notes, base_dir: Path | None, variables: Mapping[str, str]
) -> list[dict[str, Any]]:
    for key in tree:
        if key == "version":
            notes.ignored(None, "version", "obsolete; ignored as docker compose does")
        elif key == "name":
            notes.ignored(None, "name", "the release is named by its name and version")
        elif str(key).startswith("x-"):
            notes.ignored(None, str(key), "extension field (x-), ignored as compose does")
        elif key not in ("services", "volumes", "networks"):
            notes.refuse(None, str(key), _TOP_REFUSED.get(key, "not supported by the agent"))
    volumes = map_top_volumes(notes, tree.get("volumes"))
    networks = set(map_top_networks(notes, tree.get("networks")))
    specs = tree.get("services")
    if not isinstance(specs, dict) or not specs:
        notes.refuse(None, "services", "required: a mapping of at least one service")
        return []
    out = []
    for svc_name, spec in specs.items():
        svc_name = str(svc_name)
        if not isinstance(spec, dict):
            notes.refuse(svc_name, "(service)", "must be a mapping")
            continue
        mapper = ServiceMapper(svc_name, notes, base_dir, variables, volumes, networks)
        out.append(mapper.run(spec))
    return out


def _release(
    name: str, version: str, services: list[dict[str, Any]], tree: dict[str, Any], notes: Notes
) -> dict[str, Any]:
    """Validate each service, then the release; every failure becomes a refusal."""
    checked = []
    for doc in services:
        try:
            checked.append(Service.model_validate(doc).model_dump(mode="json"))
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                loc = ".".join(str(p) for p in err["loc"])
                notes.refuse(doc["name"], loc or "(service)", err["msg"])
    networks = map_top_networks(Notes(), tree.get("networks"))  # notes taken already
    doc = {"name": name, "version": version, "services": checked, "networks": networks}
    if notes.refusals:
        return doc
    try:
        release = Release.model_validate(doc)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            notes.refuse(None, ".".join(str(p) for p in err["loc"]) or "services", err["msg"])
        return doc
    return release.model_dump(mode="json", exclude_defaults=True)


def _summary(refusals: list[dict[str, Any]]) -> str:
    shown = "; ".join(f"{r['field']}: {r['message']}" for r in refusals[:10])
    more = f" (and {len(refusals) - 10} more)" if len(refusals) > 10 else ""
    return f"compose file refused: {shown}{more}"
