"""A result handed from an event loop's thread to a waiting thread (a lock: the cheapest
wake-up between threads). The sync clients (``pyxia.Client``, ``pyxia.TsoClient``) use it."""

from __future__ import annotations

import _thread
from typing import Any

from pyxia.client.errors import RequestTimeout


class Waiter:
    """One result (or exception), set once by the loop thread, waited for by another thread."""

    __slots__ = ("_done", "_exc", "_lock", "_result")

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()
        self._done = False
        self._result: Any = None
        self._exc: BaseException | None = None

    def done(self) -> bool:
        return self._done

    def set_result(self, result: Any, /) -> None:
        if not self._done:
            self._result = result
            self._done = True
            self._lock.release()

    def set_exception(self, exc: BaseException, /) -> None:
        if not self._done:
            self._exc = exc
            self._done = True
            self._lock.release()

    def wait(self, timeout: float, who: str = "oxia") -> Any:
        if not self._lock.acquire(timeout=timeout):
            raise RequestTimeout(f"{who}: no answer from the client's event loop")
        if self._exc is not None:
            raise self._exc
        return self._result
