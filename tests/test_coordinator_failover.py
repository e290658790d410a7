"""Two coordinators on one etcd: the leader loses its lease, steps down
without exiting, the other takes over from the metadata as it is then, and
the shards keep serving throughout."""

from __future__ import annotations

import asyncio
import base64
import uuid
from pathlib import Path

import httpx

from cluster import Cluster
from pyxia.config import NamespaceConfig
from pyxia.coordinator.metadata.etcd import EtcdMetadataProvider
from pyxia.coordinator.server import CoordinatorServer, CoordinatorServerOptions
from servers import wait_until
from test_coordinator import FAST, leader_of, make_config, steady, write
from test_metadata_providers import etcd_server  # noqa: F401 - fixture


class _View:
    """What the helpers of test_coordinator expect: .coordinator and .cluster."""

    def __init__(self, cluster: Cluster, server: CoordinatorServer) -> None:
        self.cluster = cluster
        self.server = server

    @property
    def coordinator(self):  # type: ignore[no-untyped-def]
        assert self.server.coordinator is not None
        return self.server.coordinator


async def test_lease_loss_hands_over_without_exiting(tmp_path: Path, etcd_server: str) -> None:  # noqa: F811
    cluster = await Cluster.start(tmp_path, 3)
    cfg = make_config(cluster.nodes, (NamespaceConfig("default", 2, 3),))
    prefix = f"/pyxia-coord-{uuid.uuid4().hex[:8]}"

    def server(name: str) -> CoordinatorServer:
        provider = EtcdMetadataProvider(
            etcd_server, prefix=prefix, identity=name, lease_ttl=2, campaign_interval=0.05
        )
        return CoordinatorServer(
            provider,
            lambda: cfg,
            CoordinatorServerOptions(
                internal_addr="127.0.0.1:0", metrics_addr=None, coordinator=FAST
            ),
        )

    a, b = server("coordinator-a"), server("coordinator-b")
    try:
        await a.start()
        await b.start()
        await wait_until(lambda: a.is_leader or b.is_leader, what="a leader")
        leader, standby = (a, b) if a.is_leader else (b, a)
        view = _View(cluster, leader)
        await wait_until(lambda: steady(view), timeout=30, what="shards elected")
        for s in range(2):
            await write(view, leader_of(view, s), s, f"/before{s}")

        # Revoke the leader's lease behind its back.
        def etcd(path: str, body: dict[str, object]) -> dict[str, object]:
            r = httpx.post(f"{etcd_server}{path}", json=body, timeout=10, trust_env=False)
            r.raise_for_status()
            out: dict[str, object] = r.json()
            return out

        key = base64.b64encode(f"{prefix}/coordinator-leader".encode()).decode()
        kvs = etcd("/v3/kv/range", {"key": key})["kvs"]
        etcd("/v3/lease/revoke", {"ID": kvs[0]["lease"]})  # type: ignore[index]

        await wait_until(lambda: standby.is_leader, timeout=20, what="the standby to take over")
        # The old leader stepped down and did not exit: its server still runs.
        assert not leader._closed
        await wait_until(
            lambda: leader.coordinator is None or leader.generation > 1,
            what="the old leader to step down",
        )
        view = _View(cluster, standby)
        await wait_until(lambda: steady(view), timeout=30, what="shards steady under the new one")
        for s in range(2):
            await write(view, leader_of(view, s), s, f"/after{s}")
        # The new coordinator still handles failures.
        victim = leader_of(view, 0)
        await victim.stop()
        await wait_until(
            lambda: steady(view) and leader_of(view, 0) is not victim,
            timeout=30,
            what="failover under the new coordinator",
        )
        await write(view, leader_of(view, 0), 0, "/after-failover")
    finally:
        await asyncio.gather(a.close(), b.close())
        await cluster.close()
