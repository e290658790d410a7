"""pyxia: a sharded, replicated metadata store and coordination service.

pyxia speaks Oxia's client protocol; its write-ahead log is written in Rust
(``pyxia._native``).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pyxia")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["__version__"]
