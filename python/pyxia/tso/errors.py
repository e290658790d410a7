"""The timestamp oracle's errors, in pyxia's one error vocabulary (``pyxia.errors``; each
registers its reason when defined, so a status carrying it decodes to it in any process that
imported this module: the TSO client does).

Their gRPC codes are tsoracle's (``FAILED_PRECONDITION`` for a non-leader, with the
``tsoracle-leader-hint-bin`` trailer; ``UNAVAILABLE`` for a transient failure; ``INTERNAL``
for a permanent one), so tsoracle's clients understand them; the ``oxia.io`` ErrorInfo detail
travels along as for every pyxia error.
"""

from __future__ import annotations

from pyxia.errors import PyxiaError


class TsoNotLeader(PyxiaError):
    """This node does not serve timestamps now (not the TSO shard's leader, or its fence is
    not finished); ``leader_endpoint`` names the leader if known."""

    reason = "TSO_NOT_LEADER"
    grpc_code = "FAILED_PRECONDITION"
    retryable = True

    def __init__(
        self,
        message: str = "",
        *,
        leader_endpoint: str | None = None,
        leader_epoch: int | None = None,
    ) -> None:
        super().__init__(message or "tso: not leader")
        self.leader_endpoint = leader_endpoint
        self.leader_epoch = leader_epoch

    @classmethod
    def from_details(cls, message: str, metadata: dict[str, str]) -> PyxiaError:
        return cls(message, leader_endpoint=metadata.get("leader"))

    @property
    def metadata(self) -> dict[str, str]:
        md = super().metadata
        if self.leader_endpoint:
            md["leader"] = self.leader_endpoint
        return md


class TsoUnavailable(PyxiaError):
    """A transient failure (quorum blip, replication timeout, an extension in trouble):
    safe to retry."""

    reason = "TSO_UNAVAILABLE"
    grpc_code = "UNAVAILABLE"
    retryable = True


class TsoFailed(PyxiaError):
    """The oracle stopped on this node after a permanent failure (corrupt high-water,
    storage failure, a clock past 46 bits): not retryable here."""

    reason = "TSO_FAILED"
    grpc_code = "INTERNAL"


class HighWaterCorrupt(PyxiaError):
    """The persisted high-water record cannot be parsed."""

    reason = "TSO_HIGH_WATER_CORRUPT"
    grpc_code = "INTERNAL"


class TimestampFallback(PyxiaError):
    """Client-side tripwire: the oracle answered a timestamp not above one this client had
    already received before asking. Never expected; the grant is not handed out."""

    reason = "TSO_TIMESTAMP_FALLBACK"
    grpc_code = "INTERNAL"


class TsoStateCorrupt(PyxiaError):
    """A persisted sequence counter or lease record cannot be parsed (permanent)."""

    reason = "TSO_STATE_CORRUPT"
    grpc_code = "INTERNAL"


# -- dense sequences ------------------------------------------------------------------------------


class SeqKeysExhausted(PyxiaError):
    """A new sequence key would pass the cap on distinct keys; nothing was advanced."""

    reason = "TSO_SEQ_KEYS_EXHAUSTED"
    grpc_code = "RESOURCE_EXHAUSTED"


class SeqOverflow(PyxiaError):
    """The block would pass 2^64-1; nothing was advanced. FAILED_PRECONDITION without a leader
    hint (tsoracle's client raises it as a definite error)."""

    reason = "TSO_SEQ_OVERFLOW"
    grpc_code = "FAILED_PRECONDITION"


class SeqUncertain(PyxiaError):
    """A sequence write was logged but its outcome is unknown here (it timed out, or the
    leader stepped down before it committed): the block may be spent. On the wire
    UNAVAILABLE, which tsoracle's client reports as ``SeqUncertain`` and never retries;
    pyxia's client raises this error. Never retry blindly: a second call spends a second
    block."""

    reason = "TSO_SEQ_UNCERTAIN"
    grpc_code = "UNAVAILABLE"


# -- leases ---------------------------------------------------------------------------------------


class LeaseNotFound(PyxiaError):
    """RenewLease of a lease id this oracle does not know (never granted, released, or long
    expired)."""

    reason = "TSO_LEASE_NOT_FOUND"
    grpc_code = "NOT_FOUND"


class LeaseRefused(PyxiaError):
    """A lease request refused by the lease rules: the holder's live lease has a higher
    holder epoch, or the lease expired or was superseded. FAILED_PRECONDITION without a leader
    hint (a definite answer, not a redirect)."""

    reason = "TSO_LEASE_REFUSED"
    grpc_code = "FAILED_PRECONDITION"


class LeasesExhausted(PyxiaError):
    """A new lease would pass the cap on live leases."""

    reason = "TSO_LEASES_EXHAUSTED"
    grpc_code = "RESOURCE_EXHAUSTED"
