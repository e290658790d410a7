"""A planned leadership handoff on a shard leader: the rules (pure: no I/O, no clock of its own).

A planned move of a leadership (the coordinator's leader rebalance, an ensemble change, a server
removed from the config, a data server shutting down) must not cost a client an error
(DESIGN.md principle 8). Before the coordinator starts the new term it asks the leader to step
down (``pyxia.admin.v1.Handoff/StepDown``, :mod:`pyxia.server.handoff_rpc`). The leader then:

1. refuses every new write, client or its own (session records, the TSO's high-water), with
   NODE_IS_NOT_LEADER — retried by Oxia's clients and pyxia's alike — naming the new leader
   once the assignments do;
2. keeps committing, applying and answering what it had already logged;
3. answers the coordinator once nothing is pending (or at the drain deadline, drained or not);
4. keeps refusing until the coordinator's NewTerm fences it (the normal end), or until
   ``refuse_until`` (``REFUSE_AFTER_ANSWER_S`` after the answer) passes without one (the
   coordinator died in between): then it takes writes again, as the leader it still is.

Reads, notifications and session keep-alives go on being served meanwhile: the leader still
leads its term, and a read is confirmed by a majority as always (``read_index``), so it stays
linearizable until the new term fences the followers.

States of a leader (``Handoff`` is the whole extra state)::

    LEADER ──StepDown(term)──▶ LEADER + Handoff(term, drain_until, refuse_until, ...)
                                  │  drained or drain_until: StepDown answers, refuse_until
                                  │  moves to at most answer + REFUSE_AFTER_ANSWER_S
                                  │  NewTerm / close ──▶ FENCED / closed (Handoff dropped)
                                  └─ now ≥ refuse_until ──▶ LEADER (takes writes again)

A second StepDown for the same term (a retried call) keeps the handoff and extends its
deadlines; one for another term, or on a replica that does not lead, is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pyxia.common.handoff_protocol import MAX_DRAIN_S
from pyxia.errors import InvalidArgument, InvalidTerm, NodeIsNotLeader
from pyxia.proto import replication_pb2

LEADER = replication_pb2.LEADER

REFUSE_AFTER_DRAIN_S = 15.0
"""How long after its drain deadline a stepping-down leader keeps refusing writes, at most."""

REFUSE_AFTER_ANSWER_S = 5.0
"""How long after its StepDown answered a leader keeps refusing writes while it waits for the
NewTerm (the coordinator persists the election and fences right after the answer). Past it, a
coordinator that died in between costs the shard no more: the leader takes writes again."""


@dataclass(frozen=True, slots=True)
class Handoff:
    """A leader stepping down from ``term`` (monotonic-clock deadlines)."""

    term: int
    drain_until: float
    """The StepDown call answers by then, drained or not."""
    refuse_until: float
    """Writes are refused until then (or until the NewTerm that ends this term)."""
    stale_hint: str | None
    """The leader the assignments named when the handoff began (this server): never given to
    a client as the leader to go to."""


def begin(
    current: Handoff | None,
    *,
    status: int,
    term: int,
    requested_term: int,
    now: float,
    drain_s: float,
    leader_hint: str | None,
    refuse_after_drain_s: float = REFUSE_AFTER_DRAIN_S,
) -> Handoff:
    """The handoff after a StepDown for ``requested_term`` on a replica at ``term`` in
    ``status``; raises if the replica does not lead that term or the drain is out of range."""
    if not 0 <= drain_s <= MAX_DRAIN_S:
        raise InvalidArgument(
            f"oxia: step-down drain of {drain_s:g}s is out of [0, {MAX_DRAIN_S:g}]"
        )
    if requested_term != term:
        raise InvalidTerm(f"oxia: StepDown for term {requested_term}, the shard is at term {term}")
    if status != LEADER:
        raise NodeIsNotLeader("oxia: StepDown on a replica that does not lead")
    drain_until = now + drain_s
    refuse_until = drain_until + refuse_after_drain_s
    if current is not None and current.term == term:
        return Handoff(
            term,
            max(current.drain_until, drain_until),
            max(current.refuse_until, refuse_until),
            current.stale_hint,
        )
    return Handoff(term, drain_until, refuse_until, leader_hint)


def answered(h: Handoff, now: float, wait_s: float = REFUSE_AFTER_ANSWER_S) -> Handoff:
    """The handoff once its StepDown answered: refusals end ``wait_s`` from now at the latest."""
    return replace(h, refuse_until=min(h.refuse_until, now + wait_s))


def refuses_writes(h: Handoff | None, term: int, now: float) -> bool:
    """Whether a leader at ``term`` with handoff ``h`` refuses a new write at ``now``."""
    return h is not None and h.term == term and now < h.refuse_until


def hint_for_clients(h: Handoff, leader_hint: str | None) -> str | None:
    """The leader to name in a refusal: the one the assignments name, unless that is still
    this server (the new leader is not known yet)."""
    return leader_hint if leader_hint and leader_hint != h.stale_hint else None


def drained(pending: int, head_offset: int, commit_offset: int) -> bool:
    """Every logged write is committed, applied and answered."""
    return pending == 0 and commit_offset >= head_offset
