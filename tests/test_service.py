"""install-service: the generated unit (parsed), the 0600 environment file, dry run, refusals."""

from __future__ import annotations

import configparser
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from runner_agent.cli import main
from runner_agent.service import (
    DEFAULT_DRAIN_TIMEOUT_S,
    ServiceError,
    ServiceSpec,
    exec_start,
    render_unit,
    systemd_quote,
)

REPO = Path(__file__).resolve().parents[1]
KEY = "bencher_runner_" + "a1B2c3D4e5" * 3
OTHER_KEY = "bencher_runner_" + "Z9y8X7w6V5" * 3
EXE = Path(sys.executable)  # any real executable file will do for ExecStart=


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("BENCHER_HOST", "BENCHER_RUNNER", "BENCHER_RUNNER_KEY", "RUNNER_AGENT_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    yield


def read_unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def read_env(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            out[name] = value
    return out


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["install-service", *args], env=env)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "runner.key"
    path.write_text(KEY + "\n")
    return path


def test_unit_directives(tmp_path: Path, key_file: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/runner-agent").mkdir(parents=True)
    (root / "etc/runner-agent/config.toml").write_text("poll-timeout = 30\n")
    result = invoke(
        "--host", "https://bencher.example.com/api", "--runner", "bench-box-1",
        "--key-file", str(key_file), "--executable", str(EXE), "--root", str(root),
        "--config", "/etc/runner-agent/config.toml", "--drain-timeout", "7500",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "systemctl daemon-reload && systemctl enable --now runner-agent" in result.output
    unit_path = root / "etc/systemd/system/runner-agent.service"
    unit = read_unit(unit_path)
    service = unit["Service"]
    assert service["ExecStart"] == f"{EXE} run --config /etc/runner-agent/config.toml"
    assert service["EnvironmentFile"] == "/etc/runner-agent/runner-agent.env"
    assert service["Restart"] == "always"
    assert int(service["RestartSec"]) >= 1
    assert service["KillMode"] == "mixed"
    assert service["KillSignal"] == "SIGTERM"
    assert service["TimeoutStopSec"] == "7500"
    assert service["StateDirectory"] == "runner-agent"
    assert service["CacheDirectory"] == "runner-agent"
    assert int(service["LimitNOFILE"]) >= 65536
    assert service["RestartPreventExitStatus"] == "2"
    assert service["Delegate"] == "yes"  # per-job cgroups under the service's own cgroup
    assert unit["Unit"]["After"] == "network-online.target"
    assert unit["Unit"]["Wants"] == "network-online.target"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert KEY not in unit_path.read_text()
    assert stat.S_IMODE(unit_path.stat().st_mode) == 0o644


def test_env_file_is_0600_and_holds_the_settings(
    tmp_path: Path, key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    old = os.umask(0)  # even with a permissive umask the file must come out 0600
    try:
        result = invoke(
            "--runner", "3f2b1c4e-8d7a-4e21-9b6f-0a1c2d3e4f50", "--key-file", str(key_file),
            "--executable", str(EXE), "--root", str(root),
        )  # fmt: skip
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    env_path = root / "etc/runner-agent/runner-agent.env"
    assert stat.S_IMODE(env_path.stat().st_mode) == 0o600
    assert read_env(env_path) == {
        "BENCHER_HOST": "https://api.bencher.dev",
        "BENCHER_RUNNER": "3f2b1c4e-8d7a-4e21-9b6f-0a1c2d3e4f50",
        "BENCHER_RUNNER_KEY": KEY,
    }
    assert KEY not in result.output
    # no temporary files are left beside the written ones
    assert sorted(p.name for p in env_path.parent.iterdir()) == ["runner-agent.env"]
    assert sorted(p.name for p in (root / "etc/systemd/system").iterdir()) == [
        "runner-agent.service"
    ]


def test_key_and_settings_from_the_environment(tmp_path: Path) -> None:
    root = tmp_path / "root"
    env = {
        "BENCHER_HOST": "http://127.0.0.1:61016",
        "BENCHER_RUNNER": "r1",
        "BENCHER_RUNNER_KEY": KEY,
    }
    result = invoke("--executable", str(EXE), "--root", str(root), env=env)
    assert result.exit_code == 0, result.output
    assert read_env(root / "etc/runner-agent/runner-agent.env") == env


def test_dry_run_writes_nothing_and_hides_the_key(tmp_path: Path, key_file: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    result = invoke(
        "--runner", "r1", "--key-file", str(key_file), "--executable", str(EXE),
        "--root", str(root), "--dry-run",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert list(root.iterdir()) == []
    assert "[Service]" in result.output
    assert "KillMode=mixed" in result.output
    assert "BENCHER_RUNNER=r1" in result.output
    assert "BENCHER_RUNNER_KEY=<redacted: 45 characters>" in result.output
    assert KEY not in result.output
    assert "nothing written" in result.output


def test_refuses_to_overwrite_env_file_without_force(tmp_path: Path, key_file: Path) -> None:
    root = tmp_path / "root"
    args = ["--runner", "r1", "--executable", str(EXE), "--root", str(root)]
    assert invoke(*args, "--key-file", str(key_file)).exit_code == 0
    env_path = root / "etc/runner-agent/runner-agent.env"
    before = env_path.read_text()
    refused = invoke(*args, "--key", OTHER_KEY)
    assert refused.exit_code == 1
    assert "already exists; pass --force" in refused.output
    assert env_path.read_text() == before
    forced = invoke(*args, "--key", OTHER_KEY, "--force")
    assert forced.exit_code == 0, forced.output
    assert read_env(env_path)["BENCHER_RUNNER_KEY"] == OTHER_KEY
    assert stat.S_IMODE(env_path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--key", KEY], "no runner given"),
        (["--runner", "r1"], "no runner key given"),
        (["--runner", "r1", "--key", "bencher_runner_short"], "not a runner key"),
        (["--runner", "Not A Slug", "--key", KEY], "expected a runner UUID or slug"),
        (
            ["--runner", "r1", "--key", KEY, "--host", "ftp://x"],
            "expected an http:// or https:// URL",
        ),
        (["--runner", "r1", "--key", KEY, "--config", "/etc/nope.toml"], "does not exist"),
        (["--runner", "r1", "--key", KEY, "--drain-timeout", "5"], "--drain-timeout"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    root = tmp_path / "root"
    result = invoke(*args, "--executable", str(EXE), "--root", str(root))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "bencher_runner_short" not in result.output  # a malformed key is never echoed
    assert not root.exists()


def test_key_and_key_file_together_is_an_error(tmp_path: Path, key_file: Path) -> None:
    result = invoke(
        "--runner", "r1", "--key", KEY, "--key-file", str(key_file),
        "--executable", str(EXE), "--root", str(tmp_path),
    )  # fmt: skip
    assert result.exit_code == 2
    assert "use only one" in result.output


def test_invalid_config_file_is_rejected(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/agent.toml").write_text("poll-timout = 30\n")
    result = invoke(
        "--runner", "r1", "--key", KEY, "--executable", str(EXE), "--root", str(root),
        "--config", "/etc/agent.toml",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "unknown key 'poll-timout'" in result.output


def test_non_executable_is_rejected(tmp_path: Path) -> None:
    plain = tmp_path / "not-a-program"
    plain.write_text("")
    result = invoke("--runner", "r1", "--key", KEY, "--executable", str(plain), "--dry-run")
    assert result.exit_code == 1
    assert "is not an executable file" in result.output


def test_unwritable_target_is_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "etc").write_text("a file where a directory should be")
    result = invoke("--runner", "r1", "--key", KEY, "--executable", str(EXE), "--root", str(root))
    assert result.exit_code == 1
    assert f"cannot write {root}/etc" in result.output


def test_exec_start_quotes_awkward_paths() -> None:
    spec = ServiceSpec(
        executable=Path("/opt/my tools/100%/runner-agent"), host="https://x", runner="r", key=KEY
    )
    assert exec_start(spec) == '"/opt/my tools/100%%/runner-agent" run'
    assert systemd_quote('a"b\\c') == '"a\\"b\\\\c"'
    assert systemd_quote("$HOME") == '"$$HOME"'
    with pytest.raises(ServiceError, match="control characters"):
        systemd_quote("a\nb")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"host": "https://x/$(id)"}, "cannot go into the environment file"),
        ({"runner": "a b"}, "cannot go into the environment file"),
        ({"executable": Path("runner-agent")}, "absolute path"),
        ({"env_file": Path("/etc/my env")}, "without spaces"),
        ({"drain_timeout_s": 1}, "out of range"),
        ({"limit_nofile": 10}, "at least 1024"),
    ],
)
def test_spec_validation(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {
        "executable": Path("/usr/bin/runner-agent"),
        "host": "https://x",
        "runner": "r",
        "key": KEY,
    }
    with pytest.raises(ServiceError, match=message):
        ServiceSpec(**{**base, **kwargs})  # type: ignore[arg-type]


def test_spec_repr_hides_the_key() -> None:
    spec = ServiceSpec(executable=EXE, host="https://x", runner="r", key=KEY)
    assert KEY not in repr(spec)


def example_spec() -> ServiceSpec:
    """The spec behind scripts/runner-agent.service (the layout scripts/provision.sh produces)."""
    return ServiceSpec(
        executable=Path("/usr/local/bin/runner-agent"),
        host="https://api.bencher.dev",
        runner="my-runner",
        key=KEY,
        config_file=None,
        drain_timeout_s=DEFAULT_DRAIN_TIMEOUT_S,
    )


def test_example_unit_in_scripts_is_current() -> None:
    example = (REPO / "scripts/runner-agent.service").read_text()
    assert example == render_unit(example_spec()), (
        "scripts/runner-agent.service is stale; regenerate it with: .venv/bin/python -c "
        "'from tests.test_service import example_spec; from runner_agent.service import render_unit; "
        'print(render_unit(example_spec()), end="")\' > scripts/runner-agent.service'
    )


def test_provision_script_parses_and_checks_its_arguments() -> None:
    script = REPO / "scripts/provision.sh"
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    if shutil.which("shellcheck"):
        lint = subprocess.run(
            ["shellcheck", str(script)], capture_output=True, text=True, timeout=60
        )
        assert lint.returncode == 0, lint.stdout
    shown = subprocess.run(
        ["bash", str(script), "--help"], capture_output=True, text=True, timeout=30
    )
    assert shown.returncode == 0
    assert "--key-file PATH" in shown.stdout
    assert "runner-agent install-service" in shown.stdout
    missing = subprocess.run(
        ["bash", str(script), "--runner", "r1"], capture_output=True, text=True, timeout=30
    )
    assert missing.returncode == 2
    assert "--key-file PATH is required" in missing.stderr


def test_config_file_host_is_not_overridden_by_the_default(tmp_path: Path, key_file: Path) -> None:
    """The env file outranks the config file at run time, so it must carry the config file's host
    (not the built-in default) when --host and BENCHER_HOST are not given."""
    root = tmp_path / "root"
    (root / "etc/runner-agent").mkdir(parents=True)
    (root / "etc/runner-agent/config.toml").write_text('host = "https://bencher.example.com"\n')
    result = invoke(
        "--runner", "r1", "--key-file", str(key_file), "--executable", str(EXE),
        "--root", str(root), "--config", "/etc/runner-agent/config.toml",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    env = read_env(root / "etc/runner-agent/runner-agent.env")
    assert env["BENCHER_HOST"] == "https://bencher.example.com"
    result = invoke(
        "--runner", "r1", "--key-file", str(key_file), "--executable", str(EXE), "--force",
        "--root", str(root), "--config", "/etc/runner-agent/config.toml", "--host", "https://other.example.com",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert read_env(root / "etc/runner-agent/runner-agent.env")["BENCHER_HOST"] == "https://other.example.com"
