"""Docker Engine adapter (aiodocker): the only module that talks to Docker.

Every container, network and volume it creates carries ``LABEL_MANAGED`` and this
device's ``LABEL_DEVICE``; every object it acts on is inspected first and refused with
``NotManaged`` unless it carries both. aiodocker and aiohttp errors never leave this
module: they are translated into the ``RuntimeAdapterError`` family of ``errors.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError
from aiodocker.networks import DockerNetwork
from pydantic import BaseModel, ConfigDict

from edge_agent.container_config import container_config
from edge_agent.errors import (
    DiskReserveError,
    EngineUnavailable,
    ImageInUse,
    ImageNotFound,
    NotManaged,
    RegistryAuthError,
    RuntimeAdapterError,
)
from edge_agent.logstream import (
    FrameSplitter,
    LineAssembler,
    LogLine,
    format_since,
    read_frames,
)
from edge_agent.metrics import ContainerUsage
from edge_agent.models import (
    LABEL_CONFIG_HASH,
    LABEL_DEVICE,
    LABEL_MANAGED,
    LABEL_RELEASE,
    LABEL_REVISION,
    LABEL_SERVICE,
    MANAGED_BY,
    ContainerStatus,
    CurrentService,
    Health,
    RegistryAuth,
    Release,
    Service,
    VolumeMount,
    is_relative_bind,
)
from edge_agent.readpace import ReadPacer
from edge_agent.reconcile import DEFAULT_NETWORK, joined_networks, network_key

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_DOCKER_URL = "unix:///var/run/docker.sock"
# Containers created and not yet started that this process remembers as its own.
MAX_UNSTARTED = 1024
# Container actions worth a reconcile or a record; exec_* (healthcheck probes) and the
# like are dropped.
EVENT_ACTIONS = frozenset(
    {"create", "start", "restart", "die", "oom", "kill", "stop", "destroy", "health_status"}
    | {"pause", "unpause"}
)
_NS = 1_000_000_000
_ENGINE_DOWN = 900  # aiodocker's status for "cannot connect to the engine"
_AUTH_HINTS = ("unauthorized", "authentication required", "no basic auth credentials")
_NOT_FOUND_HINTS = ("not found", "manifest unknown", "no such image", "does not exist")
# On a release network besides "default": its name in the release.
LABEL_NETWORK = "io.edgefleet.network"
_FRACTION = re.compile(r"(\.\d{6})\d+")


class RuntimeEvent(BaseModel):
    """A container event of this device's objects, from the engine's event stream."""

    model_config = ConfigDict(frozen=True)

    action: str  # "die", "oom", "health_status", "start", "stop", "kill", "destroy", ...
    service: str
    container_id: str
    exit_code: int | None = None
    health: Health | None = None
    time: datetime


class HostContainer(BaseModel):
    """A container on the engine, whoever's: what the hub's drift views compare."""

    model_config = ConfigDict(frozen=True)

    name: str
    image: str
    image_id: str
    digest: str  # the manifest digest the image was pulled by, "" if unknown
    state: str
    managed: bool  # carries this device's labels


def _parse_time(value: str | None) -> datetime | None:
    """Return the engine's RFC 3339 (nanosecond) time as a datetime, or None if unset."""
    if not value or value.startswith("0001-01-01"):
        return None
    return datetime.fromisoformat(_FRACTION.sub(r"\1", value.replace("Z", "+00:00")))


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _translate(exc: DockerError, what: str, *, image: str | None = None) -> RuntimeAdapterError:
    """Return our error for an aiodocker error raised while doing ``what``."""
    status, text = exc.status, str(exc.message)
    lowered = text.lower()
    if status == _ENGINE_DOWN:
        return EngineUnavailable(f"{what}: Docker engine unreachable: {text}", retryable=True)
    # Registry failures during a pull come back as 500 (or in-stream, 0) with the
    # registry's words; other statuses (400: bad mount, ...) are not about the image.
    relayed = status in (0, 500)
    if image is not None:
        if status in (401, 403) or (relayed and any(h in lowered for h in _AUTH_HINTS)):
            return RegistryAuthError(
                f"{what}: registry refused the credentials for {image}: {text}", status=status
            )
        if status == 404 or (relayed and any(h in lowered for h in _NOT_FOUND_HINTS)):
            return ImageNotFound(f"{what}: image {image} not found: {text}", status=status)
    # status 0: an error inside a 200 progress stream (e.g. the registry went away).
    retryable = status >= 500 or status == 0
    return RuntimeAdapterError(
        f"{what}: {text} (HTTP {status})", status=status, retryable=retryable
    )


async def _or_none(awaitable: Awaitable[T]) -> T | None:
    """Return the awaited value, or None if the engine answered 404 (no such object)."""
    try:
        return await awaitable
    except RuntimeAdapterError as exc:
        if exc.status == 404:
            return None
        raise


@contextlib.contextmanager
def _engine_errors(what: str, *, image: str | None = None) -> Iterator[None]:
    """Translate aiodocker and aiohttp errors raised inside the block into ours."""
    try:
        yield
    except DockerError as exc:
        raise _translate(exc, what, image=image) from exc
    except (aiohttp.ClientError, OSError) as exc:  # includes TimeoutError
        raise EngineUnavailable(
            f"{what}: Docker engine unreachable: {exc!r}", retryable=True
        ) from exc


class DockerRuntime:
    """The device's containers, networks and volumes on one Docker engine."""

    def __init__(
        self,
        device_id: str,
        *,
        docker_url: str | None = None,
        disk_reserve_bytes: int = 500 * 2**20,
        docker_root: str = "/var/lib/docker",
        data_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.device_id = device_id
        # Relative bind sources live under <data_dir>/releases/<release>/ (None: refused).
        self.data_dir = data_dir
        self.disk_reserve_bytes = disk_reserve_bytes
        self.docker_root = docker_root
        url = docker_url or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_URL
        # Calls are bounded; pulls, stops and streams use aiodocker's unbounded
        # long-running timeout (connect stays bounded).
        timeout = aiohttp.ClientTimeout(total=120, connect=10)
        self._docker = aiodocker.Docker(url=url, timeout=timeout)
        # Engine round trips this process can skip on the converge path: networks it made
        # or checked (forgotten when removed, or when a listing no longer shows them), and
        # containers it created and has not started yet (known to be ours).
        self._networks_ok: set[tuple[str, bool]] = set()  # (name, internal)
        # This device's networks as the last listing showed them (None: no listing yet):
        # one the listing did not show is created without a look first.
        self._networks_listed: dict[str, dict[str, Any]] | None = None
        self._created: set[str] = set()

    # -- names and labels -------------------------------------------------------------

    def object_name(self, name: str) -> str:
        """Return the engine name of this device's object ``name``: ``ef-<device>-<name>``."""
        return f"ef-{self.device_id}-{name}"

    def base_labels(self) -> dict[str, str]:
        """Return the labels every object of this device carries."""
        return {LABEL_MANAGED: MANAGED_BY, LABEL_DEVICE: self.device_id}

    def is_ours(self, labels: dict[str, str] | None) -> bool:
        """Return whether ``labels`` mark an object as managed for this device."""
        labels = labels or {}
        return (
            labels.get(LABEL_MANAGED) == MANAGED_BY and labels.get(LABEL_DEVICE) == self.device_id
        )

    def _label_filter(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.base_labels().items()]

    # -- engine -------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the connection to the engine."""
        await self._docker.close()

    async def ping(self) -> dict[str, Any]:
        """Return the engine's version information."""
        with _engine_errors("ping"):
            return await self._docker.version()

    # -- containers: read -----------------------------------------------------------------

    async def list_services(self) -> list[CurrentService]:
        """Return this device's managed containers, as they are now."""
        filters = json.dumps({"label": self._label_filter()})
        # Plain JSON, not aiodocker's container objects: those form reference cycles that
        # only the cycle collector frees, which on a busy engine grows the agent's RSS.
        with _engine_errors("list containers"):
            found = await self._docker._query_json(
                "containers/json", params={"all": "1", "filters": filters}
            )
        # A container removed between list and inspect is simply left out.
        out = await asyncio.gather(*(_or_none(self.inspect(c["Id"])) for c in found))
        return sorted((s for s in out if s is not None), key=lambda s: s.name)

    async def inspect(self, cid: str) -> CurrentService:
        """Return the managed container ``cid`` (id or name); NotManaged if not ours."""
        return _current_service(await self._owned(cid, "inspect"))

    async def _owned(self, cid: str, what: str) -> dict[str, Any]:
        """Return the inspect data of ``cid`` after checking it is this device's."""
        data = await self._show(cid, what)
        if not self.is_ours(data.get("Config", {}).get("Labels")):
            name = data.get("Name", "").lstrip("/")
            raise NotManaged(
                f"refusing to {what} container {name or cid} ({data['Id'][:12]}): "
                f"not managed by edgefleet for device {self.device_id}",
                status=403,
            )
        return data

    async def _show(self, cid: str, what: str = "inspect") -> dict[str, Any]:
        with _engine_errors(f"{what} container {cid}"):
            data: dict[str, Any] = await self._docker._query_json(f"containers/{cid}/json")
            return data

    # -- images ---------------------------------------------------------------------------

    async def has_image(self, ref: str) -> bool:
        """Return whether the engine has image ``ref`` (tag or repo@digest)."""
        return await _or_none(self._image(ref)) is not None

    async def _image(self, ref: str) -> dict[str, Any]:
        with _engine_errors(f"inspect image {ref}"):
            return await self._docker.images.inspect(ref)

    async def image_id(self, ref: str) -> str | None:
        """Return the id of image ``ref``, or None if the engine does not have it."""
        info = await _or_none(self._image(ref))
        return str(info["Id"]) if info else None

    async def container_image_ids(self) -> set[str]:
        """Return the image ids of every container on the engine, whoever's (for image GC)."""
        with _engine_errors("list all containers"):
            found = await self._docker._query_json("containers/json", params={"all": "1"})
        return {str(c["ImageID"]) for c in found if c.get("ImageID")}

    async def host_containers(self, *, limit: int) -> tuple[list[HostContainer], int]:
        """Return up to ``limit`` containers on the engine by name, and how many there are."""
        with _engine_errors("list all containers"):
            found = await self._docker._query_json("containers/json", params={"all": "1"})
            images = await self._docker._query_json("images/json")
        digests = {str(i.get("Id")): i.get("RepoDigests") or [] for i in images}
        out = [
            HostContainer(
                name=(c.get("Names") or ["/" + str(c.get("Id", ""))[:12]])[0].lstrip("/"),
                image=str(c.get("Image", "")),
                image_id=str(c.get("ImageID", "")),
                digest=manifest_digest(
                    str(c.get("Image", "")), digests.get(str(c.get("ImageID")), [])
                ),
                state=str(c.get("State", "")),
                managed=self.is_ours(c.get("Labels")),
            )
            for c in found
        ]
        out.sort(key=lambda h: h.name)
        return out[:limit], len(out)

    async def container_usage(self, cid: str) -> ContainerUsage | None:
        """Return a container's CPU time and memory from the engine (None if it is gone).

        The metrics sampler's fallback where it cannot read the cgroup files: the
        engine answers ``stream=false`` after sampling twice, 1 to 2 s per container.
        """
        try:
            with _engine_errors("container stats"):
                stats = await self._docker._query_json(
                    f"containers/{cid}/stats", params={"stream": "0"}
                )
        except RuntimeAdapterError:
            return None
        mem = stats.get("memory_stats") or {}
        detail = mem.get("stats") or {}
        inactive = detail.get("inactive_file", detail.get("total_inactive_file", 0))
        cpu = ((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage")
        if not isinstance(cpu, int) or not isinstance(mem.get("usage"), int):
            return None
        return ContainerUsage(cpu, max(0, mem["usage"] - int(inactive or 0)))

    async def remove_image(self, ref: str) -> None:
        """Remove image reference ``ref``, never forced; ImageInUse if a container uses it."""
        try:
            with _engine_errors(f"remove image {ref}"):
                await self._docker.images.delete(ref, force=False)
        except RuntimeAdapterError as exc:
            if exc.status == 409:
                raise ImageInUse(f"image {ref} is in use: {exc.message}", status=409) from exc
            if exc.status != 404:  # already gone is fine
                raise

    def free_disk_bytes(self) -> int:
        """Return the free bytes on the engine's data root (or ``/`` if it is not visible)."""
        for path in (self.docker_root, "/"):
            with contextlib.suppress(OSError):
                st = os.statvfs(path)
                return st.f_bavail * st.f_frsize
        return 0

    def check_disk_reserve(self, what: str) -> None:
        """Raise DiskReserveError if free disk is below the reserve."""
        free = self.free_disk_bytes()
        if free < self.disk_reserve_bytes:
            raise DiskReserveError(
                f"{what} refused: {_fmt_bytes(free)} free on {self.docker_root}, below the "
                f"reserve of {_fmt_bytes(self.disk_reserve_bytes)} "
                f"({free} < {self.disk_reserve_bytes} bytes)",
                retryable=True,
            )

    async def pull(self, ref: str, auth: RegistryAuth | None = None) -> str:
        """Pull ``ref`` (by tag or ``repo@sha256:...``) and return the image id."""
        self.check_disk_reserve(f"pull of {ref}")
        creds = None
        if auth is not None:
            creds = {
                "username": auth.username,
                "password": auth.password,
                "serveraddress": auth.server,
            }
        with _engine_errors(f"pull {ref}", image=ref):
            try:
                await self._docker.images.pull(ref, auth=creds)
            except ValueError as exc:  # auth given for a ref without a registry host
                raise RuntimeAdapterError(f"pull {ref}: {exc}") from exc
            info = await self._docker.images.inspect(ref)
        log.info("pulled %s (%s)", ref, info["Id"])
        return str(info["Id"])

    # -- networks and volumes -------------------------------------------------------------

    async def _find(self, kind: str, name: str) -> dict[str, Any] | None:
        """Return the network or volume named exactly ``name``, or None."""
        with _engine_errors(f"find {kind} {name}"):
            if kind == "network":
                found = await self._docker.networks.list(filters={"name": name})
            else:
                found = (await self._docker.volumes.list(filters={"name": name}))["Volumes"]
        return next((o for o in found or [] if o["Name"] == name), None)

    def _check_ours(self, kind: str, obj: dict[str, Any]) -> None:
        if not self.is_ours(obj.get("Labels")):
            raise NotManaged(
                f"{kind} {obj['Name']} exists but is not managed by edgefleet for device "
                f"{self.device_id}",
                status=403,
            )

    def network_name(self, release_name: str, network: str = DEFAULT_NETWORK) -> str:
        """Return the engine name of a release network (``default``: ``ef-<dev>-<release>``)."""
        if network == DEFAULT_NETWORK:
            return self.object_name(release_name)
        return self.object_name(f"{release_name}_{network}")

    async def ensure_network(
        self, release_name: str, network: str = DEFAULT_NETWORK, *, internal: bool = False
    ) -> str:
        """Create a network of this release if missing and return its engine name."""
        name = self.network_name(release_name, network)
        if (name, internal) in self._networks_ok:
            return name
        listed = self._networks_listed
        for attempt in range(2):
            if attempt == 0 and listed is not None:
                # The iteration's listing is the look: no round trip of our own before
                # creating (a network made meanwhile answers 409 and is looked up below).
                found = listed.get(name)
            else:
                found = await self._find("network", name)
            if found is not None:
                self._check_network(found, release_name, network, internal)
                self._networks_ok.add((name, internal))
                return name
            labels = {**self.base_labels(), LABEL_RELEASE: release_name}
            if network != DEFAULT_NETWORK:
                labels[LABEL_NETWORK] = network
            config = {
                "Name": name,
                "Driver": "bridge",
                "CheckDuplicate": True,
                "Internal": internal,
                "Labels": labels,
            }
            try:
                with _engine_errors(f"create network {name}"):
                    await self._docker.networks.create(config)
                self._networks_ok.add((name, internal))
                return name
            except RuntimeAdapterError as exc:
                if exc.status != 409:  # 409: created concurrently; look again
                    raise
        raise RuntimeAdapterError(f"create network {name}: conflicts but cannot be found")

    def _check_network(
        self, found: dict[str, Any], release_name: str, network: str, internal: bool
    ) -> None:
        """Refuse a network that is not this device's, another's, or of another spec."""
        self._check_ours("network", found)
        labels = found.get("Labels") or {}
        key = (labels.get(LABEL_RELEASE), labels.get(LABEL_NETWORK, DEFAULT_NETWORK))
        if key != (release_name, network):
            raise RuntimeAdapterError(
                f"network {found['Name']} belongs to release {key[0]} network {key[1]}, "
                f"not to release {release_name} network {network}",
                status=409,
            )
        if bool(found.get("Internal")) != internal:
            # An engine network cannot change in place while containers are attached.
            raise RuntimeAdapterError(
                f"network {network} of release {release_name} exists with internal="
                f"{bool(found.get('Internal'))}; the release wants internal={internal}: "
                "a network's spec cannot change under a release name, name a new network",
                status=409,
            )

    async def remove_network(self, release_name: str, network: str = DEFAULT_NETWORK) -> None:
        """Remove a network of this release; a missing network is not an error."""
        name = self.network_name(release_name, network)
        self._networks_ok = {ok for ok in self._networks_ok if ok[0] != name}
        if self._networks_listed is not None:
            self._networks_listed.pop(name, None)
        found = await self._find("network", name)
        if found is None:
            return
        self._check_ours("network", found)
        with _engine_errors(f"remove network {name}"):
            await DockerNetwork(self._docker, found["Id"]).delete()

    async def list_networks(self) -> list[str]:
        """Return this device's networks as keys: ``release``, or ``release/network``."""
        filters = {"label": self._label_filter()}
        with _engine_errors("list networks"):
            found = await self._docker.networks.list(filters=filters)
        keys = set()
        for n in found or []:
            labels = n.get("Labels") or {}
            if labels.get(LABEL_RELEASE):
                keys.add(network_key(labels[LABEL_RELEASE], labels.get(LABEL_NETWORK)))
        # A network removed behind the agent's back is looked up again before use.
        self._networks_listed = {str(n.get("Name")): n for n in found or []}
        self._networks_ok = {ok for ok in self._networks_ok if ok[0] in self._networks_listed}
        return sorted(keys)

    async def ensure_volume(self, name: str) -> str:
        """Create this device's named volume if missing and return its engine name."""
        vname = self.object_name(name)
        found = await self._find("volume", vname)
        if found is not None:
            self._check_ours("volume", found)
            return vname
        config = {"Name": vname, "Labels": self.base_labels()}
        with _engine_errors(f"create volume {vname}"):
            await self._docker.volumes.create(config)
        return vname

    # -- containers: write ----------------------------------------------------------------

    async def create(self, service: Service, *, release: Release, revision: int) -> str:
        """Create (not start) the container of ``service`` and return its id."""
        name = self.object_name(service.name)
        # No look before creating: the engine refuses a taken name (409), and only then is
        # the holder inspected to say whose it is.
        networks = [await self._ensure_joined(release, n) for n in joined_networks(service)]
        mounts = [await self._mount(v, release.name) for v in service.volumes]
        config = container_config(service, self._labels(service, release, revision), mounts)
        attach = _attach(config, service, networks[:1])
        try:
            with _engine_errors(f"create container {name}", image=service.image):
                container = await self._docker.containers.create(config, name=name)
        except RuntimeAdapterError as exc:
            if exc.status == 409:
                self._refuse_existing(name, await _or_none(self._show(name)) or {})
            raise
        # Engines before API 1.44 attach one network at create; the rest before start.
        for net in networks[1:]:
            with _engine_errors(f"connect container {name} to {net}"):
                await self._docker._query_json(
                    f"networks/{net}/connect",
                    method="POST",
                    data={"Container": container.id, "EndpointConfig": attach},
                )
        log.info("created %s (%s) from %s", name, container.id[:12], service.image)
        if len(self._created) >= MAX_UNSTARTED:  # creates whose start never came: forget
            self._created.clear()
        self._created.add(str(container.id))
        return str(container.id)

    async def _ensure_joined(self, release: Release, network: str) -> str:
        spec = release.networks.get(network)
        internal = spec.internal if spec is not None else False
        return await self.ensure_network(release.name, network, internal=internal)

    def _labels(self, service: Service, release: Release, revision: int) -> dict[str, str]:
        return {
            **service.labels,
            **self.base_labels(),
            LABEL_SERVICE: service.name,
            LABEL_RELEASE: release.ref,
            LABEL_REVISION: str(revision),
            LABEL_CONFIG_HASH: service.config_hash(),
        }

    def _refuse_existing(self, name: str, data: dict[str, Any]) -> NoReturn:
        cid = str(data.get("Id", "?"))[:12]
        if not self.is_ours(data.get("Config", {}).get("Labels")):
            raise NotManaged(
                f"container name {name} is taken by {cid}, which is not managed by "
                f"edgefleet for device {self.device_id}",
                status=409,
            )
        raise RuntimeAdapterError(
            f"container {name} already exists ({cid}); remove it before creating", status=409
        )

    async def _mount(self, vol: VolumeMount, release: str) -> dict[str, Any]:
        if vol.type == "volume":
            source = await self.ensure_volume(vol.source)
        elif is_relative_bind(vol):
            source = await asyncio.to_thread(self.release_data_path, release, vol.source)
        else:
            source = vol.source
        return {"Type": vol.type, "Source": source, "Target": vol.target, "ReadOnly": vol.read_only}

    def release_data_path(self, release: str, source: str) -> str:
        """Create (0750) and return the host path of a relative bind source of ``release``.

        Refused if it resolves outside the release's data directory (a symlink a
        container planted there must not lead a later mount elsewhere on the host).
        """
        if self.data_dir is None:
            raise RuntimeAdapterError(f"bind source {source!r} is relative: no data_dir set")
        base = os.path.join(os.fspath(self.data_dir), "releases", release)
        path = os.path.normpath(os.path.join(base, source))
        for d in (os.path.dirname(base), base):
            _make_dir(d)
        _check_inside(base, path, f"bind source {source!r} of release {release}")
        _make_dir(path)
        _check_inside(base, path, f"bind source {source!r} of release {release}")
        return path

    async def start(self, cid: str) -> None:
        """Start managed container ``cid``; starting a running one is a no-op."""
        if cid in self._created:  # created by this process a moment ago: ours
            self._created.discard(cid)
        else:
            await self._owned(cid, "start")
        with _engine_errors(f"start container {cid}"):
            await self._docker.containers.container(cid).start()

    async def stop(self, cid: str, timeout_s: float = 10.0) -> None:
        """Stop managed container ``cid``: SIGTERM, then SIGKILL after ``timeout_s``."""
        await self._owned(cid, "stop")
        with _engine_errors(f"stop container {cid}"):
            await self._docker.containers.container(cid).stop(t=math.ceil(timeout_s))

    async def remove(self, cid: str) -> None:
        """Force-remove managed container ``cid`` and its anonymous volumes; gone is fine."""
        try:
            await self._owned(cid, "remove")
            with _engine_errors(f"remove container {cid}"):
                await self._docker.containers.container(cid).delete(force=True, v=True)
        except RuntimeAdapterError as exc:
            # 404: already gone; 409: removal already in progress.
            if exc.status not in (404, 409) or isinstance(exc, NotManaged):
                raise

    # -- streams --------------------------------------------------------------------------

    async def events(self, *, since: float | None = None) -> AsyncIterator[RuntimeEvent]:
        """Yield this device's container events; raise EngineUnavailable when the stream ends."""
        filters = {
            "type": ["container"],
            "label": self._label_filter(),
            "event": sorted(EVENT_ACTIONS),  # "health_status" matches "health_status: x"
        }
        params: dict[str, Any] = {"filters": json.dumps(filters)}
        if since is not None:
            params["since"] = f"{since:.9f}"
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None, connect=10)
        with _engine_errors("event stream"):
            # aiodocker's public events API fans out from one shared background task
            # per client, which cannot be cancelled per consumer; query directly.
            async with self._docker._query("events", params=params, timeout=timeout) as resp:
                async for line in resp.content:
                    event = self._event(line)
                    if event is not None:
                        yield event
        raise EngineUnavailable("event stream from the Docker engine ended", retryable=True)

    def _event(self, line: bytes) -> RuntimeEvent | None:
        """Return the event in one line of the engine's stream, or None to skip it."""
        if not line.strip():
            return None
        raw = json.loads(line)
        action, _, detail = str(raw.get("Action", "")).partition(":")
        attrs = raw.get("Actor", {}).get("Attributes", {})
        if action not in EVENT_ACTIONS or not self.is_ours(attrs):
            return None
        exit_code = attrs.get("exitCode")
        nanos = raw.get("timeNano") or raw.get("time", 0) * _NS
        return RuntimeEvent(
            action=action,
            service=attrs.get(LABEL_SERVICE, ""),
            container_id=raw.get("Actor", {}).get("ID", raw.get("id", "")),
            exit_code=int(exit_code) if exit_code is not None else None,
            health=Health(detail.strip()) if action == "health_status" else None,
            time=datetime.fromtimestamp(nanos / _NS, UTC),
        )

    async def logs(
        self, cid: str, *, since: float | None = None, tail: int | None = None
    ) -> AsyncIterator[tuple[float, str, str]]:
        """Yield ``(unix time, "stdout"|"stderr", line)`` of ``cid``'s log so far, oldest first."""
        since_ns = None if since is None else int(since * _NS)
        async for line in self.log_lines(cid, since_ns=since_ns, tail=tail):
            yield line.ts, line.stream, line.text

    async def log_lines(
        self,
        cid: str,
        *,
        since_ns: int | None = None,
        tail: int | None = None,
        max_line_bytes: int = 16 * 1024,
        follow: bool = False,
        pace: ReadPacer | None = None,
    ) -> AsyncIterator[LogLine]:
        """Stream ``cid``'s log lines from ``since_ns`` on (inclusive), both streams in the
        engine's order, as the engine sends them: nothing is buffered beyond one line of
        ``max_line_bytes``, so the caller bounds a read by stopping (close the iterator).
        ``follow``: go on with new lines as they are written, until the container stops.
        ``pace``: while the engine sends little, read the connection only at the pacer's
        ticks (many quiet streams in one wake-up, not one per line)."""
        await self._owned(cid, "read logs of")
        params: dict[str, Any] = {
            "follow": "true" if follow else "false",
            "stdout": "true",
            "stderr": "true",
            "timestamps": "true",
            "tail": "all" if tail is None else str(tail),
        }
        if since_ns is not None:
            params["since"] = format_since(since_ns)
        assembler = LineAssembler(max_line_bytes, time.time_ns)
        # A followed container may be quiet for hours: no read timeout then.
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None if follow else 60, connect=10)
        with _engine_errors(f"read logs of container {cid}"):
            path = f"containers/{cid}/logs"
            async with self._docker._query(path, params=params, timeout=timeout) as resp:
                # Managed containers never have a TTY, so the stream is always multiplexed.
                if pace is not None:
                    splitter = FrameSplitter()
                    async for chunk in _paced(resp, pace):
                        for stream_id, piece, continued in splitter.feed(chunk):
                            for line in assembler.feed(stream_id, piece, continued=continued):
                                yield line
                else:
                    async for stream_id, piece, continued in read_frames(resp.content):
                        for line in assembler.feed(stream_id, piece, continued=continued):
                            yield line
        for line in assembler.finish():
            yield line


# Read in one tick interval, this much means the stream flows: it is read as it comes
# until an interval brings less. (Held, a stream gets at most what the socket buffer
# holds per tick: a few hundred lines, the engine writing each line on its own.)
_FLOWING_BYTES = 4096


async def _paced(resp: aiohttp.ClientResponse, pacer: ReadPacer) -> AsyncIterator[bytes]:
    """Yield the body as it arrives; while it is quiet, read only at the pacer's ticks."""
    content = resp.content
    transport = resp.connection.transport if resp.connection is not None else None
    loop = asyncio.get_running_loop()
    got, flowing_until = 0, 0.0
    try:
        while True:
            data = content.read_nowait()
            if data:
                got += len(data)
                yield data
                continue
            if content.at_eof():
                return
            if transport is not None:
                if got >= _FLOWING_BYTES:
                    got, flowing_until = 0, loop.time() + pacer.interval_s
                    pacer.release(transport)
                elif loop.time() >= flowing_until:
                    got = 0
                    pacer.hold(transport)
            data = await content.readany()
            if not data:
                return
            got += len(data)
            yield data
    finally:
        if transport is not None:
            pacer.release(transport)


def manifest_digest(image: str, repo_digests: list[str]) -> str:
    """Return the manifest digest of a container's image: from its ref, else the image's."""
    if "@" in image:
        return image.rpartition("@")[2]
    repo = image.rpartition(":")[0] if ":" in image.rpartition("/")[2] else image
    matching = [d for d in repo_digests if d.partition("@")[0] == repo] or repo_digests
    return matching[0].partition("@")[2] if matching else ""


def _attach(config: dict[str, Any], service: Service, first: list[str]) -> dict[str, Any]:
    """Put the container on the first of its networks; return the endpoint for the others."""
    endpoint = {"Aliases": [service.name, *service.aliases]}
    if first:
        config["HostConfig"]["NetworkMode"] = first[0]
        config["NetworkingConfig"] = {"EndpointsConfig": {first[0]: endpoint}}
    return endpoint


def _current_service(data: dict[str, Any]) -> CurrentService:
    """Return the CurrentService of one container's inspect data."""
    labels = data.get("Config", {}).get("Labels") or {}
    state = data.get("State", {})
    status = ContainerStatus(state.get("Status", "dead"))
    health = (state.get("Health") or {}).get("Status") or Health.NONE
    try:
        revision = int(labels.get(LABEL_REVISION, "0"))
    except ValueError:
        revision = 0
    return CurrentService(
        name=labels.get(LABEL_SERVICE, data.get("Name", "").lstrip("/")),
        container_id=data["Id"],
        config_hash=labels.get(LABEL_CONFIG_HASH, ""),
        release=labels.get(LABEL_RELEASE, "").partition("@")[0],
        revision=revision,
        status=status,
        health=Health(health),
        exit_code=(
            state.get("ExitCode")
            if status in (ContainerStatus.EXITED, ContainerStatus.DEAD)
            else None
        ),
        image=data.get("Config", {}).get("Image", ""),
        image_id=data.get("Image", ""),
        started_at=_parse_time(state.get("StartedAt")),
        finished_at=_parse_time(state.get("FinishedAt")),
        oom_killed=bool(state.get("OOMKilled", False)),
    )


def _make_dir(path: str) -> None:
    if not os.path.isdir(path):
        os.makedirs(path, mode=0o750, exist_ok=True)
        os.chmod(path, 0o750)  # makedirs' mode is masked by the umask


def _check_inside(base: str, path: str, what: str) -> None:
    """Refuse ``path`` if, symlinks resolved, it is not inside ``base``."""
    real_base = os.path.realpath(base)
    if os.path.commonpath([real_base, os.path.realpath(path)]) != real_base:
        raise RuntimeAdapterError(f"{what} leads outside the release's data directory")
