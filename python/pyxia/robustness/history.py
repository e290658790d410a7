"""The recorded history of a run: every client operation with its invocation and completion
times (nanoseconds since the start of the run, one monotonic clock for every client of the
harness process) and its outcome.

Outcome vocabulary (Jepsen's):

- ``ok``: the operation completed and its result is known (a compare-and-set that found another
  version completed too: ``result == "bad_version"``);
- ``fail``: it certainly had no effect and told nothing (a read that errored);
- ``info``: indeterminate — a write that timed out or whose connection broke may or may not
  have taken effect, now or later. Never recorded as failed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

# Operation kinds.
PUT = "put"  # unconditional put (the client may re-send it after a broken connection)
CAS = "cas"  # put with an expected version (-1: must not exist)
GET = "get"
DELETE = "delete"  # unconditional delete (may be re-sent, like PUT)
CDELETE = "cdelete"  # delete with an expected version
LIST = "list"  # keys in [key, end)
SCAN = "scan"  # records in [key, end)
SEQ = "seq"  # sequential put: key is the prefix, result_key the key created

OK = "ok"
FAIL = "fail"
INFO = "info"


@dataclass(slots=True)
class Record:
    """A record as a read returned it."""

    key: str
    value: str
    version: int
    mod_count: int


@dataclass(slots=True)
class Op:
    id: int
    process: int
    kind: str
    key: str
    shard: int = -1
    value: str | None = None
    expected: int | None = None
    end: str | None = None
    partition_key: str | None = None
    invoke: int = 0
    complete: int | None = None
    status: str = INFO
    # -- results --
    result: str | None = None  # put/cas: "ok"|"bad_version"; get: "found"|"not_found";
    # delete/cdelete: "deleted"|"not_found"|"bad_version"
    version: int | None = None
    mod_count: int | None = None
    read_value: str | None = None
    result_key: str | None = None  # seq: the key created
    keys: list[str] | None = None  # list
    records: list[Record] | None = None  # scan
    error: str | None = None

    def describe(self) -> str:
        """One line: the call and what came back."""
        k = self.kind
        if k == PUT:
            call = f"put({self.key}, {self.value!r})"
        elif k == CAS:
            call = f"put({self.key}, {self.value!r}, expected_version={self.expected})"
        elif k == GET:
            call = f"get({self.key})"
        elif k == DELETE:
            call = f"delete({self.key})"
        elif k == CDELETE:
            call = f"delete({self.key}, expected_version={self.expected})"
        elif k in (LIST, SCAN):
            call = f"{k}({self.key}, {self.end})"
        elif k == SEQ:
            call = f"put({self.key}, {self.value!r}, sequence_key_deltas=[1])"
        else:
            call = f"{k}({self.key})"
        if self.status == INFO:
            return f"{call} -> indeterminate ({self.error})"
        if self.status == FAIL:
            return f"{call} -> failed ({self.error})"
        if k in (PUT, CAS, SEQ):
            if self.result == "bad_version":
                return f"{call} -> unexpected version"
            where = f" key={self.result_key}" if k == SEQ else ""
            return f"{call} ->{where} version={self.version} mod_count={self.mod_count}"
        if k == GET:
            if self.result == "not_found":
                return f"{call} -> not found"
            return (
                f"{call} -> {self.read_value!r} version={self.version} mod_count={self.mod_count}"
            )
        if k in (DELETE, CDELETE):
            return f"{call} -> {self.result}"
        if k == LIST:
            return f"{call} -> {len(self.keys or [])} keys"
        if k == SCAN:
            return f"{call} -> {len(self.records or [])} records"
        return f"{call} -> {self.result}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(d: dict[str, Any]) -> Op:
        d = dict(d)
        recs = d.pop("records", None)
        op = Op(**d)
        if recs is not None:
            op.records = [Record(**r) for r in recs]
        return op


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)

    def new(self, process: int, kind: str, key: str, invoke: int, **kw: Any) -> Op:
        op = Op(len(self.ops), process, kind, key, invoke=invoke, **kw)
        self.ops.append(op)
        return op

    def dump(self, path: str) -> None:
        with open(path, "w") as f:
            for op in self.ops:
                f.write(json.dumps(op.to_json()) + "\n")

    @staticmethod
    def load(path: str) -> History:
        with open(path) as f:
            return History([Op.from_json(json.loads(line)) for line in f if line.strip()])


def fmt_time(ns: int | None) -> str:
    return "       ?" if ns is None else f"{ns / 1e9:8.3f}"
