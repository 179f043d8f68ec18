"""The command lines the docs show work: every one of ours is executed, not only found.

Command lines are taken from README.md and docs/*.md: shell code blocks, indented code
blocks and inline code spans that start with a program name. Ours (``edge-agent``,
``edge-hub``, ``edgectl``, ``python -m ...``) run here:

- against a real temporary hub (``edge-hub init``, every ``edgectl`` line, with the
  documented ``export`` lines pointed at it) and a real standalone agent started with
  the documented ``edge-agent run --config FILE`` line (then its read-only commands);
- everything else of ours (long-running, or changing a device: ``serve``, ``apply``,
  ``restart``, synopses) as its ``--help`` form, after checking that the arguments
  parse (no unrecognized option, no unknown command).

Other programs (build, install and benchmark scripts, system tools) are listed in
NOT_RUN with the reason and where they are tested; an unlisted program fails the test.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_agent.cli import _parser

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MODULES = {"edge-agent": "edge_agent", "edge-hub": "hub.cli", "edgectl": "hub.edgectl"}
NOT_RUN = {
    "scripts/demo.sh": "installs packages and starts services on the host",
    "scripts/test.sh": "runs the whole suite (this test is part of it)",
    "packaging/build.sh": "slow builds; tests/test_packaging.py runs them",
    "nice": "wraps the ARM builds (packaging/build-arm.sh); slow",
    "sudo": "install.sh as root; tests/test_install.py runs it in a chroot",
    "./install.sh": "tests/test_install.py runs it in a chroot",
    "objdump": "inspects a built binary",
    "systemd-analyze": "tests/test_systemd.py",
    "setpriv": "needs root and the docker group",
    "benchmarks/": "measurements, not tests",
}
# Read-only agent commands run against the real agent; the rest of ours: --help.
AGENT_LIVE = {"status", "containers", "targets", "audit"}
SHELL_FENCES = {"", "sh", "bash", "console", "shell"}


@dataclass(frozen=True)
class DocLine:
    """One command line shown in a document."""

    source: str
    text: str
    inline: bool

    @property
    def words(self) -> list[str]:
        """Return the line split as a shell would."""
        return shlex.split(self.text)

    @property
    def program(self) -> str:
        """Return the program name (``python -m X`` and ``python FILE`` resolved)."""
        words = self.words
        if words[0] in ("python", "python3"):
            if len(words) > 2 and words[1] == "-m":
                return f"python -m {words[2]}"
            return next((p for p in NOT_RUN if words[1].startswith(p)), words[1])
        return next((p for p in NOT_RUN if words[0].startswith(p)), words[0])

    @property
    def args(self) -> list[str]:
        """Return the arguments after the program."""
        return self.words[3:] if self.program.startswith("python -m ") else self.words[1:]

    @property
    def module(self) -> str | None:
        """Return the module that runs this program, if it is one of ours."""
        if self.program.startswith("python -m "):
            return self.program.removeprefix("python -m ")
        return MODULES.get(self.program)

    @property
    def is_synopsis(self) -> bool:
        """Return whether the line is a usage synopsis rather than a command."""
        return any(tok in self.text for tok in ("[", "|", "...", "COMMAND"))


def _starts_like_a_command(text: str) -> bool:
    first = text.split()[0] if text.split() else ""
    known = (*MODULES, "python", "python3", "export", *NOT_RUN)
    return first in known or any(first.startswith(p) for p in NOT_RUN)


def _strip_comment(line: str) -> str:
    return re.sub(r"\s+#\s.*$", "", line).strip()


def doc_lines() -> list[DocLine]:
    """Return every command line shown in README.md and docs/*.md, in order."""
    found: list[DocLine] = []
    for path in DOCS:
        fence: str | None = None
        for n, raw in enumerate(path.read_text().splitlines(), 1):
            where = f"{path.relative_to(REPO)}:{n}"
            stripped = raw.strip()
            if stripped.startswith("```"):
                fence = None if fence is not None else stripped[3:].strip()
                continue
            if fence is not None:
                line = _strip_comment(raw)
                if fence in SHELL_FENCES and line and _starts_like_a_command(line):
                    found.append(DocLine(where, line, inline=False))
                continue
            if raw.startswith("    ") and _starts_like_a_command(stripped):
                found.append(DocLine(where, _strip_comment(stripped), inline=False))
                continue
            for span in re.findall(r"`([^`]+)`", raw):
                if _starts_like_a_command(span) and not span.startswith("export"):
                    found.append(DocLine(where, span.strip(), inline=True))
    return found


LINES = doc_lines()
OURS = [ln for ln in LINES if ln.module is not None]


def _subcommands(parser: argparse.ArgumentParser) -> list[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return sorted(action.choices)
    return []


def test_every_agent_command_is_documented() -> None:
    docs = (REPO / "docs" / "operations.md").read_text()
    commands = _subcommands(_parser())
    assert {"run", "status", "apply", "selftest"} <= set(commands)
    missing = [c for c in commands if f"edge-agent {c}" not in docs]
    assert missing == [], f"undocumented edge-agent commands: {missing}"


def test_every_edgectl_command_is_documented() -> None:
    from hub.edgectl import _parser as ctl_parser

    docs = (REPO / "docs" / "hub.md").read_text()
    missing = [c for c in _subcommands(ctl_parser()) if f"  {c}" not in docs]
    assert missing == [], f"undocumented edgectl commands: {missing}"


def test_every_documented_command_line_is_run_or_says_why_not() -> None:
    assert len(OURS) >= 20, [ln.text for ln in OURS]
    unknown = [
        f"{ln.source}: {ln.text}"
        for ln in LINES
        if ln.module is None and ln.program != "export" and ln.program not in NOT_RUN
    ]
    assert unknown == [], "commands in the docs that this test neither runs nor excuses"
    ours = {ln.module for ln in OURS}
    assert ours <= {*MODULES.values()}, f"documented modules that are not entry points: {ours}"


def _parse_problem(line: DocLine) -> str:
    """Return the parser's complaint about a documented line's arguments, if any."""
    if line.is_synopsis:
        return ""  # notation, not arguments: its --help form runs instead
    from hub.cli import _parser as hub_parser
    from hub.edgectl import _parser as ctl_parser

    parser = {"edge_agent": _parser, "hub.cli": hub_parser, "hub.edgectl": ctl_parser}[
        line.module or ""
    ]()
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.suppress(SystemExit):
        parser.parse_args(line.args)
    text = err.getvalue()
    serious = ("unrecognized arguments", "invalid choice", "expected one argument")
    if line.inline:  # a mention (`edge-agent apply`) may leave out required arguments
        return text if any(s in text for s in serious) else ""
    return text


def _help_runs(line: DocLine) -> str:
    """Run the line's ``--help`` form in-process; return its output (SystemExit 0 required)."""
    from edge_agent.cli import main as agent_main
    from hub.cli import hub_main
    from hub.edgectl import main as ctl_main

    run = {"edge_agent": agent_main, "hub.cli": hub_main, "hub.edgectl": ctl_main}[
        line.module or ""
    ]
    args = [] if line.is_synopsis else [a for a in line.args if not a.startswith("-")][:2]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
        run([*_leading_options(line), *args, "--help"])
    assert exited.value.code in (0, None), out.getvalue()
    return out.getvalue()


def _leading_options(line: DocLine) -> list[str]:
    # `edge-agent --config FILE run`: keep options given before the command.
    out: list[str] = []
    args = line.args
    while args and args[0].startswith("--") and not line.is_synopsis:
        out += args[:2]
        args = args[2:]
    return out


@pytest.mark.parametrize("line", OURS, ids=[f"{ln.source} {ln.text}" for ln in OURS])
def test_documented_line_parses_and_its_help_runs(line: DocLine) -> None:
    assert _parse_problem(line) == "", f"{line.source}: `{line.text}` does not parse"
    assert "usage:" in _help_runs(line)


def test_python_m_edgectl_runs_edgectl() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hub.edgectl"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "usage: edgectl" in proc.stderr, proc


def test_agent_options_are_accepted_after_the_command() -> None:
    args = _parser().parse_args(["run", "--config", "a.toml"])
    assert (args.command, args.config) == ("run", "a.toml")
    args = _parser().parse_args(["--config", "a.toml", "--json", "status", "--socket", "s"])
    assert (args.config, args.json, args.socket) == ("a.toml", True, "s")


# ---- executed against a real hub and a real agent -----------------------------------


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=str(cwd), env=env)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGECTL_", "EDGE_AGENT_"))}
    env["PYTHONPATH"] = str(REPO)
    return {**env, **extra}


@pytest.fixture(scope="module")
def live_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from hub.testing import start_hub

    hub = start_hub(tmp_path_factory.mktemp("docs-hub"))
    yield hub
    assert hub.stop() == 0


async def test_documented_hub_lines_run_against_a_real_hub(live_hub: object) -> None:
    from hub.testing import RunningHub

    hub = live_hub
    assert isinstance(hub, RunningHub)
    device = await hub.enroll(await hub.create_token(), hub.work_dir / "device")
    release = {"name": "app", "version": "1", "services": [{"name": "web", "image": "busybox"}]}
    (hub.work_dir / "release.json").write_text(json.dumps(release))
    subst = {
        "https://hub.example:8443": hub.url,
        "/var/lib/edge-hub": str(hub.data_dir),
        "dev-0123": device.device_id,
    }
    env = _env()
    ran: list[str] = []
    for line in LINES:
        text = line.text
        for old, new in subst.items():
            text = text.replace(old, new)
        if line.program == "export" and "EDGECTL_" in text:
            env.update(dict(w.split("=", 1) for w in shlex.split(text)[1:]))
            continue
        live = line.module == "hub.edgectl" or line.words[:2] == ["edge-hub", "init"]
        if not live or line.inline or line.is_synopsis:
            continue
        words = shlex.split(text)
        proc = _run([sys.executable, "-m", line.module or "", *words[1:]], hub.work_dir, env)
        assert proc.returncode == 0, f"{line.source}: `{line.text}`\n{proc.stderr}"
        ran.append(words[1])
    assert {"init", "token", "devices", "target", "events", "audit"} <= set(ran), ran


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, f"agent exited {proc.returncode}"
        assert time.monotonic() < deadline, f"no {path} within {timeout_s}s"
        time.sleep(0.05)


def test_documented_agent_lines_run_against_a_real_agent(tmp_path: Path) -> None:
    from agentproc import write_config

    sock_dir = Path(tempfile.mkdtemp(prefix="ea-docs-"))  # unix socket paths are short
    config = write_config(
        tmp_path / "agent.toml",
        device_id="docs-agent",
        data_dir=str(tmp_path / "data"),
        api={"socket": str(sock_dir / "api.sock")},
        docker={"disk_reserve_mb": 0},
    )
    agent_lines = [ln for ln in OURS if ln.module == "edge_agent" and not ln.is_synopsis]
    runs = [ln for ln in agent_lines if ln.args[:1] == ["run"] and not ln.inline]
    (run_line,) = {ln.text: ln for ln in runs}.values()
    argv = [a.replace("/etc/edge-agent/agent.toml", str(config)) for a in run_line.args]
    log = (tmp_path / "agent.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", *argv], stdout=log, stderr=log, env=_env()
    )
    try:
        _wait_for(sock_dir / "api.sock", proc, 60)
        env = _env(EDGE_AGENT_CONFIG=str(config))
        ran = []
        for line in agent_lines:
            if line.inline or not line.args or line.args[0] not in AGENT_LIVE:
                continue
            out = _run([sys.executable, "-m", "edge_agent", *line.args], tmp_path, env)
            assert out.returncode == 0, f"{line.source}: `{line.text}`\n{out.stderr}"
            ran.append(line.args[0])
        assert set(ran) >= AGENT_LIVE, ran
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        log.close()
        shutil.rmtree(sock_dir, ignore_errors=True)
    assert code == 0, (tmp_path / "agent.log").read_text()[-3000:]


def test_edgectl_help_describes_every_command() -> None:
    from hub.edgectl import _parser as ctl_parser

    for action in ctl_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            described = {a.dest: a.help for a in action._choices_actions}
            assert set(described) == set(action.choices)
            assert all(described.values()), described


def test_both_database_backends_the_docs_name_exist(tmp_path: Path) -> None:
    from hub.config import load_config
    from hub.errors import ConfigError
    from hub.store import open_store
    from hub.store.postgres import PostgresStore, missing_methods
    from hub.store.sqlite import SqliteStore

    env = {"EDGE_HUB_SERVER_DATA_DIR": str(tmp_path), "EDGE_HUB_STORE_URL": "postgresql://h/db"}
    with pytest.raises(ConfigError, match=r"store\.url"):
        load_config(None, env).sqlite_path  # noqa: B018 - the property validates the url
    assert missing_methods() == []  # the whole store: docs may describe the hub on PostgreSQL
    assert isinstance(open_store(load_config(None, env)), PostgresStore)
    del env["EDGE_HUB_STORE_URL"]
    assert isinstance(open_store(load_config(None, env)), SqliteStore)
