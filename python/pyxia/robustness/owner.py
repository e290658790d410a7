"""An ephemeral-record owner, run as a child process by the robustness suite and killed with
SIGKILL (so its session is never closed): ``python -m pyxia.robustness.owner ADDRESSES PREFIX
COUNT SESSION_TIMEOUT_S [CA_FILE]`` (with a CA file, the public ports are dialed with TLS).
Prints one JSON line per ephemeral record it created."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from pyxia.client import AsyncClient


async def run(
    addresses: str, prefix: str, count: int, session_timeout: float, ca_file: str | None = None
) -> None:
    tls: dict[str, Any] = {}
    if ca_file:
        from pyxia.security.tls import TlsOptions

        tls["tls"] = TlsOptions(trusted_ca_file=Path(ca_file))
    async with AsyncClient(
        addresses, session_timeout_s=session_timeout, request_timeout_s=5.0, **tls
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
    ca_file = sys.argv[5] if len(sys.argv) > 5 else None
    asyncio.run(run(addresses, prefix, int(count), float(timeout), ca_file))


if __name__ == "__main__":
    main()
