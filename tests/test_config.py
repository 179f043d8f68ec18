"""Agent configuration: TOML plus environment, validated with errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import load_config
from edge_agent.errors import ConfigError


def test_file_then_environment_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('data_dir = "/srv/agent"\n[hub]\nurl = "https://hub:8443"\n')
    config = load_config(
        cfg, {"EDGE_AGENT_HUB__SYNC_INTERVAL_S": "5", "EDGE_AGENT_SUPERVISOR__BACKOFF_CAP_S": "9"}
    )
    assert config.data_dir == Path("/srv/agent")
    assert config.hub.url == "https://hub:8443"
    assert config.hub.sync_interval_s == 5.0
    assert config.supervisor.backoff_cap_s == 9.0
    assert config.store_path == Path("/srv/agent/agent.db")


@pytest.mark.parametrize(
    ("toml", "env", "named"),
    [
        ("[supervisor]\nbackoff_cap_s = -1\n", {}, "supervisor.backoff_cap_s"),
        ("[hub]\nurll = 'x'\n", {}, "hub.urll"),
        ("", {"EDGE_AGENT_OUTBOX__LOG_MAX_BYTES": "lots"}, "outbox.log_max_bytes"),
        ("[supervisor]\nbackoff_base_s = 10\nbackoff_cap_s = 1\n", {}, "backoff_cap_s"),
    ],
)
def test_bad_values_name_the_field(tmp_path: Path, toml: str, env: dict[str, str], named: str):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_config(cfg, env)
    assert named in err.value.message


def test_unreadable_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", {})
    bad = tmp_path / "bad.toml"
    bad.write_text("data_dir = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, {})


def test_cli_reports_config_errors_with_exit_2(tmp_path: Path, capsys) -> None:
    from edge_agent.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text("[hub]\nbatch_max_entries = 0\n")
    assert main(["--config", str(bad), "run"]) == 2
    assert "hub.batch_max_entries" in capsys.readouterr().err


def test_completed_wait_and_host_report_bounds_are_configured_and_bounded(tmp_path):
    from edge_agent.config import load_config

    path = tmp_path / "agent.toml"
    path.write_text(
        'data_dir = "/tmp/x"\n[supervisor]\ncompleted_wait_s = 7\n'
        "host_containers_max = 10\nhost_report_timeout_s = 2\n"
    )
    sc = load_config(path, {}).supervisor
    assert (sc.completed_wait_s, sc.host_containers_max, sc.host_report_timeout_s) == (7, 10, 2)
    path.write_text('data_dir = "/tmp/x"\n[supervisor]\nhost_containers_max = 201\n')
    with pytest.raises(ConfigError, match="host_containers_max"):
        load_config(path, {})
