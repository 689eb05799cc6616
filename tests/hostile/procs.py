"""Processes on this machine, for the tests that check nothing outlives a sandbox."""
from __future__ import annotations

from pathlib import Path


def running_commands() -> list[str]:
    """Command lines of every process on this machine (from /proc; no `ps` needed)."""
    cmds = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmds.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip())
            except OSError:
                continue
    return cmds
