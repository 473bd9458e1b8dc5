"""The configuration reference in Markdown, generated from `runner_agent.config.SETTINGS`.

The README embeds it between ``<!-- config-reference:start -->`` and ``<!-- config-reference:end -->``;
``scripts/gen_readme.py`` rewrites that block and a test fails when it is stale, so the documented
flags, environment variables, TOML keys and defaults cannot drift from the code.
"""

from __future__ import annotations

from pathlib import Path

from runner_agent.config import SETTINGS, Setting

START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"


def _default(setting: Setting) -> str:
    if setting.name in ("state_dir", "cache_dir"):
        return "see below"
    if setting.default is None:
        return ""
    if isinstance(setting.default, bool):
        return f"`{str(setting.default).lower()}`"
    return f"`{setting.default}`"


def _kind(setting: Setting) -> str:
    kind = "\\|".join(setting.choices) if setting.type == "choice" else setting.type
    if setting.minimum is not None or setting.maximum is not None:
        low = "" if setting.minimum is None else f"{setting.minimum:g}"
        high = "" if setting.maximum is None else f"{setting.maximum:g}"
        kind += f" ({low}..{high})"
    return kind


def markdown_reference() -> str:
    """One table row per setting: TOML key, flag, environment variable, type, default, meaning."""
    lines = [
        "| Key (TOML) | Flag | Environment | Type | Default | Meaning |",
        "|---|---|---|---|---|---|",
    ]
    for s in SETTINGS:
        text = s.help.replace("|", "\\|")
        lines.append(f"| `{s.file_key}` | `{s.flag}` | `{s.env_var}` | {_kind(s)} | "
                     f"{_default(s)} | {text} |")
    return "\n".join(lines)


def render_into(readme: str) -> str:
    """``readme`` with its reference block replaced by the current reference."""
    head, sep, rest = readme.partition(START)
    if not sep:
        raise ValueError(f"README has no {START} marker")
    _, sep2, tail = rest.partition(END)
    if not sep2:
        raise ValueError(f"README has no {END} marker")
    return f"{head}{START}\n{markdown_reference()}\n{END}{tail}"


def update_readme(path: Path) -> bool:
    """Rewrite the block in ``path``; True when it changed."""
    old = path.read_text()
    new = render_into(old)
    if new != old:
        path.write_text(new)
    return new != old
