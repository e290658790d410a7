"""Oxia's admin service (``io.oxia.proto.v1.OxiaAdmin``) on the coordinator, and who may change
the cluster through it.

Every RPC checks its request at the boundary (:mod:`pyxia.coordinator.admin_config` holds the
rules, pure) before anything is touched; a refused request changes nothing and the coordinator
keeps serving. Domain errors become gRPC statuses here and only here: INVALID_ARGUMENT,
NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION (which includes "the cluster config file
defines this"), UNAUTHENTICATED, UNIMPLEMENTED (SplitShard before the coordinator can split).
While this coordinator does not lead, every RPC gets the error ``not_leading()`` makes (the
server's: ABORTED ``NODE_IS_NOT_LEADER`` with the leader's admin address in the
``coordinator-leader`` ErrorInfo metadata, which Oxia's admin client follows, or UNAVAILABLE
``NOT_INITIALIZED`` while no leader is known).

**Who may change the cluster** (:class:`AdminAccess`). Reads (List*/Get*) are open to whoever
reaches the port (its TLS decides who that is). A change (Create*/Patch*/Delete*, SplitShard,
and pyxia's MoveLeader) is admitted when one of these holds:

1. the port demands client certificates (``--tls-client-auth``): TLS admitted only holders of
   a certificate the cluster's CA signed;
2. the call carries a fresh proof made with the cluster secret (``--cluster-secret-file``, as
   ``pyxia admin`` sends it);
3. ``--admin-trust-loopback`` is on and the caller is on this host (127.0.0.0/8, ::1): the way
   Oxia's own ``oxia admin`` CLI, which sends no proof and speaks no TLS, is let in — bind the
   admin port to loopback and run the CLI next to the coordinator;
4. the coordinator has no cluster security at all (no secret, no peer TLS): an in-process
   coordinator of tests; ``pyxia coordinator`` never runs like that.

Anything else is UNAUTHENTICATED with a message naming these ways in.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from pyxia.common import grpc_errors
from pyxia.coordinator import admin_config
from pyxia.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotInitialized,
    PyxiaError,
    Unauthenticated,
)
from pyxia.proto import metadata_pb2, oxia_admin_pb2
from pyxia.security.cluster_auth import ClusterSecret
from pyxia.security.internal_auth import proof_of

if TYPE_CHECKING:
    from pyxia.coordinator.coordinator import Coordinator

log = logging.getLogger("pyxia.coordinator.admin")

SERVICE = "io.oxia.proto.v1.OxiaAdmin"
Req = TypeVar("Req")
Res = TypeVar("Res")


def is_loopback_peer(peer: str | None) -> bool:
    """Whether a gRPC peer string (``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``) is on this
    host. Unix sockets and anything unparsable are not."""
    if not peer:
        return False
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        host = rest.rpartition(":")[0]
    elif kind == "ipv6":
        host = rest.rpartition(":")[0].strip("[]")
        host = host.split("%", 1)[0]
    else:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class AdminAccess:
    """Who may change the cluster through the coordinator (see the module docstring)."""

    secret: ClusterSecret | None = None
    mutual_tls: bool = False
    trust_loopback: bool = False
    unsecured: bool = False  # no secret and no peer TLS: in-process tests only

    def refusal(self, method: str, metadata: Any, peer: str | None) -> str | None:
        """Why a change through ``method`` is refused, or None when it is admitted."""
        if self.mutual_tls or self.unsecured:
            return None
        if self.trust_loopback and is_loopback_peer(peer):
            return None
        if self.secret is not None:
            reason = self.secret.verify(method, proof_of(metadata))
            if reason is None:
                return None
        else:
            reason = "no proof can be checked (the coordinator has no cluster secret)"
        ways = ["the cluster secret (--cluster-secret-file)" if self.secret else None]
        ways += [
            "a client certificate of the cluster's CA (the coordinator's --tls-client-auth)",
            "a call from the coordinator's host with --admin-trust-loopback",
        ]
        return f"{reason} for {method}: changes need " + ", or ".join(w for w in ways if w)

    def check(self, context: Any, method: str) -> None:
        reason = self.refusal(method, context.invocation_metadata(), context.peer())
        if reason is not None:
            log.warning("admin change refused from %s: %s", context.peer(), reason)
            raise Unauthenticated(f"pyxia: {reason}")


def _state(c: Coordinator, internal: str) -> metadata_pb2.DataServerState.ValueType:
    if internal in c.leaving:
        return metadata_pb2.DATA_SERVER_STATE_DRAINING
    if c.is_available(internal):
        return metadata_pb2.DATA_SERVER_STATE_RUNNING
    return metadata_pb2.DATA_SERVER_STATE_UNAVAILABLE


def data_server_view(c: Coordinator, name: str) -> oxia_admin_pb2.DataServerView:
    s = admin_config.find_server(c.config, name)
    return oxia_admin_pb2.DataServerView(
        data_server=admin_config.data_server_proto(s, admin_config.labels_of(c.config, s)),
        data_server_status=metadata_pb2.DataServerStatus(state=_state(c, s.internal)),
    )


def namespace_view(c: Coordinator, name: str) -> oxia_admin_pb2.NamespaceView:
    ns = admin_config.find_namespace(c.config, name)
    view = oxia_admin_pb2.NamespaceView(namespace=admin_config.namespace_proto(ns))
    status = c.status.namespaces.get(name)
    if status is not None:
        view.namespace_status.CopyFrom(status)
    return view


class OxiaAdminService:
    """The OxiaAdmin handlers over whichever coordinator leads now (``current()``)."""

    def __init__(
        self,
        current: Callable[[], Coordinator | None],
        access: AdminAccess,
        source: str,
        not_leading: Callable[[], Awaitable[PyxiaError]] | None = None,
    ) -> None:
        self._current = current
        self.access = access
        self.source = source  # the cluster config file, named in "the file wins" errors
        self._not_leading = not_leading  # the error while this coordinator does not lead

    async def _leader(self) -> Coordinator:
        c = self._current()
        if c is None:
            if self._not_leading is not None:
                raise await self._not_leading()
            raise NotInitialized("oxia: this coordinator does not lead")
        return c

    # -- reads ------------------------------------------------------------------------------------

    async def list_data_servers(
        self, req: oxia_admin_pb2.ListDataServersRequest, context: Any
    ) -> oxia_admin_pb2.ListDataServersResponse:
        c = await self._leader()
        return oxia_admin_pb2.ListDataServersResponse(
            data_servers=[data_server_view(c, admin_config.server_key(s)) for s in c.config.servers]
        )

    async def get_data_server(
        self, req: oxia_admin_pb2.GetDataServerRequest, context: Any
    ) -> oxia_admin_pb2.GetDataServerResponse:
        c = await self._leader()
        return oxia_admin_pb2.GetDataServerResponse(
            data_server=data_server_view(c, req.data_server)
        )

    async def list_namespaces(
        self, req: oxia_admin_pb2.ListNamespacesRequest, context: Any
    ) -> oxia_admin_pb2.ListNamespacesResponse:
        c = await self._leader()
        return oxia_admin_pb2.ListNamespacesResponse(
            namespaces=[namespace_view(c, n.name) for n in c.config.namespaces]
        )

    async def get_namespace(
        self, req: oxia_admin_pb2.GetNamespaceRequest, context: Any
    ) -> oxia_admin_pb2.GetNamespaceResponse:
        c = await self._leader()
        return oxia_admin_pb2.GetNamespaceResponse(namespace=namespace_view(c, req.namespace))

    # -- changes ----------------------------------------------------------------------------------

    async def create_data_server(
        self, req: oxia_admin_pb2.CreateDataServerRequest, context: Any
    ) -> oxia_admin_pb2.CreateDataServerResponse:
        c = await self._leader()
        if not req.HasField("data_server"):
            raise InvalidArgument("oxia: data server must not be empty")
        created = await c.change_admin_config(
            lambda st: admin_config.create_data_server(
                st.admin_managed, c.file_config, req.data_server, self.source
            )
        )
        log.info("data server %s created through the admin API", created.identity.name)
        return oxia_admin_pb2.CreateDataServerResponse(data_server=created)

    async def patch_data_server(
        self, req: oxia_admin_pb2.PatchDataServerRequest, context: Any
    ) -> oxia_admin_pb2.PatchDataServerResponse:
        c = await self._leader()
        if not req.HasField("data_server"):
            raise InvalidArgument("oxia: data server must not be empty")

        def change(st: metadata_pb2.ClusterStatus) -> metadata_pb2.DataServer:
            out, before = admin_config.patch_data_server(
                st.admin_managed, c.file_config, req.data_server, self.source, c.hosts_replicas
            )
            after = admin_config.server_address(out.identity)
            if (after.public, after.internal) != (before.public, before.internal):
                admin_config.rewrite_identities(st, before, after)
            return out

        patched = await c.change_admin_config(change)
        log.info("data server %s patched through the admin API", patched.identity.name)
        return oxia_admin_pb2.PatchDataServerResponse(data_server=patched)

    async def delete_data_server(
        self, req: oxia_admin_pb2.DeleteDataServerRequest, context: Any
    ) -> oxia_admin_pb2.DeleteDataServerResponse:
        c = await self._leader()
        deleted = await c.change_admin_config(
            lambda st: admin_config.delete_data_server(
                st.admin_managed, c.file_config, req.data_server, self.source
            )
        )
        log.info(
            "data server %s deleted through the admin API: its replicas move elsewhere",
            req.data_server,
        )
        return oxia_admin_pb2.DeleteDataServerResponse(data_server=deleted)

    async def create_namespace(
        self, req: oxia_admin_pb2.CreateNamespaceRequest, context: Any
    ) -> oxia_admin_pb2.CreateNamespaceResponse:
        c = await self._leader()
        if not req.HasField("namespace"):
            raise InvalidArgument("oxia: namespace must not be empty")
        created = await c.change_admin_config(
            lambda st: admin_config.create_namespace(
                st.admin_managed, c.file_config, st, req.namespace, self.source
            )
        )
        log.info("namespace %s created through the admin API", created.name)
        return oxia_admin_pb2.CreateNamespaceResponse(namespace=created)

    async def patch_namespace(
        self, req: oxia_admin_pb2.PatchNamespaceRequest, context: Any
    ) -> oxia_admin_pb2.PatchNamespaceResponse:
        c = await self._leader()
        if not req.HasField("namespace"):
            raise InvalidArgument("oxia: namespace must not be empty")
        patched = await c.change_admin_config(
            lambda st: admin_config.patch_namespace(
                st.admin_managed, c.file_config, req.namespace, self.source
            )
        )
        log.info("namespace %s patched through the admin API", patched.name)
        return oxia_admin_pb2.PatchNamespaceResponse(namespace=patched)

    async def delete_namespace(
        self, req: oxia_admin_pb2.DeleteNamespaceRequest, context: Any
    ) -> oxia_admin_pb2.DeleteNamespaceResponse:
        c = await self._leader()
        splitting = sorted(
            parent
            for parent, split in c.split_controllers.items()
            if split.namespace == req.namespace
        )
        if splitting:
            # A split's children would outlive the namespace: it ends (cut over or aborted) in
            # its timeout at most; the deletion is refused until then.
            raise FailedPrecondition(
                f"oxia: namespace {req.namespace!r} has a split in progress (shard "
                f"{', '.join(map(str, splitting))}); delete it once the split ended"
            )
        deleted = await c.change_admin_config(
            lambda st: admin_config.delete_namespace(
                st.admin_managed, c.file_config, req.namespace, self.source
            )
        )
        log.info("namespace %s deleted through the admin API: its shards are deleted", deleted.name)
        return oxia_admin_pb2.DeleteNamespaceResponse(namespace=deleted)

    async def split_shard(
        self, req: oxia_admin_pb2.SplitShardRequest, context: Any
    ) -> oxia_admin_pb2.SplitShardResponse:
        c = await self._leader()
        split_point = req.split_point if req.HasField("split_point") else None
        admin_config.check_split_request(c.config, c.status, req.namespace, req.shard, split_point)
        # Returns the children's ids once the split started (it goes on in its controller,
        # docs/split.md), as Oxia's SplitShard does.
        left, right = await c.split_shard(req.namespace, req.shard, split_point)
        log.info(
            "shard %d of namespace %s split through the admin API: children %d and %d",
            req.shard,
            req.namespace,
            left,
            right,
        )
        return oxia_admin_pb2.SplitShardResponse(left_child_shard=left, right_child_shard=right)

    # -- wiring -----------------------------------------------------------------------------------

    def _wrap(
        self,
        name: str,
        fn: Callable[[Req, Any], Awaitable[Res]],
        *,
        change: bool,
    ) -> Callable[[Req, Any], Awaitable[Res]]:
        method = f"/{SERVICE}/{name}"

        async def handler(req: Req, context: Any) -> Res:
            try:
                if change:
                    self.access.check(context, method)
                return await fn(req, context)
            except PyxiaError as e:
                await grpc_errors.abort(context, e)
                raise  # unreachable: abort raises

        return handler

    def handler(self) -> grpc.GenericRpcHandler:
        reads: dict[str, tuple[Callable[[Any, Any], Awaitable[Any]], Any, Any]] = {
            "ListDataServers": (
                self.list_data_servers,
                oxia_admin_pb2.ListDataServersRequest,
                oxia_admin_pb2.ListDataServersResponse,
            ),
            "GetDataServer": (
                self.get_data_server,
                oxia_admin_pb2.GetDataServerRequest,
                oxia_admin_pb2.GetDataServerResponse,
            ),
            "ListNamespaces": (
                self.list_namespaces,
                oxia_admin_pb2.ListNamespacesRequest,
                oxia_admin_pb2.ListNamespacesResponse,
            ),
            "GetNamespace": (
                self.get_namespace,
                oxia_admin_pb2.GetNamespaceRequest,
                oxia_admin_pb2.GetNamespaceResponse,
            ),
        }
        changes: dict[str, tuple[Callable[[Any, Any], Awaitable[Any]], Any, Any]] = {
            "CreateDataServer": (
                self.create_data_server,
                oxia_admin_pb2.CreateDataServerRequest,
                oxia_admin_pb2.CreateDataServerResponse,
            ),
            "PatchDataServer": (
                self.patch_data_server,
                oxia_admin_pb2.PatchDataServerRequest,
                oxia_admin_pb2.PatchDataServerResponse,
            ),
            "DeleteDataServer": (
                self.delete_data_server,
                oxia_admin_pb2.DeleteDataServerRequest,
                oxia_admin_pb2.DeleteDataServerResponse,
            ),
            "CreateNamespace": (
                self.create_namespace,
                oxia_admin_pb2.CreateNamespaceRequest,
                oxia_admin_pb2.CreateNamespaceResponse,
            ),
            "PatchNamespace": (
                self.patch_namespace,
                oxia_admin_pb2.PatchNamespaceRequest,
                oxia_admin_pb2.PatchNamespaceResponse,
            ),
            "DeleteNamespace": (
                self.delete_namespace,
                oxia_admin_pb2.DeleteNamespaceRequest,
                oxia_admin_pb2.DeleteNamespaceResponse,
            ),
            "SplitShard": (
                self.split_shard,
                oxia_admin_pb2.SplitShardRequest,
                oxia_admin_pb2.SplitShardResponse,
            ),
        }
        methods = {}
        for table, change in ((reads, False), (changes, True)):
            for name, (fn, req_t, res_t) in table.items():
                methods[name] = grpc.unary_unary_rpc_method_handler(
                    self._wrap(name, fn, change=change),
                    request_deserializer=req_t.FromString,
                    response_serializer=res_t.SerializeToString,
                )
        return grpc.method_handlers_generic_handler(SERVICE, methods)
