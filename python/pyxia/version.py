"""The installed distribution's version (``0.0.0`` when running from a source tree that was
never installed). Re-exported as ``pyxia.__version__``; modules of the lower floors import it
from here, not from the package root (which sits above them: it re-exports the client)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pyxia")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["__version__"]
