"""Loopback ports for processes started by tests and the robustness suite."""

from __future__ import annotations

import random
import socket

_taken: set[int] = set()


def free_port() -> int:
    """A loopback port that is free now, chosen below Linux's ephemeral range (32768+) so
    that outgoing connections cannot take it before the server that was given it binds it,
    and never handed out twice by this process."""
    while True:
        port = random.randint(20000, 32000)
        if port in _taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _taken.add(port)
        return port
