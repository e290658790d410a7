"""Disk-full simulation: a node's WAL directory on a size-limited tmpfs mount, filled up by a
filler file and freed again. Needs root (``mount -t tmpfs``); :func:`can_mount_tmpfs` tells."""

from __future__ import annotations

import functools
import os
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType


def _mount(target: Path, size_bytes: int) -> None:
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(target)],
        check=True,
        capture_output=True,
        text=True,
    )


def _umount(target: Path) -> None:
    subprocess.run(["umount", "-l", str(target)], capture_output=True, text=True)


@functools.cache
def can_mount_tmpfs() -> bool:
    """Whether this process may mount a tmpfs (root, and the container allows it)."""
    if os.geteuid() != 0:
        return False
    with tempfile.TemporaryDirectory(prefix="pyxia-tmpfs-probe-") as d:
        try:
            _mount(Path(d), 1024 * 1024)
        except (OSError, subprocess.CalledProcessError):
            return False
        _umount(Path(d))
        return True


class TmpfsMount:
    """A tmpfs of ``size_bytes`` mounted at ``path`` (created); unmounted on exit."""

    FILLER = ".disk-full-filler"

    def __init__(self, path: Path, size_bytes: int) -> None:
        self.path = path
        self.size_bytes = size_bytes
        self.mounted = False

    def __enter__(self) -> Path:
        self.mount()
        return self.path

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.unmount()

    def mount(self) -> None:
        if not self.mounted:
            _mount(self.path, self.size_bytes)
            self.mounted = True

    def unmount(self) -> None:
        if self.mounted:
            _umount(self.path)
            self.mounted = False

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self) -> int:
        """Takes every free byte (a filler file); returns how many it took."""
        filler = self.path / self.FILLER
        taken = 0
        with open(filler, "ab") as f:
            free = self.free_bytes()
            if free > 0:
                try:
                    os.posix_fallocate(f.fileno(), f.seek(0, os.SEEK_END), free)
                    taken += free
                except OSError:
                    pass
            chunk = b"\0" * 65536
            while True:  # whatever fallocate left (rounding)
                try:
                    f.write(chunk)
                    f.flush()
                except OSError:
                    break
                taken += len(chunk)
        return taken

    def free(self) -> None:
        """Removes the filler: the disk has room again."""
        try:
            (self.path / self.FILLER).unlink()
        except FileNotFoundError:
            pass
