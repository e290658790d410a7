"""Model-based test: the WAL against an in-memory dict, under random
sequences of append / sync / read / truncate / trim / clear / reopen /
crash-and-reopen."""

from __future__ import annotations

import itertools
import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pyxia._native import EntryNotFound, Wal


class WalMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="pyxia-wal-model-"))
        self.model: dict[int, tuple[int, bytes, int]] = {}
        self.next = 0
        self.term = 1
        self.wal: Wal | None = None

    @initialize(segment_size=st.sampled_from([4096, 8192, 1 << 20]))
    def open(self, segment_size: int) -> None:
        self.segment_size = segment_size
        self.wal = Wal(self.dir, segment_size=segment_size)

    def teardown(self) -> None:
        if self.wal is not None:
            self.wal.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def w(self) -> Wal:
        assert self.wal is not None
        return self.wal

    def _commit(self) -> int:
        return max(self.model) if self.model else -1

    @rule(n=st.integers(1, 40), size=st.integers(0, 700), ts=st.integers(0, 2**63))
    def append(self, n: int, size: int, ts: int) -> None:
        batch = [
            (self.term, self.next + i, bytes([(self.next + i) % 256]) * size, ts) for i in range(n)
        ]
        if n == 1:
            self.w.append(*batch[0])
        else:
            self.w.append_batch(batch)
        for t, o, v, stamp in batch:
            self.model[o] = (t, v, stamp)
        self.next += n

    @rule()
    def new_term(self) -> None:
        self.term += 1

    @rule()
    def sync(self) -> None:
        self.w.sync()
        assert self.w.last_synced_offset == self.w.last_offset

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        lo, hi = min(self.model), max(self.model)
        cut = data.draw(st.integers(lo - 1, hi + 1))
        result = self.w.truncate(cut)
        if cut < lo:
            self.model.clear()
            assert result == -1
        else:
            self.model = {o: v for o, v in self.model.items() if o <= cut}
            self.next = max(self.model) + 1
            assert result == max(self.model)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def trim(self, data: st.DataObject) -> None:
        lo, hi = min(self.model), max(self.model)
        before = data.draw(st.integers(lo, hi + 1))
        commit = data.draw(st.integers(lo - 1, hi))
        first = self.w.trim(before, commit)
        assert first <= min(before, commit + 1) or first == lo
        assert first >= lo
        self.model = {o: v for o, v in self.model.items() if o >= first}

    @rule(gap=st.integers(0, 1000))
    def clear(self, gap: int) -> None:
        self.w.clear()
        self.model.clear()
        self.next += gap  # an empty log may start anywhere

    @rule()
    def reopen(self) -> None:
        self.w.close()
        self.wal = Wal(self.dir, segment_size=self.segment_size, commit_offset=self._commit())

    @rule()
    def crash_and_reopen(self) -> None:
        """Drop the handle without a clean close of indexes; everything synced
        must survive, and with the page cache intact nothing else is lost."""
        self.w.sync()
        # Remove every index file, as if the process died before writing them.
        for idx in self.dir.glob("*.idxx"):
            idx.unlink()
        self.w.close()
        for idx in self.dir.glob("*.idxx"):
            idx.unlink()
        self.wal = Wal(self.dir, segment_size=self.segment_size, commit_offset=self._commit())

    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        if not self.model:
            return
        o = data.draw(st.integers(min(self.model) - 2, max(self.model) + 2))
        if o in self.model:
            e = self.w.read(o)
            assert (e.term, e.value, e.timestamp) == self.model[o]
        else:
            try:
                self.w.read(o)
            except EntryNotFound:
                pass
            else:
                raise AssertionError(f"read({o}) should fail")

    @invariant()
    def offsets_match(self) -> None:
        if self.wal is None:
            return
        assert self.w.last_offset == (max(self.model) if self.model else -1)
        assert self.w.first_offset == (min(self.model) if self.model else -1)

    @invariant()
    def chain_is_consistent(self) -> None:
        if self.wal is None or not self.model:
            return
        entries = self.w.read_batch(min(self.model), max_entries=10**6, max_bytes=1 << 40)
        assert [e.offset for e in entries] == sorted(self.model)
        for a, b in itertools.pairwise(entries):
            assert b.previous_crc == a.crc
        assert entries[-1].crc == self.w.last_crc


WalMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
TestWalModel = WalMachine.TestCase
