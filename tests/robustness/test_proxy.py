"""The per-link TCP proxy of the robustness suite: pass, delay, blackhole (and heal without
losing bytes), refuse, flaky; and the dial map the processes read."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from pyxia.robustness.proxy import ProxyControl
from pyxia.test_hooks import dial, format_dial_map, parse_dial_map, set_dial_map

pytestmark = pytest.mark.slow  # the proxy is a process of its own


async def _echo_server() -> tuple[asyncio.Server, str]:
    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except ConnectionError:
            pass
        finally:
            w.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"127.0.0.1:{port}"


@pytest.fixture
async def proxy() -> AsyncIterator[tuple[ProxyControl, str]]:
    server, target = await _echo_server()
    ctl = ProxyControl()
    await ctl.start()
    try:
        addr = await ctl.add("a->b", target)
        yield ctl, addr
    finally:
        await ctl.close()
        server.close()
        await server.wait_closed()


async def _roundtrip(addr: str, payload: bytes = b"ping", timeout: float = 5.0) -> bytes:
    host, port = addr.rsplit(":", 1)
    r, w = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
    try:
        w.write(payload)
        await w.drain()
        return await asyncio.wait_for(r.readexactly(len(payload)), timeout)
    finally:
        w.close()


async def test_pass_and_delay(proxy: tuple[ProxyControl, str]) -> None:
    ctl, addr = proxy
    assert await _roundtrip(addr) == b"ping"
    await ctl.set(["a->b"], "delay", 150)
    t = time.monotonic()
    assert await _roundtrip(addr) == b"ping"
    assert time.monotonic() - t >= 0.29  # both directions delayed
    await ctl.set(["a->b"], "pass")
    assert await _roundtrip(addr) == b"ping"


async def test_blackhole_stalls_then_heals_intact(proxy: tuple[ProxyControl, str]) -> None:
    ctl, addr = proxy
    host, port = addr.rsplit(":", 1)
    r, w = await asyncio.open_connection(host, int(port))
    try:
        w.write(b"one")
        await w.drain()
        assert await asyncio.wait_for(r.readexactly(3), 5) == b"one"
        await ctl.set(["a->b"], "blackhole")
        w.write(b"two")
        await w.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r.readexactly(3), 0.5)
        with pytest.raises(TimeoutError):  # new connections hang as well
            await _roundtrip(addr, timeout=0.5)
        await ctl.set(["a->b"], "pass")
        assert await asyncio.wait_for(r.readexactly(3), 5) == b"two"
    finally:
        w.close()


async def test_refuse_resets_connections(proxy: tuple[ProxyControl, str]) -> None:
    ctl, addr = proxy
    host, port = addr.rsplit(":", 1)
    r, w = await asyncio.open_connection(host, int(port))
    w.write(b"x")
    await w.drain()
    assert await asyncio.wait_for(r.readexactly(1), 5) == b"x"
    await ctl.set(["a->b"], "refuse")
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(r.readexactly(1), 5)
    w.close()
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await _roundtrip(addr)
    await ctl.set(["a->b"], "pass")
    assert await _roundtrip(addr) == b"ping"


async def test_flaky_cuts_connections(proxy: tuple[ProxyControl, str]) -> None:
    ctl, addr = proxy
    await ctl.set(["a->b"], "flaky", 50)
    host, port = addr.rsplit(":", 1)
    r, w = await asyncio.open_connection(host, int(port))

    async def chat() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            w.write(b"y")
            await w.drain()
            await asyncio.wait_for(r.readexactly(1), 5)

    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await chat()
    w.close()


def test_dial_map() -> None:
    m = parse_dial_map(" a:1=b:2, c:3=d:4 ,")
    assert m == {"a:1": "b:2", "c:3": "d:4"}
    assert parse_dial_map(format_dial_map(m)) == m
    with pytest.raises(ValueError, match="dest=proxy"):
        parse_dial_map("a:1")
    set_dial_map(m)
    try:
        assert dial("a:1") == "b:2"
        assert dial("x:9") == "x:9"
    finally:
        set_dial_map({})
    assert dial("a:1") == "a:1"
