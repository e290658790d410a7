"""The wire contract of a planned leadership handoff, shared by its caller (the coordinator's
shard controller) and its server (the leader's ``pyxia.admin.v1.Handoff`` service,
:mod:`pyxia.server.handoff_rpc`; the leader's rules are in :mod:`pyxia.server.handoff`).

Invariant: the server refuses a drain outside ``[0, MAX_DRAIN_S]``, so a caller never asks
for one."""

from __future__ import annotations

SERVICE = "pyxia.admin.v1.Handoff"
STEP_DOWN = f"/{SERVICE}/StepDown"

MAX_DRAIN_S = 60.0
"""The longest drain a StepDown may ask for."""

__all__ = ["MAX_DRAIN_S", "SERVICE", "STEP_DOWN"]
