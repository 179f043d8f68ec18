"""The import report of a compose file, and the collector the mappers write to."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ReportItem(BaseModel):
    """One note about one key: ``service`` is None for top-level keys."""

    model_config = ConfigDict(frozen=True)

    service: str | None
    key: str
    message: str

    @property
    def field(self) -> str:
        """Return the dotted path in the compose file (``services.web.ports``)."""
        return f"services.{self.service}.{self.key}" if self.service else self.key


class ImportReport(BaseModel):
    """What a compose import mapped, ignored (and why) and warned about."""

    mapped: list[ReportItem] = Field(default_factory=list)
    ignored: list[ReportItem] = Field(default_factory=list)
    warnings: list[ReportItem] = Field(default_factory=list)

    def lines(self) -> list[str]:
        """Return the report as text lines, for the CLI."""
        out = []
        for title, items in (
            ("mapped", self.mapped),
            ("ignored", self.ignored),
            ("warning", self.warnings),
        ):
            out += [f"{title:8} {item.field}: {item.message}" for item in items]
        return out


def split_path(path: str) -> tuple[str | None, str]:
    """Return (service, key) of a dotted compose path."""
    parts = path.split(".", 2)
    if len(parts) == 3 and parts[0] == "services":
        return parts[1], parts[2]
    return None, path


class Notes:
    """Collects refusals (all of them, for one error) and the report."""

    def __init__(self) -> None:
        self.refusals: list[dict[str, Any]] = []
        self.report = ImportReport()

    def refuse(self, service: str | None, key: str, message: str) -> None:
        """Record that ``key`` of ``service`` cannot be imported."""
        where = ReportItem(service=service, key=key, message=message).field
        self.refusals.append({"field": where, "message": message, "type": "compose_refused"})

    def mapped(self, service: str | None, key: str, message: str) -> None:
        """Record how ``key`` was mapped."""
        self.report.mapped.append(ReportItem(service=service, key=key, message=message))

    def ignored(self, service: str | None, key: str, message: str) -> None:
        """Record that ``key`` was ignored, and why."""
        self.report.ignored.append(ReportItem(service=service, key=key, message=message))

    def warn(self, service: str | None, key: str, message: str) -> None:
        """Record a warning about ``key``."""
        self.report.warnings.append(ReportItem(service=service, key=key, message=message))
