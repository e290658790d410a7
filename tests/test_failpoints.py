"""Failpoints: parsing, arming, counts, async sleep."""

from __future__ import annotations

import time

import pytest

from pyxia import failpoints
from pyxia.failpoints import FailpointError


@pytest.fixture(autouse=True)
def _clean() -> None:
    failpoints.disarm()


def test_disarmed_is_a_noop() -> None:
    failpoints.failpoint("nothing.here")


def test_raise_and_counts() -> None:
    failpoints.arm("a.b", "2*raise")
    for _ in range(2):
        with pytest.raises(FailpointError, match=r"a\.b"):
            failpoints.failpoint("a.b")
    failpoints.failpoint("a.b")  # exhausted
    assert failpoints.hits("a.b") == 2


def test_sleep() -> None:
    failpoints.arm("slow", "sleep(30)")
    t0 = time.monotonic()
    failpoints.failpoint("slow")
    assert time.monotonic() - t0 >= 0.025


async def test_async_sleep() -> None:
    failpoints.arm("aslow", "1*sleep(20)")
    t0 = time.monotonic()
    await failpoints.afailpoint("aslow")
    assert time.monotonic() - t0 >= 0.015
    await failpoints.afailpoint("aslow")  # exhausted


def test_env_parsing() -> None:
    failpoints.load_env("x.y=raise, z=3*sleep(1.5)")
    with pytest.raises(FailpointError):
        failpoints.failpoint("x.y")
    with pytest.raises(ValueError, match="bad failpoint action"):
        failpoints.load_env("x=explode")
    with pytest.raises(ValueError, match="name=action"):
        failpoints.load_env("justaname")
