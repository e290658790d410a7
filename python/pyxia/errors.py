"""pyxia's one error vocabulary.

Every domain error is a :class:`PyxiaError` with Oxia's 0.17 ``reason``
(the ``google.rpc.ErrorInfo`` reason on the wire) and the standard gRPC code
it maps to. Only ``pyxia.server.grpc_errors`` turns these into gRPC statuses,
and only client code turns statuses back into them (``from_reason``).

Legacy (Oxia <= 0.16) custom gRPC codes are kept for clients that still send
or expect them.
"""

from __future__ import annotations

from typing import ClassVar

ERROR_DOMAIN = "oxia.io"


class PyxiaError(Exception):
    """Base of every pyxia domain error."""

    reason: ClassVar[str] = "UNKNOWN"
    grpc_code: ClassVar[str] = "UNKNOWN"  # a grpc.StatusCode member name
    legacy_code: ClassVar[int | None] = None
    retryable: ClassVar[bool] = False

    def __init__(self, message: str = "", *, shard: int | None = None) -> None:
        super().__init__(message or self.default_message())
        self.shard = shard

    @classmethod
    def default_message(cls) -> str:
        return "oxia: " + cls.reason.lower().replace("_", " ")

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


ResourceConflict = LeaderAlreadyConnected


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

    @property
    def metadata(self) -> dict[str, str]:
        md = super().metadata
        if self.leader_hint:
            md["leader"] = self.leader_hint
        return md


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


_BY_REASON: dict[str, type[PyxiaError]] = {}
_BY_LEGACY: dict[int, type[PyxiaError]] = {}


def _register(cls: type[PyxiaError]) -> None:
    for sub in cls.__subclasses__():
        _BY_REASON.setdefault(sub.reason, sub)
        if sub.legacy_code is not None:
            _BY_LEGACY.setdefault(sub.legacy_code, sub)
        _register(sub)


_register(PyxiaError)


def from_reason(
    reason: str, message: str = "", metadata: dict[str, str] | None = None
) -> PyxiaError:
    """Rebuilds a domain error from an ErrorInfo reason and metadata."""
    md = metadata or {}
    cls = _BY_REASON.get(reason, PyxiaError)
    shard = int(md["shard"]) if md.get("shard", "").lstrip("-").isdigit() else None
    if cls is NodeIsNotLeader:
        return NodeIsNotLeader(message, shard=shard, leader_hint=md.get("leader"))
    err = cls(message, shard=shard)
    return err


def from_legacy_code(code: int, message: str = "") -> PyxiaError | None:
    """The domain error for an Oxia <= 0.16 custom status code, if any."""
    cls = _BY_LEGACY.get(code)
    return cls(message) if cls is not None else None
