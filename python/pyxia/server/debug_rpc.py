"""``pyxia.debug.v1.Debug``: test hooks on a data server's internal port, served only when the
server runs with ``--enable-test-hooks`` (off by default). The robustness suite uses it to arm
named failpoints (:mod:`pyxia.failpoints`) in a running server.

Messages are JSON objects (no protobuf schema: this is a test-only surface):

- ``ArmFailpoint {"name": ..., "action": "crash" | "raise" | "sleep(MS)" | "N*..."}`` → ``{}``
- ``DisarmFailpoint {"name": ... | null}`` → ``{}`` (null disarms every failpoint)
- ``FailpointHits {"name": ...}`` → ``{"hits": N}``
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from pyxia import failpoints
from pyxia.security.cluster_auth import ClusterSecret
from pyxia.security.internal_auth import internal_channel
from pyxia.security.tls import ClientTls

log = logging.getLogger("pyxia.debug")

SERVICE = "pyxia.debug.v1.Debug"

Handler = Callable[[dict[str, Any]], dict[str, Any]]


def _arm(req: dict[str, Any]) -> dict[str, Any]:
    name, action = str(req["name"]), str(req["action"])
    failpoints.arm(name, action)
    log.warning("test hook: failpoint %s armed with %s", name, action)
    return {}


def _disarm(req: dict[str, Any]) -> dict[str, Any]:
    name = req.get("name")
    failpoints.disarm(None if name is None else str(name))
    return {}


def _hits(req: dict[str, Any]) -> dict[str, Any]:
    return {"hits": failpoints.hits(str(req["name"]))}


def _method(fn: Handler) -> Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Awaitable[bytes]]:
    async def call(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        try:
            req = json.loads(raw or b"{}")
            if not isinstance(req, dict):
                raise ValueError("the request must be a JSON object")
            return json.dumps(fn(req)).encode()
        except (ValueError, KeyError) as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"debug: {e}")
            raise  # unreachable: abort raises

    return call


def debug_handler() -> grpc.GenericRpcHandler:
    methods = {"ArmFailpoint": _arm, "DisarmFailpoint": _disarm, "FailpointHits": _hits}
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            name: grpc.unary_unary_rpc_method_handler(
                _method(fn), request_deserializer=None, response_serializer=None
            )
            for name, fn in methods.items()
        },
    )


def call_debug(
    address: str,
    method: str,
    request: dict[str, Any],
    timeout: float = 5.0,
    *,
    tls: ClientTls | None = None,
    secret: ClusterSecret | None = None,
) -> Any:
    """Calls the debug service of the server at ``address`` (blocking; it sits on the internal
    port, so the call proves cluster membership like any other: ``tls``, ``secret``)."""
    with internal_channel(address, tls, secret) as ch:
        call: Any = ch.unary_unary(f"/{SERVICE}/{method}")
        raw: bytes = call(json.dumps(request).encode(), timeout=timeout)
    return json.loads(raw)
