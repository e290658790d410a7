"""TCP proxies, one per (source process, destination) link, that can partition, delay or cut
the traffic of that link.

Each process of the cluster dials its peers through its own proxies (``PYXIA_DIAL_MAP``, see
:mod:`pyxia.test_hooks`), so a fault can act on one direction of one link. Modes of a link:

- ``pass``: bytes are forwarded as they come;
- ``blackhole``: nothing is forwarded in either direction (the connections stall, as across a
  network partition that drops packets; TCP retransmits once it heals, so a connection that
  outlives a short partition resumes intact); new connections are accepted but not dialed;
- ``refuse``: current connections are reset and new ones are closed at once (a partition that
  answers with RST);
- ``delay``: every chunk is forwarded ``ms`` milliseconds after it arrived (order kept);
- ``flaky``: like ``pass``, but each connection is cut after a random lifetime (mean ``ms``).

The proxies run in their own process (``python -m pyxia.robustness.proxy``) so that forwarding
never competes with the harness's event loop; :class:`ProxyControl` drives it over JSON lines
on its stdin/stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

MODES = ("pass", "blackhole", "refuse", "delay", "flaky")
_CHUNK = 256 * 1024


@dataclass
class LinkState:
    mode: str = "pass"
    ms: float = 0.0
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.gate.set()


class _Conn:
    def __init__(
        self, link: Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.link = link
        self.client_reader = reader
        self.client_writer = writer
        self.upstream_writer: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.closed = False

    async def run(self) -> None:
        link = self.link
        try:
            await link.state.gate.wait()  # blackholed: the connection waits, undialed
            if self.closed or link.state.mode == "refuse":
                return
            up_reader, up_writer = await asyncio.open_connection(*link.target_hostport)
        except (OSError, asyncio.CancelledError):
            self.close()
            return
        self.upstream_writer = up_writer
        _nodelay(up_writer)
        loop = asyncio.get_running_loop()
        self.tasks = [
            loop.create_task(self._pump(self.client_reader, up_writer)),
            loop.create_task(self._pump(up_reader, self.client_writer)),
        ]
        if link.state.mode == "flaky":
            self.tasks.append(loop.create_task(self._cut_later(link.state.ms)))
        try:
            await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.close()

    async def _cut_later(self, mean_ms: float) -> None:
        await asyncio.sleep(random.expovariate(1000.0 / max(mean_ms, 1.0)))

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        state = self.link.state
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def reader() -> None:
            while True:
                await state.gate.wait()
                data = await src.read(_CHUNK)
                await queue.put((time.monotonic(), data) if data else None)
                if not data:
                    return

        async def writer() -> None:
            while True:
                item = await queue.get()
                if item is None:
                    return
                at, data = item
                if state.mode == "delay":
                    wait = at + state.ms / 1000.0 - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                await state.gate.wait()
                dst.write(data)
                await dst.drain()

        r = asyncio.get_running_loop().create_task(reader())
        try:
            await writer()
        except (OSError, ConnectionError):
            pass
        finally:
            r.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError, ConnectionError):
                await r

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for t in self.tasks:
            t.cancel()
        for w in (self.client_writer, self.upstream_writer):
            if w is not None:
                _reset(w)
        self.link.conns.discard(self)


def _nodelay(w: asyncio.StreamWriter) -> None:
    sock = w.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _reset(w: asyncio.StreamWriter) -> None:
    """Closes with a RST (SO_LINGER 0), as a refused/cut link would."""
    sock = w.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
    w.transport.abort()


class Link:
    """One proxy: listens on a loopback port, forwards to ``target``."""

    def __init__(self, name: str, target: str) -> None:
        self.name = name
        self.target = target
        host, _, port = target.rpartition(":")
        self.target_hostport = (host, int(port))
        self.state = LinkState()
        self.conns: set[_Conn] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> int:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", port)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self.port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.state.mode == "refuse":
            _reset(writer)
            return
        _nodelay(writer)
        c = _Conn(self, reader, writer)
        self.conns.add(c)
        await c.run()

    def set_mode(self, mode: str, ms: float = 0.0) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown link mode {mode!r}")
        st = self.state
        st.mode, st.ms = mode, ms
        if mode == "blackhole":
            st.gate.clear()
        else:
            st.gate.set()
        if mode in ("refuse", "flaky"):
            self.reset_connections()

    def reset_connections(self) -> None:
        for c in list(self.conns):
            c.close()


class ProxyServer:
    """The proxies of one run, driven by JSON-line commands."""

    def __init__(self) -> None:
        self.links: dict[str, Link] = {}

    async def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd.get("op")
        if op == "add":
            link = Link(str(cmd["name"]), str(cmd["target"]))
            port = await link.start(int(cmd.get("port", 0)))
            self.links[link.name] = link
            return {"port": port}
        if op == "set":
            for name in cmd["names"]:
                self.links[name].set_mode(str(cmd["mode"]), float(cmd.get("ms", 0.0)))
            return {}
        if op == "reset":
            for name in cmd["names"]:
                self.links[name].reset_connections()
            return {}
        if op == "ping":
            return {}
        raise ValueError(f"unknown command {op!r}")

    async def serve_stdio(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = await reader.readline()
            if not line:
                return
            try:
                cmd = json.loads(line)
                res: dict[str, Any] = {"ok": True, **await self.handle(cmd)}
            except Exception as e:
                res = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            sys.stdout.write(json.dumps(res) + "\n")
            sys.stdout.flush()


class ProxyControl:
    """The harness's handle on the proxy process."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self.ports: dict[str, int] = {}

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pyxia.robustness.proxy",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )

    async def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        proc = self.proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise RuntimeError("the proxy process is not running")
        async with self._lock:
            proc.stdin.write((json.dumps(cmd) + "\n").encode())
            await proc.stdin.drain()
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if not line:
            raise RuntimeError("the proxy process exited")
        res: dict[str, Any] = json.loads(line)
        if not res.get("ok"):
            raise RuntimeError(f"proxy command {cmd} failed: {res.get('error')}")
        return res

    async def add(self, name: str, target: str) -> str:
        res = await self.command({"op": "add", "name": name, "target": target})
        self.ports[name] = int(res["port"])
        return f"127.0.0.1:{res['port']}"

    async def set(self, names: list[str], mode: str, ms: float = 0.0) -> None:
        if names:
            await self.command({"op": "set", "names": names, "mode": mode, "ms": ms})

    async def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def main() -> None:
    asyncio.run(ProxyServer().serve_stdio())


if __name__ == "__main__":
    main()
