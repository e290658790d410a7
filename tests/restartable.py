"""A standalone server on fixed loopback ports (chosen at runtime), restartable after a kill -9
on the same ports and directories: for tests of the client across server restarts."""

from __future__ import annotations

from pathlib import Path

from pyxia.common.ports import free_port
from servers import ServerProcess, standalone_args


class Restartable:
    """A standalone server on fixed loopback ports, restartable on the same directories."""

    def __init__(self, base: Path, shards: int = 2) -> None:
        self.base = base
        self.public = f"127.0.0.1:{free_port()}"
        self.args = standalone_args(
            base,
            "--shards",
            str(shards),
            public=self.public,
        )
        self.proc: ServerProcess | None = None

    def start(self) -> Restartable:
        self.proc = ServerProcess(self.args, self.base).start()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def restart(self) -> None:
        self.kill()
        self.start()
