"""The agent's configuration: one frozen `Config` built from flags > env > TOML file > defaults.

Every setting is described once in `SETTINGS` (name, type, default, range, help); the `run` command's
flags, the environment variable names, the TOML keys, `runner-agent config show` and the docs are all
generated from that table, so they cannot drift apart.

Precedence (highest first):
  1. command-line flag            ``--poll-timeout 30``
  2. environment variable         ``BENCHER_HOST``, ``BENCHER_RUNNER``, ``BENCHER_RUNNER_KEY``;
                                  ``RUNNER_AGENT_<NAME>`` for the rest (e.g. ``RUNNER_AGENT_POLL_TIMEOUT``)
  3. TOML file                    ``--config PATH`` (or ``RUNNER_AGENT_CONFIG``); by default
                                  ``/etc/runner-agent/config.toml`` when that file exists. Keys are the
                                  flag names without ``--`` (``poll-timeout = 30``; ``poll_timeout`` is
                                  accepted too).
  4. built-in default

``key`` and ``key-file`` are alternatives: the one from the higher-precedence source wins; both at the
same level is an error. Unknown keys and wrong types are `ConfigError`s that name the key and where it
came from; the CLI turns them into exit status 2.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from uuid import UUID

import platformdirs
from attrs import field, frozen

from runner_agent.errors import AgentError
from runner_agent.host.tuning import TUNABLE_NAMES

APP_NAME = "runner-agent"
DEFAULT_CONFIG_FILE = Path("/etc/runner-agent/config.toml")
CONFIG_ENV = "RUNNER_AGENT_CONFIG"
DEFAULT_HOST = "https://api.bencher.dev"
DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024

SettingType = Literal["str", "int", "float", "bool", "path", "choice"]
SourceKind = Literal["flag", "env", "file", "default"]


class ConfigError(AgentError):
    """A configuration value is missing, unknown or invalid; the message names the key and its source."""


@frozen
class Setting:
    """One configuration key: how it is spelled on every surface and what values it accepts."""

    name: str  # attribute name on Config (snake_case)
    type: SettingType
    help: str
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    env: str | None = None  # override of the RUNNER_AGENT_<NAME> spelling
    secret: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def file_key(self) -> str:
        return self.name.replace("_", "-")

    @property
    def env_var(self) -> str:
        return self.env or "RUNNER_AGENT_" + self.name.upper()


def _default_dir(kind: Literal["state", "cache"]) -> Path:
    """Root gets the FHS system paths; other users get platformdirs' per-user paths."""
    if os.geteuid() == 0:
        return Path("/var/lib" if kind == "state" else "/var/cache") / APP_NAME
    if kind == "state":
        return Path(platformdirs.user_state_dir(APP_NAME))
    return Path(platformdirs.user_cache_dir(APP_NAME))


SETTINGS: tuple[Setting, ...] = (
    Setting("host", "str", "Bencher API URL (http, https; base path kept).", DEFAULT_HOST,
            env="BENCHER_HOST"),
    Setting("runner", "str", "Runner UUID or slug.", env="BENCHER_RUNNER"),
    Setting("key", "str", "Runner key (bencher_runner_...). Prefer --key-file or the env var: "
            "a flag is visible in `ps`.", env="BENCHER_RUNNER_KEY", secret=True),
    Setting("key_file", "path", "File holding the runner key; re-read at every connect."),
    Setting("poll_timeout", "int", "Seconds the server may hold a `ready` before `no_job`.", 55,
            minimum=1, maximum=900),
    Setting("heartbeat_interval", "float", "Seconds between heartbeats while a job runs.", 1.0,
            minimum=0.01, maximum=60),
    Setting("state_dir", "path", "Durable state (outbox of undelivered results, dead letters). "
            "Default: /var/lib/runner-agent as root, else the per-user state dir."),
    Setting("cache_dir", "path", "Image cache. Default: /var/cache/runner-agent as root, else the "
            "per-user cache dir."),
    Setting("cache_max_bytes", "int", "Image cache size limit in bytes.", 20 * 1024**3, minimum=1),
    Setting("max_message_size", "int", "Largest WebSocket message in bytes, both directions "
            "(Bencher's default request_body_max_bytes).", DEFAULT_MAX_MESSAGE_SIZE,
            minimum=64 * 1024, maximum=1024**3),
    Setting("danger_allow_no_sandbox", "bool", "Run benchmarks on the host when bubblewrap is "
            "unavailable (no isolation!).", False),
    Setting("log_format", "choice", "Log line format.", "text", choices=("text", "json")),
    Setting("log_level", "choice", "Lowest level logged.", "info",
            choices=("debug", "info", "warning", "error")),
    Setting("exit_after_jobs", "int", "Serve this many jobs, then exit 0 (ephemeral machines).",
            minimum=1),
    Setting("ca_bundle", "path", "PEM file of CA certificates to trust for wss:// (private CA)."),
    Setting("insecure", "bool", "Allow plain ws:// (http://) to a non-loopback host.", False),
    Setting("connect_timeout", "float", "Seconds allowed for TCP+TLS+WebSocket handshake.", 30.0,
            minimum=0.1, maximum=600),
    Setting("close_timeout", "float", "Seconds allowed for the closing handshake.", 5.0,
            minimum=0.1, maximum=600),
    Setting("exit_on_auth_failure", "bool", "Exit with status 3 when authentication is probably "
            "rejected (repeated immediate closes). HTTP 401/403 always exit 3.", False),
    Setting("ack_timeout", "float", "Seconds to wait for the server's reply to any message that "
            "expects one (running, heartbeat, a result); when it expires the connection is closed "
            "and unacknowledged results are re-sent first on the next one.", 10.0,
            minimum=0.1, maximum=3600),
    Setting("max_delivery_attempts", "int", "Sends of one result before it is dead-lettered.", 10,
            minimum=1, maximum=1000),
    Setting("kill_grace", "float", "Seconds between SIGTERM and SIGKILL when a job is aborted.", 5.0,
            minimum=0, maximum=600),
    Setting("benchmark_cpus", "str", "CPU list reserved for benchmarks, e.g. 2-7."),
    Setting("housekeeping_cpus", "str", "CPU list for the agent itself, e.g. 0-1."),
    Setting("tune", "bool", "Apply host tuning at start-up and restore it at exit (root only).",
            False),
    Setting("tune_skip", "str", "Tuning steps --tune leaves alone, as one comma-separated string "
            "(also in the config file: tune-skip = \"smt,turbo\"). Names: "
            + ", ".join(TUNABLE_NAMES) + "."),
    Setting("metrics_file", "path", "Append one JSON record per benchmark iteration to this file."),
    Setting("health_addr", "str", "Serve /healthz and /metrics on HOST:PORT (e.g. 127.0.0.1:9464)."),
)

SETTINGS_BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


@frozen
class Source:
    """Where one effective value came from."""

    kind: SourceKind
    detail: str = ""  # the flag, env var name or file path

    def describe(self) -> str:
        return self.kind if not self.detail else f"{self.kind} {self.detail}"


@frozen
class Config:
    """The effective configuration of one agent process (see module docstring for precedence)."""

    host: str = DEFAULT_HOST
    runner: str | None = None
    key: str | None = field(default=None, repr=False)
    key_file: Path | None = None
    poll_timeout: int = 55
    heartbeat_interval: float = 1.0
    state_dir: Path = field(factory=lambda: _default_dir("state"))
    cache_dir: Path = field(factory=lambda: _default_dir("cache"))
    cache_max_bytes: int = 20 * 1024**3
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    danger_allow_no_sandbox: bool = False
    log_format: str = "text"
    log_level: str = "info"
    exit_after_jobs: int | None = None
    ca_bundle: Path | None = None
    insecure: bool = False
    connect_timeout: float = 30.0
    close_timeout: float = 5.0
    exit_on_auth_failure: bool = False
    ack_timeout: float = 10.0
    max_delivery_attempts: int = 10
    kill_grace: float = 5.0
    benchmark_cpus: str | None = None
    housekeeping_cpus: str | None = None
    tune: bool = False
    tune_skip: str | None = None  # comma-separated, validated at load; see tune_skip_names
    metrics_file: Path | None = None
    health_addr: str | None = None
    config_file: Path | None = None
    sources: Mapping[str, Source] = field(factory=dict, repr=False, eq=False)

    @property
    def tune_skip_names(self) -> tuple[str, ...]:
        """The ``--tune-skip`` names, in the order given (empty when not set)."""
        return tuple(name.strip() for name in self.tune_skip.split(",")) if self.tune_skip else ()

    def source_of(self, name: str) -> Source:
        return self.sources.get(name, Source("default"))

    def require_runnable(self) -> None:
        """Cross-field checks for `run`: a runner and exactly one way to get the key."""
        if not self.runner:
            raise ConfigError(
                "no runner given: pass --runner ID, set BENCHER_RUNNER, or `runner = \"…\"` in the config file"
            )
        if self.key is None and self.key_file is None:
            raise ConfigError(
                "no runner key given: pass --key-file PATH (recommended), set BENCHER_RUNNER_KEY, "
                "or `key-file = \"…\"` in the config file"
            )
        if self.key_file is not None and not self.key_file.is_file():
            raise ConfigError(f"key-file ({self.source_of('key_file').describe()}): "
                              f"{self.key_file} does not exist or is not a file")
        if self.ca_bundle is not None and not self.ca_bundle.is_file():
            raise ConfigError(f"ca-bundle ({self.source_of('ca_bundle').describe()}): "
                              f"{self.ca_bundle} does not exist or is not a file")


# ---------------------------------------------------------------------------------------------------
# value conversion and validation


_SLUG_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _where(setting: Setting, source: Source) -> str:
    return f"{setting.file_key} ({source.describe()})"


def _convert(setting: Setting, raw: object, source: Source, *, from_text: bool) -> object:
    """Turn one raw value (a TOML value, a click value or an env string) into the setting's type."""
    where = _where(setting, source)
    value: object
    if setting.type == "bool":
        if isinstance(raw, bool):
            value = raw
        elif from_text and isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            value = raw.strip().lower() in _TRUE
        else:
            raise ConfigError(f"{where}: expected a boolean (true/false), got {raw!r}")
    elif setting.type == "int":
        if isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        elif from_text and isinstance(raw, str) and re.fullmatch(r"\s*[+-]?\d+\s*", raw):
            value = int(raw)
        else:
            raise ConfigError(f"{where}: expected an integer, got {raw!r}")
    elif setting.type == "float":
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            value = float(raw)
        elif from_text and isinstance(raw, str):
            try:
                value = float(raw)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {raw!r}") from None
        else:
            raise ConfigError(f"{where}: expected a number, got {raw!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {raw!r}")
    elif setting.type in ("str", "choice", "path"):
        if isinstance(raw, Path):
            raw = str(raw)
        if not isinstance(raw, str):
            hint = (" (write the names as one comma-separated string, e.g. \"smt,turbo\")"
                    if setting.name == "tune_skip" and isinstance(raw, list) else "")
            raise ConfigError(f"{where}: expected a string, got {raw!r}{hint}")
        if setting.type == "choice":
            value = raw.strip().lower()
            if value not in setting.choices:
                raise ConfigError(f"{where}: expected one of {', '.join(setting.choices)}, got {raw!r}")
        elif setting.type == "path":
            if not raw.strip():
                raise ConfigError(f"{where}: expected a path, got an empty string")
            value = Path(raw).expanduser()
            if not value.is_absolute():
                # Relative paths mean: relative to the config file that names them, else to the
                # working directory at start-up. Children (bwrap) run elsewhere, so resolve now.
                base = Path(source.detail).parent if source.kind == "file" else Path.cwd()
                value = base / value
        else:
            value = raw.strip()
            if not value:
                raise ConfigError(f"{where}: must not be empty")
    else:  # pragma: no cover - the table only uses the types above
        raise AssertionError(setting.type)
    if isinstance(value, int | float) and not isinstance(value, bool):
        if setting.minimum is not None and value < setting.minimum:
            raise ConfigError(f"{where}: must be at least {_num(setting.minimum)}, got {value}")
        if setting.maximum is not None and value > setting.maximum:
            raise ConfigError(f"{where}: must be at most {_num(setting.maximum)}, got {value}")
    _SPECIFIC_CHECKS.get(setting.name, _no_check)(value, where)
    return value


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _no_check(value: object, where: str) -> None:
    return None


def _check_host(value: object, where: str) -> None:
    assert isinstance(value, str)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https", "ws", "wss"):
        raise ConfigError(f"{where}: expected an http:// or https:// URL, got {value!r}")
    if not parts.hostname:
        raise ConfigError(f"{where}: URL has no host name: {value!r}")
    if parts.query or parts.fragment:
        raise ConfigError(f"{where}: URL must not have a query or fragment: {value!r}")
    try:
        _ = parts.port
    except ValueError:
        raise ConfigError(f"{where}: URL has an invalid port: {value!r}") from None


def _check_runner(value: object, where: str) -> None:
    assert isinstance(value, str)
    try:
        UUID(value)
        return
    except ValueError:
        pass
    if len(value) > 64 or not _SLUG_RE.match(value):
        raise ConfigError(
            f"{where}: expected a runner UUID or slug (lowercase letters, digits and dashes, "
            f"at most 64 characters), got {value!r}"
        )


def _check_key(value: object, where: str) -> None:
    from runner_agent.protocol import RUNNER_KEY_PREFIX, is_valid_runner_key

    assert isinstance(value, str)
    if not is_valid_runner_key(value):
        # Never echo the value: it is a secret even when malformed.
        raise ConfigError(
            f"{where}: not a runner key (expected {RUNNER_KEY_PREFIX} followed by 30 letters/digits, "
            f"got {len(value)} characters)"
        )


def _check_cpulist(value: object, where: str) -> None:
    assert isinstance(value, str)
    if not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", value.replace(" ", "")):
        raise ConfigError(f"{where}: expected a CPU list like 0-3,8,10-11, got {value!r}")


def split_tune_skip(value: str, where: str) -> tuple[str, ...]:
    """``"smt, turbo"`` → ``("smt", "turbo")``; unknown, empty or repeated names are errors."""
    names = tuple(part.strip() for part in value.split(","))
    if any(not name for name in names):
        raise ConfigError(f"{where}: empty name in {value!r} (expected names separated by commas, "
                          f"e.g. smt,turbo)")
    unknown = [name for name in names if name not in TUNABLE_NAMES]
    if unknown:
        raise ConfigError(f"{where}: unknown tuning name(s) {', '.join(map(repr, unknown))} "
                          f"(valid: {', '.join(TUNABLE_NAMES)})")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"{where}: {', '.join(repeated)} given more than once")
    return names


def _check_tune_skip(value: object, where: str) -> None:
    assert isinstance(value, str)
    split_tune_skip(value, where)


_SPECIFIC_CHECKS: dict[str, Callable[[object, str], None]] = {
    "host": _check_host,
    "runner": _check_runner,
    "key": _check_key,
    "benchmark_cpus": _check_cpulist,
    "housekeeping_cpus": _check_cpulist,
    "tune_skip": _check_tune_skip,
}


# ---------------------------------------------------------------------------------------------------
# loading


def read_config_file(path: Path) -> dict[str, object]:
    """Parse a TOML config file into ``{setting name: raw value}``; unknown keys are errors."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    out: dict[str, object] = {}
    for raw_key, value in data.items():
        name = raw_key.replace("-", "_")
        if name not in SETTINGS_BY_NAME or name == "config":
            known = ", ".join(s.file_key for s in SETTINGS)
            raise ConfigError(f"config file {path}: unknown key {raw_key!r} (known keys: {known})")
        if name in out:
            raise ConfigError(f"config file {path}: key {raw_key!r} is given twice (dash and underscore)")
        if isinstance(value, dict):
            raise ConfigError(f"config file {path}: key {raw_key!r} must be a value, not a table")
        out[name] = value
    return out


def load_config(
    flags: Mapping[str, object | None],
    env: Mapping[str, str],
    config_file: Path | None = None,
    *,
    default_config_file: Path | None = DEFAULT_CONFIG_FILE,
) -> Config:
    """Build the effective `Config`.

    ``flags`` maps setting names to click values (None = not given); ``config_file`` is the explicit
    ``--config`` value. Raises `ConfigError` naming the key for anything invalid.
    """
    unknown = set(flags) - set(SETTINGS_BY_NAME)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    path: Path | None
    if config_file is not None:
        path = config_file
    elif env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV])
    elif default_config_file is not None and default_config_file.is_file():
        path = default_config_file
    else:
        path = None
    file_values = read_config_file(path) if path is not None else {}

    values: dict[str, object] = {}
    sources: dict[str, Source] = {}
    levels: dict[str, int] = {}
    for setting in SETTINGS:
        flag_value = flags.get(setting.name)
        if flag_value is not None:
            src = Source("flag", setting.flag)
            values[setting.name] = _convert(setting, flag_value, src, from_text=False)
            sources[setting.name], levels[setting.name] = src, 3
        elif env.get(setting.env_var) not in (None, ""):
            src = Source("env", setting.env_var)
            values[setting.name] = _convert(setting, env[setting.env_var], src, from_text=True)
            sources[setting.name], levels[setting.name] = src, 2
        elif setting.name in file_values:
            src = Source("file", str(path))
            values[setting.name] = _convert(setting, file_values[setting.name], src, from_text=False)
            sources[setting.name], levels[setting.name] = src, 1
        elif setting.default is not None:
            values[setting.name] = setting.default
            sources[setting.name], levels[setting.name] = Source("default"), 0

    # key and key-file are alternatives: the higher-precedence source wins.
    if "key" in values and "key_file" in values:
        if levels["key"] == levels["key_file"]:
            raise ConfigError(
                f"both key ({sources['key'].describe()}) and key-file "
                f"({sources['key_file'].describe()}) are given; use only one"
            )
        loser = "key" if levels["key"] < levels["key_file"] else "key_file"
        del values[loser]
        sources[loser] = Source("default", f"(overridden by {'key-file' if loser == 'key' else 'key'})")

    for kind in ("state_dir", "cache_dir"):
        if kind not in values:
            values[kind] = _default_dir("state" if kind == "state_dir" else "cache")
            sources[kind] = Source("default")
    return Config(**values, config_file=path, sources=sources)  # type: ignore[arg-type]


def read_key(config: Config) -> str:
    """The runner key to use for the next connection (``key_file`` is read again every time)."""
    if config.key_file is not None:
        where = f"key-file {config.key_file}"
        try:
            text = config.key_file.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{where}: cannot be read: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{where}: is not UTF-8 text") from None
        key = text.strip()
        setting = SETTINGS_BY_NAME["key"]
        _check_key(key, f"{setting.file_key} (read from {where})")
        return key
    if config.key is None:
        raise ConfigError("no runner key configured")
    return config.key


def redacted(value: object, setting: Setting) -> str:
    """A display form of a value: secrets are never shown."""
    if value is None:
        return "(not set)"
    if setting.secret:
        return f"<redacted, {len(str(value))} characters>"
    return str(value)
