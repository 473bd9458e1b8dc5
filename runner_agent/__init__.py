"""runner-agent: a Bencher-compatible benchmark runner agent built on trio."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("runner-agent")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
