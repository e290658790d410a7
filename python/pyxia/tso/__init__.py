"""pyxia's timestamp oracle: tsoracle's wire protocol (every RPC of ``tsoracle.v1.TsoService``:
timestamps, the safe point, dense sequences, stamping leases, the safe frontier), fenced by the
leadership of a one-shard namespace and persisted through its replicated log.

- :mod:`~pyxia.tso.allocator` — the pure allocator (46-bit ms + 18-bit logical, whole grants).
- :mod:`~pyxia.tso.sequences` — the pure rules of dense per-key sequences.
- :mod:`~pyxia.tso.leases` — the pure rules of stamping leases, the safe point and frontier.
- :mod:`~pyxia.tso.driver` — the consensus side: leadership events from the shards director,
  the high-water read and written through the TSO shard's log.
- :mod:`~pyxia.tso.fence` — the failover fence: pure decisions and the leader-watch task.
- :mod:`~pyxia.tso.oracle` — serving state, window extensions, the leader lease, the other
  calls, the release of the lease on a planned handoff.
- :mod:`~pyxia.tso.service` — the gRPC service on every data server's public port.
- :mod:`~pyxia.tso.native` — the TSO port (``--tso-addr``): GetTs served by Rust from the
  window the oracle grants.
- :mod:`~pyxia.tso.client` — :class:`TsoClient` / :class:`AsyncTsoClient`.
- :mod:`~pyxia.tso.checker` — a history checker for grants (tests, benchmarks, robustness).

The TSO namespace is named ``tso`` unless configured otherwise (``--tso-namespace``):
``pyxia standalone`` creates it; a cluster declares it in its config with ``tso: true``.
See docs/tso.md.
"""

from __future__ import annotations

DEFAULT_NAMESPACE = "tso"
"""The name of the TSO namespace a data server serves timestamps from, unless configured."""

__all__ = ["DEFAULT_NAMESPACE"]
