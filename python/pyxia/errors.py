"""pyxia's one error vocabulary.

Every domain error is a :class:`PyxiaError` with Oxia's 0.17 ``reason``
(the ``google.rpc.ErrorInfo`` reason on the wire) and the standard gRPC code
it maps to. :mod:`pyxia.common.grpc_errors` is the one translation between these and gRPC
statuses, both ways: servers abort with them, and every client (the public client, the TSO
client, the coordinator, a leader calling its followers) turns statuses back into them.

A class registers its reason (and its legacy code) when it is defined, wherever it is
defined (here, :mod:`pyxia.tso.errors`, the client's recipes): a status is decoded into any
error class the receiving process has imported. A subclass that does not set its own
``reason`` shares its parent's on the wire and is not registered. Two classes may not claim
the same reason or the same legacy code.

Legacy (Oxia <= 0.16) custom gRPC codes are kept for clients that still send
or expect them.
"""

from __future__ import annotations

from typing import Any, ClassVar

ERROR_DOMAIN = "oxia.io"

_BY_REASON: dict[str, type[PyxiaError]] = {}
_BY_LEGACY: dict[int, type[PyxiaError]] = {}


def _owner_elsewhere(
    table: dict[Any, type[PyxiaError]], key: object, cls: type[PyxiaError]
) -> str | None:
    """Who else owns ``key`` (None: nobody, or ``cls`` itself defined again, as when a module
    is reloaded)."""
    other = table.get(key)
    if other is None or (other.__module__, other.__qualname__) == (
        cls.__module__,
        cls.__qualname__,
    ):
        return None
    return f"{other.__module__}.{other.__qualname__}"


def _shard_of(metadata: dict[str, str]) -> int | None:
    v = metadata.get("shard", "")
    return int(v) if v.lstrip("-").isdigit() else None


class PyxiaError(Exception):
    """Base of every pyxia domain error."""

    reason: ClassVar[str] = "UNKNOWN"
    grpc_code: ClassVar[str] = "UNKNOWN"  # a grpc.StatusCode member name
    legacy_code: ClassVar[int | None] = None
    retryable: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        claims: list[tuple[dict[Any, type[PyxiaError]], object]] = []
        if "reason" in cls.__dict__:
            claims.append((_BY_REASON, cls.reason))
        if cls.__dict__.get("legacy_code") is not None:
            claims.append((_BY_LEGACY, cls.legacy_code))
        for table, key in claims:
            owner = _owner_elsewhere(table, key, cls)
            if owner is not None:
                raise TypeError(f"{cls.__qualname__}: {key!r} already belongs to {owner}")
        for table, key in claims:
            table[key] = cls

    def __init__(self, message: str = "", *, shard: int | None = None) -> None:
        super().__init__(message or self.default_message())
        self.shard = shard

    @classmethod
    def default_message(cls) -> str:
        return "oxia: " + cls.reason.lower().replace("_", " ")

    @classmethod
    def from_details(cls, message: str, metadata: dict[str, str]) -> PyxiaError:
        """The error rebuilt from a status message and its ErrorInfo metadata (the inverse of
        :attr:`metadata`)."""
        return cls(message, shard=_shard_of(metadata))

    @property
    def metadata(self) -> dict[str, str]:
        """The ErrorInfo metadata for this error."""
        md: dict[str, str] = {}
        if self.shard is not None:
            md["shard"] = str(self.shard)
        return md


class NotInitialized(PyxiaError):
    reason = "NOT_INITIALIZED"
    grpc_code = "UNAVAILABLE"
    legacy_code = 100
    retryable = True


class InvalidTerm(PyxiaError):
    reason = "INVALID_TERM"
    grpc_code = "FAILED_PRECONDITION"
    legacy_code = 101


class InvalidStatus(PyxiaError):
    reason = "INVALID_STATUS"
    grpc_code = "FAILED_PRECONDITION"
    legacy_code = 102


class Cancelled(PyxiaError):
    reason = "CANCELLED"
    grpc_code = "CANCELLED"
    legacy_code = 103
    retryable = True


class AlreadyClosed(PyxiaError):
    reason = "ALREADY_CLOSED"
    grpc_code = "ABORTED"
    legacy_code = 104
    retryable = True


class LeaderAlreadyConnected(PyxiaError):
    reason = "RESOURCE_CONFLICT"
    grpc_code = "FAILED_PRECONDITION"
    legacy_code = 105


class NodeIsNotLeader(PyxiaError):
    """This node does not lead the shard; ``leader_hint`` names one that may."""

    reason = "NODE_IS_NOT_LEADER"
    grpc_code = "ABORTED"
    legacy_code = 106
    retryable = True

    def __init__(
        self, message: str = "", *, shard: int | None = None, leader_hint: str | None = None
    ) -> None:
        super().__init__(message, shard=shard)
        self.leader_hint = leader_hint

    @classmethod
    def from_details(cls, message: str, metadata: dict[str, str]) -> PyxiaError:
        return cls(message, shard=_shard_of(metadata), leader_hint=metadata.get("leader"))

    @property
    def metadata(self) -> dict[str, str]:
        md = super().metadata
        if self.leader_hint:
            md["leader"] = self.leader_hint
        return md


class CoordinatorIsNotLeader(NodeIsNotLeader):
    """This coordinator does not lead; ``leader_hint`` is the admin address of the one that
    does (Oxia's ``coordinator-leader`` ErrorInfo metadata, which its admin client follows).
    NODE_IS_NOT_LEADER on the wire: it decodes as :class:`NodeIsNotLeader`, and
    :func:`pyxia.common.grpc_errors.coordinator_leader_hint` reads the hint."""

    def __init__(self, message: str = "", *, leader_hint: str) -> None:
        super().__init__(message, leader_hint=leader_hint)

    @property
    def metadata(self) -> dict[str, str]:
        return {"coordinator-leader": self.leader_hint or ""}


class NodeIsNotFollower(PyxiaError):
    reason = "NODE_IS_NOT_FOLLOWER"
    grpc_code = "FAILED_PRECONDITION"
    legacy_code = 107


class SessionNotFound(PyxiaError):
    reason = "SESSION_NOT_FOUND"
    grpc_code = "NOT_FOUND"
    legacy_code = 108


class InvalidSessionTimeout(PyxiaError):
    reason = "INVALID_SESSION_TIMEOUT"
    grpc_code = "INVALID_ARGUMENT"
    legacy_code = 109


class NamespaceNotFound(PyxiaError):
    reason = "NAMESPACE_NOT_FOUND"
    grpc_code = "NOT_FOUND"
    legacy_code = 110


class NotificationsNotEnabled(PyxiaError):
    reason = "NOTIFICATIONS_NOT_ENABLED"
    grpc_code = "FAILED_PRECONDITION"
    legacy_code = 111


class NodeIsNotMember(PyxiaError):
    """The node holds no replica of the shard (e.g. its data was wiped)."""

    reason = "NODE_IS_NOT_MEMBER"
    grpc_code = "ABORTED"
    legacy_code = 112


class ShardNotFound(PyxiaError):
    reason = "SHARD_NOT_FOUND"
    grpc_code = "NOT_FOUND"


class ResourceUnavailable(PyxiaError):
    reason = "RESOURCE_UNAVAILABLE"
    grpc_code = "UNAVAILABLE"
    retryable = True


class InvalidArgument(PyxiaError):
    """A malformed request (empty key, bad sequence deltas, ...)."""

    reason = "INVALID_ARGUMENT"
    grpc_code = "INVALID_ARGUMENT"


class Unauthenticated(PyxiaError):
    """The call carries no valid bearer token (missing, malformed, expired, wrong issuer or
    audience, bad signature) while the server requires one; or an internal call carries no
    cluster instance id."""

    reason = "UNAUTHENTICATED"
    grpc_code = "UNAUTHENTICATED"


class PermissionDenied(PyxiaError):
    """The caller is authenticated but not allowed to do this (the namespace's read or write,
    or a privileged field such as ``override_version_id`` or ``include_internal_keys``; on
    the internal port: another cluster's instance id, a call to a standalone server)."""

    reason = "PERMISSION_DENIED"
    grpc_code = "PERMISSION_DENIED"


class RequestTooLarge(PyxiaError):
    reason = "REQUEST_TOO_LARGE"
    grpc_code = "RESOURCE_EXHAUSTED"


class ResourceExhausted(PyxiaError):
    """A bound on what one server holds was reached (open shard replicas, ...): nothing was
    allocated; the caller may retry once something was released."""

    reason = "RESOURCE_EXHAUSTED"
    grpc_code = "RESOURCE_EXHAUSTED"


class NotFound(PyxiaError):
    """An admin request names a namespace, data server or shard the cluster does not have."""

    reason = "NOT_FOUND"
    grpc_code = "NOT_FOUND"


class AlreadyExists(PyxiaError):
    """An admin request creates a namespace or data server that exists already."""

    reason = "ALREADY_EXISTS"
    grpc_code = "ALREADY_EXISTS"


class FailedPrecondition(PyxiaError):
    """An admin request is well formed but the cluster's state refuses it (a replication
    factor above the number of data servers, an item the cluster config file defines, ...);
    the message says what to change first."""

    reason = "FAILED_PRECONDITION"
    grpc_code = "FAILED_PRECONDITION"


class Unimplemented(PyxiaError):
    """The request is valid but this build cannot do it (a feature not built in yet)."""

    reason = "UNIMPLEMENTED"
    grpc_code = "UNIMPLEMENTED"


class StorageFailure(PyxiaError):
    """The shard's storage (WAL or DB) failed; the shard stops serving."""

    reason = "STORAGE_FAILURE"
    grpc_code = "INTERNAL"


class ReplicaCorrupt(StorageFailure):
    """A replica's WAL or DB was found corrupt when the shard was opened. A cluster server
    moves the damaged files aside and rebuilds the replica from its peers; a standalone (no
    peers) refuses to start. ``part`` is "wal" or "db"; the message says what to do."""

    def __init__(
        self, message: str = "", *, shard: int | None = None, namespace: str = "", part: str = ""
    ) -> None:
        super().__init__(message, shard=shard)
        self.namespace = namespace
        self.part = part


class WriteIndeterminate(PyxiaError):
    """The leader logged the write, then stopped leading (a new term, closing, a storage
    failure) before it was committed: a new leader may still commit it, or not. A client may
    resend only a write whose second application is harmless."""

    reason = "WRITE_INDETERMINATE"
    grpc_code = "UNAVAILABLE"


class MetadataBadVersion(PyxiaError):
    """A compare-and-set on cluster metadata lost: someone else wrote first."""

    reason = "METADATA_BAD_VERSION"
    grpc_code = "ABORTED"


# -- what a caller sees of a call that got no domain answer --------------------------------------


class Unavailable(PyxiaError):
    """The server could not be reached, or the connection broke."""

    reason = "UNAVAILABLE"
    grpc_code = "UNAVAILABLE"
    retryable = True


class RequestTimeout(PyxiaError, TimeoutError):
    """The request did not complete within its deadline (``request_timeout_s``)."""

    reason = "DEADLINE_EXCEEDED"
    grpc_code = "DEADLINE_EXCEEDED"


class RequestIndeterminate(PyxiaError):
    """A conditional or sequential write was sent, then the connection broke before its answer:
    it may or may not have been applied. Read the key to find out (retrying could apply it
    twice or report a false conflict)."""

    reason = "INDETERMINATE"
    grpc_code = "UNAVAILABLE"


class ClientClosed(PyxiaError):
    reason = "CLIENT_CLOSED"
    grpc_code = "CANCELLED"


# -- per-operation statuses of the client API -----------------------------------------------------


class KeyNotFound(PyxiaError):
    """No record has the key (or none matched the comparison)."""

    reason = "KEY_NOT_FOUND"
    grpc_code = "NOT_FOUND"


class UnexpectedVersion(PyxiaError):
    """The record's version is not the expected one (or it exists though it must not)."""

    reason = "UNEXPECTED_VERSION_ID"
    grpc_code = "FAILED_PRECONDITION"


UnexpectedVersionId = UnexpectedVersion


def from_reason(
    reason: str, message: str = "", metadata: dict[str, str] | None = None
) -> PyxiaError:
    """Rebuilds a domain error from an ErrorInfo reason and metadata (a reason no imported
    class registered: a plain :class:`PyxiaError`)."""
    cls = _BY_REASON.get(reason, PyxiaError)
    return cls.from_details(message, metadata or {})


def from_legacy_code(code: int, message: str = "") -> PyxiaError | None:
    """The domain error for an Oxia <= 0.16 custom status code, if any."""
    cls = _BY_LEGACY.get(code)
    return cls(message) if cls is not None else None
