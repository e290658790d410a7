"""What PySyncObj may unpickle: plain data and the one class of its own it sends.

PySyncObj pickles everything it exchanges and stores: every network frame (``zlib(pickle)``,
inside a Fernet token when a password is set), the replicated commands inside log entries, the
journal's ``.meta`` file and its snapshots (``gzip(pickle)``, also streamed to followers that
fell behind). A pickle can name any importable callable, so a stock ``pickle.loads`` on those
bytes runs whatever the sender wants. The password makes PySyncObj authenticate a frame before
unpickling it; this module is the second wall: :func:`install` replaces the unpickling of the
``pysyncobj`` package with an :class:`AllowlistUnpickler`, so even a holder of the secret (or
whoever can write the journal) gets only data back, never a call.

What PySyncObj 0.3.x actually puts in those pickles (protocol 2, recorded over a round trip,
log compaction, a snapshot sent to a follower, a leadership transfer and a full restart): dicts,
lists, tuples, str, int, float, bool and None (opcodes, no class lookup); ``bytes`` as
``_codecs.encode(<str>, "latin1")`` and ``b""`` as ``__builtin__.bytes()``; ``__builtin__.set``
(the snapshot's member set); and ``pysyncobj.node.TCPNode`` (its members, rebuilt with
``object.__new__`` and a ``__dict__`` update: no code of the class runs). Those are the only
globals resolved, and each resolves to a function that accepts only the arguments PySyncObj's
own pickles give it.

Invariants:
- After :func:`install`, ``pysyncobj.pickle.loads``/``load`` and the journal's ``loads`` never
  resolve a global outside :data:`ALLOWED`; anything else raises ``pickle.UnpicklingError``
  (PySyncObj drops the connection that sent it; a bad journal or snapshot fails to load).
- There is no fallback to an unrestricted unpickler (PySyncObj's own ``loads`` retries a failed
  load with the pure-Python unpickler: that retry is gone).
- :func:`install` is idempotent.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Iterable
from typing import IO, Any

from pysyncobj.node import TCPNode

__all__ = ["ALLOWED", "AllowlistUnpickler", "install", "installed", "load", "loads"]


def _latin1_bytes(text: object, encoding: object = "latin1") -> bytes:
    """``_codecs.encode`` as protocol 2 uses it for ``bytes``: latin-1 text only."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("_codecs.encode is allowed only as bytes(str, 'latin1')")
    return text.encode("latin1")


def _empty_bytes(*args: object) -> bytes:
    """``__builtin__.bytes()``: protocol 2's form of ``b""``."""
    if args:
        raise pickle.UnpicklingError("bytes() is allowed only without arguments")
    return b""


def _node_set(items: Iterable[object] = ()) -> set[object]:
    """``set(list)``: only of hashable plain values and members (the snapshot's member set)."""
    out: set[object] = set()
    for item in items:
        if not isinstance(item, str | int | TCPNode):
            raise pickle.UnpicklingError(f"a set of {type(item).__name__} is not allowed")
        out.add(item)
    return out


# (module, name) as written in the pickle -> what it resolves to. Protocol 2 writes Python 2
# names (``__builtin__``); both spellings are listed.
ALLOWED: dict[tuple[str, str], object] = {
    ("_codecs", "encode"): _latin1_bytes,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
    ("__builtin__", "set"): _node_set,
    ("builtins", "set"): _node_set,
    ("pysyncobj.node", "TCPNode"): TCPNode,
}


class AllowlistUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in :data:`ALLOWED`."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to unpickle {module}.{name}: not a PySyncObj data type"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def loads(data: bytes | str) -> Any:
    """``pysyncobj.pickle.loads`` restricted to :data:`ALLOWED`."""
    raw = data if isinstance(data, bytes) else data.encode("utf-8")
    return AllowlistUnpickler(io.BytesIO(raw)).load()


def load(file: IO[bytes]) -> Any:
    """``pysyncobj.pickle.load`` restricted to :data:`ALLOWED`."""
    return AllowlistUnpickler(file).load()


def install() -> None:
    """Makes PySyncObj unpickle through :class:`AllowlistUnpickler` (process-wide)."""
    import pysyncobj.journal
    import pysyncobj.pickle

    pysyncobj.pickle.loads = loads
    pysyncobj.pickle.load = load
    # journal.py imported ``loads`` by name: patch its binding too.
    pysyncobj.journal.loads = loads


def installed() -> bool:
    """Whether every unpickling entry point of PySyncObj is the restricted one."""
    import pysyncobj.journal
    import pysyncobj.pickle

    entry_points: list[Callable[..., Any]] = [
        pysyncobj.pickle.loads,
        pysyncobj.pickle.load,
        pysyncobj.journal.loads,
    ]
    return entry_points == [loads, load, loads]
