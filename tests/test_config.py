"""Configuration: precedence flag > env > file > default, errors naming the key, `config show`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from runner_agent.cli import main
from runner_agent.config import SETTINGS, ConfigError, load_config, read_key

KEY_A = "bencher_runner_" + "a" * 30
KEY_B = "bencher_runner_" + "B1" * 15


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def load(flags: dict[str, object] | None = None, env: dict[str, str] | None = None,
         file: Path | None = None) -> object:
    return load_config(flags or {}, env or {}, file, default_config_file=None)


def test_defaults_when_nothing_given() -> None:
    config = load_config({}, {}, None, default_config_file=None)
    assert config.host == "https://api.bencher.dev"
    assert config.poll_timeout == 55
    assert config.heartbeat_interval == 1.0
    assert config.max_message_size == 4 * 1024 * 1024
    assert config.log_format == "text"
    assert config.runner is None
    assert config.source_of("poll_timeout").kind == "default"
    assert config.config_file is None


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    file = write(tmp_path / "c.toml", 'poll-timeout = 10\nheartbeat_interval = 0.5\nhost = "http://file:1"\n'
                 'runner = "from-file"\n')
    env = {"RUNNER_AGENT_POLL_TIMEOUT": "20", "BENCHER_HOST": "https://env.example"}
    config = load_config({"poll_timeout": 30}, env, file, default_config_file=None)
    assert config.poll_timeout == 30
    assert config.source_of("poll_timeout").describe() == "flag --poll-timeout"
    assert config.host == "https://env.example"
    assert config.source_of("host").describe() == "env BENCHER_HOST"
    assert config.heartbeat_interval == 0.5
    assert config.source_of("heartbeat_interval").describe() == f"file {file}"
    assert config.runner == "from-file"
    assert config.max_message_size == 4 * 1024 * 1024
    assert config.source_of("max_message_size").kind == "default"

    config = load_config({}, env, file, default_config_file=None)
    assert config.poll_timeout == 20


def test_default_config_file_used_only_when_it_exists(tmp_path: Path) -> None:
    default = tmp_path / "etc.toml"
    assert load_config({}, {}, None, default_config_file=default).config_file is None
    write(default, "poll-timeout = 12\n")
    config = load_config({}, {}, None, default_config_file=default)
    assert config.poll_timeout == 12
    assert config.config_file == default


def test_config_env_var_names_the_file(tmp_path: Path) -> None:
    file = write(tmp_path / "c.toml", "exit-after-jobs = 3\n")
    config = load_config({}, {"RUNNER_AGENT_CONFIG": str(file)}, None, default_config_file=None)
    assert config.exit_after_jobs == 3


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("pol-timeout = 3\n", "unknown key 'pol-timeout'"),
        ('poll-timeout = "3"\n', "poll-timeout"),
        ("poll-timeout = 3.5\n", "expected an integer"),
        ("poll-timeout = true\n", "expected an integer"),
        ("poll-timeout = 0\n", "at least 1"),
        ("poll-timeout = 901\n", "at most 900"),
        ("insecure = 1\n", "insecure"),
        ('log-format = "xml"\n', "log-format"),
        ('host = "ftp://x"\n', "host"),
        ('host = "https://"\n', "no host name"),
        ('runner = "Not A Slug"\n', "runner"),
        ("heartbeat-interval = nan\n", "finite"),
        ('benchmark-cpus = "0-3,x"\n', "benchmark-cpus"),
        ("[poll-timeout]\na = 1\n", "not a table"),
        ("poll-timeout = 3\npoll_timeout = 4\n", "twice"),
        ("this is not toml", "not valid TOML"),
    ],
)
def test_file_errors_name_the_key(tmp_path: Path, toml: str, needle: str) -> None:
    file = write(tmp_path / "c.toml", toml)
    with pytest.raises(ConfigError) as info:
        load_config({}, {}, file, default_config_file=None)
    assert needle in str(info.value)


def test_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config({}, {}, tmp_path / "nope.toml", default_config_file=None)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"RUNNER_AGENT_POLL_TIMEOUT": "ten"}, "poll-timeout (env RUNNER_AGENT_POLL_TIMEOUT)"),
        ({"RUNNER_AGENT_INSECURE": "maybe"}, "insecure"),
        ({"RUNNER_AGENT_HEARTBEAT_INTERVAL": "0"}, "at least 0.01"),
        ({"BENCHER_HOST": "api.bencher.dev"}, "http:// or https://"),
    ],
)
def test_env_errors_name_the_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({}, env, None, default_config_file=None)
    assert needle in str(info.value)


def test_env_booleans_and_numbers() -> None:
    config = load_config({}, {"RUNNER_AGENT_INSECURE": "yes", "RUNNER_AGENT_HEARTBEAT_INTERVAL": "0.25",
                              "RUNNER_AGENT_LOG_FORMAT": "JSON"}, None, default_config_file=None)
    assert config.insecure is True
    assert config.heartbeat_interval == 0.25
    assert config.log_format == "json"


def test_bad_key_is_rejected_without_echoing_it() -> None:
    secret = "bencher_runner_tooshort"
    with pytest.raises(ConfigError) as info:
        load_config({}, {"BENCHER_RUNNER_KEY": secret}, None, default_config_file=None)
    assert "BENCHER_RUNNER_KEY" in str(info.value)
    assert secret not in str(info.value)


def test_key_and_key_file_higher_source_wins(tmp_path: Path) -> None:
    key_file = write(tmp_path / "key", KEY_B + "\n")
    config = load_config({"key_file": key_file}, {"BENCHER_RUNNER_KEY": KEY_A}, None,
                         default_config_file=None)
    assert config.key is None
    assert read_key(config) == KEY_B
    config = load_config({"key": KEY_A}, {"RUNNER_AGENT_KEY_FILE": str(key_file)}, None,
                         default_config_file=None)
    assert config.key_file is None
    assert read_key(config) == KEY_A
    with pytest.raises(ConfigError, match="use only one"):
        load_config({"key": KEY_A, "key_file": key_file}, {}, None, default_config_file=None)


def test_key_file_is_reread_every_time(tmp_path: Path) -> None:
    key_file = write(tmp_path / "key", KEY_A)
    config = load_config({"key_file": key_file}, {}, None, default_config_file=None)
    assert read_key(config) == KEY_A
    write(key_file, KEY_B + "\n")
    assert read_key(config) == KEY_B
    write(key_file, "garbage")
    with pytest.raises(ConfigError, match="not a runner key"):
        read_key(config)
    key_file.unlink()
    with pytest.raises(ConfigError, match="cannot be read"):
        read_key(config)


def test_require_runnable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no runner given"):
        load_config({}, {}, None, default_config_file=None).require_runnable()
    with pytest.raises(ConfigError, match="no runner key"):
        load_config({"runner": "r1"}, {}, None, default_config_file=None).require_runnable()
    with pytest.raises(ConfigError, match="key-file"):
        load_config({"runner": "r1", "key_file": tmp_path / "missing"}, {}, None,
                    default_config_file=None).require_runnable()
    load_config({"runner": "r1", "key": KEY_A}, {}, None, default_config_file=None).require_runnable()


def test_every_setting_has_a_config_attribute() -> None:
    config = load_config({}, {}, None, default_config_file=None)
    for setting in SETTINGS:
        assert hasattr(config, setting.name)


def test_config_show_redacts_key_and_names_sources(tmp_path: Path) -> None:
    file = write(tmp_path / "c.toml", 'runner = "r-1"\npoll-timeout = 7\n')
    result = CliRunner().invoke(
        main, ["config", "show", "--config", str(file), "--heartbeat-interval", "2.5"],
        env={"BENCHER_RUNNER_KEY": KEY_A},
    )
    assert result.exit_code == 0, result.output
    assert KEY_A not in result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if not line.startswith("#")}
    assert "<redacted, 45 characters>" in lines["key"]
    assert "(env BENCHER_RUNNER_KEY)" in lines["key"]
    assert "(flag --heartbeat-interval)" in lines["heartbeat-interval"]
    assert f"(file {file})" in lines["poll-timeout"]
    assert "(default)" in lines["max-message-size"]


def test_config_show_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["config", "show", "--json", "--runner", "abc"],
                                env={"BENCHER_RUNNER_KEY": KEY_A, "RUNNER_AGENT_CONFIG": ""})
    assert result.exit_code == 0, result.output
    obj = json.loads(result.output)
    assert obj["settings"]["runner"] == {"value": "abc", "source": "flag --runner"}
    assert KEY_A not in result.output


def test_config_show_error_exits_2(tmp_path: Path) -> None:
    file = write(tmp_path / "c.toml", "bogus = 1\n")
    result = CliRunner().invoke(main, ["config", "show", "--config", str(file)])
    assert result.exit_code == 2
    assert "unknown key 'bogus'" in result.output


def test_config_reference_lists_every_setting() -> None:
    result = CliRunner().invoke(main, ["config", "reference"])
    assert result.exit_code == 0
    for setting in SETTINGS:
        assert f"`{setting.flag}`" in result.output and f"`{setting.env_var}`" in result.output
    assert "| `poll-timeout` | `--poll-timeout` | `RUNNER_AGENT_POLL_TIMEOUT` | int (1..900) | `55` |" in result.output


def test_relative_paths_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a relative --state-dir must not reach bwrap as a relative path (it runs in another directory)
    monkeypatch.chdir(tmp_path)
    config = load_config({"state_dir": "st", "cache_dir": None}, {"RUNNER_AGENT_CACHE_DIR": "ca"},
                         default_config_file=None)
    assert config.state_dir == tmp_path / "st"
    assert config.cache_dir == tmp_path / "ca"


def test_relative_paths_in_a_config_file_are_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    file = etc / "config.toml"
    file.write_text('state-dir = "state"\nmetrics-file = "/var/log/m.jsonl"\n')
    monkeypatch.chdir(tmp_path)
    config = load_config({}, {}, file, default_config_file=None)
    assert config.state_dir == etc / "state"
    assert config.metrics_file == Path("/var/log/m.jsonl")


# --tune-skip: one comma-separated string on every surface (flag, env and config file alike)


def test_tune_skip_from_flag_env_and_file(tmp_path: Path) -> None:
    assert load_config({}, {}, None, default_config_file=None).tune_skip_names == ()
    flag = load_config({"tune_skip": "smt, turbo"}, {}, None, default_config_file=None)
    assert flag.tune_skip_names == ("smt", "turbo")
    assert flag.source_of("tune_skip").describe() == "flag --tune-skip"
    env = load_config({}, {"RUNNER_AGENT_TUNE_SKIP": "cpuset_partition"}, None, default_config_file=None)
    assert env.tune_skip_names == ("cpuset_partition",)
    file = write(tmp_path / "c.toml", 'tune = true\ntune-skip = "aslr,irq_steering,cstates"\n')
    from_file = load_config({}, {}, file, default_config_file=None)
    assert from_file.tune and from_file.tune_skip_names == ("aslr", "irq_steering", "cstates")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("smt,hyperthreads", "unknown tuning name(s) 'hyperthreads' (valid: governor, turbo, smt,"),
        ("smt,,turbo", "empty name in 'smt,,turbo'"),
        ("smt,smt", "smt given more than once"),
    ],
)
def test_tune_skip_invalid_names_the_key_and_the_valid_names(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"tune_skip": value}, {}, None, default_config_file=None)
    assert str(info.value).startswith("tune-skip (flag --tune-skip): ")
    assert message in str(info.value)
    if "unknown" in message:
        assert "cpuset_partition" in str(info.value)  # every valid name is listed


def test_tune_skip_as_a_toml_list_is_refused_with_the_string_form(tmp_path: Path) -> None:
    file = write(tmp_path / "c.toml", 'tune-skip = ["smt", "turbo"]\n')
    with pytest.raises(ConfigError, match=r'tune-skip \(file .*c.toml\): expected a string, got '
                       r"\['smt', 'turbo'\] \(write the names as one comma-separated string"):
        load_config({}, {}, file, default_config_file=None)


def test_tune_skip_names_match_the_tuner() -> None:
    from runner_agent.host.tuning import TUNABLE_NAMES

    help_text = next(s for s in SETTINGS if s.name == "tune_skip").help
    assert all(name in help_text for name in TUNABLE_NAMES)
    every = ",".join(TUNABLE_NAMES)
    assert load_config({"tune_skip": every}, {}, None, default_config_file=None).tune_skip_names == TUNABLE_NAMES


def test_run_rejects_an_unknown_tune_skip_with_status_2() -> None:
    result = CliRunner().invoke(main, ["run", "--tune-skip", "governor,bogus"], env={})
    assert result.exit_code == 2
    assert "tune-skip (flag --tune-skip): unknown tuning name(s) 'bogus'" in result.output
