"""``pyxia perf``'s load loop and the client's fast paths it uses, against an in-process
standalone: every operation issued is counted once (answered, or failed), reads and writes in
the asked mix; ``plain_get_op``/``plain_put_op`` build the same operations as the general
``get_ops``/``put_op``."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pyxia.client import AsyncClient
from pyxia.client.errors import InvalidOptions
from pyxia.client.perf import PerfConfig, run_perf
from pyxia.config import NamespaceConfig
from pyxia.node import standalone
from pyxia.server.data_server import ServerOptions
from pyxia.server.standalone import Standalone


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Standalone]:
    node = standalone(
        ServerOptions(
            public_addr="127.0.0.1:0",
            internal_addr="127.0.0.1:0",
            metrics_addr=None,
            data_dir=tmp_path / "db",
            wal_dir=tmp_path / "wal",
            wal_sync_data=False,
            tso=None,
        ),
        [NamespaceConfig("default", 2, 1)],
    )
    await node.start()
    try:
        yield node
    finally:
        await node.close()


async def test_the_load_counts_every_operation_once(server: Standalone) -> None:
    cfg = PerfConfig(
        service_address=server.server.public_address,
        rate=0,
        read_percentage=50.0,
        keys_cardinality=100,
        duration_s=1.0,
        report_interval_s=0.5,
        max_outstanding=200,
    )
    progress = io.StringIO()
    result = await run_perf(cfg, progress)
    w = result["_window"]
    assert w.failed == 0
    assert len(w.write_ms) > 100 and len(w.read_ms) > 100
    assert 0.3 < len(w.read_ms) / (len(w.read_ms) + len(w.write_ms)) < 0.7
    assert all(ms >= 0 for ms in w.write_ms + w.read_ms)
    assert "Stats - Total ops" in progress.getvalue()
    # every key read after the run holds the value the load wrote
    async with AsyncClient(cfg.service_address) as client:
        keys = [f"key-{i}" for i in range(cfg.keys_cardinality)]
        got = await asyncio.gather(*(client.get(k) for k in keys), return_exceptions=True)
        values = {r.value for r in got if not isinstance(r, BaseException)}
        assert len(values) == 1 and len(next(iter(values))) == cfg.value_size


async def test_plain_ops_are_the_general_ones(server: Standalone) -> None:
    async with AsyncClient(server.server.public_address) as client:
        core = client.core
        loop = asyncio.get_running_loop()
        for key in ("a", "key-7", "/x/y", "é"):
            fast = core.plain_get_op(key, loop.create_future())
            general = core.get_ops(key, loop.create_future())
            assert len(general) == 1
            g = general[0]
            assert (fast.key, fast.partition_key, fast.fields, fast.shard) == (
                g.key,
                g.partition_key,
                g.fields,
                g.shard,
            )
            pf = core.plain_put_op(key, b"v", loop.create_future())
            pg = core.put_op(key, b"v", loop.create_future())
            assert (pf.key, pf.fields, pf.shard, pf.safe) == (pg.key, pg.fields, pg.shard, pg.safe)
        # what the fast paths do not take goes the general way, and its checks
        with pytest.raises(InvalidOptions):
            core.plain_get_op(b"k", loop.create_future())  # type: ignore[arg-type]
        with pytest.raises(InvalidOptions):
            core.plain_put_op("__oxia/x", b"v", loop.create_future())
