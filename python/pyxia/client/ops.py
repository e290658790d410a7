"""Operations waiting for their batch, and how each one reads its answer.

An operation completes its ``target``: an ``asyncio.Future`` (async face), a thread waiter
(sync face) or a fan-in collecting the answers of several shards; all three have
``done``/``set_result``/``set_exception``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from pyxia.client.errors import status_error
from pyxia.client.policy import DELETE, DELETE_RANGE, PUT
from pyxia.client.results import GetResult, PutResult, Version
from pyxia.proto import client_pb2

# tuple.__new__ directly: a NamedTuple's own __new__ is a Python-level wrapper around it, and
# these run once per operation answered.
_tuple_new = tuple.__new__

OK = client_pb2.OK
KEY_NOT_FOUND = client_pb2.KEY_NOT_FOUND
SESSION_DOES_NOT_EXIST = client_pb2.SESSION_DOES_NOT_EXIST


class Target(Protocol):
    def done(self) -> bool: ...

    def set_result(self, result: Any, /) -> None: ...

    def set_exception(self, exc: BaseException, /) -> None: ...


def fail(target: Target, exc: BaseException) -> None:
    if not target.done():
        target.set_exception(exc)


class WriteOp:
    """One put, delete or range delete."""

    __slots__ = ("deadline", "fields", "key", "partition_key", "safe", "shard", "size", "target")
    kind = PUT

    def __init__(
        self,
        key: str,
        partition_key: str | None,
        fields: dict[str, Any],
        size: int,
        safe: bool,
        shard: int,
        deadline: float,
        target: Target,
    ) -> None:
        self.key = key
        self.partition_key = partition_key
        self.fields = fields
        self.size = size
        self.safe = safe
        """Whether applying it twice is harmless (so it may be resent after a lost answer)."""
        self.shard = shard
        self.deadline = deadline
        self.target = target

    def complete(self, r: Any) -> None:
        t = self.target
        if t.done():
            return
        if r.status == OK:
            key = r.key if r.HasField("key") else self.key
            t.set_result(_tuple_new(PutResult, (key, Version.from_proto(r.version))))
        else:
            t.set_exception(status_error(r.status, self.key))


class PutOp(WriteOp):
    __slots__ = ()
    kind = PUT


class EphemeralPutOp(PutOp):
    """A put bound to the client's session on the shard: an answer that the session does not
    exist tells the client its session is lost."""

    __slots__ = ("on_session_missing", "session_id")
    session_id: int
    on_session_missing: Callable[[int, int], None]

    def complete(self, r: Any) -> None:
        if r.status == SESSION_DOES_NOT_EXIST:
            self.on_session_missing(self.shard, self.session_id)
        super().complete(r)


class DeleteOp(WriteOp):
    __slots__ = ()
    kind = DELETE

    def complete(self, r: Any) -> None:
        t = self.target
        if t.done():
            return
        if r.status == OK:
            t.set_result(True)
        elif r.status == KEY_NOT_FOUND:
            t.set_result(False)
        else:
            t.set_exception(status_error(r.status, self.key))


class DeleteRangeOp(WriteOp):
    __slots__ = ()
    kind = DELETE_RANGE

    def complete(self, r: Any) -> None:
        t = self.target
        if t.done():
            return
        if r.status == OK:
            t.set_result(None)
        else:
            t.set_exception(status_error(r.status, self.key))


def build_write_request(ops: list[WriteOp]) -> client_pb2.WriteRequest:
    """The request of a batch; its operations are already in apply order (puts, deletes,
    range deletes: see ``policy.can_join``)."""
    req = client_pb2.WriteRequest()
    puts = req.puts.add
    deletes = req.deletes.add
    ranges = req.delete_ranges.add
    for op in ops:
        k = op.kind
        if k == PUT:
            puts(**op.fields)
        elif k == DELETE:
            deletes(**op.fields)
        else:
            ranges(**op.fields)
    return req


def complete_writes(ops: list[WriteOp], resp: client_pb2.WriteResponse) -> None:
    puts = resp.puts
    deletes = resp.deletes
    ranges = resp.delete_ranges
    ip = idl = ir = 0
    for op in ops:
        k = op.kind
        if k == PUT:
            item: Any = puts[ip]
            ip += 1
        elif k == DELETE:
            item = deletes[idl]
            idl += 1
        else:
            item = ranges[ir]
            ir += 1
        op.complete(item)


class ReadOp:
    """One get on one shard."""

    __slots__ = ("deadline", "fields", "key", "partition_key", "shard", "target")
    kind = 0
    size = 1

    def __init__(
        self,
        key: str,
        partition_key: str | None,
        fields: dict[str, Any],
        shard: int,
        deadline: float,
        target: Target,
    ) -> None:
        self.key = key
        self.partition_key = partition_key
        self.fields = fields
        self.shard = shard
        self.deadline = deadline
        self.target = target

    def complete(self, r: client_pb2.GetResponse) -> None:
        t = self.target
        if t.done():
            return
        if r.status == OK:
            t.set_result(
                _tuple_new(
                    GetResult,
                    (
                        r.key if r.HasField("key") else self.key,
                        r.value if self.fields.get("include_value", True) else None,
                        Version.from_proto(r.version),
                        r.secondary_index_key if r.HasField("secondary_index_key") else None,
                    ),
                )
            )
        else:
            t.set_exception(status_error(r.status, self.key))
