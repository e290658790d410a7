"""An ephemeral-record owner, run as a child process by the robustness suite and killed with
SIGKILL (so its session is never closed): ``python -m pyxia.robustness.owner ADDRESSES PREFIX
COUNT SESSION_TIMEOUT_S``. Prints one JSON line per ephemeral record it created."""

from __future__ import annotations

import asyncio
import json
import sys

from pyxia.client import AsyncClient


async def run(addresses: str, prefix: str, count: int, session_timeout: float) -> None:
    async with AsyncClient(
        addresses, session_timeout_s=session_timeout, request_timeout_s=5.0
    ) as client:
        for i in range(count):
            key = f"{prefix}/{i}"
            while True:
                try:
                    r = await client.put(key, b"ephemeral", ephemeral=True)
                    break
                except Exception:
                    await asyncio.sleep(0.2)
            line = {"key": key, "shard": client.shard_for(key), "version": r.version.version_id}
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()
        await asyncio.Event().wait()  # until killed


def main() -> None:
    addresses, prefix, count, timeout = sys.argv[1:5]
    asyncio.run(run(addresses, prefix, int(count), float(timeout)))


if __name__ == "__main__":
    main()
